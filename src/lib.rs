//! postgrest-manager: runs one PostgREST container per project, reconciled from desired-state
//! files. Modules in reading order: the desired state, its rendering, the pure planner, the
//! container runtime, the rendered-config directory, the reconcile loop, the file watcher, the
//! HTTP API, the CLI, settings and telemetry. ARCHITECTURE.md has the map and the invariants.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod configs;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod settings;
pub mod spec;
pub mod telemetry;
pub mod watch;
