//! The HTTP management API: the seed's four endpoints, byte-compatible, plus upsert, status,
//! health and the OpenAPI document.
//!
//! Handlers never touch Docker. A write endpoint takes the project's lock, writes desired state
//! (atomically, through [`StateDir`]), wakes the loop and waits on its published [`Snapshot`]
//! until the project converged, then answers; on timeout it answers 504 and the loop keeps
//! going. The routes and the OpenAPI document come from the same `#[utoipa::path]` attributes
//! (through `utoipa_axum::routes!`), so the document cannot drift from the handlers.

mod error;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

use crate::plan::State as ContainerState;
use crate::probe;
use crate::reconcile::{ContainerView, Handle, ProjectStatus, Snapshot};
use crate::render::{self, Template, ADMIN_PORT, SERVER_PORT};
use crate::runtime::Health;
use crate::spec::{ProjectId, Secret, Spec, SpecError, SpecFile, StateDir, StateLock, WriteError};

/// The largest request body accepted; a full spec is well under 1 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Between two liveness probes of a starting container: short at first (the test double and a
/// PostgREST with a warm pool answer within milliseconds of the start), doubling up to the max
/// for one that takes its time connecting to the database.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(100);
/// How long one probe may take; a live PostgREST answers in microseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for the loop's first look at Docker before answering 503.
const DOCKER_GRACE: Duration = Duration::from_secs(2);
/// The prefix of the loop's error for a foreign container holding a project's name.
const CONFLICT_PREFIX: &str = "a container named";
const KEY_HEADER: &str = "x-internal-key";

/// What the API needs to know, from the manager's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub state: StateDir,
    /// To compute the spec-hash and config digest of what a request wrote, and so know when
    /// the loop has caught up with it.
    pub template: Template,
    pub reload_signal: String,
    pub key: Secret,
    /// How long a write waits for convergence before answering 504.
    pub timeout: Duration,
    /// The port probed for `/live`: PostgREST's admin port, or a test server's.
    pub live_port: u16,
}

impl ApiConfig {
    pub fn new(
        loop_config: &crate::reconcile::LoopConfig,
        api: &crate::settings::ApiSettings,
    ) -> ApiConfig {
        ApiConfig {
            state: loop_config.state.clone(),
            template: loop_config.template.clone(),
            reload_signal: loop_config.reload_signal.clone(),
            key: api.key.clone(),
            timeout: api.timeout,
            live_port: ADMIN_PORT,
        }
    }
}

/// Shared by every request.
struct Ctx {
    cfg: ApiConfig,
    /// The key is compared as a digest, so the comparison time does not depend on its length.
    key_digest: [u8; 32],
    handle: Handle,
    locks: Locks,
    shutdown: watch::Receiver<bool>,
    /// The OpenAPI document, serialised once.
    openapi: Bytes,
}

type Shared = Arc<Ctx>;

/// Builds the API. `shutdown` turning true makes waiting requests answer 503 at once instead
/// of holding the server's graceful shutdown until their timeout.
pub fn router(cfg: ApiConfig, handle: Handle, shutdown: watch::Receiver<bool>) -> Router {
    let (internal, public, doc) = routes();
    let ctx = Arc::new(Ctx {
        key_digest: Sha256::digest(cfg.key.expose().as_bytes()).into(),
        cfg,
        handle,
        locks: Locks::default(),
        shutdown,
        openapi: Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default()),
    });

    let internal = internal.route_layer(middleware::from_fn_with_state(ctx.clone(), require_key));
    Router::new()
        .merge(internal)
        .merge(public)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(ctx)
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
        .routes(routes!(list))
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

// ---------------------------------------------------------------------------------------------
// Authentication, extractors, locks

async fn require_key(State(ctx): State<Shared>, request: Request, next: Next) -> Response {
    let Some(given) = request.headers().get(KEY_HEADER) else {
        return ApiError::MissingKey.into_response();
    };
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if bool::from(given.ct_eq(&ctx.key_digest)) {
        next.run(request).await
    } else {
        ApiError::WrongKey.into_response()
    }
}

/// A JSON body, limited in size, whose every rejection is an [`ApiError`].
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
            if !is_json(content_type) {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::TooLarge(BODY_LIMIT)
                    } else {
                        ApiError::BadRequest("cannot read the request body".into())
                    }
                })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| ApiError::BadRequest(error::describe_json_error(e)))?;
        deserializer
            .end()
            .map_err(|_| ApiError::BadRequest("unexpected data after the JSON body".into()))?;
        Ok(ApiJson(value))
    }
}

fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(value) = content_type.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence.to_ascii_lowercase().ends_with("+json"))
}

/// A project id from the path, validated before it reaches a file name or a container name.
struct ProjectPath(ProjectId);

impl<S: Send + Sync> FromRequestParts<S> for ProjectPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::BadRequest("the project id in the path is not valid UTF-8".into())
            })?;
        parse_id(&raw).map(ProjectPath)
    }
}

fn parse_id(raw: &str) -> Result<ProjectId, ApiError> {
    ProjectId::parse(raw).map_err(|e| ApiError::BadRequest(format!("projectId: {e}")))
}

/// One async mutex per project, so two requests for a project never interleave their
/// read-modify-write and wait. Entries go when their last user does, so the map cannot grow
/// with ids nobody is working on.
#[derive(Default)]
struct Locks {
    map: Mutex<HashMap<ProjectId, Arc<tokio::sync::Mutex<()>>>>,
}

struct ProjectLock<'a> {
    locks: &'a Locks,
    id: ProjectId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Locks {
    async fn lock(&self, id: &ProjectId) -> ProjectLock<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        ProjectLock {
            locks: self,
            id: id.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for ProjectLock<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        self.guard = None;
        // Only the map holds it now: nobody waits, so the entry can go. Waiters hold a clone
        // taken under the map's lock, so none can slip in between.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// `POST /internal/postgrest/spawn`. Without secrets the project's existing state file is
/// enabled; with them the secrets are written (a new project needs both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpawnRequest {
    #[schema(example = "proj_abc123")]
    pub project_id: String,
    /// At least 32 characters.
    #[schema(value_type = Option<String>)]
    pub jwt_secret: Option<Secret>,
    #[schema(value_type = Option<String>)]
    pub authenticator_password: Option<Secret>,
}

/// The seed's spawn answer. `containerId` holds the container name, as the seed's does; the
/// Docker id is `dockerId`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpawnResponse {
    #[schema(example = "proj_abc123")]
    pub project_id: String,
    #[schema(example = "postgrest-proj_abc123")]
    pub container_id: String,
    #[schema(example = "postgrest-proj_abc123")]
    pub container_name: String,
    #[schema(example = 3000)]
    pub port: u16,
    #[schema(example = "running")]
    pub status: String,
    pub docker_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartResponse {
    pub project_id: String,
    #[schema(example = "reloaded")]
    pub status: String,
    #[schema(example = "PostgREST configuration reloaded via SIGUSR2")]
    pub message: String,
    pub container_name: String,
    pub docker_id: String,
    pub reload_token: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    pub project_id: String,
    #[schema(example = "stopped")]
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    pub containers: Vec<ProjectView>,
}

/// `PUT /internal/postgrest/{id}`: the whole spec. Omitted optional fields take their
/// defaults, except `reloadToken`, which keeps the current value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutRequest {
    #[schema(value_type = String)]
    pub jwt_secret: Secret,
    #[schema(value_type = String)]
    pub authenticator_password: Secret,
    pub enabled: Option<bool>,
    pub db_name: Option<String>,
    pub db_host: Option<String>,
    pub db_port: Option<u16>,
    pub db_schemas: Option<Vec<String>>,
    pub db_anon_role: Option<String>,
    pub jwt_aud: Option<String>,
    pub max_rows: Option<u32>,
    pub db_pool: Option<u32>,
    pub reload_token: Option<u64>,
}

/// What the manager wants for a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Enabled,
    Disabled,
    /// The state file is invalid and there is no last good spec.
    Invalid,
    /// No state file: any container is being removed.
    Absent,
}

/// One project: the seed's list fields, then desired and actual state.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    pub project_id: String,
    pub container_name: String,
    pub port: u16,
    /// The container's state as Docker reports it (`running`, `exited`, ...), or `absent`.
    #[schema(example = "running")]
    pub status: String,
    pub desired: DesiredState,
    /// Whether actual state matches desired state (running with the desired config loaded,
    /// or no container when disabled).
    pub converged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_id: Option<String>,
    /// Docker's health check: `starting`, `healthy`, `unhealthy` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Why the project is not as desired, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the manager last sent the reload signal (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_token: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: String,
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[utoipa::path(
    post,
    path = "/internal/postgrest/spawn",
    request_body = SpawnRequest,
    responses(
        (status = 201, description = "The container runs and PostgREST answers /live", body = SpawnResponse),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "No state file and no secrets", body = ErrorBody),
        (status = 409, description = "A foreign container holds the name, or the state file is invalid", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
        (status = 504, description = "Not converged in time; the desired state is saved", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn spawn(
    State(ctx): State<Shared>,
    ApiJson(body): ApiJson<SpawnRequest>,
) -> Result<(StatusCode, Json<SpawnResponse>), ApiError> {
    let id = parse_id(&body.project_id)?;
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    let state_lock = ctx.lock_state().await?;
    let existing = ctx.read_file(&id).await?;
    let file = match (
        existing.clone(),
        body.jwt_secret,
        body.authenticator_password,
    ) {
        (None, None, None) => {
            return Err(ApiError::NotFound(format!(
                "no project {id}: send jwtSecret and authenticatorPassword to create it"
            )))
        }
        (None, Some(jwt_secret), Some(password)) => SpecFile::new(jwt_secret, password),
        (None, None, Some(_)) => {
            return Err(ApiError::BadRequest(format!(
                "jwtSecret: required to create project {id}"
            )))
        }
        (None, Some(_), None) => {
            return Err(ApiError::BadRequest(format!(
                "authenticatorPassword: required to create project {id}"
            )))
        }
        (Some(mut file), jwt_secret, password) => {
            if let Some(jwt_secret) = jwt_secret {
                file.jwt_secret = jwt_secret;
            }
            if let Some(password) = password {
                file.authenticator_password = password;
            }
            file.enabled = None;
            file
        }
    };
    let spec = ctx.save(&id, &file, existing.as_ref()).await?;
    drop(state_lock);
    let container = ctx.wait_running(&spec).await?;
    info!(project = %id, container = %container.id, "spawn: running");
    Ok((
        StatusCode::CREATED,
        Json(SpawnResponse {
            project_id: id.to_string(),
            container_id: id.container_name(),
            container_name: id.container_name(),
            port: SERVER_PORT,
            status: "running".into(),
            docker_id: container.id,
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/internal/postgrest/{id}/restart",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "The reload signal was delivered with the new config in place", body = RestartResponse),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "The project has no running container", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
        (status = 504, description = "Not reloaded in time; the desired state is saved", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn restart(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<RestartResponse>, ApiError> {
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    let not_running = || ApiError::NotFound(format!("project {id} has no running container"));
    let running = ctx
        .handle
        .snapshot()
        .projects
        .get(&id)
        .and_then(|p| p.container.as_ref())
        .is_some_and(|c| c.state == ContainerState::Running);
    let state_lock = ctx.lock_state().await?;
    let Some(mut file) = ctx.read_file(&id).await? else {
        return Err(not_running());
    };
    if !running || file.enabled == Some(false) {
        return Err(not_running());
    }
    let token = file.reload_token.unwrap_or(0).wrapping_add(1);
    file.reload_token = Some(token);
    let spec = ctx.save(&id, &file, None).await?;
    drop(state_lock);
    let container = ctx.wait_converged(&spec).await?;
    info!(project = %id, reload_token = token, "restart: reloaded");
    Ok(Json(RestartResponse {
        project_id: id.to_string(),
        status: "reloaded".into(),
        message: format!(
            "PostgREST configuration reloaded via {}",
            ctx.cfg.reload_signal
        ),
        container_name: id.container_name(),
        docker_id: container.map(|c| c.id).unwrap_or_default(),
        reload_token: token,
    }))
}

#[utoipa::path(
    delete,
    path = "/internal/postgrest/{id}",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "The desired state is removed and the container is gone", body = DeleteResponse),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Neither a state file nor a container", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
        (status = 504, description = "Not removed in time; the state file is gone and the loop keeps going", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn delete_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<DeleteResponse>, ApiError> {
    let _lock = ctx.locks.lock(&id).await;
    let has_file = ctx.cfg.state.file(&id).exists();
    let has_container = ctx
        .handle
        .snapshot()
        .projects
        .get(&id)
        .is_some_and(|p| p.container.is_some());
    if !has_file && !has_container {
        return Err(ApiError::NotFound(format!("no project {id}")));
    }
    ctx.require_docker().await?;
    let state_lock = ctx.lock_state().await?;
    let state = ctx.cfg.state.clone();
    let target = id.clone();
    tokio::task::spawn_blocking(move || state.remove(&target))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("removing the state file of {id}: {e}")))?;
    drop(state_lock);
    ctx.handle.wake();
    ctx.wait_until(&id, |_, status| {
        let gone = status.is_none_or(|p| p.desired.is_none() && p.container.is_none());
        gone.then_some(Ok(()))
    })
    .await?;
    info!(project = %id, "delete: gone");
    Ok(Json(DeleteResponse {
        project_id: id.to_string(),
        status: "stopped".into(),
    }))
}

#[utoipa::path(
    get,
    path = "/internal/postgrest",
    responses(
        (status = 200, description = "Every project the manager knows, running or not, with the reason when not", body = ListResponse),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn list(State(ctx): State<Shared>) -> Json<ListResponse> {
    let snapshot = ctx.handle.snapshot();
    let containers = snapshot
        .projects
        .iter()
        .map(|(id, status)| ProjectView::new(id, status))
        .collect();
    Json(ListResponse { containers })
}

#[utoipa::path(
    get,
    path = "/internal/postgrest/{id}",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Desired and actual state, health, last error, last reload", body = ProjectView),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Neither a state file nor a container", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn get_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<ProjectView>, ApiError> {
    let snapshot = ctx.handle.snapshot();
    if let Some(status) = snapshot.projects.get(&id) {
        return Ok(Json(ProjectView::new(&id, status)));
    }
    // Written a moment ago and not loaded yet: say so rather than 404.
    match ctx.read_file(&id).await {
        Ok(Some(file)) => {
            let mut view = ProjectView::new(&id, &ProjectStatus::default());
            view.desired = if file.enabled == Some(false) {
                DesiredState::Disabled
            } else {
                DesiredState::Enabled
            };
            view.reason = Some("the manager has not loaded the state file yet".into());
            Ok(Json(view))
        }
        Ok(None) => Err(ApiError::NotFound(format!("no project {id}"))),
        Err(e) => Err(e),
    }
}

#[utoipa::path(
    put,
    path = "/internal/postgrest/{id}",
    params(("id" = String, Path, description = "Project id")),
    request_body = PutRequest,
    responses(
        (status = 200, description = "Replaced and converged", body = ProjectView),
        (status = 201, description = "Created and converged", body = ProjectView),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 409, description = "A foreign container holds the name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
        (status = 504, description = "Not converged in time; the desired state is saved", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
async fn put_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
    ApiJson(body): ApiJson<PutRequest>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    let state_lock = ctx.lock_state().await?;
    // A broken file is simply replaced: PUT carries the whole spec.
    let existing = ctx.read_file(&id).await.ok().flatten();
    let created = existing.is_none() && !ctx.cfg.state.file(&id).exists();
    let file = SpecFile {
        jwt_secret: body.jwt_secret,
        authenticator_password: body.authenticator_password,
        enabled: body.enabled,
        db_name: body.db_name,
        db_host: body.db_host,
        db_port: body.db_port,
        db_schemas: body.db_schemas,
        db_anon_role: body.db_anon_role,
        jwt_aud: body.jwt_aud,
        max_rows: body.max_rows,
        db_pool: body.db_pool,
        reload_token: body
            .reload_token
            .or(existing.as_ref().and_then(|f| f.reload_token)),
    };
    let spec = ctx.save(&id, &file, existing.as_ref()).await?;
    drop(state_lock);
    if spec.enabled {
        ctx.wait_running(&spec).await?;
    } else {
        ctx.wait_converged(&spec).await?;
    }
    let snapshot = ctx.handle.snapshot();
    let view = ProjectView::new(
        &id,
        snapshot.projects.get(&id).unwrap_or(&Default::default()),
    );
    info!(project = %id, enabled = spec.enabled, created, "put: converged");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

#[utoipa::path(
    get,
    path = "/internal/openapi.json",
    responses(
        (status = 200, description = "This document", content_type = "application/json"),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "meta"
)]
async fn openapi_json(State(ctx): State<Shared>) -> Response {
    let body = ctx.openapi.clone();
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "The process is up", body = HealthResponse)),
    tag = "meta"
)]
async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "The first full reconcile is done and Docker is reachable", body = HealthResponse),
        (status = 503, description = "Not ready", body = ErrorBody),
    ),
    tag = "meta"
)]
async fn readyz(State(ctx): State<Shared>) -> Result<Json<HealthResponse>, ApiError> {
    let snapshot = ctx.handle.snapshot();
    if snapshot.ready() {
        return Ok(Json(HealthResponse {
            status: "ready".into(),
        }));
    }
    let why = if !snapshot.docker_reachable {
        "Docker is unreachable"
    } else {
        "the first full reconcile is not done yet"
    };
    Err(ApiError::NotReady(why.into()))
}

// ---------------------------------------------------------------------------------------------
// Writing desired state and waiting for the loop

impl Ctx {
    async fn read_file(&self, id: &ProjectId) -> Result<Option<SpecFile>, ApiError> {
        let state = self.cfg.state.clone();
        let target = id.clone();
        let read = tokio::task::spawn_blocking(move || state.read_file(&target))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match read {
            Ok(file) => Ok(file),
            Err(SpecError::Io(e)) => Err(ApiError::Internal(format!(
                "reading the state file of {id}: {e}"
            ))),
            Err(e) => Err(ApiError::Conflict(format!(
                "the state file of {id} is invalid ({e}); replace it with PUT /internal/postgrest/{id}"
            ))),
        }
    }

    /// The state directory's writer lock, shared with the CLI and any other process editing the
    /// directory. Held from reading a project's file to writing it, never while waiting for
    /// the loop; the per-project locks above order this process's own requests.
    async fn lock_state(&self) -> Result<StateLock, ApiError> {
        let state = self.cfg.state.clone();
        tokio::task::spawn_blocking(move || state.lock())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(format!("locking the state directory: {e}")))
    }

    /// Validates and writes `file` (unless it equals `existing`), then wakes the loop.
    async fn save(
        &self,
        id: &ProjectId,
        file: &SpecFile,
        existing: Option<&SpecFile>,
    ) -> Result<Spec, ApiError> {
        let spec = Spec::from_file(id.clone(), file.clone()).map_err(invalid_spec)?;
        if existing != Some(file) {
            let (state, target, file) = (self.cfg.state.clone(), id.clone(), file.clone());
            tokio::task::spawn_blocking(move || state.write(&target, &file))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| match e {
                    WriteError::Invalid(e) => invalid_spec(e),
                    WriteError::Io(e) => {
                        ApiError::Internal(format!("writing the state file of {id}: {e}"))
                    }
                })?;
        }
        self.handle.wake();
        Ok(spec)
    }

    /// Docker must be reachable for a write to be worth waiting on. Right after start-up the
    /// loop may not have looked yet, so it gets a moment; after that the answer is immediate.
    async fn require_docker(&self) -> Result<(), ApiError> {
        let snapshot = self.handle.snapshot();
        if snapshot.docker_reachable {
            return Ok(());
        }
        if !snapshot.reconciled_once
            && self
                .handle
                .wait_for(DOCKER_GRACE.min(self.cfg.timeout), |s| s.docker_reachable)
                .await
                .is_ok()
        {
            return Ok(());
        }
        Err(ApiError::DockerUnavailable(
            "Docker is unreachable; nothing was changed, retry later".into(),
        ))
    }

    /// Waits until the loop has loaded `spec` and the project converged to it; returns the
    /// container, if the spec wants one.
    async fn wait_converged(&self, spec: &Spec) -> Result<Option<ContainerView>, ApiError> {
        let rendered = render::render(spec, &self.cfg.template);
        self.wait_until(&spec.id, |_, status| {
            let status = status?;
            let desired = status.desired.as_ref()?;
            let current = desired.enabled == spec.enabled
                && desired.spec_hash == rendered.spec_hash
                && desired.config_digest == rendered.config.digest
                && desired.reload_token == spec.reload_token;
            (current && status.converged()).then(|| Ok(status.container.clone()))
        })
        .await
    }

    /// [`Ctx::wait_converged`], then until PostgREST answers its liveness check.
    async fn wait_running(&self, spec: &Spec) -> Result<ContainerView, ApiError> {
        let deadline = Instant::now() + self.cfg.timeout;
        self.wait_converged(spec).await?;
        let mut interval = PROBE_INTERVAL;
        loop {
            let snapshot = self.handle.snapshot();
            let container = snapshot
                .projects
                .get(&spec.id)
                .and_then(|p| p.container.clone());
            if let Some(container) = container {
                if let Some(ip) = container.ip {
                    if probe::live(ip, self.cfg.live_port, PROBE_TIMEOUT)
                        .await
                        .is_ok()
                    {
                        return Ok(container);
                    }
                }
            }
            if Instant::now() + interval >= deadline {
                return Err(self.timed_out(&spec.id, "PostgREST did not answer /live"));
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => interval = (interval * 2).min(PROBE_INTERVAL_MAX),
                () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
            }
        }
    }

    /// Waits until `check` answers for a published snapshot, failing early when Docker goes
    /// away or a foreign container is found in the project's way.
    async fn wait_until<T>(
        &self,
        id: &ProjectId,
        mut check: impl FnMut(&Snapshot, Option<&ProjectStatus>) -> Option<Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let mut outcome = None;
        let waited = {
            let wait = self.handle.wait_for(self.cfg.timeout, |snapshot| {
                let status = snapshot.projects.get(id);
                outcome = if !snapshot.docker_reachable {
                    Some(Err(ApiError::DockerUnavailable(
                        "Docker became unreachable; the desired state is saved and the manager \
                         will converge once it is back"
                            .into(),
                    )))
                } else if let Some(conflict) = status
                    .and_then(|p| p.last_error.as_deref())
                    .filter(|e| e.starts_with(CONFLICT_PREFIX))
                {
                    Some(Err(ApiError::Conflict(format!(
                        "{conflict} (the desired state is saved)"
                    ))))
                } else {
                    check(snapshot, status)
                };
                outcome.is_some()
            });
            tokio::select! {
                waited = wait => waited.is_ok(),
                () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
            }
        };
        match outcome {
            Some(result) if waited => result,
            _ => Err(self.timed_out(id, "the project did not converge")),
        }
    }

    fn timed_out(&self, id: &ProjectId, what: &str) -> ApiError {
        let last_error = self
            .handle
            .snapshot()
            .projects
            .get(id)
            .and_then(|p| p.last_error.clone().or(p.file_error.clone()))
            .map(|e| format!(" Last error: {e}."))
            .unwrap_or_default();
        warn!(project = %id, "{what} within {:?}", self.cfg.timeout);
        ApiError::Timeout(format!(
            "{what} within {} s; the desired state is saved and the manager keeps working on it \
             (GET /internal/postgrest/{id} shows progress).{last_error}",
            self.cfg.timeout.as_secs()
        ))
    }
}

fn invalid_spec(error: SpecError) -> ApiError {
    match error {
        SpecError::Field { field, reason } => {
            ApiError::BadRequest(format!("{}: {reason}", error::camel_case(field)))
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// Completes when the manager starts shutting down; never, if nobody can tell it to.
async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Views

impl ProjectView {
    pub fn new(id: &ProjectId, status: &ProjectStatus) -> ProjectView {
        let desired = match (&status.desired, &status.file_error) {
            (Some(d), _) if d.enabled => DesiredState::Enabled,
            (Some(_), _) => DesiredState::Disabled,
            (None, Some(_)) => DesiredState::Invalid,
            (None, None) => DesiredState::Absent,
        };
        let container = status.container.as_ref();
        let converged = status.converged();
        ProjectView {
            project_id: id.to_string(),
            container_name: id.container_name(),
            port: SERVER_PORT,
            status: container
                .map(|c| state_name(c.state))
                .unwrap_or("absent")
                .to_owned(),
            desired,
            converged,
            docker_id: container.map(|c| c.id.clone()),
            health: container.map(|c| health_name(c.health).to_owned()),
            reason: (!converged).then(|| reason(status, desired)),
            file_error: status.file_error.clone(),
            last_error: status.last_error.clone(),
            last_reload: status.last_reload.map(rfc3339),
            reload_token: status.desired.as_ref().map(|d| d.reload_token),
        }
    }
}

/// Why a project is not as desired, in the words an operator needs.
fn reason(status: &ProjectStatus, desired: DesiredState) -> String {
    if let Some(error) = &status.last_error {
        return error.clone();
    }
    if let Some(error) = &status.file_error {
        return format!("invalid state file: {error}");
    }
    let Some(container) = &status.container else {
        return match desired {
            DesiredState::Invalid => "no valid state file yet; fix the file".into(),
            _ => "waiting for the container to be created".into(),
        };
    };
    match (desired, &status.desired) {
        (DesiredState::Absent, _) => "no state file; the container is being removed".into(),
        (DesiredState::Disabled, _) => "disabled; the container is being removed".into(),
        (_, Some(d)) if container.spec_hash.as_deref() != Some(&d.spec_hash) => {
            "the container is being recreated with a new spec".into()
        }
        _ if container.state != ContainerState::Running => {
            format!("the container is {}", state_name(container.state))
        }
        _ => "waiting for the config to be reloaded".into(),
    }
}

pub fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Restarting => "restarting",
        ContainerState::Removing => "removing",
        ContainerState::Exited => "exited",
        ContainerState::Dead => "dead",
    }
}

pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::None => "none",
    }
}

/// `2026-11-28T03:26:24Z`: enough of RFC 3339 for a timestamp, without a date-time crate.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
