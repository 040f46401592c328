//! [`Engine`]: the runtime `PGM_ORCHESTRATOR` chose (containers on Docker, or Swarm services),
//! one type for `main` and the CLI, each call forwarded to the chosen one.

use std::collections::BTreeMap;

use super::docker::DockerRuntime;
use super::swarm::{EndpointMode, SwarmRuntime};
use super::{
    ContainerInfo, EventStream, LineStream, LogCursor, Orchestrator, Runtime, RuntimeError,
};
use crate::render::ContainerSpec;
use crate::spec_key::SpecKey;

pub enum Engine {
    Docker(DockerRuntime),
    Swarm(SwarmRuntime),
}

impl Engine {
    /// The runtime for `orchestrator` on the daemon at `host` (`DOCKER_HOST` when `None`).
    /// `key` names Swarm secrets (the spec key); a caller that only lists may pass any key.
    pub fn new(
        orchestrator: Orchestrator,
        host: Option<&str>,
        key: SpecKey,
        endpoint: EndpointMode,
    ) -> Engine {
        match orchestrator {
            Orchestrator::Docker => Engine::Docker(DockerRuntime::new(host)),
            Orchestrator::Swarm => Engine::Swarm(SwarmRuntime::new(host, key, endpoint)),
        }
    }
}

/// Forwards one call to whichever runtime this is.
macro_rules! forward {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            Engine::Docker($r) => $call,
            Engine::Swarm($r) => $call,
        }
    };
}

impl Runtime for Engine {
    async fn ping(&self) -> Result<(), RuntimeError> {
        forward!(self, r => r.ping().await)
    }
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        forward!(self, r => r.ensure_network(name).await)
    }
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        forward!(self, r => r.list(labels).await)
    }
    async fn find_by_name(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        forward!(self, r => r.find_by_name(name).await)
    }
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        forward!(self, r => r.inspect(id).await)
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        forward!(self, r => r.create(spec).await)
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        forward!(self, r => r.start(id).await)
    }
    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        forward!(self, r => r.signal(id, signal).await)
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        forward!(self, r => r.remove(id).await)
    }
    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        forward!(self, r => r.rename(id, name).await)
    }
    fn events(&self, labels: &BTreeMap<String, String>) -> EventStream {
        forward!(self, r => r.events(labels))
    }
    async fn claim(&self, name: &str, holder: &str) -> Result<Option<String>, RuntimeError> {
        forward!(self, r => r.claim(name, holder).await)
    }
    async fn log_cursor(&self, id: &str) -> Result<LogCursor, RuntimeError> {
        forward!(self, r => r.log_cursor(id).await)
    }
    fn log_after(&self, id: &str, cursor: LogCursor) -> LineStream {
        forward!(self, r => r.log_after(id, cursor))
    }
    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        forward!(self, r => r.logs(id, lines).await)
    }
    fn orchestrator(&self) -> Orchestrator {
        forward!(self, r => r.orchestrator())
    }
    async fn update(
        &self,
        id: &str,
        spec: &ContainerSpec,
        restart_token: u64,
    ) -> Result<(), RuntimeError> {
        forward!(self, r => r.update(id, spec, restart_token).await)
    }
}
