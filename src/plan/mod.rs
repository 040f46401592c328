//! The pure planner: `plan(desired, observed) -> Plan { actions, conflicts }`.
//!
//! Synchronous, no I/O, cannot fail, and empty when everything matches. It knows nothing about
//! Docker or files: the loop turns both into the plain values below. At most one action per
//! project, so the loop never has two things to do to one project at once; whatever remains
//! after that action is planned on the next pass.

mod explain;
mod swarm;

use std::collections::{BTreeMap, BTreeSet};

pub use explain::{changed_keys, config_keys, preview, KeyChange, Preview, Verb};

use crate::spec::ProjectId;

/// What a project should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A valid spec (or the last good one, while its file is invalid).
    Spec(Desired),
    /// The file is invalid and there is no last good spec (e.g. the manager started while the
    /// file was broken): touch nothing, neither container nor config, until it is fixed.
    Frozen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub enabled: bool,
    pub spec_hash: String,
    pub config_digest: String,
    /// The spec's `schema_reload_token`: a container that has not had this schema reload
    /// gets SIGUSR1.
    pub schema_token: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Removing => "removing",
            State::Exited => "exited",
            State::Dead => "dead",
        })
    }
}

/// One of our containers, as the runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub project: ProjectId,
    pub name: String,
    pub state: State,
    pub spec_hash: Option<String>,
    /// Whether PostgREST in it serves (`/ready`), as last probed; `None` before the first
    /// probe. Only a replacement needs it: it decides which of two containers to keep.
    pub serving: Option<bool>,
}

/// The name a replacement container has while it starts beside the serving one; it takes
/// `postgrest-<id>` once the old one is gone. Project ids have no `-`, so this name can never
/// be another project's.
pub fn next_container_name(project: &ProjectId) -> String {
    format!("{}-next", project.container_name())
}

/// What is there: our containers, foreign containers in our names' way, the rendered config
/// directories, and which config each container is known to have loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub containers: Vec<Container>,
    /// Containers named `postgrest-<id>` without our labels, by project.
    pub foreign: BTreeMap<ProjectId, String>,
    pub config_dirs: BTreeSet<ProjectId>,
    /// Per project: (container id, config digest) last started or signalled with.
    pub loaded: BTreeMap<ProjectId, (String, String)>,
    /// Per project: (container id, schema_reload_token) it last loaded its schema cache for.
    pub schema: BTreeMap<ProjectId, (String, u64)>,
    /// The manager's `PGM_REPLACE` setting: a stale serving container is replaced blue/green
    /// (`true`) or removed and created anew (`false`, the old way).
    pub blue_green: bool,
    /// What runs PostgREST: one container per project (`docker`), or one Swarm service per
    /// project (`swarm`), where every change is a rolling [`Action::Update`].
    pub orchestrator: Orchestrator,
}

/// What the runtime can do, as the planner needs to know it (`PGM_ORCHESTRATOR`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Orchestrator {
    /// Containers on one Docker host: a config change is a reload signal, a new shape a
    /// replacement or a recreation.
    #[default]
    Docker,
    /// Swarm services: a config lives in an immutable secret, so every change (config, shape,
    /// schema reload) is a service update that Swarm rolls out start-first.
    Swarm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Render the config, create and start the container.
    Create { project: ProjectId },
    /// Remove the container and create it anew: its spec-hash is stale.
    Recreate {
        project: ProjectId,
        container: String,
    },
    /// Blue/green: start a new container beside the serving, stale one (or take `next`, one
    /// already there that matches), wait until it serves, switch the route to it, stop the old
    /// one gracefully, and give the new one the project's name.
    Replace {
        project: ProjectId,
        container: String,
        next: Option<String>,
    },
    /// Give the replacement the project's name: the old one is gone (a replacement that was
    /// interrupted between removing the old one and the rename).
    Promote {
        project: ProjectId,
        container: String,
    },
    /// Render the config and start the existing, stopped container.
    Start {
        project: ProjectId,
        container: String,
    },
    /// Rewrite the config and send the reload signal; the container keeps its id.
    Reload {
        project: ProjectId,
        container: String,
    },
    /// Send the schema-reload signal (SIGUSR1); the config and the container stay.
    ReloadSchema {
        project: ProjectId,
        container: String,
    },
    /// Remove the container; its config too unless the project is only disabled.
    Remove {
        project: ProjectId,
        container: String,
        keep_config: bool,
    },
    /// Remove a rendered config that no project wants any more.
    RemoveConfig { project: ProjectId },
    /// Swarm only: update the service `container` to the desired spec and config (a new
    /// secret, start-first, rolled back if the new task never turns healthy).
    Update {
        project: ProjectId,
        container: String,
    },
}

/// A container we did not create holds a wanted project's name: reported, never deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub project: ProjectId,
    pub container: String,
}

/// What a pass should do, and what it found in its way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// At most one per project.
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
}

/// Whatever the caller keeps per project, as long as it can say what the project should be.
/// The loop keeps a whole record per project; the planner borrows only this from it.
pub trait Wanted {
    fn want(&self) -> Option<&Want>;
}

impl<W: Wanted> Wanted for &W {
    fn want(&self) -> Option<&Want> {
        (**self).want()
    }
}

impl Wanted for Want {
    fn want(&self) -> Option<&Want> {
        Some(self)
    }
}

/// One project's plan.
enum Step {
    Act(Action),
    Conflict(String),
}

impl Action {
    pub fn project(&self) -> &ProjectId {
        match self {
            Action::Create { project }
            | Action::Recreate { project, .. }
            | Action::Replace { project, .. }
            | Action::Promote { project, .. }
            | Action::Start { project, .. }
            | Action::Reload { project, .. }
            | Action::ReloadSchema { project, .. }
            | Action::Remove { project, .. }
            | Action::RemoveConfig { project }
            | Action::Update { project, .. } => project,
        }
    }
}

pub fn plan<W: Wanted>(desired: &BTreeMap<ProjectId, W>, observed: &Observed) -> Plan {
    let mut by_project: BTreeMap<&ProjectId, Vec<&Container>> = BTreeMap::new();
    for container in &observed.containers {
        by_project
            .entry(&container.project)
            .or_default()
            .push(container);
    }

    let projects: BTreeSet<&ProjectId> = desired
        .keys()
        .chain(by_project.keys().copied())
        .chain(&observed.config_dirs)
        .collect();

    let mut plan = Plan::default();
    for project in projects {
        let containers = by_project
            .get(project)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let want = desired.get(project).and_then(Wanted::want);
        match plan_project(project, want, containers, observed) {
            Some(Step::Act(action)) => plan.actions.push(action),
            Some(Step::Conflict(container)) => plan.conflicts.push(Conflict {
                project: project.clone(),
                container,
            }),
            None => {}
        }
    }
    plan
}

/// What follows `postgrest-<project>` in a container's name (`""` for the project's
/// container, `"-next"` for its replacement), if the name starts so.
fn name_suffix<'a>(name: &'a str, project: &ProjectId) -> Option<&'a str> {
    name.strip_prefix("postgrest-")?
        .strip_prefix(project.as_str())
}

/// One project's plan, before the Docker/Swarm split.
fn plan_project(
    project: &ProjectId,
    want: Option<&Want>,
    containers: &[&Container],
    observed: &Observed,
) -> Option<Step> {
    let act = |action| Some(Step::Act(action));
    let desired = match want {
        Some(Want::Frozen) => return None,
        Some(Want::Spec(desired)) => Some(desired),
        None => None,
    };
    let keep_config = desired.is_some();
    if observed.orchestrator == Orchestrator::Swarm {
        return swarm::plan_service(project, desired, containers, observed);
    }

    // A container of ours under another name (renamed by hand) is surplus: the name is how a
    // project's one container is found. Compared in place: the names are not formatted for
    // each of a thousand projects per pass, most of which have no container.
    let is_main = |c: &&&Container| name_suffix(&c.name, project) == Some("");
    let is_next = |c: &&&Container| name_suffix(&c.name, project) == Some("-next");
    if let Some(extra) = containers.iter().find(|c| !is_main(c) && !is_next(c)) {
        return act(Action::Remove {
            project: project.clone(),
            container: extra.id.clone(),
            keep_config: true,
        });
    }
    let main = containers.iter().find(is_main);
    let next = containers.iter().find(is_next);

    let Some(desired) = desired.filter(|d| d.enabled) else {
        // The replacement first: it is the one that does not serve the public yet.
        return match next.or(main) {
            Some(c) => act(Action::Remove {
                project: project.clone(),
                container: c.id.clone(),
                keep_config,
            }),
            None if !keep_config && observed.config_dirs.contains(project) => {
                act(Action::RemoveConfig {
                    project: project.clone(),
                })
            }
            None => None,
        };
    };

    if let Some(next) = next {
        return Some(Step::Act(two_containers(project, desired, main, next)));
    }

    let Some(container) = main else {
        return Some(match observed.foreign.get(project) {
            Some(foreign) => Step::Conflict(foreign.clone()),
            None => Step::Act(Action::Create {
                project: project.clone(),
            }),
        });
    };

    let id = container.id.clone();
    let project = project.clone();
    if !matches(container, desired) {
        // A serving container is replaced beside itself; one that does not serve (a crash
        // loop, a database it cannot reach) has no clients to keep, and is recreated. Before
        // the first probe nobody knows: wait for it, rather than take a serving one down.
        let serving = container.state == State::Running && observed.blue_green;
        return match container.serving {
            Some(true) if serving => act(Action::Replace {
                project,
                container: id,
                next: None,
            }),
            None if serving => None,
            _ => act(Action::Recreate {
                project,
                container: id,
            }),
        };
    }
    match container.state {
        State::Created | State::Exited => act(Action::Start {
            project,
            container: id,
        }),
        State::Dead => act(Action::Recreate {
            project,
            container: id,
        }),
        // Docker is already on it; the next pass sees the outcome.
        State::Removing | State::Restarting => None,
        // Someone paused it on purpose, and a paused process cannot take a signal.
        State::Paused => None,
        State::Running => {
            let in_force = observed
                .loaded
                .get(&project)
                .is_some_and(|(loaded_by, digest)| {
                    *loaded_by == container.id && *digest == desired.config_digest
                });
            if !in_force {
                return act(Action::Reload {
                    project,
                    container: id,
                });
            }
            // A container without a record predates schema reloads: it needs one only if one
            // was ever asked for.
            let schema_seen = match observed.schema.get(&project) {
                Some((seen_by, token)) => {
                    *seen_by == container.id && *token == desired.schema_token
                }
                None => desired.schema_token == 0,
            };
            (!schema_seen).then_some(Step::Act(Action::ReloadSchema {
                project,
                container: id,
            }))
        }
    }
}

fn matches(container: &Container, desired: &Desired) -> bool {
    container.spec_hash.as_deref() == Some(desired.spec_hash.as_str())
}

fn serves(container: &Container) -> bool {
    container.state == State::Running && container.serving == Some(true)
}

/// Both `postgrest-<id>` (`main`, if still there) and `postgrest-<id>-next` exist: a
/// replacement is under way or was interrupted (the manager died between two of its steps).
/// Keep the one that matches the desired state and serves, remove the other; never remove
/// the only one that serves while the other does not.
fn two_containers(
    project: &ProjectId,
    desired: &Desired,
    main: Option<&&Container>,
    next: &Container,
) -> Action {
    let project = project.clone();
    let remove_next = || Action::Remove {
        project: project.clone(),
        container: next.id.clone(),
        keep_config: true,
    };
    // A replacement that does not match (the spec changed again) or does not run is of no use.
    if !matches(next, desired) || next.state != State::Running {
        return remove_next();
    }
    match main {
        // The old one is gone: the rename is all that is left.
        None => Action::Promote {
            project,
            container: next.id.clone(),
        },
        // The old one is what is wanted and serves, and the replacement is not needed; or
        // neither serves yet, and the old one keeps the name.
        Some(main) if matches(main, desired) && (serves(main) || !serves(next)) => remove_next(),
        // The replacement is wanted: finish the replacement (it waits, bounded, until the new
        // one serves, and removes it if it never does).
        Some(main) => Action::Replace {
            project,
            container: main.id.clone(),
            next: Some(next.id.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> ProjectId {
        ProjectId::parse(id).unwrap()
    }

    fn want(enabled: bool, hash: &str, digest: &str) -> Want {
        Want::Spec(Desired {
            enabled,
            spec_hash: hash.into(),
            config_digest: digest.into(),
            schema_token: 0,
        })
    }

    fn container(project: &str, id: &str, state: State, hash: &str) -> Container {
        Container {
            id: id.into(),
            project: p(project),
            name: format!("postgrest-{project}"),
            state,
            spec_hash: Some(hash.into()),
            serving: None,
        }
    }

    /// The whole observed world for one project `a`, in a few words.
    struct World {
        containers: Vec<Container>,
        foreign: Option<&'static str>,
        config_dir: bool,
        loaded: Option<(&'static str, &'static str)>,
        schema: Option<(&'static str, u64)>,
        blue_green: bool,
        orchestrator: Orchestrator,
    }

    const EMPTY: World = World {
        containers: Vec::new(),
        foreign: None,
        config_dir: false,
        loaded: None,
        schema: None,
        blue_green: false,
        orchestrator: Orchestrator::Docker,
    };

    fn check(want: Option<Want>, world: World, expected: Option<Action>) {
        let desired: BTreeMap<_, _> = want.into_iter().map(|w| (p("a"), w)).collect();
        let observed = Observed {
            containers: world.containers,
            foreign: world
                .foreign
                .map(|c| (p("a"), c.to_owned()))
                .into_iter()
                .collect(),
            config_dirs: if world.config_dir {
                BTreeSet::from([p("a")])
            } else {
                BTreeSet::new()
            },
            loaded: world
                .loaded
                .map(|(c, d)| (p("a"), (c.to_owned(), d.to_owned())))
                .into_iter()
                .collect(),
            schema: world
                .schema
                .map(|(c, t)| (p("a"), (c.to_owned(), t)))
                .into_iter()
                .collect(),
            blue_green: world.blue_green,
            orchestrator: world.orchestrator,
        };
        let plan = plan(&desired, &observed);
        assert_eq!(plan.actions, expected.into_iter().collect::<Vec<_>>());
        assert_eq!(plan.conflicts, []);
    }

    fn running(hash: &str) -> Vec<Container> {
        vec![container("a", "c1", State::Running, hash)]
    }

    #[test]
    fn nothing_to_do() {
        check(None, EMPTY, None);
        let world = World {
            containers: running("h"),
            loaded: Some(("c1", "d")),
            ..EMPTY
        };
        check(Some(want(true, "h", "d")), world, None);
        check(
            Some(want(false, "h", "d")),
            World {
                config_dir: true,
                ..EMPTY
            },
            None,
        );
    }

    #[test]
    fn create() {
        check(
            Some(want(true, "h", "d")),
            EMPTY,
            Some(Action::Create { project: p("a") }),
        );
    }

    #[test]
    fn recreate_on_a_new_spec_hash_or_a_dead_container() {
        let world = World {
            containers: running("old"),
            loaded: Some(("c1", "d")),
            ..EMPTY
        };
        check(
            Some(want(true, "new", "d")),
            world,
            Some(Action::Recreate {
                project: p("a"),
                container: "c1".into(),
            }),
        );
        let dead = World {
            containers: vec![container("a", "c1", State::Dead, "h")],
            ..EMPTY
        };
        check(
            Some(want(true, "h", "d")),
            dead,
            Some(Action::Recreate {
                project: p("a"),
                container: "c1".into(),
            }),
        );
        let mut unlabelled = container("a", "c1", State::Running, "h");
        unlabelled.spec_hash = None;
        let world = World {
            containers: vec![unlabelled],
            ..EMPTY
        };
        check(
            Some(want(true, "h", "d")),
            world,
            Some(Action::Recreate {
                project: p("a"),
                container: "c1".into(),
            }),
        );
    }

    #[test]
    fn reload_when_the_config_in_force_differs_or_is_unknown() {
        let reload = Some(Action::Reload {
            project: p("a"),
            container: "c1".into(),
        });
        let changed = World {
            containers: running("h"),
            loaded: Some(("c1", "old")),
            ..EMPTY
        };
        check(Some(want(true, "h", "new")), changed, reload.clone());
        // Adopted after a crash between writing the file and signalling: no record.
        check(
            Some(want(true, "h", "d")),
            World {
                containers: running("h"),
                ..EMPTY
            },
            reload.clone(),
        );
        // The record is for a container that no longer exists.
        let stale = World {
            containers: running("h"),
            loaded: Some(("c0", "d")),
            ..EMPTY
        };
        check(Some(want(true, "h", "d")), stale, reload);
    }

    #[test]
    fn schema_reload_once_the_config_is_in_force() {
        let with_token = |token| match want(true, "h", "d") {
            Want::Spec(d) => Want::Spec(Desired {
                schema_token: token,
                ..d
            }),
            frozen => frozen,
        };
        let reload_schema = Some(Action::ReloadSchema {
            project: p("a"),
            container: "c1".into(),
        });
        let world = |schema| World {
            containers: running("h"),
            loaded: Some(("c1", "d")),
            schema,
            ..EMPTY
        };
        check(
            Some(with_token(2)),
            world(Some(("c1", 1))),
            reload_schema.clone(),
        );
        check(Some(with_token(2)), world(Some(("c1", 2))), None);
        // The record is for another container: this one has not had the reload.
        check(
            Some(with_token(2)),
            world(Some(("c0", 2))),
            reload_schema.clone(),
        );
        // No record (a container from before schema reloads): only if one was asked for.
        check(Some(with_token(0)), world(None), None);
        check(Some(with_token(1)), world(None), reload_schema);
        // A config reload comes first; the schema reload follows on the next pass.
        let stale_config = World {
            loaded: Some(("c1", "old")),
            ..world(Some(("c1", 1)))
        };
        check(
            Some(with_token(2)),
            stale_config,
            Some(Action::Reload {
                project: p("a"),
                container: "c1".into(),
            }),
        );
    }

    #[test]
    fn start_stopped_containers() {
        for state in [State::Exited, State::Created] {
            let world = World {
                containers: vec![container("a", "c1", state, "h")],
                ..EMPTY
            };
            check(
                Some(want(true, "h", "d")),
                world,
                Some(Action::Start {
                    project: p("a"),
                    container: "c1".into(),
                }),
            );
        }
    }

    #[test]
    fn leave_transitions_to_docker() {
        for state in [State::Restarting, State::Removing, State::Paused] {
            let world = World {
                containers: vec![container("a", "c1", state, "h")],
                ..EMPTY
            };
            check(Some(want(true, "h", "d")), world, None);
        }
    }

    #[test]
    fn remove_when_gone_or_disabled() {
        let world = World {
            containers: running("h"),
            config_dir: true,
            ..EMPTY
        };
        check(
            None,
            world,
            Some(Action::Remove {
                project: p("a"),
                container: "c1".into(),
                keep_config: false,
            }),
        );
        let world = World {
            containers: running("h"),
            config_dir: true,
            ..EMPTY
        };
        check(
            Some(want(false, "h", "d")),
            world,
            Some(Action::Remove {
                project: p("a"),
                container: "c1".into(),
                keep_config: true,
            }),
        );
        check(
            None,
            World {
                config_dir: true,
                ..EMPTY
            },
            Some(Action::RemoveConfig { project: p("a") }),
        );
    }

    #[test]
    fn surplus_containers_go_first() {
        let mut renamed = container("a", "c2", State::Running, "h");
        renamed.name = "renamed".into();
        let world = World {
            containers: vec![container("a", "c1", State::Running, "h"), renamed],
            ..EMPTY
        };
        check(
            Some(want(true, "h", "d")),
            world,
            Some(Action::Remove {
                project: p("a"),
                container: "c2".into(),
                keep_config: true,
            }),
        );
    }

    #[test]
    fn conflicts_are_reported_not_removed() {
        let world = World {
            foreign: Some("x9"),
            ..EMPTY
        };
        let desired = BTreeMap::from([(p("a"), want(true, "h", "d"))]);
        let observed = Observed {
            foreign: BTreeMap::from([(p("a"), world.foreign.unwrap().to_owned())]),
            ..Observed::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            Plan {
                actions: vec![],
                conflicts: vec![Conflict {
                    project: p("a"),
                    container: "x9".into(),
                }],
            }
        );
        // Not wanted: a foreign container is none of our business.
        check(
            None,
            World {
                foreign: Some("x9"),
                ..EMPTY
            },
            None,
        );
    }

    #[test]
    fn frozen_projects_are_untouched() {
        check(
            Some(Want::Frozen),
            World {
                containers: running("h"),
                config_dir: true,
                ..EMPTY
            },
            None,
        );
        check(Some(Want::Frozen), EMPTY, None);
    }

    #[test]
    fn one_action_per_project_across_many() {
        let desired = BTreeMap::from([
            (p("a"), want(true, "h", "d")),
            (p("b"), want(true, "h", "d")),
        ]);
        let observed = Observed {
            containers: vec![container("c", "c3", State::Running, "h")],
            ..Observed::default()
        };
        let actions = plan(&desired, &observed).actions;
        assert_eq!(
            actions,
            [
                Action::Create { project: p("a") },
                Action::Create { project: p("b") },
                Action::Remove {
                    project: p("c"),
                    container: "c3".into(),
                    keep_config: false
                },
            ]
        );
    }

    /// A container of project `a`: `main` is `postgrest-a`, else `postgrest-a-next`.
    fn probed(main: bool, id: &str, hash: &str, state: State, serving: Option<bool>) -> Container {
        let mut c = container("a", id, state, hash);
        if !main {
            c.name = next_container_name(&p("a"));
        }
        c.serving = serving;
        c
    }

    fn blue_green(containers: Vec<Container>) -> World {
        World {
            containers,
            loaded: Some(("c1", "d")),
            blue_green: true,
            ..EMPTY
        }
    }

    #[test]
    fn a_serving_stale_container_is_replaced_beside_itself() {
        let replace = Some(Action::Replace {
            project: p("a"),
            container: "c1".into(),
            next: None,
        });
        let recreate = Some(Action::Recreate {
            project: p("a"),
            container: "c1".into(),
        });
        let one = |state, serving| blue_green(vec![probed(true, "c1", "old", state, serving)]);
        let want = || Some(want(true, "new", "d"));
        check(want(), one(State::Running, Some(true)), replace);
        // Not probed yet: wait for the probe rather than take a serving container down.
        check(want(), one(State::Running, None), None);
        // Nothing to keep serving: a crash loop, a stopped container, a dead one.
        check(want(), one(State::Running, Some(false)), recreate.clone());
        check(want(), one(State::Exited, None), recreate.clone());
        check(
            want(),
            one(State::Restarting, Some(false)),
            recreate.clone(),
        );
        // PGM_REPLACE=recreate: the old way, whatever the probe says.
        let old_way = World {
            blue_green: false,
            ..one(State::Running, Some(true))
        };
        check(want(), old_way, recreate);
        // A matching container is left alone whatever its readiness.
        check(
            Some(self::want(true, "old", "d")),
            one(State::Running, Some(false)),
            None,
        );
    }

    /// Both containers present (a replacement under way, or a manager that died between two
    /// of its steps): every combination of which matches the desired state and which serves.
    #[test]
    fn two_containers_keep_the_one_that_matches_and_serves() {
        use State::{Exited, Running};
        let remove_next = Some(Action::Remove {
            project: p("a"),
            container: "c2".into(),
            keep_config: true,
        });
        let resume = Some(Action::Replace {
            project: p("a"),
            container: "c1".into(),
            next: Some("c2".into()),
        });
        // (main hash, main serves, next hash, next state, next serves) -> action
        let table = [
            // The replacement matches: finish it, whatever the old one does.
            (
                "old",
                Some(true),
                "new",
                Running,
                Some(true),
                resume.clone(),
            ),
            ("old", Some(true), "new", Running, None, resume.clone()),
            (
                "old",
                Some(true),
                "new",
                Running,
                Some(false),
                resume.clone(),
            ),
            (
                "old",
                Some(false),
                "new",
                Running,
                Some(true),
                resume.clone(),
            ),
            ("old", None, "new", Running, None, resume.clone()),
            // The replacement does not run: of no use.
            ("old", Some(true), "new", Exited, None, remove_next.clone()),
            // The replacement is stale (the spec changed again, or back).
            (
                "new",
                Some(true),
                "old",
                Running,
                Some(true),
                remove_next.clone(),
            ),
            (
                "new",
                Some(false),
                "old",
                Running,
                Some(true),
                remove_next.clone(),
            ),
            (
                "old",
                Some(true),
                "other",
                Running,
                Some(true),
                remove_next.clone(),
            ),
            // Both match: the old one keeps the name while it serves or neither does...
            (
                "new",
                Some(true),
                "new",
                Running,
                Some(true),
                remove_next.clone(),
            ),
            (
                "new",
                Some(true),
                "new",
                Running,
                Some(false),
                remove_next.clone(),
            ),
            (
                "new",
                Some(false),
                "new",
                Running,
                Some(false),
                remove_next.clone(),
            ),
            ("new", None, "new", Running, None, remove_next),
            // ...and the replacement takes over when it alone serves.
            (
                "new",
                Some(false),
                "new",
                Running,
                Some(true),
                resume.clone(),
            ),
            ("new", None, "new", Running, Some(true), resume),
        ];
        for (main_hash, main_serves, next_hash, next_state, next_serves, expected) in table {
            let world = blue_green(vec![
                probed(true, "c1", main_hash, Running, main_serves),
                probed(false, "c2", next_hash, next_state, next_serves),
            ]);
            let desired: BTreeMap<_, _> = [(p("a"), want(true, "new", "d"))].into();
            let observed = Observed {
                containers: world.containers.clone(),
                blue_green: true,
                ..Observed::default()
            };
            assert_eq!(
                plan(&desired, &observed).actions,
                expected.clone().into_iter().collect::<Vec<_>>(),
                "main {main_hash}/{main_serves:?}, next {next_hash}/{next_state}/{next_serves:?}"
            );
            check(Some(want(true, "new", "d")), world, expected);
        }
    }

    #[test]
    fn a_replacement_alone_is_promoted_or_removed() {
        let only_next = |hash, state| blue_green(vec![probed(false, "c2", hash, state, None)]);
        check(
            Some(want(true, "new", "d")),
            only_next("new", State::Running),
            Some(Action::Promote {
                project: p("a"),
                container: "c2".into(),
            }),
        );
        let remove_next = |keep_config| {
            Some(Action::Remove {
                project: p("a"),
                container: "c2".into(),
                keep_config,
            })
        };
        check(
            Some(want(true, "new", "d")),
            only_next("old", State::Running),
            remove_next(true),
        );
        check(
            Some(want(true, "new", "d")),
            only_next("new", State::Exited),
            remove_next(true),
        );
        // Disabled or deleted mid-replacement: the replacement goes first, then the old one.
        let both = blue_green(vec![
            probed(true, "c1", "old", State::Running, Some(true)),
            probed(false, "c2", "new", State::Running, Some(true)),
        ]);
        check(Some(want(false, "new", "d")), both, remove_next(true));
        let both = World {
            config_dir: true,
            ..blue_green(vec![
                probed(true, "c1", "old", State::Running, Some(true)),
                probed(false, "c2", "new", State::Running, Some(true)),
            ])
        };
        check(None, both, remove_next(false));
    }

    /// Swarm: every difference (shape, config, schema token) is one `Update` of the same
    /// service; what Docker mode reloads, replaces or recreates.
    #[test]
    fn swarm_plans_updates_where_docker_reloads_replaces_or_recreates() {
        let swarm = |containers, loaded, schema| World {
            containers,
            loaded,
            schema,
            orchestrator: Orchestrator::Swarm,
            blue_green: true,
            ..EMPTY
        };
        let update = Some(Action::Update {
            project: p("a"),
            container: "c1".into(),
        });
        // Converged: the service's hash, the config it was updated with, the schema token.
        check(
            Some(want(true, "h", "d")),
            swarm(running("h"), Some(("c1", "d")), None),
            None,
        );
        // No service: create (a service, by the runtime).
        check(
            Some(want(true, "h", "d")),
            swarm(vec![], None, None),
            Some(Action::Create { project: p("a") }),
        );
        // A new config (JWT, password): Docker would reload; Swarm updates.
        check(
            Some(want(true, "h", "new")),
            swarm(running("h"), Some(("c1", "d")), None),
            update.clone(),
        );
        // No record of the config in force (a manager that never saw it): update.
        check(
            Some(want(true, "h", "d")),
            swarm(running("h"), None, None),
            update.clone(),
        );
        // A new shape (image, resources), serving or not: Docker would replace or
        // recreate; Swarm updates (it starts the new task beside the old one).
        let mut serving = container("a", "c1", State::Running, "old");
        serving.serving = Some(true);
        check(
            Some(want(true, "new", "d")),
            swarm(vec![serving], Some(("c1", "d")), None),
            update.clone(),
        );
        check(
            Some(want(true, "new", "d")),
            swarm(running("old"), Some(("c1", "d")), None),
            update.clone(),
        );
        // A schema reload: tasks cannot be signalled through Swarm; the update restarts them.
        let mut bumped = want(true, "h", "d");
        if let Want::Spec(d) = &mut bumped {
            d.schema_token = 3;
        }
        check(
            Some(bumped.clone()),
            swarm(running("h"), Some(("c1", "d")), Some(("c1", 2))),
            update,
        );
        check(
            Some(bumped),
            swarm(running("h"), Some(("c1", "d")), Some(("c1", 3))),
            None,
        );
        // Swarm is rolling out or back: wait for it.
        check(
            Some(want(true, "new", "d")),
            swarm(
                vec![container("a", "c1", State::Restarting, "old")],
                Some(("c1", "d")),
                None,
            ),
            None,
        );
    }

    #[test]
    fn swarm_removes_services_and_reports_conflicts() {
        let swarm = |containers, config_dir| World {
            containers,
            config_dir,
            orchestrator: Orchestrator::Swarm,
            ..EMPTY
        };
        check(
            None,
            swarm(running("h"), true),
            Some(Action::Remove {
                project: p("a"),
                container: "c1".into(),
                keep_config: false,
            }),
        );
        check(
            Some(want(false, "h", "d")),
            swarm(running("h"), true),
            Some(Action::Remove {
                project: p("a"),
                container: "c1".into(),
                keep_config: true,
            }),
        );
        check(
            None,
            swarm(vec![], true),
            Some(Action::RemoveConfig { project: p("a") }),
        );
        let mut renamed = container("a", "c2", State::Running, "h");
        renamed.name = "by-hand".into();
        check(
            Some(want(true, "h", "d")),
            swarm(vec![renamed], false),
            Some(Action::Remove {
                project: p("a"),
                container: "c2".into(),
                keep_config: true,
            }),
        );
        // A foreign service holds the name: a conflict, never an action.
        let desired = BTreeMap::from([(p("a"), want(true, "h", "d"))]);
        let observed = Observed {
            foreign: BTreeMap::from([(p("a"), "f1".to_owned())]),
            orchestrator: Orchestrator::Swarm,
            ..Observed::default()
        };
        let plan = plan(&desired, &observed);
        assert_eq!(plan.actions, []);
        assert_eq!(
            plan.conflicts,
            [Conflict {
                project: p("a"),
                container: "f1".into()
            }]
        );
    }
}
