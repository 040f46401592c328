//! An in-memory [`Runtime`] that records every call, for fast tests of the reconcile loop.
//!
//! It is not a model of Docker's every behaviour, only of what the loop relies on: names are
//! unique, removal of a missing container is `NotFound`, and the whole engine can be made
//! unreachable to test outages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{ContainerInfo, Event, EventStream, Health, Runtime, RuntimeError, State};
use crate::render::ContainerSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Ping,
    EnsureNetwork(String),
    List,
    FindByName(String),
    Create(String),
    Start(String),
    Signal(String, String),
    Remove(String),
}

#[derive(Default)]
struct Inner {
    containers: BTreeMap<String, ContainerInfo>,
    calls: Vec<Call>,
    unavailable: bool,
    next_id: u64,
}

#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Event>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            inner: Arc::default(),
            events: broadcast::channel(64).0,
        }
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Every call so far, in order; clears the record.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.inner.lock().unwrap().calls)
    }

    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.inner
            .lock()
            .unwrap()
            .containers
            .values()
            .cloned()
            .collect()
    }

    /// Makes every call fail as if the daemon were down (and ends event streams).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.lock().unwrap().unavailable = unavailable;
    }

    /// Adds a container as someone else (another tool, an earlier manager) would have.
    pub fn insert(&self, info: ContainerInfo) {
        self.inner
            .lock()
            .unwrap()
            .containers
            .insert(info.id.clone(), info);
    }

    /// Removes a container behind the manager's back, like `docker rm -f`, and says so on the
    /// event stream.
    pub fn remove_by_hand(&self, name: &str) {
        self.inner
            .lock()
            .unwrap()
            .containers
            .retain(|_, c| c.name != name);
        let _ = self.events.send(Event::Changed);
    }

    pub fn set_state(&self, name: &str, state: State) {
        for c in self.inner.lock().unwrap().containers.values_mut() {
            if c.name == name {
                c.state = state;
            }
        }
        let _ = self.events.send(Event::Changed);
    }

    /// Changes a container's health, and says so on the event stream as Docker would.
    pub fn set_health(&self, name: &str, health: Health) {
        for c in self.inner.lock().unwrap().containers.values_mut() {
            if c.name == name {
                c.health = health;
                let _ = self.events.send(Event::Health {
                    id: c.id.clone(),
                    health,
                });
            }
        }
    }

    fn enter(&self, call: Call) -> Result<std::sync::MutexGuard<'_, Inner>, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(call);
        if inner.unavailable {
            return Err(RuntimeError::Unavailable("fake daemon is down".into()));
        }
        Ok(inner)
    }
}

impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(Call::Ping).map(drop)
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.enter(Call::EnsureNetwork(name.into())).map(drop)
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let inner = self.enter(Call::List)?;
        let matches = |c: &&ContainerInfo| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v));
        Ok(inner.containers.values().filter(matches).cloned().collect())
    }

    async fn find_by_name(&self, name: &str) -> Result<ContainerInfo, RuntimeError> {
        let inner = self.enter(Call::FindByName(name.into()))?;
        inner
            .containers
            .values()
            .find(|c| c.name == name)
            .cloned()
            .ok_or(RuntimeError::NotFound)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut inner = self.enter(Call::Create(spec.name.clone()))?;
        if inner.containers.values().any(|c| c.name == spec.name) {
            return Err(RuntimeError::Conflict(format!(
                "name {} is in use",
                spec.name
            )));
        }
        inner.next_id += 1;
        let id = format!("fake{:04}", inner.next_id);
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            state: State::Created,
            health: Health::None,
            ip: None,
        };
        inner.containers.insert(id.clone(), info);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.enter(Call::Start(id.into()))?;
        let container = inner.containers.get_mut(id).ok_or(RuntimeError::NotFound)?;
        container.state = State::Running;
        container.ip = Some([127, 0, 0, 1].into());
        Ok(())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let inner = self.enter(Call::Signal(id.into(), signal.into()))?;
        match inner.containers.get(id) {
            Some(c) if c.state == State::Running => Ok(()),
            Some(_) => Err(RuntimeError::Conflict(format!(
                "container {id} is not running"
            ))),
            None => Err(RuntimeError::NotFound),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.enter(Call::Remove(id.into()))?;
        inner
            .containers
            .remove(id)
            .map(drop)
            .ok_or(RuntimeError::NotFound)
    }

    fn events(&self, _labels: &BTreeMap<String, String>) -> EventStream {
        if self.inner.lock().unwrap().unavailable {
            let down = RuntimeError::Unavailable("fake daemon is down".into());
            return Box::pin(futures_util::stream::once(async move { Err(down) }));
        }
        let receiver = self.events.subscribe();
        Box::pin(tokio_stream_from(receiver))
    }
}

/// A broadcast receiver as an event stream; lagging only means "something happened".
fn tokio_stream_from(
    receiver: broadcast::Receiver<Event>,
) -> impl futures_util::Stream<Item = Result<Event, RuntimeError>> {
    futures_util::stream::unfold(receiver, |mut rx| async move {
        match rx.recv().await {
            Ok(event) => Some((Ok(event), rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Ok(Event::Changed), rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}
