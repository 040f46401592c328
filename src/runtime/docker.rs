//! The Docker implementation of [`Runtime`], on bollard.
//!
//! bollard speaks a newer API than Debian's Docker 20.10 (1.41), so the client negotiates the
//! version before anything else; without that every call fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings, EventActor,
    EventMessage, HealthConfig, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::{
    docker_logs, ContainerInfo, Event, EventStream, Health, LineStream, LogCursor, Runtime,
    RuntimeError, State,
};
use crate::render::{
    ContainerSpec, CONFIG_MOUNT, LABEL_LEASE_HOLDER, LABEL_MANAGED_BY, LABEL_PROJECT, MANAGED_BY,
};
use crate::spec::ProjectId;

const SECOND_NS: i64 = 1_000_000_000;

/// A Docker daemon, reached the way the `docker` CLI would (`DOCKER_HOST` or the local socket).
///
/// The client is made on first use and made again after a failure to make it: bollard refuses
/// to build a client for a socket file that does not exist yet, and the manager must start
/// (and wait) while Docker is down.
pub struct DockerRuntime {
    host: Option<String>,
    client: Mutex<Option<Docker>>,
    /// Whether the daemon stamps its logs with our clock, as found by the last [`Runtime::ping`]:
    /// then a log cursor is our clock's now instead of a call (`docker_logs`).
    shares_clock: AtomicBool,
}

impl DockerRuntime {
    /// A client for `host` (a `DOCKER_HOST` value), or for `DOCKER_HOST` / the local socket.
    /// It does not talk to the daemon yet; the API version is negotiated by
    /// [`Runtime::ping`], which the loop calls before anything else and after every outage.
    pub fn new(host: Option<&str>) -> DockerRuntime {
        DockerRuntime {
            host: host.map(str::to_owned),
            client: Mutex::new(None),
            shares_clock: AtomicBool::new(false),
        }
    }

    /// Whether the last [`Runtime::ping`] found the daemon stamping its logs with our clock.
    pub fn shares_clock(&self) -> bool {
        self.shares_clock.load(Ordering::Relaxed)
    }

    /// The client, for the Swarm runtime, which talks to the same daemon.
    pub(super) fn client(&self) -> Result<Docker, RuntimeError> {
        self.docker()
    }

    fn docker(&self) -> Result<Docker, RuntimeError> {
        let mut client = self.client.lock().expect("never poisoned");
        if let Some(docker) = client.as_ref() {
            return Ok(docker.clone());
        }
        let docker = match &self.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(map_error)?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    /// Whether the daemon is reached on a Unix socket, as bollard decides: our host, else
    /// `DOCKER_HOST`, else the local socket. One on another machine may keep a clock close to
    /// ours, but not ours.
    fn on_unix_socket(&self) -> bool {
        let host = self
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok());
        host.is_none_or(|host| host.starts_with("unix://"))
    }

    /// All containers, running or not, that match Docker's list `filters`.
    async fn list_where(
        &self,
        filters: HashMap<&str, Vec<String>>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker()?
            .list_containers(Some(options))
            .await
            .map_err(map_error)?;
        Ok(summaries.into_iter().map(info).collect())
    }
}

/// The one place where bollard's errors become ours.
pub fn map_error(error: BollardError) -> RuntimeError {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => {
            let _ = message;
            RuntimeError::NotFound
        }
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(message),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Other(format!("{status_code}: {message}")),
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_) => RuntimeError::Unavailable(error.to_string()),
        other => RuntimeError::Other(other.to_string()),
    }
}

fn state(summary: Option<&ContainerSummaryStateEnum>) -> State {
    match summary {
        Some(ContainerSummaryStateEnum::CREATED) => State::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => State::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => State::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => State::Restarting,
        Some(ContainerSummaryStateEnum::REMOVING | ContainerSummaryStateEnum::STOPPING) => {
            State::Removing
        }
        Some(ContainerSummaryStateEnum::DEAD) => State::Dead,
        Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::EMPTY) | None => {
            State::Exited
        }
    }
}

/// A health change carries its new status in the action (`health_status: healthy`); any other
/// event names the container to look at again (a creation or a start with its project, from
/// the container's labels, which come as the actor's attributes); one without an actor says
/// "look at everything".
fn event_of(message: EventMessage) -> Event {
    let Some(EventActor {
        id: Some(id),
        attributes,
    }) = message.actor
    else {
        return Event::Changed;
    };
    let health = match message.action.as_deref() {
        Some("health_status: healthy") => Health::Healthy,
        Some("health_status: unhealthy") => Health::Unhealthy,
        Some("health_status: starting") => Health::Starting,
        action => {
            let created_for = match action {
                Some("create" | "start") => attributes
                    .as_ref()
                    .and_then(|a| a.get(LABEL_PROJECT))
                    .and_then(|p| ProjectId::parse(p).ok()),
                _ => None,
            };
            return Event::Container { id, created_for };
        }
    };
    Event::Health { id, health }
}

/// API 1.41 has no health field in the list: the status text says `(healthy)`,
/// `(unhealthy)` or `(health: starting)`.
fn health(status: Option<&str>) -> Health {
    match status {
        Some(s) if s.ends_with("(healthy)") => Health::Healthy,
        Some(s) if s.ends_with("(unhealthy)") => Health::Unhealthy,
        Some(s) if s.ends_with("(health: starting)") => Health::Starting,
        _ => Health::None,
    }
}

fn info(summary: ContainerSummary) -> ContainerInfo {
    let ip = summary
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|networks| {
            networks
                .into_values()
                .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
        })
        .and_then(|ip| ip.parse().ok());
    ContainerInfo {
        id: summary.id.unwrap_or_default(),
        name: summary
            .names
            .and_then(|names| names.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        labels: summary.labels.unwrap_or_default().into_iter().collect(),
        state: state(summary.state.as_ref()),
        health: health(summary.status.as_deref()),
        exit_code: exit_code(summary.status.as_deref()),
        ip,
        tasks: None,
    }
}

/// The list's status text carries the last exit code: `Exited (1) 3 seconds ago`,
/// `Restarting (1) 2 seconds ago`.
fn exit_code(status: Option<&str>) -> Option<i64> {
    let status = status?;
    if !(status.starts_with("Exited (") || status.starts_with("Restarting (")) {
        return None;
    }
    let (_, rest) = status.split_once('(')?;
    let (code, _) = rest.split_once(')')?;
    code.parse().ok()
}

fn label_filters(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let bind = format!("{}:{CONFIG_MOUNT}:ro", spec.config_source.display());
    let host_config = HostConfig {
        binds: Some(vec![bind]),
        network_mode: Some(spec.network.clone()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_swap_bytes),
        nano_cpus: Some(spec.nano_cpus),
        pids_limit: Some(spec.pids_limit),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(spec.log_options.clone().into_iter().collect()),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        // PostgREST exits on SIGTERM (v16 drains requests first); `stop` waits this long
        // before SIGKILL, also for a `docker stop` by hand.
        stop_signal: Some("SIGTERM".into()),
        stop_timeout: Some(i64::try_from(spec.stop_grace_secs).unwrap_or(i64::MAX)),
        // With `PGM_HEALTHCHECK_SECS=0` the test is `NONE` (`render.rs`): no check, and
        // Docker takes an interval of 0 as "the default", ignored with it.
        healthcheck: Some(HealthConfig {
            test: Some(spec.healthcheck.clone()),
            interval: Some(spec.healthcheck_interval_secs as i64 * SECOND_NS),
            timeout: Some(5 * SECOND_NS),
            retries: Some(3),
            start_period: Some(5 * SECOND_NS),
            start_interval: None,
        }),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                EndpointSettings {
                    aliases: (!spec.aliases.is_empty()).then(|| spec.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        // Negotiation asks the daemon for its version and lowers ours to match (clones share
        // the version), so this both checks reachability and survives a daemon downgrade.
        let docker = self
            .docker()?
            .clone()
            .negotiate_version()
            .await
            .map_err(map_error)?;
        // Checked again after every outage: the daemon that comes back may be another one.
        let shares_clock = self.on_unix_socket() && docker_logs::shares_clock(&docker).await;
        self.shares_clock.store(shares_clock, Ordering::Relaxed);
        Ok(())
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .docker()?
            .inspect_network(name, None)
            .await
            .map_err(map_error)
        {
            Ok(_) => return Ok(()),
            Err(RuntimeError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            ..Default::default()
        };
        match self
            .docker()?
            .create_network(request)
            .await
            .map_err(map_error)
        {
            // Created concurrently by someone else: fine.
            Ok(_) | Err(RuntimeError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.list_where(HashMap::from([("label", label_filters(labels))]))
            .await
    }

    async fn find_by_name(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        // The name filter is an unanchored regular expression; anchor it and check exactly.
        let filters = HashMap::from([("name", vec![format!("^/{name}$")])]);
        let listed = self.list_where(filters).await?;
        listed
            .into_iter()
            .find(|c| c.name == name)
            .ok_or(RuntimeError::NotFound)
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        // The list call filtered by id: the daemon looks at that container only (it resolves
        // ids before it walks anything), and the answer has the listing's shape, so the
        // confirmed container reads exactly as a listed one would.
        let filters = HashMap::from([("id", vec![id.to_owned()])]);
        let listed = self.list_where(filters).await?;
        listed
            .into_iter()
            .find(|c| c.id == id)
            .ok_or(RuntimeError::NotFound)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker()?
            .create_container(Some(options), create_body(spec))
            .await
            .map_err(map_error)?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker()?
            .start_container(id, None)
            .await
            .map_err(map_error)
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        self.docker()?
            .kill_container(id, Some(options))
            .await
            .map_err(map_error)
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // Without `t`, Docker waits the container's own StopTimeout (the grace it was created
        // with) between SIGTERM and SIGKILL; a container already stopped answers 304, fine.
        let stop = StopContainerOptionsBuilder::default().build();
        self.docker()?
            .stop_container(id, Some(stop))
            .await
            .map_err(map_error)?;
        // Not forced: if it runs again (started by hand meanwhile), this is a conflict and the
        // action is retried, with a graceful stop again.
        let options = RemoveContainerOptionsBuilder::default()
            .force(false)
            .build();
        self.docker()?
            .remove_container(id, Some(options))
            .await
            .map_err(map_error)
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        let options = RenameContainerOptionsBuilder::default().name(name).build();
        self.docker()?
            .rename_container(id, options)
            .await
            .map_err(map_error)
    }

    /// The marker is a volume: names are unique per daemon, labels cannot change, creating an
    /// existing name returns the existing one (so two managers racing both read the winner),
    /// and unlike a network it takes no address pool.
    async fn claim(&self, name: &str, holder: &str) -> Result<Option<String>, RuntimeError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(HashMap::from([
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
                (LABEL_LEASE_HOLDER.to_owned(), holder.to_owned()),
            ])),
            ..Default::default()
        };
        self.docker()?
            .create_volume(request)
            .await
            .map_err(map_error)?;
        let volume = self
            .docker()?
            .inspect_volume(name)
            .await
            .map_err(map_error)?;
        let found = volume
            .labels
            .get(LABEL_LEASE_HOLDER)
            .cloned()
            .unwrap_or_default();
        Ok((found != holder).then_some(found))
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker()?.logs(id, Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            out.push_str(&chunk.map_err(map_error)?.to_string());
        }
        Ok(out)
    }

    async fn log_cursor(&self, id: &str) -> Result<LogCursor, RuntimeError> {
        if self.shares_clock() {
            return Ok(LogCursor(docker_logs::now()));
        }
        docker_logs::cursor(&self.docker()?, id).await
    }

    fn log_after(&self, id: &str, cursor: LogCursor) -> LineStream {
        match self.docker() {
            Ok(docker) => docker_logs::after(&docker, id, cursor),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }

    fn events(&self, labels: &BTreeMap<String, String>) -> EventStream {
        // Every change of a container's state, name or health: the loop looks at the
        // container named instead of listing them all (and lists them all only now and
        // then, as a safety net). `kill` is left out on purpose: every reload signal is one,
        // and it changes nothing.
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", label_filters(labels)),
            (
                "event",
                [
                    "create",
                    "start",
                    "stop",
                    "die",
                    "oom",
                    "destroy",
                    "pause",
                    "unpause",
                    "rename",
                    "health_status",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        match self.docker() {
            Ok(docker) => Box::pin(
                docker
                    .events(Some(options))
                    .map(|event| event.map(event_of).map_err(map_error)),
            ),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_events_carry_the_new_status() {
        let message = |action: &str, id: Option<&str>| EventMessage {
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: id.map(str::to_owned),
                attributes: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            event_of(message("health_status: healthy", Some("abc"))),
            Event::Health {
                id: "abc".into(),
                health: Health::Healthy
            }
        );
        assert_eq!(
            event_of(message("health_status: unhealthy", Some("abc"))),
            Event::Health {
                id: "abc".into(),
                health: Health::Unhealthy
            }
        );
        assert_eq!(
            event_of(message("health_status: healthy", None)),
            Event::Changed
        );
        let named = |created_for: Option<&str>| Event::Container {
            id: "abc".into(),
            created_for: created_for.map(|p| ProjectId::parse(p).unwrap()),
        };
        assert_eq!(event_of(message("die", Some("abc"))), named(None));
        assert_eq!(event_of(message("destroy", Some("abc"))), named(None));
        let mut started = message("start", Some("abc"));
        started.actor.as_mut().unwrap().attributes =
            Some(HashMap::from([(LABEL_PROJECT.to_owned(), "p1".to_owned())]));
        assert_eq!(event_of(started), named(Some("p1")));
        assert_eq!(event_of(message("die", None)), Event::Changed);
    }

    #[test]
    fn exit_codes_from_status_text() {
        assert_eq!(exit_code(Some("Exited (1) 3 seconds ago")), Some(1));
        assert_eq!(exit_code(Some("Restarting (137) 1 second ago")), Some(137));
        assert_eq!(exit_code(Some("Up 3 seconds (healthy)")), None);
        assert_eq!(exit_code(Some("Created")), None);
        assert_eq!(exit_code(None), None);
    }

    #[test]
    fn health_from_status_text() {
        assert_eq!(
            health(Some("Up 3 seconds (health: starting)")),
            Health::Starting
        );
        assert_eq!(health(Some("Up 3 minutes (healthy)")), Health::Healthy);
        assert_eq!(health(Some("Up 3 minutes (unhealthy)")), Health::Unhealthy);
        assert_eq!(health(Some("Exited (0) 2 seconds ago")), Health::None);
    }

    #[test]
    fn status_codes_map_once() {
        let server = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: "m".into(),
        };
        assert_eq!(map_error(server(404)), RuntimeError::NotFound);
        assert_eq!(map_error(server(409)), RuntimeError::Conflict("m".into()));
        assert_eq!(map_error(server(500)), RuntimeError::Other("500: m".into()));
        assert!(matches!(
            map_error(BollardError::RequestTimeoutError),
            RuntimeError::Unavailable(_)
        ));
    }
}
