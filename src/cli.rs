//! The state-editing subcommands: they work on the state directory directly, so they work
//! while the daemon is down, and the daemon picks the change up.

use std::io::BufRead;
use std::process::ExitCode;

use clap::Subcommand;

use crate::settings::StateArgs;
use crate::spec::{ProjectId, Secret, SpecFile, StateDir, WriteError};

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Write a project's desired state (enabled). Pass `-` for both secrets to read them from
    /// standard input, one per line, and keep them out of the process list.
    AddProject {
        #[command(flatten)]
        state: StateArgs,
        project_id: String,
        jwt_secret: String,
        authenticator_password: String,
    },
    /// Enable a project (its container runs).
    Spawn {
        #[command(flatten)]
        state: StateArgs,
        project_id: String,
    },
    /// Disable a project: no container, config kept.
    Stop {
        #[command(flatten)]
        state: StateArgs,
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
        project_id: String,
    },
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

/// Read-modify-write of an existing project's file.
fn edit(
    state: &StateDir,
    id: &ProjectId,
    change: impl FnOnce(&mut SpecFile),
) -> Result<(), CliError> {
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
            let mut file = state.read_file(&id).ok().flatten().unwrap_or_else(|| {
                SpecFile::new(Secret::new(String::new()), Secret::new(String::new()))
            });
            file.jwt_secret = Secret::new(jwt_secret);
            file.authenticator_password = Secret::new(password);
            file.enabled = None;
            write(&state, &id, &file)?;
            Ok(format!("wrote {}", state.file(&id).display()))
        }
        StateCommand::Spawn { state, project_id } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| f.enabled = None)?;
            Ok(format!("{id}: enabled"))
        }
        StateCommand::Stop { state, project_id } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| f.enabled = Some(false))?;
            Ok(format!("{id}: disabled"))
        }
        StateCommand::Reload { state, project_id } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            edit(&state, &id, |f| {
                f.reload_token = Some(f.reload_token.unwrap_or(0).wrapping_add(1))
            })?;
            Ok(format!("{id}: reload requested"))
        }
        StateCommand::Remove { state, project_id } => {
            let (state, id) = (StateDir::new(state.state_dir), parse_id(&project_id)?);
            match state.remove(&id) {
                Ok(true) => Ok(format!("{id}: removed")),
                Ok(false) => Err(CliError {
                    code: 3,
                    message: format!("no project {id} in {}", state.path().display()),
                }),
                Err(e) => Err(failed(format!("{}: {e}", state.file(&id).display()))),
            }
        }
    }
}
