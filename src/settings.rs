//! Settings: every one a flag with an environment variable and a default, parsed and checked
//! once, before anything starts. Nothing here is global; `main` passes what each part needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::serve::ServeLimits;
use crate::args::ServeArgs;
use crate::caddy::AdminUrl;
use crate::configs::ConfigDir;
use crate::pgbouncer::PgBouncerConfig;
use crate::plan::Orchestrator;
use crate::reconcile::LoopConfig;
use crate::render::Template;
use crate::runtime::swarm::EndpointMode;
use crate::spec::Secret;
use crate::spec_key::SpecKey;
use crate::state_dir::StateDir;
use crate::telemetry::LogFormat;

/// Signals a config reload may be sent as. SIGUSR2 is PostgREST's own; SIGHUP only works
/// through the custom image's wrapper, which maps it to SIGUSR2.
const RELOAD_SIGNALS: [&str; 2] = ["SIGUSR2", "SIGHUP"];

/// The shortest `INTERNAL_API_KEY` the API accepts.
pub const MIN_API_KEY_LEN: usize = 32;

pub use crate::args::DEFAULT_CONFIG_UID;

/// The name of the account with `uid` in `passwd` (the text of `/etc/passwd`) if it is one a
/// person can log in as: a shell that is not `nologin`, `false` or `sync`. Such a user could
/// read every project's secrets if the configs were handed to that UID.
pub fn login_account(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, entry_uid, _, _, _, shell] = fields[..] else {
            return None;
        };
        if entry_uid.parse::<u32>() != Ok(uid) {
            return None;
        }
        let program = shell.trim().rsplit('/').next().unwrap_or_default();
        let no_login = matches!(program, "nologin" | "false" | "sync");
        (!no_login).then(|| name.to_owned())
    })
}

/// Refuses a `PGM_CONFIG_UID` that is a host login account, unless it is the manager's own
/// (who can read everything it writes anyway).
fn check_config_uid(uid: u32, passwd_path: &Path) -> Result<(), SettingsError> {
    if uid == rustix::process::geteuid().as_raw() {
        return Ok(());
    }
    let passwd = std::fs::read_to_string(passwd_path).map_err(|e| {
        invalid(
            "PGM_HOST_PASSWD",
            format!(
                "cannot read {} to check PGM_CONFIG_UID against the host's accounts: {e}",
                passwd_path.display()
            ),
        )
    })?;
    match login_account(&passwd, uid) {
        Some(name) => Err(invalid(
            "PGM_CONFIG_UID",
            format!(
                "UID {uid} is the host login account {name:?}, who could then read every \
                 project's secrets; use a UID with no account, such as the default \
                 {DEFAULT_CONFIG_UID}"
            ),
        )),
        None => Ok(()),
    }
}

/// Validated settings for `serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reconcile: LoopConfig,
    pub docker_host: Option<String>,
    /// `PGM_ORCHESTRATOR`: containers or Swarm services.
    pub orchestrator: Orchestrator,
    /// `PGM_SWARM_ENDPOINT_MODE`: a virtual IP per service, or DNS round robin.
    pub swarm_endpoint: EndpointMode,
    pub api: Option<ApiSettings>,
    /// Caddy's admin API, when the manager keeps the routes there.
    pub caddy: Option<AdminUrl>,
    /// Where `GET /metrics` is served; no metrics at all when `None`.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub key: Secret,
    pub timeout: Duration,
    pub limits: ServeLimits,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct SettingsError {
    setting: &'static str,
    reason: String,
}

/// `PGM_ORCHESTRATOR`'s value (clap accepted only `docker` or `swarm`).
pub fn orchestrator(value: &str) -> Orchestrator {
    match value {
        "swarm" => Orchestrator::Swarm,
        _ => Orchestrator::Docker,
    }
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
        if !(args.cpus.is_finite() && (0.01..=1024.0).contains(&args.cpus)) {
            return Err(invalid("PGM_CPUS", "must be between 0.01 and 1024"));
        }
        if !(1..=300).contains(&args.stop_grace_secs) {
            return Err(invalid("PGM_STOP_GRACE_SECS", "must be between 1 and 300"));
        }
        if !(1..=300).contains(&args.reload_timeout_secs) {
            return Err(invalid(
                "PGM_RELOAD_TIMEOUT_SECS",
                "must be between 1 and 300",
            ));
        }
        if !(1..=600).contains(&args.replace_timeout_secs) {
            return Err(invalid(
                "PGM_REPLACE_TIMEOUT_SECS",
                "must be between 1 and 600",
            ));
        }
        if args.pids_limit < 16 {
            return Err(invalid("PGM_PIDS_LIMIT", "must be at least 16"));
        }
        if args.api_timeout_secs == 0 {
            return Err(invalid("PGM_API_TIMEOUT_SECS", "must be at least 1"));
        }
        if args.api_max_connections == 0 {
            return Err(invalid("PGM_API_MAX_CONNECTIONS", "must be at least 1"));
        }
        if args.api_header_timeout_secs == 0 {
            return Err(invalid("PGM_API_HEADER_TIMEOUT_SECS", "must be at least 1"));
        }
        check_config_uid(args.config_uid, &args.host_passwd)?;
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
                limits: ServeLimits {
                    header_read_timeout: Duration::from_secs(args.api_header_timeout_secs),
                    max_connections: args.api_max_connections,
                    ..ServeLimits::default()
                },
            })
        };
        // The metrics carry no key: they never share the API's listener.
        if let (Some(metrics), Some(api)) = (args.metrics_listen, &api) {
            if metrics == api.listen && metrics.port() != 0 {
                return Err(invalid(
                    "PGM_METRICS_LISTEN",
                    "must differ from PGM_LISTEN: the metrics have no key and never share the API's port",
                ));
            }
        }
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
            nano_cpus: (args.cpus * 1e9).round() as i64,
            pids_limit: args.pids_limit,
            healthcheck_interval_secs: args.healthcheck_secs,
            stop_grace_secs: args.stop_grace_secs,
            // A key of this process only; `serve` replaces it with the persistent one from
            // the config directory (`SpecKey::load_or_create`) before the loop starts.
            spec_key: SpecKey::random().map_err(|e| invalid("PGM_CONFIG_DIR", e.to_string()))?,
        };
        let caddy = args
            .caddy_admin_url
            .as_deref()
            .map(str::parse::<AdminUrl>)
            .transpose()
            .map_err(|e| invalid("PGM_CADDY_ADMIN_URL", e.to_string()))?;
        let orchestrator = orchestrator(&args.orchestrator);
        if orchestrator == Orchestrator::Swarm && args.pgbouncer_include.is_some() {
            // The pool sync signals a PgBouncer container on this host; a Swarm task may run
            // on any node and cannot be signalled through Swarm.
            return Err(invalid(
                "PGM_PGBOUNCER_INCLUDE",
                "is not supported with PGM_ORCHESTRATOR=swarm",
            ));
        }
        let pgbouncer = match args.pgbouncer_include {
            None => None,
            Some(include) => Some(pgbouncer_config(
                include,
                args.pgbouncer_container,
                args.pgbouncer_server_host,
                args.pgbouncer_server_port,
            )?),
        };
        Ok(Settings {
            reconcile: LoopConfig {
                state: StateDir::new(args.state.state_dir),
                configs: ConfigDir::new(config_dir, args.config_uid),
                template,
                resync: Duration::from_secs(args.resync_secs),
                concurrency: args.concurrency,
                reload_signal,
                reload_timeout: Duration::from_secs(args.reload_timeout_secs),
                admin_port: crate::render::ADMIN_PORT,
                pgbouncer,
                blue_green: args.replace == "bluegreen",
                replace_timeout: Duration::from_secs(args.replace_timeout_secs),
            },
            docker_host: args.docker_host,
            orchestrator,
            swarm_endpoint: match args.swarm_endpoint_mode.as_str() {
                "dnsrr" => EndpointMode::DnsRoundRobin,
                _ => EndpointMode::VirtualIp,
            },
            api,
            caddy,
            metrics_listen: args.metrics_listen,
            log_format: args.log_format,
        })
    }
}

/// PgBouncer's settings, checked: an absolute include path with a file name, and a container
/// name and server host the ini and Docker read as written.
fn pgbouncer_config(
    include: PathBuf,
    container: String,
    server_host: String,
    server_port: u16,
) -> Result<PgBouncerConfig, SettingsError> {
    if !include.is_absolute() || include.file_name().is_none() {
        return Err(invalid(
            "PGM_PGBOUNCER_INCLUDE",
            "must be an absolute path to a file",
        ));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !plain(&container) {
        return Err(invalid(
            "PGM_PGBOUNCER_CONTAINER",
            "must be a container name or id",
        ));
    }
    if !plain(&server_host) || server_port == 0 {
        return Err(invalid(
            "PGM_PGBOUNCER_SERVER_HOST",
            "must be a host name or address (and the port 1-65535)",
        ));
    }
    Ok(PgBouncerConfig {
        include,
        container,
        server_host,
        server_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["postgrest-manager", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            panic!("parsed a subcommand other than serve")
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
        assert_eq!(c.reload_timeout, Duration::from_secs(10));
        assert_eq!(c.template.nano_cpus, 1_000_000_000);
        assert_eq!(c.template.stop_grace_secs, 10);
        assert!(c.configs.path().is_absolute());
        assert_eq!(c.template.host_config_dir, c.configs.path());
        assert!(settings.api.is_none());
        assert_eq!(c.template.uid, DEFAULT_CONFIG_UID);
        assert!(settings.metrics_listen.is_none());
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(c.pgbouncer, None, "PgBouncer is left alone unless asked");
        let with = parse(&["--no-api", "--pgbouncer-include", "/pgb/databases.ini"]).unwrap();
        assert_eq!(
            with.reconcile.pgbouncer,
            Some(PgBouncerConfig {
                include: "/pgb/databases.ini".into(),
                container: "launchdb-pgbouncer".into(),
                server_host: "postgres".into(),
                server_port: 5432,
            })
        );
    }

    #[test]
    fn metrics_and_log_format() {
        let settings = parse(&[
            "--no-api",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            settings.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(settings.log_format, LogFormat::Json);
        assert!(parse(&["--no-api", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn login_accounts_are_found_by_uid_and_shell() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      sync:x:4:65534:sync:/bin:/bin/sync\n\
                      svc:x:999:999::/nonexistent:/bin/false\n\
                      # a comment line\n\
                      alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
                      bob:x:1001:1001::/home/bob:\n\
                      broken line\n";
        assert_eq!(login_account(passwd, 1000).as_deref(), Some("alice"));
        // An empty shell field is /bin/sh.
        assert_eq!(login_account(passwd, 1001).as_deref(), Some("bob"));
        for uid in [1, 4, 999, 10001] {
            assert_eq!(login_account(passwd, uid), None, "{uid}");
        }
    }

    #[test]
    fn a_config_uid_of_a_login_account_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/zsh\n",
        )
        .unwrap();
        let passwd = passwd.to_str().unwrap();
        let error =
            parse(&["--no-api", "--config-uid", "1000", "--host-passwd", passwd]).unwrap_err();
        assert!(error.contains("PGM_CONFIG_UID"), "{error}");
        assert!(error.contains("alice"), "{error}");
        assert!(parse(&["--no-api", "--config-uid", "1002", "--host-passwd", passwd]).is_ok());
        // The manager's own UID is allowed: it reads everything it writes anyway.
        let own = rustix::process::geteuid().as_raw().to_string();
        assert!(parse(&["--no-api", "--config-uid", &own, "--host-passwd", passwd]).is_ok());
        let missing = dir.path().join("missing");
        let error = parse(&["--no-api", "--host-passwd", missing.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("PGM_HOST_PASSWD"), "{error}");
    }

    #[test]
    fn rejects_bad_settings() {
        let key = ["--internal-api-key", "k".repeat(32).leak()];
        for (args, setting) in [
            (vec!["--concurrency", "0"], "PGM_CONCURRENCY"),
            (vec!["--reload-signal", "SIGKILL"], "PGM_RELOAD_SIGNAL"),
            (vec!["--instance", "a b"], "PGM_INSTANCE"),
            (vec!["--resync-secs", "0"], "PGM_RESYNC_SECS"),
            (vec!["--cpus", "0"], "PGM_CPUS"),
            (vec!["--cpus", "NaN"], "PGM_CPUS"),
            (vec!["--stop-grace-secs", "0"], "PGM_STOP_GRACE_SECS"),
            (vec!["--host-config-dir", "relative"], "HOST_CONFIG_DIR"),
            (vec![], "INTERNAL_API_KEY"),
            (vec!["--internal-api-key", "short"], "INTERNAL_API_KEY"),
            (
                vec![
                    "--listen",
                    "127.0.0.1:9000",
                    "--metrics-listen",
                    "127.0.0.1:9000",
                ],
                "PGM_METRICS_LISTEN",
            ),
            (
                vec!["--caddy-admin-url", "https://caddy:2019"],
                "PGM_CADDY_ADMIN_URL",
            ),
            (
                vec!["--pgbouncer-include", "relative.ini"],
                "PGM_PGBOUNCER_INCLUDE",
            ),
            (
                vec![
                    "--pgbouncer-include",
                    "/a.ini",
                    "--pgbouncer-container",
                    "a b",
                ],
                "PGM_PGBOUNCER_CONTAINER",
            ),
            (
                vec![
                    "--pgbouncer-include",
                    "/a.ini",
                    "--pgbouncer-server-host",
                    "a;b",
                ],
                "PGM_PGBOUNCER_SERVER_HOST",
            ),
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
