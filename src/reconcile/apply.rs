//! Carrying out one planned action against the runtime and the config directory. A [`Job`] is
//! an action with everything it needs: an action that starts PostgREST carries its rendering,
//! so nothing here can be asked to start a project without a config.

use std::sync::Arc;

use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::replace::{self, Switch};
use super::LoopConfig;
use crate::plan::Action;
use crate::render::{owner_labels, Rendered};
use crate::runtime::{LogCursor, Runtime, RuntimeError};
use crate::spec::ProjectId;

/// PostgREST's schema-cache reload signal (postgrest-facts.md); the image's wrapper forwards it.
pub(super) const SCHEMA_RELOAD_SIGNAL: &str = "SIGUSR1";

/// How an action ended well.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The container runs with this config loaded.
    Loaded {
        container: String,
        digest: String,
        reloaded: bool,
    },
    /// The container is gone (and its config, unless kept); `None` when there was none.
    Removed { container: Option<String> },
    /// The container was sent the schema-reload signal for this `schema_reload_token`.
    SchemaReloaded { container: String, token: u64 },
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ActionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a container named {name} ({container}) exists without this manager's labels; remove or rename it")]
    Foreign { name: String, container: String },
    #[error("cannot write the rendered config: {0}")]
    Config(std::io::Error),
    #[error("PostgREST refused the new config and keeps the old one in force: {0}")]
    ReloadRefused(String),
    #[error(
        "PostgREST did not confirm the config reload ({0}); the old config may still be in force"
    )]
    ReloadUnconfirmed(String),
    #[error("the new container never served ({why}): {reason}; it was removed and the old one keeps serving")]
    NeverServed { why: String, reason: String },
    #[error("cannot switch the route to the new container: {0}; it was removed and the old one keeps serving")]
    Switch(String),
}

/// What PostgREST logs after it re-read its config file (on SIGUSR2, and also at start-up and
/// when it reconnects: every one of them read the file after it was written).
const RELOAD_DONE: &str = "Config reloaded";
/// What PostgREST logs when it cannot use the re-read file; the old config stays in force.
const RELOAD_FAILED: &str = "Failed reloading config: ";
/// The most of PostgREST's reason that is kept for the status.
const REASON_MAX: usize = 300;

/// A planned action, ready to run.
#[derive(Debug)]
pub(super) enum Job {
    /// Write the config, create and start the container.
    Create {
        project: ProjectId,
        rendered: Arc<Rendered>,
    },
    /// Remove the container, then create it anew.
    Recreate {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
    /// Start a new container beside the old one, switch the route, remove the old one.
    Replace {
        project: ProjectId,
        container: String,
        next: Option<String>,
        rendered: Arc<Rendered>,
    },
    /// Give an interrupted replacement the project's name.
    Promote {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
    /// Write the config and start the stopped container.
    Start {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
    /// Write the config and send the reload signal.
    Reload {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
    /// Send the schema-reload signal (SIGUSR1).
    ReloadSchema {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
    Remove {
        project: ProjectId,
        container: String,
        keep_config: bool,
    },
    RemoveConfig {
        project: ProjectId,
    },
    /// Swarm: write the config and update the service to it (a new secret, start-first).
    Update {
        project: ProjectId,
        container: String,
        rendered: Arc<Rendered>,
    },
}

impl Job {
    /// The job for `action`, or `None` when the action needs a rendering and there is none
    /// (the planner only asks to run projects that have a spec, so this means a bug).
    pub fn new(action: Action, rendered: Option<&Arc<Rendered>>) -> Option<Job> {
        let rendered = || rendered.cloned();
        Some(match action {
            Action::Create { project } => Job::Create {
                project,
                rendered: rendered()?,
            },
            Action::Recreate { project, container } => Job::Recreate {
                project,
                container,
                rendered: rendered()?,
            },
            Action::Replace {
                project,
                container,
                next,
            } => Job::Replace {
                project,
                container,
                next,
                rendered: rendered()?,
            },
            Action::Promote { project, container } => Job::Promote {
                project,
                container,
                rendered: rendered()?,
            },
            Action::Start { project, container } => Job::Start {
                project,
                container,
                rendered: rendered()?,
            },
            Action::Reload { project, container } => Job::Reload {
                project,
                container,
                rendered: rendered()?,
            },
            Action::ReloadSchema { project, container } => Job::ReloadSchema {
                project,
                container,
                rendered: rendered()?,
            },
            Action::Remove {
                project,
                container,
                keep_config,
            } => Job::Remove {
                project,
                container,
                keep_config,
            },
            Action::RemoveConfig { project } => Job::RemoveConfig { project },
            Action::Update { project, container } => Job::Update {
                project,
                container,
                rendered: rendered()?,
            },
        })
    }

    pub fn project(&self) -> &ProjectId {
        match self {
            Job::Create { project, .. }
            | Job::Recreate { project, .. }
            | Job::Replace { project, .. }
            | Job::Promote { project, .. }
            | Job::Start { project, .. }
            | Job::Reload { project, .. }
            | Job::ReloadSchema { project, .. }
            | Job::Remove { project, .. }
            | Job::RemoveConfig { project }
            | Job::Update { project, .. } => project,
        }
    }

    /// The job's kind as a metric label: a fixed list, never a project.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Job::Create { .. } => "create",
            Job::Recreate { .. } => "recreate",
            Job::Start { .. } => "start",
            Job::Reload { .. } => "reload",
            Job::ReloadSchema { .. } => "reload_schema",
            Job::Replace { .. } => "replace",
            Job::Promote { .. } => "promote",
            Job::Remove { .. } => "remove",
            Job::RemoveConfig { .. } => "remove_config",
            Job::Update { .. } => "update",
        }
    }

    /// The job's name, for log lines.
    fn kind(&self) -> &'static str {
        match self {
            Job::Create { .. } => "Create",
            Job::Recreate { .. } => "Recreate",
            Job::Replace { .. } => "Replace",
            Job::Promote { .. } => "Promote",
            Job::Start { .. } => "Start",
            Job::Reload { .. } => "Reload",
            Job::ReloadSchema { .. } => "ReloadSchema",
            Job::Remove { .. } => "Remove",
            Job::RemoveConfig { .. } => "RemoveConfig",
            Job::Update { .. } => "Update",
        }
    }
}

/// Carries out one job. Idempotent where it can be: a container already gone counts as
/// removed, an unchanged config is not rewritten.
pub(super) async fn apply<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    switch: &Switch,
    job: Job,
) -> Result<Outcome, ActionError> {
    let kind = job.kind();
    let outcome = match job {
        Job::Replace {
            project,
            container,
            next,
            rendered,
        } => replace::replace(runtime, cfg, switch, &project, &container, next, &rendered).await,
        Job::Promote {
            project,
            container,
            rendered,
        } => replace::promote(runtime, cfg, &project, container, &rendered).await,
        Job::Create { project, rendered } => create(runtime, cfg, &project, &rendered).await,
        Job::Recreate {
            project,
            container,
            rendered,
        } => {
            remove_container(runtime, &container).await?;
            create(runtime, cfg, &project, &rendered).await
        }
        Job::Start {
            project,
            container,
            rendered,
        } => {
            write_config(cfg, &project, &rendered).await?;
            runtime.start(&container).await?;
            schema_loaded(cfg, &project, &container, rendered.schema_token).await;
            loaded(cfg, &project, container, &rendered, false).await
        }
        Job::Reload {
            project,
            container,
            rendered,
        } => {
            debug!(container = %container, "reload: writing the config");
            write_config(cfg, &project, &rendered).await?;
            // Where PostgREST's log ends before the signal: only what it writes after counts.
            let cursor = runtime.log_cursor(&container).await?;
            debug!(container = %container, "config written; log cursor read");
            runtime.signal(&container, &cfg.reload_signal).await?;
            debug!(container = %container, "reload signalled; waiting for PostgREST's word");
            confirm_reload(runtime, cfg, &container, cursor, &rendered).await?;
            loaded(cfg, &project, container, &rendered, true).await
        }
        Job::ReloadSchema {
            project,
            container,
            rendered,
        } => {
            runtime.signal(&container, SCHEMA_RELOAD_SIGNAL).await?;
            let token = rendered.schema_token;
            schema_loaded(cfg, &project, &container, token).await;
            Ok(Outcome::SchemaReloaded { container, token })
        }
        Job::Remove {
            project,
            container,
            keep_config,
        } => {
            remove_container(runtime, &container).await?;
            let configs = cfg.configs.clone();
            blocking(move || {
                if keep_config {
                    configs.forget(&project)
                } else {
                    configs.remove(&project)
                }
            })
            .await
            .map_err(ActionError::Config)?;
            Ok(Outcome::Removed {
                container: Some(container),
            })
        }
        Job::Update {
            project,
            container,
            rendered,
        } => {
            write_config(cfg, &project, &rendered).await?;
            // Swarm rolls it out start-first and rolls it back when the new task never turns
            // healthy; this returns once the new config is in force, or with why it is not.
            runtime
                .update(&container, &rendered.container, rendered.schema_token)
                .await?;
            schema_loaded(cfg, &project, &container, rendered.schema_token).await;
            loaded(cfg, &project, container, &rendered, true).await
        }
        Job::RemoveConfig { project } => {
            let configs = cfg.configs.clone();
            blocking(move || configs.remove(&project))
                .await
                .map_err(ActionError::Config)?;
            Ok(Outcome::Removed { container: None })
        }
    };
    match &outcome {
        Ok(_) => info!(action = %kind, "done"),
        Err(e) => debug!(action = %kind, error = %e, "failed"),
    }
    outcome
}

async fn create<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    project: &ProjectId,
    rendered: &Arc<Rendered>,
) -> Result<Outcome, ActionError> {
    write_config(cfg, project, rendered).await?;
    let id = match runtime.create(&rendered.container).await {
        Ok(id) => id,
        Err(RuntimeError::Conflict(_)) => {
            let name = project.container_name();
            let holder = runtime.find_by_name(&name).await?;
            let is_ours = owner_labels(&cfg.template.instance)
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
    // A starting PostgREST loads its schema cache: the token asked for so far is served.
    schema_loaded(cfg, project, &id, rendered.schema_token).await;
    loaded(cfg, project, id, rendered, false).await
}

/// Records that the container has its schema cache as of `token` (a failure costs at most
/// one extra schema reload after a restart of the manager: logged, not fatal).
pub(super) async fn schema_loaded(
    cfg: &LoopConfig,
    project: &ProjectId,
    container: &str,
    token: u64,
) {
    let configs = cfg.configs.clone();
    let (p, c) = (project.clone(), container.to_owned());
    if let Err(e) = blocking(move || configs.remember_schema(&p, &c, token)).await {
        warn!(project = %project, error = %e, "cannot record the schema reload");
    }
}

/// The container runs with `rendered` loaded: record it on disk (a failure costs at most one
/// extra reload signal after a restart, so it is logged, not fatal) and say so.
pub(super) async fn loaded(
    cfg: &LoopConfig,
    project: &ProjectId,
    container: String,
    rendered: &Rendered,
    reloaded: bool,
) -> Result<Outcome, ActionError> {
    let configs = cfg.configs.clone();
    let digest = rendered.config.digest.clone();
    let (p, c, d) = (project.clone(), container.clone(), digest.clone());
    if let Err(e) = blocking(move || configs.remember(&p, &c, &d)).await {
        warn!(project = %project, error = %e, "cannot record the loaded config");
    }
    Ok(Outcome::Loaded {
        container,
        digest,
        reloaded,
    })
}

/// Waits for PostgREST's own word on a reload: a signal delivered proves nothing (a refused
/// file leaves the old config, and the old JWT secret, in force). Only `Config reloaded`
/// after `cursor` makes the reload count; `Failed reloading config` is an error with
/// PostgREST's reason (secrets masked); silence past the timeout is an error too. Either error
/// leaves the loaded-config record as it was, so the loop retries with backoff.
async fn confirm_reload<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    container: &str,
    cursor: LogCursor,
    rendered: &Rendered,
) -> Result<(), ActionError> {
    let mut lines = runtime.log_after(container, cursor);
    let verdict = async {
        while let Some(line) = lines.next().await {
            let line = line?;
            if let Some((_, reason)) = line.split_once(RELOAD_FAILED) {
                let mut reason = rendered.config.redact(reason.trim());
                if let Some((cut, _)) = reason.char_indices().nth(REASON_MAX) {
                    reason.truncate(cut);
                }
                return Err(ActionError::ReloadRefused(reason));
            }
            if line.contains(RELOAD_DONE) {
                return Ok(());
            }
        }
        Err(ActionError::ReloadUnconfirmed(
            "its log ended: the container stopped".into(),
        ))
    };
    tokio::time::timeout(cfg.reload_timeout, verdict)
        .await
        .unwrap_or_else(|_| {
            Err(ActionError::ReloadUnconfirmed(format!(
                "no `Config reloaded` in its log within {} s",
                cfg.reload_timeout.as_secs_f64()
            )))
        })
}

pub(super) async fn remove_container<R: Runtime>(
    runtime: &R,
    container: &str,
) -> Result<(), ActionError> {
    match runtime.remove(container).await {
        Ok(()) | Err(RuntimeError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn write_config(
    cfg: &LoopConfig,
    project: &ProjectId,
    rendered: &Rendered,
) -> Result<(), ActionError> {
    let configs = cfg.configs.clone();
    let (project, config) = (project.clone(), rendered.config.clone());
    blocking(move || configs.write(&project, &config).map(drop))
        .await
        .map_err(ActionError::Config)
}

/// File-system work off the async threads. A panic there is a bug; it surfaces as an I/O
/// error of the action instead of taking the loop down.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}
