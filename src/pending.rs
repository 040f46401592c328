//! The retry state of a sync to another system (Caddy's routes, PgBouncer's pools): why it is
//! not in place, when it may be tried again (exponential backoff, no jitter: one manager per
//! Caddy or PgBouncer, so no herd to spread and a predictable schedule), and one WARN line per
//! new reason instead of one per retry.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use tokio::time::Instant;
use tracing::{debug, warn};

#[derive(Debug)]
pub struct Pending {
    /// What is kept in step, for the log lines ("Caddy routes", "PgBouncer pools").
    what: &'static str,
    backoff: ExponentialBackoff,
    not_before: Option<Instant>,
    reason: Option<String>,
}

impl Pending {
    pub fn new(what: &'static str, first: Duration, last: Duration) -> Pending {
        Pending {
            what,
            backoff: ExponentialBackoff {
                initial_interval: first,
                current_interval: first,
                max_interval: last,
                multiplier: 2.0,
                randomization_factor: 0.0,
                max_elapsed_time: None,
                ..ExponentialBackoff::default()
            },
            not_before: None,
            reason: None,
        }
    }

    /// The reason, while backing off and not yet due for another try.
    pub fn waiting(&self) -> Option<&str> {
        match (self.not_before, &self.reason) {
            (Some(at), Some(reason)) if Instant::now() < at => Some(reason),
            _ => None,
        }
    }

    /// When the next try may happen while backing off; `None` when not backing off.
    pub fn retry_at(&self) -> Option<Instant> {
        self.not_before
    }

    /// Why it is not in place, while it is not.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// In place: the backoff starts over. Returns the reason it was not, if it was not.
    pub fn succeeded(&mut self) -> Option<String> {
        self.backoff.reset();
        self.not_before = None;
        self.reason.take()
    }

    /// Not in place for `reason`: the next try waits longer; logged once per new reason.
    pub fn failed(&mut self, reason: String) {
        let delay = self
            .backoff
            .next_backoff()
            .unwrap_or(self.backoff.max_interval);
        self.not_before = Some(Instant::now() + delay);
        if self.reason.as_ref() != Some(&reason) {
            warn!(error = %reason, "{} not in place; retrying with backoff", self.what);
        } else {
            debug!(error = %reason, retry_in = ?delay, "{} still not in place", self.what);
        }
        self.reason = Some(reason);
    }
}
