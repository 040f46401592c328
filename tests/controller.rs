//! The controller against the real Docker daemon: desired-state files in, PostgREST
//! containers out, observed the way a user would (docker inspect, HTTP requests with JWTs,
//! the config the containerised PostgREST double parses back, the manager's log).
//!
//! Every test runs its own manager with its own instance label, network and directories, and
//! ends by checking that no secret it used appears in the manager's log.

mod support;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Dropping `state/<id>.toml` runs `postgrest-<id>` with our labels, its own config dir
/// mounted read-only, reachable from another container on the network; the rendered config is
/// private to PostgREST's UID.
/// `PGM_HEALTHCHECK_SECS=0`: no Docker health check (no process exec'd in every container
/// every interval, the host's biggest cost at a thousand containers, BENCHMARKS.md "Scale"),
/// also over the image's own; the container serves and the manager's probe says so.
#[test]
fn with_healthchecks_off_a_container_has_none_and_serves() {
    let env = TestEnv::new();
    let _manager = Manager::start_with(
        &env,
        ManagerOpts {
            env: vec![("PGM_HEALTHCHECK_SECS".into(), "0".into())],
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    env.write_state(&id, &state_toml(&secret("jwt"), &secret("pw")));
    let c = env.wait_serving(&id);
    assert!(c.has_healthcheck, "Docker's NONE is a health check entry");
    let check = docker_ok(&[
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        &c.name,
    ]);
    assert_eq!(check.trim(), r#"["NONE"]"#);
    let health = docker_ok(&["inspect", "-f", "{{json .State.Health}}", &c.name]);
    assert_eq!(health.trim(), "null", "Docker runs no check: {health}");
}

#[test]
fn new_state_file_runs_a_hardened_container() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let (a, b) = (env.project_id(), env.project_id());
    let (secret_a, password_a) = (secret("jwta"), secret("pwa"));
    let (secret_b, password_b) = (secret("jwtb"), secret("pwb"));
    env.write_state(&a, &state_toml(&secret_a, &password_a));
    env.write_state(&b, &state_toml(&secret_b, &password_b));

    let c = env.wait_serving(&a);
    env.wait_serving(&b);
    assert_eq!(c.name, env.container(&a));
    assert_eq!(c.labels["launchdb.managed-by"], "postgrest-manager");
    assert_eq!(c.labels["launchdb.instance"], env.instance);
    assert_eq!(c.labels["launchdb.project-id"], a);
    assert!(!c.labels["launchdb.spec-hash"].is_empty());
    assert_eq!(c.networks, vec![env.network.clone()]);

    // Its own config dir, read-only, and nothing of the other project.
    let own = env.config_dir.join(&a);
    let mount = c
        .mounts
        .iter()
        .find(|m| m.destination == "/etc/postgrest")
        .expect("the config dir is mounted");
    assert_eq!(Path::new(&mount.source), own);
    assert!(!mount.rw, "the config mount must be read-only");
    for m in &c.mounts {
        assert!(
            !m.source.contains(&b) && Path::new(&m.source) != env.config_dir,
            "{a} sees more than its own config: {m:?}"
        );
    }
    let (ok, _, _) = exec(&c.name, &["sh", "-c", "echo x > /etc/postgrest/x"]);
    assert!(!ok, "the config mount is writable from inside");

    // Hardening.
    assert!(c.readonly_rootfs);
    assert_eq!(c.cap_drop, vec!["ALL".to_string()]);
    assert!(c
        .security_opt
        .iter()
        .any(|o| o.starts_with("no-new-privileges")));
    assert!(c.memory > 0 && c.pids_limit > 0);
    assert_eq!(c.restart_policy, "unless-stopped");
    assert!(c.has_healthcheck);
    assert_eq!(c.user, "10001:10001");
    // Limits (issue 10, finding 9): one CPU, no swap beyond memory, rotated json-file logs,
    // and a grace between SIGTERM and SIGKILL when it is stopped.
    let host: serde_json::Value = serde_json::from_str(&docker_ok(&[
        "inspect",
        "-f",
        "{{json .HostConfig}}",
        &c.name,
    ]))
    .expect("HostConfig as JSON");
    assert_eq!(host["NanoCpus"], 1_000_000_000i64, "{host}");
    assert_eq!(host["MemorySwap"], host["Memory"], "{host}");
    assert_eq!(host["Memory"], 256i64 << 20, "{host}");
    assert_eq!(host["LogConfig"]["Type"], "json-file", "{host}");
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "10m", "{host}");
    assert_eq!(host["LogConfig"]["Config"]["max-file"], "3", "{host}");
    let config: serde_json::Value =
        serde_json::from_str(&docker_ok(&["inspect", "-f", "{{json .Config}}", &c.name]))
            .expect("Config as JSON");
    assert_eq!(config["StopTimeout"], 10, "{config}");
    assert_eq!(config["StopSignal"], "SIGTERM", "{config}");

    // The spec-hash key: next to the project directories, private, and never mounted.
    let key = env.config_dir.join(".spec-key");
    assert_eq!(mode_and_uid(&key).0, 0o600);
    assert_eq!(fs::metadata(&key).unwrap().len(), 32);
    let (listed, listing, _) = exec(&c.name, &["ls", "-a", "/etc/postgrest"]);
    assert!(listed && listing.contains("postgrest.conf"), "{listing}");
    assert!(
        !listing.contains("spec-key"),
        "the key is visible inside: {listing}"
    );

    // Reachable from another container on the network, by name.
    let body = env
        .from_network(&format!("http://{}:3000/", c.name))
        .expect("GET / from the network");
    assert!(body.trim_start().starts_with('{'), "not JSON: {body}");

    // The secrets on disk: dir 0700, file 0600, owned by PostgREST's UID.
    assert_eq!(mode_and_uid(&own), (0o700, 10001));
    assert_eq!(mode_and_uid(&env.config_file(&a)), (0o600, 10001));

    // No published ports: reachable on the network only.
    for (what, ports) in [
        ("HostConfig.PortBindings", &c.port_bindings),
        ("NetworkSettings.Ports", &c.ports),
    ] {
        let published = ports.as_object().is_some_and(|ports| {
            ports
                .values()
                .any(|bindings| bindings.as_array().is_some_and(|b| !b.is_empty()))
        });
        assert!(!published, "{what} publishes a port: {ports}");
    }
    assert!(
        c.port_bindings.as_object().is_none_or(|p| p.is_empty()),
        "port bindings requested: {}",
        c.port_bindings
    );

    // The secrets reach PostgREST only through the mounted file: not through the container's
    // environment, command, entrypoint or arguments, and PostgREST's output does not show them.
    let secrets = [&secret_a[..], &password_a, &secret_b, &password_b];
    for c in [&c, &inspect(&env.container(&b)).unwrap()] {
        let seen = [&c.env, &c.cmd, &c.entrypoint, &c.args]
            .map(|v| v.join("\n"))
            .join("\n");
        assert_no_secrets_in(
            "the container's env, cmd, entrypoint and args",
            &seen,
            &secrets,
        );
        let logs = docker(&["logs", &c.name]);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned()
            + &String::from_utf8_lossy(&logs.stderr);
        assert_no_secrets_in("docker logs", &logs, &secrets);
    }

    assert_no_secrets(&manager.log(), &secrets);
}

/// A new `jwt_secret` is a reload: the same container, never restarted, and requests are
/// checked against the new secret (the old one is rejected).
#[test]
fn jwt_secret_change_reloads_in_place() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let id = env.project_id();
    let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
    env.write_state(&id, &state_toml(&old, &password));
    let before = env.wait_serving(&id);
    let pid = postgrest_pid(&before.name);
    wait_jwt_status(&before, &old, "authenticated", 200);
    // The audience is checked too: a token for another audience is refused.
    let ip = before.ip.unwrap();
    assert_eq!(
        http_get(ip, "/", Some(&jwt(&old, "someone-else"))).unwrap(),
        401
    );

    env.write_state(&id, &state_toml(&new, &password));
    wait_jwt_status(&before, &new, "authenticated", 200);
    assert_eq!(
        http_get(ip, "/", Some(&jwt(&old, "authenticated"))).unwrap(),
        401,
        "the old secret is still accepted"
    );

    let after = inspect(&before.name).expect("still there");
    assert_eq!(after.id, before.id, "the container was replaced");
    assert!(after.running);
    assert_eq!(after.restart_count, before.restart_count);
    assert_eq!(
        after.started_at, before.started_at,
        "the container restarted"
    );
    assert_eq!(after.labels, before.labels);
    assert_eq!(postgrest_pid(&after.name), pid, "PostgREST restarted");

    manager.wait_log("action=Reload");
    assert_no_secrets(&manager.log(), &[&old, &new, &password]);
}

/// A new `authenticator_password` lives in `db-uri`, which no reload can change: a new
/// container, whose PostgREST parses the new password from its config.
#[test]
fn password_change_recreates_with_the_new_db_uri() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let id = env.project_id();
    let (jwt_secret, old, new) = (secret("jwt"), secret("pwold"), secret("pwnew"));
    env.write_state(&id, &state_toml(&jwt_secret, &old));
    let before = env.wait_serving(&id);
    assert_eq!(dump_config(&before.name)["db_uri"]["password"], old);

    env.write_state(&id, &state_toml(&jwt_secret, &new));
    let after = wait_until("a new container answering GET /", || {
        let c = inspect(&before.name)?;
        let serving = c.running && http_get(c.ip?, "/", None).ok()? == 200;
        (c.id != before.id && serving).then_some(c)
    });
    assert_ne!(
        after.labels["launchdb.spec-hash"],
        before.labels["launchdb.spec-hash"]
    );
    assert!(
        inspect(&before.id).is_none(),
        "the old container is left over"
    );
    let uri = &dump_config(&after.name)["db_uri"];
    assert_eq!(uri["password"], new);
    assert_eq!(uri["user"], format!("{id}_authenticator"));
    assert_eq!(uri["dbname"], id.as_str());
    assert_eq!(uri["host"], "pgbouncer");
    assert_eq!(uri["port"], 6432);
    wait_jwt_status(&after, &jwt_secret, "authenticated", 200);

    assert_no_secrets(&manager.log(), &[&jwt_secret, &old, &new]);
}

/// The seed's reload path: edit the config file, then `kill -HUP $(cat /var/run/postgrest.pid)`
/// inside the container. The wrapper turns the HUP into a reload: the new secret is in force
/// and PostgREST never restarted.
#[test]
fn sighup_through_the_pid_file_reloads_without_a_restart() {
    let env = TestEnv::new();
    // No resync during the test: the manager must not re-render the hand-edited file.
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            resync_secs: Some(3600),
            ..Default::default()
        },
    );
    let id = env.project_id();
    let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
    env.write_state(&id, &state_toml(&old, &password));
    let before = env.wait_serving(&id);
    let pid = postgrest_pid(&before.name);
    wait_jwt_status(&before, &old, "authenticated", 200);

    // Rewrite the host file in place (same inode), as a person with an editor would.
    let path = env.config_file(&id);
    let text = fs::read_to_string(&path).unwrap();
    let old_line = format!("jwt-secret = \"{old}\"");
    assert!(text.contains(&old_line), "unexpected rendering:\n{text}");
    fs::write(
        &path,
        text.replace(&old_line, &format!("jwt-secret = \"{new}\"")),
    )
    .unwrap();
    assert_eq!(dump_config(&before.name)["config"]["jwt-secret"], new);

    let (ok, _, err) = exec(
        &before.name,
        &["sh", "-c", "kill -HUP $(cat /var/run/postgrest.pid)"],
    );
    assert!(ok, "kill -HUP failed: {err}");
    wait_jwt_status(&before, &new, "authenticated", 200);
    assert_eq!(
        http_get(before.ip.unwrap(), "/", Some(&jwt(&old, "authenticated"))).unwrap(),
        401
    );

    let after = inspect(&before.name).unwrap();
    assert_eq!(after.id, before.id);
    assert!(after.running);
    assert_eq!(after.restart_count, 0);
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(postgrest_pid(&after.name), pid, "PostgREST restarted");
    let logs = docker(&["logs", &before.name]);
    let logs =
        String::from_utf8_lossy(&logs.stdout).into_owned() + &String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("SIGHUP received"), "container log:\n{logs}");

    assert_no_secrets(&manager.log(), &[&old, &new, &password]);
}

/// Deleting the state file removes the container and its rendered config.
#[test]
fn deleting_the_state_file_removes_container_and_config() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let (id, other) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    env.write_state(&other, &state_toml(&jwt_secret, &password));
    env.wait_serving(&id);
    let kept = env.wait_serving(&other);
    assert!(env.config_file(&id).exists());

    env.remove_state(&id);
    env.wait_gone(&id);
    let dir = env.config_dir.join(&id);
    wait_until("the rendered config dir removed", || {
        (!dir.exists()).then_some(())
    });
    // The other project is left alone.
    assert_eq!(inspect(&kept.name).unwrap().id, kept.id);
    assert!(env.config_file(&other).exists());

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// `enabled = false` keeps the config but runs no container; `true` again runs one.
#[test]
fn disabling_and_enabling_a_project() {
    let env = TestEnv::new();
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    let spec = state_toml(&jwt_secret, &password);
    env.write_state(&id, &spec);
    let first = env.wait_serving(&id);

    env.write_state(&id, &format!("{spec}enabled = false\n"));
    env.wait_gone(&id);
    assert!(
        env.config_file(&id).exists(),
        "the config went with the container"
    );
    // Still nothing after the loop went over it again, a resync included: it does not bring
    // the container back.
    manager.wait_passes(3);
    assert!(inspect(&env.container(&id)).is_none());

    env.write_state(&id, &format!("{spec}enabled = true\n"));
    let second = env.wait_serving(&id);
    assert_ne!(second.id, first.id);
    wait_jwt_status(&second, &jwt_secret, "authenticated", 200);

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// A broken state file never takes a running container down: the error is logged (without
/// the secrets in the broken line), the last good spec stays in force, and fixing the file
/// converges.
#[test]
fn broken_toml_keeps_the_container_until_fixed() {
    let env = TestEnv::new();
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let id = env.project_id();
    let (old, typo, new, password) = (
        secret("jwtold"),
        secret("jwttypo"),
        secret("jwtnew"),
        secret("pw"),
    );
    env.write_state(&id, &state_toml(&old, &password));
    let before = env.wait_serving(&id);

    // A hand edit that loses the closing quote, in the line holding a secret.
    let broken = format!(
        "jwt_secret = \"{typo}\nauthenticator_password = {}\n",
        toml_string(&password)
    );
    env.write_state_in_place(&id, &broken);
    manager.wait_log("invalid state file");
    let log = manager.log();
    let line = log
        .lines()
        .find(|l| l.contains("invalid state file"))
        .unwrap();
    assert!(
        line.contains(&id),
        "the error does not name the project: {line}"
    );
    // Let the loop go over the broken file, a resync included, to act on it if it wrongly would.
    manager.wait_passes(3);
    let during = inspect(&before.name).expect("the container is gone");
    assert_eq!(during.id, before.id);
    assert!(during.running);
    assert_eq!(during.started_at, before.started_at);
    wait_jwt_status(&during, &old, "authenticated", 200);
    // The last good config is still rendered.
    assert_eq!(dump_config(&before.name)["config"]["jwt-secret"], old);
    // `status` reports the error next to the running container, without the secret.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgrest-manager"))
        .args([
            "status",
            "--json",
            "--instance",
            &env.instance,
            "--state-dir",
        ])
        .arg(&env.state_dir)
        .arg(&id)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&status).expect("status --json");
    assert_eq!(json[0]["projectId"], id.as_str(), "{status}");
    assert_eq!(json[0]["desired"], "invalid", "{status}");
    assert_eq!(json[0]["actual"], "running", "{status}");
    assert!(
        json[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("TOML"),
        "{status}"
    );
    assert_no_secrets(&status, &[&old, &typo, &password]);

    env.write_state_in_place(&id, &state_toml(&new, &password));
    wait_jwt_status(&before, &new, "authenticated", 200);
    manager.wait_log("state file valid again");
    assert_eq!(inspect(&before.name).unwrap().id, before.id);

    assert_no_secrets(&manager.log(), &[&old, &typo, &new, &password]);
}

/// A container removed behind the manager's back comes back within seconds: with an hour
/// between resyncs, only the Docker event can explain it.
#[test]
fn removed_container_comes_back_from_the_docker_event() {
    let env = TestEnv::new();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            resync_secs: Some(3600),
            ..Default::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let before = env.wait_serving(&id);
    // The events stream must be subscribed; the first full reconcile is past that point.
    manager.wait_log("first full reconcile done");

    let removed_at = Instant::now();
    docker_ok(&["rm", "-f", &before.name]);
    let after = wait_until_for(
        "the container to come back",
        Duration::from_secs(30),
        || {
            let c = inspect(&before.name)?;
            (c.id != before.id && c.running).then_some(c)
        },
    );
    let back = removed_at.elapsed();
    env.wait_serving(&id);
    wait_jwt_status(&after, &jwt_secret, "authenticated", 200);
    eprintln!("container back after {back:?}");
    assert!(back < Duration::from_secs(30));

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// A manager killed with SIGKILL and started again adopts the running containers as they
/// are: same ids, never restarted, no create in its log. A change made while it was down is
/// applied by reload, in place.
#[test]
fn restarted_manager_adopts_running_containers() {
    let env = TestEnv::new();
    let mut first = Manager::start(&env);
    let (a, b) = (env.project_id(), env.project_id());
    let (secret_a, secret_b, changed_b, password) = (
        secret("jwta"),
        secret("jwtb"),
        secret("jwtbnew"),
        secret("pw"),
    );
    env.write_state(&a, &state_toml(&secret_a, &password));
    env.write_state(&b, &state_toml(&secret_b, &password));
    let before_a = env.wait_serving(&a);
    let before_b = env.wait_serving(&b);
    first.wait_log("first full reconcile done");
    first.kill();
    let first_log = first.log();
    // The log names creations (so their absence below means something).
    assert!(first_log.contains("action=Create"), "{first_log}");

    // While no manager runs: b gets a new JWT secret.
    env.write_state(&b, &state_toml(&changed_b, &password));
    assert_eq!(
        http_get(
            before_b.ip.unwrap(),
            "/",
            Some(&jwt(&secret_b, "authenticated"))
        )
        .unwrap(),
        200,
        "nothing should have happened without a manager"
    );

    let second = Manager::start(&env);
    second.wait_log("first full reconcile done");
    wait_jwt_status(&before_b, &changed_b, "authenticated", 200);
    for before in [&before_a, &before_b] {
        let after = inspect(&before.name).unwrap();
        assert_eq!(after.id, before.id, "{} was recreated", before.name);
        assert_eq!(after.started_at, before.started_at);
        assert_eq!(after.restart_count, 0);
        assert!(after.running);
    }
    wait_jwt_status(&before_a, &secret_a, "authenticated", 200);
    let log = second.log();
    assert!(
        !log.contains("action=Create") && !log.contains("action=Recreate"),
        "the restarted manager created containers:\n{log}"
    );

    let secrets = [&secret_a[..], &secret_b, &changed_b, &password];
    assert_no_secrets(&first_log, &secrets);
    assert_no_secrets(&log, &secrets);
}

/// A manager upgraded from the unkeyed spec-hash finds containers whose label it cannot
/// produce: each is recreated exactly once, then left alone across resync passes and across a
/// restart of the manager (the key persists in the config directory).
#[test]
fn an_unkeyed_spec_hash_is_recreated_once_then_adopted() {
    let env = TestEnv::new();
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    // What the previous release left: our labels, an unkeyed 64-bit hash. The command exits
    // at once on SIGTERM, as PostgREST does.
    let name = env.container(&id);
    let old = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "launchdb.managed-by=postgrest-manager",
        "--label",
        &format!("launchdb.instance={}", env.instance),
        "--label",
        &format!("launchdb.project-id={id}"),
        "--label",
        "launchdb.spec-hash=5d41402abc4b2a76",
        &image(),
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1; done",
    ]);
    let old = old.trim().to_owned();
    let since = docker_now();

    let mut first = Manager::start_with(&env, ManagerOpts::quick_resync());
    let recreated = wait_until("the old container replaced by a serving one", || {
        let c = inspect(&name)?;
        (c.id != old && c.running && http_get(c.ip?, "/", None).ok()? == 200).then_some(c)
    });
    first.wait_passes(4);
    let events = container_events(&name, &since);
    let count = |action: &str| events.iter().filter(|e| *e == action).count();
    assert_eq!((count("create"), count("destroy")), (1, 1), "{events:?}");
    assert_eq!(inspect(&name).unwrap().id, recreated.id);
    first.kill();

    let since = docker_now();
    let second = Manager::start_with(&env, ManagerOpts::quick_resync());
    second.wait_passes(4);
    let after = inspect(&name).unwrap();
    assert_eq!(after.id, recreated.id, "the restarted manager recreated it");
    assert_eq!(after.started_at, recreated.started_at);
    let events = container_events(&name, &since);
    assert!(
        !events.iter().any(|e| e == "create" || e == "destroy"),
        "{events:?}"
    );
    assert!(
        !second.log().contains("action=Recreate"),
        "{}",
        second.log()
    );
    assert_no_secrets(&second.log(), &[&jwt_secret, &password]);
}

/// Removing a project stops its PostgREST with SIGTERM and lets it exit on its own (exit 0)
/// before the container is removed: never a SIGKILL to a serving PostgREST (137).
#[test]
fn a_removed_project_gets_sigterm_first() {
    let env = TestEnv::new();
    let _manager = Manager::start(&env);
    let id = env.project_id();
    env.write_state(&id, &state_toml(&secret("jwt"), &secret("pw")));
    let c = env.wait_serving(&id);
    let since = docker_now();
    env.remove_state(&id);
    env.wait_gone(&id);
    let out = docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &docker_now(),
        "--filter",
        &format!("container={}", c.id),
        "--format",
        "{{.Action}} signal={{index .Actor.Attributes \"signal\"}} exit={{index .Actor.Attributes \"exitCode\"}}",
    ]);
    let events: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("exec_") && !l.starts_with("health_status"))
        .collect();
    let kills: Vec<&&str> = events.iter().filter(|e| e.starts_with("kill ")).collect();
    assert!(
        !kills.is_empty() && kills.iter().all(|e| e.contains("signal=15 ")),
        "only SIGTERM, no SIGKILL: {events:?}"
    );
    let die = events
        .iter()
        .position(|e| e.starts_with("die "))
        .expect("it died");
    assert!(events[die].ends_with("exit=0"), "{events:?}");
    let first_kill = events.iter().position(|e| e.starts_with("kill ")).unwrap();
    assert!(first_kill < die, "{events:?}");
    assert!(
        events.iter().position(|e| e.starts_with("destroy ")) > Some(die),
        "{events:?}"
    );
}

/// SIGTERM stops the manager (exit 0) and leaves the containers running.
#[test]
fn sigterm_exits_and_leaves_containers_running() {
    let env = TestEnv::new();
    let mut manager = Manager::start(&env);
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let before = env.wait_serving(&id);
    manager.wait_log("first full reconcile done");

    let status = manager.terminate();
    assert!(status.success(), "exit status {status:?}");
    let after = inspect(&before.name).expect("SIGTERM removed the container");
    assert_eq!(after.id, before.id);
    assert!(after.running);
    assert_eq!(http_get(after.ip.unwrap(), "/", None).unwrap(), 200);

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// Secrets full of config-file and URI syntax reach PostgREST exactly: the double parses the
/// rendered file back to the same values, and a JWT signed with that secret is accepted.
#[test]
fn hostile_secrets_render_to_exactly_those_values() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let id = env.project_id();
    let jwt_secret = "quote\" back\\slash $dollar $(HOME) new\nline @:/?#% é€😀 ünïcødé".to_owned();
    let password = "p\"w\\d $x $(HOME)$$ nl\n@:/?#% é€😀 #comment = 1".to_owned();
    assert!(jwt_secret.chars().count() >= 32);
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let c = env.wait_serving(&id);

    let dump = dump_config(&c.name);
    assert_eq!(dump["config"]["jwt-secret"], jwt_secret.as_str());
    assert_eq!(dump["db_uri"]["password"], password.as_str());
    assert_eq!(dump["db_uri"]["user"], format!("{id}_authenticator"));
    assert_eq!(dump["db_uri"]["host"], "pgbouncer");
    // No value injected a key of its own.
    let keys: Vec<&String> = dump["config"].as_object().unwrap().keys().collect();
    for key in &keys {
        assert!(
            [
                "db-uri",
                "db-schemas",
                "db-anon-role",
                "db-pool",
                "db-prepared-statements",
                "db-channel-enabled",
                "jwt-secret",
                "jwt-aud",
                "max-rows",
                "server-port",
                "admin-server-port",
                "openapi-server-proxy-uri",
            ]
            .contains(&key.as_str()),
            "unexpected key {key} in {keys:?}"
        );
    }
    assert_eq!(dump["config"]["jwt-aud"], "authenticated");

    wait_jwt_status(&c, &jwt_secret, "authenticated", 200);
    assert_eq!(
        http_get(c.ip.unwrap(), "/", Some(&jwt("quote", "authenticated"))).unwrap(),
        401
    );

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// Two managers on one host, with different instances and state dirs: each runs its own
/// projects, a name clash is reported as a conflict and never resolved by removing the other
/// manager's container, and neither touches the other's containers.
#[test]
fn two_managers_never_touch_each_others_containers() {
    let env = TestEnv::new();
    let other_instance = env.extra_instance();
    let other_state = env.root().join("state-b");
    let other_configs = env.root().join("configs-b");
    fs::create_dir_all(&other_state).unwrap();
    let (only_a, only_b, shared) = (env.project_id(), env.project_id(), env.project_id());
    let (secret_a, secret_b, password) = (secret("jwta"), secret("jwtb"), secret("pw"));

    let manager_a = Manager::start_with(&env, ManagerOpts::quick_resync());
    env.write_state(&only_a, &state_toml(&secret_a, &password));
    env.write_state(&shared, &state_toml(&secret_a, &password));
    let a = env.wait_serving(&only_a);
    let shared_before = env.wait_serving(&shared);

    let manager_b = Manager::start_with(
        &env,
        ManagerOpts {
            instance: Some(other_instance.clone()),
            state_dir: Some(other_state.clone()),
            config_dir: Some(other_configs),
            ..ManagerOpts::quick_resync()
        },
    );
    for id in [&only_b, &shared] {
        write_atomic(
            &other_state.join(format!("{id}.toml")),
            &state_toml(&secret_b, &password),
        );
    }
    let b = wait_until("b's container", || {
        let c = inspect(&env.container(&only_b))?;
        (c.running && c.labels.get("launchdb.instance") == Some(&other_instance)).then_some(c)
    });
    wait_jwt_status(&b, &secret_b, "authenticated", 200);
    manager_b.wait_log("conflict");
    let conflict = manager_b
        .log()
        .lines()
        .find(|l| l.contains("conflict"))
        .unwrap()
        .to_owned();
    assert!(conflict.contains(&shared), "{conflict}");

    // Let both loops go over everything, a resync included (both see each other's containers
    // on the network): nobody signals, stops or removes the shared container.
    let since = docker_now();
    manager_a.wait_passes(3);
    manager_b.wait_passes(3);
    assert_eq!(
        container_events(&shared_before.id, &since),
        Vec::<String>::new(),
        "the shared container was touched"
    );
    let shared_after = inspect(&shared_before.name).expect("the shared container was removed");
    assert_eq!(shared_after.id, shared_before.id);
    assert_eq!(shared_after.labels, shared_before.labels);
    assert_eq!(shared_after.started_at, shared_before.started_at);
    wait_jwt_status(&shared_after, &secret_a, "authenticated", 200);
    assert_eq!(inspect(&a.name).unwrap().id, a.id);
    assert_eq!(inspect(&b.name).unwrap().id, b.id);

    // B giving up the shared project and its own does not touch A's container.
    fs::remove_file(other_state.join(format!("{shared}.toml"))).unwrap();
    fs::remove_file(other_state.join(format!("{only_b}.toml"))).unwrap();
    env.wait_gone(&only_b);
    let since = docker_now();
    manager_a.wait_passes(3);
    manager_b.wait_passes(3);
    assert_eq!(inspect(&shared_before.name).unwrap().id, shared_before.id);
    assert_eq!(
        container_events(&shared_before.id, &since),
        Vec::<String>::new(),
        "the shared container was touched"
    );
    assert_eq!(inspect(&a.name).unwrap().id, a.id);

    for log in [manager_a.log(), manager_b.log()] {
        assert_no_secrets(&log, &[&secret_a, &secret_b, &password]);
    }
}

/// Not a timed assertion: measures, over several runs, the wall time from writing a state file
/// to the new container answering `GET /` with 200, and from writing a new `jwt_secret` to a
/// request signed with it being accepted. Run with
/// `cargo test --test controller latency -- --ignored --nocapture`.
#[test]
#[ignore]
fn latency() {
    const RUNS: usize = 7;
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    manager.wait_log("first full reconcile done");
    let mut create = Vec::new();
    let mut reload = Vec::new();
    for _ in 0..RUNS {
        let id = env.project_id();
        let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
        let name = env.container(&id);

        let start = Instant::now();
        env.write_state(&id, &state_toml(&old, &password));
        // `docker inspect` until the container has an address, then HTTP alone (~1 ms a try).
        let ip = wait_until("an address", || inspect(&name)?.ip);
        wait_until_fast("GET / = 200", || {
            (http_get(ip, "/", None).ok()? == 200).then_some(())
        });
        create.push(start.elapsed());

        let token = jwt(&new, "authenticated");
        let start = Instant::now();
        env.write_state(&id, &state_toml(&new, &password));
        wait_until_fast("the new secret accepted", || {
            (http_get(ip, "/", Some(&token)).ok()? == 200).then_some(())
        });
        reload.push(start.elapsed());

        env.remove_state(&id);
        env.wait_gone(&id);
    }
    for (what, mut times) in [
        ("file written -> GET / answers 200", create),
        ("jwt_secret changed -> new secret accepted", reload),
    ] {
        let list: Vec<String> = times.iter().map(|d| format!("{:.0}", ms(*d))).collect();
        times.sort();
        println!(
            "{what}: runs (ms) [{}]; min {:.0} ms, median {:.0} ms, max {:.0} ms",
            list.join(", "),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Like [`wait_until`], polling every 2 ms, for measurements.
fn wait_until_fast<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A Docker outage (simulated by cutting a socket proxy in front of the daemon; the daemon
/// itself is never stopped): containers keep running, the manager logs the outage once and
/// the recovery once, and afterwards it applies what changed meanwhile.
#[test]
fn docker_outage_is_survived_and_resynced() {
    let env = TestEnv::new();
    let mut proxy = DockerProxy::new(env.root().join("docker.sock"));
    proxy.start();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            env: vec![("DOCKER_HOST".into(), proxy.url())],
            ..Default::default()
        },
    );
    let (a, b) = (env.project_id(), env.project_id());
    let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
    env.write_state(&a, &state_toml(&old, &password));
    let before = env.wait_serving(&a);
    manager.wait_log("first full reconcile done");

    proxy.stop();
    // Changes while Docker is unreachable: a new project and a new secret.
    env.write_state(&b, &state_toml(&old, &password));
    env.write_state(&a, &state_toml(&new, &password));
    manager.wait_log("Docker is unreachable");
    // Passes keep coming (each reads the new files, then finds Docker still gone): wait for
    // three more of them, then nothing may have happened and the manager must still run.
    let retries = manager.log().matches("Docker still unreachable").count();
    manager.wait_log_lines("Docker still unreachable", retries + 3);
    assert!(manager.running(), "the manager gave up:\n{}", manager.log());
    assert!(inspect(&env.container(&b)).is_none());
    assert_eq!(
        http_get(before.ip.unwrap(), "/", Some(&jwt(&old, "authenticated"))).unwrap(),
        200,
        "the running container was disturbed"
    );

    proxy.start();
    manager.wait_log("Docker is reachable again");
    env.wait_serving(&b);
    wait_jwt_status(&before, &new, "authenticated", 200);
    let after = inspect(&before.name).unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.started_at, before.started_at);

    let log = manager.log();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // The outage once (its retries are DEBUG lines of their own), the recovery once.
    assert_eq!(lines("Docker is unreachable; retrying"), 1, "{log}");
    assert_eq!(lines("Docker is reachable again"), 1, "{log}");
    assert_no_secrets(&log, &[&old, &new, &password]);
}

/// Docker's own healthcheck (what `docker ps` shows) reports the container healthy. Checked
/// every second here so the test is quick.
#[test]
fn docker_reports_the_container_healthy() {
    let env = TestEnv::new();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            args: vec!["--healthcheck-secs".into(), "1".into()],
            ..Default::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let c = env.wait_serving(&id);
    let health = wait_until("a health verdict", || {
        let health = inspect(&c.name)?.health;
        (health == "healthy" || health == "unhealthy").then_some(health)
    });
    let log = docker_ok(&["inspect", "--format", "{{json .State.Health.Log}}", &c.name]);
    assert_eq!(health, "healthy", "health check log: {log}");

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// Editor and temp files are ignored, a misnamed file is reported, and a project whose very
/// first file is invalid gets no container, while the valid project next to them runs.
#[test]
fn junk_and_invalid_files_never_stop_the_others() {
    let env = TestEnv::new();
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let (good, invalid) = (env.project_id(), env.project_id());
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    let spec = state_toml(&jwt_secret, &password);
    for junk in [
        format!(".{good}x.toml"),
        format!("{good}x.toml~"),
        format!(".{good}x.toml.swp"),
        format!("{good}x.toml.tmp"),
        "4913".to_owned(),
        format!("{good}x.json"),
    ] {
        fs::write(env.state_dir.join(junk), &spec).unwrap();
    }
    fs::create_dir(env.state_dir.join(format!("{good}y.toml"))).unwrap();
    fs::write(env.state_dir.join("Not-An-Id.toml"), &spec).unwrap();
    // Too short a JWT secret: invalid from the start.
    env.write_state(&invalid, &state_toml("short", &password));
    env.write_state(&good, &spec);

    env.wait_serving(&good);
    manager.wait_log("invalid state file");
    manager.wait_log("not a valid project id");
    // Let the loop go over the rest, a resync included, to act on it if it wrongly would.
    manager.wait_passes(3);
    assert_eq!(env.containers(), vec![env.container(&good)]);
    assert!(!env.config_dir.join(&invalid).exists());
    let log = manager.log();
    let line = log
        .lines()
        .find(|l| l.contains("invalid state file"))
        .unwrap();
    assert!(
        line.contains(&invalid) && line.contains("jwt_secret"),
        "{line}"
    );

    assert_no_secrets(&log, &[&jwt_secret, &password]);
}

/// A manager that died between rewriting a config and signalling the container: the file on
/// disk already holds the new secret, the running PostgREST still the old one. The next
/// manager must notice (its record of loaded configs disagrees) and signal, in place.
#[test]
fn restarted_manager_signals_a_config_rewritten_but_never_signalled() {
    let env = TestEnv::new();
    let mut first = Manager::start(&env);
    let id = env.project_id();
    let (old, new, password) = (secret("jwtold"), secret("jwtnew"), secret("pw"));
    env.write_state(&id, &state_toml(&old, &password));
    let before = env.wait_serving(&id);
    wait_jwt_status(&before, &old, "authenticated", 200);
    first.wait_log("first full reconcile done");
    first.kill();

    // What the dead manager would have left: new desired state, new rendered file, no signal.
    env.write_state(&id, &state_toml(&new, &password));
    let path = env.config_file(&id);
    let text = fs::read_to_string(&path).unwrap();
    let old_line = format!("jwt-secret = \"{old}\"");
    assert!(text.contains(&old_line), "unexpected rendering:\n{text}");
    fs::write(
        &path,
        text.replace(&old_line, &format!("jwt-secret = \"{new}\"")),
    )
    .unwrap();
    let ip = before.ip.unwrap();
    assert_eq!(
        http_get(ip, "/", Some(&jwt(&old, "authenticated"))).unwrap(),
        200,
        "the old secret should still be in force: nothing signalled PostgREST"
    );

    let second = Manager::start(&env);
    wait_jwt_status(&before, &new, "authenticated", 200);
    assert_eq!(
        http_get(ip, "/", Some(&jwt(&old, "authenticated"))).unwrap(),
        401
    );
    let after = inspect(&before.name).unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.started_at, before.started_at);
    second.wait_log("action=Reload");

    for log in [first.log(), second.log()] {
        assert_no_secrets(&log, &[&old, &new, &password]);
    }
}

/// A container stopped behind the manager's back (`docker stop`, which the restart policy
/// respects) is started again, the same container, from the Docker event alone.
#[test]
fn stopped_container_is_started_again() {
    let env = TestEnv::new();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            resync_secs: Some(3600),
            ..Default::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let before = env.wait_serving(&id);
    manager.wait_log("first full reconcile done");

    docker_ok(&["stop", "-t", "1", &before.name]);
    let after = wait_until_for(
        "the container running again",
        Duration::from_secs(30),
        || {
            let c = inspect(&before.name)?;
            (c.running && c.started_at != before.started_at).then_some(c)
        },
    );
    assert_eq!(
        after.id, before.id,
        "stopped should mean started, not recreated"
    );
    let after = env.wait_serving(&id);
    wait_jwt_status(&after, &jwt_secret, "authenticated", 200);

    assert_no_secrets(&manager.log(), &[&jwt_secret, &password]);
}

/// Quick hand edits in place, all of the same size (so neither inode nor size changes, and
/// the mtime may not tick between them): the last one is what ends up in force.
#[test]
fn rapid_same_size_edits_in_place_converge_to_the_last() {
    let env = TestEnv::new();
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    let id = env.project_id();
    let password = secret("pw");
    let secrets: Vec<String> = (0..6)
        .map(|n| format!("{}{n}", secret("jwtedit")))
        .collect();
    assert!(secrets.iter().all(|s| s.len() == secrets[0].len()));
    env.write_state_in_place(&id, &state_toml(&secrets[0], &password));
    let c = env.wait_serving(&id);
    wait_jwt_status(&c, &secrets[0], "authenticated", 200);

    for s in &secrets[1..] {
        env.write_state_in_place(&id, &state_toml(s, &password));
    }
    let last = secrets.last().unwrap();
    wait_jwt_status(&c, last, "authenticated", 200);
    // And it stays there: nothing later reverts to an intermediate edit, also once the loader
    // trusts the file's stamp (2 s after the last change) and the passes after that.
    let path = env.state_file(&id);
    wait_until("the state file to settle (2 s unchanged)", || {
        let changed = fs::metadata(&path).ok()?.modified().ok()?;
        (changed.elapsed().ok()? > Duration::from_millis(2500)).then_some(())
    });
    manager.wait_passes(3);
    let ip = c.ip.unwrap();
    assert_eq!(
        http_get(ip, "/", Some(&jwt(last, "authenticated"))).unwrap(),
        200
    );
    assert_eq!(inspect(&c.name).unwrap().id, c.id);

    let mut all: Vec<&str> = secrets.iter().map(String::as_str).collect();
    all.push(&password);
    assert_no_secrets(&manager.log(), &all);
}

/// Issue 10, finding 10: a manager restarted with another `PGM_CONFIG_UID` (4242 stands in for
/// the old default 1000, which is a login account on this host and so refused now) recreates
/// the container once, running as the new UID (its user is in the spec-hash), and hands the
/// existing config directory and file to that UID, so PostgREST can read them and serves.
#[test]
fn a_new_config_uid_recreates_the_container_once_and_hands_it_the_config() {
    let env = TestEnv::new();
    let id = env.project_id();
    let (jwt_secret, password) = (secret("jwt"), secret("pw"));
    env.write_state(&id, &state_toml(&jwt_secret, &password));
    let mut old = Manager::start_with(
        &env,
        ManagerOpts {
            args: vec!["--config-uid".into(), "4242".into()],
            ..ManagerOpts::default()
        },
    );
    let before = env.wait_serving(&id);
    assert_eq!(before.user, "4242:4242");
    let project_dir = env.config_dir.join(&id);
    assert_eq!(mode_and_uid(&project_dir), (0o700, 4242));
    assert_eq!(mode_and_uid(&env.config_file(&id)), (0o600, 4242));
    old.kill();

    let new = Manager::start_with(&env, ManagerOpts::quick_resync());
    let after = wait_until("the container recreated as UID 10001", || {
        inspect(&env.container(&id)).filter(|c| c.id != before.id && c.user == "10001:10001")
    });
    let serving = env.wait_serving(&id);
    assert_eq!(serving.id, after.id);
    wait_jwt_status(&serving, &jwt_secret, "authenticated", 200);
    assert_eq!(mode_and_uid(&project_dir), (0o700, 10001));
    assert_eq!(mode_and_uid(&env.config_file(&id)), (0o600, 10001));
    // Once: across further passes (a resync among them) it stays the same container.
    new.wait_passes(3);
    let later = inspect(&env.container(&id)).expect("the container");
    assert_eq!((later.id, later.restart_count), (after.id, 0));
}

/// Issue 10, finding 8: what a killed writer leaves behind holds secrets, in the state
/// directory and in the config directory (a project's `postgrest.conf`, a load record): a
/// starting manager removes such temp files once they are a minute old, never a fresh one
/// (a live writer's) and never through or of a link. And the manager never dumps core: its
/// core limit is 0 and it is not dumpable (`/proc/<pid>` then belongs to root).
#[test]
fn a_starting_manager_sweeps_killed_writers_temp_files_and_dumps_no_core() {
    let env = TestEnv::new();
    let id = env.project_id();
    let project_dir = env.config_dir.join(&id);
    let records = env.config_dir.join(".loaded");
    for dir in [&env.state_dir, &project_dir, &records] {
        fs::create_dir_all(dir).unwrap();
    }
    let outside = env.root().join("outside.tmp-target");
    fs::write(&outside, "not ours").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let plant = |path: &Path, old: bool| {
        fs::write(path, "jwt-secret = \"leftover\"\n").unwrap();
        if old {
            let file = fs::File::options().write(true).open(path).unwrap();
            file.set_modified(hour_ago).unwrap();
        }
    };
    let stale = [
        env.state_dir.join(format!(".{id}.toml.4242.1.tmp")),
        project_dir.join(".postgrest.conf.4242.2.tmp"),
        records.join(format!(".{id}.4242.3.tmp")),
    ];
    for path in &stale {
        plant(path, true);
    }
    let fresh = project_dir.join(".postgrest.conf.4243.1.tmp");
    plant(&fresh, false);
    let link = project_dir.join(".evil.4244.1.tmp");
    std::os::unix::fs::symlink(&outside, &link).unwrap();

    // A project of its own, so its config directory is the manager's to keep, not an orphan
    // to remove (which would pass this test without a sweep).
    env.write_state(&id, &state_toml(&secret("jwt"), &secret("pw")));
    let manager = Manager::start_with(&env, ManagerOpts::quick_resync());
    env.wait_serving(&id);
    manager.wait_passes(2);
    for path in &stale {
        assert!(!path.exists(), "{} was left", path.display());
    }
    assert!(fresh.exists(), "a fresh temp file was removed");
    assert!(fs::symlink_metadata(&link).is_ok(), "the link was removed");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "not ours");

    let limits = fs::read_to_string(format!("/proc/{}/limits", manager.pid)).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}
