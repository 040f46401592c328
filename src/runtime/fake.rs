//! An in-memory [`Runtime`] that records every call, for fast tests of the reconcile loop.
//!
//! It is not a model of Docker's every behaviour, only of what the loop relies on: names are
//! unique, removal of a missing container is `NotFound`, and the whole engine can be made
//! unreachable to test outages. Calls that change a container can be held behind a gate, so
//! a test can see how many are in flight at once, and for which containers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::{broadcast, Semaphore};

use super::{
    ContainerInfo, Event, EventStream, Health, LineStream, LogCursor, Runtime, RuntimeError, State,
};
use crate::render::{ContainerSpec, LABEL_MANAGED_BY};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Ping,
    EnsureNetwork(String),
    List,
    FindByName(String),
    Inspect(String),
    Create(String),
    Start(String),
    Signal(String, String),
    Remove(String),
    Rename(String, String),
}

#[derive(Default)]
struct Inner {
    containers: BTreeMap<String, ContainerInfo>,
    calls: Vec<Call>,
    unavailable: bool,
    failing_signals: bool,
    /// Claimed markers: name -> holder.
    claims: BTreeMap<String, String>,
    /// What each container "wrote", by name.
    logs: BTreeMap<String, String>,
    /// What a container writes when it gets a signal, by name; PostgREST's `Config reloaded`
    /// unless set (`None`: nothing, a reload nobody confirms).
    signal_replies: BTreeMap<String, Option<String>>,
    /// The address a container gets when it starts, by name (127.0.0.1 unless set), so a
    /// test can answer `/ready` differently for two containers of one project.
    ips: BTreeMap<String, std::net::IpAddr>,
    /// How long a removal takes, as a PostgREST given its stop grace would.
    remove_delay: Option<std::time::Duration>,
    next_id: u64,
    /// Held calls wait for a permit here.
    gate: Option<Arc<Semaphore>>,
    /// Only calls on these container names are held, when set.
    held_names: Option<std::collections::BTreeSet<String>>,
    /// Container name -> calls on it in flight (entered, not returned).
    in_flight: BTreeMap<String, usize>,
    max_in_flight: usize,
    /// Times a call started on a container that already had one in flight.
    overlaps: usize,
}

/// A call in flight; leaves the count when dropped.
struct Ticket {
    inner: Arc<Mutex<Inner>>,
    name: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(n) = inner.in_flight.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                inner.in_flight.remove(&self.name);
            }
        }
    }
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
    /// event stream when it is ours: Docker's stream is filtered by our labels, and someone
    /// else's container goes unannounced.
    pub fn remove_by_hand(&self, name: &str) {
        let mut gone = Vec::new();
        self.inner.lock().unwrap().containers.retain(|id, c| {
            let keep = c.name != name;
            if !keep && c.labels.contains_key(LABEL_MANAGED_BY) {
                gone.push(id.clone());
            }
            keep
        });
        for id in gone {
            let _ = self.events.send(Event::Container {
                id,
                created_for: None,
            });
        }
    }

    /// Says on the event stream that a container was started, as Docker does for every start
    /// (the manager's own ones included), without changing it.
    pub fn announce_start(&self, name: &str) {
        for c in self.inner.lock().unwrap().containers.values() {
            if c.name == name {
                let _ = self.events.send(Event::Container {
                    id: c.id.clone(),
                    created_for: c.project(),
                });
            }
        }
    }

    pub fn set_state(&self, name: &str, state: State) {
        for c in self.inner.lock().unwrap().containers.values_mut() {
            if c.name == name {
                c.state = state;
                let _ = self.events.send(Event::Container {
                    id: c.id.clone(),
                    created_for: None,
                });
            }
        }
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

    /// From now on every create, start, signal and remove waits for a permit of the returned
    /// semaphore (`add_permits(n)` lets `n` through).
    pub fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.inner.lock().unwrap().gate = Some(gate.clone());
        gate
    }

    /// As [`FakeRuntime::hold`], for calls on the containers named `names` only: the others go
    /// through.
    pub fn hold_only(&self, names: &[&str]) -> Arc<Semaphore> {
        let gate = self.hold();
        self.inner.lock().unwrap().held_names =
            Some(names.iter().map(|n| (*n).to_owned()).collect());
        gate
    }

    /// Calls that change a container, in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap().in_flight.values().sum()
    }

    /// The most calls that were ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }

    /// How often a call started on a container that already had one in flight.
    pub fn overlaps(&self) -> usize {
        self.inner.lock().unwrap().overlaps
    }

    /// Sets what a container has written to its log.
    pub fn set_logs(&self, name: &str, text: &str) {
        self.inner
            .lock()
            .unwrap()
            .logs
            .insert(name.to_owned(), text.to_owned());
    }

    /// What the container `name` writes to its log on every signal from now on: a line
    /// (e.g. PostgREST's `Failed reloading config: ...`), or nothing at all.
    pub fn reply_to_signals(&self, name: &str, line: Option<&str>) {
        self.inner
            .lock()
            .unwrap()
            .signal_replies
            .insert(name.to_owned(), line.map(str::to_owned));
    }

    /// Containers named `name` get `ip` when they start (127.0.0.1 unless set).
    pub fn assign_ip(&self, name: &str, ip: std::net::IpAddr) {
        self.inner.lock().unwrap().ips.insert(name.to_owned(), ip);
    }

    /// Makes every removal take `delay` (a graceful stop that uses its grace period).
    pub fn slow_removals(&self, delay: std::time::Duration) {
        self.inner.lock().unwrap().remove_delay = Some(delay);
    }

    /// Makes every reload signal fail, as when the daemon refuses the kill call.
    pub fn fail_signals(&self, failing: bool) {
        self.inner.lock().unwrap().failing_signals = failing;
    }

    /// Counts a call on container `key` (an id or a name) as in flight, and waits at the
    /// gate while one is set.
    async fn begin(&self, key: &str) -> Ticket {
        let gate = {
            let mut inner = self.inner.lock().unwrap();
            let name = inner
                .containers
                .get(key)
                .map_or_else(|| key.to_owned(), |c| c.name.clone());
            let count = inner.in_flight.entry(name.clone()).or_default();
            *count += 1;
            if *count > 1 {
                inner.overlaps += 1;
            }
            let total = inner.in_flight.values().sum();
            inner.max_in_flight = inner.max_in_flight.max(total);
            let held = inner.held_names.as_ref().is_none_or(|h| h.contains(&name));
            (inner.gate.clone().filter(|_| held), name)
        };
        let (gate, name) = gate;
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
        }
        Ticket {
            inner: self.inner.clone(),
            name,
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

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let inner = self.enter(Call::Inspect(id.into()))?;
        inner
            .containers
            .get(id)
            .cloned()
            .ok_or(RuntimeError::NotFound)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let _ticket = self.begin(&spec.name).await;
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
            exit_code: None,
            tasks: None,
        };
        inner.containers.insert(id.clone(), info);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let _ticket = self.begin(id).await;
        let mut inner = self.enter(Call::Start(id.into()))?;
        let ips = inner.ips.clone();
        let container = inner.containers.get_mut(id).ok_or(RuntimeError::NotFound)?;
        container.state = State::Running;
        container.ip = Some(
            ips.get(&container.name)
                .copied()
                .unwrap_or([127, 0, 0, 1].into()),
        );
        Ok(())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let _ticket = self.begin(id).await;
        let mut inner = self.enter(Call::Signal(id.into(), signal.into()))?;
        if inner.failing_signals {
            return Err(RuntimeError::Other(format!("cannot kill container {id}")));
        }
        let name = match inner.containers.get(id) {
            Some(c) if c.state == State::Running => c.name.clone(),
            Some(_) => {
                return Err(RuntimeError::Conflict(format!(
                    "container {id} is not running"
                )))
            }
            None => return Err(RuntimeError::NotFound),
        };
        // PostgREST answers a reload in its log, as the real one does.
        let reply = inner
            .signal_replies
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Some("Config reloaded".into()));
        if let Some(line) = reply {
            let log = inner.logs.entry(name).or_default();
            log.push_str(&line);
            log.push('\n');
        }
        Ok(())
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        let _ticket = self.begin(id).await;
        let mut inner = self.enter(Call::Rename(id.to_owned(), name.to_owned()))?;
        if inner.containers.values().any(|c| c.name == name) {
            return Err(RuntimeError::Conflict(format!("name {name} is in use")));
        }
        let container = inner.containers.get_mut(id).ok_or(RuntimeError::NotFound)?;
        container.name = name.to_owned();
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let _ticket = self.begin(id).await;
        let delay = self.inner.lock().unwrap().remove_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut inner = self.enter(Call::Remove(id.into()))?;
        inner
            .containers
            .remove(id)
            .map(drop)
            .ok_or(RuntimeError::NotFound)
    }

    async fn claim(&self, name: &str, holder: &str) -> Result<Option<String>, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.unavailable {
            return Err(RuntimeError::Unavailable("fake daemon is down".into()));
        }
        let found = inner
            .claims
            .entry(name.to_owned())
            .or_insert_with(|| holder.to_owned());
        Ok((found != holder).then(|| found.clone()))
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        // Read-only and not a change: not recorded, so call-list assertions stay about what
        // the loop did to containers.
        let inner = self.inner.lock().unwrap();
        if inner.unavailable {
            return Err(RuntimeError::Unavailable("fake daemon is down".into()));
        }
        let name = inner
            .containers
            .get(id)
            .map(|c| c.name.clone())
            .ok_or(RuntimeError::NotFound)?;
        let text = inner.logs.get(&name).cloned().unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        Ok(tail.into_iter().rev().map(|l| format!("{l}\n")).collect())
    }

    async fn log_cursor(&self, id: &str) -> Result<LogCursor, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        if inner.unavailable {
            return Err(RuntimeError::Unavailable("fake daemon is down".into()));
        }
        let name = &inner.containers.get(id).ok_or(RuntimeError::NotFound)?.name;
        let lines = inner.logs.get(name).map_or(0, |text| text.lines().count());
        Ok(LogCursor(lines as u128))
    }

    /// The lines after the cursor that are there now, and then nothing more (a fake
    /// container writes only when signalled, and the signal comes before this is read).
    fn log_after(&self, id: &str, cursor: LogCursor) -> LineStream {
        let inner = self.inner.lock().unwrap();
        let name = inner.containers.get(id).map(|c| c.name.clone());
        let text = name
            .and_then(|name| inner.logs.get(&name).cloned())
            .unwrap_or_default();
        let skip = usize::try_from(cursor.0).unwrap_or(usize::MAX);
        let lines: Vec<Result<String, RuntimeError>> =
            text.lines().skip(skip).map(|l| Ok(l.to_owned())).collect();
        Box::pin(futures_util::stream::iter(lines).chain(futures_util::stream::pending()))
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
