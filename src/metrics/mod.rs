//! Prometheus metrics: one [`Metrics`] owns the registry and every typed family. `main` makes
//! one when `PGM_METRICS_LISTEN` is set and hands clones to the parts that count (the loop, the
//! metered runtime, the API layer, the Caddy sync); nothing is global, and without it nothing
//! is counted at all. `serve.rs` answers `GET /metrics` on its own listener.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, durations are `_seconds`
//! histograms, and every label takes a value from a short fixed list (never a project id, a
//! container id or a raw path), so the number of series does not grow with the fleet.

pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::plan::State;
use crate::runtime::{Health, RuntimeError};
use crate::spec::DesiredState;

/// How a Docker call or an action ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    ok,
    not_found,
    conflict,
    unavailable,
    error,
}

impl Outcome {
    pub fn of<T>(result: &Result<T, RuntimeError>) -> Outcome {
        match result {
            Ok(_) => Outcome::ok,
            Err(RuntimeError::NotFound) => Outcome::not_found,
            Err(RuntimeError::Conflict(_)) => Outcome::conflict,
            Err(RuntimeError::Unavailable(_)) => Outcome::unavailable,
            Err(RuntimeError::Other(_)) => Outcome::error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DockerLabels {
    operation: &'static str,
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DesiredLabel {
    desired: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets from 0.5 ms to about 16 s: a Docker call or a pass.
fn fast() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Buckets from 5 ms to about 80 s: an action (a create pulls nothing but may wait on Docker),
/// an API call (a write waits up to its timeout, 60 s by default).
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The desired states, container states and health words a project gauge can show. Every one
/// is always exported (0 when no project has it), so a sum or a rate never sees a gap.
const DESIRED: [DesiredState; 4] = [
    DesiredState::Enabled,
    DesiredState::Disabled,
    DesiredState::Invalid,
    DesiredState::Absent,
];
const STATES: [&str; 8] = [
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
    "none",
];
const HEALTHS: [&str; 5] = ["starting", "healthy", "unhealthy", "none", "no_container"];

/// The registry and every family in it; cheap to clone (the families share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    passes: Counter,
    pass_duration: Histogram,
    actions: Family<ActionLabels, Counter>,
    action_duration: Histograms<KindLabel>,
    projects: Family<DesiredLabel, Gauge>,
    projects_state: Family<StateLabel, Gauge>,
    projects_health: Family<HealthLabel, Gauge>,
    docker_requests: Family<DockerLabels, Counter>,
    docker_duration: Histograms<OperationLabel>,
    docker_outages: Counter,
    event_reconnects: Counter,
    api_requests: Family<ApiLabels, Counter>,
    api_duration: Histograms<RouteLabel>,
    caddy_syncs: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgm");
        let m = Metrics {
            registry: Arc::default(),
            passes: Counter::default(),
            pass_duration: fast(),
            actions: Family::default(),
            action_duration: Family::new_with_constructor(slow),
            projects: Family::default(),
            projects_state: Family::default(),
            projects_health: Family::default(),
            docker_requests: Family::default(),
            docker_duration: Family::new_with_constructor(fast),
            docker_outages: Counter::default(),
            event_reconnects: Counter::default(),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(slow),
            caddy_syncs: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "build",
            "The manager's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "reconcile_passes",
            "Passes of the reconcile loop that got as far as planning",
            m.passes.clone(),
        );
        r.register_with_unit(
            "reconcile_pass_duration",
            "Time of one pass: load the state files, list (when needed), plan, dispatch",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        r.register(
            "actions",
            "Actions the loop finished, by kind and result (ok, error)",
            m.actions.clone(),
        );
        r.register_with_unit(
            "action_duration",
            "Time of one action, from dispatch to its end",
            Unit::Seconds,
            m.action_duration.clone(),
        );
        r.register(
            "projects",
            "Projects by desired state (enabled, disabled, invalid, absent)",
            m.projects.clone(),
        );
        r.register(
            "projects_state",
            "Projects by the state of their container (none: no container)",
            m.projects_state.clone(),
        );
        r.register(
            "projects_health",
            "Projects by Docker's health check of their container",
            m.projects_health.clone(),
        );
        r.register(
            "docker_requests",
            "Calls to Docker, by operation and result",
            m.docker_requests.clone(),
        );
        r.register_with_unit(
            "docker_request_duration",
            "Time of one call to Docker, by operation",
            Unit::Seconds,
            m.docker_duration.clone(),
        );
        r.register(
            "docker_outages",
            "Times Docker became unreachable for the loop",
            m.docker_outages.clone(),
        );
        r.register(
            "docker_event_stream_reconnects",
            "Subscriptions to Docker's event stream after the first",
            m.event_reconnects.clone(),
        );
        r.register(
            "api_requests",
            "API requests by route template, method and status",
            m.api_requests.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "Time to answer an API request, by route template",
            Unit::Seconds,
            m.api_duration.clone(),
        );
        r.register(
            "caddy_syncs",
            "Route syncs that asked Caddy, by result (in_sync, applied, pending)",
            m.caddy_syncs.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus reads), ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and every family here encodes.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    pub fn pass_finished(&self, took: Duration) {
        self.passes.inc();
        self.pass_duration.observe(took.as_secs_f64());
    }

    /// `kind` is one of the loop's action kinds (`create`, `reload`, ...), a fixed list.
    pub fn action_finished(&self, kind: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.actions
            .get_or_create(&ActionLabels { kind, result })
            .inc();
        self.action_duration
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    pub fn docker_request(&self, operation: &'static str, result: Outcome, took: Duration) {
        self.docker_requests
            .get_or_create(&DockerLabels { operation, result })
            .inc();
        self.docker_duration
            .get_or_create(&OperationLabel { operation })
            .observe(took.as_secs_f64());
    }

    pub fn docker_outage(&self) {
        self.docker_outages.inc();
    }

    pub fn event_stream_reconnected(&self) {
        self.event_reconnects.inc();
    }

    /// `route` is the route's template (`/internal/postgrest/{id}`), or `unmatched`.
    pub fn api_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let method = match method {
            "GET" => "GET",
            "PUT" => "PUT",
            "POST" => "POST",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "HEAD" => "HEAD",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        let route = route.to_owned();
        self.api_requests
            .get_or_create(&ApiLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// `result` is `in_sync`, `applied` or `pending`.
    pub fn caddy_sync(&self, result: &'static str) {
        self.caddy_syncs
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Sets the project gauges from every project's (desired state, container state and
    /// health; `None` without a container). Called when scraped, so the loop pays nothing.
    pub fn set_projects(
        &self,
        projects: impl Iterator<Item = (DesiredState, Option<(State, Health)>)>,
    ) {
        let mut desired = [0i64; DESIRED.len()];
        let mut states = [0i64; STATES.len()];
        let mut healths = [0i64; HEALTHS.len()];
        let count = |slot: &mut [i64], names: &[&str], name: &str| {
            if let Some(i) = names.iter().position(|n| *n == name) {
                slot[i] += 1;
            }
        };
        for (want, container) in projects {
            if let Some(i) = DESIRED.iter().position(|d| *d == want) {
                desired[i] += 1;
            }
            let (state, health) = match container {
                Some((state, health)) => (state_word(state), health_word(health)),
                None => ("none", "no_container"),
            };
            count(&mut states, &STATES, state);
            count(&mut healths, &HEALTHS, health);
        }
        for (d, n) in DESIRED.iter().zip(desired) {
            let desired = desired_word(*d);
            self.projects
                .get_or_create(&DesiredLabel { desired })
                .set(n);
        }
        for (state, n) in STATES.iter().zip(states) {
            self.projects_state
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        for (health, n) in HEALTHS.iter().zip(healths) {
            self.projects_health
                .get_or_create(&HealthLabel { health })
                .set(n);
        }
    }
}

fn desired_word(desired: DesiredState) -> &'static str {
    match desired {
        DesiredState::Enabled => "enabled",
        DesiredState::Disabled => "disabled",
        DesiredState::Invalid => "invalid",
        DesiredState::Absent => "absent",
    }
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Created => "created",
        State::Running => "running",
        State::Paused => "paused",
        State::Restarting => "restarting",
        State::Removing => "removing",
        State::Exited => "exited",
        State::Dead => "dead",
    }
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::None => "none",
    }
}

#[cfg(test)]
mod tests;
