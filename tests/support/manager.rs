//! The manager binary as a test's child process: started through the shared launcher
//! ([`super::launch`]), its stdout and stderr captured into a log file, its API (when on)
//! found from its own log line and called with a tiny HTTP/1.1 client.
//!
//! Every manager is registered twice: with its [`TestEnv`], which kills and reaps it on drop
//! (also while a failed test unwinds), and with this thread's watch list, which every
//! [`wait_until`] consults, so a wait fails at once with the log's tail when a manager that
//! should be running has exited.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::launch::{self, Serve};
use super::{lock, signal, wait_until, TestEnv, COUNTER};

/// Whether a manager serves its API, and what its start waits for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `--no-api`; the start returns once the process runs.
    #[default]
    Off,
    /// The API on `127.0.0.1:0`; the start returns once `/readyz` answers 200 (the first full
    /// reconcile is done).
    Ready,
    /// The API on `127.0.0.1:0`; the start returns once `/healthz` answers 200 (for a
    /// manager that cannot become ready, e.g. without Docker).
    Serving,
}

/// How to start a manager; [`ManagerOpts::default`] is the env's instance, dirs and network,
/// no API, a 30 s resync.
#[derive(Default, Clone)]
pub struct ManagerOpts {
    pub api: Api,
    /// Instead of the env's instance.
    pub instance: Option<String>,
    /// Instead of the env's state dir.
    pub state_dir: Option<PathBuf>,
    /// Instead of the env's config dir.
    pub config_dir: Option<PathBuf>,
    /// Instead of 30. A test that waits for passes ([`Manager::wait_passes`]) needs a short
    /// one, so that the passes it waits for include a resync pass.
    pub resync_secs: Option<u64>,
    /// Instead of the test image.
    pub image: Option<String>,
    /// `--api-timeout-secs`, instead of 120.
    pub api_timeout_secs: Option<u64>,
    /// `DOCKER_HOST`, instead of the tests' own daemon (the caller's `DOCKER_HOST`, else the
    /// local socket).
    pub docker_host: Option<String>,
    /// Appended after the standard arguments.
    pub args: Vec<String>,
    /// Environment overrides, set last.
    pub env: Vec<(String, String)>,
    /// Run the manager inside this network namespace (`nsenter --net=<path>`), e.g. a
    /// private daemon's, so it reaches that daemon's containers; its API is then reached
    /// through the namespace too.
    pub netns: Option<PathBuf>,
}

impl ManagerOpts {
    /// No API, a one-second resync: for a test that waits for passes
    /// ([`Manager::wait_passes`]) before it asserts that nothing happened.
    pub fn quick_resync() -> ManagerOpts {
        ManagerOpts {
            resync_secs: Some(1),
            ..ManagerOpts::default()
        }
    }
}

thread_local! {
    /// The managers started on this thread (a test's own thread) that should be running.
    static WATCHED: RefCell<Vec<Watched>> = const { RefCell::new(Vec::new()) };
}

struct Watched {
    child: Weak<Mutex<Child>>,
    log_path: PathBuf,
    /// Set when the test stops the manager on purpose (kill, terminate, drop).
    stopping: Arc<AtomicBool>,
}

/// Panics, with the log's tail, if a manager started on this thread exited while the test
/// still expects it to run. Called by every [`wait_until`].
pub fn check_managers_alive(waiting_for: &str) {
    let dead = WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        watched.retain(|w| w.child.strong_count() > 0 && !w.stopping.load(Ordering::SeqCst));
        watched.iter().find_map(|w| {
            let child = w.child.upgrade()?;
            let status = lock(&child).try_wait().ok().flatten()?;
            Some((status, w.log_path.clone()))
        })
    });
    if let Some((status, log_path)) = dead {
        let log = launch::strip_ansi(&String::from_utf8_lossy(
            &fs::read(&log_path).unwrap_or_default(),
        ));
        panic!(
            "the manager exited ({status}) while the test waited for {waiting_for}; its log ends:\n{}",
            tail(&log, 30)
        );
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running `postgrest-manager serve`, its stdout and stderr captured into one log file.
pub struct Manager {
    child: Arc<Mutex<Child>>,
    stopping: Arc<AtomicBool>,
    pub pid: u32,
    log_path: PathBuf,
    readers: Vec<JoinHandle<()>>,
    resync_secs: u64,
    /// The API's bound address and this manager's key.
    api: Option<(SocketAddr, String)>,
    /// The network namespace it runs in, when not the test's own.
    netns: Option<PathBuf>,
}

impl Manager {
    /// Starts a manager with the env's settings and no API.
    pub fn start(env: &TestEnv) -> Manager {
        Manager::start_with(env, ManagerOpts::default())
    }

    /// Starts a manager with the env's settings, its API on, and waits until it is ready.
    pub fn start_api(env: &TestEnv) -> Manager {
        Manager::start_with(
            env,
            ManagerOpts {
                api: Api::Ready,
                ..ManagerOpts::default()
            },
        )
    }

    pub fn start_with(env: &TestEnv, opts: ManagerOpts) -> Manager {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log_path = env.root().join(format!("manager-{n}.log"));
        let resync_secs = opts.resync_secs.unwrap_or(30);
        let key = (opts.api != Api::Off).then(launch::api_key);
        let serve = Serve {
            binary: env!("CARGO_BIN_EXE_postgrest-manager").into(),
            state_dir: opts.state_dir.unwrap_or_else(|| env.state_dir.clone()),
            config_dir: opts.config_dir.unwrap_or_else(|| env.config_dir.clone()),
            instance: opts.instance.unwrap_or_else(|| env.instance.clone()),
            network: env.network.clone(),
            image: opts.image.unwrap_or_else(super::image),
            resync_secs,
            concurrency: None,
            api_key: key.clone(),
            api_timeout_secs: Some(opts.api_timeout_secs.unwrap_or(120)),
            docker_host: opts.docker_host,
            log_filter: launch::TEST_LOG_FILTER.into(),
            args: opts.args,
            env: opts.env,
        };
        let mut command = serve.command();
        if let Some(netns) = &opts.netns {
            command = in_netns(netns, &command);
        }
        let mut child = command.spawn().expect("postgrest-manager starts");
        let log = Arc::new(Mutex::new(fs::File::create(&log_path).expect("a log file")));
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for mut pipe in [stdout, stderr] {
            let log = Arc::clone(&log);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = lock(&log).write_all(&buf[..n]);
                }
            }));
        }
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        let stopping = Arc::new(AtomicBool::new(false));
        env.register(Arc::clone(&child));
        WATCHED.with(|watched| {
            watched.borrow_mut().push(Watched {
                child: Arc::downgrade(&child),
                log_path: log_path.clone(),
                stopping: Arc::clone(&stopping),
            });
        });
        let mut manager = Manager {
            child,
            stopping,
            pid,
            log_path,
            readers,
            resync_secs,
            api: None,
            netns: opts.netns,
        };
        if let Some(key) = key {
            let addr = wait_until("the manager to log the API's address", || {
                manager.log().lines().find_map(launch::listen_addr)
            });
            manager.api = Some((addr, key));
            let wanted = match opts.api {
                Api::Ready => "/readyz",
                _ => "/healthz",
            };
            wait_until(&format!("the API to answer 200 on {wanted}"), || {
                let response = manager.try_request("GET", wanted, None, None, &[]).ok()?;
                (response.status == 200).then_some(())
            });
        }
        manager
    }

    /// The file the manager's output goes to (it outlives the manager).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// Everything the manager printed so far, without terminal colour codes.
    pub fn log(&self) -> String {
        let raw = fs::read(&self.log_path).unwrap_or_default();
        launch::strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("manager log containing {needle:?}"), || {
            self.log().contains(needle).then_some(())
        });
    }

    /// Waits until the log contains `needle` on at least `n` lines.
    pub fn wait_log_lines(&self, needle: &str, n: usize) {
        wait_until(
            &format!("{n} manager log lines containing {needle:?}"),
            || (self.log().lines().filter(|l| l.contains(needle)).count() >= n).then_some(()),
        );
    }

    /// The number of the last finished pass (`pass finished pass=<n>`), 0 before the first.
    pub fn passes(&self) -> u64 {
        self.log()
            .lines()
            .filter_map(launch::finished_pass)
            .max()
            .unwrap_or(0)
    }

    /// Waits until `n` more passes have finished than had when it was called, one of them a
    /// full pass (every project planned again: an action's end, or the rescan of every tenth
    /// resync, which also reads every file and lists Docker), not only the passes an event or
    /// a file caused: what a test asserts afterwards held across a whole reconcile, not just
    /// for a while. With a resync of a second, a rescan comes within ten.
    pub fn wait_passes(&self, n: u64) {
        assert!(n >= 2, "wait for at least two passes, so one is a full one");
        assert!(
            self.resync_secs <= 5,
            "wait_passes needs a manager started with a short resync (resync_secs), not {} s",
            self.resync_secs
        );
        let start = self.passes();
        wait_until(
            &format!("{n} more passes after pass {start}, one full"),
            || {
                let log = self.log();
                let after = || {
                    log.lines()
                        .filter(|l| launch::finished_pass(l).is_some_and(|pass| pass > start))
                };
                let (passes, full) = (after().count() as u64, after().any(launch::full_pass));
                (passes >= n && full).then_some(())
            },
        );
    }

    /// SIGKILL, then reap; returns once its output is fully captured.
    pub fn kill(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// SIGTERM, then wait (up to the harness timeout) for it to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stopping.store(true, Ordering::SeqCst);
        signal(self.pid, "TERM");
        let status = wait_until("manager to exit after SIGTERM", || {
            lock(&self.child).try_wait().ok().flatten()
        });
        self.join_readers();
        status
    }

    /// Waits (up to the harness timeout) for a manager expected to end by itself (one that
    /// SIGKILLs itself at a test-only crash point); returns its exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.stopping.store(true, Ordering::SeqCst);
        let status = wait_until("the manager to exit by itself", || {
            lock(&self.child).try_wait().ok().flatten()
        });
        self.join_readers();
        status
    }

    /// Whether the process is still running.
    pub fn running(&self) -> bool {
        matches!(lock(&self.child).try_wait(), Ok(None))
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    // -----------------------------------------------------------------------------------------
    // The API

    /// The API's bound address; panics for a manager without API.
    pub fn addr(&self) -> SocketAddr {
        self.api.as_ref().expect("a manager with its API on").0
    }

    /// This manager's API key (fresh and random for every manager).
    pub fn key(&self) -> &str {
        &self.api.as_ref().expect("a manager with its API on").1
    }

    /// An authenticated JSON call.
    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Response {
        let body = body.map(|b| b.to_string());
        self.request(
            method,
            path,
            Some(self.key()),
            body.as_deref().map(str::as_bytes),
            &[],
        )
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Response {
        self.try_request(method, path, key, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One request on a fresh connection (`Connection: close`), read to the end.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let addr = self.addr();
        if let Some(netns) = &self.netns {
            return request_in_netns(
                netns,
                addr,
                &raw_request(addr, method, path, key, body, headers),
            );
        }
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let request = raw_request(addr, method, path, key, body, headers);
        // The server may answer (413, 431) and close before reading everything we send; the
        // answer is what counts, so a failed write is not an error by itself.
        let _ = stream.write_all(&request);
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        if raw.is_empty() {
            read?;
        }
        Response::parse(&raw)
    }
}

/// One HTTP/1.1 request with `Connection: close`, as bytes.
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("X-Internal-Key: {key}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    request
}

/// Sends `request` to `addr` from inside the network namespace `netns` (bash's `/dev/tcp`
/// under `nsenter --net`), and reads the answer to the end.
pub fn request_in_netns(
    netns: &Path,
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<Response> {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && cat >&3 && timeout 300 cat <&3",
        addr.ip(),
        addr.port()
    );
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["bash", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(request);
    }
    let out = child.wait_with_output()?;
    if out.stdout.is_empty() {
        return Err(std::io::Error::other(format!(
            "no answer from {addr} in {}: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Response::parse(&out.stdout)
}

/// `command` run inside the network namespace at `netns` (`nsenter --net`, which keeps the
/// mount namespace: `ip netns exec` would remount `/sys`).
fn in_netns(netns: &Path, command: &Command) -> Command {
    let mut wrapped = Command::new("nsenter");
    wrapped
        .arg(format!("--net={}", netns.display()))
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wrapped
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An HTTP response as the tests look at it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn parse(raw: &[u8]) -> std::io::Result<Response> {
        let text = String::from_utf8_lossy(raw);
        let bad = || std::io::Error::other(format!("not an HTTP response: {text:.200}"));
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.body, self.status))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
