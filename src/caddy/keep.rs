//! Keeps Caddy's routes in step with the loop: a task that reads the loop's published
//! snapshot, derives one route per enabled project (proxied once PostgREST serves, a JSON 503
//! before), and hands the list to [`RouteSync`], which sends it only when Caddy differs. It is
//! level-triggered like the loop: every snapshot change recomputes the whole list, the
//! resync tick asks Caddy what it holds (a restarted Caddy has forgotten the routes), and a
//! failure is retried with backoff while the containers keep converging.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::{CaddyAdmin, RouteSync, RouteTarget, Routes, SyncStatus};
use crate::plan::State;
use crate::reconcile::{ContainerView, Handle, Readiness, Snapshot};
use crate::spec::ProjectId;

/// What the API learns from the route task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteState {
    /// Why Caddy's routes are not in place, while they are not.
    pub pending: Option<String>,
    /// The projects whose proxying route Caddy holds now.
    pub serving: BTreeSet<ProjectId>,
    /// For each of those, the host the route dials: what a blue/green replacement waits
    /// for before it stops the old container.
    pub upstreams: BTreeMap<ProjectId, String>,
}

/// What the public sees for a project that is not ready. Stable on purpose: every change of
/// a route is a reload of Caddy's whole config, and the details (log lines, host names) are
/// for the operator's status, not for the internet.
const NOT_READY: &str = "the project is starting or cannot reach its database; retry shortly";

/// The routes the snapshot asks for: every enabled project, proxied while its container runs
/// and PostgREST serves, a 503 otherwise. A running container not probed yet keeps the route
/// it had in `previous` (so a fresh container does not flap between the two), or is proxied
/// when there was none (a manager that restarts must not turn serving projects into 503s).
/// Disabled and unknown projects get none: Caddy's static catch-all answers 404.
pub fn desired_routes(snapshot: &Snapshot, previous: &Routes) -> Routes {
    let not_ready = || RouteTarget::NotReady {
        reason: NOT_READY.to_owned(),
    };
    Routes::new(snapshot.projects.iter().filter_map(|(id, status)| {
        if !status.desired.as_ref()?.planned.enabled {
            return None;
        }
        let proxy = || RouteTarget::proxy(id, status.upstream.as_deref());
        let target = match status.container.as_ref() {
            Some(c) if routable(c) => match c.ready {
                Readiness::Ready => proxy(),
                Readiness::NotReady { .. } => not_ready(),
                Readiness::Unknown => match previous.iter().find(|(p, _)| *p == id) {
                    Some((_, t @ RouteTarget::NotReady { .. })) => t.clone(),
                    _ => proxy(),
                },
            },
            _ => not_ready(),
        };
        Some((id.clone(), target))
    }))
}

/// Whether a project's PostgREST may be proxied to as far as its state goes: a running
/// container, or a Swarm service rolling an update out or back (`Restarting`), whose tasks
/// serve on meanwhile (`start-first`: Swarm stops the old task only once the new one serves)
/// behind the same name. A container Docker is restarting after a crash does not serve.
fn routable(c: &ContainerView) -> bool {
    c.state == State::Running || (c.state == State::Restarting && c.tasks.is_some())
}

/// How long after its start the route task waits, at most, for every running container's
/// first `/ready` probe before its first sync (`Snapshot::unprobed`).
const FIRST_PROBES: Duration = Duration::from_secs(2);

/// Runs until `shutdown` completes, publishing what is in place in `state`.
pub async fn keep_in_step<C: CaddyAdmin>(
    mut handle: Handle,
    mut sync: RouteSync<C>,
    resync: Duration,
    state: watch::Sender<RouteState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut desired = Routes::default();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut check_caddy = false;
    // A restarted manager does not know what Caddy holds: routing by a guess before the
    // probes have looked would flip routes Caddy already holds right (a replacement's new
    // container, switched to before a crash, back to the old one and forth again), and every
    // flip is a reload of Caddy's whole config.
    let mut hold_until = Some(Instant::now() + FIRST_PROBES);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => check_caddy = true,
            changed = handle.changed() => if !changed { return },
            () = sleep_until(sync.retry_at()) => {}
            () = sleep_until(hold_until) => {}
        }
        let snapshot = handle.snapshot();
        // Before the loop's first pass the snapshot knows no project yet: sending its empty
        // list would take every route down. After it every project is known (those with
        // actions in flight too: a replacement finishing after a restart waits for its
        // switch here, so this must not wait for the whole first reconcile).
        if hold_until.is_some_and(|until| Instant::now() >= until) {
            hold_until = None;
        }
        if !snapshot.reconciled_once && snapshot.passes == 0 {
            continue;
        }
        if hold_until.is_some() && snapshot.unprobed {
            continue;
        }
        hold_until = None;
        desired = desired_routes(&snapshot, &desired);
        let status = sync.sync(&desired, std::mem::take(&mut check_caddy)).await;
        state.send_if_modified(|current| {
            let before = current.clone();
            match status {
                SyncStatus::InSync | SyncStatus::Applied => {
                    current.pending = None;
                    current.upstreams = desired
                        .iter()
                        .filter_map(|(id, t)| Some((id.clone(), t.host(id)?)))
                        .collect();
                    current.serving = current.upstreams.keys().cloned().collect();
                }
                // What Caddy holds is unknown: nothing is claimed to be served.
                SyncStatus::Pending { reason } => {
                    current.pending = Some(reason);
                    current.serving.clear();
                    current.upstreams.clear();
                }
            }
            *current != before
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::caddy::fake::FakeCaddy;
    use crate::reconcile::{Controller, LoopConfig};
    use crate::runtime::fake::FakeRuntime;
    use crate::spec::{ProjectId, Secret, SpecFile};

    const WAIT: Duration = Duration::from_secs(10);

    /// Waits until the fake Caddy's slot satisfies `done`.
    async fn caddy_holds(caddy: &FakeCaddy, done: impl Fn(&serde_json::Value) -> bool) {
        tokio::time::timeout(WAIT, async {
            while !done(&caddy.routes()) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("Caddy never held that: {}", caddy.routes()));
    }

    fn ids(routes: &serde_json::Value) -> Vec<String> {
        routes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["@id"].as_str().map(str::to_owned))
            .collect()
    }

    /// A Swarm service rolling an update out (`Restarting`, `start-first`: its old task
    /// serves until the new one does) keeps its route, which names the service: a 503
    /// meanwhile would fail every request of a rolling update, and cost two reloads of
    /// Caddy. A container Docker is restarting (a crashed one) is not routed.
    #[test]
    fn a_swarm_service_keeps_its_route_while_it_rolls_an_update_out() {
        use crate::plan::Desired;
        use crate::reconcile::{DesiredView, ProjectStatus};
        use crate::runtime::{Health, Tasks};
        use crate::spec::Spec;
        let id = ProjectId::parse("p").unwrap();
        let spec = Spec::parse(
            id.clone(),
            &format!(
                "jwt_secret = \"{}\"\nauthenticator_password = \"pw\"\n",
                "s".repeat(32)
            ),
        )
        .unwrap();
        let routes = |state: State, ready: Readiness, tasks: Option<Tasks>| {
            let mut snapshot = Snapshot::default();
            Arc::make_mut(&mut snapshot.projects).insert(
                id.clone(),
                ProjectStatus {
                    desired: Some(Arc::new(DesiredView {
                        spec: Arc::new(spec.clone()),
                        planned: Desired {
                            enabled: true,
                            spec_hash: "h".into(),
                            config_digest: "d".into(),
                            schema_token: 0,
                        },
                    })),
                    container: Some(Box::new(ContainerView {
                        id: "s1".into(),
                        name: "postgrest-p".into(),
                        state,
                        health: Health::Healthy,
                        ip: None,
                        spec_hash: None,
                        ready,
                        exit_code: None,
                        tasks,
                    })),
                    ..Default::default()
                },
            );
            desired_routes(&snapshot, &Routes::default())
        };
        let serving = Some(Tasks {
            desired: 1,
            running: 1,
            ..Default::default()
        });
        let proxied = Routes::new([(id.clone(), RouteTarget::Ready)]);
        assert_eq!(
            routes(State::Running, Readiness::Ready, serving.clone()),
            proxied
        );
        assert_eq!(
            routes(State::Restarting, Readiness::Ready, serving),
            proxied,
            "a rolling update took the route down"
        );
        let not_ready = |routes: Routes| {
            matches!(
                routes.iter().next().map(|(_, t)| t),
                Some(RouteTarget::NotReady { .. })
            )
        };
        let none_serving = Some(Tasks {
            desired: 1,
            ..Default::default()
        });
        assert!(not_ready(routes(
            State::Restarting,
            Readiness::NotReady {
                reason: "0/1 tasks running".into()
            },
            none_serving
        )));
        assert!(not_ready(routes(State::Restarting, Readiness::Ready, None)));
    }

    #[tokio::test]
    async fn routes_follow_the_projects_and_come_back_after_a_caddy_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LoopConfig::for_tests("routes", tmp.path());
        let write = |id: &str, enabled: bool| {
            let mut file = SpecFile::new(Secret::new("s".repeat(32)), Secret::new("pw"));
            if !enabled {
                file.disable();
            }
            cfg.state
                .write(&ProjectId::parse(id).unwrap(), &file)
                .unwrap();
        };
        write("on", true);
        write("off", false);
        let (controller, handle) = Controller::new(Arc::new(FakeRuntime::new()), cfg.clone());
        tokio::spawn(controller.run(std::future::pending()));
        let caddy = FakeCaddy::new();
        let (state_tx, state) = watch::channel(RouteState::default());
        tokio::spawn(keep_in_step(
            handle.clone(),
            RouteSync::new(caddy.clone()),
            Duration::from_millis(50),
            state_tx,
            std::future::pending(),
        ));

        // Only the enabled project is routed. Nothing listens on its admin port, so once the
        // probe has looked it is a 503 for the public, with the stable text.
        caddy_holds(&caddy, |r| ids(r) == ["launchdb-project-on"]).await;
        caddy_holds(&caddy, |r| r[0]["handle"][0]["status_code"] == 503).await;
        assert!(caddy.routes().to_string().contains("retry shortly"));
        assert_eq!(state.borrow().pending, None);
        assert!(
            state.borrow().serving.is_empty(),
            "a 503 route is not serving"
        );

        // A restarted Caddy has forgotten the routes: the resync tick puts them back.
        caddy.restart();
        caddy_holds(&caddy, |r| ids(r) == ["launchdb-project-on"]).await;

        // Caddy down: the routes are pending, with why; back up, they are in place again.
        caddy.set_unavailable(true);
        caddy.restart();
        let mut rx = state.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.pending.is_some()))
            .await
            .expect("pending within the wait")
            .unwrap();
        caddy.set_unavailable(false);
        caddy_holds(&caddy, |r| ids(r) == ["launchdb-project-on"]).await;
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.pending.is_none()))
            .await
            .expect("in place within the wait")
            .unwrap();

        // A project that goes away loses its route.
        std::fs::remove_file(cfg.state.file(&ProjectId::parse("on").unwrap())).unwrap();
        handle.wake();
        caddy_holds(&caddy, |r| ids(r).is_empty()).await;
    }
}
