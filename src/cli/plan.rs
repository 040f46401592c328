//! `plan` and `diff`: what the loop would do now and why, and the config it would write
//! against the one the container loaded, computed standalone like `status` (read state/,
//! list Docker, plan) so they work while the manager is stopped. They never act: the runtime
//! is only asked to list and to look a name up.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{failed, usage, CliError};
use crate::args::ServeArgs;
use crate::configs::ConfigDir;
use crate::plan::Orchestrator;
use crate::plan::{self, Observed, Preview, Want};
use crate::reconcile::LoopConfig;
use crate::render::{self, owner_labels, Rendered};
use crate::runtime::engine::Engine;
use crate::runtime::{ContainerInfo, Runtime};
use crate::settings::Settings;
use crate::spec::ProjectId;
use crate::spec_key::SpecKey;
use crate::state_dir::Loaded;

const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit code that says "there is work" (or "they differ"), so scripts can wait on it.
const WORK: u8 = 2;

/// `serve`'s settings, without its API: `plan` and `diff` render exactly as the manager does.
fn loop_config(serve: ServeArgs) -> Result<(LoopConfig, Option<String>, Orchestrator), CliError> {
    let serve = ServeArgs {
        no_api: true,
        ..serve
    };
    let mut settings = Settings::try_from(serve).map_err(|e| usage(e.to_string()))?;
    // The spec-hash is keyed: render with the manager's key. Without one yet, a manager would
    // create a fresh key, so the process-local random key `Settings` holds says the same thing
    // (every container is recreated).
    let cfg = &mut settings.reconcile;
    if let Some(key) = SpecKey::load(cfg.configs.path()).map_err(|e| usage(e.to_string()))? {
        cfg.template.spec_key = key;
    }
    Ok((
        settings.reconcile,
        settings.docker_host,
        settings.orchestrator,
    ))
}

fn load(cfg: &LoopConfig) -> Result<Loaded, CliError> {
    match cfg.state.load() {
        Ok(loaded) => Ok(loaded),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::default()),
        Err(e) => Err(failed(format!("{}: {e}", cfg.state.path().display()))),
    }
}

/// What the planner needs from Docker: our containers, and for wanted projects without one,
/// whoever holds their name.
fn observe_docker(
    orchestrator: Orchestrator,
    docker_host: Option<&str>,
    instance: &str,
    wanted: Vec<String>,
) -> Result<(Vec<ContainerInfo>, BTreeMap<String, ContainerInfo>), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    runtime.block_on(async {
        // Lists only: the key names no secret here.
        let key = SpecKey::from_bytes([0; 32]);
        let docker = Engine::new(orchestrator, docker_host, key, Default::default());
        let look = async {
            docker.ping().await?;
            let ours = docker.list(&owner_labels(instance)).await?;
            let mut holders = BTreeMap::new();
            for name in wanted {
                if ours.iter().any(|c| c.name == name) {
                    continue;
                }
                if let Ok(holder) = docker.find_by_name(&name).await {
                    holders.insert(name, holder);
                }
            }
            Ok::<_, crate::runtime::RuntimeError>((ours, holders))
        };
        match tokio::time::timeout(DOCKER_TIMEOUT, look).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(failed(format!("Docker: {e}; cannot plan without it"))),
            Err(_) => Err(failed("Docker did not answer; cannot plan without it")),
        }
    })
}

/// The config text on disk: what the container loaded when the `.loaded` record says so.
fn on_disk(configs: &ConfigDir, id: &ProjectId) -> Option<String> {
    std::fs::read_to_string(configs.config_file(id)).ok()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanOutput<'a> {
    converged: bool,
    projects: Vec<PlanLine<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanLine<'a> {
    project_id: &'a str,
    action: &'static str,
    reason: &'a str,
}

/// The plan, per project. An invalid file counts as frozen here: the running manager may
/// still hold its last good spec, which only it knows.
fn previews(serve: ServeArgs) -> Result<Vec<Preview>, CliError> {
    let (cfg, docker_host, orchestrator) = loop_config(serve)?;
    let loaded = load(&cfg)?;
    let mut wants: BTreeMap<ProjectId, Want> = BTreeMap::new();
    let mut rendered: BTreeMap<ProjectId, Rendered> = BTreeMap::new();
    for (id, spec) in &loaded.specs {
        let r = render::render(spec, &cfg.template);
        wants.insert(
            id.clone(),
            Want::Spec(plan::Desired {
                enabled: spec.enabled,
                spec_hash: r.spec_hash.clone(),
                config_digest: r.config.digest.clone(),
                schema_token: spec.schema_reload_token,
            }),
        );
        rendered.insert(id.clone(), r);
    }
    for id in loaded.invalid.keys() {
        wants.insert(id.clone(), Want::Frozen);
    }
    let names = loaded
        .specs
        .iter()
        .filter(|(_, spec)| spec.enabled)
        .map(|(id, _)| id.container_name())
        .collect();
    let (ours, holders) = observe_docker(
        orchestrator,
        docker_host.as_deref(),
        &cfg.template.instance,
        names,
    )?;
    let containers: Vec<plan::Container> = ours
        .iter()
        .filter_map(|c| {
            Some(plan::Container {
                id: c.id.clone(),
                project: c.project()?,
                name: c.name.clone(),
                state: c.state,
                spec_hash: c.spec_hash().map(str::to_owned),
                // The CLI does not probe `/ready`: a running container is taken to serve,
                // so the preview says what the loop does for a healthy project.
                serving: Some(c.state == plan::State::Running),
            })
        })
        .collect();
    let foreign = wants
        .keys()
        .filter_map(|id| Some((id.clone(), holders.get(&id.container_name())?.id.clone())))
        .collect();
    let observed = Observed {
        containers,
        foreign,
        config_dirs: cfg
            .configs
            .projects()
            .map_err(|e| failed(format!("{}: {e}", cfg.configs.path().display())))?,
        loaded: cfg
            .configs
            .loaded()
            .map_err(|e| failed(format!("{}: {e}", cfg.configs.path().display())))?,
        schema: cfg
            .configs
            .schema_seen()
            .map_err(|e| failed(format!("{}: {e}", cfg.configs.path().display())))?,
        blue_green: cfg.blue_green,
        orchestrator,
    };
    let planned = plan::plan(&wants, &observed);
    let changes = |id: &ProjectId| {
        let desired = rendered.get(id)?;
        let loaded = on_disk(&cfg.configs, id)?;
        Some(plan::changed_keys(
            &loaded,
            &desired.config.text,
            &desired.keys,
        ))
    };
    Ok(plan::preview(&wants, &observed, &planned, changes))
}

/// `plan`: prints the plan; exit code 0 when nothing is to be done, 2 when something is.
pub(super) fn run_plan(serve: ServeArgs, json: bool) -> ExitCode {
    let lines = match previews(serve) {
        Ok(lines) => lines,
        Err(CliError { code, message }) => {
            eprintln!("error: {message}");
            return ExitCode::from(code);
        }
    };
    let converged = lines.iter().all(|l| !l.verb.is_work());
    let ids: Vec<String> = lines.iter().map(|l| l.project.to_string()).collect();
    if json {
        let output = PlanOutput {
            converged,
            projects: lines
                .iter()
                .zip(&ids)
                .map(|(l, id)| PlanLine {
                    project_id: id,
                    action: l.verb.as_str(),
                    reason: &l.reason,
                })
                .collect(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&output).unwrap_or_default()
        );
    } else {
        let width = ids.iter().map(String::len).max().unwrap_or(0).max(7);
        println!("{:<width$}  REASON", "PROJECT");
        for (line, id) in lines.iter().zip(&ids) {
            println!("{id:<width$}  {}", line.reason);
        }
    }
    if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(WORK)
    }
}

/// Masks the secrets of one config line: the JWT secret and the password in `db-uri`.
pub(super) fn mask(line: &str) -> String {
    let Some((key, value)) = line.split_once('=') else {
        return line.to_owned();
    };
    match key.trim() {
        "jwt-secret" => format!("{key}= \"***\""),
        "db-uri" => {
            // postgres://user:password@host...: everything between the user's ':' and the
            // last '@' is the (percent-encoded) password.
            let masked = value
                .split_once("://")
                .and_then(|(scheme, rest)| {
                    let (userinfo, host) = rest.rsplit_once('@')?;
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    Some(format!("{scheme}://{user}:***@{host}"))
                })
                .unwrap_or_else(|| " \"***\"".to_owned());
            format!("{key}={masked}")
        }
        _ => line.to_owned(),
    }
}

/// The key a config line sets (`# reload-token` counts as one), or the line itself.
fn line_key(line: &str) -> String {
    if line.starts_with("# reload-token") {
        return "reload_token".to_owned();
    }
    match line.split_once('=') {
        Some((key, _)) if !line.starts_with('#') => key.trim().to_owned(),
        _ => line.to_owned(),
    }
}

/// A key-by-key diff of two config texts, secrets masked: `  ` same, `- ` loaded, `+ ` desired.
pub(super) fn config_diff(loaded: &str, desired: &str) -> (String, bool) {
    let old: BTreeMap<String, &str> = loaded.lines().map(|l| (line_key(l), l)).collect();
    let mut out = Vec::new();
    let mut differs = false;
    for line in desired.lines() {
        let key = line_key(line);
        match old.get(&key) {
            Some(before) if *before == line => out.push(format!("  {}", mask(line))),
            Some(before) => {
                differs = true;
                out.push(format!("- {}", mask(before)));
                out.push(format!("+ {}", mask(line)));
            }
            None => {
                differs = true;
                out.push(format!("+ {}", mask(line)));
            }
        }
    }
    let new: std::collections::BTreeSet<String> = desired.lines().map(line_key).collect();
    for line in loaded.lines().filter(|l| !new.contains(&line_key(l))) {
        differs = true;
        out.push(format!("- {}", mask(line)));
    }
    (out.join("\n"), differs)
}

/// `diff <id>`: the config as it would be written against the one on disk.
pub(super) fn run_diff(serve: ServeArgs, raw_id: &str) -> ExitCode {
    match diff(serve, raw_id) {
        Ok((text, differs)) => {
            println!("{text}");
            if differs {
                ExitCode::from(WORK)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(CliError { code, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn diff(serve: ServeArgs, raw_id: &str) -> Result<(String, bool), CliError> {
    let id = ProjectId::parse(raw_id).map_err(|e| usage(e.to_string()))?;
    let (cfg, _, _) = loop_config(serve)?;
    let spec = match cfg.state.read(&id) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            return Err(CliError {
                code: 3,
                message: format!("no project {id} in {}", cfg.state.path().display()),
            })
        }
        Err(e) => return Err(failed(format!("{}: {e}", cfg.state.file(&id).display()))),
    };
    let desired = render::render(&spec, &cfg.template);
    let path = cfg.configs.config_file(&id);
    let (loaded, note) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let record = cfg.configs.loaded().ok().and_then(|mut r| r.remove(&id));
            let note = match record {
                Some((container, digest)) if digest == sha256_hex(&text) => {
                    let short: String = container.chars().take(12).collect();
                    format!("loaded by container {short}")
                }
                Some(_) => "written, not confirmed loaded by the container".to_owned(),
                None => "no container has loaded it".to_owned(),
            };
            (text, note)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (String::new(), "not written yet".to_owned())
        }
        Err(e) => return Err(failed(format!("{}: {e}", path.display()))),
    };
    let (body, differs) = config_diff(&loaded, &desired.config.text);
    let header = format!(
        "--- {} ({note})\n+++ {} (rendered now)",
        path.display(),
        cfg.state.file(&id).display()
    );
    Ok((format!("{header}\n{body}"), differs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_masks_secrets_and_marks_changes() {
        let old = "# head\ndb-uri = \"postgres://a_authenticator:old%40pw@pgbouncer:6432/a\"\n\
                   jwt-secret = \"secret-one-0123456789abcdef0123456789\"\ndb-pool = 10\n# reload-token 0\n";
        let new = "# head\ndb-uri = \"postgres://a_authenticator:new-pw@pgbouncer:6432/a\"\n\
                   jwt-secret = \"secret-two-0123456789abcdef0123456789\"\ndb-pool = 10\n# reload-token 1\n";
        let (text, differs) = config_diff(old, new);
        assert!(differs);
        for secret in ["old%40pw", "new-pw", "secret-one", "secret-two"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("- db-uri = \"postgres://a_authenticator:***@pgbouncer:6432/a\""));
        assert!(text.contains("+ jwt-secret = \"***\""), "{text}");
        assert!(text.contains("  db-pool = 10"), "{text}");
        assert!(
            text.contains("- # reload-token 0\n+ # reload-token 1"),
            "{text}"
        );
        assert!(!config_diff(new, new).1);
    }
}
