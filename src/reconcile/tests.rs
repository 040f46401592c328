//! Reconcile-loop tests against the in-memory runtime: real files in a temp dir, real timers
//! (the loop's debounce is 5 ms, so each test takes a fraction of a second). No test sleeps to
//! prove that something did not happen: it waits for passes of the loop instead (the snapshot
//! counts them), and a pass that nothing changed makes no Docker call.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::render::{self, LABEL_INSTANCE, LABEL_PROJECT};
use crate::runtime::fake::{Call, FakeRuntime};
use crate::runtime::State;
use crate::spec::{Secret, SpecFile};

const WAIT: Duration = Duration::from_secs(10);
const SECRET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECRET_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

struct Env {
    _tmp: tempfile::TempDir,
    cfg: LoopConfig,
    fake: FakeRuntime,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        // Nothing listens on its admin port: every container is "not ready", which no test
        // here needs unless it says otherwise.
        let cfg = LoopConfig::for_tests("unit", tmp.path());
        Env {
            _tmp: tmp,
            cfg,
            fake: FakeRuntime::new(),
        }
    }

    /// Starts a loop; it stops when the returned sender is dropped or sent to.
    fn start(
        &self,
    ) -> (
        Handle,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (controller, handle) = Controller::new(Arc::new(self.fake.clone()), self.cfg.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(async move {
            let _ = stopped.await;
        }));
        (handle, stop, task)
    }

    fn write(&self, id: &str, edit: impl FnOnce(&mut SpecFile)) {
        let mut file = SpecFile::new(Secret::new(SECRET_A), Secret::new("pw"));
        edit(&mut file);
        self.cfg.state.write(&pid(id), &file).unwrap();
    }

    fn write_raw(&self, id: &str, text: &str) {
        std::fs::write(self.cfg.state.file(&pid(id)), text).unwrap();
    }
}

fn pid(id: &str) -> ProjectId {
    ProjectId::parse(id).unwrap()
}

/// Waits until the project runs with exactly what its file on disk says.
async fn converged(env: &Env, handle: &Handle, id: &str) -> Arc<Snapshot> {
    handle.wake();
    let id = pid(id);
    let spec = env.cfg.state.read(&id).unwrap().unwrap();
    let digest = render::render(&spec, &env.cfg.template).config.digest;
    handle
        .wait_for(WAIT, |s| {
            s.projects.get(&id).is_some_and(|p| {
                p.converged()
                    && p.desired
                        .as_ref()
                        .is_some_and(|d| d.planned.config_digest == digest)
            })
        })
        .await
        .unwrap_or_else(|s| panic!("{id} did not converge: {:?}", s.projects.get(&id)))
}

async fn gone(handle: &Handle, id: &str) {
    handle.wake();
    let id = pid(id);
    handle
        .wait_for(WAIT, |s| {
            s.projects
                .get(&id)
                .is_none_or(|p| p.container.is_none() && p.desired.is_none())
        })
        .await
        .unwrap_or_else(|s| panic!("{id} is not gone: {:?}", s.projects.get(&id)));
}

/// Wakes the loop and waits until `n` more passes have finished, one at a time. Whatever the
/// loop would do by itself (a confirming pass after an action) is done by then too.
async fn passes(handle: &Handle, n: u64) {
    for _ in 0..n {
        let before = handle.snapshot().passes;
        handle.wake();
        handle
            .wait_for(WAIT, |s| s.passes > before)
            .await
            .expect("the loop makes a pass when woken");
    }
}

fn container_id(snapshot: &Snapshot, id: &str) -> String {
    snapshot.projects[&pid(id)]
        .container
        .as_ref()
        .unwrap()
        .id
        .clone()
}

/// Every call from now until one matching `until` is made (inclusive).
async fn calls_until(fake: &FakeRuntime, until: impl Fn(&Call) -> bool) -> Vec<Call> {
    let mut calls = Vec::new();
    let wait = async {
        while !calls.iter().any(&until) {
            calls.extend(fake.take_calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no such call within {WAIT:?}"));
    calls
}

/// Calls that change something, without the listing, lookups and pinging around them.
fn changes(fake: &FakeRuntime) -> Vec<Call> {
    fake.take_calls()
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Call::List | Call::Inspect(_) | Call::Ping | Call::EnsureNetwork(_)
            )
        })
        .collect()
}

#[tokio::test]
async fn creates_reloads_recreates_and_removes() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();

    let snapshot = converged(&env, &handle, "p1").await;
    let first = container_id(&snapshot, "p1");
    assert_eq!(
        changes(&env.fake),
        [
            Call::Create("postgrest-p1".into()),
            Call::Start(first.clone())
        ]
    );
    let config = std::fs::read_to_string(env.cfg.configs.config_file(&pid("p1"))).unwrap();
    assert!(config.contains(SECRET_A));

    // A reloadable change: rewrite and signal, same container.
    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    let snapshot = converged(&env, &handle, "p1").await;
    assert_eq!(container_id(&snapshot, "p1"), first);
    let config = std::fs::read_to_string(env.cfg.configs.config_file(&pid("p1"))).unwrap();
    assert!(config.contains(SECRET_B));
    assert_eq!(
        changes(&env.fake),
        [Call::Signal(first.clone(), "SIGUSR2".into())]
    );
    assert!(snapshot.projects[&pid("p1")].last_reload.is_some());

    // A password change needs a new container.
    env.write("p1", |f| {
        f.jwt_secret = Secret::new(SECRET_B);
        f.authenticator_password = Secret::new("new");
    });
    handle.wake();
    let snapshot = handle
        .wait_for(WAIT, |s| {
            let p = &s.projects[&pid("p1")];
            p.converged() && p.container.as_ref().is_some_and(|c| c.id != first)
        })
        .await
        .expect("recreated");
    let second = container_id(&snapshot, "p1");
    assert_eq!(
        changes(&env.fake),
        [
            Call::Remove(first),
            Call::Create("postgrest-p1".into()),
            Call::Start(second.clone())
        ]
    );

    // Deleting the file removes the container and the rendered config.
    env.cfg.state.remove(&pid("p1")).unwrap();
    gone(&handle, "p1").await;
    assert!(!env.cfg.configs.project_dir(&pid("p1")).exists());
    assert!(env.fake.containers().is_empty());
}

#[tokio::test]
async fn disabled_keeps_the_config() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;

    env.write("p1", |f| f.enabled = Some(false));
    handle.wake();
    handle
        .wait_for(WAIT, |s| s.projects[&pid("p1")].container.is_none())
        .await
        .expect("container removed");
    assert!(env.cfg.configs.config_file(&pid("p1")).exists());

    env.write("p1", |f| f.enabled = Some(true));
    converged(&env, &handle, "p1").await;
}

#[tokio::test]
async fn an_invalid_file_never_takes_a_container_down() {
    let env = Env::new();
    env.write("p1", |_| {});
    env.write("p2", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    let snapshot = converged(&env, &handle, "p2").await;
    let before = container_id(&snapshot, "p1");
    env.fake.take_calls();

    env.write_raw("p1", "jwt_secret = \"unterminated");
    handle.wake();
    let snapshot = handle
        .wait_for(WAIT, |s| s.projects[&pid("p1")].file_error.is_some())
        .await
        .expect("error reported");
    assert_eq!(container_id(&snapshot, "p1"), before);
    // The other project is untouched too.
    assert!(snapshot.projects[&pid("p2")].converged());

    // A container removed by hand comes back from the last good spec.
    env.fake.remove_by_hand("postgrest-p1");
    handle.wake();
    let snapshot = handle
        .wait_for(WAIT, |s| {
            let p = &s.projects[&pid("p1")];
            p.converged() && p.container.as_ref().is_some_and(|c| c.id != before)
        })
        .await
        .expect("recreated from the last good spec");
    assert!(snapshot.projects[&pid("p1")].file_error.is_some());
}

#[tokio::test]
async fn a_manager_started_on_a_broken_file_leaves_its_container_alone() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, stop, task) = env.start();
    converged(&env, &handle, "p1").await;
    stop.send(()).unwrap();
    task.await.unwrap();

    env.write_raw("p1", "this is not toml");
    env.fake.take_calls();
    let (handle, _stop, _task) = env.start();
    handle.wake();
    handle
        .wait_for(WAIT, |s| s.reconciled_once)
        .await
        .expect("first pass");
    assert_eq!(changes(&env.fake), []);
    assert_eq!(env.fake.containers().len(), 1);
    assert!(env.cfg.configs.config_file(&pid("p1")).exists());
}

#[tokio::test]
async fn adoption_keeps_containers_and_signals_only_unconfirmed_configs() {
    let env = Env::new();
    env.write("p1", |_| {});
    env.write("p2", |_| {});
    let (handle, stop, task) = env.start();
    converged(&env, &handle, "p1").await;
    converged(&env, &handle, "p2").await;
    stop.send(()).unwrap();
    task.await.unwrap();

    // As if the manager died after rewriting p2's config but before signalling it.
    env.cfg.configs.forget(&pid("p2")).unwrap();
    env.fake.take_calls();
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    let snapshot = converged(&env, &handle, "p2").await;
    assert_eq!(
        changes(&env.fake),
        [Call::Signal(
            container_id(&snapshot, "p2"),
            "SIGUSR2".into()
        )]
    );
}

#[tokio::test]
async fn rides_out_a_docker_outage() {
    let env = Env::new();
    env.fake.set_unavailable(true);
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    handle.wake();
    handle
        .wait_for(WAIT, |s| !s.docker_reachable && !s.ready())
        .await
        .expect("outage seen");

    env.fake.set_unavailable(false);
    let snapshot = converged(&env, &handle, "p1").await;
    assert!(snapshot.docker_reachable);
    handle
        .wait_for(WAIT, Snapshot::ready)
        .await
        .expect("ready once Docker is back");
}

#[tokio::test]
async fn conflicts_are_reported_and_never_removed() {
    let env = Env::new();
    env.fake.insert(ContainerInfo {
        id: "foreign1".into(),
        name: "postgrest-p1".into(),
        labels: BTreeMap::new(),
        state: State::Running,
        health: Health::None,
        ip: None,
        exit_code: None,
        tasks: None,
    });
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    handle.wake();
    let snapshot = handle
        .wait_for(WAIT, |s| {
            s.projects
                .get(&pid("p1"))
                .is_some_and(|p| p.last_error.is_some())
        })
        .await
        .expect("conflict reported");
    let error = snapshot.projects[&pid("p1")].last_error.clone().unwrap();
    assert!(
        error.contains("postgrest-p1") && error.contains("foreign1"),
        "{error}"
    );

    // Several more passes: still there, and no hot loop of create attempts.
    passes(&handle, 5).await;
    let calls = env.fake.take_calls();
    let creates = calls
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert_eq!(creates, 1, "{calls:?}");
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Remove(_))),
        "{calls:?}"
    );
    assert_eq!(env.fake.containers().len(), 1);

    // Once nobody wants the project, its old error goes with it; the container stays.
    env.cfg.state.remove(&pid("p1")).unwrap();
    handle.wake();
    handle
        .wait_for(WAIT, |s| !s.projects.contains_key(&pid("p1")))
        .await
        .expect("forgotten");
    assert_eq!(env.fake.containers().len(), 1);
}

#[tokio::test]
async fn containers_of_other_instances_are_invisible() {
    let env = Env::new();
    let mut labels = render::owner_labels(&env.cfg.template.instance);
    labels.insert(LABEL_INSTANCE.into(), "other".into());
    labels.insert(LABEL_PROJECT.into(), "q1".into());
    env.fake.insert(ContainerInfo {
        id: "other1".into(),
        name: "postgrest-q1".into(),
        labels,
        state: State::Running,
        health: Health::None,
        ip: None,
        exit_code: None,
        tasks: None,
    });
    let (handle, _stop, _task) = env.start();
    handle.wake();
    handle
        .wait_for(WAIT, |s| s.reconciled_once)
        .await
        .expect("first pass");
    assert_eq!(changes(&env.fake), []);
    assert_eq!(env.fake.containers().len(), 1);
}

#[tokio::test]
async fn many_projects_converge_under_the_concurrency_cap() {
    let env = Env::new();
    for i in 0..20 {
        env.write(&format!("p{i}"), |_| {});
    }
    let (handle, _stop, _task) = env.start();
    handle.wake();
    handle
        .wait_for(WAIT, |s| {
            s.projects.len() == 20 && s.projects.values().all(ProjectStatus::converged)
        })
        .await
        .expect("all converge");
    let calls = env.fake.take_calls();
    let creates = calls
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert_eq!(creates, 20, "{calls:?}");
}

/// Waits until exactly `n` calls are held in the fake.
async fn in_flight(fake: &FakeRuntime, n: usize) {
    tokio::time::timeout(WAIT, async {
        while fake.in_flight() != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {n} calls in flight"));
}

#[tokio::test]
async fn at_most_the_cap_in_flight_and_never_two_for_one_project() {
    let env = Env::new(); // concurrency 2
    for i in 0..6 {
        env.write(&format!("p{i}"), |_| {});
    }
    let gate = env.fake.hold();
    let (handle, _stop, _task) = env.start();
    in_flight(&env.fake, 2).await;

    // Two actions are held. Passes come and go (p0's file changes meanwhile, so the planner
    // has something new for a project that is in flight): nothing else is started.
    env.write("p0", |f| f.jwt_secret = Secret::new(SECRET_B));
    passes(&handle, 3).await;
    assert_eq!(env.fake.in_flight(), 2);
    assert_eq!(env.fake.overlaps(), 0);

    // One call through: its project's next call or another project's takes the slot.
    gate.add_permits(1);
    in_flight(&env.fake, 2).await;
    assert_eq!(env.fake.max_in_flight(), 2);

    // Open the gate: everything converges, never more than two at once, never two calls on
    // one container at once.
    gate.add_permits(1_000);
    handle
        .wait_for(WAIT, |s| {
            s.projects.len() == 6 && s.projects.values().all(ProjectStatus::converged)
        })
        .await
        .expect("all converge");
    converged(&env, &handle, "p0").await;
    assert_eq!(env.fake.max_in_flight(), 2);
    assert_eq!(env.fake.overlaps(), 0);
}

#[tokio::test]
async fn a_failed_reload_signal_is_retried_and_reported() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    let before = converged(&env, &handle, "p1").await;
    let container = container_id(&before, "p1");

    env.fake.fail_signals(true);
    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    handle.wake();
    let failed = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid("p1")]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot kill"))
        })
        .await
        .expect("the failed signal shows as the project's error");
    // The container keeps running with the old config; nobody claims the new one is loaded.
    let status = &failed.projects[&pid("p1")];
    assert!(!status.converged(), "{status:?}");
    assert_eq!(status.container.as_ref().unwrap().id, container);

    // Once signals go through again, the backoff brings the reload; the error is cleared.
    env.fake.fail_signals(false);
    let after = converged(&env, &handle, "p1").await;
    assert_eq!(container_id(&after, "p1"), container);
    assert_eq!(after.projects[&pid("p1")].last_error, None);
    let creates = env
        .fake
        .take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Create(_) | Call::Remove(_)))
        .count();
    assert_eq!(
        creates, 1,
        "only the first create; a failed reload never recreates"
    );
}

#[tokio::test]
async fn a_reload_counts_only_once_postgrest_confirms_it() {
    let mut env = Env::new();
    env.cfg.reload_timeout = Duration::from_millis(300);
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    let before = converged(&env, &handle, "p1").await;
    let container = container_id(&before, "p1");
    let old_digest = before.projects[&pid("p1")].loaded_digest.clone();
    let signals = |calls: &[Call]| {
        calls
            .iter()
            .filter(|c| matches!(c, Call::Signal(..)))
            .count()
    };
    env.fake.take_calls();

    // The signal is delivered, and PostgREST says nothing: not loaded, an error, retried.
    env.fake.reply_to_signals("postgrest-p1", None);
    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    handle.wake();
    let silent = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid("p1")]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("did not confirm the config reload"))
        })
        .await
        .expect("an unconfirmed reload shows as the project's error");
    let status = &silent.projects[&pid("p1")];
    assert!(!status.converged(), "{status:?}");
    assert_eq!(status.loaded_digest, old_digest);
    assert_eq!(status.container.as_ref().unwrap().id, container);
    let mut calls = env.fake.take_calls();
    let deadline = tokio::time::Instant::now() + WAIT;
    while signals(&calls) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        calls.extend(env.fake.take_calls());
    }

    // PostgREST refuses the file: its reason is the error, with the secret masked.
    env.fake.reply_to_signals(
        "postgrest-p1",
        Some(&format!(
            "29/Nov/2026:09:35:32 +0000: Failed reloading config: jwt-secret {SECRET_B} is not allowed"
        )),
    );
    let refused = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid("p1")]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("refused the new config"))
        })
        .await
        .expect("a refused reload shows as the project's error");
    let error = refused.projects[&pid("p1")].last_error.clone().unwrap();
    assert!(error.contains("jwt-secret *** is not allowed"), "{error}");
    assert!(!error.contains(SECRET_B), "{error}");
    assert!(!refused.projects[&pid("p1")].converged());

    // Once PostgREST confirms, the reload counts; same container, error cleared.
    env.fake.reply_to_signals(
        "postgrest-p1",
        Some("29/Nov/2026:09:35:33 +0000: Config reloaded"),
    );
    let after = converged(&env, &handle, "p1").await;
    assert_eq!(container_id(&after, "p1"), container);
    assert_eq!(after.projects[&pid("p1")].last_error, None);
    calls.extend(env.fake.take_calls());
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Create(_) | Call::Remove(_))),
        "a reload never recreates: {calls:?}"
    );
}

/// A removal is a graceful stop that may take the whole grace period: it runs as the
/// project's job, and the loop keeps converging the others meanwhile.
#[tokio::test]
async fn a_slow_graceful_removal_does_not_hold_up_the_others() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    let grace = Duration::from_secs(4);
    env.fake.slow_removals(grace);
    std::fs::remove_file(env.cfg.state.file(&pid("p1"))).unwrap();
    handle.wake();
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.fake.in_flight() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removal never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let start = std::time::Instant::now();
    env.write("p2", |_| {});
    converged(&env, &handle, "p2").await;
    assert!(start.elapsed() < grace, "p2 waited for p1's removal");
    assert!(
        env.fake
            .containers()
            .iter()
            .any(|c| c.name == "postgrest-p1"),
        "p1 is still stopping"
    );
    handle
        .wait_for(WAIT, |s| !s.projects.contains_key(&pid("p1")))
        .await
        .expect("p1 is removed once its grace is over");
    assert!(!env
        .fake
        .containers()
        .iter()
        .any(|c| c.name == "postgrest-p1"));
}

#[tokio::test]
async fn shutdown_leaves_containers_running() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, stop, task) = env.start();
    converged(&env, &handle, "p1").await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("loop stops")
        .unwrap();
    assert_eq!(env.fake.containers().len(), 1);
    assert_eq!(env.fake.containers()[0].state, State::Running);
}

#[tokio::test]
async fn health_changes_show_without_a_pass() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    // Let the loop's confirming pass after the create go by, then watch the calls.
    passes(&handle, 1).await;
    env.fake.take_calls();

    env.fake.set_health("postgrest-p1", Health::Healthy);
    let id = pid("p1");
    handle
        .wait_for(WAIT, |s| {
            s.projects[&id]
                .container
                .as_ref()
                .is_some_and(|c| c.health == Health::Healthy)
        })
        .await
        .expect("the snapshot shows the new health");
    passes(&handle, 1).await;
    assert_eq!(
        env.fake.take_calls(),
        vec![],
        "a health change costs no Docker call"
    );

    // Anything else still brings a full look: a stopped container is started again.
    let container = container_id(&handle.snapshot(), "p1");
    env.fake.set_state("postgrest-p1", State::Exited);
    calls_until(&env.fake, |c| c == &Call::Start(container.clone())).await;
}

#[tokio::test]
async fn a_file_change_alone_plans_against_the_last_listing() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    passes(&handle, 1).await;
    let container = container_id(&handle.snapshot(), "p1");
    env.fake.take_calls();

    // Nothing happened in Docker since the last list: the reload goes out without one, and
    // the pass after it looks at nothing either (a signal changes nothing a list shows).
    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    converged(&env, &handle, "p1").await;
    passes(&handle, 1).await;
    assert_eq!(
        env.fake.take_calls(),
        vec![Call::Signal(container.clone(), "SIGUSR2".into())]
    );

    // A Docker event names the container that changed: the pass asks for it before it acts.
    env.fake.remove_by_hand("postgrest-p1");
    let calls = calls_until(&env.fake, |c| matches!(c, Call::Create(_))).await;
    assert_eq!(calls.first(), Some(&Call::Inspect(container)), "{calls:?}");
    assert!(!calls.contains(&Call::List), "{calls:?}");
}

/// A pass that changed nothing publishes the projects it published before, not a copy (at
/// ten thousand projects, building them anew was a third of an idle pass); one that changed
/// something publishes them anew.
#[tokio::test]
async fn a_pass_that_changed_nothing_publishes_the_same_projects() {
    let mut env = Env::new();
    // Serving, so that its readiness settles (a container not serving gets a new reason
    // from its log now and then, and every change is published).
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    env.cfg.admin_port = ready_server(ready).await;
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    handle
        .wait_for(WAIT, |s| {
            s.projects[&pid("p1")]
                .container
                .as_ref()
                .is_some_and(|c| c.ready == Readiness::Ready)
        })
        .await
        .expect("p1 serves");
    // A file younger than two seconds is read again by every full read (`passes` asks for
    // one), in case an edit in place hid behind the same time stamp: wait for the file to
    // settle and a pass to find nothing new.
    let mut before = handle.snapshot();
    let settled = async {
        loop {
            passes(&handle, 1).await;
            let after = handle.snapshot();
            if Arc::ptr_eq(&before.projects, &after.projects) {
                return after;
            }
            before = after;
        }
    };
    let before = tokio::time::timeout(WAIT, settled)
        .await
        .expect("a pass that changed nothing publishes the projects before");
    passes(&handle, 2).await;
    assert!(Arc::ptr_eq(&before.projects, &handle.snapshot().projects));

    env.write_raw("p1", "enabled = maybe");
    handle.wake();
    let broken = handle
        .wait_for(WAIT, |s| s.projects[&pid("p1")].file_error.is_some())
        .await
        .expect("the file's error is published");
    assert!(!Arc::ptr_eq(&before.projects, &broken.projects));
}

/// A removal takes its container out of the listing as it ends: no pass lists for it.
#[tokio::test]
async fn a_removal_is_seen_without_a_list() {
    let env = Env::new();
    env.write("p1", |_| {});
    env.write("p2", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    converged(&env, &handle, "p2").await;
    passes(&handle, 1).await;
    let container = container_id(&handle.snapshot(), "p1");
    env.fake.take_calls();

    std::fs::remove_file(env.cfg.state.file(&pid("p1"))).unwrap();
    gone(&handle, "p1").await;
    passes(&handle, 2).await;
    assert_eq!(env.fake.take_calls(), vec![Call::Remove(container)]);
    assert!(env
        .fake
        .containers()
        .iter()
        .all(|c| c.name != "postgrest-p1"));
}

/// A start's event that comes after the action that started the container looked it up
/// costs no lookup: the listing shows it running already. A start of a container the listing
/// shows stopped is looked at.
#[tokio::test]
async fn a_late_start_event_of_a_running_container_costs_no_lookup() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    passes(&handle, 1).await;
    let container = container_id(&handle.snapshot(), "p1");
    env.fake.take_calls();

    env.fake.announce_start("postgrest-p1");
    passes(&handle, 2).await;
    assert_eq!(env.fake.take_calls(), Vec::<Call>::new());

    // Stopped and started again behind the loop's back: the stop's event is looked at, and
    // so is a start the listing does not explain.
    env.fake.set_state("postgrest-p1", State::Exited);
    let calls = calls_until(&env.fake, |c| matches!(c, Call::Start(_))).await;
    assert_eq!(calls.first(), Some(&Call::Inspect(container)), "{calls:?}");
}

/// Past [`LOOKUPS_MAX`] containers named by events, one list is cheaper than a lookup each.
#[tokio::test]
async fn many_named_containers_are_listed_instead_of_asked_for_one_by_one() {
    let env = Env::new();
    let n = super::LOOKUPS_MAX + 1;
    for i in 0..n {
        env.write(&format!("p{i}"), |_| {});
    }
    let (handle, _stop, _task) = env.start();
    for i in 0..n {
        converged(&env, &handle, &format!("p{i}")).await;
    }
    passes(&handle, 1).await;
    env.fake.take_calls();

    // Stopped behind the loop's back, all at once (the test's thread does not yield in
    // between): each says so in an event, and all are there for the next pass.
    for i in 0..n {
        env.fake
            .set_state(&format!("postgrest-p{i}"), State::Exited);
    }
    let calls = calls_until(&env.fake, |c| matches!(c, Call::Start(_))).await;
    assert_eq!(calls.first(), Some(&Call::List), "{calls:?}");
    let mut before_acting = calls.iter().take_while(|c| !matches!(c, Call::Start(_)));
    assert!(
        !before_acting.any(|c| matches!(c, Call::Inspect(_))),
        "{calls:?}"
    );
}

/// The watcher names the files that changed, and a pass looks at those alone: a file nobody
/// named waits for a full read (a plain wake, or the periodic rescan).
#[tokio::test]
async fn a_named_change_is_read_and_an_unnamed_one_waits_for_the_full_read() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    // Two passes that read no file: any full read asked for so far is done by then (the
    // second starts after the first ends, which is after every earlier wake).
    for _ in 0..2 {
        let before = handle.snapshot().passes;
        handle.file_changed("no-such-project.toml");
        handle
            .wait_for(WAIT, |s| s.passes > before)
            .await
            .expect("a pass");
    }

    env.write("p2", |_| {});
    env.write("p3", |_| {});
    let before = handle.snapshot().passes;
    handle.file_changed("p3.toml");
    let seen = handle
        .wait_for(WAIT, |s| {
            s.passes > before && s.projects.contains_key(&pid("p3"))
        })
        .await
        .expect("the named file is read");
    assert!(!seen.projects.contains_key(&pid("p2")), "p2 was not named");
    converged(&env, &handle, "p2").await; // wakes the loop: a full read
}

#[tokio::test]
async fn a_file_the_watcher_missed_is_found_by_the_periodic_rescan() {
    let mut env = Env::new();
    env.cfg.resync = Duration::from_millis(20);
    let (handle, _stop, _task) = env.start();
    passes(&handle, 1).await;
    env.write("missed", |_| {});
    handle
        .wait_for(WAIT, |s| s.projects.contains_key(&pid("missed")))
        .await
        .expect("found within RESCAN_EVERY resyncs");
}

#[tokio::test]
async fn a_create_is_confirmed_by_asking_for_that_container_alone() {
    let env = Env::new();
    env.write("p0", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p0").await;
    passes(&handle, 1).await;
    env.fake.take_calls();

    // Nothing else changed in Docker: the create asks for the new container by id as it
    // ends, and the pass after it lists nothing.
    env.write("p1", |_| {});
    converged(&env, &handle, "p1").await;
    passes(&handle, 1).await;
    let container = container_id(&handle.snapshot(), "p1");
    assert_eq!(
        env.fake.take_calls(),
        vec![
            Call::Create("postgrest-p1".into()),
            Call::Start(container.clone()),
            Call::Inspect(container.clone()),
        ]
    );

    // A recreate replaces the old container in the listing (they share the name): had the
    // old one stayed, the planner would remove it again as a surplus container.
    env.write("p1", |f| f.authenticator_password = Secret::new("another"));
    let snapshot = converged(&env, &handle, "p1").await;
    passes(&handle, 2).await;
    let recreated = container_id(&snapshot, "p1");
    assert_ne!(recreated, container);
    assert_eq!(
        env.fake.take_calls(),
        vec![
            Call::Remove(container),
            Call::Create("postgrest-p1".into()),
            Call::Start(recreated.clone()),
            Call::Inspect(recreated),
        ]
    );

    // A change from Docker's side is asked for by the id its event names, before the loop
    // acts.
    let p0 = container_id(&handle.snapshot(), "p0");
    env.fake.remove_by_hand("postgrest-p0");
    let calls = calls_until(&env.fake, |c| matches!(c, Call::Create(_))).await;
    assert_eq!(calls.first(), Some(&Call::Inspect(p0)), "{calls:?}");
}

/// Each project's snapshot shows its own container as soon as its own action ends: it never
/// waits for the other projects' actions, held ones or queued ones (an API spawn answers on
/// its project alone).
#[tokio::test]
async fn a_finished_create_is_published_while_others_are_held_and_queued() {
    let env = Env::new(); // concurrency 2
    for i in 0..5 {
        env.write(&format!("p{i}"), |_| {});
    }
    // p0 takes one slot and stays; p1 goes through; then p2 takes that slot and stays, and
    // p3 and p4 wait in the queue.
    let gate = env.fake.hold_only(&["postgrest-p0", "postgrest-p2"]);
    let (handle, _stop, _task) = env.start();
    let p1 = converged(&env, &handle, "p1").await;
    in_flight(&env.fake, 2).await;
    let created: Vec<Call> = env
        .fake
        .take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .collect();
    assert!(
        !created.contains(&Call::Create("postgrest-p3".into())),
        "p3 was queued behind the held ones: {created:?}"
    );
    for held in ["p0", "p2", "p3"] {
        assert!(
            p1.projects[&pid(held)].container.is_none(),
            "{held} has no container yet"
        );
    }
    gate.add_permits(1_000);
    for i in 0..5 {
        converged(&env, &handle, &format!("p{i}")).await;
    }
}

/// Answers `GET /ready` like PostgREST's admin server: 200 while `ready` is set, else 503.
async fn ready_server(ready: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let status = if ready.load(std::sync::atomic::Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn readiness_comes_from_postgrest_with_its_own_reason() {
    let mut env = Env::new();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    env.cfg.admin_port = ready_server(ready.clone()).await;
    env.write("p1", |_| {});
    env.fake.set_logs(
        "postgrest-p1",
        "Attempting to connect to the database...\n\
         {\"code\":\"PGRST000\",\"details\":\"FATAL:  SASL authentication failed\",\"hint\":null,\"message\":\"Database connection error. Retrying the connection.\"}\n",
    );
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    let id = pid("p1");
    let readiness = |s: &Snapshot| {
        s.projects[&id]
            .container
            .as_ref()
            .map(|c| c.ready.clone())
            .unwrap_or_default()
    };
    // First "starting", then, once it has not served for a while, PostgREST's own words.
    let not_ready = handle
        .wait_for(
            WAIT,
            |s| matches!(readiness(s), Readiness::NotReady { reason } if reason.contains("SASL")),
        )
        .await
        .expect("the probe finds PostgREST not ready, and why");
    let Readiness::NotReady { reason } = readiness(&not_ready) else {
        panic!("matched above")
    };
    assert!(reason.contains("SASL authentication failed"), "{reason}");
    // Not ready is no reason to touch the container: converged stays true.
    assert!(not_ready.projects[&id].converged());

    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    handle
        .wait_for(WAIT, |s| readiness(s) == Readiness::Ready)
        .await
        .expect("the probe sees PostgREST serve");
    let creates = env
        .fake
        .take_calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert_eq!(creates, 1);
}

/// Waits until the project's events hold `count` of `kind`; returns the latest of them.
async fn event(handle: &Handle, id: &str, kind: EventKind, count: usize) -> Event {
    handle.wake();
    let id = pid(id);
    let of_kind = |s: &Snapshot| -> Vec<Event> {
        s.projects
            .get(&id)
            .map(|p| {
                p.events
                    .iter()
                    .filter(|e| e.kind == kind)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let snapshot = handle
        .wait_for(WAIT, |s| of_kind(s).len() >= count)
        .await
        .unwrap_or_else(|s| panic!("no {kind} event: {:?}", s.projects.get(&id)));
    of_kind(&snapshot).pop().unwrap()
}

#[tokio::test]
async fn every_kind_of_event_is_recorded_once_with_its_reason() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    let created = event(&handle, "p1", EventKind::Created, 1).await;
    assert_eq!(created.reason, "container created and started");

    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    let reloaded = event(&handle, "p1", EventKind::Reloaded, 1).await;
    assert_eq!(reloaded.reason, "jwt_secret changed");

    let latest = |f: &mut SpecFile| {
        f.jwt_secret = Secret::new(SECRET_B);
        f.authenticator_password = Secret::new("new");
    };
    env.write("p1", latest);
    let recreated = event(&handle, "p1", EventKind::Recreated, 1).await;
    assert_eq!(
        recreated.reason,
        "authenticator_password changed (db-uri is not reloadable)"
    );
    converged(&env, &handle, "p1").await;

    env.fake.remove_by_hand("postgrest-p1");
    let healed = event(&handle, "p1", EventKind::Healed, 1).await;
    assert_eq!(healed.reason, "the container was missing; created again");
    converged(&env, &handle, "p1").await;
    env.fake.set_state("postgrest-p1", State::Exited);
    let healed = event(&handle, "p1", EventKind::Healed, 2).await;
    assert_eq!(healed.reason, "the container is exited; started again");
    converged(&env, &handle, "p1").await;

    env.fake.fail_signals(true);
    env.write("p1", |f| {
        latest(f);
        f.reload_token = Some(7);
    });
    let failed = event(&handle, "p1", EventKind::Failed, 1).await;
    assert!(failed.reason.contains("cannot kill"), "{}", failed.reason);
    // Retries of the same failure add no event.
    passes(&handle, 3).await;
    env.fake.fail_signals(false);
    let reloaded = event(&handle, "p1", EventKind::Reloaded, 2).await;
    assert_eq!(reloaded.reason, "reload_token bumped");

    env.write_raw("p1", "jwt_secret = [");
    let invalid = event(&handle, "p1", EventKind::InvalidFile, 1).await;
    assert!(
        invalid
            .reason
            .ends_with("the last good spec stays in force"),
        "{}",
        invalid.reason
    );

    env.write("p1", |f| {
        latest(f);
        f.enabled = Some(false);
    });
    let removed = event(&handle, "p1", EventKind::Removed, 1).await;
    assert_eq!(removed.reason, "disabled");

    env.fake.insert(ContainerInfo {
        id: "foreign1".into(),
        name: "postgrest-p2".into(),
        labels: BTreeMap::new(),
        state: State::Running,
        health: Health::None,
        ip: None,
        exit_code: None,
        tasks: None,
    });
    env.write("p2", |_| {});
    let conflict = event(&handle, "p2", EventKind::Conflict, 1).await;
    assert!(conflict.reason.contains("foreign1"), "{}", conflict.reason);

    // Each kind once (healed twice, reloaded twice, as done above), in order, no secret.
    let snapshot = handle.snapshot();
    let kinds: Vec<EventKind> = snapshot.projects[&pid("p1")]
        .events
        .iter()
        .map(|e| e.kind)
        .collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            Created,
            Reloaded,
            Recreated,
            Healed,
            Healed,
            Failed,
            Reloaded,
            InvalidFile,
            Removed
        ]
    );
    let all = format!("{:?}", snapshot.projects);
    for secret in [SECRET_A, SECRET_B, "\"new\""] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
}

#[tokio::test]
async fn the_event_ring_keeps_the_last_twenty() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    for token in 1..=25 {
        env.write("p1", |f| f.reload_token = Some(token));
        event(&handle, "p1", EventKind::Reloaded, token.min(19) as usize).await;
        converged(&env, &handle, "p1").await;
    }
    let snapshot = handle.snapshot();
    let events = &snapshot.projects[&pid("p1")].events;
    assert_eq!(events.len(), EVENTS_KEPT);
    assert!(events.iter().all(|e| e.kind == EventKind::Reloaded));

    // Gone for good: the record, and its events, are dropped.
    env.cfg.state.remove(&pid("p1")).unwrap();
    gone(&handle, "p1").await;
    passes(&handle, 1).await;
    assert!(!handle.snapshot().projects.contains_key(&pid("p1")));
}

#[tokio::test]
async fn a_schema_reload_is_one_sigusr1_to_the_same_container_and_survives_a_restart() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, stop, task) = env.start();
    let before = converged(&env, &handle, "p1").await;
    let container = container_id(&before, "p1");
    let config = std::fs::read_to_string(env.cfg.configs.config_file(&pid("p1"))).unwrap();
    env.fake.take_calls();

    env.write("p1", |f| f.schema_reload_token = Some(1));
    handle.wake();
    let after = handle
        .wait_for(WAIT, |s| {
            s.projects
                .get(&pid("p1"))
                .is_some_and(|p| p.schema_token_seen == Some(1))
        })
        .await
        .expect("the schema reload is delivered");
    assert_eq!(container_id(&after, "p1"), container);
    assert_eq!(
        changes(&env.fake),
        [Call::Signal(container.clone(), "SIGUSR1".into())]
    );
    let event = event(&handle, "p1", EventKind::Reloaded, 1).await;
    assert_eq!(
        event.reason,
        "schema cache (SIGUSR1): schema_reload_token bumped"
    );
    // The config is untouched: no config reload, no rewrite.
    let unchanged = std::fs::read_to_string(env.cfg.configs.config_file(&pid("p1"))).unwrap();
    assert_eq!(unchanged, config);
    passes(&handle, 2).await;
    assert_eq!(changes(&env.fake), []);

    // A new manager remembers what the container had: no second signal.
    let _ = stop.send(());
    task.await.unwrap();
    let (handle, _stop, _task) = env.start();
    let snapshot = handle
        .wait_for(WAIT, |s| s.reconciled_once)
        .await
        .expect("reconciled");
    assert_eq!(snapshot.projects[&pid("p1")].schema_token_seen, Some(1));
    passes(&handle, 2).await;
    assert_eq!(changes(&env.fake), []);
}

/// A pass woken by one file plans for that project alone, and so does the pass its action's
/// end brings: a config directory left without a project (made by hand, which no event
/// reports) is looked at by neither. A plain wake's full pass (as the rescan's) removes it.
/// Fails when an action's
/// end plans every project again (what it did before: O(projects) per action, O(n²) over a
/// bulk start; BENCHMARKS.md, "Scale").
#[tokio::test]
async fn a_file_change_alone_is_planned_for_its_project_alone() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    passes(&handle, 1).await;
    let stray = env.cfg.configs.project_dir(&pid("p9"));
    std::fs::create_dir(&stray).unwrap();

    let gate = env.fake.hold_only(&["postgrest-p1"]);
    env.write("p1", |f| f.jwt_secret = Secret::new(SECRET_B));
    let before = handle.snapshot().passes;
    handle.project_written(&pid("p1"));
    in_flight(&env.fake, 1).await;
    let scoped = handle
        .wait_for(WAIT, |s| s.passes > before)
        .await
        .expect("the pass that dispatched the reload is published");
    assert!(
        stray.exists(),
        "a scoped pass removed another project's directory"
    );
    let lines: Vec<&ProjectId> = scoped.plan.iter().map(|l| &l.project).collect();
    assert_eq!(lines, [&pid("p1")], "{:?}", scoped.plan);

    gate.add_permits(1_000);
    let ended = handle
        .wait_for(WAIT, |s| {
            s.projects[&pid("p1")]
                .events
                .iter()
                .any(|e| e.kind == EventKind::Reloaded)
        })
        .await
        .expect("the reload's end is published")
        .passes;
    handle
        .wait_for(WAIT, |s| s.passes > ended)
        .await
        .expect("a pass after the reload's end");
    assert!(
        stray.exists(),
        "the pass after the reload's end looked at every project"
    );
    handle.wake();
    let deadline = tokio::time::Instant::now() + WAIT;
    while stray.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no full pass after a plain wake"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a rescan (every tenth resync: its full list) has come and its pass is over:
/// nine ticks come before the next one.
async fn rescanned(env: &Env, handle: &Handle) {
    env.fake.take_calls();
    tokio::time::timeout(WAIT, async {
        while !env.fake.take_calls().contains(&Call::List) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a rescan within a few resyncs");
    let listing = handle.snapshot().passes;
    handle
        .wait_for(WAIT, |s| s.passes > listing)
        .await
        .expect("the rescan's pass ends");
}

/// A resync tick between rescans plans every project again only to retry a conflict. With
/// none, its pass looks at nothing: a config directory made by hand stays until the rescan,
/// the full pass of every tenth tick (fails when every tick plans everything). A conflict is
/// still tried again: a name freed behind the manager's back is taken.
#[tokio::test]
async fn a_tick_between_rescans_plans_again_only_for_a_conflict() {
    let mut env = Env::new();
    env.cfg.resync = Duration::from_millis(100);
    env.write("p1", |_| {});
    env.fake.insert(ContainerInfo {
        id: "foreign1".into(),
        name: "postgrest-p2".into(),
        labels: BTreeMap::new(),
        state: State::Running,
        health: Health::None,
        ip: None,
        exit_code: None,
        tasks: None,
    });
    env.write("p2", |_| {});
    let (handle, _stop, _task) = env.start();
    converged(&env, &handle, "p1").await;
    handle
        .wait_for(WAIT, |s| s.projects[&pid("p2")].conflict.is_some())
        .await
        .expect("the conflict is reported");

    // A conflict is still tried again (the tick forgets it, and its backoff decides when):
    // the name freed, unannounced (Docker's events name only our containers), p2 gets it.
    env.fake.remove_by_hand("postgrest-p2");
    handle
        .wait_for(WAIT, |s| s.projects[&pid("p2")].converged())
        .await
        .expect("p2 gets its container once the name is free");

    rescanned(&env, &handle).await;
    let stray = env.cfg.configs.project_dir(&pid("p9"));
    std::fs::create_dir(&stray).unwrap();
    let idle = handle.snapshot();
    let ticked = handle
        .wait_for(WAIT, |s| s.passes >= idle.passes + 3)
        .await
        .expect("three ticks pass");
    assert!(
        stray.exists(),
        "a tick between rescans planned every project"
    );
    // Nor did it rewrite the plan's words (a copy of every project's line each tick).
    assert!(
        Arc::ptr_eq(&idle.plan, &ticked.plan),
        "a tick's pass rebuilt the preview"
    );
    assert!(
        !env.fake.take_calls().contains(&Call::List),
        "a rescan came within three ticks of the last"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while stray.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rescan did not plan every project"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Not a check but a measurement, run by hand: what the loop itself adds to one reload, from
/// the file's write to the reload confirmed, against the fleet's size, with Docker's time
/// taken out (the in-memory runtime answers at once). Numbers in BENCHMARKS.md.
/// `cargo test --release --lib -- --ignored --nocapture a_reloads_cost_against_the_fleet`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn a_reloads_cost_against_the_fleet() {
    for (files, running) in [(10, 10), (1_000, 200), (10_000, 1_000)] {
        let mut env = Env::new();
        env.cfg.concurrency = 16;
        for i in 0..files {
            env.write(&format!("p{i}"), |f| f.enabled = Some(i < running));
        }
        let (handle, _stop, _task) = env.start();
        handle.wake();
        handle
            .wait_for(Duration::from_secs(600), |s| {
                s.projects.values().filter(|p| p.converged()).count() == files
            })
            .await
            .expect("the fleet converges");
        passes(&handle, 2).await;
        let (mut signalled, mut confirmed) = (Vec::new(), Vec::new());
        for round in 0..41 {
            let id = format!("p{}", round % running);
            env.write(&id, |f| f.jwt_secret = Secret::new(format!("{round:0>40}")));
            let spec = env.cfg.state.read(&pid(&id)).unwrap().unwrap();
            let digest = Some(render::render(&spec, &env.cfg.template).config.digest);
            env.fake.take_calls();
            let started = std::time::Instant::now();
            // As the API does: a pass at once, for this file alone.
            handle.project_written(&pid(&id));
            while !env
                .fake
                .take_calls()
                .iter()
                .any(|c| matches!(c, Call::Signal(..)))
            {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            signalled.push(started.elapsed());
            let done = handle
                .wait_for(WAIT, |s| {
                    let p = &s.projects[&pid(&id)];
                    p.converged() && p.loaded_digest == digest
                })
                .await
                .expect("the reload is confirmed");
            confirmed.push(started.elapsed());
            // The passes the action's end brings (a full one, and one for the container's
            // event) are over before the next round: a loop still busy would be measured.
            let mut seen = done.passes;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match handle.snapshot().passes {
                    now if now == seen => break,
                    now => seen = now,
                }
            }
        }
        for (what, took) in [("signalled", &mut signalled), ("confirmed", &mut confirmed)] {
            took.remove(0);
            took.sort_unstable();
            eprintln!(
                "{files} files, {running} running: {what} {:?} median ({:?}–{:?}, n={})",
                took[took.len() / 2],
                took[0],
                took[took.len() - 1],
                took.len()
            );
        }
    }
}

/// Not a check but a measurement, run by hand: the loop's own CPU for a bulk start, a
/// thousand files written one after another into a manager that already holds
/// `files - 1,000` disabled ones, until every one of them runs with its config loaded. Each
/// write is announced as the watcher announces an atomic write (`file_written`, a pass at
/// once) in odd rounds, and as it did before 4996d75 (`file_changed`, after the debounce) in
/// even ones. The in-memory runtime answers at once, so what is measured is the loop (and
/// the runtime's bookkeeping), not Docker. Numbers in BENCHMARKS.md.
/// `cargo test --release --lib -- --ignored --nocapture a_bulk_starts_cost_against_the_fleet`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn a_bulk_starts_cost_against_the_fleet() {
    /// User and system time of this process so far, from `/proc/self/stat` (in clock ticks).
    fn cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // utime and stime are the 14th and 15th fields; the 3rd is the first after the name.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
    const BULK: usize = 1_000;
    for files in [BULK, 10_000] {
        for round in 0..4 {
            let at_once = round % 2 == 1;
            let mut env = Env::new();
            env.cfg.concurrency = 16;
            for i in BULK..files {
                env.write(&format!("d{i}"), |f| f.enabled = Some(false));
            }
            let (handle, _stop, _task) = env.start();
            handle.wake();
            handle
                .wait_for(Duration::from_secs(600), |s| {
                    s.ready() && s.projects.len() == files - BULK
                })
                .await
                .expect("the disabled ones are taken in");
            passes(&handle, 2).await;
            let (cpu, started) = (cpu_ticks(), std::time::Instant::now());
            for i in 0..BULK {
                env.write(&format!("p{i}"), |_| {});
                if at_once {
                    handle.file_written(&format!("p{i}.toml"));
                } else {
                    handle.file_changed(&format!("p{i}.toml"));
                }
            }
            // Polled, not waited on per snapshot: a check of every status per publication
            // would be this test's own O(n²).
            loop {
                let snapshot = handle.snapshot();
                let running = (0..BULK)
                    .filter(|i| {
                        snapshot
                            .projects
                            .get(&pid(&format!("p{i}")))
                            .is_some_and(ProjectStatus::converged)
                    })
                    .count();
                if running == BULK {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = started.elapsed();
            let cpu = cpu_ticks() - cpu;
            let hz = 100.0;
            eprintln!(
                "bulk of {BULK} into {files} files, round {round} ({}): {:.2} s, CPU {:.2} s ({:.1} ms a project)",
                if at_once { "written, at once" } else { "changing, debounced" },
                took.as_secs_f64(),
                cpu as f64 / hz,
                cpu as f64 / hz * 1000.0 / BULK as f64
            );
        }
    }
}
