//! Blue/green replacement on the in-memory runtime and the fake Caddy: each step in order,
//! each failure (a new container that never serves, Caddy down during the switch) leaving
//! the old container serving, and a manager that died with `postgrest-<id>-next` in place.
//!
//! The two containers of a project get different loopback addresses (127.0.0.1 for
//! `postgrest-p1`, 127.0.0.2 for `postgrest-p1-next`), each with its own `/ready` server on
//! the admin port, so a test says which of them serves. Waits are on conditions (snapshots,
//! calls, Caddy's routes); the timeouts are safety nets.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::caddy::fake::FakeCaddy;
use crate::caddy::{keep_in_step, RouteState, RouteSync};
use crate::render::{self, LABEL_UPSTREAM};
use crate::runtime::fake::{Call, FakeRuntime};
use crate::spec::{Secret, SpecFile};

const WAIT: Duration = Duration::from_secs(10);
const OLD_IP: [u8; 4] = [127, 0, 0, 1];
const NEW_IP: [u8; 4] = [127, 0, 0, 2];

/// Answers `GET /ready` on `ip:port` (port 0: any): 200 while `ready` is set, else 503.
async fn ready_at(ip: [u8; 4], port: u16, ready: Arc<AtomicBool>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((IpAddr::from(ip), port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let status = if ready.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

struct Env {
    _tmp: tempfile::TempDir,
    cfg: LoopConfig,
    fake: FakeRuntime,
    caddy: FakeCaddy,
    old_ready: Arc<AtomicBool>,
    new_ready: Arc<AtomicBool>,
}

impl Env {
    async fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = LoopConfig::for_tests("bg", tmp.path());
        cfg.replace_timeout = Duration::from_secs(2);
        let old_ready = Arc::new(AtomicBool::new(true));
        let new_ready = Arc::new(AtomicBool::new(true));
        cfg.admin_port = ready_at(OLD_IP, 0, old_ready.clone()).await;
        ready_at(NEW_IP, cfg.admin_port, new_ready.clone()).await;
        let fake = FakeRuntime::new();
        fake.assign_ip("postgrest-p1-next", NEW_IP.into());
        Env {
            _tmp: tmp,
            cfg,
            fake,
            caddy: FakeCaddy::new(),
            old_ready,
            new_ready,
        }
    }

    /// A loop with the route task and the fake Caddy, wired as `main` wires them.
    fn start(
        &self,
    ) -> (
        Handle,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (mut controller, handle) =
            Controller::new(Arc::new(self.fake.clone()), self.cfg.clone());
        let (state_tx, mut state) = watch::channel(RouteState::default());
        let (routed_tx, routed_rx) = watch::channel(Routed::default());
        controller.follow_routes(routed_rx);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (halt_tx, halt) = watch::channel(false);
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let upstreams = state.borrow_and_update().upstreams.clone();
                routed_tx.send_replace(upstreams);
            }
        });
        tokio::spawn(keep_in_step(
            handle.clone(),
            RouteSync::new(self.caddy.clone()),
            Duration::from_millis(50),
            state_tx,
            async move {
                let mut halt = halt;
                let _ = halt.wait_for(|h| *h).await;
            },
        ));
        let task = tokio::spawn(controller.run(async move {
            let _ = stopped.await;
            let _ = halt_tx.send(true);
        }));
        (handle, stop, task)
    }

    fn write(&self, password: &str) {
        let file = SpecFile::new(
            Secret::new("a".repeat(32)),
            Secret::new(password.to_owned()),
        );
        self.cfg.state.write(&pid(), &file).unwrap();
    }

    fn spec_hash(&self) -> String {
        let spec = self.cfg.state.read(&pid()).unwrap().unwrap();
        render::render(&spec, &self.cfg.template).spec_hash
    }

    /// Waits until the project's one container is `postgrest-p1` with the current spec,
    /// serving, and Caddy's route dials it.
    async fn serving_current(&self, handle: &Handle) -> Arc<Snapshot> {
        handle.wake();
        let hash = self.spec_hash();
        let snapshot = handle
            .wait_for(WAIT, |s| {
                s.projects.get(&pid()).is_some_and(|p| {
                    p.converged()
                        && p.container.as_ref().is_some_and(|c| {
                            c.spec_hash.as_deref() == Some(hash.as_str())
                                && c.ready == Readiness::Ready
                                && c.name == "postgrest-p1"
                        })
                })
            })
            .await
            .unwrap_or_else(|s| panic!("p1 does not serve: {:?}", s.projects.get(&pid())));
        let upstream = snapshot.projects[&pid()].upstream.clone().unwrap();
        self.dials(&upstream).await;
        snapshot
    }

    /// Waits until Caddy's route for p1 dials `host`.
    async fn dials(&self, host: &str) {
        let want = format!("{host}:3000");
        tokio::time::timeout(WAIT, async {
            while dial(&self.caddy) != Some(want.clone()) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("Caddy never dialled {want}: {}", self.caddy.routes()));
    }

    fn names(&self) -> Vec<String> {
        self.fake.containers().into_iter().map(|c| c.name).collect()
    }
}

fn pid() -> ProjectId {
    ProjectId::parse("p1").unwrap()
}

/// The host:port Caddy's route for p1 dials, if it proxies.
fn dial(caddy: &FakeCaddy) -> Option<String> {
    let routes = caddy.routes();
    let route = routes.as_array()?.first()?.clone();
    Some(
        route["handle"][1]["upstreams"][0]["dial"]
            .as_str()?
            .to_owned(),
    )
}

/// The calls that change containers, without listing and pinging.
/// The calls that change something in Docker (reads, the confirming `Inspect` too, left out).
fn changes(fake: &FakeRuntime) -> Vec<Call> {
    fake.take_calls()
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Call::List
                    | Call::Inspect(_)
                    | Call::Ping
                    | Call::EnsureNetwork(_)
                    | Call::FindByName(_)
            )
        })
        .collect()
}

#[tokio::test]
async fn a_password_change_starts_the_new_container_beside_and_switches_before_the_stop() {
    let env = Env::new().await;
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap().id;
    env.fake.take_calls();

    // Hold every container change, to look at Caddy while the old container is being removed.
    let gate = env.fake.hold();
    env.write("pw2");
    handle.wake();
    gate.add_permits(2); // create and start `postgrest-p1-next`
    let removing = async {
        while !env.fake.take_calls().contains(&Call::Remove(old.clone())) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // The removal was asked for only after Caddy switched: Caddy dials the new container's
    // own alias now, while the old one is still there.
    let new = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(c) = env
                .fake
                .containers()
                .into_iter()
                .find(|c| c.name == "postgrest-p1-next")
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the new container is created beside the old one");
    let alias = new.labels[LABEL_UPSTREAM].clone();
    assert!(alias.starts_with("postgrest-p1-"), "{alias}");
    env.dials(&alias).await;
    assert!(env.names().contains(&"postgrest-p1".to_owned()));
    gate.add_permits(100);
    tokio::time::timeout(WAIT, removing)
        .await
        .expect("the old one is removed");

    let done = env.serving_current(&handle).await;
    let status = &done.projects[&pid()];
    assert_eq!(
        status.container.as_ref().unwrap().id,
        new.id,
        "renamed, not recreated"
    );
    assert_eq!(env.names(), ["postgrest-p1"]);
    // The route stays on the alias: the rename did not move it.
    assert_eq!(dial(&env.caddy), Some(format!("{alias}:3000")));
    assert_eq!(status.upstream.as_deref(), Some(alias.as_str()));
    let replaced: Vec<_> = status
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Replaced)
        .collect();
    assert_eq!(replaced.len(), 1, "{:?}", status.events);
    assert!(
        replaced[0].reason.contains("authenticator_password"),
        "{}",
        replaced[0].reason
    );
}

#[tokio::test]
async fn the_steps_run_in_order_create_start_remove_old_rename() {
    let env = Env::new().await;
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap().id;
    env.fake.take_calls();
    env.write("pw2");
    let done = env.serving_current(&handle).await;
    let new = done.projects[&pid()].container.clone().unwrap().id;
    let calls = changes(&env.fake);
    assert_eq!(
        calls,
        [
            Call::Create("postgrest-p1-next".into()),
            Call::Start(new.clone()),
            Call::Remove(old),
            Call::Rename(new, "postgrest-p1".into()),
        ]
    );
}

#[tokio::test]
async fn a_new_container_that_never_serves_is_removed_and_the_old_one_keeps_serving() {
    let env = Env::new().await;
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap();
    let upstream = first.projects[&pid()].upstream.clone().unwrap();

    // A wrong new password: the new PostgREST cannot log in.
    env.new_ready.store(false, Ordering::SeqCst);
    env.fake.set_logs(
        "postgrest-p1-next",
        "{\"code\":\"PGRST000\",\"details\":\"FATAL:  password authentication failed for user \\\"p1_authenticator\\\"\",\"hint\":null,\"message\":\"Database connection error. Retrying the connection.\"}\n",
    );
    env.fake.take_calls();
    env.write("wrong");
    handle.wake();
    let failed = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid()]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("never served"))
        })
        .await
        .expect("the failure is shown");
    let error = failed.projects[&pid()].last_error.clone().unwrap();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(error.contains("old one keeps serving"), "{error}");
    assert!(!error.contains("wrong"), "no secret in the status: {error}");
    // The new one is gone, the old one is untouched and Caddy still dials it.
    let calls = changes(&env.fake);
    let next_id = calls
        .iter()
        .find_map(|c| match c {
            Call::Start(id) => Some(id.clone()),
            _ => None,
        })
        .expect("the new container was started");
    assert!(calls.contains(&Call::Remove(next_id)), "{calls:?}");
    assert!(!calls.contains(&Call::Remove(old.id.clone())), "{calls:?}");
    assert_eq!(env.names(), ["postgrest-p1"]);
    assert_eq!(dial(&env.caddy), Some(format!("{upstream}:3000")));
    let container = failed.projects[&pid()].container.clone().unwrap();
    assert_eq!(container.id, old.id);
    assert_eq!(container.ready, Readiness::Ready);

    // With the password fixed in the database the retry (after its backoff) goes through.
    env.new_ready.store(true, Ordering::SeqCst);
    let done = env.serving_current(&handle).await;
    assert_ne!(done.projects[&pid()].container.as_ref().unwrap().id, old.id);
    assert_eq!(done.projects[&pid()].last_error, None);
    assert!(env.old_ready.load(Ordering::SeqCst));
}

#[tokio::test]
async fn caddy_down_during_the_switch_keeps_the_old_one_serving_and_is_retried() {
    let env = Env::new().await;
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap();
    let upstream = first.projects[&pid()].upstream.clone().unwrap();

    env.caddy.set_unavailable(true);
    env.write("pw2");
    handle.wake();
    let failed = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid()]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot switch the route"))
        })
        .await
        .expect("the failed switch is shown");
    assert_eq!(
        failed.projects[&pid()].container.as_ref().unwrap().id,
        old.id
    );
    // The replacement was removed; Caddy still holds the route to the old container.
    tokio::time::timeout(WAIT, async {
        while env.names() != ["postgrest-p1"] {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the replacement is removed");
    assert_eq!(dial(&env.caddy), Some(format!("{upstream}:3000")));

    env.caddy.set_unavailable(false);
    let done = env.serving_current(&handle).await;
    assert_ne!(done.projects[&pid()].container.as_ref().unwrap().id, old.id);
    assert_eq!(env.names(), ["postgrest-p1"]);
}

#[tokio::test]
async fn a_manager_killed_with_the_next_container_in_place_finishes_the_replacement() {
    let env = Env::new().await;
    env.write("pw1");
    let (handle, stop, task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap().id;
    drop(stop);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the loop stops")
        .unwrap();

    // What a manager killed right after starting the new container leaves: both, the route
    // still on the old one.
    env.write("pw2");
    let spec = env.cfg.state.read(&pid()).unwrap().unwrap();
    let mut next = render::render(&spec, &env.cfg.template).container;
    next.name = "postgrest-p1-next".into();
    next.labels
        .insert(LABEL_UPSTREAM.into(), "postgrest-p1-left".into());
    let next_id = env.fake.create(&next).await.unwrap();
    env.fake.start(&next_id).await.unwrap();
    env.fake.take_calls();

    let (handle, _stop, _task) = env.start();
    let done = env.serving_current(&handle).await;
    assert_eq!(
        done.projects[&pid()].container.as_ref().unwrap().id,
        next_id,
        "{:?} {:?}",
        env.fake.take_calls(),
        done.projects[&pid()].events
    );
    assert_eq!(env.names(), ["postgrest-p1"]);
    let calls = changes(&env.fake);
    assert!(calls.contains(&Call::Remove(old)), "{calls:?}");
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Create(_))),
        "the one left behind is used: {calls:?}"
    );
    env.dials("postgrest-p1-left").await;

    // Killed after the old one was removed, before the rename: the new one is promoted.
    let env = Env::new().await;
    env.write("pw1");
    let spec = env.cfg.state.read(&pid()).unwrap().unwrap();
    let mut next = render::render(&spec, &env.cfg.template).container;
    next.name = "postgrest-p1-next".into();
    let next_id = env.fake.create(&next).await.unwrap();
    env.fake.start(&next_id).await.unwrap();
    env.fake.take_calls();
    let (handle, _stop, _task) = env.start();
    let done = env.serving_current(&handle).await;
    assert_eq!(
        done.projects[&pid()].container.as_ref().unwrap().id,
        next_id,
        "{:?}",
        env.fake.take_calls()
    );
    assert_eq!(
        changes(&env.fake),
        [Call::Rename(next_id, "postgrest-p1".into())]
    );
}

/// The replacement is given up as soon as the new container's database refused its login, not
/// at the timeout (an hour here: the test's own 10 s wait would run out first): through
/// PgBouncer PostgREST retries a refused login forever, and no retry fixes a wrong password.
#[tokio::test]
async fn a_refused_login_gives_the_new_container_up_without_waiting_for_the_timeout() {
    let mut env = Env::new().await;
    env.cfg.replace_timeout = Duration::from_secs(3600);
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap();

    env.new_ready.store(false, Ordering::SeqCst);
    env.fake.set_logs(
        "postgrest-p1-next",
        "29/Nov/2026:07:00:00 +0000: Attempting to connect to the database...\n\
         29/Nov/2026:07:00:00 +0000: {\"code\":\"PGRST000\",\"details\":\"connection to server at \\\"pgbouncer\\\" failed: FATAL:  SASL authentication failed\\n\",\"hint\":null,\"message\":\"Database connection error. Retrying the connection.\"}\n\
         29/Nov/2026:07:00:00 +0000: Attempting to reconnect to the database in 1 seconds...\n",
    );
    env.write("wrongpw");
    handle.wake();
    let failed = handle
        .wait_for(WAIT, |s| s.projects[&pid()].last_error.is_some())
        .await
        .expect("the replacement is given up before the timeout");
    let error = failed.projects[&pid()].last_error.clone().unwrap();
    assert!(
        error.contains("never served (its database refused the login)"),
        "{error}"
    );
    assert!(error.contains("SASL authentication failed"), "{error}");
    assert!(
        !error.contains("wrongpw"),
        "no secret in the status: {error}"
    );
    tokio::time::timeout(WAIT, async {
        while env.names() != ["postgrest-p1"] {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the new container is removed");
    let container = failed.projects[&pid()].container.clone().unwrap();
    assert_eq!(container.id, old.id);
    // One failure, one event.
    let record = handle.snapshot();
    let failures = record.projects[&pid()]
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Failed)
        .count();
    assert_eq!(failures, 1, "{:?}", record.projects[&pid()].events);
}

/// A new container that Docker keeps restarting (an image whose process exits, a PostgREST
/// that exits on a refused login straight to PostgreSQL) is given up at once, with the exit
/// code, and removed; the old one keeps serving.
#[tokio::test]
async fn a_new_container_in_a_crash_loop_is_given_up_at_once() {
    let mut env = Env::new().await;
    env.cfg.replace_timeout = Duration::from_secs(3600);
    env.write("pw1");
    let (handle, _stop, _task) = env.start();
    let first = env.serving_current(&handle).await;
    let old = first.projects[&pid()].container.clone().unwrap();

    env.new_ready.store(false, Ordering::SeqCst);
    env.fake.set_logs(
        "postgrest-p1-next",
        "exec /no/such/entrypoint: no such file\n",
    );
    // Docker restarts the new container as soon as it exists (its process exits).
    let fake = env.fake.clone();
    let crash_loop = tokio::spawn(async move {
        loop {
            if fake
                .containers()
                .iter()
                .any(|c| c.name == "postgrest-p1-next" && c.state == State::Running)
            {
                fake.set_state("postgrest-p1-next", State::Restarting);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    env.write("pw2");
    handle.wake();
    let failed = handle
        .wait_for(WAIT, |s| s.projects[&pid()].last_error.is_some())
        .await
        .expect("the replacement is given up before the timeout");
    crash_loop.abort();
    let error = failed.projects[&pid()].last_error.clone().unwrap();
    assert!(error.contains("never served (it stopped)"), "{error}");
    assert!(error.contains("no such file"), "{error}");
    assert!(error.contains("old one keeps serving"), "{error}");
    tokio::time::timeout(WAIT, async {
        while env.names() != ["postgrest-p1"] {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the new container is removed");
    assert_eq!(
        failed.projects[&pid()].container.as_ref().unwrap().id,
        old.id
    );
}

/// What a manager killed after the old container's SIGTERM finds: the old one stopped (stale),
/// the new one running with the wanted spec, neither probed yet. The project's container, and
/// so its route, is the new one from the first listing on, not the stopped one (whose route
/// would be a JSON 503 until the new one's first probe); while the old one still runs, it
/// keeps the route until the new one is known to serve.
#[test]
fn a_stopped_old_container_hands_the_route_to_a_running_replacement_before_its_probe() {
    use crate::runtime::{ContainerInfo, Health};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LoopConfig::for_tests("bg", tmp.path());
    let file = |password: &str| {
        SpecFile::new(
            Secret::new("a".repeat(32)),
            Secret::new(password.to_owned()),
        )
    };
    cfg.state.write(&pid(), &file("pw1")).unwrap();
    let old_spec = cfg.state.read(&pid()).unwrap().unwrap();
    cfg.state.write(&pid(), &file("pw2")).unwrap();
    let mut table = table::Table::default();
    table.absorb(cfg.state.load().unwrap(), &cfg.template);
    let info = |id: &str, name: &str, spec, state| {
        let rendered = render::render(spec, &cfg.template);
        let mut labels = rendered.container.labels;
        labels.insert(LABEL_UPSTREAM.to_owned(), format!("{name}-alias"));
        ContainerInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            labels,
            state,
            health: Health::None,
            ip: None,
            exit_code: None,
            tasks: None,
        }
    };
    let new_spec = cfg.state.read(&pid()).unwrap().unwrap();
    let shown = |old_state| {
        let listing = [
            info("old", "postgrest-p1", &old_spec, old_state),
            info("new", "postgrest-p1-next", &new_spec, State::Running),
        ];
        let projects = table.snapshot(&listing, &Default::default());
        let status = projects[&pid()].clone();
        (status.container.unwrap().id, status.upstream.unwrap())
    };
    assert_eq!(
        shown(State::Exited),
        ("new".to_owned(), "postgrest-p1-next-alias".to_owned())
    );
    assert_eq!(
        shown(State::Running),
        ("old".to_owned(), "postgrest-p1-alias".to_owned())
    );
}
