//! Actual state, for `list`, `status` and `--wait`: the state directory next to this
//! instance's containers, and `unknown` when Docker cannot be asked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{failed, CliError};
use crate::args::{DockerArgs, WaitArgs};
use crate::render::owner_labels;
use crate::runtime::engine::Engine;
use crate::runtime::{ContainerInfo, Runtime, State};
use crate::spec::{DesiredState, ProjectId};
use crate::spec_key::SpecKey;
use crate::state_dir::{Loaded, StateDir};

/// How long a look at Docker may take before the actual state is "unknown".
const DOCKER_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of `list` / `status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub project_id: String,
    /// `enabled`, `disabled`, `invalid` (the file does not load) or `absent` (no file, but a
    /// container is left).
    pub desired: DesiredState,
    /// The container's state (`running`, `exited`, ...), `absent`, or `unknown` when Docker
    /// cannot be asked.
    pub actual: String,
    /// Docker's health check, or `unknown`/`-`.
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Why the state file is rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Our containers (this instance's), or `None` when Docker cannot be asked.
fn our_containers(docker: &DockerArgs) -> Option<Vec<ContainerInfo>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        // Lists only: the key names no secret here.
        let docker_runtime = Engine::new(
            crate::settings::orchestrator(&docker.orchestrator),
            docker.docker_host.as_deref(),
            SpecKey::from_bytes([0; 32]),
            Default::default(),
        );
        let labels = owner_labels(&docker.instance);
        let list = async {
            docker_runtime.ping().await?;
            docker_runtime.list(&labels).await
        };
        tokio::time::timeout(DOCKER_TIMEOUT, list).await.ok()?.ok()
    })
}

pub(super) fn status_rows(
    state: &StateDir,
    docker: &DockerArgs,
    only: Option<&ProjectId>,
) -> Result<Vec<StatusRow>, CliError> {
    let loaded = match state.load() {
        Ok(loaded) => loaded,
        // No directory yet: no projects, which is not an error for a listing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::default(),
        Err(e) => return Err(failed(format!("{}: {e}", state.path().display()))),
    };
    let containers = our_containers(docker);
    let mut actual: BTreeMap<ProjectId, &ContainerInfo> = BTreeMap::new();
    for c in containers.iter().flatten() {
        if let Some(id) = c.serving_project() {
            actual.insert(id, c);
        }
    }
    let mut desired: BTreeMap<ProjectId, (DesiredState, Option<String>)> = BTreeMap::new();
    for (id, spec) in &loaded.specs {
        desired.insert(id.clone(), (DesiredState::of(spec.enabled), None));
    }
    for (id, error) in &loaded.invalid {
        desired.insert(id.clone(), (DesiredState::Invalid, Some(error.to_string())));
    }
    for id in actual.keys() {
        desired
            .entry(id.clone())
            .or_insert((DesiredState::Absent, None));
    }
    let rows = desired
        .into_iter()
        .filter(|(id, _)| only.is_none_or(|only| only == id))
        .map(|(id, (word, error))| {
            let container = actual.get(&id);
            let (actual_state, health) = match (&containers, container) {
                (None, _) => ("unknown".to_owned(), "unknown".to_owned()),
                (Some(_), None) => ("absent".to_owned(), "-".to_owned()),
                (Some(_), Some(c)) => (c.state.to_string(), c.health.to_string()),
            };
            StatusRow {
                project_id: id.to_string(),
                desired: word,
                actual: actual_state,
                health,
                container_id: container.map(|c| c.id.chars().take(12).collect()),
                error,
            }
        })
        .collect();
    Ok(rows)
}

pub(super) fn render_rows(rows: &[StatusRow], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).unwrap_or_default();
    }
    let header = ["PROJECT", "DESIRED", "ACTUAL", "HEALTH", "LAST ERROR"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.project_id.clone(),
                r.desired.to_string(),
                r.actual.clone(),
                r.health.clone(),
                r.error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: [&str; 5]| {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out
    };
    let mut out = line(header);
    for row in &cells {
        out.push('\n');
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Running,
    Gone,
}

/// Polls Docker until the project's container is running (or gone); returns a note for the
/// command's output. The desired state is already written: a timeout is a failure (exit 1)
/// that says so, an unreachable Docker only a note.
pub(super) fn wait_for(wait: &WaitArgs, id: &ProjectId, want: Want) -> Result<String, CliError> {
    if wait.wait == 0 {
        return Ok(String::new());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait.wait);
    loop {
        let Some(containers) = our_containers(&wait.docker) else {
            return Ok(" (Docker is unreachable: not waiting)".into());
        };
        let container = containers
            .iter()
            .find(|c| c.serving_project().as_ref() == Some(id));
        let done = match want {
            Want::Running => container.is_some_and(|c| c.state == State::Running),
            Want::Gone => container.is_none(),
        };
        if done {
            return Ok(match want {
                Want::Running => " (running)".into(),
                Want::Gone => " (container gone)".into(),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "{id}: the desired state is saved, but the container did not converge within \
                 {} s; is postgrest-manager serve running (instance {})?",
                wait.wait, wait.docker.instance
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Secret, SpecFile};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn status_works_without_docker() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let id = |raw| ProjectId::parse(raw).unwrap();
        let mut file = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        state.write(&id("on"), &file).unwrap();
        file.enabled = Some(false);
        state.write(&id("off"), &file).unwrap();
        std::fs::write(dir.path().join("broken.toml"), "jwt_secret = [").unwrap();
        let docker = DockerArgs {
            instance: "none".into(),
            docker_host: Some("unix:///nonexistent/docker.sock".into()),
            orchestrator: "docker".into(),
        };

        let rows = status_rows(&state, &docker, None).unwrap_or_else(|e| panic!("{}", e.message));
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.project_id.as_str(),
                    r.desired.to_string(),
                    r.actual.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("broken", "invalid".to_owned(), "unknown"),
                ("off", "disabled".to_owned(), "unknown"),
                ("on", "enabled".to_owned(), "unknown")
            ]
        );
        assert!(rows[0].error.as_deref().unwrap().contains("jwt_secret"));

        let table = render_rows(&rows, false);
        assert!(
            table.starts_with("PROJECT  DESIRED   ACTUAL   HEALTH   LAST ERROR\n"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&render_rows(&rows, true)).unwrap();
        assert_eq!(json[2]["projectId"], "on");
        assert!(!table.contains(SECRET) && !json.to_string().contains(SECRET));

        let only = status_rows(&state, &docker, Some(&id("off"))).unwrap_or_default();
        assert_eq!(only.len(), 1);
    }
}
