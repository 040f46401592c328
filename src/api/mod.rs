//! The HTTP management API: the seed's four endpoints, byte-compatible, plus upsert, status,
//! health and the OpenAPI document.
//!
//! Handlers never touch Docker. A write endpoint takes the project's lock, edits desired state
//! (atomically, through [`StateDir::edit`]), wakes the loop and waits on its published
//! [`Snapshot`] until the project converged, then answers; on timeout it answers 504 and the
//! loop keeps going. The routes and the OpenAPI document come from the same `#[utoipa::path]`
//! attributes (through `utoipa_axum::routes!`), so the document cannot drift from the
//! handlers.
//!
//! Rooms: `handlers`, `ops` (the plan, the schema reload), `dto` (bodies and views), `wait`
//! (writing and waiting for the loop), `extract`, `auth`, `locks`, `error`.
//!
//! [`Snapshot`]: crate::reconcile::Snapshot

mod auth;
mod dto;
mod error;
mod extract;
mod handlers;
mod locks;
mod ops;
pub mod serve;
#[cfg(test)]
mod tests;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use tokio::sync::watch;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use dto::{
    DeleteResponse, EventView, HealthResponse, ListResponse, PlanLine, PlanResponse, ProjectView,
    PutRequest, ReloadSchemaResponse, RestartResponse, SpawnRequest, SpawnResponse,
};
pub use error::{ApiError, ErrorBody};

use crate::caddy::RouteState;
use crate::reconcile::Handle;
use crate::spec::Secret;
use crate::state_dir::StateDir;
use handlers::*;
use locks::Locks;
use ops::*;

/// The largest request body accepted; a full spec is well under 1 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the API needs to know; `main` builds it from the settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub state: StateDir,
    /// Named in the restart answer.
    pub reload_signal: String,
    pub key: Secret,
    /// How long a write waits for convergence before answering 504.
    pub timeout: Duration,
    /// The port probed for `/ready`: PostgREST's admin port, or a test server's.
    pub admin_port: u16,
    /// With Caddy configured: what its routes are (spawn and PUT also wait for the project's
    /// route, so a 2xx means the public path serves).
    pub routes: Option<watch::Receiver<RouteState>>,
}

/// Shared by every request.
struct Ctx {
    cfg: ApiConfig,
    /// The key is compared as a digest, so the comparison time does not depend on its length.
    key_digest: [u8; 32],
    handle: Handle,
    locks: Locks,
    shutdown: watch::Receiver<bool>,
    /// Slots for write requests in flight.
    writers: Arc<tokio::sync::Semaphore>,
    /// The OpenAPI document, serialised once.
    openapi: Bytes,
}

type Shared = Arc<Ctx>;

/// Builds the API. `shutdown` turning true makes waiting requests answer 503 at once instead
/// of holding the server's graceful shutdown until their timeout.
pub fn router(cfg: ApiConfig, handle: Handle, shutdown: watch::Receiver<bool>) -> Router {
    let (internal, public, doc) = routes();
    let ctx = Arc::new(Ctx {
        key_digest: auth::key_digest(cfg.key.expose()),
        cfg,
        handle,
        locks: Locks::default(),
        shutdown,
        writers: Arc::new(tokio::sync::Semaphore::new(wait::MAX_WRITERS)),
        openapi: Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default()),
    });

    let internal = internal.route_layer(middleware::from_fn_with_state(
        ctx.clone(),
        auth::require_key,
    ));
    Router::new()
        .merge(internal)
        .merge(public)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(ctx.clone(), bounded))
        .with_state(ctx)
}

/// Past a write's own convergence timeout, a request has had its chance: nothing may hold a
/// connection and a task longer (a lock held from outside, a stuck disk).
const REQUEST_SLACK: Duration = Duration::from_secs(5);

async fn bounded(
    axum::extract::State(ctx): axum::extract::State<Shared>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit = ctx.cfg.timeout + REQUEST_SLACK;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "the request took longer than {} s; the desired state may have been saved, and \
             the manager keeps working on it",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// The OpenAPI document, as served at `/internal/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes().2
}

/// The one list of routes: the key-protected ones, the public ones, and the document both
/// are described in, from the same `#[utoipa::path]` attributes.
fn routes() -> (Router<Shared>, Router<Shared>, utoipa::openapi::OpenApi) {
    let (internal, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(spawn))
        .routes(routes!(restart))
        .routes(routes!(reload_schema))
        .routes(routes!(list))
        .routes(routes!(plan))
        .routes(routes!(get_project, put_project, delete_project))
        .routes(routes!(openapi_json))
        .split_for_parts();
    let (public, public_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    doc.merge(public_doc);
    (internal, public, doc)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "postgrest-manager",
        description = "Runs one PostgREST container per project from desired-state files. \
                       Every /internal route needs the X-Internal-Key header."
    ),
    modifiers(&KeyScheme),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct KeyScheme;

impl utoipa::Modify for KeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "internal_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Internal-Key"))),
        );
    }
}
