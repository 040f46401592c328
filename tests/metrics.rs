//! Operators' telemetry against the real Docker daemon: the manager binary with
//! `--metrics-listen` scraped over HTTP while it creates a project, and `--log-format json`
//! read line by line. What is asserted is what Prometheus or a log shipper would see.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The address in the manager's `metrics listening listen=<address>` line.
fn metrics_addr(manager: &Manager) -> SocketAddr {
    wait_until("the manager to log the metrics address", || {
        manager.log().lines().find_map(|line| {
            if !line.contains("metrics listening") {
                return None;
            }
            let start = line.find(" listen=")? + " listen=".len();
            line[start..].split_whitespace().next()?.parse().ok()
        })
    })
}

/// `GET path` on `addr`: (status, content type, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let response = Response::parse(&raw).unwrap();
    let content_type = response
        .headers
        .get("content-type")
        .cloned()
        .unwrap_or_default();
    (response.status, content_type, response.body)
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 when absent: a
/// counter with a label set never seen is not exported yet.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| {
            value.split_whitespace().next().unwrap().parse().unwrap()
        })
}

fn scrape(addr: SocketAddr) -> String {
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

#[test]
fn metrics_move_with_actions_on_their_own_port_without_ids_or_secrets() {
    let env = TestEnv::new();
    let api = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            ..ManagerOpts::default()
        },
    );
    let metrics = metrics_addr(&api);
    assert_ne!(metrics, api.addr());
    let before = scrape(metrics);
    assert_eq!(sample(&before, r#"pgm_build_info{version="0.1.0"}"#), 1.0);
    let create = r#"pgm_actions_total{kind="create",result="ok"}"#;
    let passes = "pgm_reconcile_passes_total";
    let inspected = r#"pgm_docker_requests_total{operation="inspect",result="ok"}"#;
    assert_eq!(sample(&before, create), 0.0);

    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    let spawn = api.call(
        "POST",
        "/internal/postgrest/spawn",
        Some(json!({"projectId": id, "jwtSecret": jwt_secret, "authenticatorPassword": password})),
    );
    assert_eq!(spawn.status, 201, "{}", spawn.body);

    let after = scrape(metrics);
    assert_eq!(sample(&after, create), 1.0, "{after}");
    assert!(sample(&after, passes) > sample(&before, passes), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"pgm_action_duration_seconds_count{kind="create"}"#
        ),
        1.0
    );
    // The create was confirmed by asking Docker for that container alone.
    assert!(sample(&after, inspected) >= 1.0, "{after}");
    assert!(
        sample(
            &after,
            r#"pgm_docker_requests_total{operation="list",result="ok"}"#
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"pgm_api_requests_total{route="/internal/postgrest/spawn",method="POST",status="201"}"#
        ),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, r#"pgm_projects{desired="enabled"}"#), 1.0);
    assert_eq!(
        sample(&after, r#"pgm_projects_state{state="running"}"#),
        1.0
    );
    assert_eq!(sample(&after, "pgm_docker_outages_total"), 0.0);

    // The API's port has no /metrics, with or without the key; the miss is counted under
    // no route, never under its raw path.
    assert_eq!(api.call("GET", "/metrics", None).status, 404);
    assert_eq!(api.request("GET", "/metrics", None, None, &[]).status, 404);
    let later = scrape(metrics);
    assert_eq!(
        sample(
            &later,
            r#"pgm_api_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        2.0,
        "{later}"
    );
    // The metrics port serves nothing else.
    assert_eq!(get(metrics, "/internal/postgrest").0, 404);

    for text in [&before, &after, &later] {
        for hidden in [id.as_str(), &jwt_secret, &password, api.key()] {
            assert!(!text.contains(hidden), "{hidden:?} in the scrape:\n{text}");
        }
    }
}

#[test]
fn a_taken_metrics_address_stops_serve_before_anything_runs() {
    let env = TestEnv::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let log = env.root().join("taken-metrics.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_postgrest-manager"));
    command
        .arg("serve")
        .arg("--state-dir")
        .arg(&env.state_dir)
        .arg("--config-dir")
        .arg(&env.config_dir)
        .args(["--instance", &env.instance, "--network", &env.network])
        .args(["--image", &image(), "--no-api"])
        .args(["--metrics-listen", &taken.local_addr().unwrap().to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let status = env
        .spawn(&mut command)
        .wait_timeout(Duration::from_secs(20))
        .expect("serve exits when the metrics address is taken");
    let stderr = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("binding the metrics listener"), "{stderr}");
    assert!(env.containers().is_empty());
}

#[test]
fn json_logs_are_one_object_per_line_with_the_project_and_no_secret() {
    let env = TestEnv::new();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            args: vec!["--log-format".into(), "json".into()],
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    env.wait_serving(&id);

    let is_create = |line: &Value| {
        line["fields"]["message"] == "done"
            && line["fields"]["action"] == "Create"
            && line["span"]["name"] == "reconcile"
            && line["span"]["project"] == id.as_str()
    };
    let lines: Vec<Value> = wait_until("the create's log line", || {
        let log = manager.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"))
            })
            .collect();
        lines.iter().any(is_create).then_some(lines)
    });
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "pass finished"),
        "the loop's debug lines are there too"
    );
    let log = manager.log();
    assert!(!log.contains(&jwt_secret) && !log.contains(&password));
}
