//! Docker's event stream, as a hint. The daemon keeps few events and forgets them on restart,
//! so after every (re)connection the loop is woken for a full list. Health changes go to the
//! loop as they are; an event that names a container has the next pass look at that one
//! container; anything else has it list them all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::retry::Retry;
use crate::runtime::{Event, Health, Runtime};
use crate::spec::ProjectId;

/// What may have changed in Docker since the loop last looked: everything, or only the
/// containers named. Set by events, finished actions, the resync tick and outages; taken by
/// the next pass.
#[derive(Debug, Default)]
pub(super) struct DockerHints {
    /// List every container.
    pub all: bool,
    /// Look at these containers alone (by id), with the project when only its creation or
    /// start named it: an action of the loop's own may be doing that, and then looks the
    /// container up itself as it ends ([`DockerHints::looked_up`]).
    pub ids: BTreeMap<String, Option<ProjectId>>,
}

impl DockerHints {
    fn named(&mut self, id: String, created_for: Option<ProjectId>) {
        let entry = self.ids.entry(id).or_insert_with(|| created_for.clone());
        if created_for.is_none() {
            *entry = None;
        }
    }

    /// An action looked `id` up after it created or started it: a creation or a start named
    /// before is seen. Anything else named stays (it may have come after the lookup).
    pub fn looked_up(&mut self, id: &str) {
        if self.ids.get(id).is_some_and(Option::is_some) {
            self.ids.remove(id);
        }
    }

    /// Takes what a pass is to look at: whether to list everything, and the containers to
    /// ask for. A creation or a start named for a project whose action is `in_flight` stays
    /// for a later pass: it is that action's own container (a replacement's new one is seen
    /// through its switch and its end), or the action's end brings a pass that looks at it.
    /// One of a container the listing shows `running` is dropped: the action that started it
    /// looked it up since (its event came late; under a bulk start, for most containers).
    /// Anything else named (a death, a stop) is looked at.
    pub fn take(
        &mut self,
        in_flight: impl Fn(&ProjectId) -> bool,
        running: impl Fn(&str) -> bool,
    ) -> (bool, Vec<String>) {
        let all = std::mem::take(&mut self.all);
        let mut look = Vec::new();
        self.ids.retain(|id, created_for| match created_for {
            Some(project) if in_flight(project) => true,
            Some(_) if running(id) => false,
            _ => {
                look.push(id.clone());
                false
            }
        });
        (all, look)
    }
}

/// The hints, shared between the event task and the loop.
#[derive(Debug, Clone, Default)]
pub(super) struct SharedDockerHints(Arc<Mutex<DockerHints>>);

impl SharedDockerHints {
    pub fn lock(&self) -> MutexGuard<'_, DockerHints> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hints that have the first pass list.
    pub fn everything() -> SharedDockerHints {
        let hints = SharedDockerHints::default();
        hints.all();
        hints
    }

    /// Everything may have changed: the next pass lists.
    pub fn all(&self) {
        self.lock().all = true;
    }
}

pub(super) async fn watch_docker_events<R: Runtime>(
    runtime: Arc<R>,
    labels: BTreeMap<String, String>,
    wake: mpsc::Sender<()>,
    health: mpsc::Sender<(String, Health)>,
    changed: SharedDockerHints,
) {
    let look_again = || {
        changed.all();
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
                    Ok(Event::Container { id, created_for }) => {
                        changed.lock().named(id, created_for);
                        let _ = wake.try_send(());
                    }
                    Ok(Event::Changed) => look_again(),
                    Err(_) => break,
                }
            }
            // The stream dropped: the loop should notice an outage now, not at the next tick.
            look_again();
            if connected.elapsed() > Duration::from_secs(30) {
                retry.reset();
            }
        }
        let delay = retry.fail();
        tokio::time::sleep(delay).await;
    }
}
