//! The shared real-Docker test harness: a per-test environment (instance id, network, temp
//! state and config dirs), the manager binary as a child process with its log captured
//! (`manager.rs`, started through `launch.rs`, which the benches share), the CLI with a
//! timeout, Docker inspection through the `docker` CLI, HS256 JWT minting and tiny HTTP probes.
//!
//! Every test gets its own instance label and network, and its `Drop` removes exactly the
//! containers carrying that label, its network and its directory, and kills every process it
//! started (also on panic), so parallel tests and concurrent runs never see or touch each
//! other's containers. Everything a test creates on the daemon is named after its id
//! (`pgmt<pid>x<n>`: containers `postgrest-pgmt…` or `pgmt…`, network `pgmt…net`), which is
//! what `.ci/run`'s leftover check looks for.
//!
//! `private_daemon.rs` is a Docker daemon of a test's own, in a network namespace of its own,
//! for the fault suite (`tests/faults.rs`), which kills and restarts it; a manager reaches it
//! through `ManagerOpts::docker_host`, and runs inside its namespace with `ManagerOpts::netns`.

#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod launch;
mod manager;
pub mod private_daemon;
pub mod swarm;

pub use manager::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The image every test container runs: the PostgREST test double behind the real wrapper.
/// `PGM_TEST_IMAGE` overrides it (e.g. an image built from another revision of the double).
pub const IMAGE: &str = "launchdb/postgrest:v1-test";
/// A plain busybox image, for a client on the containers' network.
pub const CLIENT_IMAGE: &str = "launchdb/busybox-base:local";
/// Caddy, as deploy/build-local-images.sh builds it for the stack.
pub const CADDY_IMAGE: &str = "launchdb/caddy:2.6.2-local";
/// How long any wait lasts before the test fails. Generous: the machine has two cores and
/// other test binaries may run at the same time.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait re-checks its condition.
pub const POLL: Duration = Duration::from_millis(50);

pub const LABEL_INSTANCE: &str = "launchdb.instance";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The end of a `docker run` of Caddy as deploy/compose.yaml runs it: the stack's static
/// config, mounted read-only, and no `--resume`.
pub fn caddy_as_deployed() -> Vec<String> {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/caddy/caddy.json");
    [
        "-v",
        &format!("{config}:/etc/caddy/launchdb.json:ro"),
        CADDY_IMAGE,
        "caddy",
        "run",
        "--config",
        "/etc/caddy/launchdb.json",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The image the managers of the tests run: [`IMAGE`] unless `PGM_TEST_IMAGE` is set.
pub fn image() -> String {
    std::env::var("PGM_TEST_IMAGE").unwrap_or_else(|_| IMAGE.to_owned())
}

/// A fresh id, unique within this host for this process: `pgmt<pid>x<n>`. It is a valid
/// project-id prefix (lowercase letter first, then letters and digits).
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("pgmt{}x{n}", std::process::id())
}

/// One test's world: an instance name, a network and temp dirs. Dropping it removes
/// everything it created, and nothing else.
pub struct TestEnv {
    /// The instance label of this env's first manager; also the prefix of its project ids.
    pub instance: String,
    pub network: String,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    /// Every instance a manager of this env ran as; cleanup removes their containers.
    instances: Mutex<Vec<String>>,
    /// Every process started through this env (managers, CLI runs, lock holders), killed and
    /// reaped on drop even if the test leaked or forgot them.
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    projects: AtomicUsize,
    dir: Option<tempfile::TempDir>,
    /// Whether `network` exists on the machine's daemon (with the test database on it).
    on_machine_daemon: bool,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let mut env = TestEnv::bare();
        // After the env exists, so its drop removes the network even if connecting fails.
        env.on_machine_daemon = true;
        connect_database(&env.network);
        env
    }

    /// An env that makes nothing on the machine's daemon (no network, no database): for a
    /// test whose manager drives a private daemon with a database of its own (`swarm.rs`).
    pub fn bare() -> TestEnv {
        let id = unique_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("a temp dir");
        let state_dir = dir.path().join("state");
        let config_dir = dir.path().join("configs");
        fs::create_dir_all(&state_dir).unwrap();
        fs::create_dir_all(&config_dir).unwrap();
        TestEnv {
            network: format!("{id}net"),
            instances: Mutex::new(vec![id.clone()]),
            instance: id,
            state_dir,
            config_dir,
            children: Mutex::new(Vec::new()),
            projects: AtomicUsize::new(0),
            dir: Some(dir),
            on_machine_daemon: false,
        }
    }

    /// Registers a child process: the env kills and reaps it on drop.
    pub fn register(&self, child: Arc<Mutex<Child>>) {
        lock(&self.children).push(child);
    }

    /// Starts `command` as a child registered with this env (stdin closed unless the command
    /// says otherwise).
    pub fn spawn(&self, command: &mut Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        self.register(Arc::clone(&child));
        Process { child, pid }
    }

    /// `postgrest-manager <args>` (a state-editing or status subcommand) against this env's
    /// state directory and instance, run to completion (at most [`TIMEOUT`]), with `stdin`
    /// as its standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> CliRun {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let (out_path, err_path) = (
            self.root().join(format!("cli-{n}.out")),
            self.root().join(format!("cli-{n}.err")),
        );
        let process = self.spawn(
            self.cli_command(args)
                .stdin(Stdio::piped())
                .stdout(fs::File::create(&out_path).unwrap())
                .stderr(fs::File::create(&err_path).unwrap()),
        );
        if let Some(mut pipe) = lock(&process.child).stdin.take() {
            let _ = pipe.write_all(stdin.as_bytes());
        }
        let status = process.wait_timeout(TIMEOUT).unwrap_or_else(|| {
            panic!("postgrest-manager {args:?} did not finish within {TIMEOUT:?}")
        });
        let read = |path: &Path| String::from_utf8_lossy(&fs::read(path).unwrap()).into_owned();
        CliRun {
            code: status.code(),
            stdout: read(&out_path),
            stderr: read(&err_path),
        }
    }

    /// Like [`TestEnv::cli_with_stdin`], with nothing on standard input.
    pub fn cli(&self, args: &[&str]) -> CliRun {
        self.cli_with_stdin(args, "")
    }

    /// The CLI command against this env (`PGM_STATE_DIR`, `PGM_INSTANCE`), not started.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postgrest-manager"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGM_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .env("PGM_STATE_DIR", &self.state_dir)
            .env("PGM_INSTANCE", &self.instance)
            .stdin(Stdio::null());
        command
    }

    /// The temp dir everything of this env lives in.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("not dropped").path()
    }

    /// A new project id, unique to this env (and so to this host).
    pub fn project_id(&self) -> String {
        let n = self.projects.fetch_add(1, Ordering::SeqCst);
        format!("{}p{n}", self.instance)
    }

    /// A further instance name whose containers this env also cleans up (a second manager).
    pub fn extra_instance(&self) -> String {
        let name = format!(
            "{}i{}",
            self.instance,
            self.projects.fetch_add(1, Ordering::SeqCst)
        );
        lock(&self.instances).push(name.clone());
        name
    }

    pub fn state_file(&self, id: &str) -> PathBuf {
        self.state_dir.join(format!("{id}.toml"))
    }

    pub fn config_file(&self, id: &str) -> PathBuf {
        self.config_dir.join(id).join("postgrest.conf")
    }

    /// Writes `state/<id>.toml` as the manager and the CLI do: temp file, then rename.
    pub fn write_state(&self, id: &str, toml: &str) {
        write_atomic(&self.state_file(id), toml);
    }

    /// Writes `state/<id>.toml` in place (truncate, then write), as an editor or `echo >` would.
    pub fn write_state_in_place(&self, id: &str, toml: &str) {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.state_file(id))
            .unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        file.sync_all().unwrap();
    }

    pub fn remove_state(&self, id: &str) {
        fs::remove_file(self.state_file(id)).unwrap();
    }

    /// The container name of a project.
    pub fn container(&self, id: &str) -> String {
        format!("postgrest-{id}")
    }

    /// Waits until project `id`'s container runs, carries this env's instance label and
    /// PostgREST answers `GET /` with 200; returns its inspection.
    pub fn wait_serving(&self, id: &str) -> Container {
        let name = self.container(id);
        wait_until(&format!("{name} running and answering GET /"), || {
            let c = inspect(&name)?;
            if !c.running || c.labels.get(LABEL_INSTANCE) != Some(&self.instance) {
                return None;
            }
            (http_get(c.ip?, "/", None).ok()? == 200).then_some(c)
        })
    }

    /// Waits until no container named `postgrest-<id>` exists.
    pub fn wait_gone(&self, id: &str) {
        let name = self.container(id);
        wait_until(&format!("{name} removed"), || {
            inspect(&name).is_none().then_some(())
        });
    }

    /// Runs `wget -qO- <url>` in a throwaway busybox container on this env's network; returns
    /// what it printed, or `Err` with its stderr when wget failed.
    // The name says where the request comes from, not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_network(&self, url: &str) -> Result<String, String> {
        let name = self.helper_name();
        let out = docker(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--label",
            &format!("{LABEL_INSTANCE}={}", self.instance),
            "--network",
            &self.network,
            CLIENT_IMAGE,
            // Not `wget -T`: Debian's static busybox 1.35 wget segfaults with it.
            "timeout",
            "20",
            "wget",
            "-qO-",
            url,
        ]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A name for a helper container (a client, a foreign container): `<instance>h<n>`, so a
    /// leftover is recognisable as the tests'. Label it with the env's instance too, so the
    /// env removes it.
    pub fn helper_name(&self) -> String {
        format!(
            "{}h{}",
            self.instance,
            self.projects.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Containers of this env's instances, by name.
    pub fn containers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for instance in lock(&self.instances).iter() {
            let out = docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label={LABEL_INSTANCE}={instance}"),
                "--format",
                "{{.Names}}",
            ]);
            names.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        names
    }
}

/// The name the test database's PgBouncer answers to on every test network: the manager's
/// default `PGM_DB_HOST`, so projects need no `db_host`.
pub const DB_HOST: &str = "pgbouncer";

/// Creates the env's network up front and connects the run's PgBouncer to it as
/// [`DB_HOST`], so every PostgREST the env's managers start can log in. The database is
/// started by `tests/db.sh up` (`bash tests/run.sh` does it), which names its PgBouncer in
/// `PGMT_PGBOUNCER`.
fn connect_database(network: &str) {
    let Ok(bouncer) = std::env::var("PGMT_PGBOUNCER") else {
        panic!(
            "PGMT_PGBOUNCER is not set: the tests need their database. Run them with \
             `bash tests/run.sh cargo test --workspace`, or `eval \"$(bash tests/db.sh up)\"` first."
        );
    };
    docker_ok(&["network", "create", network]);
    docker_ok(&["network", "connect", "--alias", DB_HOST, network, &bouncer]);
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let children: Vec<_> = lock(&self.children).drain(..).collect();
        for child in children {
            let mut child = lock(&child);
            let _ = child.kill();
            let _ = child.wait();
        }
        let instances = lock(&self.instances).clone();
        for instance in &instances {
            // The manager's claim on the daemon (a volume), kept across its restarts.
            let _ = docker(&["volume", "rm", "-f", &format!("pgm-lease-{instance}")]);
            let out = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label={LABEL_INSTANCE}={instance}"),
            ]);
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
        if !self.on_machine_daemon {
            if let Some(dir) = self.dir.take() {
                let _ = dir.close();
            }
            return;
        }
        // Whatever is still attached to the env's own network (a shared fixture a test
        // connected, a container of a foreign instance) is disconnected, not removed.
        let attached = docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}} {{end}}",
            &self.network,
        ]);
        for container in String::from_utf8_lossy(&attached.stdout).split_whitespace() {
            let _ = docker(&["network", "disconnect", "-f", &self.network, container]);
        }
        // The daemon may still be detaching the last endpoints: try for a while.
        for _ in 0..20 {
            let gone = docker(&["network", "rm", &self.network]).status.success()
                || !docker(&["network", "inspect", &self.network])
                    .status
                    .success();
            if gone {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A mutex guard even if a panicking thread poisoned it: cleanup must still run.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A process a test started through [`TestEnv::spawn`]: killed and reaped when dropped, and
/// by the env's drop if the test leaked it.
pub struct Process {
    child: Arc<Mutex<Child>>,
    pub pid: u32,
}

impl Process {
    /// Its exit status, if it has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&self) -> ExitStatus {
        let mut child = lock(&self.child);
        let _ = child.kill();
        child.wait().expect("reaping a child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a CLI run printed, and how it exited.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Sends `signal` (a name like `TERM`) to a host process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most [`TIMEOUT`]; panics with
/// `what` otherwise, and at once (with its log's tail) if a manager this thread started and
/// still expects to run has exited.
pub fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_until_for(what, TIMEOUT, check)
}

pub fn wait_until_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        check_managers_alive(what);
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// Writes a file as the manager does: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file.sync_all().unwrap();
    }
    fs::rename(&tmp, path).unwrap();
}

/// Runs the docker CLI; never panics on a failed command (the caller looks at the status).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI runs")
}

/// Runs the docker CLI and panics unless it succeeds; returns its stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Now, as a `docker events --since/--until` timestamp (seconds with a fraction).
pub fn docker_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The actions Docker recorded for a container from `since` ([`docker_now`]) until now, but
/// the health check's own (`exec_*`, `health_status`): `kill` (any signal, a reload too),
/// `stop`, `die`, `start`, `destroy`, ... Empty means nobody touched it.
pub fn container_events(container: &str, since: &str) -> Vec<String> {
    let out = docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        &docker_now(),
        "--filter",
        &format!("container={container}"),
        "--format",
        "{{.Action}}",
    ]);
    out.lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.starts_with("exec_") && !a.starts_with("health_status"))
        .map(str::to_owned)
        .collect()
}

/// What `docker inspect` says about a container, the parts the tests look at.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// `running`, `exited`, `created`, ...
    pub status: String,
    pub running: bool,
    pub restart_count: u64,
    pub started_at: String,
    pub labels: BTreeMap<String, String>,
    /// Its address on the first network it is attached to.
    pub ip: Option<IpAddr>,
    pub networks: Vec<String>,
    pub mounts: Vec<Mount>,
    pub restart_policy: String,
    pub readonly_rootfs: bool,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub memory: i64,
    pub pids_limit: i64,
    pub user: String,
    pub has_healthcheck: bool,
    /// `State.Health.Status`: `starting`, `healthy`, `unhealthy`, or empty without a check.
    pub health: String,
    /// `Config.Env`, `Config.Cmd`, `Config.Entrypoint` and `Args`: everything a process in
    /// the container (or anyone with `docker inspect`) sees besides the mounted files.
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub args: Vec<String>,
    /// `HostConfig.PortBindings` and `NetworkSettings.Ports`, as JSON (`null` or `{}` when
    /// nothing is published).
    pub port_bindings: serde_json::Value,
    pub ports: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    pub rw: bool,
}

/// `docker inspect <name or id>`; `None` when there is no such container.
pub fn inspect(name: &str) -> Option<Container> {
    let out = docker(&["container", "inspect", name]);
    if !out.status.success() {
        return None;
    }
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let v = all.get(0)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default()
    };
    let networks = v["NetworkSettings"]["Networks"].as_object();
    let ip = networks.and_then(|n| {
        n.values()
            .find_map(|n| n["IPAddress"].as_str().and_then(|ip| ip.parse().ok()))
    });
    Some(Container {
        id: s(&v["Id"]),
        name: s(&v["Name"]).trim_start_matches('/').to_owned(),
        status: s(&v["State"]["Status"]),
        running: v["State"]["Running"].as_bool().unwrap_or(false),
        restart_count: v["RestartCount"].as_u64().unwrap_or(0),
        started_at: s(&v["State"]["StartedAt"]),
        labels: v["Config"]["Labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default(),
        ip,
        networks: networks
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default(),
        mounts: v["Mounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| Mount {
                        source: s(&m["Source"]),
                        destination: s(&m["Destination"]),
                        rw: m["RW"].as_bool().unwrap_or(true),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        restart_policy: s(&v["HostConfig"]["RestartPolicy"]["Name"]),
        readonly_rootfs: v["HostConfig"]["ReadonlyRootfs"].as_bool().unwrap_or(false),
        cap_drop: strings(&v["HostConfig"]["CapDrop"]),
        security_opt: strings(&v["HostConfig"]["SecurityOpt"]),
        memory: v["HostConfig"]["Memory"].as_i64().unwrap_or(0),
        pids_limit: v["HostConfig"]["PidsLimit"].as_i64().unwrap_or(0),
        user: s(&v["Config"]["User"]),
        has_healthcheck: !v["Config"]["Healthcheck"].is_null(),
        health: s(&v["State"]["Health"]["Status"]),
        env: strings(&v["Config"]["Env"]),
        cmd: strings(&v["Config"]["Cmd"]),
        entrypoint: strings(&v["Config"]["Entrypoint"]),
        args: strings(&v["Args"]),
        port_bindings: v["HostConfig"]["PortBindings"].clone(),
        ports: v["NetworkSettings"]["Ports"].clone(),
    })
}

/// `docker exec <container> <args>`: (exit success, stdout, stderr).
pub fn exec(container: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["exec", container];
    all.extend_from_slice(args);
    let out = docker(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The PID of the `postgrest` process inside the container (not the wrapper, PID 1): equal
/// PIDs before and after mean PostgREST itself never restarted.
pub fn postgrest_pid(container: &str) -> u32 {
    let (ok, out, err) = exec(container, &["pidof", "postgrest"]);
    assert!(ok, "pidof postgrest in {container} failed: {err}");
    let pids: Vec<u32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "expected one postgrest process in {container}: {out}"
    );
    pids[0]
}

/// The config the double parses from the container's mounted file:
/// `postgrest --dump-config /etc/postgrest/postgrest.conf`, as JSON
/// (`{"config": {...}, "db_uri": {"user", "password", "host", "port", "dbname"}}`).
pub fn dump_config(container: &str) -> serde_json::Value {
    let (ok, out, err) = exec(
        container,
        &[
            "postgrest",
            "--dump-config",
            "/etc/postgrest/postgrest.conf",
        ],
    );
    assert!(ok, "--dump-config in {container} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("--dump-config printed no JSON ({e})"))
}

/// An HS256 JWT for `aud` with role `anon`, valid for an hour, signed with the raw bytes of
/// `secret` (as PostgREST uses a non-base64 `jwt-secret`).
pub fn jwt(secret: &str, aud: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"role": "anon", "aud": aud, "iat": now, "exp": now + 3600});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// `GET http://<ip>:3000<path>` with an optional bearer token; the status code.
pub fn http_get(ip: IpAddr, path: &str, bearer: Option<&str>) -> std::io::Result<u16> {
    http_get_port(ip, 3000, path, bearer)
}

pub fn http_get_port(
    ip: IpAddr,
    port: u16,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<u16> {
    let addr = SocketAddr::new(ip, port);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.80}")))
}

/// Waits until a request to `c` with a JWT signed by `secret` gets `expected`.
pub fn wait_jwt_status(c: &Container, secret: &str, aud: &str, expected: u16) {
    let ip = c.ip.expect("the container has an IP");
    let token = jwt(secret, aud);
    wait_until(&format!("{} to answer {expected} to a JWT", c.name), || {
        (http_get(ip, "/", Some(&token)).ok()? == expected).then_some(())
    });
}

/// Panics if any secret (at least 8 characters, to avoid trivial matches) appears in the
/// manager's `log`, raw or in the forms the config file and the db-uri use.
pub fn assert_no_secrets(log: &str, secrets: &[&str]) {
    assert_no_secrets_in("the manager's log", log, secrets);
}

/// Panics if any secret appears in `text` (described by `what`), raw or in the forms the
/// config file and the db-uri use.
pub fn assert_no_secrets_in(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            secret.len() >= 8,
            "too short to check meaningfully: {secret:?}"
        );
        let escaped = secret
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .replace('$', "$$");
        let encoded: String = secret
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        for form in [secret.to_string(), escaped, encoded] {
            assert!(!text.contains(&form), "a secret appears in {what}:\n{text}");
        }
    }
}

/// A minimal valid state file.
pub fn state_toml(jwt_secret: &str, password: &str) -> String {
    format!(
        "jwt_secret = {}\nauthenticator_password = {}\n",
        toml_string(jwt_secret),
        toml_string(password)
    )
}

/// A TOML basic string holding exactly `s`.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A random-looking secret of 40 characters, distinct per call.
pub fn secret(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let raw = format!("{tag}-{}-{n}-{nanos}", std::process::id());
    let digest = <Sha256 as sha2::Digest>::digest(raw.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{tag}{}", &hex[..40 - tag.len().min(20)])
}

/// Mode bits (permissions only) and owner uid of a path.
pub fn mode_and_uid(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.permissions().mode() & 0o7777, meta.uid())
}

/// A Unix-socket proxy in front of the Docker daemon's socket, for simulating an outage
/// without touching the daemon: point the manager's `DOCKER_HOST` at [`DockerProxy::url`],
/// then [`DockerProxy::stop`] (the socket disappears, open connections are cut) and
/// [`DockerProxy::start`] again.
pub struct DockerProxy {
    path: PathBuf,
    upstream: PathBuf,
    running: Option<ProxyRun>,
}

struct ProxyRun {
    stop: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    acceptor: JoinHandle<()>,
}

impl DockerProxy {
    /// A proxy listening at `path`, forwarding to the tests' daemon (`DOCKER_HOST` when it
    /// names a unix socket, else `/var/run/docker.sock`); not started yet.
    pub fn new(path: PathBuf) -> DockerProxy {
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        DockerProxy {
            path,
            upstream,
            running: None,
        }
    }

    /// The `DOCKER_HOST` value that reaches the daemon through this proxy.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn start(&mut self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::AtomicBool;
        assert!(self.running.is_none(), "the proxy is already running");
        let _ = fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("the proxy socket binds");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let upstream = self.upstream.clone();
        let acceptor = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => break,
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = UnixStream::connect(&upstream) else {
                        continue;
                    };
                    let mut all = connections.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
                // The listener is dropped here: new connections are refused.
            })
        };
        self.running = Some(ProxyRun {
            stop,
            connections,
            acceptor,
        });
    }

    /// Stops accepting, removes the socket and cuts every open connection.
    pub fn stop(&mut self) {
        let Some(run) = self.running.take() else {
            return;
        };
        run.stop.store(true, Ordering::SeqCst);
        let _ = run.acceptor.join();
        let _ = fs::remove_file(&self.path);
        for connection in run.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
