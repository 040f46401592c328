//! Logging: one `init()`, lines to stderr, level from `RUST_LOG` (default `info`), as text or
//! as one JSON object per line (`PGM_LOG_FORMAT=json`, for log shippers).
//!
//! Secrets never reach a log line: they live in `Secret`, whose `Debug` and `Display` print
//! `***`, and rendered configs print only their digest. Both formats carry the same events and
//! fields, so this holds for either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `tracing`'s text lines: `<time> <LEVEL> <spans>: <message> key=value ...`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), and the
    /// spans the event happened in (`span`, `spans`), e.g. `{"name":"reconcile","project":"p1"}`.
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        // Colour codes only for a person at a terminal: journald, `docker logs` and files
        // get plain text that grep and log shippers can read.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
