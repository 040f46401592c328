//! PgBouncer's pools kept by the manager, against a real PgBouncer 1.18
//! (`launchdb/pgbouncer:1.18-local`) that `%include`s the manager's file instead of a wildcard,
//! in front of the test database's real PostgreSQL (`tests/db.sh up`).
//!
//! It proves what the stack relies on: a database is reachable through PgBouncer only while a
//! project names it, with the project's `pool_size` and `reserve_pool` in `SHOW DATABASES` on
//! the admin console; PgBouncer is told (SIGHUP) when the file changed and not otherwise; and
//! the file carries no secret.
//!
//! This PgBouncer runs `auth_type = trust` with the PostgreSQL superuser in its auth file
//! (PgBouncer then logs in to PostgreSQL with that password): the test is about which
//! databases exist in PgBouncer, not about credentials, which deploy/e2e.sh checks on the
//! stack's `auth_query` set-up.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use support::*;

const PGBOUNCER_IMAGE: &str = "launchdb/pgbouncer:1.18-local";
/// The test database's own database (tests/db.sh), which every project here names.
const DB: &str = "pgmt";
const INCLUDE_DIR: &str = "/etc/pgbouncer-include";

/// Removes the test's PgBouncer when dropped, also when the test panics.
struct Bouncer {
    name: String,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

impl Bouncer {
    /// `psql` inside the PgBouncer container, through PgBouncer, as the superuser.
    fn psql(&self, db: &str, sql: &str) -> (bool, String, String) {
        exec(
            &self.name,
            &[
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                "6432",
                "-U",
                "postgres",
                "-d",
                db,
                "-X",
                "-A",
                "-F",
                "|",
                "-P",
                "footer=off",
                "-c",
                sql,
            ],
        )
    }

    /// `SHOW DATABASES` on the admin console: the row of `db`, column name -> value.
    fn database(&self, db: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let (ok, out, err) = self.psql("pgbouncer", "SHOW DATABASES");
        assert!(ok, "SHOW DATABASES failed: {err}");
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next()?.split('|').collect();
        lines.find_map(|line| {
            let row: std::collections::BTreeMap<String, String> = header
                .iter()
                .zip(line.split('|'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (row.get("name").map(String::as_str) == Some(db)).then_some(row)
        })
    }

    /// The signals Docker delivered to the container (its `kill` events) from `since` (Unix
    /// seconds) until now: `1` for each SIGHUP, whether or not PgBouncer was ready for it.
    fn signals_since(&self, since: u64) -> Vec<String> {
        let until = (unix_now() + 1).to_string();
        let filter = format!("container={}", self.name);
        let out = docker(&[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until,
            "--filter",
            &filter,
            "--filter",
            "event=kill",
            "--format",
            "{{.Actor.Attributes.signal}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many times PgBouncer logged a SIGHUP (its reload).
    fn reloads(&self) -> usize {
        let out = docker(&["logs", &self.name]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        text.lines().filter(|l| l.contains("SIGHUP")).count()
    }
}

/// Seconds since the epoch, as `docker events --since/--until` take them.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The superuser password from the URI tests/db.sh exports.
fn superuser_password() -> String {
    let uri = std::env::var("PGRST_DOUBLE_TEST_DB_URI")
        .expect("PGRST_DOUBLE_TEST_DB_URI is set by `eval \"$(bash tests/db.sh up)\"`");
    let rest = uri
        .strip_prefix("postgres://postgres:")
        .expect("a postgres:// URI");
    rest.split('@').next().unwrap().to_owned()
}

/// Starts PgBouncer on the env's network, reading `[databases]` only from the include in
/// `dir` (bind-mounted read-only), and waits until its admin console answers.
fn start_bouncer(env: &TestEnv, dir: &std::path::Path) -> Bouncer {
    let bouncer = Bouncer {
        name: format!("{}-pgbouncer", env.instance),
    };
    let postgres = std::env::var("PGMT_POSTGRES").expect("PGMT_POSTGRES from tests/db.sh");
    // PgBouncer reaches PostgreSQL on the env's network; the env disconnects it on drop.
    docker_ok(&["network", "connect", &env.network, &postgres]);
    let ini = env.root().join("pgbouncer.ini");
    fs::write(
        &ini,
        format!(
            "[databases]\n%include {INCLUDE_DIR}/databases.ini\n\n[pgbouncer]\n\
             listen_addr = *\nlisten_port = 6432\nunix_socket_dir =\npool_mode = transaction\n\
             auth_type = trust\nauth_file = /tmp/userlist.txt\nadmin_users = postgres\n\
             server_login_retry = 1\nignore_startup_parameters = extra_float_digits\n"
        ),
    )
    .unwrap();
    let users = env.root().join("userlist.txt");
    fs::write(
        &users,
        format!("\"postgres\" \"{}\"\n", superuser_password()),
    )
    .unwrap();
    for file in [&ini, &users] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mount = format!("{}:{INCLUDE_DIR}:ro", dir.display());
    docker_ok(&[
        "create",
        "--name",
        &bouncer.name,
        "--network",
        &env.network,
        "-v",
        &mount,
        PGBOUNCER_IMAGE,
        "pgbouncer",
        "/tmp/pgbouncer.ini",
    ]);
    let target = |file: &str| format!("{}:/tmp/{file}", bouncer.name);
    docker_ok(&["cp", ini.to_str().unwrap(), &target("pgbouncer.ini")]);
    docker_ok(&["cp", users.to_str().unwrap(), &target("userlist.txt")]);
    docker_ok(&["start", &bouncer.name]);
    wait_until("PgBouncer's admin console", || {
        bouncer.psql("pgbouncer", "SHOW VERSION").0.then_some(())
    });
    bouncer
}

/// Adding a project puts its database into PgBouncer with its pool; nothing changed, no
/// reload; removing the project takes the database out again. No secret in the file.
#[test]
fn pgbouncer_serves_exactly_the_projects_databases_with_their_pools() {
    let env = TestEnv::new();
    let dir = env.root().join("pgbouncer");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let include = dir.join("databases.ini");
    // What the stack's entrypoint does at the first start: an empty include.
    fs::write(&include, "").unwrap();
    fs::set_permissions(&include, fs::Permissions::from_mode(0o644)).unwrap();
    let bouncer = start_bouncer(&env, &dir);

    // Without the manager's entry the database does not exist in PgBouncer: no wildcard.
    let (ok, _, err) = bouncer.psql(DB, "select 1");
    assert!(!ok && err.contains("no such database"), "{err}");

    let postgres = std::env::var("PGMT_POSTGRES").unwrap();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            args: [
                "--pgbouncer-include",
                include.to_str().unwrap(),
                "--pgbouncer-container",
                &bouncer.name,
                "--pgbouncer-server-host",
                &postgres,
            ]
            .map(String::from)
            .to_vec(),
            ..ManagerOpts::quick_resync()
        },
    );
    // The first pass writes the (still empty) file and signals once.
    wait_until("the manager's first SIGHUP", || {
        (bouncer.reloads() == 1).then_some(())
    });

    let id = env.project_id();
    let (secret, password) = (
        "pools-jwt-secret-0123456789abcdef-0123456789",
        "pools-password-0123456789",
    );
    let state = format!(
        "{}db_name = \"{DB}\"\ndb_pool = 9\npool_size = 7\nreserve_pool = 2\n",
        state_toml(secret, password)
    );
    let written = std::time::Instant::now();
    env.write_state(&id, &state);
    let row = wait_until("the project's database in SHOW DATABASES", || {
        bouncer.database(DB)
    });
    // An upper bound: each look is a `docker exec psql` (about 0.1 s) plus the poll interval.
    println!(
        "file written -> database in SHOW DATABASES: {} ms",
        written.elapsed().as_millis()
    );
    assert_eq!(row["pool_size"], "7", "{row:?}");
    assert_eq!(row["reserve_pool"], "2", "{row:?}");
    assert_eq!(row["host"], postgres, "{row:?}");
    assert_eq!(row["database"], DB, "{row:?}");
    // Reachable through PgBouncer, all the way to PostgreSQL's rows.
    let (ok, out, err) = bouncer.psql(DB, "select count(*) from public.items");
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("2"), "{out}");
    assert_eq!(bouncer.reloads(), 2);
    env.wait_serving(&id);

    // Passes (a resync among them) with nothing changed: no write, no reload.
    manager.wait_passes(3);
    assert_eq!(bouncer.reloads(), 2, "PgBouncer reloaded without a change");

    let text = fs::read_to_string(&include).unwrap();
    assert_no_secrets_in("the PgBouncer include", &text, &[secret, password]);
    assert!(
        !text.contains("password") || text.contains("No passwords"),
        "{text}"
    );

    let removed = std::time::Instant::now();
    env.remove_state(&id);
    wait_until("the database gone from SHOW DATABASES", || {
        bouncer.database(DB).is_none().then_some(())
    });
    println!(
        "file removed -> database gone from SHOW DATABASES: {} ms",
        removed.elapsed().as_millis()
    );
    let (ok, _, err) = bouncer.psql(DB, "select 1");
    assert!(!ok && err.contains("no such database"), "{err}");
    assert_eq!(bouncer.reloads(), 3);
    env.wait_gone(&id);
    assert_no_secrets(&manager.log(), &[secret, password]);
}

/// A PgBouncer the manager cannot signal (its container does not exist yet) shows in the
/// status of every project, with the reason, while the containers converge; once PgBouncer is
/// there the retry (with backoff) signals it and the status says `in place`.
#[test]
fn a_pgbouncer_that_cannot_be_told_shows_in_the_status_until_it_can() {
    let env = TestEnv::new();
    let dir = env.root().join("pgbouncer");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let include = dir.join("databases.ini");
    let bouncer_name = format!("{}-pgbouncer", env.instance);
    let postgres = std::env::var("PGMT_POSTGRES").unwrap();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            args: [
                "--pgbouncer-include",
                include.to_str().unwrap(),
                "--pgbouncer-container",
                &bouncer_name,
                "--pgbouncer-server-host",
                &postgres,
            ]
            .map(String::from)
            .to_vec(),
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    let state = format!(
        "{}db_name = \"{DB}\"\n",
        state_toml(&secret("jwt"), &secret("pw"))
    );
    env.write_state(&id, &state);
    env.wait_serving(&id);
    let pool = |manager: &Manager| {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        view["pool"].as_str().unwrap_or_default().to_owned()
    };
    let pending = wait_until("the status to show the pools pending", || {
        let pool = pool(&manager);
        pool.starts_with("pending: ").then_some(pool)
    });
    assert!(
        pending.contains(&format!("signalling {bouncer_name}")),
        "{pending}"
    );
    // The retries write the file; only the signal fails.
    wait_until("the project's entry in the include", || {
        fs::read_to_string(&include)
            .ok()?
            .contains(&format!("{DB} = "))
            .then_some(())
    });

    let before_start = unix_now();
    let bouncer = start_bouncer(&env, &dir);
    wait_until("the status to show the pools in place", || {
        (pool(&manager) == "in place").then_some(())
    });
    // The witness is Docker's `kill` event, not PgBouncer's log: PgBouncer is its container's
    // PID 1, which ignores a SIGHUP that comes before it has installed its handler, and the
    // manager's retry may come that early (CI saw `in place` with no SIGHUP in the log once).
    // Started after the file was written, PgBouncer read it anyway: its databases say so.
    let signals = bouncer.signals_since(before_start);
    assert!(
        signals.iter().any(|s| s == "1"),
        "the manager signalled PgBouncer once it ran: {signals:?}"
    );
    assert!(bouncer.database(DB).is_some());
}
