//! Blue/green replacement: the new container starts beside the serving one under
//! `postgrest-<id>-next`, the route moves to it once it serves, the old one is stopped
//! gracefully (PostgREST drains on SIGTERM) and removed, and the new one takes the name.
//!
//! Each container has its own network alias (`postgrest-<id>-<n>`, in its
//! [`LABEL_UPSTREAM`] label), and the route dials that alias, not the name: the name moves
//! from the old container to the new one, the alias never does, so the route never points at
//! a name that resolves to nothing or to the container being stopped. Every step is safe to
//! interrupt: the planner finishes or undoes a replacement it finds half done
//! (`plan::two_containers`).
//!
//! A new container that cannot serve is given up as soon as that is certain, not at the
//! timeout: when it exits or Docker is restarting it (an image that does not start, a
//! PostgREST that exits on a wrong password), or when its log says its database refused the
//! login (through PgBouncer PostgREST retries a refused login instead of exiting).
//!
//! Test-only crash points: with `PGM_TEST_CRASH_AT=<step>` in its environment the manager
//! SIGKILLs itself right after that step of a replacement (see [`crash_point`]); without it
//! (always, outside `tests/bluegreen.rs`) the points do nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::apply::{loaded, remove_container, schema_loaded, write_config, ActionError, Outcome};
use super::ready::reason_from_logs;
use super::LoopConfig;
use crate::plan::next_container_name;
use crate::probe;
use crate::render::{Rendered, LABEL_UPSTREAM};
use crate::runtime::{ContainerInfo, Runtime, RuntimeError, State};
use crate::spec::ProjectId;

/// What Caddy holds: per project, the host its route dials. Published by the route task.
pub type Routed = BTreeMap<ProjectId, String>;

/// Probing the new container: from 10 ms, doubling up to 200 ms.
const FIRST_PROBE: Duration = Duration::from_millis(10);
const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const LOG_LINES: usize = 30;
/// While the new container does not serve, its log is read at most this often for a refused
/// login.
const LOGS_EVERY: Duration = Duration::from_millis(500);
/// What a PostgREST (or PgBouncer, or PostgreSQL, in PostgREST's log) says when its database
/// refused the login: no retry makes such a container serve until the password is fixed.
const LOGIN_REFUSED: [&str; 3] = [
    "password authentication failed",
    "SASL authentication failed",
    "no password supplied",
];
/// Between Caddy taking the new route and SIGTERM to the old container: requests Caddy sent
/// to the old one just before the switch are still being answered. PostgREST v16 drains on
/// SIGTERM; older versions (and the test double) stop at once and would cut them off (a 502).
const SETTLE: Duration = Duration::from_secs(1);
/// The environment variable behind [`crash_point`].
const CRASH_AT: &str = "PGM_TEST_CRASH_AT";

/// A replacement's word to the loop on its project's route.
#[derive(Debug)]
pub(super) enum Route {
    /// To the new container, which the replacement has just seen serve: the loop takes that
    /// `/ready` as its own probe's, which may not have caught up yet.
    To { upstream: String, serving: String },
    /// Back to whatever the project's `postgrest-<id>` container is: the new container
    /// `abandoned` is removed next, and the loop looks past it from now on.
    Back { abandoned: String },
}

/// What a replacement needs from the loop to move a project's route.
#[derive(Clone)]
pub(super) struct Switch {
    /// Asks the loop to move the project's route.
    pub to_loop: mpsc::UnboundedSender<(ProjectId, Route)>,
    /// What Caddy holds; `None` when the manager runs without Caddy (no route to move).
    pub routed: Option<watch::Receiver<Routed>>,
}

impl Switch {
    /// Moves the route to `upstream` and waits (up to `timeout`) until Caddy holds it. Caddy
    /// takes an update within milliseconds; one that is down is retried by the route task
    /// with backoff, and past the timeout the replacement gives up and is retried later.
    async fn route(
        &self,
        project: &ProjectId,
        serving: &ContainerInfo,
        timeout: Duration,
    ) -> Result<(), ActionError> {
        let upstream = serving.upstream();
        let to = Route::To {
            upstream: upstream.to_owned(),
            serving: serving.id.clone(),
        };
        // The loop is gone only while shutting down; then nothing is switched.
        self.to_loop
            .send((project.clone(), to))
            .map_err(|_| ActionError::Switch("the manager is shutting down".into()))?;
        let Some(mut routed) = self.routed.clone() else {
            return Ok(());
        };
        let held = async {
            routed
                .wait_for(|r| r.get(project).is_some_and(|h| h == upstream))
                .await
                .map(drop)
        };
        match tokio::time::timeout(timeout, held).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ActionError::Switch("the route task stopped".into())),
            Err(_) => Err(ActionError::Switch(format!(
                "Caddy did not take the new route within {} s",
                timeout.as_secs()
            ))),
        }
    }

    fn back(&self, project: &ProjectId, abandoned: &str) {
        let abandoned = abandoned.to_owned();
        let _ = self
            .to_loop
            .send((project.clone(), Route::Back { abandoned }));
    }
}

/// Replaces `old` by a container with `rendered`; `next` is one already started by an
/// earlier, interrupted replacement. Until the switch, any failure removes the new container
/// and leaves the old one serving; the error says why (PostgREST's own words when it never
/// served) and the loop retries with backoff.
pub(super) async fn replace<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    switch: &Switch,
    project: &ProjectId,
    old: &str,
    next: Option<String>,
    rendered: &Arc<Rendered>,
) -> Result<Outcome, ActionError> {
    // The old container read its config at start and keeps it until signalled: rewriting the
    // file now changes nothing for it.
    write_config(cfg, project, rendered).await?;
    let next = match next {
        Some(id) => id,
        None => start_next(runtime, project, rendered).await?,
    };
    let switched = async {
        let info = wait_serving(runtime, cfg, project, rendered).await?;
        crash_point("serving");
        switch.route(project, &info, cfg.replace_timeout).await
    };
    if let Err(e) = switched.await {
        switch.back(project, &next);
        warn!(project = %project, error = %e, "the replacement failed; the old container keeps serving");
        if let Err(removal) = remove_container(runtime, &next).await {
            warn!(project = %project, error = %removal, "cannot remove the failed replacement; the next pass will");
        }
        return Err(e);
    }
    crash_point("switched");
    info!(project = %project, "the route is on the new container; stopping the old one");
    tokio::time::sleep(SETTLE).await;
    remove_container(runtime, old).await?;
    crash_point("removed");
    runtime.rename(&next, &project.container_name()).await?;
    crash_point("renamed");
    schema_loaded(cfg, project, &next, rendered.schema_token).await;
    loaded(cfg, project, next, rendered, false).await
}

/// The old container is gone (an interrupted replacement): the new one takes the name.
pub(super) async fn promote<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    project: &ProjectId,
    next: String,
    rendered: &Arc<Rendered>,
) -> Result<Outcome, ActionError> {
    write_config(cfg, project, rendered).await?;
    runtime.rename(&next, &project.container_name()).await?;
    loaded(cfg, project, next, rendered, false).await
}

/// Creates and starts `postgrest-<id>-next` with its own alias.
async fn start_next<R: Runtime>(
    runtime: &R,
    project: &ProjectId,
    rendered: &Rendered,
) -> Result<String, ActionError> {
    let mut spec = rendered.container.clone();
    spec.name = next_container_name(project);
    let alias = upstream_alias(project);
    spec.aliases = vec![alias.clone()];
    spec.labels.insert(LABEL_UPSTREAM.to_owned(), alias);
    let id = match runtime.create(&spec).await {
        Ok(id) => id,
        Err(RuntimeError::NotFound) => {
            return Err(RuntimeError::Other(format!("image {} not found", spec.image)).into())
        }
        Err(e) => return Err(e.into()),
    };
    crash_point("created");
    if let Err(e) = runtime.start(&id).await {
        let _ = remove_container(runtime, &id).await;
        return Err(e.into());
    }
    crash_point("started");
    Ok(id)
}

/// Test-only: SIGKILLs this manager right after `step` of a replacement when
/// `PGM_TEST_CRASH_AT=<step>` is set (`created`, `started`, `serving`, `switched`, `removed`,
/// `renamed`), so `tests/bluegreen.rs` can kill it at points too short to catch from outside.
/// Inert without the variable; read once.
fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_AT).ok());
    if at.as_deref() == Some(step) {
        warn!(step, "{CRASH_AT}: killing this manager (SIGKILL)");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Whether the log says the database refused the login.
fn login_refused(logs: &str) -> bool {
    LOGIN_REFUSED.iter().any(|words| logs.contains(words))
}

/// A fresh alias: `postgrest-<id>-<n>`, `n` from the clock, so it differs from the alias of
/// the container being replaced.
pub(super) fn upstream_alias(project: &ProjectId) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{n:x}", project.container_name())
}

/// Waits until the new container serves (`/ready` 200), bounded by the replace timeout; gives
/// up at once when it cannot: it exited or is being restarted by Docker (a crash loop), or
/// its log says its database refused the login.
async fn wait_serving<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    project: &ProjectId,
    rendered: &Rendered,
) -> Result<crate::runtime::ContainerInfo, ActionError> {
    let name = next_container_name(project);
    let deadline = Instant::now() + cfg.replace_timeout;
    let mut every = FIRST_PROBE;
    let mut next_logs = Instant::now();
    loop {
        let info = runtime.find_by_name(&name).await?;
        if let (State::Running, Some(ip)) = (info.state, info.ip) {
            if probe::ready(ip, cfg.admin_port, PROBE_TIMEOUT)
                .await
                .is_ok()
            {
                return Ok(info);
            }
        }
        let crashed = matches!(info.state, State::Exited | State::Dead | State::Restarting);
        let timed_out = Instant::now() >= deadline;
        let logs = if crashed || timed_out || Instant::now() >= next_logs {
            next_logs = Instant::now() + LOGS_EVERY;
            runtime.logs(&info.id, LOG_LINES).await.unwrap_or_default()
        } else {
            String::new()
        };
        let why = if login_refused(&logs) {
            Some("its database refused the login".to_owned())
        } else if crashed {
            Some(match info.exit_code {
                Some(code) => format!("it exited with code {code}"),
                None => "it stopped".to_owned(),
            })
        } else if timed_out {
            Some(format!("not within {} s", cfg.replace_timeout.as_secs()))
        } else {
            None
        };
        if let Some(why) = why {
            // An image that does not start may say nothing at all.
            let reason = if logs.trim().is_empty() {
                "its log is empty".to_owned()
            } else {
                reason_from_logs(&logs)
            };
            return Err(ActionError::NeverServed {
                why,
                reason: rendered.config.redact(&reason),
            });
        }
        tokio::time::sleep(every).await;
        every = (every * 2).min(PROBE_EVERY);
    }
}
