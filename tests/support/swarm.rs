//! A one-node Docker Swarm of the test's own: a [`PrivateDaemon`] (its own network namespace,
//! never the machine's daemon) turned into a Swarm manager, an attachable overlay network, and
//! a real PostgreSQL on it for the projects' PostgREST to log in to (the manager's tasks run
//! inside the private daemon, which cannot reach the machine's test database).
//!
//! [`Swarm`] is a drop guard: it removes its services and secrets, leaves the swarm, and then
//! the daemon's own guard stops it and removes its directory, mounts and namespace.

use std::process::{Command, Output, Stdio};

use super::private_daemon::PrivateDaemon;
use super::{image, wait_until};

/// The PostgreSQL container's name on the overlay network (the manager's `PGM_DB_HOST`).
pub const DB_HOST: &str = "pg";
const POSTGRES_IMAGE: &str = "launchdb/postgres:15-local";
const SUPERUSER_PASSWORD: &str = "swarm-test-superuser";

pub struct Swarm {
    pub daemon: PrivateDaemon,
    pub network: String,
}

impl Swarm {
    /// A private daemon as a one-node swarm with the overlay network `network` and PostgreSQL.
    pub fn start(network: &str) -> Swarm {
        Swarm::init(PrivateDaemon::start(), network, "127.0.0.1")
    }

    /// `daemon` as the first manager of a swarm advertised at `address`, with the overlay
    /// network `network` and PostgreSQL on it (as a container on this node).
    pub fn init(daemon: PrivateDaemon, network: &str, address: &str) -> Swarm {
        let swarm = Swarm {
            daemon,
            network: network.to_owned(),
        };
        swarm.ok(&["swarm", "init", "--advertise-addr", address]);
        swarm.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            network,
        ]);
        swarm.load(POSTGRES_IMAGE);
        let hba = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postgres/pg_hba.conf");
        swarm.ok(&[
            "run",
            "-d",
            "--name",
            DB_HOST,
            "--network",
            network,
            "-e",
            &format!("POSTGRES_PASSWORD={SUPERUSER_PASSWORD}"),
            "-v",
            &format!("{hba}:/etc/launchdb/pg_hba.conf:ro"),
            POSTGRES_IMAGE,
            "postgres",
            "-c",
            "listen_addresses=*",
            "-c",
            "hba_file=/etc/launchdb/pg_hba.conf",
        ]);
        wait_until("PostgreSQL in the swarm to accept connections", || {
            swarm
                .docker(&["exec", DB_HOST, "pg_isready", "-q", "-h", DB_HOST])
                .status
                .success()
                .then_some(())
        });
        swarm.psql("CREATE ROLE anon NOLOGIN");
        swarm
    }

    /// Copies `image` from the tests' daemon into this node.
    pub fn load(&self, image: &str) {
        self.daemon.load(image);
    }

    /// A login role `<id>_authenticator` with `password` and a database `<id>`: what the
    /// manager renders into the project's `db-uri`.
    pub fn add_project_database(&self, id: &str, password: &str) {
        let [role, database] = Swarm::project_database_sql(id, password);
        self.psql_each(&[&role, &database]);
    }

    pub fn psql(&self, sql: &str) {
        self.psql_each(&[sql]);
    }

    /// Runs each statement in its own transaction, in one `psql` (`CREATE DATABASE` cannot
    /// share a transaction): many projects' databases in one `docker exec`.
    pub fn psql_each(&self, statements: &[&str]) {
        let password = format!("PGPASSWORD={SUPERUSER_PASSWORD}");
        let mut args: Vec<&str> = vec![
            "exec",
            "-e",
            &password,
            DB_HOST,
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ];
        for statement in statements {
            args.extend(["-c", statement]);
        }
        self.ok(&args);
    }

    /// The statements of [`Swarm::add_project_database`].
    pub fn project_database_sql(id: &str, password: &str) -> [String; 2] {
        let quoted = password.replace('\'', "''");
        [
            format!(
                "CREATE ROLE {id}_authenticator LOGIN NOINHERIT PASSWORD '{quoted}'; \
                 GRANT anon TO {id}_authenticator"
            ),
            format!("CREATE DATABASE {id}"),
        ]
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.daemon.docker(args)
    }

    /// `docker <args>` that must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} on the swarm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `GET url` (with `Authorization: Bearer <token>`) from a container on the overlay
    /// network, through the service's virtual IP: the HTTP status, or `None` when it failed.
    pub fn get(&self, url: &str, token: Option<&str>) -> Option<u16> {
        let out = self.get_raw(url, token);
        // busybox wget prints the response headers (-S) to stderr, and exits 1 on a 4xx/5xx.
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.trim().strip_prefix("HTTP/1.1 "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|code| code.parse().ok())
    }

    /// What [`Swarm::get`] runs, with its output.
    pub fn get_raw(&self, url: &str, token: Option<&str>) -> Output {
        let header = token.map(|t| format!("Authorization: Bearer {t}"));
        let image = image();
        let mut command: Vec<&str> = vec![
            "run",
            "--rm",
            "--network",
            &self.network,
            "--entrypoint",
            "wget",
            &image,
            "-S",
            "-q",
            "-Y",
            "off",
            "-O",
            "/dev/null",
        ];
        if let Some(h) = &header {
            command.extend(["--header", h]);
        }
        command.push(url);
        self.docker(&command)
    }

    /// `docker service inspect <name> --format <format>`, or `None` when there is no service.
    pub fn service(&self, name: &str, format: &str) -> Option<String> {
        let out = self.docker(&["service", "inspect", name, "--format", format]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The names of the secrets whose name starts with `prefix`.
    pub fn secrets(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .ok(&["secret", "ls", "--format", "{{.Name}}"])
            .lines()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// One `docker service ls` of the services carrying `label` (`key=value`): how many
    /// there are, and how many of them have all their tasks running (a task with a health
    /// check is `running` only once its check passed).
    pub fn services_serving(&self, label: &str) -> (usize, usize) {
        let out = self.ok(&[
            "service",
            "ls",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Replicas}}",
        ]);
        let replicas: Vec<&str> = out.lines().collect();
        let serving = replicas
            .iter()
            .filter(|r| {
                // `1/1`, or `0/1`; a finished rollout has no suffix.
                r.split_once('/')
                    .is_some_and(|(running, wanted)| running != "0" && running == wanted)
            })
            .count();
        (replicas.len(), serving)
    }

    /// The service's tasks Swarm wants running, as `id state`, e.g. `abc Running`.
    pub fn running_tasks(&self, service: &str) -> Vec<String> {
        let out = self.docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.CurrentState}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let mut words = l.split_whitespace();
                format!(
                    "{} {}",
                    words.next().unwrap_or_default(),
                    words.next().unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let services = self.docker(&["service", "ls", "-q"]);
        for id in String::from_utf8_lossy(&services.stdout).split_whitespace() {
            let _ = self.docker(&["service", "rm", id]);
        }
        let _ = self.docker(&["swarm", "leave", "--force"]);
        // The daemon's guard (dropped next) removes the containers, the daemon, its mounts,
        // its directory and its namespace.
    }
}

/// Three private daemons, each in its own network namespace, joined by veth pairs to a bridge
/// in a fourth namespace of the test's own (`pgm-dockerd-<pid>x<n>hub`; the host's interfaces
/// are never touched): node 1 the swarm's manager (with PostgreSQL), nodes 2 and 3 workers.
pub struct Cluster {
    /// Node 1.
    pub swarm: Swarm,
    /// Nodes 2 and 3.
    pub workers: Vec<PrivateDaemon>,
    /// Dropped last, after the nodes' guards.
    hub: Hub,
}

/// The hub's network namespace, deleted on drop: it exists before anything is wired into it,
/// so a start that fails half-way (wiring, swarm init, an image load) still removes it.
struct Hub(String);

impl Hub {
    fn add(name: String) -> Hub {
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip netns add {name}");
        Hub(name)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The nodes' addresses on the hub's bridge: `10.253.0.<n>`.
fn node_address(n: usize) -> String {
    format!("10.253.0.{n}")
}

fn ip(netns: &str, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("ip")
        .args(args)
        .output()
        .expect("nsenter ip runs");
    assert!(
        out.status.success(),
        "ip {args:?} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    pub fn start(network: &str) -> Cluster {
        let nodes: Vec<PrivateDaemon> = (0..3).map(|_| PrivateDaemon::start()).collect();
        let hub = Hub::add(format!("{}hub", nodes[0].netns));
        let mut nodes = nodes.into_iter();
        let first = nodes.next().unwrap();
        let workers: Vec<PrivateDaemon> = nodes.collect();
        let wire = |n: usize, daemon: &PrivateDaemon| {
            let (outer, inner) = (format!("pgmh{n}"), format!("pgmn{n}"));
            ip(
                &hub.0,
                &[
                    "link",
                    "add",
                    &outer,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &inner,
                    "netns",
                    &daemon.netns,
                ],
            );
            ip(&hub.0, &["link", "set", &outer, "master", "br0", "up"]);
            ip(
                &daemon.netns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", node_address(n)),
                    "dev",
                    &inner,
                ],
            );
            ip(&daemon.netns, &["link", "set", &inner, "up"]);
        };
        ip(&hub.0, &["link", "add", "br0", "type", "bridge"]);
        ip(&hub.0, &["link", "set", "br0", "up"]);
        wire(1, &first);
        for (i, worker) in workers.iter().enumerate() {
            wire(i + 2, worker);
        }
        let cluster = Cluster {
            swarm: Swarm::init(first, network, &node_address(1)),
            workers,
            hub,
        };
        let token = cluster.swarm.ok(&["swarm", "join-token", "-q", "worker"]);
        for (i, worker) in cluster.workers.iter().enumerate() {
            let out = worker.docker(&[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &node_address(i + 2),
                &format!("{}:2377", node_address(1)),
            ]);
            assert!(
                out.status.success(),
                "node {} joining the swarm: {}",
                i + 2,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_until("three nodes ready in the swarm", || {
            let nodes = cluster.swarm.ok(&["node", "ls", "--format", "{{.Status}}"]);
            (nodes.lines().filter(|s| *s == "Ready").count() == 3).then_some(())
        });
        cluster
    }

    /// The swarm node id of each worker, by its daemon.
    pub fn node_id(daemon: &PrivateDaemon) -> String {
        let out = daemon.docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for worker in &self.workers {
            if worker.pid().is_some() {
                let _ = worker.docker(&["swarm", "leave", "--force"]);
            }
        }
        // Then the swarm's guard (services, leave), every daemon's guard, and the hub's.
    }
}
