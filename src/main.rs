//! The `postgrest-manager` binary: parse settings, start telemetry, run until a signal.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use postgrest_manager::reconcile::Controller;
use postgrest_manager::runtime::docker::DockerRuntime;
use postgrest_manager::settings::{Cli, Command, Settings};
use postgrest_manager::{cli, telemetry, watch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::State(command) => return cli::run(command),
        Command::Serve(args) => args,
    };
    let settings = match Settings::try_from(*args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let cfg = settings.reconcile;
    cfg.state
        .ensure()
        .with_context(|| format!("state directory {}", cfg.state.path().display()))?;
    cfg.configs
        .ensure()
        .with_context(|| format!("config directory {}", cfg.configs.path().display()))?;
    let docker = DockerRuntime::new(settings.docker_host.as_deref()).context("Docker client")?;
    let state_dir = cfg.state.path().to_owned();
    let (controller, handle) = Controller::new(Arc::new(docker), cfg);
    let _watch =
        watch::watch(&state_dir, handle.clone()).context("watching the state directory")?;
    tracing::info!(state_dir = %state_dir.display(), "postgrest-manager started");
    controller.run(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
