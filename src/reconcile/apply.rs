//! Carrying out one planned action against the runtime and the config directory. A [`Job`] is
//! an action with everything it needs: an action that starts PostgREST carries its rendering,
//! so nothing here can be asked to start a project without a config.

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::LoopConfig;
use crate::plan::Action;
use crate::render::{owner_labels, Rendered};
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::ProjectId;

/// How an action ended well.
#[derive(Debug)]
pub(super) enum Outcome {
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
pub(super) enum ActionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("a container named {name} ({container}) exists without this manager's labels; remove or rename it")]
    Foreign { name: String, container: String },
    #[error("cannot write the rendered config: {0}")]
    Config(std::io::Error),
}

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
    Remove {
        project: ProjectId,
        container: String,
        keep_config: bool,
    },
    RemoveConfig {
        project: ProjectId,
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
        })
    }

    pub fn project(&self) -> &ProjectId {
        match self {
            Job::Create { project, .. }
            | Job::Recreate { project, .. }
            | Job::Start { project, .. }
            | Job::Reload { project, .. }
            | Job::Remove { project, .. }
            | Job::RemoveConfig { project } => project,
        }
    }

    /// The job's kind as a metric label: a fixed list, never a project.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Job::Create { .. } => "create",
            Job::Recreate { .. } => "recreate",
            Job::Start { .. } => "start",
            Job::Reload { .. } => "reload",
            Job::Remove { .. } => "remove",
            Job::RemoveConfig { .. } => "remove_config",
        }
    }

    /// The job's name, for log lines.
    fn kind(&self) -> &'static str {
        match self {
            Job::Create { .. } => "Create",
            Job::Recreate { .. } => "Recreate",
            Job::Start { .. } => "Start",
            Job::Reload { .. } => "Reload",
            Job::Remove { .. } => "Remove",
            Job::RemoveConfig { .. } => "RemoveConfig",
        }
    }
}

/// Carries out one job. Idempotent where it can be: a container already gone counts as
/// removed, an unchanged config is not rewritten.
pub(super) async fn apply<R: Runtime>(
    runtime: &R,
    cfg: &LoopConfig,
    job: Job,
) -> Result<Outcome, ActionError> {
    let kind = job.kind();
    let outcome = match job {
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
            loaded(cfg, &project, container, &rendered, false).await
        }
        Job::Reload {
            project,
            container,
            rendered,
        } => {
            write_config(cfg, &project, &rendered).await?;
            runtime.signal(&container, &cfg.reload_signal).await?;
            loaded(cfg, &project, container, &rendered, true).await
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
            Ok(Outcome::Removed)
        }
        Job::RemoveConfig { project } => {
            let configs = cfg.configs.clone();
            blocking(move || configs.remove(&project))
                .await
                .map_err(ActionError::Config)?;
            Ok(Outcome::Removed)
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
    loaded(cfg, project, id, rendered, false).await
}

/// The container runs with `rendered` loaded: record it on disk (a failure costs at most one
/// extra reload signal after a restart, so it is logged, not fatal) and say so.
async fn loaded(
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
