//! The Swarm implementation of [`Runtime`] (`PGM_ORCHESTRATOR=swarm`): one replicated service
//! `postgrest-<id>` per project on an attachable overlay network, instead of one container.
//!
//! - The rendered config reaches the task as a Swarm secret, `pgm-<id>-<digest>` (the digest an
//!   HMAC of the config under the manager's spec key, so the name says nothing about a
//!   password), mounted read-only at `CONFIG_MOUNT/CONFIG_FILE`: never a host path, which a
//!   task on another node would not have. Secrets cannot change, so a new config is a new
//!   secret and a service update ([`Runtime::update`]) that swaps it, `start-first`, with
//!   `failure_action = rollback`, gated by a health check on PostgREST's `/ready`.
//! - A service is listed in the container's shape (`ContainerInfo`): its id, name and labels;
//!   `Running` (or `Restarting` while Swarm rolls an update out or back); health `Healthy`
//!   once a task runs. Swarm reports a task with a health check `starting` until the check
//!   passes and `running` after, so "a task runs" is "a PostgREST serves": the manager, in
//!   the host's namespace, cannot reach the overlay network to probe it.
//! - Events: Docker's service events, and the container events of this node's tasks (they
//!   carry the project's labels), all as "look again"; the resync lists services.
//!
//! Errors go through [`super::docker::map_error`], the one place they are mapped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine as _;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, EventMessage, HealthConfig, Limit, Mount,
    MountTmpfsOptions, MountType, NetworkAttachmentConfig, NetworkCreateRequest, SecretSpec,
    Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum,
    ServiceUpdateStatusStateEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectServiceOptionsBuilder, ListSecretsOptionsBuilder,
    ListServicesOptionsBuilder, ListTasksOptionsBuilder, UpdateServiceOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::docker::{map_error, DockerRuntime};
use super::{
    ContainerInfo, Event, EventStream, Health, LineStream, LogCursor, Orchestrator, Runtime,
    RuntimeError, State, Tasks,
};
use crate::render::{ContainerSpec, CONFIG_FILE, CONFIG_MOUNT, LABEL_PROJECT};
use crate::spec_key::SpecKey;
use crate::state_dir::nofollow;

const SECOND_NS: i64 = 1_000_000_000;
/// How often a task's health check runs. Swarm starts routing to a task, and a rolling
/// update moves on, only once the check has passed, so this bounds both (Docker 20.10's API
/// has no faster start interval). One `wget` of a loopback URL per task every 2 s.
const HEALTH_INTERVAL_NS: i64 = 2 * SECOND_NS;
/// How often an update in progress is looked at.
const UPDATE_POLL: Duration = Duration::from_millis(200);
/// The longest an update is waited for: Swarm gives up on a task that never turns healthy
/// well before (start period, then three failed checks) and rolls back.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
/// The first part of every secret's name.
const SECRET_PREFIX: &str = "pgm";

/// `/ready` on PostgREST's admin port, with whichever client the image has (curl in
/// production, busybox wget in the test image). `/live` (the image's own check) answers
/// before the database is reached; a rollout gated on it would move on to a task that does
/// not serve.
const READY_CHECK: &str = "if command -v curl >/dev/null 2>&1; then \
curl -fsS -o /dev/null --noproxy '*' --max-time 3 http://127.0.0.1:${ADMIN_PORT:-3001}/ready; \
else timeout 3 wget -q -Y off -O /dev/null http://127.0.0.1:${ADMIN_PORT:-3001}/ready; fi";

/// How clients on the overlay network reach a service (`PGM_SWARM_ENDPOINT_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndpointMode {
    /// One virtual IP per service, balanced by the kernel's IPVS (Swarm's default).
    #[default]
    VirtualIp,
    /// The service name resolves to its running tasks' addresses: for kernels without
    /// IPVS, where a virtual IP answers "No route to host".
    DnsRoundRobin,
}

/// A Docker daemon that is a Swarm manager.
pub struct SwarmRuntime {
    docker: DockerRuntime,
    /// Keys the secrets' names: the config holds the database password.
    key: SpecKey,
    endpoint: EndpointMode,
}

impl SwarmRuntime {
    pub fn new(host: Option<&str>, key: SpecKey, endpoint: EndpointMode) -> SwarmRuntime {
        SwarmRuntime {
            docker: DockerRuntime::new(host),
            key,
            endpoint,
        }
    }

    fn client(&self) -> Result<Docker, RuntimeError> {
        self.docker.client()
    }

    /// The content-addressed secret name for a config text.
    fn secret_name(&self, project: &str, config: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.bytes()).expect("any key length");
        mac.update(config);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{SECRET_PREFIX}-{project}-{hex}")
    }

    /// Creates the secret holding the config that `spec` points at (already there: fine, its
    /// name is its content) and returns its id and name (a service names both).
    async fn ensure_secret(&self, spec: &ContainerSpec) -> Result<(String, String), RuntimeError> {
        let dir = spec.config_source.clone();
        let config = tokio::task::spawn_blocking(move || {
            let handle = nofollow::open_dir(&dir)?;
            use std::os::fd::AsFd;
            match nofollow::read_file(handle.as_fd(), CONFIG_FILE) {
                Ok(Some((bytes, _))) => Ok(bytes),
                Ok(None) => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the rendered config is missing",
                )),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        })
        .await
        .expect("never panics")
        .map_err(|e| RuntimeError::Other(format!("reading the rendered config: {e}")))?;
        let project = spec.labels.get(LABEL_PROJECT).cloned().unwrap_or_default();
        let name = self.secret_name(&project, &config);
        let mut labels: HashMap<String, String> = owner_only(&spec.labels);
        labels.insert(LABEL_PROJECT.to_owned(), project);
        let request = SecretSpec {
            name: Some(name.clone()),
            labels: Some(labels),
            data: Some(base64::engine::general_purpose::STANDARD.encode(&config)),
            ..Default::default()
        };
        match self
            .client()?
            .create_secret(request)
            .await
            .map_err(map_error)
        {
            Ok(created) => Ok((created.id, name)),
            Err(RuntimeError::Conflict(_)) => {
                let existing = self
                    .client()?
                    .inspect_secret(&name)
                    .await
                    .map_err(map_error)?;
                let id = existing
                    .id
                    .ok_or_else(|| RuntimeError::Other(format!("secret {name} has no id")))?;
                Ok((id, name))
            }
            Err(e) => Err(e),
        }
    }

    /// The services in the listing's shape, with their tasks: one more call for all of them.
    async fn with_tasks(&self, services: Vec<Service>) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        if !ids.is_empty() {
            let filters = HashMap::from([("service", ids)]);
            let options = ListTasksOptionsBuilder::default().filters(&filters).build();
            let tasks = self
                .client()?
                .list_tasks(Some(options))
                .await
                .map_err(map_error)?;
            for task in tasks {
                if let Some(service) = task.service_id.clone() {
                    by_service.entry(service).or_default().push(task);
                }
            }
        }
        Ok(services
            .into_iter()
            .map(|s| {
                let tasks =
                    s.id.as_ref()
                        .and_then(|id| by_service.get(id))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                info(s, tasks)
            })
            .collect())
    }

    async fn service(&self, id: &str) -> Result<Service, RuntimeError> {
        let options = InspectServiceOptionsBuilder::default().build();
        self.client()?
            .inspect_service(id, Some(options))
            .await
            .map_err(map_error)
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Task>, RuntimeError> {
        let filters = HashMap::from([("service", vec![service.to_owned()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        self.client()?
            .list_tasks(Some(options))
            .await
            .map_err(map_error)
    }

    /// Removes the project's secrets that neither the service's spec nor a task Swarm
    /// still wants running uses. One in use after all (a race with Swarm) stays for the
    /// next update or removal.
    async fn remove_unused_secrets(
        &self,
        project: &str,
        instance_labels: &HashMap<String, String>,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let mut labels: Vec<String> = instance_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.push(format!("{LABEL_PROJECT}={project}"));
        let filters = HashMap::from([("label", labels)]);
        let options = ListSecretsOptionsBuilder::default()
            .filters(&filters)
            .build();
        let secrets = self
            .client()?
            .list_secrets(Some(options))
            .await
            .map_err(map_error)?;
        for secret in secrets {
            let (Some(id), Some(name)) = (secret.id, secret.spec.and_then(|s| s.name)) else {
                continue;
            };
            if keep.contains(&name) {
                continue;
            }
            match self.client()?.delete_secret(&id).await.map_err(map_error) {
                Ok(()) | Err(RuntimeError::NotFound) => {}
                Err(e) => tracing::debug!(secret = %name, error = %e, "secret kept for now"),
            }
        }
        Ok(())
    }

    /// Waits until every task Swarm wants running runs with `secret`, or says why not.
    async fn rolled_out(&self, id: &str, secret: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + UPDATE_TIMEOUT;
        loop {
            let service = self.service(id).await?;
            let tasks = self.tasks(id).await?;
            let status = service.update_status.as_ref();
            let state = status.and_then(|s| s.state);
            let spec_has_secret = service_secrets(&service).iter().any(|s| s == secret);
            let tasks_have_secret = tasks_run_with(&tasks, replicas(&service), secret);
            let failed = |what: &str, after: &str| {
                let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
                let why = summarize(replicas(&service), &tasks)
                    .last_error
                    .map(|e| format!("; last task error: {e}"))
                    .unwrap_or_default();
                Err(RuntimeError::Other(format!(
                    "{what} ({message}){why}{after}"
                )))
            };
            match rollout(state, spec_has_secret, tasks_have_secret) {
                Rollout::InForce => return Ok(()),
                Rollout::Rolling => {}
                Rollout::RolledBack => {
                    return failed(
                        "Swarm rolled the update back",
                        "; the old tasks keep serving",
                    )
                }
                Rollout::Paused => return failed("Swarm paused the update", ""),
                Rollout::Replaced => {
                    return failed("the service was updated by someone else meanwhile", "")
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Other(format!(
                    "the update did not finish within {} s",
                    UPDATE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(UPDATE_POLL).await;
        }
    }

    fn service_spec(
        &self,
        spec: &ContainerSpec,
        (secret_id, secret): (&str, &str),
        restart_token: u64,
    ) -> ServiceSpec {
        let (uid, gid) = spec
            .user
            .split_once(':')
            .unwrap_or((&spec.user, &spec.user));
        let tmpfs = spec
            .tmpfs
            .keys()
            .map(|target| Mount {
                target: Some(target.clone()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(16 << 20),
                    // Swarm's tmpfs has no owner option: sticky and world-writable, as /tmp.
                    mode: Some(0o1777),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let container = TaskSpecContainerSpec {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some(spec.user.clone()),
            read_only: Some(true),
            mounts: Some(tmpfs),
            stop_signal: Some("SIGTERM".into()),
            stop_grace_period: Some(
                i64::try_from(spec.stop_grace_secs).unwrap_or(i64::MAX / SECOND_NS) * SECOND_NS,
            ),
            health_check: Some(HealthConfig {
                test: Some(vec!["CMD-SHELL".into(), READY_CHECK.into()]),
                interval: Some(HEALTH_INTERVAL_NS),
                timeout: Some(5 * SECOND_NS),
                retries: Some(3),
                start_period: Some(10 * SECOND_NS),
                start_interval: None,
            }),
            secrets: Some(vec![TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(format!("{CONFIG_MOUNT}/{CONFIG_FILE}")),
                    uid: Some(uid.to_owned()),
                    gid: Some(gid.to_owned()),
                    mode: Some(0o400),
                }),
                secret_name: Some(secret.to_owned()),
                secret_id: Some(secret_id.to_owned()),
            }]),
            capability_drop: Some(vec!["ALL".into()]),
            ..Default::default()
        };
        let update = ServiceSpecUpdateConfig {
            parallelism: Some(1),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            // A task that turns unhealthy within this long after it started counts as failed.
            monitor: Some(5 * SECOND_NS),
            max_failure_ratio: Some(0.0),
            delay: Some(0),
        };
        let rollback = ServiceSpecRollbackConfig {
            parallelism: Some(1),
            order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
            ..Default::default()
        };
        ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some(spec.nano_cpus),
                        memory_bytes: Some(spec.memory_bytes),
                        pids: Some(spec.pids_limit),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(SECOND_NS),
                    ..Default::default()
                }),
                placement: (!spec.placement.is_empty()).then(|| TaskSpecPlacement {
                    constraints: Some(spec.placement.clone()),
                    ..Default::default()
                }),
                force_update: Some(restart_token),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(spec.network.clone()),
                    aliases: (!spec.aliases.is_empty()).then(|| spec.aliases.clone()),
                    ..Default::default()
                }]),
                log_driver: Some(TaskSpecLogDriver {
                    name: Some("json-file".into()),
                    options: Some(spec.log_options.clone().into_iter().collect()),
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(match self.endpoint {
                    EndpointMode::VirtualIp => EndpointSpecModeEnum::VIP,
                    EndpointMode::DnsRoundRobin => EndpointSpecModeEnum::DNSRR,
                }),
                ports: None,
            }),
            update_config: Some(update),
            rollback_config: Some(rollback),
            // The network belongs in the task template; the service-level field is deprecated.
            networks: None,
        }
    }
}

/// The owner labels only (manager and instance), without the project's own.
fn owner_only(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    use crate::render::{LABEL_INSTANCE, LABEL_MANAGED_BY};
    labels
        .iter()
        .filter(|(k, _)| *k == LABEL_MANAGED_BY || *k == LABEL_INSTANCE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn replicas(service: &Service) -> u64 {
    service
        .spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|r| u64::try_from(r).ok())
        .unwrap_or(1)
}

fn spec_secrets(spec: Option<&TaskSpec>) -> Vec<String> {
    spec.and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.secrets.as_ref())
        .map(|s| s.iter().filter_map(|s| s.secret_name.clone()).collect())
        .unwrap_or_default()
}

/// Whether the `replicas` tasks Swarm wants running all run (their `/ready` check passed)
/// with `secret`.
fn tasks_run_with(tasks: &[Task], replicas: u64, secret: &str) -> bool {
    let wanted: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .collect();
    wanted.len() as u64 == replicas
        && wanted.iter().all(|t| {
            t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
                && task_secrets(t).iter().any(|s| s == secret)
        })
}

/// Where a rollout of a new secret stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollout {
    /// The service's spec names the secret and every task Swarm wants running runs with it.
    InForce,
    /// Not yet: tasks starting, or Swarm not at it yet.
    Rolling,
    /// Swarm gave up on the new tasks and put the previous spec back.
    RolledBack,
    /// Swarm stopped the rollout of this spec half way.
    Paused,
    /// The spec names another secret and no rollback put it there: someone else updated it.
    Replaced,
}

/// Classifies a rollout from the service's `UpdateStatus.State`, whether its spec names the
/// secret now, and whether its tasks all run with it.
///
/// The status describes the service's *last* update, which is not always this one: Swarm
/// resets it (to none) when an update changes the spec, but an update that finds the spec
/// already as wanted sends nothing (a restarted manager whose record of the loaded config
/// is gone), so a `rollback_completed` of an earlier, failed update is still there. What
/// decides is the spec and the tasks: tasks that run the secret are in force whatever the
/// status says, and a rollback counts against this update only when it took the secret out
/// of the spec (Swarm swaps the previous spec back in when it starts rolling back).
fn rollout(
    state: Option<ServiceUpdateStatusStateEnum>,
    spec_has_secret: bool,
    tasks_have_secret: bool,
) -> Rollout {
    use ServiceUpdateStatusStateEnum as S;
    if spec_has_secret && tasks_have_secret {
        return Rollout::InForce;
    }
    match (state, spec_has_secret) {
        (Some(S::ROLLBACK_STARTED | S::ROLLBACK_PAUSED | S::ROLLBACK_COMPLETED), false) => {
            Rollout::RolledBack
        }
        (_, false) => Rollout::Replaced,
        (Some(S::PAUSED), true) => Rollout::Paused,
        (_, true) => Rollout::Rolling,
    }
}

fn task_secrets(task: &Task) -> Vec<String> {
    spec_secrets(task.spec.as_ref())
}

fn service_secrets(service: &Service) -> Vec<String> {
    spec_secrets(service.spec.as_ref().and_then(|s| s.task_template.as_ref()))
}

/// A service in the listing's shape, with a summary of `tasks` (its own, any order).
fn info(service: Service, tasks: &[Task]) -> ContainerInfo {
    use ServiceUpdateStatusStateEnum as S;
    let summary = summarize(replicas(&service), tasks);
    let spec = service.spec.unwrap_or_default();
    let rolling = matches!(
        service.update_status.as_ref().and_then(|u| u.state),
        Some(S::UPDATING | S::ROLLBACK_STARTED)
    );
    let running = service
        .service_status
        .as_ref()
        .and_then(|s| s.running_tasks)
        .unwrap_or(0);
    ContainerInfo {
        id: service.id.unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
        state: if rolling {
            State::Restarting
        } else {
            State::Running
        },
        health: if running > 0 {
            Health::Healthy
        } else {
            Health::Starting
        },
        ip: None,
        exit_code: None,
        tasks: Some(summary),
    }
}

/// Every event is a hint to look again: a service's tasks live in the service listing.
fn event_of(_: EventMessage) -> Event {
    Event::Changed
}

fn unsupported(what: &str) -> RuntimeError {
    RuntimeError::Other(format!("{what} is not available on Swarm services"))
}

impl Runtime for SwarmRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await
    }

    /// An overlay network, attachable (so a proxy or a test client started with `docker
    /// run` can join it). A network of that name that is not an overlay is an error: a
    /// service cannot join a local bridge.
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .client()?
            .inspect_network(name, None)
            .await
            .map_err(map_error)
        {
            Ok(network) if network.driver.as_deref() == Some("overlay") => return Ok(()),
            Ok(network) => {
                return Err(RuntimeError::Other(format!(
                    "network {name} exists with driver {}; Swarm services need an overlay network",
                    network.driver.unwrap_or_default()
                )))
            }
            Err(RuntimeError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            ..Default::default()
        };
        match self
            .client()?
            .create_network(request)
            .await
            .map_err(map_error)
        {
            Ok(_) | Err(RuntimeError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([(
            "label",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .status(true)
            .build();
        let services = self
            .client()?
            .list_services(Some(options))
            .await
            .map_err(map_error)?;
        self.with_tasks(services).await
    }

    async fn find_by_name(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        let service = self.service(name).await?;
        let tasks = self.tasks(service.id.as_deref().unwrap_or(name)).await?;
        let found = info(service, &tasks);
        if found.name == name {
            Ok(found)
        } else {
            // Inspect also takes an id or an id prefix: only the exact name counts.
            Err(RuntimeError::NotFound)
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        // Inspect has no running-task count: the list, filtered by id, has.
        let filters = HashMap::from([("id", vec![id.to_owned()])]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .status(true)
            .build();
        let services = self
            .client()?
            .list_services(Some(options))
            .await
            .map_err(map_error)?;
        self.with_tasks(services)
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(RuntimeError::NotFound)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let (secret_id, secret) = self.ensure_secret(spec).await?;
        let created = self
            .client()?
            .create_service(self.service_spec(spec, (&secret_id, &secret), 0), None)
            .await
            .map_err(map_error)?;
        created
            .id
            .ok_or_else(|| RuntimeError::Other("Docker created a service without an id".into()))
    }

    /// A service runs once created; there is nothing to start.
    async fn start(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn signal(&self, _id: &str, signal: &str) -> Result<(), RuntimeError> {
        Err(unsupported(&format!("sending {signal}")))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let service = match self.service(id).await {
            Ok(service) => service,
            Err(RuntimeError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let labels = service
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        // Swarm stops the tasks itself, each with its stop grace (SIGTERM, then SIGKILL).
        match self.client()?.delete_service(id).await.map_err(map_error) {
            Ok(()) | Err(RuntimeError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if let Some(project) = labels.get(LABEL_PROJECT) {
            let owner = owner_only(&labels.clone().into_iter().collect());
            self.remove_unused_secrets(project, &owner, &[]).await?;
        }
        Ok(())
    }

    async fn rename(&self, _id: &str, _name: &str) -> Result<(), RuntimeError> {
        Err(unsupported("renaming"))
    }

    fn events(&self, labels: &BTreeMap<String, String>) -> EventStream {
        let label_filter: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let containers = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", label_filter),
            (
                "event",
                ["die", "destroy", "oom", "stop", "health_status", "start"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        // Service events carry no labels to filter on: every service event is a hint.
        let services = HashMap::from([("type", vec!["service".to_owned()])]);
        match self.client() {
            Ok(docker) => {
                let a = docker
                    .events(Some(
                        EventsOptionsBuilder::default().filters(&containers).build(),
                    ))
                    .map(|e| e.map(event_of).map_err(map_error));
                let b = docker
                    .events(Some(
                        EventsOptionsBuilder::default().filters(&services).build(),
                    ))
                    .map(|e| e.map(event_of).map_err(map_error));
                Box::pin(futures_util::stream::select(a, b))
            }
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }

    async fn claim(&self, name: &str, holder: &str) -> Result<Option<String>, RuntimeError> {
        self.docker.claim(name, holder).await
    }

    async fn log_cursor(&self, _id: &str) -> Result<LogCursor, RuntimeError> {
        Err(unsupported("following a log"))
    }

    fn log_after(&self, _id: &str, _cursor: LogCursor) -> LineStream {
        Box::pin(futures_util::stream::once(async {
            Err(unsupported("following a log"))
        }))
    }

    /// What an operator needs to know about a service that does not serve, in one line:
    /// its tasks (running of desired, where) and the last task error Swarm recorded.
    async fn logs(&self, id: &str, _lines: usize) -> Result<String, RuntimeError> {
        let service = self.service(id).await?;
        let tasks = self.tasks(id).await?;
        Ok(describe(&summarize(replicas(&service), &tasks)))
    }

    fn orchestrator(&self) -> Orchestrator {
        Orchestrator::Swarm
    }

    async fn update(
        &self,
        id: &str,
        spec: &ContainerSpec,
        restart_token: u64,
    ) -> Result<(), RuntimeError> {
        let (secret_id, secret) = self.ensure_secret(spec).await?;
        let current = self.service(id).await?;
        let wanted = self.service_spec(spec, (&secret_id, &secret), restart_token);
        let current_spec = current.spec.clone().unwrap_or_default();
        let same = current_spec.labels == wanted.labels
            && service_secrets(&current) == [secret.clone()]
            && current_spec
                .task_template
                .as_ref()
                .and_then(|t| t.force_update)
                .unwrap_or(0)
                == restart_token
            && current_spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.as_deref())
                == Some(spec.image.as_str());
        if !same {
            let version = current
                .version
                .and_then(|v| v.index)
                .ok_or_else(|| RuntimeError::Other("the service has no version".into()))?;
            let options = UpdateServiceOptionsBuilder::default()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                .build();
            self.client()?
                .update_service(id, wanted, options, None)
                .await
                .map_err(map_error)?;
        }
        self.rolled_out(id, &secret).await?;
        // The old config's secret goes once no task Swarm wants running uses it.
        let project = spec.labels.get(LABEL_PROJECT).cloned().unwrap_or_default();
        let tasks = self.tasks(id).await?;
        let mut keep = vec![secret];
        for task in &tasks {
            if task.desired_state == Some(TaskState::RUNNING) {
                keep.extend(task_secrets(task));
            }
        }
        self.remove_unused_secrets(&project, &owner_only(&spec.labels), &keep)
            .await
    }
}

/// What the status shows of a service's tasks: running of desired, where, the last error.
fn summarize(desired: u64, tasks: &[Task]) -> Tasks {
    let running: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .collect();
    let nodes = running
        .iter()
        .filter_map(|t| t.node_id.as_deref())
        .map(|n| n[..n.len().min(12)].to_owned())
        .collect();
    let mut newest: Vec<&Task> = tasks.iter().collect();
    newest.sort_by_key(|t| t.updated_at.clone());
    let last_error = newest.iter().rev().find_map(|t| {
        let status = t.status.as_ref()?;
        let err = status.err.as_deref().filter(|e| !e.is_empty())?;
        let state = status.state.map(|s| s.to_string()).unwrap_or_default();
        Some(format!("{err} ({state})"))
    });
    Tasks {
        desired,
        running: running.len() as u64,
        nodes,
        last_error,
    }
}

/// `1/1 tasks running (node abc)`, with `; last task error: ...` when one failed.
fn describe(tasks: &Tasks) -> String {
    let mut words = format!("{}/{} tasks running", tasks.running, tasks.desired);
    if !tasks.nodes.is_empty() {
        words.push_str(&format!(" (node {})", tasks.nodes.join(", ")));
    }
    match &tasks.last_error {
        Some(error) => words.push_str(&format!("; last task error: {error}")),
        None if tasks.running == 0 => {
            words.push_str("; no task serves yet (waiting for its /ready health check)");
        }
        None => {}
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::TaskStatus;

    fn task(state: TaskState, err: Option<&str>, node: &str, at: &str) -> Task {
        Task {
            node_id: Some(node.into()),
            updated_at: Some(at.parse().unwrap()),
            status: Some(TaskStatus {
                state: Some(state),
                err: err.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tasks_are_described_with_the_last_error() {
        let tasks = [
            task(
                TaskState::FAILED,
                Some("task: non-zero exit (1)"),
                "n1",
                "2026-01-01T00:00:01Z",
            ),
            task(TaskState::RUNNING, None, "n2", "2026-01-01T00:00:02Z"),
        ];
        let summary = summarize(1, &tasks);
        assert_eq!(
            summary,
            Tasks {
                desired: 1,
                running: 1,
                nodes: vec!["n2".into()],
                last_error: Some("task: non-zero exit (1) (failed)".into()),
            }
        );
        assert_eq!(
            describe(&summary),
            "1/1 tasks running (node n2); last task error: task: non-zero exit (1) (failed)"
        );
        let starting = [task(
            TaskState::STARTING,
            None,
            "n1",
            "2026-01-01T00:00:01Z",
        )];
        assert_eq!(
            describe(&summarize(1, &starting)),
            "0/1 tasks running; no task serves yet (waiting for its /ready health check)"
        );
    }

    /// The doubt of issue 13: a `rollback_completed` left by an earlier, failed update must
    /// not be read as this update's failure once the config is in force; a rollback that
    /// took this update's secret out of the spec must.
    #[test]
    fn a_rollout_is_judged_by_its_spec_and_tasks_not_by_a_stale_status() {
        use Rollout::*;
        use ServiceUpdateStatusStateEnum as S;
        let check = |state, spec: bool, tasks: bool, expected: Rollout| {
            assert_eq!(
                rollout(state, spec, tasks),
                expected,
                "state {state:?}, spec names the secret: {spec}, tasks run it: {tasks}"
            );
        };
        // Just updated: Swarm reset the status; then it rolls and completes.
        check(None, true, false, Rolling);
        check(Some(S::UPDATING), true, false, Rolling);
        check(Some(S::UPDATING), true, true, InForce);
        check(Some(S::COMPLETED), true, true, InForce);
        check(None, true, true, InForce);
        // An earlier update rolled back to the spec that is wanted now, and nothing was sent
        // (the spec already matched): in force, not "rolled back".
        check(Some(S::ROLLBACK_COMPLETED), true, true, InForce);
        check(Some(S::ROLLBACK_PAUSED), true, true, InForce);
        // ... and while the tasks of that rollback still start: wait for them.
        check(Some(S::ROLLBACK_STARTED), true, false, Rolling);
        check(Some(S::ROLLBACK_COMPLETED), true, false, Rolling);
        // This update's new task never served: Swarm put the previous spec back.
        check(Some(S::ROLLBACK_STARTED), false, false, RolledBack);
        check(Some(S::ROLLBACK_PAUSED), false, false, RolledBack);
        check(Some(S::ROLLBACK_COMPLETED), false, false, RolledBack);
        // Paused on the way to this spec; a spec changed by someone else.
        check(Some(S::PAUSED), true, false, Paused);
        check(None, false, false, Replaced);
        check(Some(S::COMPLETED), false, false, Replaced);
    }

    #[test]
    fn tasks_run_with_the_secret_only_when_every_wanted_task_runs_it() {
        let task = |desired: TaskState, state: TaskState, secret: &str| Task {
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    secrets: Some(vec![TaskSpecContainerSpecSecrets {
                        secret_name: Some(secret.into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        use TaskState::{RUNNING, SHUTDOWN, STARTING};
        let new = task(RUNNING, RUNNING, "new");
        let old_going = task(SHUTDOWN, RUNNING, "old");
        assert!(tasks_run_with(&[new.clone(), old_going.clone()], 1, "new"));
        assert!(!tasks_run_with(
            &[task(RUNNING, STARTING, "new"), old_going],
            1,
            "new"
        ));
        assert!(!tasks_run_with(&[task(RUNNING, RUNNING, "old")], 1, "new"));
        assert!(!tasks_run_with(std::slice::from_ref(&new), 2, "new"));
        assert!(!tasks_run_with(&[], 1, "new"));
    }

    #[test]
    fn secret_names_are_keyed_and_content_addressed() {
        let a = SwarmRuntime::new(None, SpecKey::from_bytes([1; 32]), EndpointMode::VirtualIp);
        let b = SwarmRuntime::new(None, SpecKey::from_bytes([2; 32]), EndpointMode::VirtualIp);
        let name = a.secret_name("p1", b"jwt-secret = \"x\"");
        assert!(name.starts_with("pgm-p1-"), "{name}");
        assert_eq!(name.len(), "pgm-p1-".len() + 16);
        assert_eq!(name, a.secret_name("p1", b"jwt-secret = \"x\""));
        assert_ne!(name, a.secret_name("p1", b"jwt-secret = \"y\""));
        assert_ne!(name, b.secret_name("p1", b"jwt-secret = \"x\""));
    }

    #[test]
    fn a_rolling_service_is_restarting_and_healthy_once_a_task_runs() {
        use bollard::models::{ServiceServiceStatus, ServiceUpdateStatus};
        let service = |state: Option<ServiceUpdateStatusStateEnum>, running: u64| Service {
            id: Some("s1".into()),
            spec: Some(ServiceSpec {
                name: Some("postgrest-a".into()),
                ..Default::default()
            }),
            update_status: state.map(|state| ServiceUpdateStatus {
                state: Some(state),
                ..Default::default()
            }),
            service_status: Some(ServiceServiceStatus {
                running_tasks: Some(running),
                desired_tasks: Some(1),
                completed_tasks: None,
            }),
            ..Default::default()
        };
        let listed = info(service(None, 0), &[]);
        assert_eq!(
            (listed.state, listed.health),
            (State::Running, Health::Starting)
        );
        let listed = info(
            service(Some(ServiceUpdateStatusStateEnum::UPDATING), 1),
            &[],
        );
        assert_eq!(
            (listed.state, listed.health),
            (State::Restarting, Health::Healthy)
        );
        let listed = info(
            service(Some(ServiceUpdateStatusStateEnum::COMPLETED), 1),
            &[],
        );
        assert_eq!(
            (listed.state, listed.health),
            (State::Running, Health::Healthy)
        );
    }
}
