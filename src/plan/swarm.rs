//! The planner's Swarm half: one service per project, and every change a rolling update.
//!
//! A Swarm secret cannot change, so there is no reload signal to send and no second container
//! to start beside the first: Swarm itself starts the new task beside the old one
//! (`start-first`), waits for its health check and rolls back when it never passes. What is
//! left to plan is whether the service exists, whether it should, and whether it runs what is
//! desired: its spec-hash label (shape), the config it was last updated with (`loaded`, keyed
//! by the service id, which an update keeps) and the schema token it was last updated for.

use super::{matches, Action, Container, Desired, Observed, State, Step};
use crate::spec::ProjectId;

pub(super) fn plan_service(
    project: &ProjectId,
    desired: Option<&Desired>,
    services: &[&Container],
    observed: &Observed,
) -> Option<Step> {
    let act = |action| Some(Step::Act(action));
    let keep_config = desired.is_some();
    let name = project.container_name();
    // A service of ours under another name is surplus: the name is how it is found.
    if let Some(extra) = services.iter().find(|s| s.name != name) {
        return act(Action::Remove {
            project: project.clone(),
            container: extra.id.clone(),
            keep_config: true,
        });
    }
    let service = services.first();
    let Some(desired) = desired.filter(|d| d.enabled) else {
        return match service {
            Some(s) => act(Action::Remove {
                project: project.clone(),
                container: s.id.clone(),
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
    let Some(service) = service else {
        return Some(match observed.foreign.get(project) {
            Some(foreign) => Step::Conflict(foreign.clone()),
            None => Step::Act(Action::Create {
                project: project.clone(),
            }),
        });
    };
    // Swarm is rolling an update out (or back): its outcome is the next pass's to see.
    if service.state == State::Restarting {
        return None;
    }
    let in_force = observed
        .loaded
        .get(project)
        .is_some_and(|(by, digest)| *by == service.id && *digest == desired.config_digest);
    let schema_seen = match observed.schema.get(project) {
        Some((by, token)) => *by == service.id && *token == desired.schema_token,
        None => desired.schema_token == 0,
    };
    if matches(service, desired) && in_force && schema_seen {
        return None;
    }
    act(Action::Update {
        project: project.clone(),
        container: service.id.clone(),
    })
}
