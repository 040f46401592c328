//! The command line, every subcommand and flag in one place (clap derive). `settings` turns
//! `serve`'s flags into validated settings; `cli` carries out the state-editing subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// PostgREST's UID (and GID) unless `PGM_CONFIG_UID` says otherwise, and the image's `USER`.
/// Not 1000: that is often the host's first human account, who could then read every
/// project's config (through `/proc/<pid>/root` of a container, or the directory itself).
/// 10001 is above the range `useradd` hands out first and has no account on a usual host; a
/// host where it has one is refused at start (`settings::login_account`).
pub const DEFAULT_CONFIG_UID: u32 = 10001;

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "postgrest-manager",
    version,
    about = "Runs one PostgREST container per project, reconciled from state/<id>.toml files"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (and the HTTP API).
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    State(StateCommand),
}

/// Where the desired state lives; shared by `serve` and the state-editing subcommands.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Directory of desired-state files, one `<project_id>.toml` per project.
    #[arg(long, env = "PGM_STATE_DIR", default_value = "./state")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Directory the rendered PostgREST configs are written to, one subdirectory per project.
    #[arg(long, env = "PGM_CONFIG_DIR", default_value = "./postgrest/projects")]
    pub config_dir: PathBuf,
    /// The config directory as the Docker host sees it, when the manager runs in a container
    /// (bind-mount sources are host paths). Defaults to the absolute config directory.
    #[arg(long, env = "HOST_CONFIG_DIR")]
    pub host_config_dir: Option<PathBuf>,
    /// Image of the PostgREST containers.
    #[arg(long, env = "PGM_IMAGE", default_value = "launchdb/postgrest:v1")]
    pub image: String,
    /// Docker network the containers join (created when missing).
    #[arg(long, env = "PGM_NETWORK", default_value = "launchdb-internal")]
    pub network: String,
    /// Name of this manager; it lists and touches only containers labelled with it.
    #[arg(long, env = "PGM_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Seconds between full resyncs (the safety net under file and Docker events).
    #[arg(long, env = "PGM_RESYNC_SECS", default_value_t = 30)]
    pub resync_secs: u64,
    /// Most Docker actions in flight at once.
    #[arg(long, env = "PGM_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Signal that makes PostgREST reload its config (SIGUSR2, or SIGHUP through the wrapper).
    #[arg(long, env = "PGM_RELOAD_SIGNAL", default_value = "SIGUSR2")]
    pub reload_signal: String,
    /// UID (and GID) PostgREST runs as in its container; it owns the rendered config files.
    /// The default has no account on a usual host (1000 is often its first human, who could
    /// then read every project's secrets); a UID of a host login account is refused.
    #[arg(long, env = "PGM_CONFIG_UID", default_value_t = DEFAULT_CONFIG_UID)]
    pub config_uid: u32,
    /// The Docker host's account list, to refuse a PGM_CONFIG_UID that is a login account
    /// (in a container, mount the host's /etc/passwd read-only and point this at it).
    #[arg(long, env = "PGM_HOST_PASSWD", default_value = "/etc/passwd")]
    pub host_passwd: PathBuf,
    /// Database host for projects that do not set `db_host` (PgBouncer).
    #[arg(long, env = "PGM_DB_HOST", default_value = "pgbouncer")]
    pub db_host: String,
    /// Database port for projects that do not set `db_port`.
    #[arg(long, env = "PGM_DB_PORT", default_value_t = 6432)]
    pub db_port: u16,
    /// Public domain; when set, `openapi-server-proxy-uri` is `https://<DOMAIN>/db/<project_id>`.
    #[arg(long, env = "DOMAIN")]
    pub domain: Option<String>,
    /// Memory limit of each container, in MiB.
    #[arg(long, env = "PGM_MEMORY_MB", default_value_t = 256)]
    pub memory_mb: i64,
    /// CPU limit of each container, in CPUs (e.g. 0.5, 2).
    #[arg(long, env = "PGM_CPUS", default_value_t = 1.0)]
    pub cpus: f64,
    /// Seconds a stopping container gets between SIGTERM and SIGKILL (removal, recreation).
    #[arg(long, env = "PGM_STOP_GRACE_SECS", default_value_t = 10)]
    pub stop_grace_secs: u64,
    /// Seconds to wait for PostgREST to confirm a config reload in its log.
    #[arg(long, env = "PGM_RELOAD_TIMEOUT_SECS", default_value_t = 10)]
    pub reload_timeout_secs: u64,
    /// How a change only a new container can make is carried out: `bluegreen` starts the new
    /// container beside the serving one and switches Caddy's route once it serves; `recreate`
    /// removes the old one first (clients see errors for a cold start).
    #[arg(long, env = "PGM_REPLACE", default_value = "bluegreen", value_parser = ["bluegreen", "recreate"])]
    pub replace: String,
    /// Seconds a blue/green replacement waits for the new container to serve (`/ready`)
    /// before it gives up, removes it and leaves the old one serving.
    #[arg(long, env = "PGM_REPLACE_TIMEOUT_SECS", default_value_t = 60)]
    pub replace_timeout_secs: u64,
    /// Process (thread) limit of each container.
    #[arg(long, env = "PGM_PIDS_LIMIT", default_value_t = 512)]
    pub pids_limit: i64,
    /// Seconds between Docker health checks of each container; 0: none (the manager's own
    /// `/ready` probe is the health then; a check is a process exec'd in the container, which
    /// at a thousand containers costs the host more CPU than everything else).
    #[arg(long, env = "PGM_HEALTHCHECK_SECS", default_value_t = 30)]
    pub healthcheck_secs: u64,
    /// Docker daemon address (as for the docker CLI); the local socket when unset.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// What runs each project's PostgREST: `docker`, one container on this Docker host (a
    /// config change is a reload signal), or `swarm`, one Swarm service on an attachable
    /// overlay network (`PGM_NETWORK`), its config in a Swarm secret, every change a rolling
    /// service update. The daemon must be a Swarm manager.
    #[arg(long, env = "PGM_ORCHESTRATOR", default_value = "docker", value_parser = ["docker", "swarm"])]
    pub orchestrator: String,
    /// With `swarm`: how clients reach a service. `vip`, one virtual IP per service that
    /// Swarm balances with the kernel's IPVS; `dnsrr`, the service name resolves to its
    /// tasks' own addresses (for kernels without IPVS, where a virtual IP answers "No route
    /// to host").
    #[arg(long, env = "PGM_SWARM_ENDPOINT_MODE", default_value = "vip", value_parser = ["vip", "dnsrr"])]
    pub swarm_endpoint_mode: String,
    /// Caddy's admin API (`http://<host>:<port>`): when set, the manager keeps one route per
    /// project there (`/db/<id>/` -> `postgrest-<id>:3000`). Unset: no Caddy calls at all.
    #[arg(long, env = "PGM_CADDY_ADMIN_URL")]
    pub caddy_admin_url: Option<String>,
    /// PgBouncer's `[databases]` include file: when set, the manager writes one entry per
    /// project database there (with its `pool_size` and `reserve_pool`) and sends PgBouncer
    /// SIGHUP when it changed. Unset: PgBouncer is left alone.
    #[arg(long, env = "PGM_PGBOUNCER_INCLUDE")]
    pub pgbouncer_include: Option<std::path::PathBuf>,
    /// PgBouncer's container, signalled after the include changed.
    #[arg(
        long,
        env = "PGM_PGBOUNCER_CONTAINER",
        default_value = "launchdb-pgbouncer"
    )]
    pub pgbouncer_container: String,
    /// Where PgBouncer finds PostgreSQL: the `host=` of every include entry.
    #[arg(long, env = "PGM_PGBOUNCER_SERVER_HOST", default_value = "postgres")]
    pub pgbouncer_server_host: String,
    /// The `port=` of every include entry.
    #[arg(long, env = "PGM_PGBOUNCER_SERVER_PORT", default_value_t = 5432)]
    pub pgbouncer_server_port: u16,
    /// Address of the HTTP API. Loopback unless asked: the stack's container asks for
    /// `0.0.0.0:9000` and publishes it on the host's loopback only.
    #[arg(long, env = "PGM_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Key every API call must send as `X-Internal-Key` (at least 32 characters). Prefer the
    /// environment variable: command lines are visible to every user of the host.
    #[arg(long, env = "INTERNAL_API_KEY", hide_env_values = true)]
    pub internal_api_key: Option<String>,
    /// Seconds an API call waits for the loop to converge before answering 504.
    #[arg(long, env = "PGM_API_TIMEOUT_SECS", default_value_t = 60)]
    pub api_timeout_secs: u64,
    /// Open API connections at most; more are closed at once.
    #[arg(long, env = "PGM_API_MAX_CONNECTIONS", default_value_t = 256)]
    pub api_max_connections: usize,
    /// Seconds a client has to send a request head; idle keep-alive connections are closed
    /// after as long.
    #[arg(long, env = "PGM_API_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub api_header_timeout_secs: u64,
    /// Run the controller without the HTTP API.
    #[arg(long, env = "PGM_NO_API")]
    pub no_api: bool,
    /// Address of the Prometheus metrics listener (`GET /metrics`, no key: it shows no secret
    /// and no project id). Off when unset; never the API's address.
    #[arg(long, env = "PGM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` or as `json` (one object per line).
    #[arg(long, env = "PGM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

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
    /// Make the project's PostgREST reload its config (bumps `reload_token`), or with
    /// `--schema` its schema cache (bumps `schema_reload_token`: SIGUSR1, e.g. after a
    /// migration; the config and the container stay).
    Reload {
        #[command(flatten)]
        state: StateArgs,
        /// Reload the schema cache instead of the config.
        #[arg(long)]
        schema: bool,
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
    /// Show one project, or all: desired state, actual state, health, last error. With
    /// `--api` (and the key in INTERNAL_API_KEY) it asks the running manager instead, which
    /// also knows readiness from its own probe and each project's last 20 events.
    Status {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        docker: DockerArgs,
        #[command(flatten)]
        api: ApiArgs,
        project_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What the manager's loop would do now, per project, and why, without doing anything:
    /// read state/, list Docker, plan. Takes `serve`'s settings, so it renders exactly as the
    /// manager does. Exit code 0 when everything is converged, 2 when there is work.
    Plan {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The project's config as the manager would write it, against the one on disk (what the
    /// container loaded), secrets masked. Exit code 0 when they are the same, 2 when not.
    Diff {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        project_id: String,
    },
}

/// Asking a running manager's API.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The manager's API (`http://127.0.0.1:9000`). Unset: read files and Docker only.
    #[arg(long = "api", env = "PGM_API", value_name = "URL")]
    pub url: Option<String>,
    /// The API key; keep it in the environment, command lines are visible to every user.
    #[arg(long = "api-key", env = "INTERNAL_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
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
    /// What the manager runs each project's PostgREST as: `docker`, one container on this Docker host (a
    /// config change is a reload signal), or `swarm`, one Swarm service on an attachable
    /// overlay network (`PGM_NETWORK`), its config in a Swarm secret, every change a rolling
    /// service update. The daemon must be a Swarm manager.
    #[arg(long, env = "PGM_ORCHESTRATOR", default_value = "docker", value_parser = ["docker", "swarm"])]
    pub orchestrator: String,
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
