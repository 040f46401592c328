//! Why: the planner's decisions in words, for `plan`, `GET /internal/plan`, `diff` and the
//! events. Pure like the planner: the reasons come from comparing the config the container
//! loaded with the one desired, key by key, by name; a value is never put into words, so a
//! reason can never carry a secret.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Observed, Plan, State, Want, Wanted};
use crate::spec::ProjectId;

/// A key whose rendered value differs between the loaded config and the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// PostgREST's name for it (`jwt-secret`), or `reload_token` for the token comment.
    pub key: String,
    /// Whether a config reload can change it (render.rs's table).
    pub reloadable: bool,
    /// The spec fields behind the change, when the key is built from several (`db-uri`).
    pub fields: Vec<&'static str>,
}

/// What the loop does to a project now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Recreate,
    Replace,
    Promote,
    Start,
    Reload,
    ReloadSchema,
    Remove,
    RemoveConfig,
    /// Swarm: a rolling service update (a new secret, start-first).
    Update,
    /// Converged, or nothing the loop may do (paused by hand, being restarted by Docker).
    Nothing,
    /// An invalid file and no last good spec: nothing is touched until it is fixed.
    Frozen,
    /// A foreign container holds the name: reported, never removed.
    Conflict,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Recreate => "recreate",
            Verb::Replace => "replace",
            Verb::Promote => "promote",
            Verb::Start => "start",
            Verb::Reload => "reload",
            Verb::ReloadSchema => "reload schema",
            Verb::Remove => "remove",
            Verb::RemoveConfig => "remove config",
            Verb::Update => "update",
            Verb::Nothing => "nothing",
            Verb::Frozen => "frozen",
            Verb::Conflict => "conflict",
        }
    }

    /// Whether the loop has something to do (scripts wait until no project has).
    pub fn is_work(self) -> bool {
        !matches!(self, Verb::Nothing)
    }
}

/// One project's line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub project: ProjectId,
    pub verb: Verb,
    /// `reload: jwt_secret changed`, `nothing: converged`, ...
    pub reason: String,
}

/// The spec field a key comes from, in the words of the state file.
fn field(key: &str) -> &str {
    match key {
        "jwt-secret" => "jwt_secret",
        "jwt-aud" => "jwt_aud",
        "db-schemas" => "db_schemas",
        "db-anon-role" => "db_anon_role",
        "max-rows" => "max_rows",
        "db-pool" => "db_pool",
        other => other,
    }
}

/// The keys of a rendered config with their rendered (escaped) values. The
/// `# reload-token N` comment counts as the key `reload_token`: bumping it is a change.
pub fn config_keys(text: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(token) = line.strip_prefix("# reload-token ") {
            keys.insert("reload_token".to_owned(), token.trim().to_owned());
        } else if line.starts_with('#') {
            continue;
        } else if let Some((key, value)) = line.split_once('=') {
            keys.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    keys
}

/// The parts of a rendered `db-uri` (`"postgres://user:password@host:port/db"`).
fn uri_parts(value: &str) -> Option<[&str; 5]> {
    let rest = value.trim_matches('"').split_once("://")?.1;
    let (userinfo, rest) = rest.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
    Some([user, password, host, port, db])
}

/// Which spec fields differ between two rendered `db-uri`s.
fn uri_fields(loaded: &str, desired: &str) -> Vec<&'static str> {
    const NAMES: [&str; 5] = [
        "authenticator user",
        "authenticator_password",
        "db_host",
        "db_port",
        "db_name",
    ];
    match (uri_parts(loaded), uri_parts(desired)) {
        (Some(a), Some(b)) => NAMES
            .iter()
            .zip(a.iter().zip(b.iter()))
            .filter(|(_, (a, b))| a != b)
            .map(|(name, _)| *name)
            .collect(),
        _ => Vec::new(),
    }
}

/// Which keys changed from the `loaded` config text to the `desired` one. `reloadable` is the
/// desired rendering's classification; a key it does not know (one that went away) counts as
/// not reloadable.
pub fn changed_keys(loaded: &str, desired: &str, reloadable: &[(&str, bool)]) -> Vec<KeyChange> {
    let (old, new) = (config_keys(loaded), config_keys(desired));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for key in names {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        let fields = match (key.as_str(), a, b) {
            ("db-uri", Some(a), Some(b)) => uri_fields(a, b),
            _ => Vec::new(),
        };
        let reloadable = key == "reload_token"
            || reloadable
                .iter()
                .any(|(name, yes)| *name == key.as_str() && *yes);
        changes.push(KeyChange {
            key: key.clone(),
            reloadable,
            fields,
        });
    }
    changes
}

/// `jwt_secret changed`, `reload_token bumped`, or for a key a reload cannot change,
/// `authenticator_password changed (db-uri is not reloadable)`.
fn describe(change: &KeyChange) -> String {
    if change.key == "reload_token" {
        return "reload_token bumped".to_owned();
    }
    let what = if change.fields.is_empty() {
        field(&change.key).to_owned()
    } else {
        change.fields.join(", ")
    };
    if change.reloadable {
        format!("{what} changed")
    } else {
        format!("{what} changed ({} is not reloadable)", change.key)
    }
}

/// Every project the plan covers, with what the loop does to it and why. `changes` gives,
/// when known, the keys that differ between the loaded config and the desired one.
pub fn preview<W: Wanted>(
    desired: &BTreeMap<ProjectId, W>,
    observed: &Observed,
    plan: &Plan,
    changes: impl Fn(&ProjectId) -> Option<Vec<KeyChange>>,
) -> Vec<Preview> {
    let projects: BTreeSet<&ProjectId> = desired
        .keys()
        .chain(observed.containers.iter().map(|c| &c.project))
        .chain(&observed.config_dirs)
        .collect();
    // Looked up once per project: a scan per project would make a pass quadratic.
    let actions: BTreeMap<&ProjectId, &Action> =
        plan.actions.iter().map(|a| (a.project(), a)).collect();
    let conflicts: BTreeMap<&ProjectId, &str> = plan
        .conflicts
        .iter()
        .map(|c| (&c.project, c.container.as_str()))
        .collect();
    let states: BTreeMap<&ProjectId, State> = observed
        .containers
        .iter()
        .map(|c| (&c.project, c.state))
        .collect();
    projects
        .into_iter()
        .filter_map(|project| {
            let want = desired.get(project).and_then(Wanted::want);
            let action = actions.get(project).copied();
            let conflict = conflicts.get(project).copied();
            let (verb, reason) = match (action, conflict, want) {
                (Some(action), _, _) => explain(action, want, observed, &changes),
                (None, Some(holder), _) => (
                    Verb::Conflict,
                    format!(
                        "conflict: {} ({holder}) holds the name without this manager's labels",
                        project.container_name(),
                    ),
                ),
                (None, None, Some(Want::Frozen)) => {
                    (Verb::Frozen, "frozen: invalid file".to_owned())
                }
                (None, None, Some(Want::Spec(d))) => {
                    (Verb::Nothing, idle(d.enabled, states.get(project).copied()))
                }
                // Neither wanted nor there: nothing to say.
                (None, None, None) => return None,
            };
            Some(Preview {
                project: project.clone(),
                verb,
                reason,
            })
        })
        .collect()
}

/// Why nothing is done to a wanted project.
fn idle(enabled: bool, state: Option<State>) -> String {
    if !enabled {
        return "nothing: disabled".to_owned();
    }
    match state {
        Some(State::Paused) => "nothing: paused by hand (a paused process takes no signal)".into(),
        Some(s @ (State::Removing | State::Restarting)) => {
            format!("nothing: Docker is {s} the container")
        }
        _ => "nothing: converged".to_owned(),
    }
}

fn explain(
    action: &Action,
    want: Option<&Want>,
    observed: &Observed,
    changes: &impl Fn(&ProjectId) -> Option<Vec<KeyChange>>,
) -> (Verb, String) {
    let project = action.project();
    let state_of = |id: &str| {
        observed
            .containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.state)
    };
    let changed = |reloadable: bool| -> Option<String> {
        let words: Vec<String> = changes(project)?
            .iter()
            .filter(|c| c.reloadable == reloadable)
            .map(describe)
            .collect();
        (!words.is_empty()).then(|| words.join("; "))
    };
    match action {
        Action::Create { .. } if observed.loaded.contains_key(project) => (
            Verb::Create,
            "create: the container is missing (removed by hand or never started)".into(),
        ),
        Action::Create { .. } => (Verb::Create, "create".into()),
        Action::Recreate { container, .. } => {
            let why = if state_of(container) == Some(State::Dead) {
                "the container is dead".to_owned()
            } else {
                changed(false).unwrap_or_else(|| {
                    "the container's shape or a non-reloadable key changed (its spec-hash differs)"
                        .to_owned()
                })
            };
            (Verb::Recreate, format!("recreate: {why}"))
        }
        Action::Replace { next: None, .. } => {
            let why = changed(false).unwrap_or_else(|| {
                "the container's shape or a non-reloadable key changed (its spec-hash differs)"
                    .to_owned()
            });
            (
                Verb::Replace,
                format!("replace: {why}; a new container starts beside the serving one"),
            )
        }
        Action::Replace { next: Some(_), .. } => (
            Verb::Replace,
            "replace: finish the replacement under way (switch to the new container, stop the old)"
                .into(),
        ),
        Action::Promote { .. } => (
            Verb::Promote,
            "promote: the old container is gone; the replacement takes the project's name".into(),
        ),
        Action::Start { container, .. } => {
            let state = state_of(container).map_or("stopped".to_owned(), |s| s.to_string());
            (Verb::Start, format!("start: the container is {state}"))
        }
        Action::Reload { container, .. } => {
            let why = changed(true).unwrap_or_else(|| {
                match observed.loaded.get(project) {
                    Some((by, _)) if by == container => {
                        "the config differs from what the container loaded"
                    }
                    _ => "the container has no record of loading the current config",
                }
                .to_owned()
            });
            (Verb::Reload, format!("reload: {why}"))
        }
        Action::ReloadSchema { .. } => (
            Verb::ReloadSchema,
            "reload schema: schema_reload_token bumped (SIGUSR1)".into(),
        ),
        Action::Remove { keep_config, .. } => {
            let why = match want {
                None => "file deleted",
                Some(Want::Spec(d)) if !d.enabled => "disabled",
                _ if *keep_config => {
                    "a second container of the project (renamed by hand, or a replacement not needed)"
                }
                _ => "file deleted",
            };
            (Verb::Remove, format!("remove: {why}"))
        }
        Action::Update { .. } => {
            let why = match (changed(false), changed(true)) {
                (Some(a), Some(b)) => format!("{a}; {b}"),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => match observed.loaded.get(project) {
                    Some(_) => "the service's shape, config or schema_reload_token changed".into(),
                    None => "the service has no record of running the current config".into(),
                },
            };
            (
                Verb::Update,
                format!("update: {why}; a rolling service update (start-first)"),
            )
        }
        Action::RemoveConfig { .. } => (
            Verb::RemoveConfig,
            "remove config: file deleted, the rendered config is left".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{plan, Container, Desired};
    use super::*;

    fn p(id: &str) -> ProjectId {
        ProjectId::parse(id).unwrap()
    }

    const RELOADABLE: &[(&str, bool)] = &[
        ("db-uri", false),
        ("db-pool", false),
        ("jwt-secret", true),
        ("db-schemas", true),
    ];

    fn config(password: &str, secret: &str, pool: u32, token: u64) -> String {
        format!(
            "# Rendered by postgrest-manager\n\
             db-uri = \"postgres://a_authenticator:{password}@pgbouncer:6432/a\"\n\
             db-pool = {pool}\n\
             jwt-secret = \"{secret}\"\n\
             db-schemas = \"public\"\n\
             # reload-token {token}\n"
        )
    }

    fn want(enabled: bool, hash: &str) -> Want {
        Want::Spec(Desired {
            enabled,
            spec_hash: hash.into(),
            config_digest: "new".into(),
            schema_token: 0,
        })
    }

    fn running(state: State, hash: &str) -> Container {
        Container {
            id: "c1".into(),
            project: p("a"),
            name: "postgrest-a".into(),
            state,
            spec_hash: Some(hash.into()),
            serving: None,
        }
    }

    /// Plans project `a` and returns its one line of the preview.
    fn check(
        want: Option<Want>,
        containers: Vec<Container>,
        loaded: Option<&str>,
        configs: Option<(String, String)>,
        expected: (Verb, &str),
    ) {
        let desired: BTreeMap<_, _> = want.into_iter().map(|w| (p("a"), w)).collect();
        let observed = Observed {
            containers,
            config_dirs: BTreeSet::from([p("a")]),
            loaded: loaded
                .map(|digest| (p("a"), ("c1".to_owned(), digest.to_owned())))
                .into_iter()
                .collect(),
            ..Observed::default()
        };
        let planned = plan(&desired, &observed);
        let changes = |_: &ProjectId| {
            let (old, new) = configs.as_ref()?;
            Some(changed_keys(old, new, RELOADABLE))
        };
        let lines = preview(&desired, &observed, &planned, changes);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!((lines[0].verb, lines[0].reason.as_str()), expected);
    }

    #[test]
    fn reasons_name_what_changed_and_never_a_value() {
        let old = config("old-pw", "secret-one", 10, 0);
        let run = || vec![running(State::Running, "h")];
        check(
            Some(want(true, "h")),
            run(),
            Some("old"),
            Some((old.clone(), config("old-pw", "secret-two", 10, 0))),
            (Verb::Reload, "reload: jwt_secret changed"),
        );
        check(
            Some(want(true, "h")),
            run(),
            Some("old"),
            Some((old.clone(), config("old-pw", "secret-one", 10, 1))),
            (Verb::Reload, "reload: reload_token bumped"),
        );
        check(
            Some(want(true, "new-hash")),
            run(),
            Some("old"),
            Some((old.clone(), config("new-pw", "secret-one", 10, 0))),
            (
                Verb::Recreate,
                "recreate: authenticator_password changed (db-uri is not reloadable)",
            ),
        );
        check(
            Some(want(true, "new-hash")),
            run(),
            Some("old"),
            Some((old, config("old-pw", "secret-one", 20, 0))),
            (
                Verb::Recreate,
                "recreate: db_pool changed (db-pool is not reloadable)",
            ),
        );
        // Without the loaded config's text, the reason says what is known.
        check(
            Some(want(true, "new-hash")),
            run(),
            Some("old"),
            None,
            (
                Verb::Recreate,
                "recreate: the container's shape or a non-reloadable key changed (its spec-hash differs)",
            ),
        );
        check(
            Some(want(true, "h")),
            run(),
            None,
            None,
            (
                Verb::Reload,
                "reload: the container has no record of loading the current config",
            ),
        );
        check(
            Some(want(true, "h")),
            run(),
            Some("new"),
            None,
            (Verb::Nothing, "nothing: converged"),
        );
        check(
            Some(want(true, "h")),
            vec![],
            None,
            None,
            (Verb::Create, "create"),
        );
        check(
            Some(want(true, "h")),
            vec![],
            Some("new"),
            None,
            (
                Verb::Create,
                "create: the container is missing (removed by hand or never started)",
            ),
        );
        check(
            Some(want(true, "h")),
            vec![running(State::Exited, "h")],
            Some("new"),
            None,
            (Verb::Start, "start: the container is exited"),
        );
        check(
            Some(want(true, "h")),
            vec![running(State::Dead, "h")],
            Some("new"),
            None,
            (Verb::Recreate, "recreate: the container is dead"),
        );
        check(
            None,
            run(),
            Some("new"),
            None,
            (Verb::Remove, "remove: file deleted"),
        );
        check(
            Some(want(false, "h")),
            run(),
            Some("new"),
            None,
            (Verb::Remove, "remove: disabled"),
        );
        check(
            Some(want(false, "h")),
            vec![],
            None,
            None,
            (Verb::Nothing, "nothing: disabled"),
        );
        check(
            Some(Want::Frozen),
            run(),
            None,
            None,
            (Verb::Frozen, "frozen: invalid file"),
        );
        check(
            None,
            vec![],
            None,
            None,
            (
                Verb::RemoveConfig,
                "remove config: file deleted, the rendered config is left",
            ),
        );
    }

    #[test]
    fn db_uri_changes_name_their_fields_and_no_value() {
        let old = "db-uri = \"postgres://a_authenticator:p%40ss@pgbouncer:6432/a\"";
        let new = "db-uri = \"postgres://a_authenticator:n3w@db.internal:5432/a\"";
        let changes = changed_keys(old, new, &[("db-uri", false)]);
        assert_eq!(
            changes,
            [KeyChange {
                key: "db-uri".into(),
                reloadable: false,
                fields: vec!["authenticator_password", "db_host", "db_port"],
            }]
        );
        let words = describe(&changes[0]);
        assert!(
            !words.contains("n3w") && !words.contains("p%40ss"),
            "{words}"
        );
        assert!(changed_keys(old, old, &[]).is_empty());
    }
}
