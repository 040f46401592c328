//! `PGM_ORCHESTRATOR=swarm` against a real one-node Docker Swarm: a private `dockerd` in a
//! network namespace of its own (`support::swarm`, never the machine's daemon) with a real
//! PostgreSQL on the overlay network. One test walks the whole life of a project, because
//! starting the swarm and loading PostgreSQL into it costs most of a minute:
//!
//! - a file becomes one service `postgrest-<id>` whose task serves through the service's
//!   virtual IP, its config in a Swarm secret `pgm-<id>-<digest>` mounted where PostgREST
//!   reads it, no host bind mount; `spawn` over the API answers 201 once its task serves;
//! - a JWT rotation is a rolling update (a new secret, a new task, the old secret removed)
//!   with zero failed requests from a client looping on the overlay network meanwhile;
//! - a wrong password is rolled back by Swarm: the old task keeps serving, nothing is lost,
//!   the status says why; an invalid file changes nothing;
//! - a restarted manager adopts the services and updates none;
//! - removing the file removes the service and its secrets.
//!
//! The manager runs in the host's namespace (as it would beside a Swarm manager node's
//! daemon), reaching the private daemon through its socket only.

mod support;

use std::time::Duration;

use support::private_daemon::PrivateDaemon;
use support::swarm::{Cluster, Swarm, DB_HOST};
use support::*;

fn swarm_manager(env: &TestEnv, swarm: &Swarm) -> Manager {
    Manager::start_with(env, swarm_opts(swarm))
}

/// A manager driving `swarm`'s daemon as Swarm services, with the API.
fn swarm_opts(swarm: &Swarm) -> ManagerOpts {
    ManagerOpts {
        api: Api::Ready,
        docker_host: Some(swarm.daemon.host()),
        resync_secs: Some(2),
        env: vec![
            ("PGM_ORCHESTRATOR".into(), "swarm".into()),
            ("PGM_DB_HOST".into(), DB_HOST.into()),
            ("PGM_DB_PORT".into(), "5432".into()),
            // This machine's kernel has no IPVS: a virtual IP answers "No route to host".
            ("PGM_SWARM_ENDPOINT_MODE".into(), "dnsrr".into()),
        ],
        ..ManagerOpts::default()
    }
}

/// The project file, with a placement constraint the one node meets.
fn placed_toml(jwt_secret: &str, password: &str) -> String {
    format!(
        "{}placement = [\"node.role==manager\"]\n",
        state_toml(jwt_secret, password)
    )
}

/// The service's secrets and its version: what an update changes.
fn service_state(swarm: &Swarm, name: &str) -> Option<String> {
    swarm.service(
        name,
        "{{.Version.Index}} {{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}->{{.File.Name}} {{end}}",
    )
}

/// The one task Swarm wants running, once it runs (its health check on `/ready` passed).
fn serving_task(swarm: &Swarm, name: &str) -> Option<String> {
    match swarm.running_tasks(name).as_slice() {
        [task] if task.ends_with(" Running") => Some(task.split(' ').next()?.to_owned()),
        _ => None,
    }
}

#[test]
fn a_project_lives_as_a_swarm_service_with_rolling_updates() {
    // Nothing on the machine's daemon: the database runs in the swarm.
    let env = TestEnv::bare();
    let swarm = Swarm::start(&env.network);
    let manager = swarm_manager(&env, &swarm);
    let id = env.project_id();
    let name = env.container(&id);
    let log_path = manager.log_path();
    let _diagnose = OnPanic(|| {
        print_log_end(&log_path);
        let ps = swarm.docker(&["service", "ps", "--no-trunc", &name]);
        eprintln!(
            "--- docker service ps:\n{}",
            String::from_utf8_lossy(&ps.stdout)
        );
        let get = swarm.get_raw(&format!("http://{name}:3000/"), None);
        eprintln!("--- GET /: {get:?}");
    });
    let (old_jwt, new_jwt) = (secret("jwtold"), secret("jwtnew"));
    let password = secret("pw");
    swarm.add_project_database(&id, &password);

    // 1. A file becomes a service whose task serves, its config a secret.
    env.write_state(&id, &placed_toml(&old_jwt, &password));
    let first_task = wait_until("the project's task to serve", || {
        serving_task(&swarm, &name)
    });
    let state = service_state(&swarm, &name).unwrap();
    let secrets = swarm.secrets(&format!("pgm-{id}-"));
    assert_eq!(secrets.len(), 1, "one secret for the project: {secrets:?}");
    assert!(
        state.contains(&format!("{}->/etc/postgrest/postgrest.conf", secrets[0])),
        "the config is the secret, mounted where PostgREST reads it: {state}"
    );
    let mounts = swarm
        .service(&name, "{{json .Spec.TaskTemplate.ContainerSpec.Mounts}}")
        .unwrap();
    assert!(!mounts.contains("bind"), "no host bind mount: {mounts}");
    let placement = swarm
        .service(&name, "{{json .Spec.TaskTemplate.Placement.Constraints}}")
        .unwrap();
    assert_eq!(placement, r#"["node.role==manager"]"#);
    let url = format!("http://{name}:3000/");
    wait_until("GET / through the service name", || {
        (swarm.get(&url, None)? == 200).then_some(())
    });
    assert_eq!(
        swarm.get(&url, Some(&jwt(&old_jwt, "authenticated"))),
        Some(200)
    );
    assert_eq!(
        swarm.get(&url, Some(&jwt(&new_jwt, "authenticated"))),
        Some(401)
    );
    wait_until("the status to show the running task and its node", || {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        let tasks = &view["tasks"];
        (view["ready"] == true
            && tasks["desired"] == 1
            && tasks["running"] == 1
            && tasks["nodes"].as_array().is_some_and(|n| n.len() == 1))
        .then_some(())
    });

    // 2. spawn over the API answers 201 once the task serves.
    let spawned = env.project_id();
    let spawned_password = secret("pw");
    swarm.add_project_database(&spawned, &spawned_password);
    let response = manager.call(
        "POST",
        "/internal/postgrest/spawn",
        Some(serde_json::json!({
            "projectId": spawned,
            "jwtSecret": secret("jwtspawn"),
            "authenticatorPassword": spawned_password,
        })),
    );
    assert_eq!(
        response.status,
        201,
        "{}\nstatus: {}\nservices: {:?}",
        response.body,
        manager
            .call("GET", &format!("/internal/postgrest/{spawned}"), None)
            .body,
        swarm.docker(&["service", "ps", "--no-trunc", &env.container(&spawned)])
    );
    assert!(
        serving_task(&swarm, &env.container(&spawned)).is_some(),
        "201 means a task serves"
    );

    // 3. A JWT rotation under load: a rolling update, no failed request.
    let load = swarm.ok(&[
        "run",
        "-d",
        "--network",
        &swarm.network,
        "--entrypoint",
        "sh",
        &image(),
        "-c",
        &format!(
            "while true; do if timeout 5 wget -q -O /dev/null {url}; then echo ok; else echo FAIL; fi; done"
        ),
    ]);
    let load_log = || {
        let out = swarm.docker(&["logs", &load]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("the load client's first answers", || {
        (load_log().matches("ok").count() >= 5).then_some(())
    });
    env.write_state(&id, &placed_toml(&new_jwt, &password));
    let rotated = wait_until("the new secret in force", || {
        let task = serving_task(&swarm, &name)?;
        (task != first_task && swarm.get(&url, Some(&jwt(&new_jwt, "authenticated"))) == Some(200))
            .then_some(task)
    });
    assert_eq!(
        swarm.get(&url, Some(&jwt(&old_jwt, "authenticated"))),
        Some(401),
        "the old secret is refused"
    );
    wait_until("the old secret to be removed", || {
        let secrets = swarm.secrets(&format!("pgm-{id}-"));
        (secrets.len() == 1 && !secrets.contains(&secrets_before(&state))).then_some(())
    });
    // A few more requests after the switch, then stop the client and count.
    let seen = load_log().matches("ok").count();
    wait_until("requests after the rotation", || {
        (load_log().matches("ok").count() >= seen + 5).then_some(())
    });
    swarm.ok(&["kill", &load]);
    let log = load_log();
    swarm.ok(&["rm", "-f", &load]);
    assert_eq!(
        log.matches("FAIL").count(),
        0,
        "a request failed during the rolling update"
    );
    assert!(log.matches("ok").count() >= 10);

    // 4. A wrong password: Swarm rolls back; the serving task and its secret stay.
    let before = service_state(&swarm, &name).unwrap();
    env.write_state(&id, &placed_toml(&new_jwt, &secret("wrongpw")));
    wait_until("the status to say the update was rolled back", || {
        let r = manager.call("GET", &format!("/internal/postgrest/{id}"), None);
        r.body.contains("rolled the update back").then_some(())
    });
    assert_eq!(serving_task(&swarm, &name), Some(rotated));
    assert_eq!(
        swarm.get(&url, Some(&jwt(&new_jwt, "authenticated"))),
        Some(200),
        "the old task keeps serving"
    );
    let after = service_state(&swarm, &name).unwrap();
    assert_eq!(
        secrets_of(&after),
        secrets_of(&before),
        "the old secret is back in force"
    );
    // Fix the file: the right password again is what the service runs; an invalid file
    // changes nothing.
    env.write_state(&id, &placed_toml(&new_jwt, &password));
    wait_until("the project to converge on the right password", || {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        (view["converged"] == serde_json::json!(true)).then_some(())
    });
    let steady = service_state(&swarm, &name).unwrap();
    env.write_state(&id, "jwt_secret = 'short'\n");
    manager.wait_passes(3);
    assert_eq!(service_state(&swarm, &name).unwrap(), steady);
    env.write_state(&id, &placed_toml(&new_jwt, &password));

    // 5. A restarted manager adopts the services and updates none, even when its record of
    // the config it loaded is gone while Swarm still shows step 4's rollback as the
    // service's last update: the config in force is found in force, not taken for another
    // rollback (`runtime::swarm::rollout`).
    let task = serving_task(&swarm, &name).unwrap();
    let mut manager = manager;
    manager.terminate();
    assert_eq!(
        swarm.service(&name, "{{.UpdateStatus.State}}").as_deref(),
        Some("rollback_completed"),
        "the service's last update is still step 4's rollback"
    );
    std::fs::remove_file(env.config_dir.join(".loaded").join(&id)).unwrap();
    let manager = swarm_manager(&env, &swarm);
    manager.wait_passes(3);
    wait_until("the restarted manager to find the config in force", || {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        (view["converged"] == serde_json::json!(true)).then_some(())
    });
    let view = manager.call("GET", &format!("/internal/postgrest/{id}"), None);
    assert!(
        !view.body.contains("rolled the update back"),
        "a rollback of an earlier update reported again: {}",
        view.body
    );
    assert_eq!(
        service_state(&swarm, &name).unwrap(),
        steady,
        "updated by the restart"
    );
    assert_eq!(serving_task(&swarm, &name), Some(task));

    // 6. Removing the file removes the service and its secrets.
    env.remove_state(&id);
    wait_until("the service and its secrets to go", || {
        (swarm.service(&name, "{{.ID}}").is_none()
            && swarm.secrets(&format!("pgm-{id}-")).is_empty())
        .then_some(())
    });
    drop(manager);
}

fn secrets_of(state: &str) -> Vec<&str> {
    state.split_whitespace().skip(1).collect()
}

fn secrets_before(state: &str) -> String {
    secrets_of(state)
        .first()
        .and_then(|s| s.split("->").next())
        .unwrap_or_default()
        .to_owned()
}

/// For an [`OnPanic`]: the last lines of the manager's log.
fn print_log_end(log_path: &std::path::Path) {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    eprintln!("--- the manager's log ends:\n{}", tail(&log, 40));
}

/// Runs its closure when dropped during a panic: what a failed wait needs to be understood.
struct OnPanic<F: Fn()>(F);

impl<F: Fn()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

/// The node of the service's one wanted task once it runs, from the manager's view.
fn task_node(swarm: &Swarm, name: &str) -> Option<String> {
    let tasks = swarm.docker(&[
        "service",
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        name,
    ]);
    let tasks = String::from_utf8_lossy(&tasks.stdout).into_owned();
    let [task] = tasks.split_whitespace().collect::<Vec<_>>()[..] else {
        return None;
    };
    let state = swarm.ok(&["inspect", "--format", "{{.NodeID}} {{.Status.State}}", task]);
    let (node, state) = state.split_once(' ')?;
    (state == "running").then(|| node.to_owned())
}

/// Three nodes (private daemons in their own namespaces, bridged in a fourth): a project
/// placed on the workers moves to the other worker when its node is drained, and back when
/// that node dies (its daemon SIGKILLed), serving after each move; the manager's status
/// follows, and the manager changes nothing itself (the service's spec stays).
#[test]
fn tasks_move_off_a_drained_node_and_a_killed_one() {
    let env = TestEnv::bare();
    let mut cluster = Cluster::start(&env.network);
    let manager = swarm_manager(&env, &cluster.swarm);
    let id = env.project_id();
    let name = env.container(&id);
    let password = secret("pw");
    cluster.swarm.add_project_database(&id, &password);
    env.write_state(
        &id,
        &format!(
            "{}placement = [\"node.role==worker\"]\n",
            state_toml(&secret("jwt"), &password)
        ),
    );
    let workers: Vec<String> = cluster.workers.iter().map(Cluster::node_id).collect();
    let swarm = &cluster.swarm;
    let url = format!("http://{name}:3000/");
    let serves_on = |what: &str, wanted: &dyn Fn(&str) -> bool| -> String {
        wait_until_for(what, Duration::from_secs(180), || {
            let node = task_node(swarm, &name).filter(|n| wanted(n))?;
            (swarm.get(&url, None)? == 200).then_some(node)
        })
    };
    let first = serves_on("a task serving on a worker", &|n| {
        workers.iter().any(|w| w == n)
    });
    let version = service_state(swarm, &name).unwrap();

    swarm.ok(&["node", "update", "--availability", "drain", &first]);
    let second = serves_on("the task moved off the drained node, serving", &|n| {
        n != first && workers.iter().any(|w| w == n)
    });
    wait_until("the status to show the new node", || {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        let nodes = view["tasks"]["nodes"].as_array()?.clone();
        (nodes.len() == 1 && second.starts_with(nodes[0].as_str()?)).then_some(())
    });

    swarm.ok(&["node", "update", "--availability", "active", &first]);
    let victim: &mut PrivateDaemon = cluster
        .workers
        .iter_mut()
        .find(|w| Cluster::node_id(w) == second)
        .expect("the second node is a worker");
    victim.kill();
    let swarm = &cluster.swarm;
    let third = wait_until_for(
        "the task rescheduled off the killed node, serving",
        Duration::from_secs(180),
        || {
            let node = task_node(swarm, &name).filter(|n| *n == first)?;
            (swarm.get(&url, None)? == 200).then_some(node)
        },
    );
    assert_eq!(third, first);
    assert_eq!(
        service_state(swarm, &name).unwrap(),
        version,
        "Swarm moved the task; the manager updated nothing"
    );
    drop(manager);
}

/// The benchmark behind BENCHMARKS.md's Swarm section (ignored: it measures, it does not
/// prove). On a one-node swarm, per round: a project file written until its task serves
/// (`GET /` 200 through the overlay network), against `POST /services/create` of the very spec
/// the manager made (the same secret, another name) until its task serves; then a JWT
/// rotation: the file written until the new secret is in force, with a client looping on
/// the overlay network meanwhile, and its failed requests.
/// `cargo test --release --test swarm bench_swarm -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_swarm() {
    use std::time::Instant;
    const ROUNDS: usize = 5;
    let env = TestEnv::bare();
    let swarm = Swarm::start(&env.network);
    let _manager = swarm_manager(&env, &swarm);
    let socket = swarm.daemon.dir.join("docker.sock");
    let serving = |name: &str| {
        let url = format!("http://{name}:3000/");
        wait_until_for(name, Duration::from_secs(120), || {
            (serving_task(&swarm, name).is_some() && swarm.get(&url, None)? == 200).then_some(())
        });
    };
    for round in 0..ROUNDS {
        let id = env.project_id();
        let name = env.container(&id);
        let password = secret("pw");
        swarm.add_project_database(&id, &password);
        let (old_jwt, new_jwt) = (secret("jwtold"), secret("jwtnew"));

        let started = Instant::now();
        env.write_state(&id, &state_toml(&old_jwt, &password));
        serving(&name);
        let manager_time = started.elapsed();

        // The same spec, by hand: the manager's service spec under another name.
        let spec = swarm.ok(&["service", "inspect", &name, "--format", "{{json .Spec}}"]);
        let mut spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
        let by_hand = format!("byhand{round}x{}", std::process::id());
        spec["Name"] = serde_json::Value::String(by_hand.clone());
        spec["Labels"] = serde_json::json!({});
        let started = Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&socket)
            .args(["-H", "Content-Type: application/json", "-d"])
            .arg(spec.to_string())
            .arg("http://docker/services/create")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        serving(&by_hand);
        let by_hand_time = started.elapsed();
        swarm.ok(&["service", "rm", &by_hand]);

        let url = format!("http://{name}:3000/");
        let load = swarm.ok(&[
            "run", "-d", "--network", &swarm.network, "--entrypoint", "sh", &image(), "-c",
            &format!("while true; do if timeout 5 wget -q -O /dev/null {url}; then echo ok; else echo FAIL; fi; done"),
        ]);
        let log = || String::from_utf8_lossy(&swarm.docker(&["logs", &load]).stdout).into_owned();
        wait_until("the load client's first answers", || {
            (log().matches("ok").count() >= 5).then_some(())
        });
        let started = Instant::now();
        env.write_state(&id, &state_toml(&new_jwt, &password));
        wait_until_for("the new secret in force", Duration::from_secs(120), || {
            (swarm.get(&url, Some(&jwt(&new_jwt, "authenticated")))? == 200).then_some(())
        });
        let rotation = started.elapsed();
        swarm.ok(&["kill", &load]);
        let answers = log();
        swarm.ok(&["rm", "-f", &load]);
        println!(
            "round {round}: file->serving {:.2} s, service create->serving {:.2} s ({:.2}x), \
             rotation->new secret in force {:.2} s, requests ok {} failed {}",
            manager_time.as_secs_f64(),
            by_hand_time.as_secs_f64(),
            manager_time.as_secs_f64() / by_hand_time.as_secs_f64(),
            rotation.as_secs_f64(),
            answers.matches("ok").count(),
            answers.matches("FAIL").count(),
        );
    }
}

/// Caddy in front of Swarm services, as the stack runs it (`deploy/caddy/caddy.json`, its
/// project routes kept by the manager through `PGM_CADDY_ADMIN_URL`), on a one-node swarm:
/// attached to the overlay network, where its routes dial `postgrest-<id>:3000` (the service
/// name, resolved by the overlay network's DNS to the running task), and to the daemon's
/// default bridge, where the manager reaches its admin API (the manager runs in the daemon's
/// network namespace for that). Through Caddy: a spawned project answers 200 as soon as
/// `spawn` answered 201; a JWT rotation (a rolling update) under a client looping through
/// Caddy loses no request; a removed project is Caddy's JSON 404.
#[test]
fn caddy_reaches_the_services_through_the_overlay_network() {
    let env = TestEnv::bare();
    let swarm = Swarm::start(&env.network);
    swarm.load(CADDY_IMAGE);
    let caddy = format!("{}caddy", env.instance);
    let deployed = caddy_as_deployed();
    let mut args = vec!["run", "-d", "--name", &caddy, "--network", &swarm.network];
    args.extend(deployed.iter().map(String::as_str));
    swarm.ok(&args);
    swarm.ok(&["network", "connect", "bridge", &caddy]);
    let admin = swarm.ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.Networks.bridge.IPAddress}}",
        &caddy,
    ]);
    let mut opts = swarm_opts(&swarm);
    opts.netns = Some(swarm.daemon.netns_path());
    opts.env
        .push(("PGM_CADDY_ADMIN_URL".into(), format!("http://{admin}:2019")));
    let manager = Manager::start_with(&env, opts);
    let id = env.project_id();
    let name = env.container(&id);
    let log_path = manager.log_path();
    let _diagnose = OnPanic(|| {
        print_log_end(&log_path);
        let logs = swarm.docker(&["logs", "--tail", "30", &caddy]);
        eprintln!(
            "--- Caddy's log ends:\n{}",
            String::from_utf8_lossy(&logs.stderr)
        );
    });
    let through_caddy = format!("http://{caddy}/db/{id}/");
    wait_until("Caddy's 404 before the project exists", || {
        (swarm.get(&through_caddy, None)? == 404).then_some(())
    });

    // 1. spawn answers 201 once the task serves and Caddy routes to it: 200 through Caddy.
    let password = secret("pw");
    let old_jwt = secret("jwtold");
    swarm.add_project_database(&id, &password);
    let response = manager.call(
        "POST",
        "/internal/postgrest/spawn",
        Some(serde_json::json!({
            "projectId": id,
            "jwtSecret": old_jwt,
            "authenticatorPassword": password,
        })),
    );
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(
        swarm.get(&through_caddy, None),
        Some(200),
        "201 means it serves through Caddy"
    );
    assert_eq!(
        swarm.get(&through_caddy, Some(&jwt(&old_jwt, "authenticated"))),
        Some(200)
    );
    let first_task = serving_task(&swarm, &name).expect("a task serves");

    // 2. A JWT rotation under a client looping through Caddy: a rolling update behind a
    // route that stays as it is (the service name), so Caddy is not even reloaded.
    let caddy_patches = || {
        let out = swarm.docker(&["logs", &caddy]);
        String::from_utf8_lossy(&out.stderr)
            .matches("\"method\": \"PATCH\"")
            .count()
            + String::from_utf8_lossy(&out.stderr)
                .matches("\"method\":\"PATCH\"")
                .count()
    };
    let load = swarm.ok(&[
        "run",
        "-d",
        "--network",
        &swarm.network,
        "--entrypoint",
        "sh",
        &image(),
        "-c",
        &format!(
            "while true; do if out=$(timeout 5 wget -q -O /dev/null {through_caddy} 2>&1); \
             then echo ok; else echo \"FAIL $out\"; fi; done"
        ),
    ]);
    let load_log = || {
        let out = swarm.docker(&["logs", &load]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("the load client's first answers", || {
        (load_log().matches("ok").count() >= 5).then_some(())
    });
    let patches_before = caddy_patches();
    assert!(
        patches_before >= 1,
        "Caddy's log shows the manager's PATCH of the spawned project's route"
    );
    let new_jwt = secret("jwtnew");
    env.write_state(&id, &state_toml(&new_jwt, &password));
    wait_until("the new secret in force through Caddy", || {
        let task = serving_task(&swarm, &name)?;
        (task != first_task
            && swarm.get(&through_caddy, Some(&jwt(&new_jwt, "authenticated"))) == Some(200))
        .then_some(())
    });
    assert_eq!(
        swarm.get(&through_caddy, Some(&jwt(&old_jwt, "authenticated"))),
        Some(401),
        "the old secret is refused through Caddy"
    );
    wait_until("the old task to be gone", || {
        (swarm.running_tasks(&name).len() == 1
            && swarm
                .docker(&["ps", "-q", "--filter", &format!("name={name}.")])
                .stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
                == 1)
            .then_some(())
    });
    let seen = load_log().matches("ok").count();
    wait_until("requests after the rotation", || {
        (load_log().matches("ok").count() >= seen + 5).then_some(())
    });
    swarm.ok(&["kill", &load]);
    let log = load_log();
    swarm.ok(&["rm", "-f", &load]);
    let reloads = caddy_patches() - patches_before;
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
    // Each distinct failure once, with how often it happened.
    let mut why: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in &failed {
        *why.entry(line).or_default() += 1;
    }
    eprintln!(
        "through Caddy during the rotation: {} ok, {} failed, Caddy reloaded {reloads} times: {why:?}",
        log.matches("ok").count(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests through Caddy failed during the rolling update: {why:?}"
    );
    assert_eq!(reloads, 0, "the rolling update changed Caddy's routes");
    assert!(log.matches("ok").count() >= 10);

    // 3. Removing the project: its route goes, Caddy's static 404 answers.
    env.remove_state(&id);
    wait_until("Caddy's 404 for the removed project", || {
        (swarm.get(&through_caddy, None)? == 404).then_some(())
    });
    wait_until("the service to go", || {
        swarm.service(&name, "{{.ID}}").is_none().then_some(())
    });
    drop(manager);
}

/// How many projects [`bench_swarm_fifty`] starts at once.
const FIFTY: usize = 50;
/// Its rounds; the side that goes first alternates, starting with the manager.
const FIFTY_ROUNDS: usize = 4;

/// The benchmark behind BENCHMARKS.md's "50 projects cold on one node" (ignored: it measures).
/// On a one-node swarm, per round and side, from no service at all: the manager with
/// [`FIFTY`] project files written at once, against `docker stack deploy` of a generated
/// compose file with the same services (the same image, config text as a stack secret,
/// health check, limits, endpoint mode, external overlay network, update policy), each
/// timed until every service's task runs (one `docker service ls` per poll: a task with a
/// health check runs only once its `/ready` check passed), then checked with `GET /` on
/// the overlay network. Everything is removed between sides.
/// `cargo test --release --test swarm bench_swarm_fifty -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_swarm_fifty() {
    use std::time::Instant;
    let env = TestEnv::bare();
    let swarm = Swarm::start(&env.network);
    let manager = swarm_manager(&env, &swarm);
    let projects: Vec<(String, String, String)> = (0..FIFTY)
        .map(|_| (env.project_id(), secret("jwt"), secret("pw")))
        .collect();
    let sql: Vec<String> = projects
        .iter()
        .flat_map(|(id, _, password)| Swarm::project_database_sql(id, password))
        .collect();
    swarm.psql_each(&sql.iter().map(String::as_str).collect::<Vec<_>>());
    let stack_dir = env.root().join("stack");
    std::fs::create_dir(&stack_dir).unwrap();
    let compose = stack_dir.join("stack.json");
    let stack = format!("{}s", env.instance);
    // One `docker service ls` every 250 ms (a poll interval, not a proof): until all the
    // services exist, then until all serve; both times from `started`.
    let poll = |label: &str, started: Instant| -> (Duration, Duration) {
        let mut created = None;
        loop {
            let (listed, serving) = swarm.services_serving(label);
            if listed == FIFTY && created.is_none() {
                created = Some(started.elapsed());
            }
            if listed == FIFTY && serving == FIFTY {
                return (created.unwrap(), started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{label}: {serving} of {listed} services serving after 600 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // Every service answers `GET /` on the overlay network: one client for all of them.
    let all_serve = |names: &[String]| {
        let script = names
            .iter()
            .map(|n| format!("wget -q -O /dev/null http://{n}:3000/ || echo FAIL {n};"))
            .collect::<String>();
        let out = swarm.ok(&[
            "run",
            "--rm",
            "--network",
            &swarm.network,
            "--entrypoint",
            "sh",
            &image(),
            "-c",
            &script,
        ]);
        assert!(!out.contains("FAIL"), "{out}");
    };
    let cold = |what: &str| {
        wait_until_for(what, Duration::from_secs(300), || {
            let services = swarm.ok(&["service", "ls", "-q"]);
            let tasks = swarm.ok(&["ps", "-aq", "--filter", "label=com.docker.swarm.service.id"]);
            let secrets = swarm.ok(&["secret", "ls", "-q"]);
            (services.is_empty() && tasks.is_empty() && secrets.is_empty()).then_some(())
        });
    };
    let instance_label = format!("launchdb.instance={}", env.instance);
    let stack_label = format!("com.docker.stack.namespace={stack}");
    let mut stack_written = false;
    for round in 0..FIFTY_ROUNDS {
        // (all created, all serving) per side: the manager, the stack.
        let mut times = [(Duration::ZERO, Duration::ZERO); 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            if side == 0 {
                let started = Instant::now();
                for (id, jwt_secret, password) in &projects {
                    env.write_state(id, &state_toml(jwt_secret, password));
                }
                times[0] = poll(&instance_label, started);
                let names: Vec<String> =
                    projects.iter().map(|(id, ..)| env.container(id)).collect();
                all_serve(&names);
                if !stack_written {
                    write_stack(&swarm, &env, &projects, &stack_dir, &compose);
                    stack_written = true;
                }
                for (id, ..) in &projects {
                    env.remove_state(id);
                }
                cold("the manager's services to go");
            } else {
                assert!(
                    stack_written,
                    "the manager's side renders the configs first"
                );
                let started = Instant::now();
                swarm.ok(&[
                    "stack",
                    "deploy",
                    "--resolve-image",
                    "never",
                    "-c",
                    &compose.display().to_string(),
                    &stack,
                ]);
                times[1] = poll(&stack_label, started);
                let names: Vec<String> = projects
                    .iter()
                    .map(|(id, ..)| format!("{stack}_{}", env.container(id)))
                    .collect();
                all_serve(&names);
                swarm.ok(&["stack", "rm", &stack]);
                cold("the stack's services to go");
            }
        }
        let [(m_created, m_serving), (s_created, s_serving)] = times;
        println!(
            "round {round} ({} first): manager {FIFTY} files -> all created {:.2} s, all serving \
             {:.2} s; docker stack deploy -> all created {:.2} s, all serving {:.2} s; \
             ratio {:.2}x",
            if order[0] == 0 { "manager" } else { "stack" },
            m_created.as_secs_f64(),
            m_serving.as_secs_f64(),
            s_created.as_secs_f64(),
            s_serving.as_secs_f64(),
            m_serving.as_secs_f64() / s_serving.as_secs_f64()
        );
    }
    println!("manager log lines: {}", manager.log().lines().count());
    drop(manager);
}

/// A compose file (JSON, which is YAML) with one service per project, equal to the
/// manager's: its spec read from the manager's first service, each project's config text
/// from the file the manager rendered (a Swarm secret cannot be read back).
fn write_stack(
    swarm: &Swarm,
    env: &TestEnv,
    projects: &[(String, String, String)],
    dir: &std::path::Path,
    compose: &std::path::Path,
) {
    use serde_json::{json, Value};
    let spec: Value = serde_json::from_str(&swarm.ok(&[
        "service",
        "inspect",
        &env.container(&projects[0].0),
        "--format",
        "{{json .Spec}}",
    ]))
    .unwrap();
    let task = &spec["TaskTemplate"];
    let container = &task["ContainerSpec"];
    let health = &container["Healthcheck"];
    let ns = |v: &Value| format!("{}ms", v.as_i64().unwrap_or(0) / 1_000_000);
    let file = &container["Secrets"][0]["File"];
    let limits = &task["Resources"]["Limits"];
    let update = &spec["UpdateConfig"];
    let tmpfs: Vec<Value> = container["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            json!({"type": "tmpfs", "target": m["Target"],
                   "tmpfs": {"size": m["TmpfsOptions"]["SizeBytes"]}})
        })
        .collect();
    let mut services = serde_json::Map::new();
    let mut secrets = serde_json::Map::new();
    for (id, ..) in projects {
        let config = dir.join(format!("{id}.conf"));
        std::fs::copy(env.config_file(id), &config).expect("the manager's rendered config");
        let secret = format!("cfg{id}");
        secrets.insert(secret.clone(), json!({"file": config}));
        let mut service = json!({
                "image": container["Image"],
                "user": container["User"],
                "read_only": container["ReadOnly"],
                "cap_drop": container["CapabilityDrop"],
                "stop_signal": container["StopSignal"],
                "stop_grace_period": ns(&container["StopGracePeriod"]),
                "healthcheck": {
                    // `$$`: a compose file interpolates `${...}` itself.
                    "test": health["Test"].as_array().unwrap().iter()
                        .map(|t| t.as_str().unwrap().replace('$', "$$"))
                        .collect::<Vec<_>>(),
                    "interval": ns(&health["Interval"]),
                    "timeout": ns(&health["Timeout"]),
                    "retries": health["Retries"],
                    "start_period": ns(&health["StartPeriod"]),
                },
                "volumes": tmpfs,
                "secrets": [{"source": secret, "target": file["Name"], "uid": file["UID"],
                             "gid": file["GID"], "mode": file["Mode"]}],
                "logging": {"driver": task["LogDriver"]["Name"],
                            "options": task["LogDriver"]["Options"]},
                "networks": [swarm.network],
                "deploy": {
                    "replicas": 1,
                    "endpoint_mode": spec["EndpointSpec"]["Mode"],
                    "resources": {"limits": {
                        "cpus": format!("{}", limits["NanoCPUs"].as_i64().unwrap() as f64 / 1e9),
                        "memory": format!("{}", limits["MemoryBytes"]),
                    }},
                    "restart_policy": {"condition": "any",
                                       "delay": ns(&task["RestartPolicy"]["Delay"])},
                    "update_config": {
                        "parallelism": update["Parallelism"],
                        "order": update["Order"],
                        "failure_action": update["FailureAction"],
                        "monitor": ns(&update["Monitor"]),
                        "max_failure_ratio": update["MaxFailureRatio"],
                        "delay": "0s",
                    },
                    "rollback_config": {"parallelism": 1, "order": "start-first"},
                },
        });
        // What the manager's spec does not set, the stack leaves out too.
        service.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        services.insert(env.container(id), service);
    }
    let stack = json!({
        "version": "3.8",
        "services": services,
        "networks": {swarm.network.clone(): {"external": true}},
        "secrets": secrets,
    });
    std::fs::write(compose, serde_json::to_string_pretty(&stack).unwrap()).unwrap();
}
