//! Request and response bodies, and the view of one project that `GET` answers with.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::plan::Preview;
use crate::plan::State as ContainerState;
use crate::reconcile::{Event, ProjectStatus, Readiness};
use crate::render::SERVER_PORT;
use crate::spec::{DesiredState, ProjectId, Secret};

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

/// `POST /internal/postgrest/{id}/reload-schema`: answered once SIGUSR1 was delivered.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadSchemaResponse {
    pub project_id: String,
    #[schema(example = "schema reloaded")]
    pub status: String,
    #[schema(example = "PostgREST schema cache reload requested via SIGUSR1")]
    pub message: String,
    pub container_name: String,
    /// The same container as before: a schema reload never recreates.
    pub docker_id: String,
    pub schema_reload_token: u64,
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
    /// PgBouncer's pool for the project (default: `dbPool`); `dbPool` must fit in
    /// `poolSize + reservePool`.
    pub pool_size: Option<u32>,
    pub reserve_pool: Option<u32>,
    pub reload_token: Option<u64>,
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
    /// Whether PostgREST serves (its `/ready`: logged in, schema cache loaded), as the
    /// manager's probe last found; absent until the first probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Swarm (`PGM_ORCHESTRATOR=swarm`): the service's tasks, running of desired, their
    /// nodes and the last task error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tasks: Option<crate::runtime::Tasks>,
    /// With Caddy configured, for an enabled project: `in place`, or `pending: <why>` while
    /// the manager cannot bring Caddy's routes in step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// With PgBouncer's pools kept, for a project with a spec: `in place`, or `pending: <why>`
    /// while the manager cannot bring PgBouncer's `[databases]` in step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
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
    /// The last 20 things that happened to the project, oldest first (`GET` of one project
    /// only; the list leaves them out). Kept in the manager's memory: a restart starts afresh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventView>,
}

/// One event: what happened to a project, when, and why (names keys, never values).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// RFC 3339, UTC.
    #[schema(example = "2026-11-29T09:40:34Z")]
    pub at: String,
    /// `created`, `reloaded`, `recreated`, `removed`, `failed`, `healed`, `conflict` or
    /// `invalid file`.
    #[schema(example = "reloaded")]
    pub kind: String,
    #[schema(example = "jwt_secret changed")]
    pub reason: String,
}

impl From<&Event> for EventView {
    fn from(event: &Event) -> EventView {
        EventView {
            at: rfc3339(event.at),
            kind: event.kind.to_string(),
            reason: event.reason.clone(),
        }
    }
}

/// `GET /internal/plan`: what the loop's last pass planned.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanResponse {
    /// Whether every project is converged (no line has work).
    pub converged: bool,
    /// The pass the plan comes from (passes are counted from the manager's start).
    pub pass: u64,
    pub projects: Vec<PlanLine>,
}

/// One project's line of the plan.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanLine {
    pub project_id: String,
    /// `create`, `recreate`, `start`, `reload`, `remove`, `remove config`, `nothing`,
    /// `frozen` or `conflict`.
    #[schema(example = "reload")]
    pub action: String,
    #[schema(example = "reload: jwt_secret changed")]
    pub reason: String,
}

impl From<&Preview> for PlanLine {
    fn from(line: &Preview) -> PlanLine {
        PlanLine {
            project_id: line.project.to_string(),
            action: line.verb.as_str().to_owned(),
            reason: line.reason.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: String,
}

// ---------------------------------------------------------------------------------------------

impl ProjectView {
    pub fn new(id: &ProjectId, status: &ProjectStatus) -> ProjectView {
        let desired = status.desired_state();
        let container = status.container.as_ref();
        let converged = status.converged();
        let ready = container.and_then(|c| match c.ready {
            Readiness::Unknown => None,
            Readiness::Ready => Some(true),
            Readiness::NotReady { .. } => Some(false),
        });
        let serving = converged && (desired != DesiredState::Enabled || ready == Some(true));
        ProjectView {
            project_id: id.to_string(),
            container_name: id.container_name(),
            port: SERVER_PORT,
            status: container.map_or_else(|| "absent".to_owned(), |c| c.state.to_string()),
            desired,
            converged,
            docker_id: container.map(|c| c.id.clone()),
            health: container.map(|c| c.health.to_string()),
            ready,
            tasks: container.and_then(|c| c.tasks.clone()),
            route: None,
            pool: None,
            reason: (!serving).then(|| reason(status, desired)),
            file_error: status.file_error.clone(),
            last_error: status.last_error.clone(),
            last_reload: status.last_reload.map(rfc3339),
            reload_token: status.desired.as_ref().map(|d| d.spec.reload_token),
            events: Vec::new(),
        }
    }
}

impl ProjectView {
    /// Adds the project's events (the view of one project shows them; the list does not).
    pub fn with_events(mut self, status: &ProjectStatus) -> ProjectView {
        self.events = status.events.iter().map(EventView::from).collect();
        self
    }

    /// Adds the state of PgBouncer's pools (`Snapshot::pools`): a project with a spec, enabled
    /// or not, has its entry in the include.
    pub fn with_pool(mut self, pools: Option<&Option<String>>) -> ProjectView {
        if matches!(self.desired, DesiredState::Enabled | DesiredState::Disabled) {
            self.pool = pools.map(|pending| match pending {
                None => "in place".to_owned(),
                Some(why) => format!("pending: {why}"),
            });
        }
        self
    }

    /// Adds the state of Caddy's routes: `pending` is why they are not in place, if they are not.
    pub fn with_route(mut self, pending: Option<&Option<String>>) -> ProjectView {
        if self.desired == DesiredState::Enabled {
            self.route = pending.map(|pending| match pending {
                None => "in place".to_owned(),
                Some(why) => format!("pending: {why}"),
            });
        }
        self
    }
}

/// Why a project is not as desired, in the words an operator needs.
pub(super) fn reason(status: &ProjectStatus, desired: DesiredState) -> String {
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
        (_, Some(d)) if container.spec_hash.as_deref() != Some(&d.planned.spec_hash) => {
            "the container is being recreated with a new spec".into()
        }
        _ if container.state != ContainerState::Running => {
            let state = match container.exit_code {
                Some(code) => format!("the container is {} (exit code {code})", container.state),
                None => format!("the container is {}", container.state),
            };
            match &container.ready {
                Readiness::NotReady { reason } => format!("{state}: {reason}"),
                _ => state,
            }
        }
        _ if !status.converged() => "waiting for the config to be reloaded".into(),
        _ => match &container.ready {
            Readiness::NotReady { reason } => format!("PostgREST does not serve yet: {reason}"),
            _ => "waiting for PostgREST to answer /ready".into(),
        },
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
