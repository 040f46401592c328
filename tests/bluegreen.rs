//! Blue/green replacement against real Docker, a real Caddy 2.6.2 (the stack's static config)
//! and the test database: a client requests a project through Caddy's port 80 all along, and
//! a password change, an image change and a manager killed in the middle of a replacement
//! cost it no request. Skipped, loudly, when the Caddy image is missing.

mod support;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::*;

/// Between two requests of the client: about 100 requests a second.
const PACE: Duration = Duration::from_millis(10);

fn caddy_missing() -> bool {
    let missing = !docker(&["image", "inspect", CADDY_IMAGE]).status.success();
    if missing {
        eprintln!(
            "\n!!!!!!!! SKIPPED tests/bluegreen.rs: {CADDY_IMAGE} is missing (build it with \
             `bash deploy/build-local-images.sh`). NOTHING WAS TESTED. !!!!!!!!\n"
        );
    }
    missing
}

/// Caddy on the env's network, as deploy/compose.yaml runs it; labelled with the env's
/// instance, so the env removes it. Returns its address.
fn start_caddy(env: &TestEnv) -> IpAddr {
    let name = env.helper_name();
    let label = format!("launchdb.instance={}", env.instance);
    let caddy = caddy_as_deployed();
    let mut args = vec!["run", "-d", "--name", &name, "--label", &label];
    args.extend(["--network", &env.network]);
    args.extend(caddy.iter().map(String::as_str));
    docker_ok(&args);
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
        env.network
    );
    let caddy = wait_until("Caddy's address", || {
        docker_ok(&["inspect", "-f", &format, &name])
            .trim()
            .parse()
            .ok()
    });
    wait_until("Caddy's admin API", || {
        http_get_port(caddy, 2019, "/config/", None).ok().map(drop)
    });
    caddy
}

/// How often the env's Caddy reloaded its config since it started (its `server running` log
/// lines, but the first).
fn caddy_reloads(env: &TestEnv) -> usize {
    let ids = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=launchdb.instance={}", env.instance),
        "--filter",
        &format!("ancestor={CADDY_IMAGE}"),
    ]);
    let id = ids.split_whitespace().next().expect("the env's Caddy runs");
    let out = docker(&["logs", id]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter(|l| l.contains("\"msg\":\"server running\""))
        .count()
        .saturating_sub(1)
}

fn manager_with_caddy(env: &TestEnv, caddy: IpAddr, image: Option<String>) -> Manager {
    Manager::start_with(
        env,
        ManagerOpts {
            image,
            env: vec![("PGM_CADDY_ADMIN_URL".into(), format!("http://{caddy}:2019"))],
            ..ManagerOpts::default()
        },
    )
}

/// A client that GETs `/db/<id>/items` through Caddy until stopped, counting answers.
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Client {
    fn start(caddy: IpAddr, id: &str) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let path = format!("/db/{id}/items");
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match http_get_port(caddy, 80, &path, None) {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                    thread::sleep(PACE);
                }
            })
        };
        Client {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the client; returns (answered 200, the failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (self.ok(), self.failed.lock().unwrap().clone())
    }

    /// Stops the client and asserts that every request was answered 200, but for connections
    /// Caddy 2.6.2 itself reset during a reload of its config (every route change is one; it
    /// resets about one connection in seven reloads under ~240 req/s with no upstream involved,
    /// BENCHMARKS.md): those are counted, printed and bounded by the reloads Caddy logged.
    fn assert_served(self, env: &TestEnv) {
        let (ok, failed) = self.finish();
        let (resets, failed): (Vec<String>, Vec<String>) = failed
            .into_iter()
            .partition(|f| f.contains("ConnectionReset"));
        assert_eq!(failed, Vec::<String>::new(), "{ok} answered 200");
        let reloads = caddy_reloads(env);
        if !resets.is_empty() {
            eprintln!(
                "{} connection(s) reset by Caddy ({reloads} reloads of its config); {ok} answered 200",
                resets.len()
            );
        }
        assert!(
            resets.len() <= reloads,
            "{} resets, more than Caddy's {reloads} reloads",
            resets.len()
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until Caddy proxies the project (a 200 through port 80).
fn wait_routed(caddy: IpAddr, id: &str) {
    let path = format!("/db/{id}/items");
    wait_until(&format!("Caddy to serve {path}"), || {
        (http_get_port(caddy, 80, &path, None).ok()? == 200).then_some(())
    });
}

/// The project's containers (name, id), by the env's instance label.
fn project_containers(env: &TestEnv, id: &str) -> Vec<String> {
    env.containers()
        .into_iter()
        .filter(|name| name.starts_with(&format!("postgrest-{id}")))
        .collect()
}

/// Waits until the project's one container is `postgrest-<id>`, not `before`, serving, with
/// nothing else of the project left.
fn wait_replaced(env: &TestEnv, id: &str, before: &str) -> Container {
    let name = env.container(id);
    wait_until(&format!("{name} replaced and alone"), || {
        replaced(env, id, before)
    })
}

/// The project's one container, if it is `postgrest-<id>`, not `before`, serving, with
/// nothing else of the project left.
fn replaced(env: &TestEnv, id: &str, before: &str) -> Option<Container> {
    let name = env.container(id);
    let c = inspect(&name)?;
    let serving = c.running && http_get(c.ip?, "/", None).ok()? == 200;
    let alone = project_containers(env, id) == [name];
    (c.id != before && serving && alone).then_some(c)
}

/// Lets the client run until it has had `n` more answers: load before and after the change.
fn answered(client: &Client, n: usize) {
    let target = client.ok() + n;
    wait_until("the client's requests", || {
        (client.ok() >= target).then_some(())
    });
}

#[test]
fn a_password_change_under_load_through_caddy_fails_no_request() {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let caddy = start_caddy(&env);
    let manager = manager_with_caddy(&env, caddy, None);
    let id = env.project_id();
    let (jwt_secret, old, new) = (secret("jwt"), secret("pwold"), secret("pwnew"));
    env.write_state(&id, &state_toml(&jwt_secret, &old));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);

    let client = Client::start(caddy, &id);
    answered(&client, 100);
    env.write_state(&id, &state_toml(&jwt_secret, &new));
    let after = wait_replaced(&env, &id, &before.id);
    answered(&client, 100);
    client.assert_served(&env);
    assert_eq!(dump_config(&after.name)["db_uri"]["password"], new);
    // The route dials the new container's own alias, which survived the rename.
    let upstream = &after.labels["launchdb.upstream"];
    assert!(
        upstream.starts_with(&format!("postgrest-{id}-")),
        "{upstream}"
    );
    assert!(manager.log().contains("the route is on the new container"));
    assert_no_secrets(&manager.log(), &[&jwt_secret, &old, &new]);
}

/// An image built for one test from the test image plus `lines` (`docker build` with the
/// Dockerfile on stdin, no context), tagged `<instance>img:<tag>`; removed when dropped.
struct TestImage(String);

impl TestImage {
    fn build(env: &TestEnv, tag: &str, lines: &str) -> TestImage {
        use std::io::Write;
        let built = TestImage(format!("{}img:{tag}", env.instance));
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &built.0, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker build starts");
        let dockerfile = format!("FROM {}\n{lines}\n", image());
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        built
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker(&["image", "rm", "-f", &self.0]);
    }
}

#[test]
fn an_image_change_under_load_through_caddy_fails_no_request() {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    // A second image, differing from the test image in a label only; removed at the end.
    let v2 = TestImage::build(&env, "v2", "LABEL launchdb.test-variant=v2");
    let image_v2 = v2.0.clone();

    let caddy = start_caddy(&env);
    let mut manager = manager_with_caddy(&env, caddy, None);
    let id = env.project_id();
    env.write_state(&id, &state_toml(&secret("jwt"), &secret("pw")));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);

    let client = Client::start(caddy, &id);
    answered(&client, 100);
    // The image is the manager's setting: a manager started with another one replaces.
    manager.terminate();
    let manager = manager_with_caddy(&env, caddy, Some(image_v2));
    let after = wait_replaced(&env, &id, &before.id);
    answered(&client, 100);
    if !client.failed.lock().unwrap().is_empty() {
        eprintln!("{}", manager.log());
    }
    client.assert_served(&env);
    let variant = docker_ok(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"launchdb.test-variant\"}}",
        &after.id,
    ]);
    assert_eq!(variant.trim(), "v2");
}

#[test]
fn a_manager_killed_with_the_next_container_in_place_leaves_one_serving() {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let caddy = start_caddy(&env);
    let mut manager = manager_with_caddy(&env, caddy, None);
    let id = env.project_id();
    let jwt_secret = secret("jwt");
    env.write_state(&id, &state_toml(&jwt_secret, &secret("pwold")));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);

    let client = Client::start(caddy, &id);
    answered(&client, 50);
    env.write_state(&id, &state_toml(&jwt_secret, &secret("pwnew")));
    // The step between creating the new container and switching to it.
    let next = format!("postgrest-{id}-next");
    wait_until(&format!("{next} to exist"), || inspect(&next).map(drop));
    manager.kill();

    let manager = manager_with_caddy(&env, caddy, None);
    let after = wait_replaced(&env, &id, &before.id);
    answered(&client, 50);
    if !client.failed.lock().unwrap().is_empty() {
        eprintln!("{}", manager.log());
    }
    client.assert_served(&env);
    assert_eq!(project_containers(&env, &id), [after.name]);
}

/// Where a crash-point test kills the manager.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The manager SIGKILLs itself right after this step (`PGM_TEST_CRASH_AT`): for steps too
    /// short to catch from outside.
    At(&'static str),
    /// The test SIGKILLs it as soon as Docker's event stream reports `action` (with this
    /// `signal`, for a kill) on the new container, or on the old one with `on_old`.
    OnEvent {
        on_old: bool,
        action: &'static str,
        signal: Option<&'static str>,
    },
}

/// What Docker and Caddy held right after the manager died.
#[derive(Debug)]
struct AtKill {
    old: Option<Container>,
    next: Option<Container>,
    /// What Caddy's route dialled before the change, and now.
    dial_before: String,
    dial: Option<String>,
}

impl AtKill {
    /// The new container's alias, as Caddy dials it.
    fn next_dial(&self) -> Option<String> {
        let next = self.next.as_ref()?;
        Some(format!("{}:3000", next.labels["launchdb.upstream"]))
    }
}

/// Docker's events for one container from now on (`docker events --since`), line by line:
/// `<action> <signal>`. The process is the env's, killed when the env drops.
struct DockerEvents(mpsc::Receiver<String>);

impl DockerEvents {
    fn follow(env: &TestEnv, container: &str, action: &str) -> DockerEvents {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &docker_now(),
                "--filter",
                &format!("container={container}"),
                "--filter",
                &format!("event={action}"),
                "--format",
                "{{.Action}} {{index .Actor.Attributes \"signal\"}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events starts");
        let stdout = child.stdout.take().unwrap();
        env.register(Arc::new(Mutex::new(child)));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DockerEvents(rx)
    }

    /// Waits for a line `<action> <signal>` (any signal when `None`).
    fn wait(&self, action: &str, signal: Option<&str>) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .0
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {action} event from Docker: {e}"));
            let mut words = line.split_whitespace();
            if words.next() == Some(action) && signal.is_none_or(|s| words.next() == Some(s)) {
                return;
            }
        }
    }
}

/// A password change under load through Caddy, the manager SIGKILLed at `kill`, then a new
/// manager: at the end one `postgrest-<id>` serves the new password, nothing else of the
/// project is left, Caddy dials it, and the client through Caddy saw no failed request, not
/// even while no manager ran. `at_kill` checks that the kill hit the step it names.
fn crash_point(kill: Kill, at_kill: impl FnOnce(&AtKill)) {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let caddy = start_caddy(&env);
    let mut vars = vec![(
        "PGM_CADDY_ADMIN_URL".to_owned(),
        format!("http://{caddy}:2019"),
    )];
    if let Kill::At(step) = kill {
        vars.push(("PGM_TEST_CRASH_AT".to_owned(), step.to_owned()));
    }
    let mut manager = Manager::start_with(
        &env,
        ManagerOpts {
            env: vars,
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, old, new) = (secret("jwt"), secret("pwold"), secret("pwnew"));
    env.write_state(&id, &state_toml(&jwt_secret, &old));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);
    let dial_before = caddy_dial(caddy, &id).expect("Caddy proxies the project");

    let client = Client::start(caddy, &id);
    answered(&client, 50);
    let next_name = format!("postgrest-{id}-next");
    let events = match kill {
        Kill::OnEvent { on_old, action, .. } => Some(DockerEvents::follow(
            &env,
            if on_old { &before.id } else { &next_name },
            action,
        )),
        Kill::At(_) => None,
    };
    env.write_state(&id, &state_toml(&jwt_secret, &new));
    match (kill, events) {
        (Kill::OnEvent { action, signal, .. }, Some(events)) => {
            events.wait(action, signal);
            manager.kill();
        }
        _ => {
            manager.wait_exit();
            assert!(
                manager
                    .log()
                    .contains("PGM_TEST_CRASH_AT: killing this manager"),
                "{}",
                manager.log()
            );
        }
    }
    let seen = AtKill {
        old: inspect(&before.id),
        next: inspect(&next_name),
        dial_before,
        dial: caddy_dial(caddy, &id),
    };
    eprintln!("{kill:?}: at the kill {seen:#?}");
    at_kill(&seen);

    // Once Caddy was switched to the new container, a restarted manager never sends it back
    // to the old one (each route change is a reload of Caddy's whole config).
    let switched = seen.dial.is_some() && seen.dial == seen.next_dial();
    let manager = manager_with_caddy(&env, caddy, None);
    let after = wait_until("the replacement finished after the restart", || {
        if switched {
            let dial = caddy_dial(caddy, &id);
            assert_ne!(
                dial.as_ref(),
                Some(&seen.dial_before),
                "Caddy was sent back to the old container"
            );
        }
        replaced(&env, &id, &before.id)
    });
    let dial = format!("{}:3000", after.labels["launchdb.upstream"]);
    wait_until(&format!("Caddy to dial {dial}"), || {
        (caddy_dial(caddy, &id).as_ref() == Some(&dial)).then_some(())
    });
    answered(&client, 50);
    if !client.failed.lock().unwrap().is_empty() {
        eprintln!("{}", manager.log());
    }
    client.assert_served(&env);
    assert_eq!(dump_config(&after.name)["db_uri"]["password"], new);
    assert_eq!(project_containers(&env, &id), [after.name]);
    assert_no_secrets(&manager.log(), &[&jwt_secret, &old, &new]);
    if switched {
        // Caddy held the final route already: the restarted manager had nothing to change.
        assert!(
            !manager.log().contains("Caddy routes updated"),
            "{}",
            manager.log()
        );
    }
}

#[test]
fn crash_after_the_new_container_is_created() {
    crash_point(Kill::At("created"), |seen| {
        let next = seen.next.as_ref().expect("-next exists");
        assert_eq!(next.status, "created");
        assert!(seen.old.as_ref().is_some_and(|c| c.running));
        assert_eq!(seen.dial.as_ref(), Some(&seen.dial_before));
    });
}

#[test]
fn crash_after_the_new_container_started() {
    let kill = Kill::OnEvent {
        on_old: false,
        action: "start",
        signal: None,
    };
    crash_point(kill, |seen| {
        assert!(seen.next.as_ref().is_some_and(|c| c.running));
        assert!(seen.old.as_ref().is_some_and(|c| c.running));
    });
}

#[test]
fn crash_after_the_new_container_serves() {
    crash_point(Kill::At("serving"), |seen| {
        let next = seen.next.as_ref().expect("-next exists");
        assert_eq!(http_get(next.ip.unwrap(), "/", None).ok(), Some(200));
        assert!(seen.old.as_ref().is_some_and(|c| c.running));
        assert_eq!(seen.dial.as_ref(), Some(&seen.dial_before));
    });
}

#[test]
fn crash_after_the_route_switch() {
    crash_point(Kill::At("switched"), |seen| {
        assert_eq!(seen.dial, seen.next_dial());
        assert!(seen.old.as_ref().is_some_and(|c| c.running));
    });
}

#[test]
fn crash_after_the_old_container_got_sigterm() {
    let kill = Kill::OnEvent {
        on_old: true,
        action: "kill",
        signal: Some("15"),
    };
    crash_point(kill, |seen| {
        assert_ne!(seen.dial.as_ref(), Some(&seen.dial_before));
    });
}

#[test]
fn crash_after_the_old_container_was_removed_before_the_rename() {
    crash_point(Kill::At("removed"), |seen| {
        assert!(seen.old.is_none());
        assert!(seen.next.as_ref().is_some_and(|c| c.running));
        assert_eq!(seen.dial, seen.next_dial());
    });
}

#[test]
fn crash_after_the_rename() {
    crash_point(Kill::At("renamed"), |seen| {
        assert!(seen.old.is_none());
        assert!(seen.next.is_none(), "renamed: {seen:?}");
        assert_ne!(seen.dial.as_ref(), Some(&seen.dial_before));
    });
}

/// The host:port Caddy's route for the project dials now (its admin API), if it proxies.
fn caddy_dial(caddy: IpAddr, id: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((caddy, 2019)).ok()?;
    let path = format!("/id/launchdb-project-{id}/handle/1/upstreams/0/dial");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {caddy}:2019\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The body is one JSON string, maybe chunked: whatever is between its quotes.
    let (_, rest) = body.split_once('"')?;
    let (dial, _) = rest.split_once('"')?;
    Some(dial.to_owned())
}

/// The benchmark behind BENCHMARKS.md ("Blue/green replacement"), not a test: run with
/// `cargo test --test bluegreen bench_replacement -- --ignored --nocapture` (test profile).
///
/// Three scenarios, each with a manager of its own (API on, Caddy) and two clients of
/// [`Client`] (each one request every 10 ms, so about 2 × 70–100 req/s) through Caddy's port
/// 80 for 10 s before the change and 12 s after it:
/// - `password` (`PGM_REPLACE=bluegreen`): `PUT` of a new password; the time from sending the
///   `PUT` until Caddy dials the new container (it serves the public from then on), and until
///   the `PUT` answered (after the old one drained and the rename);
/// - `image` (bluegreen): the manager restarted with a second test image that differs from
///   the first in a label; the time from the new manager's start until Caddy dials the new
///   container;
/// - `recreate` (`PGM_REPLACE=recreate`, the old path): the same `PUT` as `password`; the
///   time until the `PUT` answered.
///
/// Each prints its failed requests (`resets`: those of them Caddy reset while reloading its
/// config, `caddy_reloads` since it started) and the cold-start floor of the same run: a `PUT` of a new
/// project until its first 200 through Caddy, under the same load (5 s into it; the ratio is
/// against this one) and before the load (`idle_floor_ms`). Times are polled every 10 ms.
#[test]
#[ignore]
fn bench_replacement_under_load() {
    if caddy_missing() {
        return;
    }
    for scenario in ["password", "image", "recreate"] {
        let env = TestEnv::new();
        let v1 = TestImage::build(&env, "v1", "LABEL launchdb.test-variant=v1");
        let v2 = TestImage::build(&env, "v2", "LABEL launchdb.test-variant=v2");
        let caddy = start_caddy(&env);
        let mode = if scenario == "recreate" {
            "recreate"
        } else {
            "bluegreen"
        };
        let start = |image: &TestImage| {
            Manager::start_with(
                &env,
                ManagerOpts {
                    api: Api::Ready,
                    image: Some(image.0.clone()),
                    env: vec![
                        ("PGM_CADDY_ADMIN_URL".into(), format!("http://{caddy}:2019")),
                        ("PGM_REPLACE".into(), mode.into()),
                    ],
                    ..ManagerOpts::default()
                },
            )
        };
        let mut manager = start(&v1);
        let put = |manager: &Manager, id: &str, jwt_secret: &str, password: &str| {
            let body =
                serde_json::json!({"jwtSecret": jwt_secret, "authenticatorPassword": password});
            let response = manager.call("PUT", &format!("/internal/postgrest/{id}"), Some(body));
            assert!(
                response.status == 200 || response.status == 201,
                "PUT: {} {}",
                response.status,
                response.body
            );
        };
        // The cold-start floor: a new project, from its PUT to its first 200 through Caddy.
        let cold_start = |manager: &Manager| {
            let floor_id = env.project_id();
            let started = std::time::Instant::now();
            thread::scope(|s| {
                s.spawn(|| put(manager, &floor_id, &secret("jwt"), &secret("pw")));
                poll("the new project through Caddy", || {
                    let path = format!("/db/{floor_id}/items");
                    (http_get_port(caddy, 80, &path, None).ok()? == 200).then_some(())
                });
            });
            started.elapsed()
        };
        let idle_floor = cold_start(&manager);

        let id = env.project_id();
        let jwt_secret = secret("jwt");
        put(&manager, &id, &jwt_secret, &secret("pwold"));
        let before = env.wait_serving(&id);
        wait_routed(caddy, &id);
        let clients = [Client::start(caddy, &id), Client::start(caddy, &id)];
        let load_started = std::time::Instant::now();
        wait_until_for("5 s of load", Duration::from_secs(30), || {
            (load_started.elapsed() >= Duration::from_secs(5)).then_some(())
        });
        // The floor the replacement is compared with: under the same load.
        let floor = cold_start(&manager);
        wait_until_for("10 s of load", Duration::from_secs(30), || {
            (load_started.elapsed() >= Duration::from_secs(10)).then_some(())
        });
        let dial_before = caddy_dial(caddy, &id);
        let changed = std::time::Instant::now();
        let (to_serving, answered) = match scenario {
            "image" => {
                manager.terminate();
                manager = start(&v2);
                let serving = poll("Caddy to dial the new container", || {
                    let dial = caddy_dial(caddy, &id)?;
                    (Some(&dial) != dial_before.as_ref()).then(|| changed.elapsed())
                });
                (Some(serving), None)
            }
            _ => thread::scope(|s| {
                let putting = s.spawn(|| {
                    put(&manager, &id, &jwt_secret, &secret("pwnew"));
                    changed.elapsed()
                });
                let serving = (mode == "bluegreen").then(|| {
                    poll("Caddy to dial the new container", || {
                        let dial = caddy_dial(caddy, &id)?;
                        (Some(&dial) != dial_before.as_ref()).then(|| changed.elapsed())
                    })
                });
                (serving, Some(putting.join().unwrap()))
            }),
        };
        let after = wait_replaced(&env, &id, &before.id);
        wait_until_for("12 s more of load", Duration::from_secs(60), || {
            (changed.elapsed() >= Duration::from_secs(12)).then_some(())
        });
        let seconds = load_started.elapsed().as_secs_f64();
        let (mut ok, mut failed) = (0, Vec::new());
        for client in clients {
            let (o, f) = client.finish();
            ok += o;
            failed.extend(f);
        }
        if scenario == "image" {
            let variant = docker_ok(&[
                "inspect",
                "-f",
                "{{index .Config.Labels \"launchdb.test-variant\"}}",
                &after.id,
            ]);
            assert_eq!(variant.trim(), "v2");
        }
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
        let ratio = to_serving.map_or("-".to_owned(), |d| {
            format!("{:.2}", d.as_secs_f64() / floor.as_secs_f64())
        });
        println!(
            "BENCH scenario={scenario} mode={mode} requests={} failed={} resets={} \
             caddy_reloads={} rate={:.0}/s load={seconds:.1}s change_to_serving_ms={} put_answered_ms={} \
             cold_start_floor_ms={} idle_floor_ms={} ratio={ratio} failures={:?}",
            ok + failed.len(),
            failed.len(),
            failed.iter().filter(|f| f.contains("ConnectionReset")).count(),
            caddy_reloads(&env),
            (ok + failed.len()) as f64 / seconds,
            ms(to_serving),
            ms(answered),
            floor.as_millis(),
            idle_floor.as_millis(),
            failed.iter().take(3).collect::<Vec<_>>(),
        );
    }
}

/// Polls `check` every 10 ms (a bench's finer grain than [`wait_until`]), for at most
/// [`TIMEOUT`].
fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A new container that cannot log in (here: pointed straight at PostgreSQL, where its role
/// has no such password, so PostgREST exits) never takes the project down: the old one keeps
/// serving through Caddy without a failed request, the new one is removed as soon as its log
/// says the login was refused (the replace timeout is ten minutes, longer than this test
/// waits), and the status says why in PostgREST's words, without the password.
#[test]
fn a_new_container_that_cannot_log_in_leaves_the_old_one_serving() {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let postgres = std::env::var("PGMT_POSTGRES").expect("PGMT_POSTGRES (tests/db.sh up)");
    docker_ok(&[
        "network",
        "connect",
        "--alias",
        "testpg",
        &env.network,
        &postgres,
    ]);
    let caddy = start_caddy(&env);
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            env: vec![
                ("PGM_CADDY_ADMIN_URL".into(), format!("http://{caddy}:2019")),
                // Ten minutes: the failure must be seen in the log, not waited out.
                ("PGM_REPLACE_TIMEOUT_SECS".into(), "600".into()),
            ],
            ..ManagerOpts::default()
        },
    );
    let id = env.project_id();
    let (jwt_secret, good, wrong) = (secret("jwt"), secret("pwgood"), secret("pwwrong"));
    env.write_state(&id, &state_toml(&jwt_secret, &good));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);

    let client = Client::start(caddy, &id);
    answered(&client, 50);
    let wrong_toml = format!(
        "{}db_host = \"testpg\"\ndb_port = 5432\n",
        state_toml(&jwt_secret, &wrong)
    );
    env.write_state(&id, &wrong_toml);
    let view = wait_until_for(
        "the status to say the new container never served",
        TIMEOUT,
        || {
            let view = manager
                .call("GET", &format!("/internal/postgrest/{id}"), None)
                .json();
            let error = view["lastError"].as_str().unwrap_or_default().to_owned();
            error.contains("never served").then_some(view)
        },
    );
    let error = view["lastError"].as_str().unwrap().to_owned();
    assert!(error.contains("old one keeps serving"), "{error}");
    // PostgREST exits on a refused login straight to PostgreSQL; either sign gives it up.
    assert!(
        error.contains("(its database refused the login)")
            || error.contains("(it exited with code 1)"),
        "{error}"
    );
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(
        !error.contains(&wrong),
        "the password in the status: {error}"
    );
    answered(&client, 50);
    client.assert_served(&env);
    // The old container is the project's container still, and the new one is gone.
    let now = inspect(&env.container(&id)).expect("the old container is there");
    assert_eq!(now.id, before.id);
    wait_until("the failed replacement to be removed", || {
        inspect(&format!("postgrest-{id}-next"))
            .is_none()
            .then_some(())
    });
    assert_no_secrets(&manager.log(), &[&jwt_secret, &good, &wrong]);
}

/// A new image whose process exits at once (Docker restarts it, unless-stopped): the
/// replacement is given up as soon as Docker restarts it, not at the timeout; the new
/// container is removed, the old one keeps serving through Caddy without a failed request,
/// and the status says why (the exit code and the container's own last words).
#[test]
fn an_image_that_does_not_start_leaves_the_old_one_serving() {
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let broken = TestImage::build(
        &env,
        "broken",
        "LABEL launchdb.test-variant=broken\n\
         ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo this image does not start >&2; exit 3\"]",
    );
    let caddy = start_caddy(&env);
    let mut manager = manager_with_caddy(&env, caddy, None);
    let id = env.project_id();
    env.write_state(&id, &state_toml(&secret("jwt"), &secret("pw")));
    let before = env.wait_serving(&id);
    wait_routed(caddy, &id);

    let client = Client::start(caddy, &id);
    answered(&client, 50);
    manager.terminate();
    let manager = Manager::start_with(
        &env,
        ManagerOpts {
            api: Api::Ready,
            image: Some(broken.0.clone()),
            env: vec![("PGM_CADDY_ADMIN_URL".into(), format!("http://{caddy}:2019"))],
            ..ManagerOpts::default()
        },
    );
    let view = wait_until("the status to say the new container never served", || {
        let view = manager
            .call("GET", &format!("/internal/postgrest/{id}"), None)
            .json();
        let error = view["lastError"].as_str().unwrap_or_default().to_owned();
        error.contains("never served").then_some(view)
    });
    let error = view["lastError"].as_str().unwrap().to_owned();
    assert!(error.contains("(it exited with code 3)"), "{error}");
    assert!(error.contains("this image does not start"), "{error}");
    assert!(error.contains("old one keeps serving"), "{error}");
    wait_until("the failed replacement to be removed", || {
        inspect(&format!("postgrest-{id}-next"))
            .is_none()
            .then_some(())
    });
    answered(&client, 50);
    client.assert_served(&env);
    let now = inspect(&env.container(&id)).expect("the old container is there");
    assert_eq!(now.id, before.id);
    assert!(now.running);
}

/// Not a test: what Caddy 2.6.2 alone does to clients while its config is reloaded (every
/// route change is a reload), behind BENCHMARKS.md's note on resets. Run with
/// `cargo test --test bluegreen bench_caddy_reload_resets -- --ignored --nocapture`.
/// Two clients GET a static route through Caddy (no upstream) for 20 s while the route is
/// replaced every 200 ms through the admin API; it prints the answers and the failures.
#[test]
#[ignore]
fn bench_caddy_reload_resets() {
    use std::io::{Read, Write};
    if caddy_missing() {
        return;
    }
    let env = TestEnv::new();
    let caddy = start_caddy(&env);
    let set_route = |n: usize| {
        let body = serde_json::json!([{
            "@id": "launchdb-project-x",
            "match": [{"path": ["/db/x/*"]}],
            "handle": [{"handler": "static_response", "status_code": 200, "body": n.to_string()}],
        }])
        .to_string();
        let mut stream = std::net::TcpStream::connect((caddy, 2019)).unwrap();
        write!(
            stream,
            "PATCH /id/launchdb-projects/handle/0/routes HTTP/1.1\r\nHost: {caddy}:2019\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    };
    set_route(0);
    let clients = [Client::start(caddy, "x"), Client::start(caddy, "x")];
    let started = std::time::Instant::now();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_secs(20) {
        reloads += 1;
        set_route(reloads);
        thread::sleep(Duration::from_millis(200));
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = client.finish();
        ok += o;
        failed.extend(f);
    }
    println!(
        "BENCH caddy_reloads={reloads} (logged {}) answered_200={ok} failed={} resets={} first={:?}",
        caddy_reloads(&env),
        failed.len(),
        failed.iter().filter(|f| f.contains("ConnectionReset")).count(),
        failed.first(),
    );
}
