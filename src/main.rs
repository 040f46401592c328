//! The `postgrest-manager` binary: parse settings, start telemetry, run until a signal.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use postgrest_manager::api::{self, ApiConfig};
use postgrest_manager::args::{Cli, Command};
use postgrest_manager::reconcile::Controller;
use postgrest_manager::render::ADMIN_PORT;
use postgrest_manager::runtime::docker::DockerRuntime;
use postgrest_manager::settings::Settings;
use postgrest_manager::{caddy, cli, telemetry, watch};

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
    // Bound before anything starts, so a taken or invalid address exits at once, non-zero.
    let listener = match &settings.api {
        Some(api) => Some(
            tokio::net::TcpListener::bind(api.listen)
                .await
                .with_context(|| format!("binding the API on {}", api.listen))?,
        ),
        None => None,
    };
    let docker = DockerRuntime::new(settings.docker_host.as_deref());
    let state_dir = cfg.state.path().to_owned();
    // Why Caddy's routes are not in place (None while they are); only with Caddy configured.
    let (routes_tx, routes_rx) = tokio::sync::watch::channel(caddy::RouteState::default());
    let routes = settings.caddy.as_ref().map(|_| routes_rx);
    let api_config = settings.api.as_ref().map(|api| ApiConfig {
        state: cfg.state.clone(),
        reload_signal: cfg.reload_signal.clone(),
        key: api.key.clone(),
        timeout: api.timeout,
        admin_port: ADMIN_PORT,
        routes: routes.clone(),
    });
    let resync = cfg.resync;
    let (controller, handle) = Controller::new(Arc::new(docker), cfg);
    let _watch =
        watch::watch(&state_dir, handle.clone()).context("watching the state directory")?;

    // One signal stops both the loop and the API; waiting API calls answer 503 at once.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if let Some(admin) = &settings.caddy {
        tracing::info!(caddy = %admin, "keeping project routes in Caddy");
        let sync = caddy::RouteSync::new(caddy::HttpCaddy::new(admin));
        tokio::spawn(caddy::keep_in_step(
            handle.clone(),
            sync,
            resync,
            routes_tx,
            stopped(stop_rx.clone()),
        ));
    }
    let server = match (listener, api_config, &settings.api) {
        (Some(listener), Some(api_config), Some(api_settings)) => {
            let app = api::router(api_config, handle.clone(), stop_rx.clone());
            tracing::info!(listen = %listener.local_addr()?, "API listening");
            let serve =
                api::serve::serve(listener, app, api_settings.limits, stopped(stop_rx.clone()));
            Some(tokio::spawn(serve))
        }
        _ => None,
    };
    tracing::info!(state_dir = %state_dir.display(), "postgrest-manager started");
    controller.run(stopped(stop_rx)).await;
    if let Some(server) = server {
        server.await.context("the API task")?;
    }
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
