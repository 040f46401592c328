//! The operators' endpoints: the loop's plan in words, and the schema-cache reload. Like
//! every handler they never touch Docker: the plan is read from the published snapshot, and a
//! schema reload is desired state (`schema_reload_token`) the loop turns into SIGUSR1.

use axum::extract::State;
use axum::Json;
use tracing::info;

use super::dto::{PlanLine, PlanResponse, ReloadSchemaResponse};
use super::extract::ProjectPath;
use super::{ApiError, ErrorBody, Shared};
use crate::spec::SpecFile;

#[utoipa::path(
    get,
    path = "/internal/plan",
    responses(
        (status = 200, description = "What the loop's last pass planned per project, and why; it changes nothing", body = PlanResponse),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn plan(State(ctx): State<Shared>) -> Json<PlanResponse> {
    let snapshot = ctx.handle.snapshot();
    let projects: Vec<PlanLine> = snapshot.plan.iter().map(PlanLine::from).collect();
    Json(PlanResponse {
        converged: snapshot.plan.iter().all(|line| !line.verb.is_work()),
        pass: snapshot.passes,
        projects,
    })
}

#[utoipa::path(
    post,
    path = "/internal/postgrest/{id}/reload-schema",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "The schema-reload signal (SIGUSR1) was delivered; the container and its config are unchanged", body = ReloadSchemaResponse),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "The project has no running container", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
        (status = 504, description = "Not delivered in time; the request is saved and the loop keeps going", body = ErrorBody),
    ),
    security(("internal_key" = [])),
    tag = "postgrest"
)]
pub(super) async fn reload_schema(
    State(ctx): State<Shared>,
    ProjectPath(id): ProjectPath,
) -> Result<Json<ReloadSchemaResponse>, ApiError> {
    let _writer = ctx.writer()?;
    let _lock = ctx.locks.lock(&id).await;
    ctx.require_docker().await?;
    // Desired state like any other: the token is bumped in the file and the loop, the only
    // writer to Docker, turns it into SIGUSR1.
    let spec = ctx.bump_running(&id, SpecFile::bump_schema_reload).await?;
    let token = spec.schema_reload_token;
    let container = ctx
        .wait_until(&id, |_, status| {
            let status = status?;
            let delivered = status.plans_for(&spec)
                && status.converged()
                && status.schema_token_seen == Some(token);
            delivered.then(|| Ok(status.container.clone()))
        })
        .await?;
    info!(project = %id, schema_reload_token = token, "reload-schema: delivered");
    Ok(Json(ReloadSchemaResponse {
        project_id: id.to_string(),
        status: "schema reloaded".into(),
        message: "PostgREST schema cache reload requested via SIGUSR1".into(),
        container_name: id.container_name(),
        docker_id: container.map(|c| c.id).unwrap_or_default(),
        schema_reload_token: token,
    }))
}
