//! The reconcile loop: read desired state, observe Docker, plan, apply, until they match.
//!
//! Level-triggered: a file event, a Docker event, an API write, the resync tick and start-up
//! all reduce to "wake up"; the reason is never passed in. One `tokio::select!` drives it. The
//! loop is the only writer to Docker: it runs at most one action per project at a time, at
//! most `concurrency` at once, and holds back a project that failed with exponential backoff
//! that resets on success. While Docker is unreachable it retries with backoff, logs the
//! outage once and the recovery once, and then lists and reconciles everything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::configs::ConfigDir;
use crate::plan::{self, Action, Desired, Observed, State, Want};
use crate::render::{
    self, Rendered, Template, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_PROJECT, LABEL_SPEC_HASH,
    MANAGED_BY,
};
use crate::runtime::{ContainerInfo, Event, Health, Runtime, RuntimeError};
use crate::spec::{LoadCache, Loaded, ProjectId, Spec, StateDir};

/// File and API triggers are coalesced over this window: one atomic write is several events,
/// all within microseconds. It is paid by every change, so it stays short.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Health changes queued for the loop. They arrive in bursts when many containers start; a
/// full queue falls back to a pass, which lists every container's health anyway.
const HEALTH_QUEUE: usize = 256;
/// How long a shutdown waits for in-flight actions.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the loop needs to know, from the manager's settings.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub state: StateDir,
    pub configs: ConfigDir,
    pub template: Template,
    pub resync: Duration,
    pub concurrency: usize,
    pub reload_signal: String,
}

impl LoopConfig {
    /// The labels every container of this manager carries, and the only ones it lists.
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.template.instance.clone()),
        ])
    }
}

/// What the loop knows, published after every pass and every finished action.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The first full reconcile is done (and stays done).
    pub reconciled_once: bool,
    pub docker_reachable: bool,
    pub projects: BTreeMap<ProjectId, ProjectStatus>,
    /// `*.toml` files in the state directory whose name is not a valid project id.
    pub misnamed: Vec<String>,
    /// Passes that got as far as planning, counted from start-up. Tests wait on it to prove
    /// that nothing happened across a pass (a resync included), instead of sleeping.
    pub passes: u64,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.reconciled_once && self.docker_reachable
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectStatus {
    pub desired: Option<Arc<DesiredView>>,
    /// Why the state file is currently rejected (the last good spec stays in force).
    pub file_error: Option<String>,
    pub container: Option<ContainerView>,
    /// The last failed action or conflict; cleared by the next success.
    pub last_error: Option<String>,
    pub last_reload: Option<SystemTime>,
    /// Digest of the config the container is known to have loaded.
    pub loaded_digest: Option<String>,
}

impl ProjectStatus {
    /// Running, current and with the desired config loaded.
    pub fn converged(&self) -> bool {
        match (&self.desired, &self.container) {
            (Some(d), Some(c)) if d.enabled => {
                c.state == State::Running
                    && c.spec_hash.as_deref() == Some(&d.spec_hash)
                    && self.loaded_digest.as_deref() == Some(&d.config_digest)
            }
            (Some(d), None) => !d.enabled,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredView {
    pub enabled: bool,
    pub spec_hash: String,
    pub config_digest: String,
    pub reload_token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub state: State,
    pub health: Health,
    pub ip: Option<IpAddr>,
    pub spec_hash: Option<String>,
}

/// The outside world's handle on a running loop: wake it, read its status.
#[derive(Clone)]
pub struct Handle {
    wake: mpsc::Sender<()>,
    status: watch::Receiver<Arc<Snapshot>>,
}

impl Handle {
    /// Asks for a pass soon. Never blocks: a pending wake-up already covers this one.
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
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

/// How an action ended well.
#[derive(Debug)]
enum Outcome {
    /// The container runs with this config loaded.
    Loaded {
        container: String,
        digest: String,
        reloaded: bool,
    },
    /// The container is gone (and its config, unless kept).
    Removed,
}

#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a container named {name} ({container}) exists without this manager's labels; remove or rename it")]
    Foreign { name: String, container: String },
    #[error("cannot write the rendered config: {0}")]
    Config(std::io::Error),
}

type Done = (ProjectId, Result<Outcome, ActionError>);

/// Per-project (and Docker-wide) backoff: when the next try may happen.
struct Retry {
    backoff: ExponentialBackoff,
    not_before: Instant,
}

impl Retry {
    fn new(initial: Duration, max: Duration) -> Retry {
        let backoff = ExponentialBackoff {
            initial_interval: initial,
            current_interval: initial,
            max_interval: max,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Retry {
            backoff,
            not_before: Instant::now(),
        }
    }

    fn fail(&mut self) -> Duration {
        let delay = self
            .backoff
            .next_backoff()
            .unwrap_or(self.backoff.max_interval);
        self.not_before = Instant::now() + delay;
        delay
    }
}

pub struct Controller<R: Runtime> {
    runtime: Arc<R>,
    cfg: Arc<LoopConfig>,
    labels: BTreeMap<String, String>,
    wake_rx: mpsc::Receiver<()>,
    wake_tx: mpsc::Sender<()>,
    /// Health changes from Docker's events: (container id, health).
    health_rx: mpsc::Receiver<(String, Health)>,
    health_tx: mpsc::Sender<(String, Health)>,
    /// Docker may have changed since the last list: a Docker event, a finished action, the
    /// resync tick, an outage. Only then does a pass list again; a pass woken by a file
    /// alone plans against the last listing.
    docker_changed: Arc<AtomicBool>,
    status: watch::Sender<Arc<Snapshot>>,

    /// The last valid spec of every project, kept while its file is invalid.
    last_good: BTreeMap<ProjectId, Arc<Spec>>,
    load_cache: LoadCache,
    /// The rendering of every last good spec, kept (and shared) while the spec is unchanged.
    rendered: BTreeMap<ProjectId, (Arc<Spec>, Arc<Rendered>)>,
    /// Per project: (container id, config digest) the container has loaded.
    loaded: BTreeMap<ProjectId, (String, String)>,
    /// Containers in our names' way, found when a create hit a taken name.
    foreign: BTreeMap<ProjectId, String>,
    retries: BTreeMap<ProjectId, Retry>,
    errors: BTreeMap<ProjectId, String>,
    last_reload: BTreeMap<ProjectId, SystemTime>,
    in_flight: BTreeSet<ProjectId>,
    /// Actions planned in the last pass and not dispatched yet (the concurrency cap).
    pending: VecDeque<(Action, Option<Arc<Rendered>>)>,
    /// Whether Docker answered the last call, and when to try again if not.
    docker: Option<Retry>,
    reconciled_once: bool,
    /// What the planner is asked for, per project. Kept across passes and changed only where
    /// a spec changed, so an idle pass over a thousand projects allocates next to nothing.
    wants: BTreeMap<ProjectId, Want>,
    /// The same for the snapshot, for projects with a spec.
    views: BTreeMap<ProjectId, Arc<DesiredView>>,
    file_errors: BTreeMap<ProjectId, String>,
    misnamed: Vec<String>,
    listing: Vec<ContainerInfo>,
    passes: u64,
}

impl<R: Runtime> Controller<R> {
    pub fn new(runtime: Arc<R>, cfg: LoopConfig) -> (Controller<R>, Handle) {
        let (wake_tx, wake_rx) = mpsc::channel(1);
        let (health_tx, health_rx) = mpsc::channel(HEALTH_QUEUE);
        let (status, status_rx) = watch::channel(Arc::new(Snapshot::default()));
        let labels = cfg.owner_labels();
        let handle = Handle {
            wake: wake_tx.clone(),
            status: status_rx,
        };
        let controller = Controller {
            runtime,
            cfg: Arc::new(cfg),
            labels,
            wake_rx,
            wake_tx,
            health_rx,
            health_tx,
            docker_changed: Arc::new(AtomicBool::new(true)),
            status,
            last_good: BTreeMap::new(),
            load_cache: LoadCache::default(),
            rendered: BTreeMap::new(),
            loaded: BTreeMap::new(),
            foreign: BTreeMap::new(),
            retries: BTreeMap::new(),
            errors: BTreeMap::new(),
            last_reload: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            pending: VecDeque::new(),
            docker: Some(Retry::new(
                Duration::from_millis(250),
                Duration::from_secs(10),
            )),
            reconciled_once: false,
            wants: BTreeMap::new(),
            views: BTreeMap::new(),
            file_errors: BTreeMap::new(),
            misnamed: Vec::new(),
            listing: Vec::new(),
            passes: 0,
        };
        (controller, handle)
    }

    /// Runs until `shutdown` completes, then lets in-flight actions finish (under a grace
    /// timeout) and returns. Containers keep running.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let events = tokio::spawn(watch_docker_events(
            self.runtime.clone(),
            self.labels.clone(),
            self.wake_tx.clone(),
            self.health_tx.clone(),
            self.docker_changed.clone(),
        ));
        match self.cfg.configs.loaded() {
            Ok(loaded) => self.loaded = loaded,
            Err(e) => {
                warn!(error = %e, "cannot read the records of loaded configs; every running container will be signalled once")
            }
        }

        let mut actions: JoinSet<Done> = JoinSet::new();
        let mut resync =
            tokio::time::interval_at(Instant::now() + self.cfg.resync, self.cfg.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Start-up is the first trigger.
        let mut pass_at: Option<Instant> = Some(Instant::now());
        loop {
            let wake_at = self.next_retry();
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = self.wake_rx.recv() => {
                    pass_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
                Some(change) = self.health_rx.recv() => {
                    // Health is shown, never acted on: patch the listing, no pass.
                    self.set_health(change);
                    while let Ok(change) = self.health_rx.try_recv() {
                        self.set_health(change);
                    }
                    self.publish();
                }
                () = sleep_until(pass_at), if pass_at.is_some() => {
                    pass_at = None;
                    self.pass(&mut actions).await;
                }
                _ = resync.tick() => {
                    // Conflicts are re-checked now and then: whoever holds the name may be gone.
                    self.foreign.clear();
                    self.docker_changed.store(true, Ordering::SeqCst);
                    pass_at = Some(Instant::now());
                }
                () = sleep_until(wake_at), if wake_at.is_some() => {
                    pass_at = Some(Instant::now());
                }
                Some(done) = actions.join_next(), if !actions.is_empty() => {
                    match done {
                        Ok(done) => self.finish(done),
                        Err(e) => error!(error = %e, "an action panicked"),
                    }
                    self.dispatch(&mut actions);
                    // Level-triggered: once the queue drains, look again to confirm.
                    if actions.is_empty() {
                        pass_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                    }
                    self.publish();
                }
            }
        }

        info!(
            in_flight = actions.len(),
            "shutting down; containers keep running"
        );
        let drain = async { while actions.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            warn!("in-flight actions did not finish within the grace period");
        }
        events.abort();
    }

    /// Applies a health change to the last listing. A container not listed yet gets its
    /// health from the pass that lists it.
    fn set_health(&mut self, (id, health): (String, Health)) {
        if let Some(container) = self.listing.iter_mut().find(|c| c.id == id) {
            container.health = health;
        }
    }

    /// The earliest moment a held-back project or Docker itself may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        let docker = self.docker.as_ref().map(|r| r.not_before);
        let projects = self
            .pending
            .iter()
            .filter_map(|(a, _)| self.retries.get(a.project()).map(|r| r.not_before));
        let held_back = self
            .wants
            .keys()
            .filter_map(|p| self.retries.get(p).map(|r| r.not_before));
        docker
            .into_iter()
            .chain(projects)
            .chain(held_back)
            .filter(|t| *t > Instant::now())
            .min()
    }

    /// One full pass: read desired state, observe Docker, plan, dispatch.
    async fn pass(&mut self, actions: &mut JoinSet<Done>) {
        let state = self.cfg.state.clone();
        let mut cache = std::mem::take(&mut self.load_cache);
        let (loaded, cache) =
            tokio::task::spawn_blocking(move || (state.load_cached(&mut cache), cache))
                .await
                .expect("loading never panics");
        self.load_cache = cache;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(dir = %self.cfg.state.path().display(), error = %e, "cannot read the state directory");
                return;
            }
        };
        self.update_desired(loaded);

        if !self.docker_reachable().await {
            self.publish();
            return;
        }
        // Cleared before listing, so a change during the call brings another list.
        if self.docker_changed.swap(false, Ordering::SeqCst) {
            match self.runtime.list(&self.labels).await {
                Ok(listing) => self.listing = listing,
                Err(e) => {
                    self.docker_failed(&e);
                    self.publish();
                    return;
                }
            }
        }
        let configs = self.cfg.configs.clone();
        let config_dirs = match tokio::task::spawn_blocking(move || configs.projects())
            .await
            .expect("never panics")
        {
            Ok(dirs) => dirs,
            Err(e) => {
                error!(error = %e, "cannot read the config directory");
                return;
            }
        };
        let containers: Vec<plan::Container> = self.listing.iter().filter_map(ours).collect();

        // Forget backoff and errors of projects that are neither wanted nor running any more,
        // so a deleted project does not linger in the status.
        let known = |id: &ProjectId| {
            self.wants.contains_key(id) || containers.iter().any(|c| &c.project == id)
        };
        self.retries.retain(|id, _| known(id));
        self.errors.retain(|id, _| known(id));
        self.last_reload.retain(|id, _| known(id));
        self.foreign.retain(|id, _| self.wants.contains_key(id));

        let observed = Observed {
            containers,
            foreign: self.foreign.clone(),
            config_dirs,
            loaded: self.loaded.clone(),
        };
        let planned = plan::plan(&self.wants, &observed);
        debug!(actions = planned.len(), "planned");

        self.pending.clear();
        for action in planned {
            let project = action.project().clone();
            if let Action::Conflict { container, .. } = &action {
                let error = ActionError::Foreign {
                    name: project.container_name(),
                    container: container.clone(),
                };
                self.record_error(&project, &error);
                continue;
            }
            // Planned from a listing taken while its action runs: stale by definition.
            if self.in_flight.contains(&project) {
                continue;
            }
            let rendered = self.rendered.get(&project).map(|(_, r)| r.clone());
            self.pending.push_back((action, rendered));
        }
        self.dispatch(actions);
        self.passes += 1;
        debug!(pass = self.passes, "pass finished");
        if !self.reconciled_once && actions.is_empty() {
            self.reconciled_once = true;
            info!(
                projects = self.wants.len(),
                containers = self.listing.len(),
                "first full reconcile done"
            );
        }
        self.publish();
    }

    /// Turns the loaded files into wants, keeping the last good spec of invalid files.
    fn update_desired(&mut self, loaded: Loaded) {
        // The usual resync: every file as it was, so every want as it was.
        if loaded.unchanged && self.reconciled_once {
            return;
        }
        let Loaded {
            specs,
            invalid,
            misnamed,
            unchanged: _,
        } = loaded;
        self.last_good
            .retain(|id, _| specs.contains_key(id) || invalid.contains_key(id));
        let mut file_errors = BTreeMap::new();
        for (id, error) in invalid {
            let message = error.to_string();
            if self.file_errors.get(&id) != Some(&message) {
                let kept = if self.last_good.contains_key(&id) {
                    "the last good spec stays in force"
                } else {
                    "no container until it is fixed"
                };
                error!(project = %id, error = %message, "invalid state file; {kept}");
            }
            file_errors.insert(id, message);
        }
        for id in self.file_errors.keys() {
            if !file_errors.contains_key(id) && specs.contains_key(id) {
                info!(project = %id, "state file valid again");
            }
        }
        self.file_errors = file_errors;
        let misnamed: Vec<String> = misnamed.iter().map(|p| p.display().to_string()).collect();
        if misnamed != self.misnamed && !misnamed.is_empty() {
            warn!(files = ?misnamed, "ignoring state files whose name is not a valid project id");
        }
        self.misnamed = misnamed;
        self.last_good.extend(specs);

        // Rendering hashes every config: render a spec once, when it is new or changed.
        let last_good = &self.last_good;
        let file_errors = &self.file_errors;
        self.rendered.retain(|id, _| last_good.contains_key(id));
        self.wants
            .retain(|id, _| last_good.contains_key(id) || file_errors.contains_key(id));
        self.views.retain(|id, _| last_good.contains_key(id));
        for (id, spec) in last_good {
            let current = matches!(self.rendered.get(id), Some((before, _))
                if Arc::ptr_eq(before, spec) || before == spec);
            if current && matches!(self.wants.get(id), Some(Want::Spec(_))) {
                continue;
            }
            let rendered = Arc::new(render::render(spec, &self.cfg.template));
            self.views.insert(
                id.clone(),
                Arc::new(DesiredView {
                    enabled: spec.enabled,
                    spec_hash: rendered.spec_hash.clone(),
                    config_digest: rendered.config.digest.clone(),
                    reload_token: spec.reload_token,
                }),
            );
            self.wants.insert(
                id.clone(),
                Want::Spec(Desired {
                    enabled: spec.enabled,
                    spec_hash: rendered.spec_hash.clone(),
                    config_digest: rendered.config.digest.clone(),
                }),
            );
            self.rendered.insert(id.clone(), (spec.clone(), rendered));
        }
        for id in file_errors.keys() {
            self.wants.entry(id.clone()).or_insert(Want::Frozen);
        }
    }

    /// Checks (and after an outage re-establishes) the connection to Docker.
    async fn docker_reachable(&mut self) -> bool {
        let Some(retry) = &self.docker else {
            return true;
        };
        if Instant::now() < retry.not_before {
            return false;
        }
        let result = match self.runtime.ping().await {
            Ok(()) => {
                self.runtime
                    .ensure_network(&self.cfg.template.network)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if self.reconciled_once {
                    info!("Docker is reachable again; resyncing everything");
                }
                self.docker = None;
                true
            }
            Err(e) => {
                self.docker_failed(&e);
                false
            }
        }
    }

    fn docker_failed(&mut self, error: &RuntimeError) {
        self.docker_changed.store(true, Ordering::SeqCst);
        let first = self.docker.is_none();
        let retry = self
            .docker
            .get_or_insert_with(|| Retry::new(Duration::from_millis(250), Duration::from_secs(10)));
        let delay = retry.fail();
        if first {
            error!(error = %error, "Docker is unreachable; retrying with backoff");
        } else {
            debug!(error = %error, ?delay, "Docker still unreachable");
        }
    }

    /// Starts pending actions up to the concurrency cap, one per project.
    fn dispatch(&mut self, actions: &mut JoinSet<Done>) {
        if self.docker.is_some() {
            return;
        }
        let now = Instant::now();
        while self.in_flight.len() < self.cfg.concurrency {
            let Some((action, rendered)) = self.pending.pop_front() else {
                break;
            };
            let project = action.project().clone();
            // Skipped, not kept: a finished action or the retry timer brings a new pass.
            let backing_off = self
                .retries
                .get(&project)
                .is_some_and(|r| now < r.not_before);
            if self.in_flight.contains(&project) || backing_off {
                continue;
            }
            self.in_flight.insert(project.clone());
            let (runtime, cfg) = (self.runtime.clone(), self.cfg.clone());
            let span = info_span!("reconcile", project = %project);
            actions.spawn(
                async move { (project, apply(&*runtime, &cfg, action, rendered).await) }
                    .instrument(span),
            );
        }
    }

    fn finish(&mut self, (project, result): Done) {
        self.in_flight.remove(&project);
        // Whatever the action did, or failed halfway through, is seen by listing again.
        self.docker_changed.store(true, Ordering::SeqCst);
        // Whatever was queued for this project was planned before this action changed it.
        self.pending
            .retain(|(action, _)| action.project() != &project);
        match result {
            Ok(outcome) => {
                self.retries.remove(&project);
                if self.errors.remove(&project).is_some() {
                    info!(project = %project, "recovered");
                }
                self.foreign.remove(&project);
                match outcome {
                    Outcome::Loaded {
                        container,
                        digest,
                        reloaded,
                    } => {
                        if reloaded {
                            self.last_reload.insert(project.clone(), SystemTime::now());
                        }
                        self.loaded.insert(project, (container, digest));
                    }
                    Outcome::Removed => {
                        self.loaded.remove(&project);
                    }
                }
            }
            Err(ActionError::Runtime(e @ RuntimeError::Unavailable(_))) => self.docker_failed(&e),
            Err(error) => {
                if let ActionError::Foreign { container, .. } = &error {
                    self.foreign.insert(project.clone(), container.clone());
                }
                self.retries
                    .entry(project.clone())
                    .or_insert_with(|| {
                        Retry::new(Duration::from_millis(500), Duration::from_secs(60))
                    })
                    .fail();
                self.record_error(&project, &error);
            }
        }
    }

    /// Keeps the error for the status; logs it only when it changes, not on every retry.
    fn record_error(&mut self, project: &ProjectId, error: &ActionError) {
        let message = error.to_string();
        if self.errors.get(project) != Some(&message) {
            match error {
                ActionError::Foreign { .. } => {
                    error!(project = %project, error = %message, "conflict")
                }
                _ => {
                    warn!(project = %project, error = %message, "action failed; retrying with backoff")
                }
            }
            self.errors.insert(project.clone(), message);
        }
    }

    fn publish(&self) {
        let mut projects: BTreeMap<ProjectId, ProjectStatus> = BTreeMap::new();
        for id in self.wants.keys() {
            let status = projects.entry(id.clone()).or_default();
            status.desired = self.views.get(id).cloned();
        }
        for container in &self.listing {
            let Some(c) = ours(container) else { continue };
            if c.name != c.project.container_name() {
                continue;
            }
            let status = projects.entry(c.project.clone()).or_default();
            status.container = Some(ContainerView {
                id: container.id.clone(),
                name: container.name.clone(),
                state: container.state,
                health: container.health,
                ip: container.ip,
                spec_hash: c.spec_hash,
            });
        }
        for (id, error) in &self.file_errors {
            projects.entry(id.clone()).or_default().file_error = Some(error.clone());
        }
        for (id, error) in &self.errors {
            projects.entry(id.clone()).or_default().last_error = Some(error.clone());
        }
        for (id, at) in &self.last_reload {
            if let Some(status) = projects.get_mut(id) {
                status.last_reload = Some(*at);
            }
        }
        for (id, (container, digest)) in &self.loaded {
            if let Some(status) = projects.get_mut(id) {
                if status
                    .container
                    .as_ref()
                    .is_some_and(|c| &c.id == container)
                {
                    status.loaded_digest = Some(digest.clone());
                }
            }
        }
        let snapshot = Snapshot {
            reconciled_once: self.reconciled_once,
            docker_reachable: self.docker.is_none(),
            projects,
            misnamed: self.misnamed.clone(),
            passes: self.passes,
        };
        self.status.send_replace(Arc::new(snapshot));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Our view of one of our containers, or `None` when its project label is not a valid id.
fn ours(info: &ContainerInfo) -> Option<plan::Container> {
    let project = ProjectId::parse(info.labels.get(LABEL_PROJECT)?).ok()?;
    Some(plan::Container {
        id: info.id.clone(),
        project,
        name: info.name.clone(),
        state: info.state,
        spec_hash: info.labels.get(LABEL_SPEC_HASH).cloned(),
    })
}

/// Carries out one action. Idempotent where it can be: a container already gone counts as
/// removed, an unchanged config is not rewritten.
async fn apply<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    action: Action,
    rendered: Option<Arc<Rendered>>,
) -> Result<Outcome, ActionError> {
    let rendered = || {
        rendered
            .clone()
            .expect("the planner only asks for desired projects to run")
    };
    let outcome = match &action {
        Action::Create { project } => create(runtime, cfg, project, &rendered()).await,
        Action::Recreate { project, container } => {
            remove_container(runtime, container).await?;
            create(runtime, cfg, project, &rendered()).await
        }
        Action::Start { project, container } => {
            let rendered = rendered();
            write_config(cfg, project, &rendered).await?;
            runtime.start(container).await?;
            remember(cfg, project, container, &rendered.config.digest).await;
            Ok(Outcome::Loaded {
                container: container.clone(),
                digest: rendered.config.digest.clone(),
                reloaded: false,
            })
        }
        Action::Reload { project, container } => {
            let rendered = rendered();
            write_config(cfg, project, &rendered).await?;
            runtime.signal(container, &cfg.reload_signal).await?;
            remember(cfg, project, container, &rendered.config.digest).await;
            Ok(Outcome::Loaded {
                container: container.clone(),
                digest: rendered.config.digest.clone(),
                reloaded: true,
            })
        }
        Action::Remove {
            project,
            container,
            keep_config,
        } => {
            remove_container(runtime, container).await?;
            let configs = cfg.configs.clone();
            let project = project.clone();
            let keep_config = *keep_config;
            tokio::task::spawn_blocking(move || {
                if keep_config {
                    configs.forget(&project)
                } else {
                    configs.remove(&project)
                }
            })
            .await
            .expect("never panics")
            .map_err(ActionError::Config)?;
            Ok(Outcome::Removed)
        }
        Action::RemoveConfig { project } => {
            let configs = cfg.configs.clone();
            let project = project.clone();
            tokio::task::spawn_blocking(move || configs.remove(&project))
                .await
                .expect("never panics")
                .map_err(ActionError::Config)?;
            Ok(Outcome::Removed)
        }
        Action::Conflict { .. } => unreachable!("conflicts are reported, not applied"),
    };
    match &outcome {
        Ok(_) => info!(action = ?ActionKind::of(&action), "done"),
        Err(e) => debug!(action = ?ActionKind::of(&action), error = %e, "failed"),
    }
    outcome
}

/// An action without its payload, for log lines.
#[derive(Debug)]
enum ActionKind {
    Create,
    Recreate,
    Start,
    Reload,
    Remove,
    RemoveConfig,
    Conflict,
}

impl ActionKind {
    fn of(action: &Action) -> ActionKind {
        match action {
            Action::Create { .. } => ActionKind::Create,
            Action::Recreate { .. } => ActionKind::Recreate,
            Action::Start { .. } => ActionKind::Start,
            Action::Reload { .. } => ActionKind::Reload,
            Action::Remove { .. } => ActionKind::Remove,
            Action::RemoveConfig { .. } => ActionKind::RemoveConfig,
            Action::Conflict { .. } => ActionKind::Conflict,
        }
    }
}

async fn create<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    project: &ProjectId,
    rendered: &Rendered,
) -> Result<Outcome, ActionError> {
    write_config(cfg, project, rendered).await?;
    let id = match runtime.create(&rendered.container).await {
        Ok(id) => id,
        Err(RuntimeError::Conflict(_)) => {
            let name = project.container_name();
            let holder = runtime.find_by_name(&name).await?;
            let owner_labels = cfg.owner_labels();
            let is_ours = owner_labels
                .iter()
                .all(|(k, v)| holder.labels.get(k) == Some(v));
            if is_ours {
                // Ours, but not in the last listing (created concurrently): the next pass sees it.
                return Err(RuntimeError::Conflict(format!("{name} already exists")).into());
            }
            return Err(ActionError::Foreign {
                name,
                container: holder.id,
            });
        }
        // A missing network (deleted by hand) is recreated; a missing image is an error.
        Err(RuntimeError::NotFound) => {
            runtime.ensure_network(&cfg.template.network).await?;
            runtime
                .create(&rendered.container)
                .await
                .map_err(|e| match e {
                    RuntimeError::NotFound => {
                        RuntimeError::Other(format!("image {} not found", cfg.template.image))
                    }
                    other => other,
                })?
        }
        Err(e) => return Err(e.into()),
    };
    runtime.start(&id).await?;
    remember(cfg, project, &id, &rendered.config.digest).await;
    Ok(Outcome::Loaded {
        container: id,
        digest: rendered.config.digest.clone(),
        reloaded: false,
    })
}

async fn remove_container<R: Runtime>(runtime: &R, container: &str) -> Result<(), ActionError> {
    match runtime.remove(container).await {
        Ok(()) | Err(RuntimeError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_config(
    cfg: &LoopConfig,
    project: &ProjectId,
    rendered: &Rendered,
) -> Result<(), ActionError> {
    let configs = cfg.configs.clone();
    let (project, config) = (project.clone(), rendered.config.clone());
    tokio::task::spawn_blocking(move || configs.write(&project, &config))
        .await
        .expect("never panics")
        .map(drop)
        .map_err(ActionError::Config)
}

/// Persists which config a container has loaded. A failure here costs at most one extra
/// reload signal after a restart, so it is logged, not fatal.
async fn remember(cfg: &LoopConfig, project: &ProjectId, container: &str, digest: &str) {
    let configs = cfg.configs.clone();
    let (p, c, d) = (project.clone(), container.to_owned(), digest.to_owned());
    if let Err(e) = tokio::task::spawn_blocking(move || configs.remember(&p, &c, &d))
        .await
        .expect("never panics")
    {
        warn!(project = %project, error = %e, "cannot record the loaded config");
    }
}

/// Follows Docker's event stream as a hint. The daemon keeps few events and forgets them on
/// restart, so after every (re)connection the loop is woken for a full list. Health changes
/// go to the loop as they are; everything else marks Docker changed and wakes the loop.
async fn watch_docker_events<R: Runtime>(
    runtime: Arc<R>,
    labels: BTreeMap<String, String>,
    wake: mpsc::Sender<()>,
    health: mpsc::Sender<(String, Health)>,
    docker_changed: Arc<AtomicBool>,
) {
    let look_again = || {
        docker_changed.store(true, Ordering::SeqCst);
        let _ = wake.try_send(());
    };
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        if runtime.ping().await.is_ok() {
            let mut events = runtime.events(&labels);
            look_again();
            let connected = Instant::now();
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Health { id, health: h }) => {
                        if health.try_send((id, h)).is_err() {
                            look_again();
                        }
                    }
                    Ok(Event::Changed) => look_again(),
                    Err(_) => break,
                }
            }
            // The stream dropped: the loop should notice an outage now, not at the next tick.
            look_again();
            if connected.elapsed() > Duration::from_secs(30) {
                retry.backoff.reset();
            }
        }
        let delay = retry.fail();
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
