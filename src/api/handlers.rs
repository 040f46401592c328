//! The handlers: the seed's four endpoints, byte-compatible, plus upsert, status, health and
//! the OpenAPI document. None touches Docker: they edit desired state and wait on the loop.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::info;

use super::dto::{
    DeleteResponse, HealthResponse, ListResponse, ProjectView, PutRequest, RestartResponse,
    SpawnRequest, SpawnResponse,
};
use super::extract::{parse_id, ApiJson, ProjectPath};
use super::wait::parsed;
use super::{ApiError, ErrorBody, Shared};
use crate::reconcile::ProjectStatus;
use crate::render::SERVER_PORT;
use crate::spec::{DesiredState, SpecFile};

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
        (status = 507, description = "The state directory is out of disk space; nothing was changed", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn spawn(
    State(ctx): State<Shared>,
    ApiJson(body): ApiJson<SpawnRequest>,
) -> Result<(StatusCode, Json<SpawnResponse>), ApiError> {
    let id = parse_id(&body.project_id)?;
    let _writer = ctx.writer()?;
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    let (jwt_secret, password) = (body.jwt_secret, body.authenticator_password);
    let target = id.clone();
    let edited = ctx
        .edit(&id, move |current| {
            match (parsed(&target, current)?, jwt_secret, password) {
                (None, None, None) => Err(ApiError::NotFound(format!(
                    "no project {target}: send jwtSecret and authenticatorPassword to create it"
                ))),
                (None, Some(jwt_secret), Some(password)) => Ok(SpecFile::new(jwt_secret, password)),
                (None, None, Some(_)) => Err(ApiError::BadRequest(format!(
                    "jwtSecret: required to create project {target}"
                ))),
                (None, Some(_), None) => Err(ApiError::BadRequest(format!(
                    "authenticatorPassword: required to create project {target}"
                ))),
                (Some(mut file), jwt_secret, password) => {
                    file.set_secrets_and_enable(jwt_secret, password);
                    Ok(file)
                }
            }
        })
        .await?;
    let spec = edited.spec;
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
        (status = 507, description = "The state directory is out of disk space; nothing was changed", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn restart(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<RestartResponse>, ApiError> {
    let _writer = ctx.writer()?;
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    let spec = ctx.bump_running(&id, SpecFile::bump_reload).await?;
    let token = spec.reload_token;
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
        (status = 507, description = "The state directory is out of disk space; nothing was changed", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn delete_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<DeleteResponse>, ApiError> {
    let _writer = ctx.writer()?;
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
    let lock = ctx.lock_state(&id).await?;
    let (state, target) = (ctx.cfg.state.clone(), id.clone());
    tokio::task::spawn_blocking(move || {
        let _lock = lock;
        state.remove(&target)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::from_io(&format!("removing the state file of {id}"), &e))?;
    ctx.handle.project_written(&id);
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
pub(super) async fn list(State(ctx): State<Shared>) -> Json<ListResponse> {
    let snapshot = ctx.handle.snapshot();
    let containers = snapshot
        .projects
        .iter()
        .map(|(id, status)| ctx.view(id, status))
        .collect();
    Json(ListResponse { containers })
}

#[utoipa::path(
    get,
    path = "/internal/postgrest/{id}",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Desired and actual state, health (Docker's) beside readiness (the manager's own probe), last error, last reload, and the last 20 events", body = ProjectView),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Neither a state file nor a container", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn get_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<ProjectView>, ApiError> {
    let snapshot = ctx.handle.snapshot();
    if let Some(status) = snapshot.projects.get(&id) {
        return Ok(Json(ctx.view(&id, status).with_events(status)));
    }
    // Written a moment ago and not loaded yet: say so rather than 404.
    match ctx.read_file(&id).await {
        Ok(Some(file)) => {
            let mut view = ProjectView::new(&id, &ProjectStatus::default());
            view.desired = DesiredState::of(file.enabled != Some(false));
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
        (status = 507, description = "The state directory is out of disk space; nothing was changed", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn put_project(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
    ApiJson(body): ApiJson<PutRequest>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let _writer = ctx.writer()?;
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    // A broken file is simply replaced: PUT carries the whole spec.
    let edited = ctx
        .edit(&id, move |current| {
            let current = current.ok().flatten();
            let token = current.as_ref().and_then(|f| f.reload_token);
            // Not part of PUT's body: a schema reload is asked for through its own endpoint.
            let schema_token = current.as_ref().and_then(|f| f.schema_reload_token);
            // Nor is Swarm placement, which lives in the project file only: kept.
            let placement = current.as_ref().and_then(|f| f.placement.clone());
            Ok(SpecFile {
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
                pool_size: body.pool_size,
                reserve_pool: body.reserve_pool,
                reload_token: body.reload_token.or(token),
                schema_reload_token: schema_token,
                placement,
            })
        })
        .await?;
    let (spec, created) = (edited.spec, edited.created);
    if spec.enabled {
        ctx.wait_running(&spec).await?;
    } else {
        ctx.wait_converged(&spec).await?;
    }
    let snapshot = ctx.handle.snapshot();
    let view = ctx.view(
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
pub(super) async fn openapi_json(State(ctx): State<Shared>) -> Response {
    let body = ctx.openapi.clone();
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "The process is up", body = HealthResponse)),
    tag = "meta"
)]
pub(super) async fn healthz() -> Json<HealthResponse> {
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
pub(super) async fn readyz(State(ctx): State<Shared>) -> Result<Json<HealthResponse>, ApiError> {
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
