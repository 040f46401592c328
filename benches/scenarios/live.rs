//! "Answering": the moment a project's PostgREST answers `GET /ready` on its admin port, i.e.
//! it serves: logged in to its database (the tests' PgBouncer, see `env.rs`) and schema cache
//! loaded. This is what the manager's spawn and PUT wait for, and what a user can use. The
//! moment it first answered `GET /live` (the process up, before its database login) is kept
//! too, so numbers taken before the double needed a database (they stopped at `/live`) can
//! still be compared.
//!
//! Every method is observed the same way, so their times compare: a Docker event stream
//! (filtered by the method's instance label) reports each container start; the container's
//! address is inspected once; then `/live` is polled every few milliseconds until it answers
//! 200, then `/ready` the same way. The stream is opened with `since` a little in the past,
//! so a start that happens before the subscription is established is replayed, not missed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use postgrest_manager::render::{ADMIN_PORT, LABEL_INSTANCE, LABEL_PROJECT, SERVER_PORT};

use crate::env::{Bench, Who};
use crate::stats::{num, Summary};

/// How often a not-yet-answering container is probed.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// A project answered: when (`/ready`, and `/live` before it), and at which address. `created`
/// and `started` are the Docker events' wall-clock times, for a breakdown of where the time
/// went.
#[derive(Debug, Clone)]
pub struct Live {
    /// When it first answered `GET /ready` 200: serving.
    pub at: Instant,
    /// When it first answered `GET /live` 200: the process up (not yet logged in).
    pub live_at: Instant,
    pub ip: IpAddr,
    pub created: Option<SystemTime>,
    pub started: Option<SystemTime>,
}

/// Watches one instance's containers and reports each one that answers `/ready`.
pub struct LiveWatch {
    rx: mpsc::UnboundedReceiver<(String, Live)>,
    seen: BTreeMap<String, Live>,
    task: JoinHandle<()>,
}

impl Drop for LiveWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LiveWatch {
    pub fn start(bench: &Bench, who: Who) -> LiveWatch {
        LiveWatch::watch(bench, who, false)
    }

    /// As [`LiveWatch::start`], and each container's address is dropped from this host's
    /// neighbour cache before it is probed. Docker hands a removed container's address, and
    /// the MAC address it derives from it, to the next container; the cache still holds the
    /// entry, so the host never asks, and the new container must ask for the host's address
    /// itself. On a bridge of a thousand ports here, its ARP requests went unanswered for
    /// about 25 s (BENCHMARKS.md, the scale status of 2026-12-06 23:00), for the manager's
    /// container and the raw API's alike; with the entry gone, the host asks first and both
    /// answer within milliseconds. The scale scenario's one new project uses it, so the
    /// comparison measures the manager and not the kernel's neighbour cache.
    pub fn start_uncached(bench: &Bench, who: Who) -> LiveWatch {
        LiveWatch::watch(bench, who, true)
    }

    fn watch(bench: &Bench, who: Who, uncached: bool) -> LiveWatch {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .saturating_sub(2)
            .to_string();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec!["create".to_owned(), "start".to_owned()],
            ),
            (
                "label".to_owned(),
                vec![format!("{LABEL_INSTANCE}={}", bench.instance(who))],
            ),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since)
            .filters(&filters)
            .build();
        let docker = bench.docker.clone();
        let network = bench.network.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut events = docker.events(Some(options));
            let mut probes = tokio::task::JoinSet::new();
            let mut created: HashMap<String, Option<SystemTime>> = HashMap::new();
            loop {
                tokio::select! {
                    event = events.next() => {
                        let Some(Ok(event)) = event else { break };
                        let at = event
                            .time_nano
                            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns as u64));
                        let Some(actor) = event.actor else { continue };
                        let (Some(container), Some(project)) = (
                            actor.id,
                            actor.attributes.and_then(|mut a| a.remove(LABEL_PROJECT)),
                        ) else {
                            continue;
                        };
                        if event.action.as_deref() == Some("create") {
                            created.insert(container, at);
                            continue;
                        }
                        let created = created.remove(&container).flatten();
                        let (docker, network, tx) = (docker.clone(), network.clone(), tx.clone());
                        probes.spawn(async move {
                            let Some(ip) = address(&docker, &container, &network).await else {
                                return;
                            };
                            if uncached {
                                forget_neighbour(ip).await;
                            }
                            if !wait_admin(ip, "/live", Duration::from_secs(120)).await {
                                return;
                            }
                            let live_at = Instant::now();
                            if wait_admin(ip, "/ready", Duration::from_secs(120)).await {
                                let live = Live {
                                    at: Instant::now(),
                                    live_at,
                                    ip,
                                    created,
                                    started: at,
                                };
                                let _ = tx.send((project, live));
                            }
                        });
                    }
                    Some(_) = probes.join_next(), if !probes.is_empty() => {}
                }
            }
        });
        LiveWatch {
            rx,
            seen: BTreeMap::new(),
            task,
        }
    }

    /// Waits until every one of `projects` answered; returns when the last one did, and each.
    pub async fn wait_all(
        &mut self,
        projects: &BTreeSet<String>,
        timeout: Duration,
    ) -> Result<(Instant, BTreeMap<String, Live>), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing = projects
                .iter()
                .filter(|p| !self.seen.contains_key(*p))
                .count();
            if missing == 0 {
                let found: BTreeMap<String, Live> = projects
                    .iter()
                    .map(|p| (p.clone(), self.seen[p].clone()))
                    .collect();
                let last = found.values().map(|l| l.at).max().expect("not empty");
                return Ok((last, found));
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((project, live))) => {
                    self.seen.insert(project, live);
                }
                Ok(None) => return Err("the Docker event stream ended".into()),
                Err(_) => {
                    return Err(format!(
                        "{missing} of {} projects did not answer within {timeout:?}",
                        projects.len()
                    ))
                }
            }
        }
    }

    pub async fn wait_one(&mut self, project: &str, timeout: Duration) -> Result<Live, String> {
        let set = BTreeSet::from([project.to_owned()]);
        let (_, mut found) = self.wait_all(&set, timeout).await?;
        Ok(found.remove(project).expect("waited for it"))
    }
}

/// Where one run's time went, in milliseconds, from the Docker events' timestamps and the
/// bench's probes: trigger -> `create` event -> `start` event -> `/live` answered -> `/ready`
/// answered.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub to_create: f64,
    pub to_start: f64,
    pub to_live: f64,
    pub to_ready: f64,
    /// Trigger -> `/live` answered: what "answering" meant before the double needed a
    /// database.
    pub total_live: f64,
}

impl Phases {
    pub fn of(t0: Instant, wall0: SystemTime, live: &Live) -> Phases {
        let since = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(wall0).ok())
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        let (created, started) = (since(live.created), since(live.started));
        let live_ms = (live.live_at - t0).as_secs_f64() * 1000.0;
        Phases {
            to_create: created,
            to_start: started - created,
            to_live: live_ms - started,
            to_ready: (live.at - live.live_at).as_secs_f64() * 1000.0,
            total_live: live_ms,
        }
    }
}

/// The median of the finite values, formatted; `?` when there are none.
pub fn median(values: impl Iterator<Item = f64>) -> String {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    Summary::of(&values).map_or("?".into(), |s| num(s.median))
}

async fn address(docker: &bollard::Docker, container: &str, network: &str) -> Option<IpAddr> {
    let inspect = docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()?;
    inspect
        .network_settings?
        .networks?
        .get(network)?
        .ip_address
        .as_deref()?
        .parse()
        .ok()
}

/// Drops `ip` from this network namespace's neighbour cache (`ip neigh flush to <ip>`); a
/// failure leaves the cache as it was, which only costs time.
async fn forget_neighbour(ip: IpAddr) {
    let _ = tokio::process::Command::new("ip")
        .args(["neigh", "flush", "to", &ip.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// Polls `GET <path>` on the admin port (`/live` or `/ready`) until it answers 200.
async fn wait_admin(ip: IpAddr, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::new(ip, ADMIN_PORT);
    while Instant::now() < deadline {
        if get_status(addr, path, None).await == Some(200) {
            return true;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    false
}

/// Polls PostgREST's `GET /` with a bearer token until it answers 200 (the token accepted).
pub async fn wait_accepted(ip: IpAddr, token: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::new(ip, SERVER_PORT);
    let auth = format!("Bearer {token}");
    while Instant::now() < deadline {
        if get_status(addr, "/", Some(&auth)).await == Some(200) {
            return true;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    false
}

/// One HTTP/1.0 GET on a fresh connection; the status code, or `None` on any failure.
pub async fn get_status(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(auth) = authorization {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // Read it all: closing with unread data would reset the connection under the server.
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}
