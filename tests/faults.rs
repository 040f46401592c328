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
use std::net::{IpAddr, SocketAddr};

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

/// The running containers of `instance` on the private daemon, by name; panics on a
/// container that is not running (an orphan half-created, or one Docker did not restart).
fn private_names(daemon: &PrivateDaemon, instance: &str) -> Vec<String> {
    daemon
        .containers(&format!("launchdb.instance={instance}"))
        .into_iter()
        .map(|line| {
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
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
        let running: BTreeSet<String> = private_names(&daemon, &env.instance).into_iter().collect();
        (running == names(&ids[..3])).then_some(())
    });
    let (reloaded_id, reloaded_ip) = private_container(&daemon, &env.container(&ids[0])).unwrap();
    let reloaded_ip = reloaded_ip.expect("the container has an address");
    let (recreated_id, _) = private_container(&daemon, &env.container(&ids[1])).unwrap();
    wait_until(
        "the first project to refuse a token signed with no secret of its",
        || (private_get(&daemon, reloaded_ip, &jwt(&new, "authenticated"))? == 401).then_some(()),
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
            let listed = private_names(&daemon, &env.instance);
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
        // Without a database the double answers 503 to a token it accepts, 401 otherwise.
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
