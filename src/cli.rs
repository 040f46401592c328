//! The state-editing subcommands: they work on the state directory directly, so they work
//! while the daemon is down, and the daemon picks the change up. `list` and `status` read the
//! state directory and, when Docker answers, this instance's containers; they never need the
//! daemon either.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::api;
use crate::render::{LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_PROJECT, MANAGED_BY};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerInfo, Runtime, State};
use crate::settings::StateArgs;
use crate::spec::{Loaded, ProjectId, Secret, SpecFile, StateDir, StateLock, WriteError};

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Write a project's desired state (enabled). Pass `-` for both secrets to read them from
    /// standard input, one per line, and keep them out of the process list.
    AddProject {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        wait: WaitArgs,
        project_id: String,
        jwt_secret: String,
        authenticator_password: String,
    },
    /// Enable a project (its container runs).
    Spawn {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        wait: WaitArgs,
        project_id: String,
    },
    /// Disable a project: its container is removed, its config kept.
    Stop {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        wait: WaitArgs,
        project_id: String,
    },
    /// Make the project's PostgREST reload its config (bumps `reload_token`).
    Reload {
        #[command(flatten)]
        state: StateArgs,
        project_id: String,
    },
    /// Remove a project's desired state: its container and rendered config go.
    Remove {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        wait: WaitArgs,
        project_id: String,
    },
    /// List every project: desired state, actual state, health, last error.
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        docker: DockerArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one project, or all: desired state, actual state, health, last error.
    Status {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        docker: DockerArgs,
        project_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How to find this manager's containers, for the actual state.
#[derive(Debug, Clone, Args)]
pub struct DockerArgs {
    /// The manager instance whose containers to look at.
    #[arg(long, env = "PGM_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Docker daemon address (as for the docker CLI); the local socket when unset.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
}

/// Waiting for the running manager to act on a change.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait up to this many seconds until the container runs (or is gone), as the daemon
    /// converges; 0 returns as soon as the desired state is written. Needs Docker; when it is
    /// unreachable the command says so and returns.
    #[arg(long, env = "PGM_WAIT_SECS", default_value_t = 0, value_name = "SECS")]
    pub wait: u64,
    #[command(flatten)]
    pub docker: DockerArgs,
}

/// Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 no such project.
pub fn run(command: StateCommand) -> ExitCode {
    match execute(command) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(CliError { code, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

pub struct CliError {
    pub code: u8,
    pub message: String,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError {
        code: 2,
        message: message.into(),
    }
}

fn failed(message: impl Into<String>) -> CliError {
    CliError {
        code: 1,
        message: message.into(),
    }
}

fn parse_id(raw: &str) -> Result<ProjectId, CliError> {
    ProjectId::parse(raw).map_err(|e| usage(e.to_string()))
}

fn write(state: &StateDir, id: &ProjectId, file: &SpecFile) -> Result<(), CliError> {
    state.write(id, file).map_err(|e| match e {
        WriteError::Invalid(e) => usage(e.to_string()),
        WriteError::Io(e) => failed(format!("{}: {e}", state.file(id).display())),
    })
}

/// The state directory's writer lock, shared with the manager's API: held for one
/// read-modify-write so neither loses the other's change.
fn lock(state: &StateDir) -> Result<StateLock, CliError> {
    state
        .lock()
        .map_err(|e| failed(format!("locking {}: {e}", state.path().display())))
}

/// Read-modify-write of an existing project's file.
fn edit(
    state: &StateDir,
    id: &ProjectId,
    change: impl FnOnce(&mut SpecFile),
) -> Result<(), CliError> {
    let _lock = lock(state)?;
    let mut file = state
        .read_file(id)
        .map_err(|e| failed(format!("{}: {e}", state.file(id).display())))?
        .ok_or_else(|| CliError {
            code: 3,
            message: format!("no project {id} in {}", state.path().display()),
        })?;
    change(&mut file);
    write(state, id, &file)
}

fn read_secrets_from_stdin() -> Result<(String, String), CliError> {
    let mut lines = std::io::stdin().lock().lines();
    let mut next = |what: &str| {
        lines
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| usage(format!("expected the {what} on standard input")))
    };
    Ok((next("JWT secret")?, next("authenticator password")?))
}

pub fn execute(command: StateCommand) -> Result<String, CliError> {
    match command {
        StateCommand::AddProject {
            state,
            wait,
            project_id,
            jwt_secret,
            authenticator_password,
        } => {
            let id = parse_id(&project_id)?;
            let state = StateDir::new(state.state_dir);
            let (jwt_secret, password) = if jwt_secret == "-" && authenticator_password == "-" {
                read_secrets_from_stdin()?
            } else {
                (jwt_secret, authenticator_password)
            };
            // Keep every other setting of an existing project; replace the secrets, enable it.
            let state_lock = lock(&state)?;
            let mut file = state.read_file(&id).ok().flatten().unwrap_or_else(|| {
                SpecFile::new(Secret::new(String::new()), Secret::new(String::new()))
            });
            file.jwt_secret = Secret::new(jwt_secret);
            file.authenticator_password = Secret::new(password);
            file.enabled = None;
            write(&state, &id, &file)?;
            drop(state_lock);
            let waited = wait_for(&wait, &id, Want::Running)?;
            Ok(format!("wrote {}{waited}", state.file(&id).display()))
        }
        StateCommand::Spawn {
            state,
            wait,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| f.enabled = None)?;
            let waited = wait_for(&wait, &id, Want::Running)?;
            Ok(format!("{id}: enabled{waited}"))
        }
        StateCommand::Stop {
            state,
            wait,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| f.enabled = Some(false))?;
            let waited = wait_for(&wait, &id, Want::Gone)?;
            Ok(format!("{id}: disabled{waited}"))
        }
        StateCommand::Reload { state, project_id } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| {
                f.reload_token = Some(f.reload_token.unwrap_or(0).wrapping_add(1))
            })?;
            Ok(format!("{id}: reload requested"))
        }
        StateCommand::Remove {
            state,
            wait,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            let removed = {
                let _lock = lock(&state)?;
                state.remove(&id)
            };
            match removed {
                Ok(true) => {
                    let waited = wait_for(&wait, &id, Want::Gone)?;
                    Ok(format!("{id}: removed{waited}"))
                }
                Ok(false) => Err(CliError {
                    code: 3,
                    message: format!("no project {id} in {}", state.path().display()),
                }),
                Err(e) => Err(failed(format!("{}: {e}", state.file(&id).display()))),
            }
        }
        StateCommand::List {
            state,
            docker,
            json,
        } => {
            let rows = status_rows(&StateDir::new(state.state_dir), &docker, None)?;
            Ok(render_rows(&rows, json))
        }
        StateCommand::Status {
            state,
            docker,
            project_id,
            json,
        } => {
            let state = StateDir::new(state.state_dir);
            let id = project_id.as_deref().map(parse_id).transpose()?;
            let rows = status_rows(&state, &docker, id.as_ref())?;
            if let (Some(id), true) = (&id, rows.is_empty()) {
                return Err(CliError {
                    code: 3,
                    message: format!("no project {id} in {}", state.path().display()),
                });
            }
            Ok(render_rows(&rows, json))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Actual state, for `list`, `status` and `--wait`

/// How long a look at Docker may take before the actual state is "unknown".
const DOCKER_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of `list` / `status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub project_id: String,
    /// `enabled`, `disabled`, `invalid` (the file does not load) or `absent` (no file, but a
    /// container is left).
    pub desired: &'static str,
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
        let docker_runtime = DockerRuntime::new(docker.docker_host.as_deref());
        let labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_INSTANCE.to_owned(), docker.instance.clone()),
        ]);
        let list = async {
            docker_runtime.ping().await?;
            docker_runtime.list(&labels).await
        };
        tokio::time::timeout(DOCKER_TIMEOUT, list).await.ok()?.ok()
    })
}

fn status_rows(
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
        let Some(id) = c
            .labels
            .get(LABEL_PROJECT)
            .and_then(|p| ProjectId::parse(p).ok())
        else {
            continue;
        };
        if c.name == id.container_name() {
            actual.insert(id, c);
        }
    }
    let mut desired: BTreeMap<ProjectId, (&'static str, Option<String>)> = BTreeMap::new();
    for (id, spec) in &loaded.specs {
        let word = if spec.enabled { "enabled" } else { "disabled" };
        desired.insert(id.clone(), (word, None));
    }
    for (id, error) in &loaded.invalid {
        desired.insert(id.clone(), ("invalid", Some(error.to_string())));
    }
    for id in actual.keys() {
        desired.entry(id.clone()).or_insert(("absent", None));
    }
    let rows = desired
        .into_iter()
        .filter(|(id, _)| only.is_none_or(|only| only == id))
        .map(|(id, (word, error))| {
            let container = actual.get(&id);
            let (actual_state, health) = match (&containers, container) {
                (None, _) => ("unknown".to_owned(), "unknown".to_owned()),
                (Some(_), None) => ("absent".to_owned(), "-".to_owned()),
                (Some(_), Some(c)) => (
                    api::state_name(c.state).to_owned(),
                    api::health_name(c.health).to_owned(),
                ),
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

fn render_rows(rows: &[StatusRow], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).unwrap_or_default();
    }
    let header = ["PROJECT", "DESIRED", "ACTUAL", "HEALTH", "LAST ERROR"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.project_id.clone(),
                r.desired.to_owned(),
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
enum Want {
    Running,
    Gone,
}

/// Polls Docker until the project's container is running (or gone); returns a note for the
/// command's output. The desired state is already written: a timeout is a failure (exit 1)
/// that says so, an unreachable Docker only a note.
fn wait_for(wait: &WaitArgs, id: &ProjectId, want: Want) -> Result<String, CliError> {
    if wait.wait == 0 {
        return Ok(String::new());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait.wait);
    loop {
        let Some(containers) = our_containers(&wait.docker) else {
            return Ok(" (Docker is unreachable: not waiting)".into());
        };
        let container = containers.iter().find(|c| {
            c.labels.get(LABEL_PROJECT).map(String::as_str) == Some(id.as_str())
                && c.name == id.container_name()
        });
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
        };

        let rows = status_rows(&state, &docker, None).unwrap_or_else(|e| panic!("{}", e.message));
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.project_id.as_str(), r.desired, r.actual.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("broken", "invalid", "unknown"),
                ("off", "disabled", "unknown"),
                ("on", "enabled", "unknown")
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
