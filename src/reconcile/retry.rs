//! Exponential backoff for a project, for Docker as a whole, and for the event stream.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use tokio::time::Instant;

/// When the next try may happen, and how long the one after will wait.
#[derive(Debug)]
pub(super) struct Retry {
    backoff: ExponentialBackoff,
    pub not_before: Instant,
}

impl Retry {
    pub fn new(initial: Duration, max: Duration) -> Retry {
        let backoff = ExponentialBackoff {
            initial_interval: initial,
            current_interval: initial,
            max_interval: max,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Retry {
            backoff,
            not_before: Instant::now(),
        }
    }

    /// Per project: a failed action waits 0.5 s, doubling up to a minute.
    pub fn project() -> Retry {
        Retry::new(Duration::from_millis(500), Duration::from_secs(60))
    }

    /// Docker unreachable: 250 ms, doubling up to 10 s.
    pub fn docker() -> Retry {
        Retry::new(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Records a failure; returns how long until the next try.
    pub fn fail(&mut self) -> Duration {
        let delay = self
            .backoff
            .next_backoff()
            .unwrap_or(self.backoff.max_interval);
        self.not_before = Instant::now() + delay;
        delay
    }

    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    pub fn waiting(&self, now: Instant) -> bool {
        now < self.not_before
    }
}
