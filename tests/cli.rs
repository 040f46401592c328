//! The CLI's promises, observed from outside the process: its exit codes, that its writes are
//! atomic (a writer killed at any moment leaves every state file whole), and that it takes the
//! state directory's writer lock (`state/.lock`, an advisory `flock`) for a write but never
//! while it waits for the manager. The lock is held from the test by util-linux's `flock`,
//! and waiting on it is seen where the kernel shows it: `/proc/locks` lists a blocked waiter
//! with `->` and its pid.
//!
//! The API's side of the lock is tested here too, since the same lock is the point.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgrest_manager::spec::{ProjectId, Spec, SpecFile};
use serde_json::json;
use support::*;

/// Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 no such project.
#[test]
fn exit_codes_say_what_went_wrong() {
    let env = TestEnv::new();
    let (id, missing) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));

    let added = env.cli(&["add-project", &id, &jwt_secret, &password]);
    assert_eq!(added.code, Some(0), "{added:?}");
    for args in [
        vec!["reload", id.as_str()],
        vec!["stop", id.as_str()],
        vec!["spawn", id.as_str()],
        vec!["status", id.as_str()],
        vec!["list"],
    ] {
        let run = env.cli(&args);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    }

    // 2: bad usage or input, and nothing written.
    let short_secret = env.cli(&["add-project", &missing, "short", &password]);
    for (args, what) in [
        (vec!["reload", "Not-An-Id"], "an invalid id"),
        (
            vec!["add-project", "../etc/passwd", &jwt_secret, &password],
            "a path as id",
        ),
        (vec!["status", "a b"], "an id with a space"),
        (vec!["frobnicate", &id], "an unknown subcommand"),
        (vec!["add-project", &id], "missing arguments"),
        (vec!["reload"], "no id"),
    ] {
        let run = env.cli(&args);
        assert_eq!(run.code, Some(2), "{what}: {run:?}");
        assert!(!run.stderr.is_empty(), "{what}: no message");
    }
    assert_eq!(
        short_secret.code,
        Some(2),
        "a short JWT secret: {short_secret:?}"
    );
    assert!(
        short_secret.stderr.contains("jwt_secret"),
        "{short_secret:?}"
    );
    assert!(!env.state_file(&missing).exists());

    // 3: no such project.
    for command in ["reload", "spawn", "stop", "remove", "status"] {
        let run = env.cli(&[command, &missing]);
        assert_eq!(run.code, Some(3), "{command}: {run:?}");
        assert!(run.stderr.contains(&missing), "{command}: {run:?}");
    }
    assert!(!env.state_file(&missing).exists());

    let removed = env.cli(&["remove", &id]);
    assert_eq!(removed.code, Some(0), "{removed:?}");
    let again = env.cli(&["remove", &id]);
    assert_eq!(again.code, Some(3), "{again:?}");
    for run in [added, removed] {
        assert_no_secrets_in("the CLI's output", &run.stdout, &[&jwt_secret, &password]);
        assert_no_secrets_in("the CLI's errors", &run.stderr, &[&jwt_secret, &password]);
    }
}

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a
/// failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every write is atomic: CLI writers (`add-project` with secrets of varying length, `reload`)
/// are killed with SIGKILL at random moments, hundreds of times, and after every kill every
/// project file in the state directory parses and validates, holds one whole write (never a
/// mix of two), and whatever a killed writer left behind is a dotfile, which the loader
/// ignores: `status` lists exactly the two projects.
#[test]
fn every_cli_write_is_atomic_under_sigkill() {
    let env = TestEnv::new();
    let (a, b) = (env.project_id(), env.project_id());
    let password = secret("pw");
    let first = secret("jwt");
    let mut written = vec![first.clone()];
    for id in [&a, &b] {
        let run = env.cli(&["add-project", id, &first, &password]);
        assert_eq!(run.code, Some(0), "{run:?}");
    }

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("atomic writes: seed {seed}");
    let mut rng = Rng(seed);

    // How long a whole write takes here: the kills land anywhere from before the process
    // starts writing to after it finished.
    let mut durations: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let run = env.cli(&["reload", &a]);
            assert_eq!(run.code, Some(0), "{run:?}");
            started.elapsed()
        })
        .collect();
    durations.sort();
    let window = durations[2].as_micros() as u64 * 3 / 2;

    let (mut killed, mut finished) = (0, 0);
    for round in 0..300 {
        let mut command = if rng.below(2) == 0 {
            env.cli_command(&["reload", &a])
        } else {
            // Secrets of very different lengths: a torn write would show as a mix.
            let length = 32 + rng.below(400) as usize;
            let jwt_secret: String = format!("{round}-{}", "s".repeat(length));
            written.push(jwt_secret.clone());
            env.cli_command(&["add-project", &b, &jwt_secret, &password])
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let process = env.spawn(&mut command);
        thread::sleep(Duration::from_micros(rng.below(window)));
        let status = process.kill();
        match status.signal() {
            Some(9) => killed += 1,
            _ => {
                assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
                finished += 1;
            }
        }
        check_state_dir(&env.state_dir, &[&a, &b], &written, round);
    }
    eprintln!("atomic writes: {killed} writers killed, {finished} finished, window {window} µs");
    assert!(
        killed >= 30 && finished >= 10,
        "the kills did not spread over the writes ({killed} killed, {finished} finished)"
    );

    let status = env.cli(&["status", "--json"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let mut listed: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["projectId"].as_str().unwrap().to_owned(),
                r["desired"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, vec![(a, "enabled".into()), (b, "enabled".into())]);
}

/// Every project file parses and validates and holds a JWT secret that was written whole;
/// every other entry is a dotfile (a temp file of a killed writer, or the lock).
fn check_state_dir(dir: &Path, ids: &[&str], written: &[String], round: usize) {
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let id = name
            .strip_suffix(".toml")
            .filter(|id| ids.contains(id))
            .unwrap_or_else(|| panic!("round {round}: a file the loader would see: {name}"));
        let text = fs::read_to_string(dir.join(&name)).unwrap();
        let file = SpecFile::parse(&text)
            .unwrap_or_else(|e| panic!("round {round}: {name} does not parse: {e}"));
        let jwt_secret = file.jwt_secret.expose().to_owned();
        Spec::from_file(ProjectId::parse(id).unwrap(), file)
            .unwrap_or_else(|e| panic!("round {round}: {name} is invalid: {e}"));
        assert!(
            written.contains(&jwt_secret),
            "round {round}: {name} holds a secret nobody wrote"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The writer lock

/// `(pid, blocked)` of every `flock` on the file's inode, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF`, a waiter as `1: -> FLOCK ...`).
fn flocks(path: &Path) -> Vec<(u32, bool)> {
    let inode = fs::metadata(path).unwrap().ino().to_string();
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let blocked = fields.get(1) == Some(&"->");
            let fields = &fields[if blocked { 2 } else { 1 }..];
            if fields.first() != Some(&"FLOCK") {
                return None;
            }
            let pid = fields.get(3)?.parse().ok()?;
            let on = fields.get(4)?.rsplit(':').next()?;
            (on == inode).then_some((pid, blocked))
        })
        .collect()
}

/// Holds the state directory's writer lock from outside, as an operator's tool would
/// (`flock` from util-linux, on an fd of a shell that then becomes `sleep`: one process,
/// which releases the lock when it is killed). Returns once the kernel shows it held.
fn hold_lock(env: &TestEnv) -> Process {
    let lock = env.state_dir.join(".lock");
    let holder = env.spawn(
        Command::new("sh")
            .args(["-c", "exec 9>>\"$0\" && flock 9 && exec sleep 600"])
            .arg(&lock)
            .stdin(Stdio::null()),
    );
    // The lock is recorded under the pid of `flock`, the shell's short-lived child, so look
    // for any holder: nobody else locks this env's directory.
    wait_until("the test's flock on state/.lock", || {
        flocks(&lock)
            .iter()
            .any(|(_, blocked)| !blocked)
            .then_some(())
    });
    holder
}

/// A CLI write waits for the writer lock: while someone else holds it, `reload` blocks in
/// `flock` (the kernel lists it as a waiter) and writes nothing; once the lock is released,
/// it writes. And a CLI waiting for the manager (`--wait`) does not hold it: another CLI write
/// goes through meanwhile, and the kernel shows no lock of the waiting process.
#[test]
fn the_cli_takes_the_writer_lock_and_does_not_hold_it_while_waiting() {
    let env = TestEnv::new();
    let (id, other) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    let run = env.cli(&["add-project", &id, &jwt_secret, &password]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lock = env.state_dir.join(".lock");
    let before = fs::read_to_string(env.state_file(&id)).unwrap();

    let holder = hold_lock(&env);
    let mut reload = env.cli_command(&["reload", &id]);
    reload.stdout(Stdio::null()).stderr(Stdio::null());
    let writer = env.spawn(&mut reload);
    wait_until("the CLI to wait for the lock", || {
        flocks(&lock).contains(&(writer.pid, true)).then_some(())
    });
    assert!(writer.try_wait().is_none(), "the CLI did not wait");
    assert_eq!(fs::read_to_string(env.state_file(&id)).unwrap(), before);
    holder.kill();
    let status = writer
        .wait_timeout(TIMEOUT)
        .expect("the CLI finishes once the lock is free");
    assert_eq!(status.code(), Some(0));
    let after = fs::read_to_string(env.state_file(&id)).unwrap();
    assert!(after.contains("reload_token = 1"), "{after}");

    // No manager runs: `--wait` waits for a container that never comes, for two minutes.
    let mut waiting = env.cli_command(&[
        "add-project",
        &other,
        &jwt_secret,
        &password,
        "--wait",
        "120",
    ]);
    waiting.stdout(Stdio::null()).stderr(Stdio::null());
    let waiter = env.spawn(&mut waiting);
    wait_until("the waiting CLI to write its file", || {
        env.state_file(&other).exists().then_some(())
    });
    let run = env.cli(&["reload", &id]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        fs::read_to_string(env.state_file(&id))
            .unwrap()
            .contains("reload_token = 2"),
        "the second write did not happen"
    );
    assert!(
        waiter.try_wait().is_none(),
        "the first CLI stopped waiting, so this proves nothing"
    );
    assert!(
        !flocks(&lock).iter().any(|(pid, _)| *pid == waiter.pid),
        "the waiting CLI holds the lock"
    );
}

/// An API write takes the same lock: a `PUT` blocks in `flock` while the test holds it (the
/// kernel lists the manager as a waiter) and writes once it is released. While the `PUT` then
/// waits for a convergence that cannot come (the image does not exist), it holds no lock: a
/// CLI write goes through.
#[test]
fn the_api_takes_the_writer_lock_and_does_not_hold_it_while_waiting() {
    let env = TestEnv::new();
    let api = Arc::new(Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            api_timeout_secs: Some(15),
            image: Some("launchdb/does-not-exist:never".into()),
            ..ManagerOpts::default()
        },
    ));
    let (id, other) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    let run = env.cli(&["add-project", &other, &jwt_secret, &password]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lock = env.state_dir.join(".lock");

    let holder = hold_lock(&env);
    let put = {
        let (api, uri) = (Arc::clone(&api), format!("/internal/postgrest/{id}"));
        let body = json!({"jwtSecret": jwt_secret, "authenticatorPassword": password});
        thread::spawn(move || api.call("PUT", &uri, Some(body)))
    };
    // The API waits for the lock without parking a thread on it (it polls), so it shows in
    // its log, not in /proc/locks.
    api.wait_log("the state directory is locked by another writer; waiting");
    assert!(
        !flocks(&lock).iter().any(|(pid, _)| *pid == api.pid),
        "the API holds or blocks on the lock while another writer has it"
    );
    assert!(
        !env.state_file(&id).exists(),
        "the API wrote without the lock"
    );
    holder.kill();
    wait_until("the API's write once the lock is free", || {
        env.state_file(&id).exists().then_some(())
    });

    let run = env.cli(&["reload", &other]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        !put.is_finished(),
        "the PUT stopped waiting, so this proves nothing"
    );
    assert!(
        !flocks(&lock).iter().any(|(pid, _)| *pid == api.pid),
        "the waiting API holds the lock"
    );
    let response = put.join().unwrap();
    assert_eq!(response.status, 504, "{}", response.body);
    assert_no_secrets(&api.log(), &[&jwt_secret, &password]);
}

/// Someone holding the writer lock by hand (as the README allows) gets an API write a 504
/// within the API timeout, never a hang, and nothing is written (issue 10, finding 7).
#[test]
fn a_write_waits_for_the_lock_no_longer_than_the_api_timeout() {
    let env = TestEnv::new();
    let api = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            api_timeout_secs: Some(2),
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    fs::write(env.state_dir.join(".lock"), "").unwrap();
    let holder = hold_lock(&env);
    let started = Instant::now();
    let body = json!({"jwtSecret": secret("jwt"), "authenticatorPassword": "pw"});
    let put = api.call("PUT", &format!("/internal/postgrest/{id}"), Some(body));
    assert_eq!(put.status, 504, "{}", put.body);
    assert!(put.body.contains("stayed locked"), "{}", put.body);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!env.state_file(&id).exists(), "written without the lock");
    holder.kill();
}

/// `plan` computes what the loop would do without doing it, and says why; its exit code is 0
/// when everything is converged and 2 when there is work. Under a stopped manager nothing
/// converges, so the plan after an edit stays put for the test to read. `diff` shows the
/// rendered config against the loaded one with every secret masked.
#[test]
fn plan_says_what_the_loop_would_do_and_diff_masks_secrets() {
    let env = TestEnv::new();
    let (a, b) = (env.project_id(), env.project_id());
    let (jwt, password) = (secret("jwt"), secret("pw"));
    let mut manager = Manager::start(&env);
    for id in [&a, &b] {
        let added = env.cli(&["add-project", id, &jwt, &password]);
        assert_eq!(added.code, Some(0), "{added:?}");
    }
    env.wait_serving(&a);
    env.wait_serving(&b);
    let (config_dir, image) = (env.config_dir.display().to_string(), image());
    let settings = [
        "--config-dir",
        config_dir.as_str(),
        "--network",
        env.network.as_str(),
        "--image",
        image.as_str(),
    ];
    let cli = |command: &[&str]| {
        let args: Vec<&str> = command.iter().chain(&settings).copied().collect();
        env.cli(&args)
    };
    // Converged once the manager has recorded both configs as loaded.
    let converged = wait_until("plan to exit 0", || {
        let run = cli(&["plan"]);
        (run.code == Some(0)).then_some(run)
    });
    for id in [&a, &b] {
        assert!(
            converged
                .stdout
                .contains(&format!("{id}  nothing: converged")),
            "{converged:?}"
        );
    }
    let same = cli(&["diff", &a]);
    assert_eq!(same.code, Some(0), "{same:?}");
    assert!(same.stdout.contains("loaded by container"), "{same:?}");

    manager.kill();
    let (new_jwt, new_password) = (secret("jwt"), secret("pw"));
    env.write_state(&a, &state_toml(&new_jwt, &password));
    env.write_state(
        &b,
        &format!("{}enabled = false\n", state_toml(&jwt, &password)),
    );
    let work = cli(&["plan"]);
    assert_eq!(work.code, Some(2), "{work:?}");
    assert!(
        work.stdout
            .contains(&format!("{a}  reload: jwt_secret changed")),
        "{work:?}"
    );
    assert!(
        work.stdout.contains(&format!("{b}  remove: disabled")),
        "{work:?}"
    );
    let json = cli(&["plan", "--json"]);
    assert_eq!(json.code, Some(2), "{json:?}");
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["converged"], false);
    assert_eq!(
        parsed["projects"][0],
        json!({"projectId": a, "action": "reload", "reason": "reload: jwt_secret changed"})
    );

    env.write_state(&a, &state_toml(&new_jwt, &new_password));
    let recreate = cli(&["plan"]);
    assert_eq!(recreate.code, Some(2), "{recreate:?}");
    assert!(
        // The container serves, so it is replaced beside itself (blue/green), not recreated.
        recreate.stdout.contains(&format!(
            "{a}  replace: authenticator_password changed (db-uri is not reloadable)"
        )),
        "{recreate:?}"
    );

    let diff = cli(&["diff", &a]);
    assert_eq!(diff.code, Some(2), "{diff:?}");
    assert!(diff.stdout.contains("- jwt-secret = \"***\""), "{diff:?}");
    assert!(diff.stdout.contains("+ jwt-secret = \"***\""), "{diff:?}");
    assert!(diff.stdout.contains(":***@"), "{diff:?}");
    let secrets = [jwt.as_str(), password.as_str(), &new_jwt, &new_password];
    for run in [&work, &json, &recreate, &diff, &same, &converged] {
        assert_no_secrets_in("plan/diff output", &run.stdout, &secrets);
        assert_no_secrets_in("plan/diff errors", &run.stderr, &secrets);
    }
    // Nothing was done: the old container still runs, with the old config.
    assert!(inspect(&env.container(&b)).is_some_and(|c| c.running));

    // A manager again: it converges, and the plan says so.
    let _manager = Manager::start(&env);
    env.wait_gone(&b);
    wait_until("plan to exit 0 after the manager converged", || {
        let run = cli(&["plan"]);
        (run.code == Some(0)).then_some(())
    });
    assert_eq!(cli(&["diff", &a]).code, Some(0));
    let missing = cli(&["diff", &env.project_id()]);
    assert_eq!(missing.code, Some(3), "{missing:?}");
}
