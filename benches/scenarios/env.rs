//! The bench's own corner of the machine: a directory, a network, instance names, a Docker
//! client, and the cleanup that removes all of it, also on panic and on Ctrl-C.
//!
//! PostgREST (and its test double) serves only once it has logged in to its database, so the
//! bench needs one, exactly as the integration tests do: `eval "$(bash tests/db.sh up)"`
//! starts PostgreSQL behind PgBouncer and exports `PGMT_PGBOUNCER`, the PgBouncer container.
//! The bench connects it to its network under the alias `pgbouncer` (the manager's default
//! database host, also the baselines' through the same template), so every method's
//! containers reach the same database the same way; the cleanup disconnects it again (it is
//! never removed: it is not the bench's).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{stream, StreamExt};

use postgrest_manager::render::{Template, LABEL_INSTANCE, LABEL_PROJECT};

/// Everything the bench created, so it can all be removed: instances (their containers, by
/// label), the network, the directory, and the processes it started (by pid).
#[derive(Clone)]
pub struct Cleanup {
    inner: Arc<CleanupInner>,
}

struct CleanupInner {
    done: AtomicBool,
    instances: Vec<String>,
    network: String,
    root: PathBuf,
    pids: Mutex<Vec<u32>>,
}

impl Cleanup {
    pub fn register_pid(&self, pid: u32) {
        self.inner.pids.lock().unwrap().push(pid);
    }

    pub fn forget_pid(&self, pid: u32) {
        self.inner.pids.lock().unwrap().retain(|p| *p != pid);
    }

    /// Removes everything. Synchronous (the docker CLI), so it also works from `Drop` while
    /// unwinding and from a signal handler's task; runs once.
    pub fn run(&self) {
        let inner = &self.inner;
        if inner.done.swap(true, Ordering::SeqCst) {
            return;
        }
        eprintln!("bench: cleaning up");
        for pid in inner.pids.lock().unwrap().drain(..) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for instance in &inner.instances {
            let _ = docker_cli()
                .args(["volume", "rm", "-f", &lease(instance)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let out = docker_cli()
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label={LABEL_INSTANCE}={instance}"))
                .output();
            let ids: Vec<String> = match out {
                Ok(out) => String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                Err(_) => continue,
            };
            for chunk in ids.chunks(50) {
                let _ = docker_cli()
                    .args(["rm", "-f"])
                    .args(chunk)
                    .stdout(std::process::Stdio::null())
                    .status();
            }
        }
        // Whatever is still attached (the database's PgBouncer) is disconnected, not removed.
        let attached = docker_cli()
            .args([
                "network",
                "inspect",
                "-f",
                "{{range .Containers}}{{.Name}} {{end}}",
                &inner.network,
            ])
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(attached) = attached {
            for container in String::from_utf8_lossy(&attached.stdout).split_whitespace() {
                let _ = docker_cli()
                    .args(["network", "disconnect", "-f", &inner.network, container])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        // The daemon may still be detaching the last endpoints: try for a while.
        for _ in 0..20 {
            let removed = docker_cli()
                .args(["network", "rm", &inner.network])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let gone = !docker_cli()
                .args(["network", "inspect", &inner.network])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if removed || gone {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let _ = std::fs::remove_dir_all(&inner.root);
    }
}

/// The volume by which a manager claims its instance on the daemon (kept when it stops).
pub fn lease(instance: &str) -> String {
    format!("pgm-lease-{instance}")
}

/// The docker CLI under `timeout`: a daemon that stopped answering (seen here once, after
/// many concurrent removals) must not hang the cleanup forever.
fn docker_cli() -> Command {
    let mut command = Command::new("timeout");
    command.args(["120", "docker"]);
    command
}

/// Runs the cleanup when dropped: at the end of `main`, or while a panic unwinds.
pub struct CleanupOnDrop(pub Cleanup);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// Which method created a container; each has its own `launchdb.instance` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// The manager (one instance for all scenarios; one manager runs at a time).
    Manager,
    /// `docker create` + `docker start` through the API.
    Floor,
    /// `docker run -d` through the CLI.
    Cli,
    /// The seed's way: a script per project, in sequence or under `xargs -P`.
    Script,
    Compose,
}

impl Who {
    const ALL: [Who; 5] = [
        Who::Manager,
        Who::Floor,
        Who::Cli,
        Who::Script,
        Who::Compose,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Who::Manager => "m",
            Who::Floor => "f",
            Who::Cli => "c",
            Who::Script => "s",
            Who::Compose => "d",
        }
    }
}

/// The bench's environment.
pub struct Bench {
    /// `pgm-bench-<pid>`: the network name and the prefix of every instance label.
    pub id: String,
    /// Short, for project ids: `pb<pid>`.
    pub tag: String,
    pub root: PathBuf,
    pub network: String,
    pub docker: Docker,
    pub image: String,
    pub binary: PathBuf,
    /// The PgBouncer container every project logs in through (`PGMT_PGBOUNCER`).
    pub database: Option<String>,
    pub cleanup: Cleanup,
}

/// Where the bench learns its database, as the integration tests do (tests/db.sh).
pub const DATABASE_VAR: &str = "PGMT_PGBOUNCER";

impl Bench {
    pub fn new(image: &str, binary: &Path) -> Bench {
        let pid = std::process::id();
        let id = format!("pgm-bench-{pid}");
        let root = std::env::temp_dir().join(&id);
        let cleanup = Cleanup {
            inner: Arc::new(CleanupInner {
                done: AtomicBool::new(false),
                instances: Who::ALL
                    .iter()
                    .map(|w| format!("{id}-{}", w.suffix()))
                    .collect(),
                network: id.clone(),
                root: root.clone(),
                pids: Mutex::new(Vec::new()),
            }),
        };
        Bench {
            tag: format!("pb{pid}"),
            network: id.clone(),
            id,
            root,
            docker: Docker::connect_with_defaults().expect("a Docker client"),
            image: image.to_owned(),
            binary: binary.to_owned(),
            database: std::env::var(DATABASE_VAR).ok().filter(|v| !v.is_empty()),
            cleanup,
        }
    }

    /// Negotiates the API version, checks the prerequisites, creates the directory and the
    /// network, and connects the database's PgBouncer to it as the projects' database host.
    pub async fn prepare(&mut self) -> Result<(), String> {
        self.docker = self
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(|e| format!("Docker is unreachable: {e}"))?;
        if !self.binary.is_file() {
            return Err(format!(
                "{} is missing: run `cargo build --release` first",
                self.binary.display()
            ));
        }
        if self.docker.inspect_image(&self.image).await.is_err() {
            return Err(format!(
                "image {} is missing: run `bash postgrest/build-test-image.sh` first",
                self.image
            ));
        }
        let database = self.database.clone().ok_or_else(|| {
            format!(
                "{DATABASE_VAR} is not set: PostgREST serves only once it has logged in to a \
                 database. Start the tests' database first: `eval \"$(bash tests/db.sh up)\"` \
                 (and `bash tests/db.sh down` afterwards)"
            )
        })?;
        let running = self
            .docker
            .inspect_container(&database, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state?.running)
            .unwrap_or(false);
        if !running {
            return Err(format!(
                "{DATABASE_VAR}={database} is not a running container: run \
                 `eval \"$(bash tests/db.sh up)\"` again"
            ));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| e.to_string())?;
        let request = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|e| format!("creating network {}: {e}", self.network))?;
        // The alias is the database host every project's config names: the manager's default
        // (PGM_DB_HOST), which the baselines' template (the tests' fixture) carries too.
        let alias = Template::for_tests(&self.id, &self.root, 0).db_host;
        let connect = docker_cli()
            .args([
                "network",
                "connect",
                "--alias",
                &alias,
                &self.network,
                &database,
            ])
            .output()
            .map_err(|e| format!("docker network connect: {e}"))?;
        if !connect.status.success() {
            return Err(format!(
                "connecting {database} to {} as {alias}: {}",
                self.network,
                String::from_utf8_lossy(&connect.stderr).trim()
            ));
        }
        Ok(())
    }

    pub fn instance(&self, who: Who) -> String {
        format!("{}-{}", self.id, who.suffix())
    }

    /// A fresh, empty directory under the bench root.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a bench directory");
        dir
    }

    /// Project id -> container id of an instance's containers.
    pub async fn containers(&self, who: Who) -> BTreeMap<String, String> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_INSTANCE}={}", self.instance(who))],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .unwrap_or_default();
        list.into_iter()
            .filter_map(|c| {
                let project = c.labels?.get(LABEL_PROJECT)?.clone();
                Some((project, c.id?))
            })
            .collect()
    }

    /// Removes every container of an instance, four at a time, and waits until they are gone.
    pub async fn remove_all(&self, who: Who) {
        for _ in 0..5 {
            let ids: Vec<String> = self.containers(who).await.into_values().collect();
            if ids.is_empty() {
                return;
            }
            stream::iter(ids)
                .for_each_concurrent(4, |id| async move {
                    let options = RemoveContainerOptionsBuilder::default().force(true).build();
                    let remove = self.docker.remove_container(&id, Some(options));
                    let _ = tokio::time::timeout(Duration::from_secs(60), remove).await;
                })
                .await;
        }
    }

    /// The container's address on the bench network.
    pub async fn ip(&self, container: &str) -> Option<IpAddr> {
        let inspect = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .ok()?;
        inspect
            .network_settings?
            .networks?
            .get(&self.network)?
            .ip_address
            .as_deref()?
            .parse()
            .ok()
    }

    /// (StartedAt, RestartCount) of a container: what changes when it is restarted.
    pub async fn started(&self, container: &str) -> Option<(String, i64)> {
        let inspect = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .ok()?;
        Some((inspect.state?.started_at?, inspect.restart_count?))
    }
}

/// Waits until `check` is true, polling every `every`, for at most `timeout`.
pub async fn poll_until<F, Fut>(timeout: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// A shell command's trimmed standard output, or `?`.
pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}
