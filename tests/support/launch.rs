//! Starting `postgrest-manager serve` as a child process, shared by the integration tests
//! (`tests/support/manager.rs`) and the benchmarks (`benches/scenarios/manager.rs`, through a
//! `#[path]`): the command line, a fresh API key, and what both read back from the manager's
//! log (the API's bound address, finished passes).
//!
//! The API always listens on `127.0.0.1:0`: the kernel picks a free port and the manager logs
//! the address it bound (`API listening listen=127.0.0.1:NNNNN`), so two harnesses can never
//! pick the same port and talk to each other's manager.

#![allow(dead_code)] // The tests and the benches each use a different part.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The log filter the tests run with: INFO, plus the loop's DEBUG lines, among them
/// `pass finished pass=<n>` after every pass that reached planning.
pub const TEST_LOG_FILTER: &str = "info,postgrest_manager::reconcile=debug";
/// Logged (INFO) once the API's socket is bound, with `listen=<address>`.
pub const API_LISTENING: &str = "API listening";
/// Logged (DEBUG, target `postgrest_manager::reconcile`) after every pass that reached
/// planning, with `pass=<n>`.
pub const PASS_FINISHED: &str = "pass finished";
/// Logged (INFO) once the first full pass planned nothing left to do.
pub const FIRST_RECONCILE: &str = "first full reconcile done";

/// How to start `postgrest-manager serve`. Everything is explicit: the child inherits no
/// `PGM_*`, `INTERNAL_API_KEY` or `RUST_LOG` from the caller's environment. It inherits
/// `DOCKER_HOST`, the daemon the tests' own `docker` commands talk to, unless told another.
#[derive(Debug, Clone)]
pub struct Serve {
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub instance: String,
    pub network: String,
    pub image: String,
    pub resync_secs: u64,
    /// `--concurrency`; the product default when `None`.
    pub concurrency: Option<usize>,
    /// The API on `127.0.0.1:0` with this key; `--no-api` when `None`.
    pub api_key: Option<String>,
    /// `--api-timeout-secs`; the product default when `None`.
    pub api_timeout_secs: Option<u64>,
    /// `DOCKER_HOST`; the caller's (else the local socket) when `None`.
    pub docker_host: Option<String>,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// Appended after the standard arguments.
    pub args: Vec<String>,
    /// Set last, so they override everything above.
    pub env: Vec<(String, String)>,
}

impl Serve {
    /// The command, with stdin closed and stdout and stderr piped (logs go to stderr).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config-dir")
            .arg(&self.config_dir)
            .args(["--instance", &self.instance])
            .args(["--network", &self.network])
            .args(["--image", &self.image])
            .args(["--resync-secs", &self.resync_secs.to_string()]);
        if let Some(concurrency) = self.concurrency {
            command.args(["--concurrency", &concurrency.to_string()]);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGM_") {
                command.env_remove(key);
            }
        }
        command
            .env_remove("INTERNAL_API_KEY")
            .env("RUST_LOG", &self.log_filter)
            // tracing's formatter colours only a terminal, but say it anyway: the harnesses
            // match `key=value` text.
            .env("NO_COLOR", "1");
        match &self.api_key {
            Some(key) => {
                command
                    .args(["--listen", "127.0.0.1:0"])
                    .env("INTERNAL_API_KEY", key);
            }
            None => {
                command.arg("--no-api");
            }
        }
        if let Some(secs) = self.api_timeout_secs {
            command.args(["--api-timeout-secs", &secs.to_string()]);
        }
        if let Some(host) = &self.docker_host {
            command.env("DOCKER_HOST", host);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// A fresh API key: 48 hex characters from the kernel's random source, different for every
/// manager, so a test can only ever authenticate against its own.
pub fn api_key() -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address in an `API listening listen=<address>` line.
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains(API_LISTENING) {
        return None;
    }
    field(line, "listen")?.parse().ok()
}

/// The number in a `pass finished pass=<n>` line.
pub fn finished_pass(line: &str) -> Option<u64> {
    if !line.contains(PASS_FINISHED) {
        return None;
    }
    field(line, "pass")?.parse().ok()
}

/// Whether a `pass finished` line is a full pass's (`scoped=None`: every project planned),
/// not one of a pass that looked at named projects alone.
pub fn full_pass(line: &str) -> bool {
    finished_pass(line).is_some() && field(line, "scoped") == Some("None")
}

/// The value of ` key=value` in a tracing fmt line (values here never hold spaces).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), so `key=value` text matches even if a
/// formatter coloured it.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
