//! The manager under test: `target/release/postgrest-manager serve` as a child process,
//! started with the command line the integration tests use (`tests/support/launch.rs`), its
//! log lines (stderr) kept with the instant each arrived, and its cost read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::env::{Bench, Who};
use crate::launch::{self, Serve};

/// The line the manager logs (at INFO) once its first full pass planned nothing left to do.
pub const FIRST_RECONCILE: &str = launch::FIRST_RECONCILE;

/// How a manager is started.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub concurrency: usize,
    pub resync_secs: u64,
    /// `DOCKER_HOST`, e.g. the counting proxy; the local socket when `None`.
    pub docker_host: Option<String>,
    /// The API's key: the API listens on a port of the kernel's choosing on loopback, read
    /// back from the manager's log; `--no-api` when `None`.
    pub api_key: Option<String>,
    pub log_file: PathBuf,
    /// `--metrics-listen 127.0.0.1:0`, its address read back from the log.
    pub metrics: bool,
    /// More of its environment, e.g. `PGM_HEALTHCHECK_SECS`.
    pub env: Vec<(String, String)>,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    more: Notify,
}

pub struct Manager {
    child: Child,
    pid: u32,
    log: Arc<Log>,
    cleanup: crate::env::Cleanup,
    /// Its instance: the manager claims it on the daemon (a volume `pgm-lease-<instance>`)
    /// for its state directory, and keeps the claim when it stops.
    instance: String,
    pub started: Instant,
    /// Where the API listens, when it is on.
    pub api: Option<SocketAddr>,
    /// Where `/metrics` is served, when it is on.
    pub metrics: Option<SocketAddr>,
}

impl Manager {
    pub async fn start(bench: &Bench, cfg: &ManagerConfig) -> Result<Manager, String> {
        let serve = Serve {
            binary: bench.binary.clone(),
            state_dir: cfg.state_dir.clone(),
            config_dir: cfg.config_dir.clone(),
            instance: bench.instance(Who::Manager),
            network: bench.network.clone(),
            image: bench.image.clone(),
            resync_secs: cfg.resync_secs,
            concurrency: Some(cfg.concurrency),
            api_key: cfg.api_key.clone(),
            api_timeout_secs: None,
            docker_host: cfg.docker_host.clone(),
            // INFO only: the loop's DEBUG lines would cost the idle scenario a little CPU.
            // PGMT_BENCH_MANAGER_LOG overrides it to see one path's steps (a tracing filter,
            // e.g. `info,postgrest_manager::reconcile=debug`).
            log_filter: std::env::var("PGMT_BENCH_MANAGER_LOG").unwrap_or_else(|_| "info".into()),
            args: if cfg.metrics {
                vec!["--metrics-listen".into(), "127.0.0.1:0".into()]
            } else {
                Vec::new()
            },
            env: cfg.env.clone(),
        };
        let mut command = Command::from(serve.command());
        command.stdout(Stdio::null()).kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bench.binary.display()))?;
        let pid = child.id().expect("a running child");
        bench.cleanup.register_pid(pid);
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped");
        let (sink, file) = (log.clone(), cfg.log_file.clone());
        tokio::spawn(async move {
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .await
                .ok();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                if let Some(out) = &mut out {
                    let _ = out.write_all(format!("{line}\n").as_bytes()).await;
                }
                sink.lines.lock().unwrap().push((at, line));
                sink.more.notify_waiters();
            }
            sink.more.notify_waiters();
        });
        let mut manager = Manager {
            child,
            pid,
            log,
            cleanup: bench.cleanup.clone(),
            instance: bench.instance(Who::Manager),
            started,
            api: None,
            metrics: None,
        };
        if cfg.api_key.is_some() {
            manager
                .wait_log(launch::API_LISTENING, Duration::from_secs(60))
                .await?;
            let line = manager.find_line(launch::API_LISTENING).unwrap_or_default();
            let addr = launch::listen_addr(&launch::strip_ansi(&line))
                .ok_or_else(|| format!("no address in the manager's line {line:?}"))?;
            manager.api = Some(addr);
        }
        if cfg.metrics {
            const METRICS: &str = "metrics listening";
            manager.wait_log(METRICS, Duration::from_secs(60)).await?;
            let line = manager.find_line(METRICS).unwrap_or_default();
            let line = launch::strip_ansi(&line);
            let addr = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))
                .and_then(|addr| addr.parse().ok())
                .ok_or_else(|| format!("no address in the manager's line {line:?}"))?;
            manager.metrics = Some(addr);
        }
        Ok(manager)
    }

    /// The first log line containing `needle`.
    fn find_line(&self, needle: &str) -> Option<String> {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, line)| line.contains(needle))
            .map(|(_, line)| line.clone())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for a log line containing `needle` (printed at any time since start); returns
    /// when it was read.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.log.more.notified();
            if let Some((at, _)) = self
                .log
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, line)| line.contains(needle))
            {
                return Ok(*at);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the manager exited ({status}) before logging {needle:?}; last lines:\n{}",
                    self.tail(10)
                ));
            }
            let wait = tokio::time::timeout_at(deadline, notified);
            if wait.await.is_err() {
                return Err(format!(
                    "no {needle:?} in the manager's log within {timeout:?}; last lines:\n{}",
                    self.tail(10)
                ));
            }
        }
    }

    /// The last `n` log lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.log.lines.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines containing `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// SIGTERM, then waits (the manager drains in-flight actions; containers keep running).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.cleanup.forget_pid(self.pid);
    }

    /// Stops the manager for good: also drops its claim on the instance, so the next
    /// scenario's manager (another state directory, the same instance) may start. Restarts of
    /// the same state directory (adoption) use `stop` and keep the claim, as in production.
    pub async fn retire(self) {
        let lease = crate::env::lease(&self.instance);
        self.stop().await;
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &lease])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Resident memory (VmRSS) and its peak (VmHWM), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// User plus system CPU time of a process so far, all threads (exited ones included), from
/// /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields after it are counted from its closing paren.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the full line, utime 14, stime 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total = ticks(14) + ticks(15);
    Duration::from_secs_f64(total as f64 / clock_ticks() as f64)
}

pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        crate::env::command_output("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100)
    })
}

/// Writes a project's state file the way an editor or a script would: a dotfile in the same
/// directory (the manager ignores those), then a rename.
pub fn write_state(dir: &Path, project: &str, contents: &str) {
    let tmp = dir.join(format!(".{project}.toml.tmp"));
    std::fs::write(&tmp, contents).expect("writing a state file");
    std::fs::rename(&tmp, dir.join(format!("{project}.toml"))).expect("renaming a state file");
}

/// The state file of a bench project: secrets derived from its id and a version.
pub fn state_text(project: &str, secret: &str, enabled: bool) -> String {
    let mut text =
        format!("jwt_secret = \"{secret}\"\nauthenticator_password = \"pw-{project}\"\n");
    if !enabled {
        text.push_str("enabled = false\n");
    }
    text
}

/// A JWT secret (at least 32 characters) for a project and a version.
pub fn secret(project: &str, version: u32) -> String {
    format!("bench-secret-{version}-{project}-0123456789abcdef0123456789abcdef")
}
