//! Settings: every one a flag with an environment variable and a default, parsed and checked
//! once, before anything starts. Nothing here is global; `main` passes what each part needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::configs::ConfigDir;
use crate::reconcile::LoopConfig;
use crate::render::Template;
use crate::spec::{Secret, StateDir};

/// Signals a config reload may be sent as. SIGUSR2 is PostgREST's own; SIGHUP only works
/// through the custom image's wrapper, which maps it to SIGUSR2.
const RELOAD_SIGNALS: [&str; 2] = ["SIGUSR2", "SIGHUP"];

/// The shortest `INTERNAL_API_KEY` the API accepts.
pub const MIN_API_KEY_LEN: usize = 32;

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
    State(crate::cli::StateCommand),
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
    /// UID PostgREST runs as in its container; it owns the rendered config files.
    #[arg(long, env = "PGM_CONFIG_UID", default_value_t = 1000)]
    pub config_uid: u32,
    /// Database host for projects that do not set `db_host` (PgBouncer).
    #[arg(long, env = "PGM_DB_HOST", default_value = "pgbouncer")]
    pub db_host: String,
    /// Database port for projects that do not set `db_port`.
    #[arg(long, env = "PGM_DB_PORT", default_value_t = 6432)]
    pub db_port: u16,
    /// Public domain; when set, `openapi-server-proxy-uri` is `https://<DOMAIN>/<project_id>`.
    #[arg(long, env = "DOMAIN")]
    pub domain: Option<String>,
    /// Memory limit of each container, in MiB.
    #[arg(long, env = "PGM_MEMORY_MB", default_value_t = 256)]
    pub memory_mb: i64,
    /// Process (thread) limit of each container.
    #[arg(long, env = "PGM_PIDS_LIMIT", default_value_t = 512)]
    pub pids_limit: i64,
    /// Seconds between Docker health checks of each container.
    #[arg(long, env = "PGM_HEALTHCHECK_SECS", default_value_t = 30)]
    pub healthcheck_secs: u64,
    /// Docker daemon address (as for the docker CLI); the local socket when unset.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Address of the HTTP API.
    #[arg(long, env = "PGM_LISTEN", default_value = "0.0.0.0:9000")]
    pub listen: SocketAddr,
    /// Key every API call must send as `X-Internal-Key` (at least 32 characters). Prefer the
    /// environment variable: command lines are visible to every user of the host.
    #[arg(long, env = "INTERNAL_API_KEY", hide_env_values = true)]
    pub internal_api_key: Option<String>,
    /// Seconds an API call waits for the loop to converge before answering 504.
    #[arg(long, env = "PGM_API_TIMEOUT_SECS", default_value_t = 60)]
    pub api_timeout_secs: u64,
    /// Run the controller without the HTTP API.
    #[arg(long, env = "PGM_NO_API")]
    pub no_api: bool,
}

/// Validated settings for `serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reconcile: LoopConfig,
    pub docker_host: Option<String>,
    pub api: Option<ApiSettings>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub key: Secret,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct SettingsError {
    setting: &'static str,
    reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        setting,
        reason: reason.into(),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, SettingsError> {
    std::path::absolute(path).map_err(|e| invalid("PGM_CONFIG_DIR", e.to_string()))
}

/// Docker label values and network names: keep them to a plain, unambiguous alphabet.
fn check_name(setting: &'static str, value: &str) -> Result<(), SettingsError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            setting,
            "use 1 to 64 letters, digits, '_', '-' or '.'",
        ))
    }
}

impl TryFrom<ServeArgs> for Settings {
    type Error = SettingsError;

    fn try_from(args: ServeArgs) -> Result<Settings, SettingsError> {
        check_name("PGM_INSTANCE", &args.instance)?;
        check_name("PGM_NETWORK", &args.network)?;
        if args.image.is_empty() || args.image.chars().any(char::is_whitespace) {
            return Err(invalid(
                "PGM_IMAGE",
                "name an image, e.g. launchdb/postgrest:v1",
            ));
        }
        if args.resync_secs == 0 {
            return Err(invalid("PGM_RESYNC_SECS", "must be at least 1"));
        }
        if !(1..=64).contains(&args.concurrency) {
            return Err(invalid("PGM_CONCURRENCY", "must be between 1 and 64"));
        }
        let reload_signal = args.reload_signal.to_ascii_uppercase();
        let reload_signal = if reload_signal.starts_with("SIG") {
            reload_signal
        } else {
            format!("SIG{reload_signal}")
        };
        if !RELOAD_SIGNALS.contains(&reload_signal.as_str()) {
            return Err(invalid("PGM_RELOAD_SIGNAL", "must be SIGUSR2 or SIGHUP"));
        }
        if args.db_host.is_empty()
            || !args
                .db_host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(invalid("PGM_DB_HOST", "use a host name or IPv4 address"));
        }
        if args.db_port == 0 {
            return Err(invalid("PGM_DB_PORT", "must be between 1 and 65535"));
        }
        if let Some(domain) = &args.domain {
            if domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err(invalid("DOMAIN", "use a domain name such as example.com"));
            }
        }
        if args.memory_mb < 16 {
            return Err(invalid("PGM_MEMORY_MB", "must be at least 16"));
        }
        if args.pids_limit < 16 {
            return Err(invalid("PGM_PIDS_LIMIT", "must be at least 16"));
        }
        if args.healthcheck_secs == 0 {
            return Err(invalid("PGM_HEALTHCHECK_SECS", "must be at least 1"));
        }
        if args.api_timeout_secs == 0 {
            return Err(invalid("PGM_API_TIMEOUT_SECS", "must be at least 1"));
        }
        let config_dir = absolute(&args.config_dir)?;
        let host_config_dir = match args.host_config_dir {
            Some(dir) if dir.is_absolute() => dir,
            Some(_) => {
                return Err(invalid(
                    "HOST_CONFIG_DIR",
                    "must be an absolute path on the Docker host",
                ))
            }
            None => config_dir.clone(),
        };
        let api = if args.no_api {
            None
        } else {
            let key = args.internal_api_key.ok_or_else(|| {
                invalid(
                    "INTERNAL_API_KEY",
                    "is required to serve the API (or pass --no-api to run the controller alone)",
                )
            })?;
            if key.chars().count() < MIN_API_KEY_LEN {
                return Err(invalid(
                    "INTERNAL_API_KEY",
                    "must be at least 32 characters",
                ));
            }
            Some(ApiSettings {
                listen: args.listen,
                key: Secret::new(key),
                timeout: Duration::from_secs(args.api_timeout_secs),
            })
        };
        let template = Template {
            instance: args.instance,
            image: args.image,
            network: args.network,
            host_config_dir,
            db_host: args.db_host,
            db_port: args.db_port,
            domain: args.domain,
            uid: args.config_uid,
            memory_bytes: args.memory_mb << 20,
            pids_limit: args.pids_limit,
            healthcheck_interval_secs: args.healthcheck_secs,
        };
        Ok(Settings {
            reconcile: LoopConfig {
                state: StateDir::new(args.state.state_dir),
                configs: ConfigDir::new(config_dir, args.config_uid),
                template,
                resync: Duration::from_secs(args.resync_secs),
                concurrency: args.concurrency,
                reload_signal,
            },
            docker_host: args.docker_host,
            api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["postgrest-manager", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            unreachable!()
        };
        Settings::try_from(*serve).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let settings = parse(&["--no-api"]).unwrap();
        let c = &settings.reconcile;
        assert_eq!(c.template.image, "launchdb/postgrest:v1");
        assert_eq!(c.template.network, "launchdb-internal");
        assert_eq!(c.template.instance, "default");
        assert_eq!((c.concurrency, c.resync.as_secs()), (4, 30));
        assert_eq!(c.reload_signal, "SIGUSR2");
        assert!(c.configs.path().is_absolute());
        assert_eq!(c.template.host_config_dir, c.configs.path());
        assert!(settings.api.is_none());
    }

    #[test]
    fn rejects_bad_settings() {
        let key = ["--internal-api-key", "k".repeat(32).leak()];
        for (args, setting) in [
            (vec!["--concurrency", "0"], "PGM_CONCURRENCY"),
            (vec!["--reload-signal", "SIGKILL"], "PGM_RELOAD_SIGNAL"),
            (vec!["--instance", "a b"], "PGM_INSTANCE"),
            (vec!["--resync-secs", "0"], "PGM_RESYNC_SECS"),
            (vec!["--host-config-dir", "relative"], "HOST_CONFIG_DIR"),
            (vec![], "INTERNAL_API_KEY"),
            (vec!["--internal-api-key", "short"], "INTERNAL_API_KEY"),
        ] {
            let mut args = args;
            if setting != "INTERNAL_API_KEY" {
                args.extend_from_slice(&key);
            }
            let error = parse(&args).unwrap_err();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
        assert!(parse(&key).is_ok());
        assert_eq!(
            parse(&["--no-api", "--reload-signal", "hup"])
                .unwrap()
                .reconcile
                .reload_signal,
            "SIGHUP"
        );
    }
}
