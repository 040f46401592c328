//! The reconcile loop: read desired state, observe Docker, plan, apply, until they match.
//!
//! Level-triggered: a file event, a Docker event, an API write, the resync tick and start-up
//! all reduce to "wake up"; the reason is never passed in. One `tokio::select!` drives it. The
//! loop is the only writer to Docker: it runs at most one action per project at a time, at
//! most `concurrency` at once, and holds back a project that failed with exponential backoff
//! that resets on success. While Docker is unreachable it retries with backoff, logs the
//! outage once and the recovery once, and then lists and reconciles everything.
//!
//! Rooms: `table` (what the loop remembers per project), `history` (its events and the plan
//! in words), `apply` (one action against Docker and the config directory), `events` (Docker's
//! event stream), `snapshot` (what it publishes), `publish` (which projects changed, and the
//! published statuses patched by them), `retry` (backoff).

mod apply;
mod events;
mod history;
mod publish;
mod ready;
mod replace;
mod retry;
mod snapshot;
mod table;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_replace;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

pub use replace::Routed;
pub use snapshot::{
    ContainerView, DesiredView, Event, EventKind, Handle, ProjectStatus, Readiness, Snapshot,
    EVENTS_KEPT,
};

use crate::configs::ConfigDir;
use crate::metrics::Metrics;
use crate::pgbouncer::{PgBouncerConfig, PoolSync};
use crate::plan::{self, Observed};
use crate::render::{owner_labels, Template, LABEL_PROJECT};
use crate::runtime::{ContainerInfo, Health, Orchestrator, Runtime, RuntimeError, State};
use crate::spec::ProjectId;
use crate::state_dir::{LoadCache, Loaded, Named, StateDir};
use apply::{apply, ActionError, Job, Outcome};
use events::SharedDockerHints;
use publish::{Statuses, Touched};
use retry::Retry;
use snapshot::{FileHints, SharedHints};
use table::Table;

/// Triggers that come in bursts are coalesced over this window: a file created or written to
/// but not yet closed or renamed into place, a plain wake, readiness changes, actions' ends.
/// A file change known to be complete (the API's write or removal, a rename into place, a
/// writer's close) is looked at without it, so a reload does not wait for it.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Health changes queued for the loop. They arrive in bursts when many containers start; a
/// full queue falls back to a pass, which lists every container's health anyway.
const HEALTH_QUEUE: usize = 256;
/// Every this many resyncs (with the default resync, every 5 minutes), the state directory is
/// read in full (a listing and a `stat` per file), Docker's containers are listed in full and
/// every project is planned again: the safety nets under the file watcher and Docker's
/// events, which name the files and containers that change. In between, a pass looks at
/// those named alone, and a tick plans every project again only to retry a conflict. At 10,000
/// files and 1,000 containers, both full looks every resync were most of an idle manager's
/// CPU, and each list cost the daemon about 300 ms (BENCHMARKS.md, "Scale"). Swarm's events
/// name no task, so on Swarm every resync lists.
const RESCAN_EVERY: u32 = 10;
/// More containers named than this since the last look, and one list is taken instead of a
/// lookup each: a list costs the daemon about 300 ms at 1,000 containers (BENCHMARKS.md), a
/// lookup (the list filtered by id) looks at its one container, and the round trips add up.
/// A guess, not a measured crossover.
const LOOKUPS_MAX: usize = 64;
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
    /// How long a reload waits for PostgREST's own word (`Config reloaded`) in its log.
    pub reload_timeout: Duration,
    /// PostgREST's admin port, probed for `/ready`.
    pub admin_port: u16,
    /// PgBouncer's include file and container, when the manager keeps its pools.
    pub pgbouncer: Option<PgBouncerConfig>,
    /// `PGM_REPLACE=bluegreen`: a serving container whose spec-hash is stale is replaced
    /// beside itself (`replace.rs`); otherwise it is removed and created anew.
    pub blue_green: bool,
    /// How long a replacement waits for the new container to serve.
    pub replace_timeout: Duration,
}

#[cfg(test)]
impl LoopConfig {
    /// A loop for unit tests in `dir` (created): the test template, concurrency 2, no resync
    /// to speak of, and an admin port nothing listens on.
    pub(crate) fn for_tests(instance: &str, dir: &std::path::Path) -> LoopConfig {
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).unwrap());
        let cfg = LoopConfig {
            state: StateDir::new(dir.join("state")),
            configs: ConfigDir::new(dir.join("configs"), uid),
            template: Template::for_tests(instance, dir.join("configs"), uid),
            resync: Duration::from_secs(3600),
            concurrency: 2,
            reload_signal: "SIGUSR2".into(),
            reload_timeout: Duration::from_secs(10),
            admin_port: 1,
            pgbouncer: None,
            blue_green: true,
            replace_timeout: Duration::from_secs(10),
        };
        cfg.state.ensure().unwrap();
        cfg.configs.ensure().unwrap();
        cfg
    }
}

/// What a pass read of the state directory: the whole of it (`None`: nothing changed), or
/// the files the watcher named.
enum Load {
    Whole(Option<Loaded>),
    Named(Named),
}

/// A finished action: its project, its result, and what it saw of the container it created or
/// started.
type Done = (ProjectId, Result<Outcome, ActionError>, Seen);

/// The container an action created or started, looked up by the action itself as it ended,
/// so the project's snapshot shows it at once instead of after some later pass: one spawn's
/// answer never waits for another project's action.
struct Seen {
    /// [`Controller::looks`] when the action was dispatched: a list or lookup taken since may
    /// be newer than the action's own, and then the next pass confirms instead.
    looks: u64,
    info: Option<ContainerInfo>,
}

pub struct Controller<R: Runtime> {
    runtime: Arc<R>,
    cfg: Arc<LoopConfig>,
    labels: BTreeMap<String, String>,
    wake_rx: mpsc::Receiver<()>,
    wake_tx: mpsc::Sender<()>,
    /// [`Handle::file_written`]: a pass at once, no debounce.
    wake_now: Arc<tokio::sync::Notify>,
    /// Which state files the next pass looks at.
    files: SharedHints,
    /// Health changes from Docker's events: (container id, health).
    health_rx: mpsc::Receiver<(String, Health)>,
    health_tx: mpsc::Sender<(String, Health)>,
    /// Running containers for the readiness probe, and what it found, by container id.
    ready_targets: watch::Sender<Vec<ready::Target>>,
    ready_rx: mpsc::Receiver<(String, Readiness)>,
    ready_tx: mpsc::Sender<(String, Readiness)>,
    readiness: HashMap<String, Readiness>,
    /// Replacements ask here to move a project's route (`replace::Switch`).
    switch_tx: mpsc::UnboundedSender<(ProjectId, replace::Route)>,
    switch_rx: mpsc::UnboundedReceiver<(ProjectId, replace::Route)>,
    /// What Caddy holds, from the route task; `None` without Caddy.
    routed: Option<watch::Receiver<Routed>>,
    /// What may have changed in Docker since the last look: everything (the resync tick, an
    /// outage, a failed action, a reconnected event stream: the next pass lists) or the
    /// containers Docker's events named (the next pass asks for those alone). A pass woken
    /// by a file alone plans against the last listing.
    docker_changed: SharedDockerHints,
    /// Containers to ask Docker for by id before the next plan: those events named, and those
    /// an action created or started whose own lookup came too late.
    confirm: Vec<String>,
    /// Counted when `PGM_METRICS_LISTEN` is set.
    metrics: Option<Metrics>,
    status: watch::Sender<Arc<Snapshot>>,
    /// Everything the loop remembers per project.
    table: Table,
    load_cache: LoadCache,
    /// Jobs planned in the last pass and not dispatched yet (the concurrency cap).
    pending: VecDeque<Job>,
    /// Whether Docker answered the last call, and when to try again if not.
    docker: Option<Retry>,
    reconciled_once: bool,
    /// What changed since the last pass other than state files: the projects an action's
    /// end, a probe, a route or a lookup touched, or all of them (a conflict to check again,
    /// a retry's time, the first reconcile's last action). The next pass plans for these and
    /// the files' projects alone, unless it lists.
    due: Touched,
    /// The projects whose status may have changed since the last publication.
    touched: Touched,
    statuses: Statuses,
    listing: Vec<ContainerInfo>,
    /// Lists and lookups taken so far: which listing a finished action's lookup may patch.
    looks: u64,
    passes: u64,
    /// PgBouncer's pools, kept in step after each pass (with `LoopConfig::pgbouncer`).
    pools: Option<PoolSync>,
}

impl<R: Runtime> Controller<R> {
    pub fn new(runtime: Arc<R>, cfg: LoopConfig) -> (Controller<R>, Handle) {
        let (wake_tx, wake_rx) = mpsc::channel(1);
        let (health_tx, health_rx) = mpsc::channel(HEALTH_QUEUE);
        let (ready_tx, ready_rx) = mpsc::channel(HEALTH_QUEUE);
        let (status, status_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (switch_tx, switch_rx) = mpsc::unbounded_channel();
        let labels = owner_labels(&cfg.template.instance);
        let pools = cfg.pgbouncer.clone().map(PoolSync::new);
        let wake_now = Arc::new(tokio::sync::Notify::new());
        let files = SharedHints::default();
        let handle = Handle::new(wake_tx.clone(), wake_now.clone(), files.clone(), status_rx);
        let controller = Controller {
            runtime,
            cfg: Arc::new(cfg),
            labels,
            wake_rx,
            wake_tx,
            wake_now,
            files,
            health_rx,
            health_tx,
            ready_targets: watch::channel(Vec::new()).0,
            ready_rx,
            ready_tx,
            readiness: HashMap::new(),
            switch_tx,
            switch_rx,
            routed: None,
            docker_changed: SharedDockerHints::everything(),
            confirm: Vec::new(),
            metrics: None,
            status,
            table: Table::default(),
            load_cache: LoadCache::default(),
            pending: VecDeque::new(),
            docker: Some(Retry::docker()),
            reconciled_once: false,
            due: Touched::default(),
            touched: Touched::everything(),
            statuses: Statuses::default(),
            listing: Vec::new(),
            looks: 0,
            passes: 0,
            pools,
        };
        (controller, handle)
    }

    /// Counts passes, actions and outages into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Controller<R> {
        self.metrics = Some(metrics);
        self
    }

    /// Makes replacements wait for Caddy: the old container is stopped only once `routed`
    /// shows the project's route on the new one.
    pub fn follow_routes(&mut self, routed: watch::Receiver<Routed>) {
        self.routed = Some(routed);
    }

    /// Runs until `shutdown` completes, then lets in-flight actions finish (under a grace
    /// timeout) and returns. Containers keep running.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let events = tokio::spawn(events::watch_docker_events(
            self.runtime.clone(),
            self.labels.clone(),
            self.wake_tx.clone(),
            self.health_tx.clone(),
            self.docker_changed.clone(),
        ));
        let readiness = tokio::spawn(ready::watch_readiness(
            self.runtime.clone(),
            self.cfg.admin_port,
            self.ready_targets.subscribe(),
            self.ready_tx.clone(),
        ));
        match self.cfg.configs.loaded() {
            Ok(loaded) => self.table = Table::with_loaded(loaded),
            Err(e) => {
                warn!(error = %e, "cannot read the records of loaded configs; every running container will be signalled once");
            }
        }
        match self.cfg.configs.schema_seen() {
            Ok(seen) => self.table.seed_schema(seen),
            Err(e) => {
                warn!(error = %e, "cannot read the records of schema reloads; a container asked for one gets it again");
            }
        }

        let mut actions: JoinSet<Done> = JoinSet::new();
        let mut resync =
            tokio::time::interval_at(Instant::now() + self.cfg.resync, self.cfg.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resyncs: u32 = 0;
        // Start-up is the first trigger.
        let mut pass_at: Option<Instant> = Some(Instant::now());
        loop {
            let wake_at = self.next_retry();
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = self.wake_rx.recv() => {
                    pass_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
                () = self.wake_now.notified() => {
                    pass_at = Some(Instant::now());
                }
                Some(change) = self.health_rx.recv() => {
                    // Health is shown, never acted on: patch the listing, no pass.
                    self.set_health(change);
                    while let Ok(change) = self.health_rx.try_recv() {
                        self.set_health(change);
                    }
                    self.publish();
                }
                Some(change) = self.ready_rx.recv() => {
                    self.set_readiness(change);
                    while let Ok(change) = self.ready_rx.try_recv() {
                        self.set_readiness(change);
                    }
                    pass_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                    self.publish();
                }
                Some((project, route)) = self.switch_rx.recv() => {
                    let upstream = match route {
                        // The route follows what the loop sees of the new container: the
                        // replacement saw it serve, and the listing may not show it yet, or
                        // show it as it was created, so it is looked up now. A failed lookup
                        // leaves it to the next pass.
                        replace::Route::To { upstream, serving } => {
                            self.confirm.push(serving.clone());
                            self.confirmed().await;
                            self.readiness.insert(serving, Readiness::Ready);
                            Some(upstream)
                        }
                        // The action's end lists again, whatever became of it.
                        replace::Route::Back { abandoned } => {
                            self.listing.retain(|c| c.id != abandoned);
                            self.listed();
                            None
                        }
                    };
                    self.changed(&project);
                    self.table.projects.entry(project).or_default().switch_to = upstream;
                    self.publish();
                }
                () = sleep_until(pass_at), if pass_at.is_some() => {
                    pass_at = None;
                    self.pass(&mut actions).await;
                }
                _ = resync.tick() => {
                    resyncs += 1;
                    let rescan = resyncs.is_multiple_of(RESCAN_EVERY);
                    if rescan {
                        self.hints().all = true;
                    }
                    if rescan || self.runtime.orchestrator() == Orchestrator::Swarm {
                        self.docker_changed.all();
                    }
                    // Between rescans a tick brings nothing new to plan with, but conflicts:
                    // whoever held a project's name may be gone, and only a full pass tries
                    // again. With none, its pass looks at what the hints name (usually
                    // nothing): at 10,000 files a full pass planning the same again cost
                    // about 20 ms a tick, half an idle manager's CPU (BENCHMARKS.md, "Scale").
                    if self.table.forget_foreign() {
                        self.due.all();
                    }
                    pass_at = Some(Instant::now());
                }
                () = sleep_until(wake_at), if wake_at.is_some() => {
                    self.due.all();
                    pass_at = Some(Instant::now());
                }
                Some(done) = actions.join_next(), if !actions.is_empty() => {
                    match done {
                        // The pass it brings plans for its project; nothing else changed.
                        Ok(done) => self.finish(done),
                        Err(e) => {
                            error!(error = %e, "an action panicked");
                            self.due.all();
                        }
                    }
                    self.dispatch(&mut actions).await;
                    // The first full reconcile is a full pass that dispatches nothing.
                    if !self.reconciled_once && actions.is_empty() && self.pending.is_empty() {
                        self.due.all();
                    }
                    // Level-triggered: once nothing is left to dispatch, look again to
                    // confirm. Not only once every action is done: a removal may take its
                    // whole stop grace, and the others must not wait for it to be seen. A
                    // container the action could not see for itself is confirmed by a pass
                    // now, not once the queue drains.
                    if actions.is_empty() || self.pending.is_empty() || !self.confirm.is_empty() {
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
        readiness.abort();
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, FileHints> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a health change to the last listing. A container not listed yet gets its
    /// health from the pass that lists it.
    fn set_health(&mut self, (id, health): (String, Health)) {
        if let Some(container) = self.listing.iter_mut().find(|c| c.id == id) {
            container.health = health;
            if let Some(project) = container.project() {
                self.touched.project(&project);
            }
        }
    }

    /// Takes in what a probe found. Which of two containers to keep, and whether a stale one
    /// may be replaced beside itself, depends on it: its project is planned again (from the
    /// listing as it is). A container not listed is shown and planned for once it is.
    fn set_readiness(&mut self, (id, readiness): (String, Readiness)) {
        if let Some(project) = self.project_of(&id) {
            self.changed(&project);
        }
        self.readiness.insert(id, readiness);
    }

    /// Something about `project` changed: the next pass plans for it, the next publication
    /// builds its status again.
    fn changed(&mut self, project: &ProjectId) {
        self.due.project(project);
        self.touched.project(project);
    }

    /// The project of a listed container.
    fn project_of(&self, container: &str) -> Option<ProjectId> {
        self.listing.iter().find(|c| c.id == container)?.project()
    }

    /// The earliest moment a held-back project or Docker itself may be tried again.
    fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        let docker = self
            .docker
            .as_ref()
            .map(|r| r.not_before)
            .filter(|t| *t > now);
        let pools = self
            .pools
            .as_ref()
            .and_then(PoolSync::retry_at)
            .filter(|t| *t > now);
        docker
            .into_iter()
            .chain(pools)
            .chain(self.table.next_retry(now))
            .min()
    }

    /// One full pass: read desired state, observe Docker, plan, dispatch.
    async fn pass(&mut self, actions: &mut JoinSet<Done>) {
        let started = Instant::now();
        let state = self.cfg.state.clone();
        let mut cache = std::mem::take(&mut self.load_cache);
        let first = !self.reconciled_once;
        let hints = std::mem::take(&mut *self.hints());
        let all = first || hints.all;
        let (loaded, cache) = tokio::task::spawn_blocking(move || {
            let loaded = match (first, all) {
                (true, _) => state.load_cached(&mut cache).map(|l| Load::Whole(Some(l))),
                (false, true) => state.load_changed(&mut cache).map(Load::Whole),
                (false, false) => state
                    .load_named(&mut cache, hints.names.iter().map(|n| n.as_str()))
                    .map(Load::Named),
            };
            (loaded, cache)
        })
        .await
        .expect("loading never panics");
        self.load_cache = cache;
        // Nothing a project's status shows has changed in this pass (so far): what the pass
        // looked at is not built again for the snapshot. Everything that changes a status
        // between passes marks its project touched.
        let mut quiet = true;
        // A pool entry may have changed: PgBouncer's include is rendered again.
        let mut pools_changed = false;
        // The projects this pass must look at; `None`: every project.
        let mut scope = Some(BTreeSet::new());
        let template = &self.cfg.template;
        match loaded {
            // The whole directory read again, and no file changed: every want is as it was,
            // and what asked for the whole read (start-up, a plain wake, the rescan, a
            // watcher that lost track) has every project looked at.
            Ok(Load::Whole(None)) => scope = None,
            Ok(Load::Whole(Some(loaded))) => {
                quiet = false;
                pools_changed = true;
                scope = None;
                self.table.absorb(loaded, template);
                self.touched.all();
            }
            Ok(Load::Named(named)) => {
                quiet &= named.is_empty();
                for (id, file) in named.changed {
                    self.touched.project(&id);
                    if let Some(scope) = &mut scope {
                        scope.insert(id.clone());
                    }
                    pools_changed |= self.table.absorb_file(id, file, template);
                }
                if let Some(misnamed) = named.misnamed {
                    self.table.set_misnamed(&misnamed);
                }
            }
            Err(e) => {
                // What this pass was to look at is looked at again, all of it.
                self.hints().all = true;
                error!(dir = %self.cfg.state.path().display(), error = %e, "cannot read the state directory");
                return;
            }
        }

        if !self.docker_reachable().await {
            self.publish();
            return;
        }
        // Taken before looking, so a change during the calls brings another look.
        let (projects, listing) = (&self.table.projects, &self.listing);
        let (all, named) = self.docker_changed.lock().take(
            |project| projects.get(project).is_some_and(|p| p.in_flight),
            |id| {
                listing
                    .iter()
                    .any(|c| c.id == id && c.state == State::Running)
            },
        );
        self.confirm.extend(named);
        let lists = all || self.confirm.len() > LOOKUPS_MAX;
        if lists {
            self.confirm.clear();
            match self.runtime.list(&self.labels).await {
                Ok(listing) => {
                    if listing != self.listing {
                        quiet = false;
                        self.touched.all();
                    }
                    self.listing = listing;
                    self.looks += 1;
                    self.listed();
                }
                Err(e) => {
                    self.docker_failed(&e);
                    self.publish();
                    return;
                }
            }
        } else if !self.confirm.is_empty() {
            quiet = false;
            if !self.confirmed().await {
                self.publish();
                return;
            }
        }
        // A list shows every project anew; lookups, probes, routes and actions' ends touched
        // their projects (`due`), which are looked at beside the files'.
        match (&mut scope, self.due.ids()) {
            (Some(scope), Some(due)) if !lists => scope.extend(due.iter().cloned()),
            _ => scope = None,
        }
        let configs = self.cfg.configs.clone();
        let wanted = scope.clone();
        let config_dirs = match tokio::task::spawn_blocking(move || match wanted {
            None => configs.projects(),
            Some(scope) => configs.projects_among(scope),
        })
        .await
        .expect("never panics")
        {
            Ok(dirs) => dirs,
            Err(e) => {
                error!(error = %e, "cannot read the config directory");
                return;
            }
        };
        let containers: Vec<plan::Container> = match &scope {
            None => self
                .listing
                .iter()
                .filter_map(|c| ours(c, &self.readiness))
                .collect(),
            // By the label first: a container of another project costs a string compare.
            Some(scope) => {
                let ids: BTreeSet<&str> = scope.iter().map(ProjectId::as_str).collect();
                self.listing
                    .iter()
                    .filter(|c| {
                        c.labels
                            .get(LABEL_PROJECT)
                            .is_some_and(|p| ids.contains(p.as_str()))
                    })
                    .filter_map(|c| ours(c, &self.readiness))
                    .collect()
            }
        };
        for id in self.table.forget_unknown(&containers, scope.as_ref()) {
            self.touched.project(&id);
        }
        let observed = Observed {
            containers,
            foreign: self.table.foreign(scope.as_ref()),
            config_dirs,
            loaded: self.table.loaded(scope.as_ref()),
            schema: self.table.schema_seen(scope.as_ref()),
            blue_green: self.cfg.blue_green,
            orchestrator: self.runtime.orchestrator(),
        };
        let plan = match &scope {
            // A pass for some files alone: the plan and its words for their projects.
            Some(scope) => {
                let plan = plan::plan(&self.table.among(scope), &observed);
                self.table.explain_some(scope, &plan, &observed);
                plan
            }
            // The usual idle pass: the same wants and the same world as the last idle plan,
            // so the same (empty) plan and the same words; `plan` is a function of these two
            // alone.
            None if self.table.unchanged_since_idle(&observed) => plan::Plan::default(),
            None => {
                quiet = false;
                let plan = plan::plan(&self.table.projects, &observed);
                self.table.explain(&plan, &observed);
                plan
            }
        };
        debug!(actions = plan.actions.len(), "planned");

        quiet &= plan.conflicts.is_empty() && plan.actions.is_empty();
        for conflict in plan.conflicts {
            let error = ActionError::Foreign {
                name: conflict.project.container_name(),
                container: conflict.container,
            };
            self.table.record_error(&conflict.project, &error);
        }
        match &scope {
            None => self.pending.clear(),
            Some(scope) => self.pending.retain(|job| !scope.contains(job.project())),
        }
        for action in plan.actions {
            let Some(project) = self.table.projects.get(action.project()) else {
                // Not wanted and not remembered: a removal, which needs no rendering.
                self.pending.extend(Job::new(action, None));
                continue;
            };
            // Planned from a listing taken while its action runs: stale by definition.
            if project.in_flight {
                continue;
            }
            let rendered = project.good.as_ref().and_then(|g| g.rendered.as_ref());
            match Job::new(action.clone(), rendered) {
                Some(job) => self.pending.push_back(job),
                None => {
                    error!(project = %action.project(), ?action, "planned without a spec; skipped");
                }
            }
        }
        // Before the containers are created: a new project's database is in PgBouncer by the
        // time its PostgREST first connects.
        // Only when a pool entry may have changed or the pools are not in place: rendering
        // every project's entry is O(projects), 10,000 lines per idle pass.
        if let Some(pools) = self
            .pools
            .as_mut()
            .filter(|p| pools_changed || !p.in_place())
        {
            let specs = self.table.projects.values().filter_map(|p| p.good.as_ref());
            pools
                .sync(&*self.runtime, specs.map(|g| &*g.view.spec))
                .await;
        }
        self.dispatch(actions).await;
        self.passes += 1;
        if let Some(metrics) = &self.metrics {
            metrics.pass_finished(started.elapsed());
        }
        debug!(pass = self.passes, scoped = ?scope.as_ref().map(BTreeSet::len), took = ?started.elapsed(), "pass finished");
        self.due = Touched::default();
        if !quiet {
            match &scope {
                None => self.touched.all(),
                Some(scope) => scope.iter().for_each(|id| self.touched.project(id)),
            }
        }
        if !self.reconciled_once && scope.is_none() && actions.is_empty() {
            self.reconciled_once = true;
            info!(
                projects = self.table.projects.len(),
                containers = self.listing.len(),
                "first full reconcile done"
            );
        }
        self.publish();
    }

    /// Patches the last listing with the containers Docker's events named and those actions
    /// created or started, each asked for by id. Every change to one of our containers but
    /// its creation by someone else comes as an event that names it (a creation by hand is
    /// found by the resync's list), so these lookups see what a full list would, at the cost
    /// of the containers that changed instead of the whole fleet. A recreated container
    /// replaces its predecessor, which carried the same name; one not found is gone. An
    /// error falls back to a full list. The projects of the containers looked up are the next
    /// pass's to plan for.
    async fn confirmed(&mut self) -> bool {
        let mut ids = std::mem::take(&mut self.confirm);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let was = self.project_of(&id);
            match self.runtime.inspect(&id).await {
                Ok(info) => {
                    for project in was.iter().chain(info.project().as_ref()) {
                        self.changed(project);
                    }
                    self.listing
                        .retain(|c| c.id != info.id && c.name != info.name);
                    self.listing.push(info);
                }
                Err(RuntimeError::NotFound) => {
                    if let Some(project) = was {
                        self.changed(&project);
                    }
                    self.listing.retain(|c| c.id != id);
                }
                Err(e) => {
                    self.docker_failed(&e);
                    return false;
                }
            }
        }
        self.looks += 1;
        self.listed();
        true
    }

    /// After a new listing: the probe follows the running containers, and what it knew of
    /// containers that are gone is forgotten.
    fn listed(&mut self) {
        let targets: Vec<ready::Target> = self
            .listing
            .iter()
            .filter(|c| c.project().is_some())
            .map(|c| ready::Target {
                id: c.id.clone(),
                ip: c.ip.filter(|_| c.state == State::Running),
                // Swarm: a task runs only once its `/ready` health check passed.
                serves: (self.runtime.orchestrator() == Orchestrator::Swarm)
                    .then_some(c.health == Health::Healthy),
            })
            .collect();
        for project in self.table.switched(&self.listing) {
            self.touched.project(&project);
        }
        let listed: HashSet<&str> = self.listing.iter().map(|c| c.id.as_str()).collect();
        self.readiness.retain(|id, _| listed.contains(id.as_str()));
        self.ready_targets.send_if_modified(|current| {
            let changed = *current != targets;
            if changed {
                *current = targets;
            }
            changed
        });
    }

    /// Checks (and after an outage re-establishes) the connection to Docker.
    async fn docker_reachable(&mut self) -> bool {
        let Some(retry) = &self.docker else {
            return true;
        };
        if retry.waiting(Instant::now()) {
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
        self.docker_changed.all();
        let first = self.docker.is_none();
        let delay = self.docker.get_or_insert_with(Retry::docker).fail();
        if first {
            if let Some(metrics) = &self.metrics {
                metrics.docker_outage();
            }
            error!(error = %error, "Docker is unreachable; retrying with backoff");
        } else {
            debug!(error = %error, ?delay, "Docker still unreachable");
        }
    }

    /// Starts pending jobs up to the concurrency cap, one per project, and lets them run
    /// before the loop goes on: a task spawned from the loop waits in its worker's next-task
    /// slot until the loop yields, and what follows a dispatch (publishing every project's
    /// status) took 8 ms at 10,000 projects, all of it added to a reload (BENCHMARKS.md, the
    /// status of 2026-12-07 01:56).
    async fn dispatch(&mut self, actions: &mut JoinSet<Done>) {
        if self.docker.is_some() {
            return;
        }
        let before = actions.len();
        let now = Instant::now();
        while actions.len() < self.cfg.concurrency {
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            let project = job.project().clone();
            let record = self.table.projects.entry(project.clone()).or_default();
            // Skipped, not kept: a finished action or the retry timer brings a new pass.
            if record.in_flight || record.backing_off(now) {
                continue;
            }
            record.begin(&job);
            let (runtime, cfg) = (self.runtime.clone(), self.cfg.clone());
            let switch = replace::Switch {
                to_loop: self.switch_tx.clone(),
                routed: self.routed.clone(),
            };
            let span = info_span!("reconcile", project = %project);
            let metrics = self.metrics.clone();
            let looks = self.looks;
            actions.spawn(
                async move {
                    let (kind, started) = (job.metric_kind(), Instant::now());
                    let result = apply(&*runtime, &cfg, &switch, job).await;
                    if let Some(metrics) = metrics {
                        metrics.action_finished(kind, result.is_ok(), started.elapsed());
                    }
                    // The lookup a later pass would make, made here so this project does
                    // not wait for that pass (which, with work queued, only comes once the
                    // queue drains). A failed lookup leaves it to that pass.
                    let info = match &result {
                        Ok(Outcome::Loaded {
                            container,
                            reloaded: false,
                            ..
                        }) => runtime.inspect(container).await.ok(),
                        _ => None,
                    };
                    (project, result, Seen { looks, info })
                }
                .instrument(span),
            );
        }
        if actions.len() > before {
            tokio::task::yield_now().await;
        }
    }

    /// Takes in an action's end: its project is the next pass's to plan for.
    fn finish(&mut self, (project, result, seen): Done) {
        self.changed(&project);
        match &result {
            // A container created (or recreated) and started, or a stopped one started: the
            // action looked it up as it ended. Nothing else changed in Docker since the last
            // list (a change comes as an event, which lists), so its lookup patches the
            // listing now; after a list taken meanwhile the next pass asks for it again.
            Ok(Outcome::Loaded {
                container,
                reloaded: false,
                ..
            }) => match seen.info {
                Some(info) if seen.looks == self.looks => {
                    self.docker_changed.lock().looked_up(&info.id);
                    self.listing
                        .retain(|c| c.id != info.id && c.name != info.name);
                    self.listing.push(info);
                    self.listed();
                }
                _ => self.confirm.push(container.clone()),
            },
            // A container removed: gone from any list taken from now on.
            Ok(Outcome::Removed {
                container: Some(container),
            }) if self.runtime.orchestrator() == Orchestrator::Docker => {
                self.listing.retain(|c| &c.id != container);
                self.listed();
            }
            // A signal changes nothing a list shows (a container it kills says so in an
            // event).
            Ok(Outcome::Loaded { reloaded: true, .. } | Outcome::SchemaReloaded { .. })
                if self.runtime.orchestrator() == Orchestrator::Docker => {}
            // Whatever else the action did (a Swarm service updated), or failed halfway
            // through, is seen by listing again.
            _ => self.docker_changed.all(),
        }
        // Whatever was queued for this project was planned before this action changed it.
        self.pending.retain(|job| job.project() != &project);
        if let Some(unreachable) = self.table.finish(&project, result) {
            self.docker_failed(&unreachable);
        }
    }

    /// Publishes a snapshot, with the statuses of the projects touched since the last one
    /// built again and the others as they were.
    fn publish(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        let projects = self
            .statuses
            .publish(touched, &self.table, &self.listing, &self.readiness);
        #[cfg(debug_assertions)]
        publish::check(&projects, &self.table, &self.listing, &self.readiness);
        let snapshot = Snapshot {
            reconciled_once: self.reconciled_once,
            docker_reachable: self.docker.is_none(),
            projects,
            misnamed: self.table.misnamed.clone(),
            passes: self.passes,
            plan: self.table.preview.clone(),
            pools: self.pools.as_ref().map(|p| p.pending().map(str::to_owned)),
            // A hash lookup per container, the label's parse only for those not probed.
            unprobed: self.listing.iter().any(|c| {
                c.state == State::Running
                    && matches!(self.readiness.get(&c.id), None | Some(Readiness::Unknown))
                    && c.project().is_some()
            }),
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
fn ours(info: &ContainerInfo, readiness: &HashMap<String, Readiness>) -> Option<plan::Container> {
    Some(plan::Container {
        id: info.id.clone(),
        project: info.project()?,
        name: info.name.clone(),
        state: info.state,
        spec_hash: info.spec_hash().map(str::to_owned),
        serving: match readiness.get(&info.id) {
            None | Some(Readiness::Unknown) => None,
            Some(Readiness::Ready) => Some(true),
            Some(Readiness::NotReady { .. }) => Some(false),
        },
    })
}
