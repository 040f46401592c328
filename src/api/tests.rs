//! API tests through `tower::ServiceExt::oneshot`, with the real loop running on the fake
//! runtime and a local TCP server standing in for PostgREST's `/live`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

use std::time::SystemTime;

use super::dto::rfc3339;
use super::*;
use crate::configs::ConfigDir;
use crate::reconcile::{Controller, LoopConfig};
use crate::render::Template;
use crate::runtime::fake::{Call, FakeRuntime};
use crate::runtime::ContainerInfo;
use crate::runtime::Health;
use crate::spec::{ProjectId, SpecFile};

const KEY: &str = "0123456789abcdef0123456789abcdef-key";
const SECRET: &str = "jwt-secret-0123456789abcdef0123456789";

struct Harness {
    app: Router,
    fake: FakeRuntime,
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

/// Answers `HTTP/1.1 200` to every connection, like a live PostgREST admin server.
async fn live_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

/// A port nothing listens on: PostgREST never comes up.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn harness_with(live_port: u16, timeout: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let state = StateDir::new(dir.path().join("state"));
    let configs = ConfigDir::new(dir.path().join("configs"), uid);
    state.ensure().unwrap();
    configs.ensure().unwrap();
    let template = Template::for_tests("apitest", configs.path(), uid);
    let loop_config = LoopConfig {
        pgbouncer: None,
        state: state.clone(),
        configs,
        template,
        resync: Duration::from_secs(30),
        concurrency: 4,
        reload_signal: "SIGUSR2".into(),
        reload_timeout: Duration::from_secs(10),
        admin_port: live_port,
        // These tests are about the API; replacement has its own (reconcile/tests_replace.rs).
        blue_green: false,
        replace_timeout: Duration::from_secs(10),
    };
    let fake = FakeRuntime::new();
    let (controller, handle) = Controller::new(Arc::new(fake.clone()), loop_config);
    tokio::spawn(controller.run(std::future::pending()));
    let (stop, stop_rx) = watch::channel(false);
    let cfg = ApiConfig {
        state,
        reload_signal: "SIGUSR2".into(),
        key: Secret::new(KEY),
        timeout,
        admin_port: live_port,
        routes: None,
    };
    Harness {
        app: router(cfg, handle, stop_rx),
        fake,
        dir,
        stop,
    }
}

async fn harness() -> Harness {
    harness_with(live_server().await, Duration::from_secs(10)).await
}

impl Harness {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.raw(method, uri, Some(KEY), body.as_deref()).await
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("X-Internal-Key", key);
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes));
        });
        (status, value)
    }

    fn state_file(&self, id: &str) -> std::path::PathBuf {
        self.dir.path().join("state").join(format!("{id}.toml"))
    }

    fn state_text(&self, id: &str) -> Option<String> {
        std::fs::read_to_string(self.state_file(id)).ok()
    }

    async fn spawn_new(&self, id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/internal/postgrest/spawn",
                Some(
                    json!({"projectId": id, "jwtSecret": SECRET, "authenticatorPassword": "pw-1"}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

#[tokio::test]
async fn key_is_required_except_for_health() {
    let h = harness().await;
    let wrong_same_length = "X".repeat(KEY.len());
    for key in [
        None,
        Some(""),
        Some("short"),
        Some(wrong_same_length.as_str()),
    ] {
        let (status, body) = h.raw(Method::GET, "/internal/postgrest", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(body["error"], "unauthorized");
    }
    let (status, _) = h.raw(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = h.raw(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = h
        .raw(Method::GET, "/internal/postgrest", Some(KEY), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn seed_sequence_spawn_list_restart_delete() {
    let h = harness().await;
    let body = h.spawn_new("proj_abc123").await;
    let docker_id = body["dockerId"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        json!({
            "projectId": "proj_abc123",
            "containerId": "postgrest-proj_abc123",
            "containerName": "postgrest-proj_abc123",
            "port": 3000,
            "status": "running",
            "dockerId": docker_id,
        })
    );
    let mode = std::fs::metadata(h.state_file("proj_abc123"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Idempotent: the same answer, no second container.
    let (status, again) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "proj_abc123"})),
        )
        .await;
    assert_eq!((status, &again), (StatusCode::CREATED, &body));

    let (status, list) = h.call(Method::GET, "/internal/postgrest", None).await;
    assert_eq!(status, StatusCode::OK);
    let entry = &list["containers"][0];
    assert_eq!(entry["projectId"], "proj_abc123");
    assert_eq!(entry["containerName"], "postgrest-proj_abc123");
    assert_eq!(entry["port"], 3000);
    assert_eq!(entry["status"], "running");

    h.fake.take_calls();
    let (status, body) = h
        .call(
            Method::POST,
            "/internal/postgrest/proj_abc123/restart",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["projectId"], "proj_abc123");
    assert_eq!(body["status"], "reloaded");
    assert_eq!(
        body["message"],
        "PostgREST configuration reloaded via SIGUSR2"
    );
    let calls = h.fake.take_calls();
    assert!(
        calls.contains(&Call::Signal(docker_id.clone(), "SIGUSR2".into())),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Create(_))),
        "{calls:?}"
    );
    assert!(h
        .state_text("proj_abc123")
        .unwrap()
        .contains("reload_token = 1"));

    let (status, body) = h
        .call(Method::DELETE, "/internal/postgrest/proj_abc123", None)
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"projectId": "proj_abc123", "status": "stopped"})
        )
    );
    assert!(h.fake.containers().is_empty());
    assert!(h.state_text("proj_abc123").is_none());
    let (_, list) = h.call(Method::GET, "/internal/postgrest", None).await;
    assert_eq!(list, json!({"containers": []}));

    let (status, body) = h
        .call(Method::DELETE, "/internal/postgrest/proj_abc123", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn unknown_projects_are_404() {
    let h = harness().await;
    let (status, body) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "nobody"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    for (method, uri) in [
        (Method::POST, "/internal/postgrest/nobody/restart"),
        (Method::GET, "/internal/postgrest/nobody"),
        (Method::DELETE, "/internal/postgrest/nobody"),
    ] {
        let (status, _) = h.call(method.clone(), uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    assert!(h.state_text("nobody").is_none());
}

#[tokio::test]
async fn put_creates_replaces_and_disables() {
    let h = harness().await;
    let uri = "/internal/postgrest/p1";
    let spec = json!({"jwtSecret": SECRET, "authenticatorPassword": "pw", "maxRows": 50});
    let (status, body) = h.call(Method::PUT, uri, Some(spec.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["converged"].as_bool()),
        (Some("running"), Some(true))
    );
    assert!(h.state_text("p1").unwrap().contains("max_rows = 50"));

    let (status, _) = h.call(Method::PUT, uri, Some(spec)).await;
    assert_eq!(status, StatusCode::OK);

    let disabled = json!({"jwtSecret": SECRET, "authenticatorPassword": "pw", "enabled": false});
    let (status, body) = h.call(Method::PUT, uri, Some(disabled)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["desired"].as_str(), body["status"].as_str()),
        (Some("disabled"), Some("absent"))
    );
    assert!(h.fake.containers().is_empty());

    // Restarting a disabled project is "not running".
    let (status, _) = h
        .call(Method::POST, "/internal/postgrest/p1/restart", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Spawn without secrets enables the existing file.
    let (status, _) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "p1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = h.call(Method::GET, uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["desired"], "enabled");
    assert_eq!(body["converged"], true);
}

#[tokio::test]
async fn bad_input_is_400_413_415_and_changes_nothing() {
    let h = harness().await;
    let big = format!(
        r#"{{"projectId": "p", "jwtSecret": "{}"}}"#,
        "x".repeat(BODY_LIMIT)
    );
    let pool_zero =
        format!(r#"{{"jwtSecret": "{SECRET}", "authenticatorPassword": "pw", "dbPool": 0}}"#);
    let pool_too_big = format!(
        r#"{{"jwtSecret": "{SECRET}", "authenticatorPassword": "pw", "dbPool": 12, "poolSize": 8, "reservePool": 2}}"#
    );
    let rows_secret = format!(
        r#"{{"jwtSecret": "{SECRET}", "authenticatorPassword": "pw", "maxRows": "{SECRET}"}}"#
    );
    let cases: Vec<(Method, &str, &str, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/internal/postgrest/spawn",
            "{",
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            "",
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            "[]",
            StatusCode::BAD_REQUEST,
            "expected struct SpawnRequest",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            r#"{"projectId": "p", "extra": 1}"#,
            StatusCode::BAD_REQUEST,
            "unknown field `extra`",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            r#"{"projectid": "p"}"#,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            r#"{"projectId": "../etc"}"#,
            StatusCode::BAD_REQUEST,
            "projectId: invalid project id",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            r#"{"projectId": "p", "jwtSecret": "short", "authenticatorPassword": "pw"}"#,
            StatusCode::BAD_REQUEST,
            "jwtSecret: must be at least 32",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            r#"{"projectId": "p"} {}"#,
            StatusCode::BAD_REQUEST,
            "after the JSON body",
        ),
        (
            Method::POST,
            "/internal/postgrest/spawn",
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            Method::PUT,
            "/internal/postgrest/p",
            r#"{"jwtSecret": 5}"#,
            StatusCode::BAD_REQUEST,
            "jwtSecret: invalid type: integer",
        ),
        (
            Method::PUT,
            "/internal/postgrest/p",
            r#"{"authenticatorPassword": "pw"}"#,
            StatusCode::BAD_REQUEST,
            "missing field `jwtSecret`",
        ),
        (
            Method::PUT,
            "/internal/postgrest/p",
            &pool_zero,
            StatusCode::BAD_REQUEST,
            "dbPool: must be between",
        ),
        (
            Method::PUT,
            "/internal/postgrest/p",
            &pool_too_big,
            StatusCode::BAD_REQUEST,
            "dbPool: 12 is larger than the PgBouncer pool of 10 (pool size 8 + reserve pool 2)",
        ),
        (
            Method::PUT,
            "/internal/postgrest/p",
            &rows_secret,
            StatusCode::BAD_REQUEST,
            "maxRows: invalid type: string",
        ),
        (
            Method::PUT,
            "/internal/postgrest/P",
            r#"{}"#,
            StatusCode::BAD_REQUEST,
            "invalid project id",
        ),
        (
            Method::GET,
            "/internal/postgrest/a%3Bls",
            "",
            StatusCode::BAD_REQUEST,
            "invalid project id",
        ),
        (
            Method::GET,
            "/internal/postgrest/..%2F..%2Fetc%2Fpasswd",
            "",
            StatusCode::BAD_REQUEST,
            "invalid project id",
        ),
        (
            Method::PATCH,
            "/internal/postgrest/p",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        (
            Method::GET,
            "/internal/postgrest/p/extra/segments",
            "",
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    for (method, uri, body, expected, needle) in cases {
        let body = (!body.is_empty() || method != Method::GET).then_some(body);
        let (status, answer) = h.raw(method.clone(), uri, Some(KEY), body).await;
        assert_eq!(
            status,
            expected,
            "{method} {uri} {:.80}: {answer}",
            body.unwrap_or_default()
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {uri}: {message}");
        assert!(!message.contains(SECRET), "secret in {message}");
        assert!(answer["error"].is_string());
    }

    let request = Request::post("/internal/postgrest/spawn")
        .header("X-Internal-Key", KEY)
        .header("Content-Type", "text/plain")
        .body(Body::from(r#"{"projectId": "p"}"#))
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Nothing but the writers' lock file, which is empty.
    let entries: Vec<_> = std::fs::read_dir(h.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".lock")
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[tokio::test]
async fn timeout_answers_504_and_keeps_the_desired_state() {
    let h = harness_with(dead_port().await, Duration::from_millis(700)).await;
    let (status, body) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "slow", "jwtSecret": SECRET, "authenticatorPassword": "pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "timeout");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("desired state is saved"));
    assert!(h.state_text("slow").is_some());
    // The loop did its part: the container runs; only PostgREST's /live never answered.
    assert_eq!(h.fake.containers().len(), 1);
}

#[tokio::test]
async fn docker_down_is_503_and_changes_nothing() {
    let h = harness().await;
    h.fake.set_unavailable(true);
    let (status, body) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "p", "jwtSecret": SECRET, "authenticatorPassword": "pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "docker_unavailable");
    assert!(h.state_text("p").is_none());
    let (status, _) = h.raw(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn foreign_container_is_409() {
    let h = harness().await;
    h.fake.insert(ContainerInfo {
        id: "someone-else".into(),
        name: "postgrest-taken".into(),
        labels: Default::default(),
        state: crate::plan::State::Running,
        health: Health::None,
        ip: None,
        exit_code: None,
        tasks: None,
    });
    let (status, body) = h
        .call(
            Method::POST,
            "/internal/postgrest/spawn",
            Some(json!({"projectId": "taken", "jwtSecret": SECRET, "authenticatorPassword": "pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("postgrest-taken"));
    // The list says why it is not running.
    let (_, list) = h.call(Method::GET, "/internal/postgrest", None).await;
    let entry = &list["containers"][0];
    assert_eq!(
        (entry["projectId"].as_str(), entry["status"].as_str()),
        (Some("taken"), Some("absent"))
    );
    assert!(entry["reason"]
        .as_str()
        .unwrap()
        .starts_with("a container named"));
}

#[tokio::test]
async fn concurrent_puts_leave_one_whole_request() {
    let h = Arc::new(harness().await);
    let mut tasks = Vec::new();
    for n in 0..20u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let spec = json!({"jwtSecret": format!("{SECRET}-{n:02}"), "authenticatorPassword": format!("pw-{n:02}"), "maxRows": n + 1});
            h.call(Method::PUT, "/internal/postgrest/busy", Some(spec)).await.0
        }));
    }
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::CREATED,
            "{status}"
        );
    }
    let text = h.state_text("busy").unwrap();
    let file = SpecFile::parse(&text).unwrap();
    let n = file.max_rows.unwrap() - 1;
    assert_eq!(file.jwt_secret.expose(), format!("{SECRET}-{n:02}"));
    assert_eq!(file.authenticator_password.expose(), format!("pw-{n:02}"));
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let h = harness().await;
    let (status, doc) = h.call(Method::GET, "/internal/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/internal/postgrest/spawn",
        "/internal/postgrest/{id}/restart",
        "/internal/postgrest/{id}/reload-schema",
        "/internal/postgrest/{id}",
        "/internal/postgrest",
        "/internal/openapi.json",
        "/internal/plan",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(paths["/internal/postgrest/{id}"]["put"].is_object());
    assert!(doc["components"]["schemas"]["SpawnResponse"].is_object());
    assert!(doc["components"]["schemas"]["EventView"].is_object());
    assert!(doc["components"]["schemas"]["ProjectView"]["properties"]["events"].is_object());
    assert!(doc["components"]["securitySchemes"]["internal_key"].is_object());
    assert_eq!(doc, serde_json::to_value(openapi_document()).unwrap());
}

#[tokio::test]
async fn project_locks_serialise_and_clean_up() {
    let locks = Locks::default();
    let id = ProjectId::parse("p").unwrap();
    let first = locks.lock(&id).await;
    let waiting = locks.lock(&id);
    tokio::pin!(waiting);
    assert!(futures_util::poll!(&mut waiting).is_pending());
    drop(first);
    let second = waiting.await;
    drop(second);
    assert!(locks.map.lock().unwrap().is_empty());
}

#[test]
fn rfc3339_dates() {
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(at(1_798_425_984)), "2026-12-28T02:46:24Z");
}

#[tokio::test]
async fn shutdown_answers_waiting_requests_at_once() {
    let h = Arc::new(harness_with(dead_port().await, Duration::from_secs(60)).await);
    let waiting = {
        let h = h.clone();
        tokio::spawn(async move {
            let body =
                json!({"projectId": "p", "jwtSecret": SECRET, "authenticatorPassword": "pw"});
            h.call(Method::POST, "/internal/postgrest/spawn", Some(body))
                .await
        })
    };
    // The request has written the state and the container runs: it now waits for a /live
    // that never answers.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.fake.containers().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the container is created");
    assert!(!waiting.is_finished());
    let started = std::time::Instant::now();
    h.stop.send(true).unwrap();
    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down"))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The desired state was saved before the wait; the next manager converges it.
    assert!(h.state_text("p").is_some());
}

#[tokio::test]
async fn plan_and_events_say_what_happened_and_why() {
    let h = harness().await;
    let (status, _) = h.raw(Method::GET, "/internal/plan", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    h.spawn_new("p1").await;
    // The plan is the last pass's: the spawn answers as its own create ends, and the pass
    // that confirms it follows.
    let plan = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, plan) = h.call(Method::GET, "/internal/plan", None).await;
            assert_eq!(status, StatusCode::OK, "{plan}");
            if plan["converged"] == true {
                return plan;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the pass after the create plans nothing");
    assert_eq!(
        plan["projects"],
        json!([{"projectId": "p1", "action": "nothing", "reason": "nothing: converged"}])
    );

    let (status, view) = h.call(Method::GET, "/internal/postgrest/p1", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["events"][0]["kind"], "created", "{view}");
    assert_eq!(view["events"][0]["reason"], "container created and started");
    assert!(view["events"][0]["at"].as_str().unwrap().ends_with('Z'));
    // The list stays lean: no events there.
    let (_, list) = h.call(Method::GET, "/internal/postgrest", None).await;
    assert!(list["containers"][0].get("events").is_none(), "{list}");

    // A new secret through PUT: reloaded, and the event names the key, never its value.
    let new_secret = "another-jwt-secret-0123456789abcdef012";
    let (status, _) = h
        .call(
            Method::PUT,
            "/internal/postgrest/p1",
            Some(json!({"jwtSecret": new_secret, "authenticatorPassword": "pw-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, view) = h.call(Method::GET, "/internal/postgrest/p1", None).await;
    assert_eq!(view["events"][1]["kind"], "reloaded", "{view}");
    assert_eq!(view["events"][1]["reason"], "jwt_secret changed", "{view}");
    let text = view.to_string();
    assert!(!text.contains(SECRET) && !text.contains(new_secret) && !text.contains("pw-1"));
}

/// With PgBouncer's pools kept, every project with a spec shows whether they are in place, and
/// why not; without them, or for a project without a spec, nothing is shown.
#[test]
fn the_pools_state_is_shown_on_projects_with_a_spec() {
    use super::dto::ProjectView;
    use crate::reconcile::ProjectStatus;
    let id = ProjectId::parse("p1").unwrap();
    let status = ProjectStatus::default();
    let absent = ProjectView::new(&id, &status);
    let pending = Some(Some("signalling pgbouncer: not found".to_owned()));
    assert_eq!(absent.clone().with_pool(pending.as_ref()).pool, None);
    let mut enabled = absent;
    enabled.desired = crate::spec::DesiredState::Enabled;
    assert_eq!(
        enabled.clone().with_pool(pending.as_ref()).pool.as_deref(),
        Some("pending: signalling pgbouncer: not found")
    );
    assert_eq!(
        enabled.clone().with_pool(Some(&None)).pool.as_deref(),
        Some("in place")
    );
    assert_eq!(enabled.with_pool(None).pool, None);
}
