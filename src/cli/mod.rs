//! The state-editing subcommands: they work on the state directory directly, so they work
//! while the daemon is down, and the daemon picks the change up. `list` and `status` read the
//! state directory and, when Docker answers, this instance's containers; they never need the
//! daemon either. `status --api` asks the running daemon instead (its probe and its events
//! live in its memory); `plan` and `diff` compute what the daemon would do, standalone.

mod describe;
mod plan;
mod remote;
mod status;

use std::io::BufRead;
use std::process::ExitCode;

use crate::args::StateCommand;
use crate::spec::{ProjectId, Secret, SpecError, SpecFile};
use crate::state_dir::{EditError, StateDir};
use status::{render_rows, status_rows, wait_for, Want};

/// Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 no such project.
pub fn run(command: StateCommand) -> ExitCode {
    let command = match command {
        // Their exit code says whether there is work, so they print their own output.
        StateCommand::Plan { serve, json } => return plan::run_plan(*serve, json),
        StateCommand::Diff { serve, project_id } => return plan::run_diff(*serve, &project_id),
        other => other,
    };
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

fn no_such_project(state: &StateDir, id: &ProjectId) -> CliError {
    CliError {
        code: 3,
        message: format!("no project {id} in {}", state.path().display()),
    }
}

impl From<EditError> for CliError {
    fn from(error: EditError) -> CliError {
        match error {
            EditError::Invalid(e) => usage(e.to_string()),
            other => failed(other.to_string()),
        }
    }
}

fn parse_id(raw: &str) -> Result<ProjectId, CliError> {
    ProjectId::parse(raw).map_err(|e| usage(e.to_string()))
}

/// Read-modify-write of an existing project's file (see [`StateDir::edit`]).
fn edit(
    state: &StateDir,
    id: &ProjectId,
    change: impl FnOnce(&mut SpecFile),
) -> Result<(), CliError> {
    state.edit(id, |current: Result<Option<SpecFile>, SpecError>| {
        let mut file = current
            .map_err(|e| failed(format!("{}: {e}", state.file(id).display())))?
            .ok_or_else(|| no_such_project(state, id))?;
        change(&mut file);
        Ok::<_, CliError>(file)
    })?;
    Ok(())
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
            // Keep every other setting of an existing (even broken) project's file when it
            // parses; replace the secrets, enable it.
            let (jwt_secret, password) = (Secret::new(jwt_secret), Secret::new(password));
            state.edit(&id, |current| {
                let mut file = current
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| SpecFile::new(jwt_secret.clone(), password.clone()));
                file.set_secrets_and_enable(Some(jwt_secret), Some(password));
                Ok::<_, CliError>(file)
            })?;
            let waited = wait_for(&wait, &id, Want::Running)?;
            Ok(format!("wrote {}{waited}", state.file(&id).display()))
        }
        StateCommand::Spawn {
            state,
            wait,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, SpecFile::enable)?;
            let waited = wait_for(&wait, &id, Want::Running)?;
            Ok(format!("{id}: enabled{waited}"))
        }
        StateCommand::Stop {
            state,
            wait,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, SpecFile::disable)?;
            let waited = wait_for(&wait, &id, Want::Gone)?;
            Ok(format!("{id}: disabled{waited}"))
        }
        StateCommand::Reload {
            state,
            schema,
            project_id,
        } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            if schema {
                edit(&state, &id, |f| {
                    f.bump_schema_reload();
                })?;
                return Ok(format!("{id}: schema reload requested"));
            }
            edit(&state, &id, |f| {
                f.bump_reload();
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
                let _lock = state
                    .lock()
                    .map_err(|e| failed(format!("locking {}: {e}", state.path().display())))?;
                state.remove(&id)
            };
            match removed {
                Ok(true) => {
                    let waited = wait_for(&wait, &id, Want::Gone)?;
                    Ok(format!("{id}: removed{waited}"))
                }
                Ok(false) => Err(no_such_project(&state, &id)),
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
            api,
            project_id,
            json,
        } => {
            let state = StateDir::new(state.state_dir);
            let id = project_id.as_deref().map(parse_id).transpose()?;
            if api.url.is_some() {
                return describe::remote_status(&api, id.as_ref(), json);
            }
            let rows = status_rows(&state, &docker, id.as_ref())?;
            if let (Some(id), true) = (&id, rows.is_empty()) {
                return Err(no_such_project(&state, id));
            }
            let mut out = render_rows(&rows, json);
            if id.is_some() && !json {
                out.push_str(
                    "\n(readiness from the manager's probe and the project's events: \
                     status --api <url>, or PGM_API, with INTERNAL_API_KEY)",
                );
            }
            Ok(out)
        }
        // Their exit code carries the answer (0 nothing to do, 2 work): `run` calls them.
        StateCommand::Plan { .. } | StateCommand::Diff { .. } => Err(failed(
            "plan and diff answer through their exit code; run them through cli::run",
        )),
    }
}
