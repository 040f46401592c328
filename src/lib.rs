//! postgrest-manager: runs one PostgREST container per project, reconciled from desired-state
//! files. Modules in reading order: the desired state and its directory, its rendering, the
//! pure planner, the container runtime, the rendered-config directory, the reconcile loop, the
//! file watcher, the HTTP API, the command line, settings and telemetry. ARCHITECTURE.md has
//! the map and the invariants.
#![forbid(unsafe_code)]

pub mod api;
pub mod args;
pub mod caddy;
pub mod cli;
pub mod configs;
pub mod metrics;
pub mod pending;
pub mod pgbouncer;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod settings;
pub mod spec;
pub mod spec_key;
pub mod state_dir;
pub mod telemetry;
pub mod watch;
