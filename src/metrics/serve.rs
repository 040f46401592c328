//! The metrics listener (`GET /metrics`, nothing else, no key: it carries no secret and no
//! project id) and the API layer that counts requests by route template.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::Metrics;

/// The exposition's media type: OpenMetrics text, which Prometheus asks for and reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Brings scrape-time values up to date (the project gauges, from the loop's last snapshot)
/// just before they are encoded, so the loop itself pays nothing for them.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
struct Scrape {
    metrics: Metrics,
    refresh: Refresh,
}

/// The router of the metrics listener: `GET /metrics`, 404 for anything else.
pub fn router(metrics: Metrics, refresh: Refresh) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(not_found)
        .with_state(Scrape { metrics, refresh })
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    (scrape.refresh)(&scrape.metrics);
    let body = scrape.metrics.encode();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Serves `app` on `listener` until `shutdown` completes. A scrape is one short GET, so
/// axum's plain server is enough here (the API needs the bounded one in `api::serve`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

/// Counts an API request under its route template (`MatchedPath`), never its raw path: a
/// project id in a path must not become a label. Requests no route matched are `unmatched`.
pub async fn track_api(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.api_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Anything but `/metrics` on the metrics listener.
async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "only /metrics here\n")
}
