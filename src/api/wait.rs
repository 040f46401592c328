//! Writing desired state and waiting for the loop. A write goes through the one way to edit a
//! project ([`StateDir::edit`], under the directory's writer lock), wakes the loop, and then
//! waits on the loop's published snapshot: first until the loop plans against the very spec
//! that was written, then until the project converged, then (spawn, PUT) until PostgREST
//! answers its liveness check. Never holds a lock while it waits.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ApiError, Ctx, ProjectView};
use crate::plan::State as ContainerState;
use crate::probe;
use crate::reconcile::{ContainerView, ProjectStatus, Readiness, Snapshot};
use crate::spec::{ProjectId, Spec, SpecError, SpecFile};
use crate::state_dir::{EditError, Edited, StateLock};

/// Between two readiness probes of a starting container, for its first [`PROBE_FAST_FOR`]: a
/// fixed short interval, so the answer goes out within 5 ms of PostgREST's first `/ready`
/// (the bench's floor polls the same way). It used to double from 5 ms up to 100 ms, which
/// put the probe up to 100 ms behind a container that took half a second to log in; a probe
/// is one local TCP connection, about a hundred of them for a usual start. The loop's own
/// readiness probe (10 ms doubling to 50 ms, then a pass to publish it) is later still.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
const PROBE_FAST_FOR: Duration = Duration::from_secs(3);
/// After that, a container taking its time connecting to its database is probed this often:
/// still well inside the 100 ms an answer may trail its container's first `/ready` (issue 14;
/// in a burst of 200 spawns on two cores many containers take longer than the fast window).
const PROBE_INTERVAL_SLOW: Duration = Duration::from_millis(25);
/// How long one probe may take; a live PostgREST answers in microseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Write requests in flight at most (each may wait up to the API timeout); more get 503.
pub(super) const MAX_WRITERS: usize = 64;
/// How long a request waits for the loop's first look at Docker before answering 503.
const DOCKER_GRACE: Duration = Duration::from_secs(2);

impl From<EditError> for ApiError {
    fn from(error: EditError) -> ApiError {
        match error {
            EditError::Invalid(e) => invalid_spec(e),
            EditError::Io(e) => ApiError::from_io("cannot write the state file", &e),
            EditError::Lock(e) => ApiError::from_io("locking the state directory", &e),
        }
    }
}

/// A project's current file for a caller that needs it to parse: an invalid one is a
/// conflict the caller must resolve (with `PUT`, which replaces the whole file).
pub(super) fn parsed(
    id: &ProjectId,
    current: Result<Option<SpecFile>, SpecError>,
) -> Result<Option<SpecFile>, ApiError> {
    match current {
        Ok(file) => Ok(file),
        Err(SpecError::Io(e)) => Err(ApiError::Internal(format!(
            "reading the state file of {id}: {e}"
        ))),
        Err(e) => Err(ApiError::Conflict(format!(
            "the state file of {id} is invalid ({e}); replace it with PUT /internal/postgrest/{id}"
        ))),
    }
}

pub(super) fn invalid_spec(error: SpecError) -> ApiError {
    match error {
        SpecError::Field { field, reason } => {
            ApiError::BadRequest(format!("{}: {reason}", super::error::camel_case(field)))
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

impl Ctx {
    /// A project's view, with the state of Caddy's routes when the manager keeps them.
    pub(super) fn view(&self, id: &ProjectId, status: &ProjectStatus) -> ProjectView {
        let pending = self
            .cfg
            .routes
            .as_ref()
            .map(|rx| rx.borrow().pending.clone());
        ProjectView::new(id, status)
            .with_route(pending.as_ref())
            .with_pool(self.handle.snapshot().pools.as_ref())
    }

    pub(super) async fn read_file(&self, id: &ProjectId) -> Result<Option<SpecFile>, ApiError> {
        let (state, target) = (self.cfg.state.clone(), id.clone());
        let read = tokio::task::spawn_blocking(move || state.read_file(&target))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        parsed(id, read)
    }

    /// Edits the project's file off the async threads (see [`StateDir::edit`]) and wakes the
    /// loop.
    ///
    /// [`StateDir::edit`]: crate::state_dir::StateDir::edit
    pub(super) async fn edit(
        &self,
        id: &ProjectId,
        change: impl FnOnce(Result<Option<SpecFile>, SpecError>) -> Result<SpecFile, ApiError>
            + Send
            + 'static,
    ) -> Result<Edited, ApiError> {
        let lock = self.lock_state(id).await?;
        let (state, target) = (self.cfg.state.clone(), id.clone());
        let edited = tokio::task::spawn_blocking(move || state.edit_locked(&lock, &target, change))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        // The write is complete: no reason to wait out the watcher's debounce.
        self.handle.project_written(id);
        Ok(edited)
    }

    /// Bumps a token (`reload_token`, `schema_reload_token`; the spec returned carries it) in the file of a project whose
    /// container runs, and returns the spec written; 404 when it has no running container.
    /// The loop, the only writer to Docker, turns the new token into the signal.
    pub(super) async fn bump_running(
        &self,
        id: &ProjectId,
        bump: fn(&mut SpecFile) -> u64,
    ) -> Result<Spec, ApiError> {
        let running = self
            .handle
            .snapshot()
            .projects
            .get(id)
            .and_then(|p| p.container.as_ref())
            .is_some_and(|c| c.state == ContainerState::Running);
        let target = id.clone();
        let edited = self
            .edit(id, move |current| match parsed(&target, current)? {
                Some(mut file) if running && file.enabled != Some(false) => {
                    let _token = bump(&mut file);
                    Ok(file)
                }
                _ => Err(ApiError::NotFound(format!(
                    "project {target} has no running container"
                ))),
            })
            .await?;
        Ok(edited.spec)
    }

    /// The state directory's writer lock, waited for without parking a thread on it (the
    /// loop's file work shares the blocking threads) and for at most the request's timeout:
    /// someone holding `state/.lock` by hand gets this request a 504, not a hang.
    pub(super) async fn lock_state(&self, id: &ProjectId) -> Result<StateLock, ApiError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut pause = Duration::from_millis(2);
        let mut waited = false;
        loop {
            match self.cfg.state.try_lock() {
                Ok(Some(lock)) => return Ok(lock),
                Ok(None) if !waited => {
                    waited = true;
                    info!(project = %id, "the state directory is locked by another writer; waiting");
                }
                Ok(None) => {}
                Err(e) => return Err(ApiError::from_io("locking the state directory", &e)),
            }
            if Instant::now() + pause >= deadline {
                warn!(project = %id, "the state directory stayed locked");
                return Err(ApiError::Timeout(format!(
                    "the state directory stayed locked by another writer (state/.lock) for {} \
                     s; nothing was changed, retry later",
                    self.cfg.timeout.as_secs()
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => pause = (pause * 2).min(Duration::from_millis(100)),
                () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
            }
        }
    }

    /// One of the slots for writes in flight, or 503 when all are taken.
    pub(super) fn writer(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.writers.clone().try_acquire_owned().map_err(|_| {
            ApiError::Busy(format!(
                "{MAX_WRITERS} writes are in flight; nothing was changed, retry shortly"
            ))
        })
    }

    /// Docker must be reachable for a write to be worth waiting on. Right after start-up the
    /// loop may not have looked yet, so it gets a moment; after that the answer is immediate.
    pub(super) async fn require_docker(&self) -> Result<(), ApiError> {
        let snapshot = self.handle.snapshot();
        if snapshot.docker_reachable {
            return Ok(());
        }
        if !snapshot.reconciled_once
            && self
                .handle
                .wait_for(DOCKER_GRACE.min(self.cfg.timeout), |s| s.docker_reachable)
                .await
                .is_ok()
        {
            return Ok(());
        }
        Err(ApiError::DockerUnavailable(
            "Docker is unreachable; nothing was changed, retry later".into(),
        ))
    }

    /// Waits until the loop plans against `spec` and the project converged to it; returns
    /// the container, if the spec wants one.
    pub(super) async fn wait_converged(
        &self,
        spec: &Spec,
    ) -> Result<Option<ContainerView>, ApiError> {
        self.wait_until(&spec.id, |_, status| {
            let status = status?;
            if !status.plans_for(spec) {
                return None;
            }
            // The file is saved, but the loop cannot write its config: say so now, as a
            // state write on a full disk does, instead of a 504 when the wait runs out.
            if let Some(cause) = status.out_of_space {
                return Some(Err(ApiError::ConfigOutOfSpace(cause)));
            }
            status
                .converged()
                .then(|| Ok(status.container.as_deref().cloned()))
        })
        .await
    }

    /// [`Ctx::wait_converged`], then until PostgREST serves (`/ready`: logged in to its
    /// database, schema cache loaded).
    pub(super) async fn wait_running(&self, spec: &Spec) -> Result<ContainerView, ApiError> {
        let deadline = Instant::now() + self.cfg.timeout;
        self.wait_converged(spec).await?;
        let probing = Instant::now();
        loop {
            let snapshot = self.handle.snapshot();
            let container = snapshot
                .projects
                .get(&spec.id)
                .and_then(|p| p.container.as_deref().cloned());
            if let Some(container) = container {
                let serves = match container.ip {
                    Some(ip) => probe::ready(ip, self.cfg.admin_port, PROBE_TIMEOUT)
                        .await
                        .is_ok(),
                    // No address the manager can reach (a Swarm service: its tasks live on an
                    // overlay network): the loop's readiness, a task whose `/ready` check passed.
                    None => container.ready == Readiness::Ready,
                };
                if serves {
                    self.wait_routed(&spec.id, deadline).await?;
                    return Ok(container);
                }
            }
            let interval = probe_interval(probing.elapsed());
            if Instant::now() + interval >= deadline {
                return Err(self.timed_out(&spec.id, "PostgREST did not become ready"));
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
            }
        }
    }

    /// With Caddy configured, waits until Caddy proxies the project's route.
    async fn wait_routed(&self, id: &ProjectId, deadline: Instant) -> Result<(), ApiError> {
        let Some(routes) = &self.cfg.routes else {
            return Ok(());
        };
        let mut waiting = routes.clone();
        let routed = waiting.wait_for(|r| r.serving.contains(id));
        let routed = tokio::select! {
            result = tokio::time::timeout_at(deadline, routed) => matches!(result, Ok(Ok(_))),
            () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
        };
        match routed {
            true => Ok(()),
            false => {
                let why = routes
                    .borrow()
                    .pending
                    .clone()
                    .unwrap_or_else(|| "the route is not in place yet".to_owned());
                Err(self.timed_out(id, &format!("Caddy did not route the project ({why})")))
            }
        }
    }

    /// Waits until `check` answers for a published snapshot, failing early when Docker goes
    /// away or a foreign container is found in the project's way.
    pub(super) async fn wait_until<T>(
        &self,
        id: &ProjectId,
        mut check: impl FnMut(&Snapshot, Option<&ProjectStatus>) -> Option<Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let mut outcome = None;
        let waited = {
            let wait = self.handle.wait_for(self.cfg.timeout, |snapshot| {
                let status = snapshot.projects.get(id);
                outcome = if !snapshot.docker_reachable {
                    Some(Err(ApiError::DockerUnavailable(
                        "Docker became unreachable; the desired state is saved and the manager \
                         will converge once it is back"
                            .into(),
                    )))
                } else if let Some(conflict) = status.filter(|p| p.conflict.is_some()) {
                    let message = conflict.last_error.clone().unwrap_or_default();
                    Some(Err(ApiError::Conflict(format!(
                        "{message} (the desired state is saved)"
                    ))))
                } else {
                    check(snapshot, status)
                };
                outcome.is_some()
            });
            tokio::select! {
                waited = wait => waited.is_ok(),
                () = shutting_down(self.shutdown.clone()) => return Err(ApiError::ShuttingDown),
            }
        };
        match outcome {
            Some(result) if waited => result,
            _ => Err(self.timed_out(id, "the project did not converge")),
        }
    }

    fn timed_out(&self, id: &ProjectId, what: &str) -> ApiError {
        let last_error = self
            .handle
            .snapshot()
            .projects
            .get(id)
            .and_then(|p| {
                let not_ready = p.container.as_ref().and_then(|c| match &c.ready {
                    Readiness::NotReady { reason } => Some(format!("PostgREST: {reason}")),
                    _ => None,
                });
                p.last_error.clone().or(p.file_error.clone()).or(not_ready)
            })
            .map(|e| format!(" Last error: {e}."))
            .unwrap_or_default();
        warn!(project = %id, "{what} within {:?}", self.cfg.timeout);
        ApiError::Timeout(format!(
            "{what} within {} s; the desired state is saved and the manager keeps working on it \
             (GET /internal/postgrest/{id} shows progress).{last_error}",
            self.cfg.timeout.as_secs()
        ))
    }
}

/// How long to wait before the next `/ready` probe, `probing` into the wait.
fn probe_interval(probing: Duration) -> Duration {
    match probing < PROBE_FAST_FOR {
        true => PROBE_INTERVAL,
        false => PROBE_INTERVAL_SLOW,
    }
}

/// Completes when the manager starts shutting down; never, if nobody can tell it to.
pub(super) async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A starting container is probed every 5 ms for its first seconds (no doubling that
    /// leaves the answer up to 100 ms behind PostgREST), then every 25 ms.
    #[test]
    fn a_starting_container_is_probed_at_a_short_fixed_interval() {
        for ms in [0, 5, 40, 300, 1_000, 2_999] {
            assert_eq!(
                probe_interval(Duration::from_millis(ms)),
                Duration::from_millis(5)
            );
        }
        for secs in [3, 10, 60] {
            assert_eq!(
                probe_interval(Duration::from_secs(secs)),
                Duration::from_millis(25)
            );
        }
    }
}
