//! A project's history and the loop's plan in words: each dispatched action remembers why it
//! was planned, and when it ends well or badly the project's event ring gets one event (and
//! the log one INFO line). Synchronous, no I/O, like the rest of the table.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::info;

use super::apply::Job;
use super::snapshot::{Event, EventKind, EVENTS_KEPT};
use super::table::{Project, Table};
use crate::plan::{self, Observed, Plan, Preview, Verb};
use crate::render::Rendered;
use crate::spec::ProjectId;

/// The action in flight for a project.
#[derive(Debug)]
pub(super) struct Running {
    pub verb: Verb,
    /// The planned reason, without its verb (`jwt_secret changed`).
    pub reason: String,
    pub rendered: Option<Arc<Rendered>>,
}

impl Project {
    /// `job` is dispatched: remember what it is and why, for the event when it ends.
    pub fn begin(&mut self, job: &Job) {
        self.in_flight = true;
        let (verb, rendered) = match job {
            Job::Create { rendered, .. } => (Verb::Create, Some(rendered)),
            Job::Recreate { rendered, .. } => (Verb::Recreate, Some(rendered)),
            Job::Replace { rendered, .. } => (Verb::Replace, Some(rendered)),
            Job::Promote { rendered, .. } => (Verb::Promote, Some(rendered)),
            Job::Start { rendered, .. } => (Verb::Start, Some(rendered)),
            Job::Reload { rendered, .. } => (Verb::Reload, Some(rendered)),
            Job::ReloadSchema { rendered, .. } => (Verb::ReloadSchema, Some(rendered)),
            Job::Remove { .. } => (Verb::Remove, None),
            Job::RemoveConfig { .. } => (Verb::RemoveConfig, None),
            Job::Update { rendered, .. } => (Verb::Update, Some(rendered)),
        };
        let reason = match &self.planned {
            Some((planned, reason)) if *planned == verb => reason
                .split_once(": ")
                .map_or(reason.as_str(), |(_, why)| why)
                .to_owned(),
            _ => verb.as_str().to_owned(),
        };
        self.running = Some(Running {
            verb,
            reason,
            rendered: rendered.cloned(),
        });
    }

    /// Adds an event to the ring (dropping the oldest past [`EVENTS_KEPT`]) and logs it.
    pub(super) fn event(&mut self, id: &ProjectId, kind: EventKind, reason: String) {
        info!(project = %id, event = %kind, reason = %reason, "event");
        let events = Arc::make_mut(&mut self.events);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event {
            at: SystemTime::now(),
            kind,
            reason,
        });
    }

    /// The event for an action that ended well. `had_loaded`: the project had a container
    /// with a config loaded before, so a `Create` brings back one that went missing.
    pub(super) fn succeeded(&mut self, id: &ProjectId, running: Running, had_loaded: bool) {
        let Running { verb, reason, .. } = running;
        let (kind, reason) = match verb {
            Verb::Create if had_loaded => (
                EventKind::Healed,
                "the container was missing; created again".to_owned(),
            ),
            Verb::Create => (
                EventKind::Created,
                "container created and started".to_owned(),
            ),
            Verb::Recreate => (EventKind::Recreated, reason),
            Verb::Replace => (
                EventKind::Replaced,
                format!("{reason}; the new container serves, the old one is stopped"),
            ),
            Verb::Promote => (EventKind::Replaced, reason),
            Verb::Start => (EventKind::Healed, format!("{reason}; started again")),
            Verb::Reload => (EventKind::Reloaded, reason),
            Verb::Update => (
                EventKind::Reloaded,
                format!("{reason}; the new task serves"),
            ),
            Verb::ReloadSchema => (
                EventKind::Reloaded,
                "schema cache (SIGUSR1): schema_reload_token bumped".to_owned(),
            ),
            Verb::RemoveConfig => (EventKind::Removed, "the rendered config".to_owned()),
            _ => (EventKind::Removed, reason),
        };
        self.event(id, kind, reason);
    }
}

impl Table {
    /// The keys between the rendering the project's container loaded (in this manager's
    /// life) and the one it should have: what a reload or a recreation is for.
    fn changes(&self, id: &ProjectId) -> Option<Vec<plan::KeyChange>> {
        let project = self.projects.get(id)?;
        let applied = project.applied.as_ref()?;
        let rendered = project.good.as_ref()?.rendered.as_ref()?;
        Some(plan::changed_keys(
            &applied.config.text,
            &rendered.config.text,
            &rendered.keys,
        ))
    }

    /// No want changed since the last pass, whose plan was empty, and `observed` is the
    /// world it planned against: the plan is empty again and its words stand.
    pub fn unchanged_since_idle(&self, observed: &Observed) -> bool {
        !self.wants_changed && self.explained.as_ref() == Some(observed)
    }

    /// Puts the pass's plan into words, per project (published, and the reason of each
    /// action's event). The keys that changed come from the rendering the container loaded
    /// in this manager's life; after a restart of the manager the reason says what is known.
    pub fn explain(&mut self, plan: &Plan, observed: &Observed) {
        // The usual idle pass: nothing to do, the same wants and the same world as the last
        // time, so the same words. Comparing costs far less than writing them again.
        let idle = plan.actions.is_empty() && plan.conflicts.is_empty();
        if idle && self.unchanged_since_idle(observed) {
            return;
        }
        let preview = plan::preview(&self.projects, observed, plan, |id| self.changes(id));
        for project in self.projects.values_mut() {
            project.planned = None;
        }
        for line in preview.iter().filter(|l| l.verb.is_work()) {
            if let Some(project) = self.projects.get_mut(&line.project) {
                project.planned = Some((line.verb, line.reason.clone()));
            }
        }
        self.preview = Arc::new(preview);
        self.wants_changed = false;
        self.explained = idle.then(|| observed.clone());
    }

    /// [`Table::explain`] for the projects in `scope` alone, whose `plan` and `observed`
    /// these are: their lines of the preview are replaced, the others' stand. The next full
    /// pass explains everything again.
    pub fn explain_some(&mut self, scope: &BTreeSet<ProjectId>, plan: &Plan, observed: &Observed) {
        // A pass that looked at nothing (a resync tick's, usually) changes no words, and
        // leaves the last idle plan standing for the next full pass to compare with.
        if scope.is_empty() {
            return;
        }
        let lines = plan::preview(&self.among(scope), observed, plan, |id| self.changes(id));
        for id in scope {
            if let Some(project) = self.projects.get_mut(id) {
                project.planned = None;
            }
        }
        for line in lines.iter().filter(|l| l.verb.is_work()) {
            if let Some(project) = self.projects.get_mut(&line.project) {
                project.planned = Some((line.verb, line.reason.clone()));
            }
        }
        let mut preview: Vec<Preview> = self
            .preview
            .iter()
            .filter(|line| !scope.contains(&line.project))
            .cloned()
            .chain(lines)
            .collect();
        preview.sort_by(|a, b| a.project.cmp(&b.project));
        self.preview = Arc::new(preview);
        self.wants_changed = true;
        self.explained = None;
    }
}
