//! The Caddy route sync against a real Caddy 2.6.2 (`launchdb/caddy:2.6.2-local`, built by
//! `deploy/build-local-images.sh`) running the stack's static config, on a private Docker
//! network, with a busybox `httpd` as the project's PostgREST.
//!
//! It proves what a user of the stack sees through Caddy's port 80: a ready project proxied
//! with its prefix stripped, a starting one a JSON 503, an unknown one a JSON 404, no prefix
//! confusion; and what the manager relies on: one PATCH, none when nothing changed, a real 412
//! for a stale ETag, the routes back after `docker restart`, `Pending` while Caddy is stopped
//! and `Applied` once it is back. Skipped, loudly, when the images are missing.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use postgrest_manager::caddy::{
    AdminUrl, CaddyAdmin, CaddyError, Etag, HttpCaddy, RouteSync, RouteTarget, Routes, SyncStatus,
};
use postgrest_manager::spec::ProjectId;
use serde_json::{json, Value};
use tokio::time::Instant;

const CADDY_IMAGE: &str = "launchdb/caddy:2.6.2-local";
const UPSTREAM_IMAGE: &str = "launchdb/busybox-base:local";
const TIMEOUT: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the test's containers and network when dropped, also when the test panics.
struct Cleanup {
    containers: Vec<String>,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = docker(&["rm", "-f", "-v", name]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// The Caddy container on the test's network.
struct CaddyBox {
    name: String,
    network: String,
}

impl CaddyBox {
    /// Its address on the test's network. Asked after every (re)start: Docker may hand out
    /// another one.
    fn ip(&self) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        docker_ok(&["inspect", "-f", &format, &self.name])
    }

    fn admin_url(&self) -> AdminUrl {
        format!("http://{}:2019", self.ip()).parse().unwrap()
    }
}

/// [`HttpCaddy`] that counts its calls, and whose address the test can change after Caddy's
/// container was restarted.
#[derive(Clone)]
struct Counting {
    caddy: Arc<Mutex<HttpCaddy>>,
    gets: Arc<AtomicUsize>,
    patches: Arc<AtomicUsize>,
}

impl Counting {
    fn new(url: &AdminUrl) -> Counting {
        Counting {
            caddy: Arc::new(Mutex::new(HttpCaddy::new(url))),
            gets: Arc::default(),
            patches: Arc::default(),
        }
    }

    fn point_at(&self, url: &AdminUrl) {
        *self.caddy.lock().unwrap() = HttpCaddy::new(url);
    }

    fn inner(&self) -> HttpCaddy {
        self.caddy.lock().unwrap().clone()
    }

    /// (GETs, PATCHes) so far.
    fn counts(&self) -> (usize, usize) {
        (
            self.gets.load(Ordering::SeqCst),
            self.patches.load(Ordering::SeqCst),
        )
    }
}

impl CaddyAdmin for Counting {
    async fn current(&self) -> Result<(Value, Etag), CaddyError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let caddy = self.inner();
        caddy.current().await
    }

    async fn replace(&self, routes: &Routes, etag: &Etag) -> Result<(), CaddyError> {
        self.patches.fetch_add(1, Ordering::SeqCst);
        let caddy = self.inner();
        caddy.replace(routes, etag).await
    }
}

/// Polls Caddy's admin API (uncounted) until it shows its slot.
async fn wait_for_admin(url: &AdminUrl) -> Value {
    let caddy = HttpCaddy::new(url);
    let start = Instant::now();
    loop {
        match caddy.current().await {
            Ok((routes, _)) => return routes,
            Err(_) if start.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("Caddy's admin API at {url} did not answer: {error}"),
        }
    }
}

/// One answer through Caddy's port 80.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn get(ip: &str, path: &str) -> Answer {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{ip}:80{path}");
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri.parse().unwrap()))
        .await
        .unwrap_or_else(|_| panic!("no answer for {uri}"))
        .unwrap_or_else(|e| panic!("GET {uri}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type");
    let retry_after = header("retry-after");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", image]).status.success()
}

fn id(raw: &str) -> ProjectId {
    ProjectId::parse(raw).unwrap()
}

#[tokio::test]
async fn routes_follow_the_desired_list_through_real_caddy() {
    let missing: Vec<&str> = [CADDY_IMAGE, UPSTREAM_IMAGE]
        .into_iter()
        .filter(|image| !image_exists(image))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "\n!!!!!!!! SKIPPED tests/caddy.rs: image(s) {missing:?} missing. Build them with \
             `bash deploy/build-local-images.sh` (Caddy) and `bash postgrest/build-test-image.sh` \
             (busybox). NOTHING ABOUT CADDY WAS TESTED. !!!!!!!!\n"
        );
        return;
    }

    // Named like tests/support's resources (`pgmt<pid>x<n>`), so CI's leftover check sees them.
    let test_id = format!("pgmt{}x0", std::process::id());
    let network = format!("{test_id}net");
    let caddy_name = format!("{test_id}caddy");
    let upstream_name = format!("{test_id}up");
    let _cleanup = Cleanup {
        containers: vec![caddy_name.clone(), upstream_name.clone()],
        network: network.clone(),
    };
    let label = format!("launchdb.instance={test_id}");
    let label = label.as_str();
    docker_ok(&["network", "create", "--label", label, &network]);

    // The project `up`'s PostgREST: answers `/` and `/items`, by the name Caddy dials.
    let up = id("up");
    let alias = up.container_name();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &upstream_name,
        "--label",
        label,
        "--network",
        &network,
        "--network-alias",
        &alias,
        UPSTREAM_IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo root > /www/index.html && echo items > /www/items \
         && exec httpd -f -p 3000 -h /www",
    ]);

    // Caddy as deploy/compose.yaml runs it: the static config, no --resume.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/caddy/caddy.json");
    let mount = format!("{config}:/etc/caddy/launchdb.json:ro");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &caddy_name,
        "--label",
        label,
        "--network",
        &network,
        "-v",
        &mount,
        CADDY_IMAGE,
        "caddy",
        "run",
        "--config",
        "/etc/caddy/launchdb.json",
    ]);
    let caddy = CaddyBox {
        name: caddy_name.clone(),
        network: network.clone(),
    };

    let url = caddy.admin_url();
    assert_eq!(
        wait_for_admin(&url).await,
        json!([]),
        "a fresh Caddy has an empty slot"
    );
    let admin = Counting::new(&url);
    let mut sync = RouteSync::new(admin.clone());

    // 1. Apply: one GET, one PATCH, and Caddy holds the list (compared as Caddy returns it).
    let reason = "starting: waiting for \"db\" <5 s> & more";
    let desired = Routes::new([
        (up.clone(), RouteTarget::Ready),
        (
            id("starting"),
            RouteTarget::NotReady {
                reason: reason.into(),
            },
        ),
    ]);
    assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
    assert_eq!(admin.counts(), (1, 1));
    let (held, _) = admin.inner().current().await.unwrap();
    assert_eq!(
        held,
        desired.to_json(),
        "Caddy's answer equals what was sent"
    );

    // 2. Nothing changed: no call; the resync tick only looks.
    assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
    assert_eq!(admin.counts(), (1, 1));
    assert_eq!(sync.sync(&desired, true).await, SyncStatus::InSync);
    assert_eq!(
        admin.counts(),
        (2, 1),
        "the resync tick GETs but sends nothing"
    );

    // 3. Through Caddy's port 80.
    let ip = caddy.ip();
    let answer = get(&ip, "/db/up/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "root\n"),
        "{answer:?}"
    );
    let answer = get(&ip, "/db/up/items?select=id").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "items\n"),
        "{answer:?}"
    );
    let answer = get(&ip, "/db/up").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "root\n"),
        "{answer:?}"
    );

    let answer = get(&ip, "/db/starting/anything").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.retry_after.as_deref(), Some("5"));
    assert_eq!(
        answer.json(),
        json!({"error": "not_ready", "message": reason})
    );

    for unknown in ["/db/nope/", "/db/upx/", "/db/upx", "/db/", "/"] {
        let answer = get(&ip, unknown).await;
        assert_eq!(answer.status, 404, "{unknown}: {answer:?}");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            answer.json(),
            json!({"error": "not_found", "message": "no such project"}),
            "{unknown}"
        );
    }

    // 4. If-Match for real: the ETag of a GET guards a PATCH; once the slot changed it is 412.
    let http = admin.inner();
    let (_, etag) = http.current().await.unwrap();
    assert!(
        etag.as_str()
            .starts_with("\"/config/apps/http/servers/launchdb/routes/0 "),
        "{etag:?}"
    );
    let only_up = Routes::new([(up.clone(), RouteTarget::Ready)]);
    http.replace(&only_up, &etag).await.unwrap();
    assert_eq!(
        http.replace(&desired, &etag).await,
        Err(CaddyError::Conflict),
        "a stale ETag"
    );
    // The sync does not know of that hand edit until its resync tick looks.
    assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
    assert_eq!(sync.sync(&desired, true).await, SyncStatus::Applied);
    assert_eq!(get(&ip, "/db/starting/").await.status, 503);

    // A change of the desired list: the route goes, its path is a 404.
    assert_eq!(sync.sync(&only_up, false).await, SyncStatus::Applied);
    assert_eq!(get(&ip, "/db/starting/").await.status, 404);
    assert_eq!(get(&ip, "/db/up/").await.status, 200);

    // 5. `docker restart`: Caddy comes back with an empty slot; the resync tick restores it.
    docker_ok(&["restart", "-t", "5", &caddy_name]);
    let url = caddy.admin_url();
    assert_eq!(
        wait_for_admin(&url).await,
        json!([]),
        "restart forgets the routes"
    );
    admin.point_at(&url);
    let ip = caddy.ip();
    assert_eq!(get(&ip, "/db/up/").await.status, 404);
    let before = admin.counts();
    assert_eq!(sync.sync(&only_up, true).await, SyncStatus::Applied);
    assert_eq!(admin.counts(), (before.0 + 1, before.1 + 1));
    let answer = get(&ip, "/db/up/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "root\n"),
        "{answer:?}"
    );

    // 6. Caddy stopped: pending with the reason, no PATCH; started again: applied.
    docker_ok(&["stop", "-t", "5", &caddy_name]);
    let before = admin.counts();
    let status = sync.sync(&desired, true).await;
    let SyncStatus::Pending { reason } = &status else {
        panic!("expected Pending while Caddy is stopped, got {status:?}");
    };
    eprintln!("while Caddy is stopped: {reason}");
    assert!(reason.contains("unreachable"), "{reason}");
    assert_eq!(admin.counts(), (before.0 + 1, before.1));
    let retry_at = sync.retry_at().expect("backing off");
    assert!(retry_at > Instant::now() && retry_at <= Instant::now() + Duration::from_millis(250));

    docker_ok(&["start", &caddy_name]);
    let url = caddy.admin_url();
    wait_for_admin(&url).await;
    admin.point_at(&url);
    tokio::time::sleep_until(retry_at).await;
    assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
    assert_eq!(sync.retry_at(), None);
    let ip = caddy.ip();
    assert_eq!(get(&ip, "/db/up/").await.status, 200);
    assert_eq!(get(&ip, "/db/starting/").await.status, 503);
}
