//! The fault suite (issue 10): each test breaks something for real (the Docker daemon, the
//! manager process, the disk, the API's clients, a secret under load) and then checks what a
//! user would see: one container per project, the desired config in force, the API answering,
//! nothing torn. Every wait is on a condition, bounded by the harness timeout; every test
//! removes what it made, also when it fails (the harness' drop guards).
//!
//! The Docker-daemon test runs against a private `dockerd` in a network namespace of its own
//! (`support::private_daemon`), never the machine's daemon.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::private_daemon::PrivateDaemon;
use support::*;

// ---------------------------------------------------------------------------------------------
// 1. The Docker daemon killed and restarted under a running manager

/// Id and address of a container on the private daemon; `None` when there is none.
fn private_container(daemon: &PrivateDaemon, name: &str) -> Option<(String, Option<IpAddr>)> {
    let out = daemon.docker(&[
        "inspect",
        "--format",
        "{{.Id}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        name,
    ]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    let id = words.next()?.to_owned();
    Some((id, words.next().and_then(|ip| ip.parse().ok())))
}

/// `GET /` on a container of the private daemon, from inside its namespace, with a bearer
/// token: the status PostgREST (the double) answers.
fn private_get(daemon: &PrivateDaemon, ip: IpAddr, token: &str) -> Option<u16> {
    let addr = SocketAddr::new(ip, 3000);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    request_in_netns(&daemon.netns_path(), addr, request.as_bytes())
        .ok()
        .map(|r| r.status)
}

/// The containers of `instance` on the private daemon, by name, if every one of them runs;
/// `None` while one does not (created but never started, exited, restarting).
fn private_names(daemon: &PrivateDaemon, instance: &str) -> Option<Vec<String>> {
    daemon
        .containers(&format!("launchdb.instance={instance}"))
        .into_iter()
        .map(|line| match line.split_once(' ') {
            Some((name, "running")) => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

/// The daemon is SIGKILLed while projects run and one is being created, desired state changes
/// during the outage (a new secret, a new password, a new project, a removed one), and the
/// daemon comes back. `/readyz` says 503 during the outage and 200 after; afterwards every
/// project has exactly one running container, the removed one none, and each runs what its
/// file says: the reloaded one refuses the old token and takes the new one in the same
/// container, the recreated one has the new password.
#[test]
fn docker_daemon_killed_and_restarted_under_a_running_manager() {
    let env = TestEnv::new();
    let mut daemon = PrivateDaemon::start();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            docker_host: Some(daemon.host()),
            netns: Some(daemon.netns_path()),
            resync_secs: Some(2),
            ..ManagerOpts::default()
        },
    );
    let ids: Vec<String> = (0..4).map(|_| env.project_id()).collect();
    let (old, new) = (secret("jwtold"), secret("jwtnew"));
    let (password, new_password) = (secret("pw"), secret("pwnew"));
    for id in &ids[..3] {
        env.write_state(id, &state_toml(&old, &password));
    }
    let names =
        |ids: &[String]| -> BTreeSet<String> { ids.iter().map(|id| env.container(id)).collect() };
    wait_until("three containers on the private daemon", || {
        let running: BTreeSet<String> =
            private_names(&daemon, &env.instance)?.into_iter().collect();
        (running == names(&ids[..3])).then_some(())
    });
    let (reloaded_id, reloaded_ip) = private_container(&daemon, &env.container(&ids[0])).unwrap();
    let reloaded_ip = reloaded_ip.expect("the container has an address");
    let (recreated_id, _) = private_container(&daemon, &env.container(&ids[1])).unwrap();
    wait_until(
        "the first project to take its secret and refuse another",
        || {
            // Without a database the double answers 503 to a token it accepts, 401 otherwise.
            let old_token = private_get(&daemon, reloaded_ip, &jwt(&old, "authenticated"))?;
            let new_token = private_get(&daemon, reloaded_ip, &jwt(&new, "authenticated"))?;
            (old_token != 401 && new_token == 401).then_some(())
        },
    );

    // A new project while the daemon dies: the kill may land in the middle of its creation.
    env.write_state(&ids[3], &state_toml(&old, &password));
    daemon.kill();
    wait_until("/readyz to answer 503 while Docker is down", || {
        let r = manager
            .try_request("GET", "/readyz", None, None, &[])
            .ok()?;
        (r.status == 503).then_some(())
    });
    // Desired state changes during the outage.
    let added = env.project_id();
    env.write_state(&ids[0], &state_toml(&new, &password));
    env.write_state(&ids[1], &state_toml(&old, &new_password));
    env.remove_state(&ids[2]);
    env.write_state(&added, &state_toml(&old, &password));
    manager.wait_log("Docker is unreachable");
    assert!(manager.running(), "the manager gave up:\n{}", manager.log());

    daemon.restart();
    wait_until("/readyz to answer 200 once Docker is back", || {
        let r = manager
            .try_request("GET", "/readyz", None, None, &[])
            .ok()?;
        (r.status == 200).then_some(())
    });
    let expected = names(&[
        ids[0].clone(),
        ids[1].clone(),
        ids[3].clone(),
        added.clone(),
    ]);
    wait_until(
        "exactly one running container per project, none for the removed one",
        || {
            let listed = private_names(&daemon, &env.instance)?;
            let unique: BTreeSet<String> = listed.iter().cloned().collect();
            (unique.len() == listed.len() && unique == expected).then_some(())
        },
    );
    for id in [&ids[0], &ids[1], &ids[3], &added] {
        wait_until(&format!("{id} converged in the manager's view"), || {
            let view = manager
                .try_request(
                    "GET",
                    &format!("/internal/postgrest/{id}"),
                    Some(manager.key()),
                    None,
                    &[],
                )
                .ok()?;
            (view.status == 200 && view.json()["converged"] == true).then_some(())
        });
    }
    // The reloaded project: the same container, the new secret in force, the old refused.
    let (id_after, ip_after) = private_container(&daemon, &env.container(&ids[0])).unwrap();
    assert_eq!(
        id_after, reloaded_id,
        "a secret change must reload in place"
    );
    let ip_after = ip_after.expect("the container has an address");
    wait_until("the new secret in force in the reloaded container", || {
        let new_token = private_get(&daemon, ip_after, &jwt(&new, "authenticated"))?;
        let old_token = private_get(&daemon, ip_after, &jwt(&old, "authenticated"))?;
        (new_token != 401 && old_token == 401).then_some(())
    });
    // The recreated project: a new container that runs the new password.
    let (id_after, _) = private_container(&daemon, &env.container(&ids[1])).unwrap();
    assert_ne!(id_after, recreated_id, "a password change must recreate");
    let dump = daemon.docker(&[
        "exec",
        &env.container(&ids[1]),
        "postgrest",
        "--dump-config",
        "/etc/postgrest/postgrest.conf",
    ]);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(dump["db_uri"]["password"], new_password.as_str());

    let log = manager.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("Docker is reachable again"))
            .count(),
        1,
        "{log}"
    );
    assert_no_secrets(&log, &[&old, &new, &password, &new_password]);
}

// ---------------------------------------------------------------------------------------------
// 3. A full disk under the state and config directories

/// A small tmpfs mounted for one test; unmounted when dropped (lazily if something still
/// holds it, e.g. a container's bind mount on the way out).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the file system: one file grows until the kernel says ENOSPC.
    fn fill(&self) {
        let mut file = fs::File::create(self.path.join("fill")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Whatever the page cache still held is on the tmpfs already; nothing to sync.
    }

    fn free(&self) {
        fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Temp files (`.<name>.tmp`) left in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with('.') && name.ends_with(".tmp"))
        .collect()
}

/// The state directory full: API writes answer 507 naming the cause (never a secret), the old
/// file is intact, nothing half-written is left, the running container is untouched. The
/// config directory full: the write is saved but cannot reach the container, the answer says
/// why, and the container keeps its old config. Once space returns, the saved write converges
/// and new writes succeed.
#[test]
fn a_full_disk_refuses_writes_cleanly_and_recovers() {
    let env = TestEnv::new();
    let state = Tmpfs::mount(&env.root().join("state-fs"), "1m");
    let configs = Tmpfs::mount(&env.root().join("configs-fs"), "1m");
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            state_dir: Some(state.path.clone()),
            config_dir: Some(configs.path.clone()),
            // Long enough for a cold start on a loaded 2-core machine (the last spawn must be
            // a 201).
            api_timeout_secs: Some(25),
            ..ManagerOpts::default()
        },
    );
    let (a, b) = (env.project_id(), env.project_id());
    let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
    let spawn = |id: &str| {
        manager.call(
            "POST",
            "/internal/postgrest/spawn",
            Some(serde_json::json!({"projectId": id, "jwtSecret": old, "authenticatorPassword": password})),
        )
    };
    let put_new = || {
        manager.call(
            "PUT",
            &format!("/internal/postgrest/{a}"),
            Some(serde_json::json!({"jwtSecret": new, "authenticatorPassword": password})),
        )
    };
    let created = spawn(&a);
    assert_eq!(created.status, 201, "{}", created.body);
    let before = env.wait_serving(&a);
    let state_file = state.path.join(format!("{a}.toml"));
    let config_file = configs.path.join(&a).join("postgrest.conf");
    let (state_before, config_before) = (
        fs::read(&state_file).unwrap(),
        fs::read(&config_file).unwrap(),
    );
    let untouched = |what: &str| {
        let now = inspect(&before.name).expect("the container still exists");
        assert_eq!(
            (now.id.as_str(), now.running),
            (before.id.as_str(), true),
            "{what}"
        );
        let ip = now.ip.unwrap();
        assert_eq!(
            http_get(ip, "/", Some(&jwt(&old, "authenticated"))).unwrap(),
            200,
            "{what}"
        );
        assert_eq!(
            http_get(ip, "/", Some(&jwt(&new, "authenticated"))).unwrap(),
            401,
            "{what}"
        );
        assert_eq!(
            fs::read(&config_file).unwrap(),
            config_before,
            "{what}: the config changed"
        );
    };

    // The state directory's disk is full.
    state.fill();
    for (what, answer) in [("a rotation", put_new()), ("a new project", spawn(&b))] {
        assert_eq!(answer.status, 507, "{what}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["error"], "insufficient_storage", "{what}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("no space left on device"),
            "{what}: {message}"
        );
        assert_no_secrets_in("an answer", &answer.body, &[&old, &new, &password]);
    }
    assert_eq!(
        fs::read(&state_file).unwrap(),
        state_before,
        "the old file is intact"
    );
    assert!(!state.path.join(format!("{b}.toml")).exists());
    assert_eq!(temp_files(&state.path), Vec::<String>::new());
    untouched("with the state directory full");

    // Space back for the state, none for the configs: the write is saved, but the loop
    // cannot render it, and says so; the container keeps running its old config.
    state.free();
    configs.fill();
    let answer = put_new();
    // The file is saved, the loop cannot write its config: a 507 as soon as the loop says
    // so (not a 504 when the wait runs out), naming the cause and that the state is saved.
    assert_eq!(answer.status, 507, "{}", answer.body);
    assert!(
        answer.body.contains("no space left on device")
            && answer.body.contains("config directory")
            && answer.body.contains("desired state is saved"),
        "the answer names the cause: {}",
        answer.body
    );
    assert_no_secrets_in("an answer", &answer.body, &[&old, &new, &password]);
    assert_eq!(temp_files(&configs.path.join(&a)), Vec::<String>::new());
    untouched("with the config directory full");

    // Space back: the saved rotation reaches the container (in place), new writes succeed.
    configs.free();
    wait_jwt_status(&before, &new, "authenticated", 200);
    assert_eq!(inspect(&before.name).unwrap().id, before.id);
    let created = spawn(&b);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_no_secrets(&manager.log(), &[&old, &new, &password]);
}

// ---------------------------------------------------------------------------------------------
// 4. Bursts of edits

/// How many actions the manager logged as done for `project` (`action=<kind> ... done`, in
/// a span with `project=<id>`; the id as a whole word, so `p1` never counts `p10`).
fn actions_done(log: &str, project: &str) -> usize {
    let field = format!("project={project}");
    log.lines()
        .filter(|l| l.contains("action=") && l.contains(" done"))
        .filter(|l| l.split([' ', '{', '}', ':', ',']).any(|word| word == field))
        .count()
}

/// 50 projects run; then 1,000 edits to their 50 files within about a second (each file
/// rewritten 20 times with a new JWT secret): the loop coalesces them. Afterwards there is
/// exactly one container per file, the one it had before (reloads, no recreate), each refuses
/// every token but the one signed with its file's last secret, and the number of reloads stays
/// far below the number of edits.
#[test]
fn a_burst_of_a_thousand_edits_coalesces() {
    const FILES: usize = 50;
    const ROUNDS: usize = 20;
    let env = TestEnv::new();
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let ids: Vec<String> = (0..FILES).map(|_| env.project_id()).collect();
    let password = secret("pw");
    // Round 0 creates the projects; rounds 1..=ROUNDS are the burst.
    let secrets: Vec<Vec<String>> = ids
        .iter()
        .map(|_| (0..=ROUNDS).map(|_| secret("burst")).collect())
        .collect();
    let write = |id: &str, secret: &str| {
        // Write and rename, as the CLI and editors that keep backups do; no fsync, so the
        // burst is as dense as the disk allows.
        let tmp = env.state_dir.join(format!(".{id}.burst.tmp"));
        fs::write(&tmp, state_toml(secret, &password)).unwrap();
        fs::rename(&tmp, env.state_file(id)).unwrap();
    };
    // Which token a container takes: the last secret's, and not the one before it.
    let wait_secret = |id: &str, ip: IpAddr, secret: &str, previous: Option<&str>| {
        let token = jwt(secret, "authenticated");
        let previous = previous.map(|p| jwt(p, "authenticated"));
        wait_until(&format!("{id} to take its secret"), || {
            let now = http_get(ip, "/", Some(&token)).ok()?;
            let before = match &previous {
                Some(t) => http_get(ip, "/", Some(t)).ok()?,
                None => 401,
            };
            (now != 401 && before == 401).then_some(())
        });
    };
    for (n, id) in ids.iter().enumerate() {
        write(id, &secrets[n][0]);
    }
    let mut before = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let c = wait_until_for(
            &format!("{id} running with an address"),
            Duration::from_secs(120),
            || inspect(&env.container(id)).filter(|c| c.running && c.ip.is_some()),
        );
        wait_secret(id, c.ip.unwrap(), &secrets[n][0], None);
        before.push(c);
    }
    manager.wait_passes(2);
    let log = manager.log();
    let actions_before: Vec<usize> = ids.iter().map(|id| actions_done(&log, id)).collect();

    let started = Instant::now();
    for round in 1..=ROUNDS {
        for (id, file_secrets) in ids.iter().zip(&secrets) {
            write(id, &file_secrets[round]);
        }
    }
    let burst = started.elapsed();
    eprintln!("{} edits in {burst:?}", FILES * ROUNDS);
    assert!(
        burst < Duration::from_secs(3),
        "the burst took {burst:?}: not a burst on this machine"
    );

    for (n, id) in ids.iter().enumerate() {
        let ip = before[n].ip.unwrap();
        wait_secret(id, ip, &secrets[n][ROUNDS], Some(&secrets[n][ROUNDS - 1]));
    }
    // Settled: passes, a resync among them, change nothing more.
    manager.wait_passes(3);
    let mut names = env.containers();
    names.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| env.container(id)).collect();
    expected.sort();
    assert_eq!(names, expected, "one container per file");
    for c in &before {
        assert_eq!(
            inspect(&c.name).unwrap().id,
            c.id,
            "{} was recreated",
            c.name
        );
    }
    let log = manager.log();
    let per_project: Vec<usize> = ids
        .iter()
        .zip(&actions_before)
        .map(|(id, earlier)| actions_done(&log, id) - earlier)
        .collect();
    let total: usize = per_project.iter().sum();
    let most = per_project.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{} edits: {total} actions, at most {most} for one project",
        FILES * ROUNDS
    );
    // Every file changed, so every project was reloaded at least once: a count of zero
    // would mean the log line counted here changed, not that the loop coalesced.
    assert!(
        per_project.iter().all(|&n| n >= 1),
        "a project without an action after its secret changed: {per_project:?}"
    );
    assert!(
        most <= ROUNDS / 2 && total <= FILES * ROUNDS / 4,
        "the edits did not coalesce: {total} actions for {} edits, per project {per_project:?}",
        FILES * ROUNDS
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The manager SIGKILLed at random moments

/// A small seeded generator (xorshift64*): the kill moments of a run are reproducible from the
/// seed it prints (`PGM_FAULT_SEED=<seed>` replays them).
struct Moments(u64);

impl Moments {
    fn from_env() -> Moments {
        let seed = std::env::var("PGM_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("kill moments from PGM_FAULT_SEED={seed}");
        Moments(seed.max(1))
    }

    /// A delay in `[low, high)` milliseconds.
    fn between(&mut self, low: u64, high: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_millis(low + n % (high - low))
    }
}

/// The project directories in the config directory (not the `.loaded` records).
fn config_dirs(env: &TestEnv) -> BTreeSet<String> {
    fs::read_dir(&env.config_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect()
}

/// The manager is SIGKILLed at seeded random moments while it converges 24 new projects, and
/// again right after every secret changed (and two projects were removed), twice. After each
/// restart: exactly one container per project (no duplicate), none and no config for a
/// removed one (no orphan), and every container takes its file's newest secret and refuses
/// the one before (no lost reload), in the container it had.
#[test]
fn manager_killed_at_random_moments_loses_nothing() {
    const PROJECTS: usize = 24;
    let env = TestEnv::new();
    let mut moments = Moments::from_env();
    let ids: Vec<String> = (0..PROJECTS).map(|_| env.project_id()).collect();
    let password = secret("pw");
    let mut current: Vec<String> = ids.iter().map(|_| secret("jwt0")).collect();
    for (id, jwt_secret) in ids.iter().zip(&current) {
        env.write_state(id, &state_toml(jwt_secret, &password));
    }
    // Killed while it converges the new projects, three times.
    for _ in 0..3 {
        let mut manager = Manager::start(&env);
        let delay = moments.between(200, 3000);
        std::thread::sleep(delay); // the fault's moment, not a wait for a condition
        manager.kill();
        eprintln!(
            "killed {delay:?} into converging; {} containers",
            env.containers().len()
        );
    }
    let check = |live: &[String], secrets: &[String], previous: Option<&[String]>| {
        let mut expected: Vec<String> = live.iter().map(|id| env.container(id)).collect();
        expected.sort();
        wait_until_for(
            "one container per project and no other",
            Duration::from_secs(120),
            || {
                let mut names = env.containers();
                names.sort();
                (names == expected).then_some(())
            },
        );
        let mut containers = Vec::new();
        for (n, id) in live.iter().enumerate() {
            let c = wait_until(&format!("{id} running"), || {
                inspect(&env.container(id)).filter(|c| c.running && c.ip.is_some())
            });
            let token = jwt(&secrets[n], "authenticated");
            let before = previous.map(|p| jwt(&p[n], "authenticated"));
            wait_until(&format!("{id} to take its newest secret"), || {
                let now = http_get(c.ip?, "/", Some(&token)).ok()?;
                let old = match &before {
                    Some(t) => http_get(c.ip?, "/", Some(t)).ok()?,
                    None => 401,
                };
                (now != 401 && old == 401).then_some(())
            });
            containers.push(c);
        }
        containers
    };
    let mut manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let mut live = ids;
    let mut containers = check(&live, &current, None);

    // Killed right after the secrets changed (and two projects went away), twice.
    for round in 1..=2 {
        let removed = live.pop().unwrap();
        env.remove_state(&removed);
        containers.pop();
        let previous = current.clone();
        current = live
            .iter()
            .map(|_| secret(&format!("jwt{round}")))
            .collect();
        for (id, jwt_secret) in live.iter().zip(&current) {
            env.write_state(id, &state_toml(jwt_secret, &password));
        }
        let delay = moments.between(0, 400);
        std::thread::sleep(delay); // the fault's moment
        manager.kill();
        eprintln!("killed {delay:?} after the secrets changed");
        manager = Manager::start_with(&env, ManagerOpts::quick_resync());
        let after = check(&live, &current, Some(&previous[..live.len()]));
        for (before, after) in containers.iter().zip(&after) {
            assert_eq!(
                before.id, after.id,
                "{} was recreated for a secret",
                before.name
            );
        }
        manager.wait_passes(3);
        let expected: BTreeSet<String> = live.iter().cloned().collect();
        assert_eq!(
            config_dirs(&env),
            expected,
            "a config left for a removed project"
        );
        assert!(inspect(&env.container(&removed)).is_none());
        containers = after;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile clients

/// Reads until the server closes the connection (or answers and closes); what it sent, or
/// `None` if the connection stayed open for 30 s: the server kept a hostile client.
fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

/// A hostile client's thread: its kind, and what the server sent before it closed the
/// connection (`None`: the server kept it open).
type HostileClient = std::thread::JoinHandle<(&'static str, Option<Vec<u8>>)>;

/// One wave of hostile clients against `addr`, each in a thread that returns what the
/// server did to it: 40 idle connections (more than the cap of 16), 8 that drip a request head
/// a few bytes at a time, 4 with oversized heads (too many headers, one huge header).
fn hostile_wave(addr: SocketAddr) -> Vec<HostileClient> {
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(std::thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return ("idle", Some(Vec::new()));
            };
            ("idle", read_until_closed(&mut stream))
        }));
    }
    for _ in 0..8 {
        clients.push(std::thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return ("drip", Some(Vec::new()));
            };
            let head =
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a\r\nX-Slow: b\r\nX-Slow: c\r\n";
            for chunk in head.chunks(4).cycle().take(200) {
                // The attacker's pace: a few bytes every 200 ms, never a whole head.
                if stream.write_all(chunk).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            ("drip", read_until_closed(&mut stream))
        }));
    }
    for n in 0..4 {
        clients.push(std::thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return ("oversized", Some(Vec::new()));
            };
            let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
            if n % 2 == 0 {
                for i in 0..200 {
                    head.push_str(&format!("X-Many-{i}: {i}\r\n"));
                }
            } else {
                head.push_str(&format!("X-Huge: {}\r\n", "h".repeat(2 << 20)));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            ("oversized", read_until_closed(&mut stream))
        }));
    }
    clients
}

/// Checks what a wave's clients got: every one was closed by the server (none kept), and no
/// oversized head was served.
fn assert_wave_repelled(clients: Vec<HostileClient>) {
    for client in clients {
        let (kind, got) = client.join().expect("a hostile client thread");
        let got = got.unwrap_or_else(|| panic!("the server kept a hostile {kind} connection open"));
        let answer = String::from_utf8_lossy(&got);
        if kind == "oversized" {
            assert!(
                got.is_empty()
                    || answer.starts_with("HTTP/1.1 431")
                    || answer.starts_with("HTTP/1.1 400"),
                "an oversized head got {answer:.100}"
            );
        }
    }
}

/// Idle connections over the cap, slow request heads and oversized headers, while a project
/// file is added and a project is spawned through the API: the loop converges the new project
/// meanwhile, a normal request gets its answer within the harness timeout, the API's spawn
/// succeeds, and the server closes every hostile connection.
/// (`tests/api.rs::slow_clients_are_cut_off_and_capped` proves the timeout and the cap on
/// their own.)
#[test]
fn hostile_clients_never_stop_the_api_or_the_loop() {
    let env = TestEnv::new();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            args: vec![
                "--api-max-connections".into(),
                "16".into(),
                "--api-header-timeout-secs".into(),
                "2".into(),
            ],
            ..ManagerOpts::default()
        },
    );
    let (by_file, by_api) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));

    let wave = hostile_wave(manager.addr());
    env.write_state(&by_file, &state_toml(&jwt_secret, &password));
    env.wait_serving(&by_file);
    let view = wait_until("a normal request to be answered", || {
        let response = manager
            .try_request(
                "GET",
                &format!("/internal/postgrest/{by_file}"),
                Some(manager.key()),
                None,
                &[],
            )
            .ok()?;
        (response.status == 200).then_some(response)
    });
    assert_eq!(view.json()["status"], "running", "{}", view.body);

    // A second wave while a client spawns through the API. A connection over the cap is
    // closed before the request is read, so the client tries again.
    let second = hostile_wave(manager.addr());
    let body = serde_json::json!({"projectId": by_api, "jwtSecret": jwt_secret, "authenticatorPassword": password})
        .to_string();
    let spawned = wait_until("the spawn to be answered", || {
        manager
            .try_request(
                "POST",
                "/internal/postgrest/spawn",
                Some(manager.key()),
                Some(body.as_bytes()),
                &[],
            )
            .ok()
    });
    assert_eq!(spawned.status, 201, "{}", spawned.body);
    env.wait_serving(&by_api);
    assert_wave_repelled(wave);
    assert_wave_repelled(second);
    assert!(manager.running());
    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

// ---------------------------------------------------------------------------------------------
// 6. JWT rotation under client load

/// Four clients send requests to a serving project without pause while its secret rotates
/// twice through `PUT`. Each client signs with the newest secret the API has confirmed (the
/// last `PUT` answered 200). Every request gets 200, except a 401 for a token whose secret a
/// rotation that had already been sent replaced; no request meets a refused or reset
/// connection, and once a `PUT` answered, its secret always works.
#[test]
fn jwt_rotation_under_client_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const CLIENTS: usize = 4;
    let env = TestEnv::new();
    let manager = Manager::start_api(&env);
    let id = env.project_id();
    let password = secret("pw");
    let secrets: Vec<String> = (0..3).map(|n| secret(&format!("rot{n}"))).collect();
    let tokens: Arc<Vec<String>> =
        Arc::new(secrets.iter().map(|s| jwt(s, "authenticated")).collect());
    let spawned = manager.call(
        "POST",
        "/internal/postgrest/spawn",
        Some(serde_json::json!({"projectId": id, "jwtSecret": secrets[0], "authenticatorPassword": password})),
    );
    assert_eq!(spawned.status, 201, "{}", spawned.body);
    let container = env.wait_serving(&id);
    let ip = container.ip.unwrap();

    // `confirmed`: the newest secret a PUT answered 200 for; `sent`: the newest one a PUT
    // was sent for. A 401 is fine only for a token older than `sent`.
    let confirmed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (tokens, confirmed, sent, stop, counts) = (
                Arc::clone(&tokens),
                Arc::clone(&confirmed),
                Arc::clone(&sent),
                Arc::clone(&stop),
                Arc::clone(&counts),
            );
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut refused_old = 0;
                while !stop.load(Ordering::SeqCst) {
                    let k = confirmed.load(Ordering::SeqCst);
                    match http_get(ip, "/", Some(&tokens[k])) {
                        Ok(200) => {}
                        Ok(401) if sent.load(Ordering::SeqCst) > k => refused_old += 1,
                        Ok(status) => failures.push(format!("secret {k}: status {status}")),
                        Err(e) => failures.push(format!("secret {k}: {e}")),
                    }
                    counts[n].fetch_add(1, Ordering::SeqCst);
                }
                (failures, refused_old)
            })
        })
        .collect();
    let requests = |counts: &[AtomicUsize]| -> Vec<usize> {
        counts.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    };
    for (rotation, next) in secrets.iter().enumerate().skip(1) {
        let floor = requests(&counts);
        wait_until("every client to send 20 more requests", || {
            requests(&counts)
                .iter()
                .zip(&floor)
                .all(|(now, then)| *now >= then + 20)
                .then_some(())
        });
        sent.store(rotation, Ordering::SeqCst);
        let put = manager.call(
            "PUT",
            &format!("/internal/postgrest/{id}"),
            Some(serde_json::json!({"jwtSecret": next, "authenticatorPassword": password})),
        );
        assert_eq!(put.status, 200, "{}", put.body);
        confirmed.store(rotation, Ordering::SeqCst);
    }
    let floor = requests(&counts);
    wait_until(
        "every client to send 20 requests with the last secret",
        || {
            requests(&counts)
                .iter()
                .zip(&floor)
                .all(|(now, then)| *now >= then + 20)
                .then_some(())
        },
    );
    stop.store(true, Ordering::SeqCst);
    let mut refused = 0;
    for client in clients {
        let (failures, refused_old) = client.join().expect("a client thread");
        assert!(failures.is_empty(), "requests failed: {failures:?}");
        refused += refused_old;
    }
    let total: usize = requests(&counts).iter().sum();
    eprintln!("{total} requests across two rotations; {refused} old tokens refused in between");
    // The rotations took effect: the old secrets are refused, in the same container.
    assert_eq!(http_get(ip, "/", Some(&tokens[0])).unwrap(), 401);
    assert_eq!(http_get(ip, "/", Some(&tokens[1])).unwrap(), 401);
    assert_eq!(inspect(&container.name).unwrap().id, container.id);
    assert_no_secrets(
        &manager.log(),
        &[&secrets[0], &secrets[1], &secrets[2], &password],
    );
}
