//! Logging: one `init()`, lines to stderr, level from `RUST_LOG` (default `info`).
//!
//! Secrets never reach a log line: they live in `Secret`, whose `Debug` and `Display` print
//! `***`, and rendered configs print only their digest.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald, `docker logs` and files
        // get plain text that grep and log shippers can read.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
