//! What the loop publishes after every pass and every finished action: per project, the spec it
//! planned against, the container it sees, and what went wrong. The API and `/readyz` read it;
//! nobody writes it but the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

pub use super::ready::Readiness;
use crate::plan::{Desired, Preview, State};
use crate::runtime::Health;
use crate::spec::{DesiredState, ProjectId, Spec};

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The first full reconcile is done (and stays done).
    pub reconciled_once: bool,
    pub docker_reachable: bool,
    /// Shared with the snapshot before when a pass changed nothing in it: at ten thousand
    /// projects, building it anew was a third of an idle pass (BENCHMARKS.md, "Scale").
    pub projects: Arc<BTreeMap<ProjectId, ProjectStatus>>,
    /// `*.toml` files in the state directory whose name is not a valid project id.
    pub misnamed: Vec<String>,
    /// Passes that got as far as planning, counted from start-up. Tests wait on it to prove
    /// that nothing happened across a pass (a resync included), instead of sleeping.
    pub passes: u64,
    /// What the last pass planned, per project, and why (`GET /internal/plan`).
    pub plan: Arc<Vec<Preview>>,
    /// With PgBouncer's pools kept (`PGM_PGBOUNCER_INCLUDE`): `Some(None)` while they are in
    /// place, `Some(Some(why))` while they are not (retried with backoff).
    pub pools: Option<Option<String>>,
    /// Some running container of ours has not been probed for `/ready` yet (right after a
    /// start, for a moment): the route task waits for it before its first sync.
    pub unprobed: bool,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.reconciled_once && self.docker_reachable
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectStatus {
    /// The spec the loop plans against (the last good one while the file is invalid).
    pub desired: Option<Arc<DesiredView>>,
    /// Why the state file is currently rejected (the last good spec stays in force).
    pub file_error: Option<String>,
    /// Boxed: most of ten thousand projects have none, and the snapshot holds every project.
    pub container: Option<Box<ContainerView>>,
    /// The last failed action or conflict; cleared by the next success.
    pub last_error: Option<String>,
    /// The last error was the config directory's disk being full: its cause, for a 507.
    pub out_of_space: Option<&'static str>,
    /// The container holding `postgrest-<id>` without this manager's labels, when that is
    /// what the last error was about.
    pub conflict: Option<String>,
    pub last_reload: Option<SystemTime>,
    /// Digest of the config the container is known to have loaded.
    pub loaded_digest: Option<String>,
    /// The `schema_reload_token` the container has its schema cache as of.
    pub schema_token_seen: Option<u64>,
    /// The last [`EVENTS_KEPT`] things that happened to the project, oldest first.
    pub events: Events,
    /// The host the project's route dials: its container's own alias (or name), or the new
    /// container's while a replacement switches to it.
    pub upstream: Option<String>,
}

/// How many events each project keeps: a ring, so a project's memory stays bounded however
/// long the manager runs.
pub const EVENTS_KEPT: usize = 20;

/// A project's event ring, shared between the loop's record and every published snapshot
/// (publishing clones an `Arc`, not the events).
pub type Events = Arc<std::collections::VecDeque<Event>>;

/// One thing that happened to a project, as `kubectl describe` shows events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
    /// Why, in words; names keys, never values.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Reloaded,
    Recreated,
    /// Replaced blue/green: a new container took over from the serving one.
    Replaced,
    Removed,
    Failed,
    /// A container that was expected but missing or stopped came back.
    Healed,
    Conflict,
    InvalidFile,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Reloaded => "reloaded",
            EventKind::Recreated => "recreated",
            EventKind::Replaced => "replaced",
            EventKind::Removed => "removed",
            EventKind::Failed => "failed",
            EventKind::Healed => "healed",
            EventKind::Conflict => "conflict",
            EventKind::InvalidFile => "invalid file",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProjectStatus {
    /// Running, current and with the desired config loaded.
    pub fn converged(&self) -> bool {
        match (&self.desired, &self.container) {
            (Some(d), Some(c)) if d.planned.enabled => {
                c.state == State::Running
                    && c.spec_hash.as_deref() == Some(&d.planned.spec_hash)
                    && self.loaded_digest.as_deref() == Some(&d.planned.config_digest)
            }
            (Some(d), None) => !d.planned.enabled,
            _ => false,
        }
    }

    /// What the manager wants for the project.
    pub fn desired_state(&self) -> DesiredState {
        match (&self.desired, &self.file_error) {
            (Some(d), _) => DesiredState::of(d.planned.enabled),
            (None, Some(_)) => DesiredState::Invalid,
            (None, None) => DesiredState::Absent,
        }
    }

    /// Whether the loop plans against exactly `spec` (a writer waits for this before it
    /// waits for convergence, so it never mistakes the old spec's convergence for its own).
    pub fn plans_for(&self, spec: &Spec) -> bool {
        self.desired.as_ref().is_some_and(|d| *d.spec == *spec)
    }
}

/// The spec a project is planned against, and what the planner was asked for from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredView {
    pub spec: Arc<Spec>,
    pub planned: Desired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub state: State,
    pub health: Health,
    pub ip: Option<IpAddr>,
    pub spec_hash: Option<String>,
    /// Whether PostgREST in it serves, as the loop's probe of `/ready` last found.
    pub ready: Readiness,
    /// The exit code of its last run, while it is exited or being restarted.
    pub exit_code: Option<i64>,
    /// A Swarm service's tasks.
    pub tasks: Option<crate::runtime::Tasks>,
}

/// Which state files may have changed since the loop last looked. The watcher names them, and
/// a pass then looks at those files alone; anything that cannot say (a test, the watcher losing
/// track, the periodic full rescan) asks for the whole directory.
#[derive(Debug, Default)]
pub(super) struct FileHints {
    pub all: bool,
    pub names: BTreeSet<String>,
}

pub(super) type SharedHints = Arc<Mutex<FileHints>>;

/// The outside world's handle on a running loop: wake it, read its status.
#[derive(Clone)]
pub struct Handle {
    wake: mpsc::Sender<()>,
    /// A pass now, without the debounce (`project_written`).
    now: Arc<tokio::sync::Notify>,
    files: SharedHints,
    status: watch::Receiver<Arc<Snapshot>>,
}

impl Handle {
    pub(super) fn new(
        wake: mpsc::Sender<()>,
        now: Arc<tokio::sync::Notify>,
        files: SharedHints,
        status: watch::Receiver<Arc<Snapshot>>,
    ) -> Handle {
        Handle {
            wake,
            now,
            files,
            status,
        }
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, FileHints> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a pass soon that reads the whole state directory again. Never blocks: a
    /// pending wake-up already covers this one.
    pub fn wake(&self) {
        self.hints().all = true;
        let _ = self.wake.try_send(());
    }

    /// Asks for a pass soon that looks at the state directory's entry `name` (what the
    /// watcher saw change), and at no other file. Never blocks.
    pub fn file_changed(&self, name: &str) {
        self.hints().names.insert(name.to_owned());
        let _ = self.wake.try_send(());
    }

    /// Asks for a pass at once that looks at the entry `name`, skipping the debounce that
    /// coalesces the several events of a write still under way: for a change known to be
    /// complete (a file renamed into place or closed by its writer). Never blocks.
    pub fn file_written(&self, name: &str) {
        self.hints().names.insert(name.to_owned());
        self.now.notify_one();
    }

    /// [`Handle::file_written`] for `id`'s file: the API, after its atomic write or removal,
    /// whose client waits on the pass.
    pub fn project_written(&self, id: &ProjectId) {
        self.file_written(&format!("{id}.toml"));
    }

    /// Waits until a new snapshot is published; `false` once the loop is gone.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.status.borrow().clone()
    }

    /// Waits until `done` holds for a published snapshot, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>, Arc<Snapshot>> {
        let mut status = self.status.clone();
        let wait = async { status.wait_for(|s| done(s)).await.map(|s| s.clone()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(snapshot)) => Ok(snapshot),
            _ => Err(self.snapshot()),
        }
    }
}
