//! The baselines: the same containers started without the manager.
//!
//! Every baseline container is rendered by the crate itself (`render::render` with the same
//! template the manager builds from its settings), so its config, image, mounts, tmpfs, limits,
//! healthcheck and labels are the manager's; only the `launchdb.instance` label differs, so
//! each method's containers are listed and removed separately. The config files are written
//! before the clock starts: the floor is Docker alone.

use std::path::{Path, PathBuf};

use postgrest_manager::configs::ConfigDir;
use postgrest_manager::render::{self, ContainerSpec, Rendered, Template, CONFIG_MOUNT};
use postgrest_manager::runtime::docker::DockerRuntime;
use postgrest_manager::runtime::Runtime;
use postgrest_manager::spec::{ProjectId, Secret, Spec, SpecFile};

use crate::env::{Bench, Who};
use crate::manager::secret;

/// The UID PostgREST runs as (the manager's default), owner of the rendered configs.
const UID: u32 = 1000;

/// The template the manager builds from its settings (the tests' fixture: the manager's
/// defaults), for one method's instance and config directory, with the bench's image and
/// network.
pub fn template(bench: &Bench, who: Who, config_dir: &Path) -> Template {
    Template {
        image: bench.image.clone(),
        network: bench.network.clone(),
        ..Template::for_tests(&bench.instance(who), config_dir, UID)
    }
}

/// Renders a project as the manager would and writes its config file (0700 dir, 0600 file,
/// owned by UID 1000), with the JWT secret of `version`.
pub fn prepare(template: &Template, config_dir: &Path, project: &str, version: u32) -> Rendered {
    let id = ProjectId::parse(project).expect("a valid bench project id");
    let file = SpecFile::new(
        Secret::new(secret(project, version)),
        Secret::new(format!("pw-{project}")),
    );
    let spec = Spec::from_file(id.clone(), file).expect("a valid bench spec");
    let rendered = render::render(&spec, template);
    ConfigDir::new(config_dir, UID)
        .write(&id, &rendered.config)
        .expect("writing a rendered config");
    rendered
}

/// The Docker floor through the API: create + start with the manager's own runtime code.
pub struct Floor {
    runtime: DockerRuntime,
}

impl Floor {
    /// The floor's Docker client: at `docker_host` (the counting proxy, when the manager it is
    /// compared with goes through it too), or the local socket.
    pub async fn new(docker_host: Option<&str>) -> Floor {
        let runtime = DockerRuntime::new(docker_host);
        runtime.ping().await.expect("Docker answers");
        Floor { runtime }
    }

    pub async fn create_start(&self, spec: &ContainerSpec) -> Result<String, String> {
        let id = self
            .runtime
            .create(spec)
            .await
            .map_err(|e| format!("create: {e}"))?;
        self.runtime
            .start(&id)
            .await
            .map_err(|e| format!("start: {e}"))?;
        Ok(id)
    }

    pub async fn signal(&self, container: &str, signal: &str) -> Result<(), String> {
        self.runtime
            .signal(container, signal)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `docker run -d` arguments for the same container. The only difference the CLI forces: its
/// `--health-cmd` is a `CMD-SHELL` test (run through `/bin/sh -c`) where the manager's is `CMD`;
/// it first runs 30 s after start, long after every measurement here ends.
pub fn run_args(spec: &ContainerSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        spec.name.clone(),
        "--network".into(),
        spec.network.clone(),
        "--user".into(),
        spec.user.clone(),
        "--read-only".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--security-opt".into(),
        "no-new-privileges".into(),
        "--memory".into(),
        format!("{}b", spec.memory_bytes),
        "--pids-limit".into(),
        spec.pids_limit.to_string(),
        "--restart".into(),
        "unless-stopped".into(),
        "-v".into(),
        format!("{}:{CONFIG_MOUNT}:ro", spec.config_source.display()),
    ];
    for (path, options) in &spec.tmpfs {
        args.push("--tmpfs".into());
        args.push(format!("{path}:{options}"));
    }
    for (key, value) in &spec.labels {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    let test = spec
        .healthcheck
        .iter()
        .skip(1)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    args.extend([
        "--health-cmd".into(),
        test,
        "--health-interval".into(),
        format!("{}s", spec.healthcheck_interval_secs),
        "--health-timeout".into(),
        "5s".into(),
        "--health-retries".into(),
        "3".into(),
        "--health-start-period".into(),
        "5s".into(),
        spec.image.clone(),
    ]);
    args
}

/// What the seed's `postgrest-spawn.sh` does for one project, minus the config generation
/// (done before the clock starts): `docker run -d`, then wait until PostgREST answers. The seed
/// waits for Docker's health status (a 30 s interval); this waits for `/ready` (serving: logged
/// in to its database) directly, polling every 10 ms, which only makes the baseline faster.
const SPAWN_ONE: &str = r#"#!/usr/bin/env bash
# spawn-one.sh <args-file>: docker run -d with the arguments in the file (one per line), then
# wait up to 60 s until the container answers GET /ready on port 3001 (it serves).
set -euo pipefail
mapfile -t args <"$1"
name="${args[3]}"
network="${args[5]}"
docker "${args[@]}" >/dev/null
ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$name")"
for _ in $(seq 1 6000); do
    if { exec 3<>"/dev/tcp/$ip/3001"; } 2>/dev/null; then
        printf 'GET /ready HTTP/1.0\r\n\r\n' >&3
        status=""
        read -r _ status _ <&3 || true
        exec 3<&- 3>&-
        if [ "$status" = "200" ]; then
            exit 0
        fi
    fi
    sleep 0.01
done
echo "spawn-one: $name did not answer" >&2
exit 1
"#;

/// Writes the spawn script and one args file per project; returns the `xargs` input.
pub fn script_inputs(dir: &Path, specs: &[ContainerSpec]) -> (PathBuf, String) {
    let script = dir.join("spawn-one.sh");
    std::fs::write(&script, SPAWN_ONE).expect("writing spawn-one.sh");
    let mut input = String::new();
    for spec in specs {
        let file = dir.join(format!("{}.args", spec.name));
        std::fs::write(&file, run_args(spec).join("\n") + "\n").expect("writing an args file");
        input.push_str(&file.display().to_string());
        input.push('\n');
    }
    (script, input)
}

/// A compose file with the same containers (JSON, which YAML parsers read). The network is
/// the bench's, declared external, so compose creates none.
pub fn compose_file(network: &str, specs: &[ContainerSpec]) -> String {
    let mut services = serde_json::Map::new();
    for spec in specs {
        let labels: serde_json::Map<String, serde_json::Value> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let service = serde_json::json!({
            "image": spec.image,
            "container_name": spec.name,
            "user": spec.user,
            "read_only": true,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": spec.memory_bytes,
            "pids_limit": spec.pids_limit,
            "restart": "unless-stopped",
            "tmpfs": spec.tmpfs.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>(),
            "volumes": [format!("{}:{CONFIG_MOUNT}:ro", spec.config_source.display())],
            "labels": labels,
            "healthcheck": {
                "test": spec.healthcheck,
                "interval": format!("{}s", spec.healthcheck_interval_secs),
                "timeout": "5s",
                "retries": 3,
                "start_period": "5s",
            },
            "networks": [network],
        });
        services.insert(spec.name.clone(), service);
    }
    let file = serde_json::json!({
        "version": "2.4",
        "services": services,
        "networks": { network: { "external": true } },
    });
    serde_json::to_string_pretty(&file).expect("JSON")
}
