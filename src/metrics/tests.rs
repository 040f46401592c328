//! The exposition as Prometheus reads it: names, units, label sets, zeros kept, route
//! templates instead of raw paths.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use tower::ServiceExt;

use super::serve::{router, track_api, CONTENT_TYPE};
use super::*;

fn has(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
}

#[test]
fn names_units_and_labels_follow_prometheus() {
    let m = Metrics::new();
    m.pass_finished(Duration::from_millis(3));
    m.pass_finished(Duration::from_millis(2));
    m.action_finished("create", true, Duration::from_millis(40));
    m.action_finished("reload", false, Duration::from_millis(1));
    m.docker_outage();
    m.caddy_sync("applied");
    m.api_request("/internal/postgrest/{id}", "PUT", 201, Duration::ZERO);
    m.api_request("unmatched", "BREW", 404, Duration::ZERO);
    m.set_projects(
        [
            (
                DesiredState::Enabled,
                Some((State::Running, Health::Healthy)),
            ),
            (DesiredState::Enabled, Some((State::Exited, Health::None))),
            (DesiredState::Disabled, None),
        ]
        .into_iter(),
    );
    let text = m.encode();
    for line in [
        r#"pgm_build_info{version="0.1.0"} 1"#,
        "# TYPE pgm_reconcile_passes counter",
        "pgm_reconcile_passes_total 2",
        "# TYPE pgm_reconcile_pass_duration_seconds histogram",
        "# UNIT pgm_reconcile_pass_duration_seconds seconds",
        "pgm_reconcile_pass_duration_seconds_count 2",
        r#"pgm_actions_total{kind="create",result="ok"} 1"#,
        r#"pgm_actions_total{kind="reload",result="error"} 1"#,
        r#"pgm_action_duration_seconds_count{kind="create"} 1"#,
        "pgm_docker_outages_total 1",
        "pgm_docker_event_stream_reconnects_total 0",
        r#"pgm_caddy_syncs_total{result="applied"} 1"#,
        r#"pgm_api_requests_total{route="/internal/postgrest/{id}",method="PUT",status="201"} 1"#,
        r#"pgm_api_requests_total{route="unmatched",method="other",status="404"} 1"#,
        r#"pgm_projects{desired="enabled"} 2"#,
        r#"pgm_projects{desired="disabled"} 1"#,
        // Every value of a bounded label is exported, 0 included.
        r#"pgm_projects{desired="invalid"} 0"#,
        r#"pgm_projects_state{state="running"} 1"#,
        r#"pgm_projects_state{state="exited"} 1"#,
        r#"pgm_projects_state{state="none"} 1"#,
        r#"pgm_projects_state{state="dead"} 0"#,
        r#"pgm_projects_health{health="healthy"} 1"#,
        r#"pgm_projects_health{health="none"} 1"#,
        r#"pgm_projects_health{health="no_container"} 1"#,
        "# EOF",
    ] {
        has(&text, line);
    }

    // The gauges follow the projects, down to zero.
    m.set_projects(std::iter::empty());
    let text = m.encode();
    has(&text, r#"pgm_projects{desired="enabled"} 0"#);
    has(&text, r#"pgm_projects_state{state="running"} 0"#);
}

async fn get_text(app: Router, path: &str) -> (StatusCode, String, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn api_requests_are_counted_by_route_template_never_by_path() {
    let m = Metrics::new();
    let app = Router::new()
        .route("/internal/postgrest/{id}", get(|| async { "ok" }))
        .route("/internal/postgrest/{id}", put(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(m.clone(), track_api));
    for path in [
        "/internal/postgrest/tenant-secret-name",
        "/internal/postgrest/another-one",
        "/metrics",
    ] {
        get_text(app.clone(), path).await;
    }
    let text = m.encode();
    has(
        &text,
        r#"pgm_api_requests_total{route="/internal/postgrest/{id}",method="GET",status="200"} 2"#,
    );
    has(
        &text,
        r#"pgm_api_requests_total{route="unmatched",method="GET",status="404"} 1"#,
    );
    assert!(!text.contains("tenant-secret-name"), "{text}");
    assert!(!text.contains("/metrics"), "{text}");
}

#[tokio::test]
async fn the_listener_serves_metrics_only_and_refreshes_before_encoding() {
    let m = Metrics::new();
    let refreshed = Arc::new(AtomicUsize::new(0));
    let counter = refreshed.clone();
    let app = router(
        m,
        Arc::new(move |m: &Metrics| {
            counter.fetch_add(1, Ordering::SeqCst);
            m.set_projects([(DesiredState::Enabled, None)].into_iter());
        }),
    );
    let (status, content_type, body) = get_text(app.clone(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, CONTENT_TYPE);
    has(&body, r#"pgm_projects{desired="enabled"} 1"#);
    assert_eq!(refreshed.load(Ordering::SeqCst), 1);
    let (status, _, _) = get_text(app, "/internal/postgrest").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
