//! The container runtime: one narrow trait, its Docker implementation and an in-memory fake.
//!
//! Only this module (and its children) imports bollard. Docker's answers are mapped to
//! [`RuntimeError`] in exactly one place, [`docker::map_error`], so callers branch on
//! `NotFound / Conflict / Unavailable / Other`, never on status codes.

pub mod docker;
mod docker_logs;
pub mod engine;
pub mod fake;
pub mod metered;
pub mod swarm;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use futures_util::Stream;

use crate::render::{ContainerSpec, LABEL_PROJECT, LABEL_SPEC_HASH, LABEL_UPSTREAM};
use crate::spec::ProjectId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("Docker is unreachable: {0}")]
    Unavailable(String),
    #[error("Docker error: {0}")]
    Other(String),
}

/// Which kind of engine runs PostgREST, as the planner needs to know it.
pub use crate::plan::Orchestrator;
/// Container states as Docker reports them.
pub use crate::plan::State;

/// What the health check last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
    /// No health check, or the container is not running.
    None,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::None => "none",
        })
    }
}

/// One listed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub health: Health,
    /// The container's address on the manager's network, when it has one.
    pub ip: Option<IpAddr>,
    /// The exit code of its last run, while it is exited or being restarted.
    pub exit_code: Option<i64>,
    /// A Swarm service's tasks (`None` for a container).
    pub tasks: Option<Tasks>,
}

/// A Swarm service's tasks, as the status shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tasks {
    /// Tasks Swarm wants running (the replicas).
    pub desired: u64,
    /// Tasks running (for PostgREST: their `/ready` check passed).
    pub running: u64,
    /// The nodes the running tasks are on (Swarm's node ids, shortened, or hostnames).
    pub nodes: Vec<String>,
    /// The newest task error Swarm recorded (`task: non-zero exit (1)`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ContainerInfo {
    /// The project whose label this container carries, when the label is a valid id.
    pub fn project(&self) -> Option<ProjectId> {
        ProjectId::parse(self.labels.get(LABEL_PROJECT)?).ok()
    }

    /// The project this container serves: labelled with it and named `postgrest-<id>`. A
    /// labelled container under another name is surplus, on its way out.
    pub fn serving_project(&self) -> Option<ProjectId> {
        self.project().filter(|id| self.name == id.container_name())
    }

    pub fn spec_hash(&self) -> Option<&str> {
        self.labels.get(LABEL_SPEC_HASH).map(String::as_str)
    }

    /// The host name a route dials to reach this container: its own network alias (kept
    /// across a rename), or its name for a container created before aliases.
    pub fn upstream(&self) -> &str {
        self.labels
            .get(LABEL_UPSTREAM)
            .map_or(self.name.as_str(), String::as_str)
    }
}

/// What Docker's event stream says about one of the labelled containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Its health check changed, and nothing else did: the listing can be patched in place.
    Health { id: String, health: Health },
    /// It was created, started, stopped, paused, renamed, died, ran out of memory or was
    /// destroyed: look at it again. `created_for`: the project a container was created or
    /// started for, which an action of the manager's own may be doing (and then looks the
    /// container up itself as it ends); `None` for every other change.
    Container {
        id: String,
        created_for: Option<ProjectId>,
    },
    /// Something changed that the event does not name (a Swarm task, a stream that fell
    /// behind): look at everything again.
    Changed,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, RuntimeError>> + Send>>;

/// Lines of a container's log, without Docker's timestamps.
pub type LineStream = Pin<Box<dyn Stream<Item = Result<String, RuntimeError>> + Send>>;

/// A position in a container's log, from [`Runtime::log_cursor`]: what [`Runtime::log_after`]
/// yields was written after it. Only the runtime that made it can read it (Docker: a time in
/// nanoseconds since the epoch on the daemon's clock, which is ours when the daemon shares
/// it, else the stamp of the last line; the fake: a line count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor(pub u128);

/// The operations the controller needs from a container engine, and nothing more.
pub trait Runtime: Send + Sync + 'static {
    /// Cheap reachability check.
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates the network if it does not exist.
    fn ensure_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// All containers, running or not, carrying every one of `labels`.
    fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Looks one container up by its exact name.
    fn find_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// Looks one container up by its id, in the listing's shape: the loop confirms what it
    /// just created or started with this instead of listing every container.
    fn inspect(&self, id: &str)
        -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// Creates a container; returns its id. A taken name is `Conflict`.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Sends `signal` (e.g. `SIGUSR2`) to the container's main process.
    fn signal(
        &self,
        id: &str,
        signal: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops a container gracefully (SIGTERM, then SIGKILL once its stop grace has passed;
    /// at once when it is not running) and then removes it. Never force-removes a running
    /// PostgREST; takes at most the grace period plus Docker's own time.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Gives the container a new name. Its network aliases stay (a route that dials one
    /// keeps working); a taken name is `Conflict`.
    fn rename(&self, id: &str, name: &str)
        -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// A stream that yields whenever one of the labelled containers dies, is destroyed, runs
    /// out of memory or changes health. It is a hint: it ends or fails when Docker goes away,
    /// and the daemon does not replay what it missed.
    fn events(&self, labels: &BTreeMap<String, String>) -> EventStream;

    /// Claims the daemon-wide marker `name` for `holder` (created once, kept across restarts of
    /// the manager and of the daemon). Returns the other holder when someone else has it.
    fn claim(
        &self,
        name: &str,
        holder: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;

    /// Where the container's log ends now.
    fn log_cursor(&self, id: &str) -> impl Future<Output = Result<LogCursor, RuntimeError>> + Send;

    /// What the container writes (stdout and stderr) after `cursor`, as it comes: the stream
    /// follows the log and ends when the container stops. The caller bounds the wait.
    fn log_after(&self, id: &str, cursor: LogCursor) -> LineStream;

    /// The last `lines` lines the container wrote (stdout and stderr), to tell an operator why
    /// it does not serve. Never called on a hot path.
    fn logs(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// What this runtime runs PostgREST as: containers (the default) or Swarm services. The
    /// planner plans by it, and the readiness watch takes a Swarm task's health as "serves".
    fn orchestrator(&self) -> Orchestrator {
        Orchestrator::Docker
    }

    /// Swarm only: updates the service `id` to `spec` (its config file as a new secret),
    /// start-first, and returns once the new tasks serve; `restart_token` changing restarts
    /// the tasks even when nothing else changed (a schema reload). A runtime of containers
    /// cannot: it answers `Other`, and its planner never asks.
    fn update(
        &self,
        id: &str,
        spec: &ContainerSpec,
        restart_token: u64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (id, spec, restart_token);
        async {
            Err(RuntimeError::Other(
                "service updates need PGM_ORCHESTRATOR=swarm".into(),
            ))
        }
    }
}
