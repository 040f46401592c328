//! The loop's memory, one record per project: the last good spec and its rendering, what the
//! planner is asked for, which config the container has loaded, backoff and errors. All of a
//! project's life is in one [`Project`], created when something is known about it and dropped
//! when nothing is. Synchronous, no I/O: unit-tested without tokio.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::apply::{ActionError, Outcome};
use super::history::Running;
use super::retry::Retry;
use super::snapshot::{ContainerView, DesiredView, EventKind, Events, ProjectStatus, Readiness};
use crate::plan::{self, Desired, Observed, Preview, Verb, Want, Wanted};
use crate::render::{self, Rendered, Template, LABEL_PROJECT};
use crate::runtime::{ContainerInfo, RuntimeError, State};
use crate::spec::ProjectId;
use crate::state_dir::{FileState, Loaded};

#[derive(Debug, Default)]
pub(super) struct Project {
    /// The last valid spec, its rendering and the view of both, kept while the file is
    /// invalid; redone only when the spec changes.
    pub good: Option<Good>,
    /// What the planner is asked for: from `good`, or `Frozen` for a broken first file.
    pub want: Option<Want>,
    /// Why the state file is rejected now.
    pub file_error: Option<String>,
    /// (container id, config digest) the container is known to have loaded.
    pub loaded: Option<(String, String)>,
    /// (container id, schema_reload_token) the container has its schema cache as of.
    pub schema: Option<(String, u64)>,
    /// A container without our labels found holding the project's name.
    pub foreign: Option<String>,
    /// Boxed, as `error` is: set only while something fails, and ten thousand projects
    /// each carried the room for them (BENCHMARKS.md, "Scale").
    pub retry: Option<Box<Retry>>,
    pub error: Option<Box<RecordedError>>,
    pub last_reload: Option<SystemTime>,
    pub in_flight: bool,
    /// The host a replacement moved the route to, until the listing shows that container
    /// under the project's name (or shows it gone).
    pub switch_to: Option<String>,
    /// The action in flight, with the rendering it carries and why it was planned.
    pub running: Option<Running>,
    /// The rendering the container loaded (in this manager's life): what `plan` compares the
    /// desired rendering with, key by key, to say why.
    pub applied: Option<Arc<Rendered>>,
    /// What the last pass planned for the project, and why.
    pub planned: Option<(Verb, String)>,
    /// The last [`EVENTS_KEPT`] events. They do not keep the record alive: a project gone for
    /// good takes its events with it.
    pub events: Events,
}

#[derive(Debug)]
pub(super) struct Good {
    /// Rendered only when the spec wants a container: a disabled project's config and
    /// container spec are never used, and at ten thousand mostly disabled files they were
    /// most of the manager's memory (BENCHMARKS.md, "Scale").
    pub rendered: Option<Arc<Rendered>>,
    pub view: Arc<DesiredView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordedError {
    pub message: String,
    /// The foreign container, when the error is a name conflict.
    pub conflict: Option<String>,
    /// The disk under the config directory is full (or over quota): the cause, in words.
    pub out_of_space: Option<&'static str>,
}

impl Wanted for Project {
    fn want(&self) -> Option<&Want> {
        self.want.as_ref()
    }
}

impl Project {
    /// Nothing left worth remembering.
    fn is_empty(&self) -> bool {
        self.good.is_none()
            && self.want.is_none()
            && self.file_error.is_none()
            && self.loaded.is_none()
            && self.schema.is_none()
            && self.error.is_none()
            && self.retry.is_none()
            && !self.in_flight
    }

    /// Held back by its backoff at `now`.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.retry.as_ref().is_some_and(|r| r.waiting(now))
    }
}

#[derive(Debug, Default)]
pub(super) struct Table {
    pub projects: BTreeMap<ProjectId, Project>,
    /// `*.toml` files whose name is not a valid project id.
    pub misnamed: Vec<String>,
    /// What the last pass planned, per project, and why.
    pub preview: Arc<Vec<Preview>>,
    /// What the last idle preview was made from, and whether a want changed since: an idle
    /// pass over the same world keeps its words (see `Table::explain`).
    pub explained: Option<Observed>,
    pub wants_changed: bool,
    /// The projects with a backoff: what [`Table::next_retry`] looks at, which the loop asks
    /// before every wait (a walk of every record there was 3 % of a bulk start's CPU at
    /// 10,000 files).
    retrying: BTreeSet<ProjectId>,
}

impl Table {
    /// Seeds the records of which config each running container has loaded (kept on disk
    /// across restarts of the manager).
    pub fn with_loaded(loaded: BTreeMap<ProjectId, (String, String)>) -> Table {
        let mut table = Table::default();
        for (id, record) in loaded {
            table.projects.entry(id).or_default().loaded = Some(record);
        }
        table
    }

    /// Takes in a fresh read of the whole state directory: [`Table::absorb_file`] for every
    /// project with a file or a record.
    pub fn absorb(&mut self, loaded: Loaded, template: &Template) {
        self.wants_changed = true;
        let Loaded {
            specs,
            invalid,
            misnamed,
            unchanged: _,
        } = loaded;
        let gone: Vec<ProjectId> = self
            .projects
            .keys()
            .filter(|id| !specs.contains_key(*id) && !invalid.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.absorb_file(id, None, template);
        }
        for (id, error) in invalid {
            self.absorb_file(id, Some(Err(error)), template);
        }
        for (id, spec) in specs {
            self.absorb_file(id, Some(Ok(spec)), template);
        }
        self.set_misnamed(&misnamed);
    }

    /// Takes in what one project's state file holds now: a valid spec replaces the last good
    /// one (rendered once, when new or changed), an invalid file keeps it, a removed file
    /// drops it. Logs a file error when it appears or changes, not on every pass. Says
    /// whether the project's PgBouncer pool entry may have changed.
    pub fn absorb_file(&mut self, id: ProjectId, file: FileState, template: &Template) -> bool {
        self.wants_changed = true;
        if file.is_none() && !self.projects.contains_key(&id) {
            return false;
        }
        let project = self.projects.entry(id.clone()).or_default();
        let pool = |p: &Project| {
            p.good.as_ref().map(|g| {
                let spec = &g.view.spec;
                (spec.db_name.clone(), spec.pool_size, spec.reserve_pool)
            })
        };
        let pool_before = pool(project);
        let error = match &file {
            Some(Err(error)) => Some(error.to_string()),
            _ => None,
        };
        match (&project.file_error, &error) {
            (before, Some(now)) if before.as_ref() != Some(now) => {
                let kept = if project.good.is_some() {
                    "the last good spec stays in force"
                } else {
                    "no container until it is fixed"
                };
                error!(project = %id, error = %now, "invalid state file; {kept}");
                project.event(&id, EventKind::InvalidFile, format!("{now}; {kept}"));
            }
            (Some(_), None) if matches!(file, Some(Ok(_))) => {
                info!(project = %id, "state file valid again");
            }
            _ => {}
        }
        project.file_error = error;
        match file {
            None => {
                project.good = None;
                project.want = None;
            }
            Some(Err(_)) => {
                if project.good.is_none() {
                    project.want = Some(Want::Frozen);
                }
            }
            Some(Ok(spec)) => {
                let current = project
                    .good
                    .as_ref()
                    .is_some_and(|g| Arc::ptr_eq(&g.view.spec, &spec) || *g.view.spec == *spec);
                if !current {
                    let rendered = spec
                        .enabled
                        .then(|| Arc::new(render::render(&spec, template)));
                    // The planners look at the hash and digest of an enabled spec only.
                    let (spec_hash, config_digest) = rendered
                        .as_ref()
                        .map(|r| (r.spec_hash.clone(), r.config.digest.clone()))
                        .unwrap_or_default();
                    let planned = Desired {
                        enabled: spec.enabled,
                        spec_hash,
                        config_digest,
                        schema_token: spec.schema_reload_token,
                    };
                    project.want = Some(Want::Spec(planned.clone()));
                    project.good = Some(Good {
                        rendered,
                        view: Arc::new(DesiredView { spec, planned }),
                    });
                }
            }
        }
        let pool_changed = pool(project) != pool_before;
        if project.is_empty() {
            self.projects.remove(&id);
        }
        pool_changed
    }

    /// `*.toml` files whose name is not a valid project id, as the last load found them.
    pub fn set_misnamed(&mut self, misnamed: &[std::path::PathBuf]) {
        let misnamed: Vec<String> = misnamed.iter().map(|p| p.display().to_string()).collect();
        if misnamed != self.misnamed && !misnamed.is_empty() {
            warn!(files = ?misnamed, "ignoring state files whose name is not a valid project id");
        }
        self.misnamed = misnamed;
    }

    /// Forgets backoff, errors and conflicts of projects that are neither wanted nor running,
    /// so a deleted project does not linger in the status.
    /// Only projects in `scope`, when given (`containers` are theirs). The projects whose
    /// status this changes.
    pub fn forget_unknown(
        &mut self,
        containers: &[plan::Container],
        scope: Option<&BTreeSet<ProjectId>>,
    ) -> Vec<ProjectId> {
        let running: BTreeSet<&ProjectId> = containers.iter().map(|c| &c.project).collect();
        let mut forgot = Vec::new();
        let mut forget = |id: &ProjectId, project: &mut Project| {
            let mut changed = false;
            if project.want.is_none() && !running.contains(id) {
                changed = project.error.is_some() || project.last_reload.is_some();
                project.retry = None;
                project.error = None;
                project.last_reload = None;
                project.foreign = None;
            }
            let keep = !project.is_empty();
            if changed || !keep {
                forgot.push(id.clone());
            }
            keep
        };
        match scope {
            None => self.projects.retain(|id, project| forget(id, project)),
            Some(scope) => {
                for id in scope {
                    if let Some(project) = self.projects.get_mut(id) {
                        if !forget(id, project) {
                            self.projects.remove(id);
                        }
                    }
                }
            }
        }
        let projects = &self.projects;
        self.retrying
            .retain(|id| projects.get(id).is_some_and(|p| p.retry.is_some()));
        forgot
    }

    /// The records of the projects in `scope` that have one, by id: what `plan` and
    /// `preview` take for a pass scoped to them.
    pub fn among<'a>(&'a self, scope: &'a BTreeSet<ProjectId>) -> BTreeMap<ProjectId, &'a Project> {
        self.records(Some(scope))
            .map(|(id, project)| (id.clone(), project))
            .collect()
    }

    /// Every project's record, or those of `scope` alone.
    fn records<'a>(
        &'a self,
        scope: Option<&'a BTreeSet<ProjectId>>,
    ) -> Box<dyn Iterator<Item = (&'a ProjectId, &'a Project)> + 'a> {
        match scope {
            None => Box::new(self.projects.iter()),
            Some(scope) => Box::new(
                scope
                    .iter()
                    .filter_map(|id| self.projects.get_key_value(id)),
            ),
        }
    }

    /// After a listing: a switched route follows the container again once the replacement
    /// holds the project's name, or once the container it was switched to is gone. The
    /// projects whose route follows their container again.
    pub fn switched(&mut self, listing: &[ContainerInfo]) -> Vec<ProjectId> {
        let mut back = Vec::new();
        for (id, project) in &mut self.projects {
            let Some(host) = &project.switch_to else {
                continue;
            };
            let mut ours = listing.iter().filter(|c| c.project().as_ref() == Some(id));
            let done = match ours.find(|c| c.upstream() == host) {
                Some(c) => c.name == id.container_name(),
                None => true,
            };
            if done {
                project.switch_to = None;
                back.push(id.clone());
            }
        }
        back
    }

    /// Conflicts are re-checked now and then: whoever holds the name may be gone. Whether
    /// there was one to forget.
    pub fn forget_foreign(&mut self) -> bool {
        let mut forgot = false;
        for project in self.projects.values_mut() {
            forgot |= project.foreign.take().is_some();
        }
        forgot
    }

    /// Seeds the records of schema reloads (kept on disk across restarts of the manager).
    pub fn seed_schema(&mut self, seen: BTreeMap<ProjectId, (String, u64)>) {
        for (id, record) in seen {
            self.projects.entry(id).or_default().schema = Some(record);
        }
    }

    pub fn schema_seen(
        &self,
        scope: Option<&BTreeSet<ProjectId>>,
    ) -> BTreeMap<ProjectId, (String, u64)> {
        self.records(scope)
            .filter_map(|(id, p)| Some((id.clone(), p.schema.clone()?)))
            .collect()
    }

    pub fn loaded(
        &self,
        scope: Option<&BTreeSet<ProjectId>>,
    ) -> BTreeMap<ProjectId, (String, String)> {
        self.records(scope)
            .filter_map(|(id, p)| Some((id.clone(), p.loaded.clone()?)))
            .collect()
    }

    pub fn foreign(&self, scope: Option<&BTreeSet<ProjectId>>) -> BTreeMap<ProjectId, String> {
        self.records(scope)
            .filter(|(_, p)| p.want.is_some())
            .filter_map(|(id, p)| Some((id.clone(), p.foreign.clone()?)))
            .collect()
    }

    /// The earliest moment a held-back project may be tried again.
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.retrying
            .iter()
            .filter_map(|id| self.projects.get(id)?.retry.as_ref().map(|r| r.not_before))
            .filter(|t| *t > now)
            .min()
    }

    /// Books a finished action. Returns the Docker error when Docker itself was unreachable
    /// (the loop's concern, not the project's).
    pub fn finish(
        &mut self,
        id: &ProjectId,
        result: Result<Outcome, ActionError>,
    ) -> Option<RuntimeError> {
        let project = self.projects.entry(id.clone()).or_default();
        project.in_flight = false;
        let running = project.running.take();
        match result {
            Ok(outcome) => {
                project.retry = None;
                self.retrying.remove(id);
                if project.error.take().is_some() {
                    info!(project = %id, "recovered");
                }
                project.foreign = None;
                if let Some(running) = running {
                    let had_loaded = project.loaded.is_some();
                    match &outcome {
                        Outcome::Loaded { container, .. } => {
                            // A container started now loaded its schema cache as it starts.
                            let started = matches!(
                                running.verb,
                                Verb::Create | Verb::Recreate | Verb::Replace | Verb::Start
                            );
                            if let (true, Some(rendered)) = (started, &running.rendered) {
                                project.schema = Some((container.clone(), rendered.schema_token));
                            }
                            project.applied = running.rendered.clone();
                        }
                        Outcome::Removed { .. } => project.applied = None,
                        Outcome::SchemaReloaded { .. } => {}
                    }
                    project.succeeded(id, running, had_loaded);
                }
                match outcome {
                    Outcome::Loaded {
                        container,
                        digest,
                        reloaded,
                    } => {
                        if reloaded {
                            project.last_reload = Some(SystemTime::now());
                        }
                        project.loaded = Some((container, digest));
                    }
                    Outcome::Removed { .. } => {
                        project.loaded = None;
                        project.schema = None;
                    }
                    Outcome::SchemaReloaded { container, token } => {
                        project.schema = Some((container, token));
                    }
                }
            }
            Err(ActionError::Runtime(e @ RuntimeError::Unavailable(_))) => return Some(e),
            Err(error) => {
                if let ActionError::Foreign { container, .. } = &error {
                    project.foreign = Some(container.clone());
                }
                project
                    .retry
                    .get_or_insert_with(|| Box::new(Retry::project()))
                    .fail();
                self.retrying.insert(id.clone());
                self.record_error(id, &error);
            }
        }
        // This project's record alone: the others did not change (a full pass sweeps them).
        if self.projects.get(id).is_some_and(Project::is_empty) {
            self.projects.remove(id);
        }
        None
    }

    /// Keeps the error for the status; logs it only when it changes, not on every retry.
    pub fn record_error(&mut self, id: &ProjectId, error: &ActionError) {
        let recorded = RecordedError {
            message: error.to_string(),
            conflict: match error {
                ActionError::Foreign { container, .. } => Some(container.clone()),
                _ => None,
            },
            out_of_space: match error {
                ActionError::Config(e) => match e.kind() {
                    std::io::ErrorKind::StorageFull => Some("no space left on device"),
                    std::io::ErrorKind::QuotaExceeded => Some("disk quota exceeded"),
                    _ => None,
                },
                _ => None,
            },
        };
        let project = self.projects.entry(id.clone()).or_default();
        if project.error.as_deref() != Some(&recorded) {
            match error {
                ActionError::Foreign { .. } => {
                    error!(project = %id, error = %recorded.message, "conflict");
                    project.event(id, EventKind::Conflict, recorded.message.clone());
                }
                _ => {
                    warn!(project = %id, error = %recorded.message, "action failed; retrying with backoff");
                    project.event(id, EventKind::Failed, recorded.message.clone());
                }
            }
            project.error = Some(Box::new(recorded));
        }
    }

    /// The published view: every project with a record or a container of ours.
    pub fn snapshot(
        &self,
        listing: &[ContainerInfo],
        readiness: &HashMap<String, Readiness>,
    ) -> BTreeMap<ProjectId, ProjectStatus> {
        // Each project's containers, in the listing's order: which one is shown may depend on
        // it.
        let mut theirs: BTreeMap<ProjectId, Vec<&ContainerInfo>> = BTreeMap::new();
        for container in listing {
            if let Some(id) = container.project() {
                theirs.entry(id).or_default().push(container);
            }
        }
        // In the table's order, then the containers without a record: two sorted runs, which
        // `BTreeMap::from_iter` merges instead of searching the map per project.
        let mut statuses: Vec<(ProjectId, ProjectStatus)> = Vec::with_capacity(self.projects.len());
        for (id, project) in &self.projects {
            let containers = theirs.remove(id).unwrap_or_default();
            if let Some(status) = status(id, Some(project), &containers, readiness) {
                statuses.push((id.clone(), status));
            }
        }
        for (id, containers) in theirs {
            if let Some(status) = status(&id, None, &containers, readiness) {
                statuses.push((id, status));
            }
        }
        BTreeMap::from_iter(statuses)
    }

    /// Brings the statuses of `ids` in `statuses` up to date, and no other: the listing is
    /// searched for their containers by a label compare, the table by id.
    pub fn patch(
        &self,
        statuses: &mut BTreeMap<ProjectId, ProjectStatus>,
        ids: &BTreeSet<ProjectId>,
        listing: &[ContainerInfo],
        readiness: &HashMap<String, Readiness>,
    ) {
        let wanted: BTreeSet<&str> = ids.iter().map(ProjectId::as_str).collect();
        let mut theirs: BTreeMap<&str, Vec<&ContainerInfo>> = BTreeMap::new();
        for container in listing {
            if let Some(id) = container.labels.get(LABEL_PROJECT) {
                if let Some(id) = wanted.get(id.as_str()) {
                    theirs.entry(id).or_default().push(container);
                }
            }
        }
        for id in ids {
            let containers = theirs.get(id.as_str()).map_or(&[][..], Vec::as_slice);
            match status(id, self.projects.get(id), containers, readiness) {
                Some(status) => {
                    statuses.insert(id.clone(), status);
                }
                None => {
                    statuses.remove(id);
                }
            }
        }
    }
}

/// One project's published status, from its record and its containers (in the listing's
/// order); `None` when it has neither a record worth showing nor a container.
fn status(
    id: &ProjectId,
    project: Option<&Project>,
    containers: &[&ContainerInfo],
    readiness: &HashMap<String, Readiness>,
) -> Option<ProjectStatus> {
    let shown = shown(id, project, containers, readiness);
    let record = project.filter(|p| p.want.is_some() || p.error.is_some());
    if shown.is_none() && record.is_none() {
        return None;
    }
    let mut status = record.map_or_else(ProjectStatus::default, |project| ProjectStatus {
        desired: project.good.as_ref().map(|g| g.view.clone()),
        file_error: project.file_error.clone(),
        container: None,
        last_error: project.error.as_ref().map(|e| e.message.clone()),
        out_of_space: project.error.as_ref().and_then(|e| e.out_of_space),
        conflict: project.error.as_ref().and_then(|e| e.conflict.clone()),
        last_reload: project.last_reload,
        loaded_digest: None,
        schema_token_seen: None,
        events: project.events.clone(),
        upstream: project.switch_to.clone(),
    });
    let Some(container) = shown else {
        return Some(status);
    };
    if status.upstream.is_none() {
        status.upstream = Some(container.upstream().to_owned());
    }
    status.container = Some(Box::new(ContainerView {
        id: container.id.clone(),
        name: container.name.clone(),
        state: container.state,
        health: container.health,
        ip: container.ip,
        spec_hash: container.spec_hash().map(str::to_owned),
        ready: readiness.get(&container.id).cloned().unwrap_or_default(),
        exit_code: container.exit_code,
        tasks: container.tasks.clone(),
    }));
    if let Some(project) = project {
        status.last_reload = project.last_reload;
        status.events = project.events.clone();
        if let Some((loaded_by, digest)) = &project.loaded {
            if loaded_by == &container.id {
                status.loaded_digest = Some(digest.clone());
            }
        }
        if let Some((seen_by, token)) = &project.schema {
            if seen_by == &container.id {
                status.schema_token_seen = Some(*token);
            }
        }
    }
    Some(status)
}

/// The project's container, of `containers` (its own, in the listing's order): the one its
/// route was switched to while a replacement runs (the old one stops serving while it drains,
/// and must not turn the route into a 503), else `postgrest-<id>`, else a replacement whose
/// old container is gone (an interrupted replacement, before its rename).
fn shown<'a>(
    id: &ProjectId,
    project: Option<&Project>,
    containers: &[&'a ContainerInfo],
    readiness: &HashMap<String, Readiness>,
) -> Option<&'a ContainerInfo> {
    let switch_to = project.and_then(|p| p.switch_to.as_deref());
    let rank = |c: &ContainerInfo| {
        if switch_to.is_some_and(|host| host == c.upstream()) {
            0
        } else if c.name == id.container_name() {
            1
        } else if c.name == crate::plan::next_container_name(id) {
            2
        } else {
            3
        }
    };
    let mut shown: Option<&ContainerInfo> = None;
    for &container in containers {
        if rank(container) < shown.map_or(3, rank) {
            shown = Some(container);
        }
    }
    // A replacement that matches the desired state and serves takes over the route from a
    // stale `postgrest-<id>`, before its switch: a manager restarted after the switch must not
    // send the public back to an old container that Docker is still stopping. One not probed
    // yet takes over from an old one that no longer runs (a manager killed after the old one
    // got SIGTERM): that one cannot serve, and its route would be a 503.
    let Some(Want::Spec(desired)) = project.and_then(|p| p.want.as_ref()) else {
        return shown;
    };
    let wanted = desired.spec_hash.as_str();
    for &next in containers {
        let takes_over = next.name == crate::plan::next_container_name(id)
            && next.spec_hash() == Some(wanted)
            && shown.is_some_and(|c| c.id != next.id && c.spec_hash() != Some(wanted))
            && match readiness.get(&next.id) {
                Some(Readiness::Ready) => true,
                None | Some(Readiness::Unknown) => {
                    next.state == State::Running && shown.is_some_and(|c| c.state != State::Running)
                }
                Some(Readiness::NotReady { .. }) => false,
            };
        if takes_over {
            shown = Some(next);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(id: &str) -> ProjectId {
        ProjectId::parse(id).unwrap()
    }

    fn failed() -> Result<Outcome, ActionError> {
        Err(ActionError::ReloadRefused("no".to_owned()))
    }

    /// The loop's next wake-up for a backoff follows the projects that fail, as they fail,
    /// recover or are forgotten, without a walk of every record.
    #[tokio::test]
    async fn the_next_retry_follows_the_failing_projects() {
        let mut table = Table::default();
        let now = Instant::now();
        assert_eq!(table.next_retry(now), None);
        table.finish(&pid("p1"), failed());
        table.finish(&pid("p2"), failed());
        table.finish(&pid("p2"), failed());
        let not_before =
            |table: &Table, id: &str| table.projects[&pid(id)].retry.as_ref().unwrap().not_before;
        // Each delay carries backoff's random jitter: either may be the sooner.
        let (first, second) = (not_before(&table, "p1"), not_before(&table, "p2"));
        assert_eq!(
            table.next_retry(now),
            Some(first.min(second)),
            "the sooner of the two"
        );

        table.finish(&pid("p1"), Ok(Outcome::Removed { container: None }));
        assert_eq!(table.next_retry(now), Some(second), "p1 recovered");

        table.forget_unknown(&[], None);
        assert_eq!(
            table.next_retry(now),
            None,
            "p2 is neither wanted nor running"
        );
        assert!(table.projects.is_empty(), "{:?}", table.projects.keys());
    }
}
