//! The `postgrest-manager` binary: parse settings, start telemetry, run until a signal.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use postgrest_manager::api::{self, ApiConfig};
use postgrest_manager::args::{Cli, Command};
use postgrest_manager::metrics::{self, Metrics};
use postgrest_manager::reconcile::{Controller, Handle};
use postgrest_manager::render::ADMIN_PORT;
use postgrest_manager::runtime::engine::Engine;
use postgrest_manager::runtime::metered::Metered;
use postgrest_manager::runtime::Runtime;
use postgrest_manager::settings::Settings;
use postgrest_manager::spec_key::SpecKey;
use postgrest_manager::{caddy, cli, telemetry, watch};

fn main() -> ExitCode {
    no_core_dumps();
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
    telemetry::init(settings.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every subcommand holds secrets in memory (the loop all of them): no core file may ever
/// carry them to disk, and no other process of the same user may attach to read them.
/// Best effort, before anything else runs; a failure is said once and is not fatal.
fn no_core_dumps() {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none)
        .and_then(|()| set_dumpable_behavior(DumpableBehavior::NotDumpable))
    {
        eprintln!("warning: cannot turn core dumps off: {e}");
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut cfg = settings.reconcile;
    cfg.state
        .ensure()
        .with_context(|| format!("state directory {}", cfg.state.path().display()))?;
    cfg.configs
        .ensure()
        .with_context(|| format!("config directory {}", cfg.configs.path().display()))?;
    // The spec-hash key lives next to the project directories, never inside a mounted one.
    cfg.template.spec_key = SpecKey::load_or_create(cfg.configs.path())?;
    // One manager per state directory: a second one would fight the first over every file.
    let dir = cfg.state.path().display().to_string();
    let _serving = cfg
        .state
        .serve_lock()
        .with_context(|| format!("locking the state directory {dir}"))?
        .with_context(|| {
            format!(
                "another postgrest-manager serves {dir} (it holds {dir}/.manager.lock); \
                 stop it first, or give this one another PGM_STATE_DIR"
            )
        })?;
    for (what, swept) in [
        ("state", cfg.state.sweep_temp_files()),
        ("config", cfg.configs.sweep_temp_files()),
    ] {
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                directory = what,
                "removed temp files a killed writer left behind"
            ),
            Err(e) => tracing::warn!(error = %e, directory = what, "cannot sweep temp files"),
        }
    }
    let identity = cfg
        .state
        .identity()
        .with_context(|| format!("the identity file in {dir}"))?;
    // Bound before anything starts, so a taken or invalid address exits at once, non-zero.
    let listener = match &settings.api {
        Some(api) => Some(
            tokio::net::TcpListener::bind(api.listen)
                .await
                .with_context(|| format!("binding the API on {}", api.listen))?,
        ),
        None => None,
    };
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?,
        ),
        None => None,
    };
    // Nothing is counted unless someone can read it.
    let metrics = metrics_listener.as_ref().map(|_| Metrics::new());
    let docker = Arc::new(Metered::new(
        Engine::new(
            settings.orchestrator,
            settings.docker_host.as_deref(),
            cfg.template.spec_key.clone(),
            settings.swarm_endpoint,
        ),
        metrics.clone(),
    ));
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
    let instance = cfg.template.instance.clone();
    let (mut controller, handle) = Controller::new(docker.clone(), cfg);
    if let Some(metrics) = &metrics {
        controller = controller.with_metrics(metrics.clone());
    }
    if settings.caddy.is_some() {
        // A replacement stops the old container only once Caddy routes to the new one.
        let (routed_tx, routed_rx) = tokio::sync::watch::channel(Default::default());
        let mut state = routes_tx.subscribe();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let upstreams = state.borrow_and_update().upstreams.clone();
                routed_tx.send_if_modified(|held| {
                    let changed = *held != upstreams;
                    *held = upstreams;
                    changed
                });
            }
        });
        controller.follow_routes(routed_rx);
    }
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
        let mut sync = caddy::RouteSync::new(caddy::HttpCaddy::new(admin));
        if let Some(metrics) = &metrics {
            sync = sync.with_metrics(metrics.clone());
        }
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
            let mut app = api::router(api_config, handle.clone(), stop_rx.clone());
            if let Some(metrics) = &metrics {
                app = app.layer(axum::middleware::from_fn_with_state(
                    metrics.clone(),
                    metrics::serve::track_api,
                ));
            }
            tracing::info!(listen = %listener.local_addr()?, "API listening");
            let serve =
                api::serve::serve(listener, app, api_settings.limits, stopped(stop_rx.clone()));
            Some(tokio::spawn(serve))
        }
        _ => None,
    };
    if let (Some(listener), Some(metrics)) = (metrics_listener, metrics) {
        tracing::info!(listen = %listener.local_addr()?, "metrics listening");
        let app = metrics::serve::router(metrics, project_gauges(handle.clone()));
        tokio::spawn(metrics::serve::serve(
            listener,
            app,
            stopped(stop_rx.clone()),
        ));
    }
    tracing::info!(state_dir = %state_dir.display(), "postgrest-manager started");
    // One manager per instance on a Docker daemon, wherever its state lives: a second one
    // with the same instance name would remove the first one's containers.
    tokio::select! {
        claimed = claim_instance(&*docker, &instance, &identity) => claimed?,
        () = stopped(stop_rx.clone()) => return Ok(()),
    }
    controller.run(stopped(stop_rx)).await;
    if let Some(server) = server {
        server.await.context("the API task")?;
    }
    Ok(())
}

/// Claims `instance` on the Docker daemon for this state directory (`identity`), waiting
/// while Docker does not answer; fails when the manager of another state directory has it.
async fn claim_instance(
    docker: &impl Runtime,
    instance: &str,
    identity: &str,
) -> anyhow::Result<()> {
    let lease = format!("pgm-lease-{instance}");
    loop {
        match docker.claim(&lease, identity).await {
            Ok(None) => return Ok(()),
            Ok(Some(other)) => anyhow::bail!(
                "instance {instance} is already served on this Docker daemon by the manager of \
                 another state directory (its id {other}, this one's {identity}); two managers \
                 with one instance name remove each other's containers. Give this one another \
                 PGM_INSTANCE, or, if that manager is gone for good, drop its claim with \
                 `docker volume rm {lease}`"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "cannot claim the instance yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// The project gauges, set from the loop's last published snapshot when scraped.
fn project_gauges(handle: Handle) -> metrics::serve::Refresh {
    Arc::new(move |metrics: &Metrics| {
        let snapshot = handle.snapshot();
        metrics.set_projects(snapshot.projects.values().map(|p| {
            (
                p.desired_state(),
                p.container.as_ref().map(|c| (c.state, c.health)),
            )
        }));
    })
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
