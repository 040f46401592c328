//! Readiness: whether each running container's PostgREST serves (`GET /ready` on its admin
//! port: logged in to its database, schema cache loaded) and, when it does not, why (its own
//! last words in the log). A hint source like Docker's events: it reports changes to the loop,
//! which patches its view and republishes; it never changes anything in Docker.
//!
//! A container that is not ready is probed often: a young one (its first 5 s) from 10 ms,
//! doubling to every 50 ms, so Caddy routes it within moments of its first `/ready`; an older
//! one every 500 ms. One that is ready is probed now and then (every 30 s), so a fleet that
//! serves costs a probe per container per 30 s.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::probe;
use crate::runtime::Runtime;

const NOT_READY_FIRST: Duration = Duration::from_millis(10);
const YOUNG: Duration = Duration::from_secs(5);
const YOUNG_EVERY: Duration = Duration::from_millis(50);
const NOT_READY_EVERY: Duration = Duration::from_millis(500);
/// A serving container is probed this often: at 120 projects, every 10 s cost the idle
/// manager 0.08% of a core (BENCHMARKS.md), every 30 s a third of that. A database outage
/// shows in the status within this long.
const READY_EVERY: Duration = Duration::from_secs(30);
/// The log is read at most this often per container that is not ready.
const LOGS_EVERY: Duration = Duration::from_secs(5);
/// A container this young that does not serve yet is starting; its log is not read before.
const STARTING: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBES_AT_ONCE: usize = 16;
const LOG_LINES: usize = 30;
const MAX_REASON: usize = 300;

/// What the probe last said about a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Readiness {
    /// Not probed yet.
    #[default]
    Unknown,
    Ready,
    NotReady {
        reason: String,
    },
}

/// A container to watch: a running one is probed; one that is not running (exited, or being
/// restarted by Docker after a crash) cannot serve, and only its log is read for the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub id: String,
    /// Its address, when it runs.
    pub ip: Option<IpAddr>,
    /// What the runtime already knows (a Swarm task runs once its `/ready` check passed, and
    /// the manager cannot reach the overlay network to probe it): no probe then.
    pub serves: Option<bool>,
}

struct Known {
    readiness: Readiness,
    next_probe: Instant,
    /// Between probes while not ready: doubles up to [`YOUNG_EVERY`], later [`NOT_READY_EVERY`].
    interval: Duration,
    next_logs: Instant,
    first_seen: Instant,
}

/// Probes `targets` (replaced by the loop after every listing) until the loop goes away.
pub(super) async fn watch_readiness<R: Runtime>(
    runtime: Arc<R>,
    port: u16,
    mut targets: watch::Receiver<Vec<Target>>,
    changes: mpsc::Sender<(String, Readiness)>,
) {
    let mut known: HashMap<String, Known> = HashMap::new();
    loop {
        let now = Instant::now();
        let current = targets.borrow_and_update().clone();
        let ids: HashSet<&str> = current.iter().map(|t| t.id.as_str()).collect();
        known.retain(|id, _| ids.contains(id.as_str()));
        let due: Vec<Target> = current
            .into_iter()
            .filter(|t| known.get(&t.id).is_none_or(|k| k.next_probe <= now))
            .collect();
        let results: Vec<(Target, bool)> = futures_util::stream::iter(due)
            .map(|target| async move {
                let ready = match target.ip {
                    _ if target.serves.is_some() => target.serves == Some(true),
                    Some(ip) => probe::ready(ip, port, PROBE_TIMEOUT).await.is_ok(),
                    None => false,
                };
                (target, ready)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        for (target, ready) in results {
            let now = Instant::now();
            let entry = known.entry(target.id.clone()).or_insert(Known {
                readiness: Readiness::Unknown,
                next_probe: now,
                interval: NOT_READY_FIRST,
                next_logs: now,
                first_seen: now,
            });
            let readiness = if ready {
                entry.next_probe = now + READY_EVERY;
                entry.interval = NOT_READY_FIRST;
                Readiness::Ready
            } else {
                entry.next_probe = now + entry.interval;
                let cap = if now < entry.first_seen + YOUNG {
                    YOUNG_EVERY
                } else {
                    NOT_READY_EVERY
                };
                entry.interval = (entry.interval * 2).min(cap);
                match &entry.readiness {
                    _ if now < entry.first_seen + STARTING => Readiness::NotReady {
                        reason: "PostgREST is starting".to_owned(),
                    },
                    Readiness::NotReady { .. } if now < entry.next_logs => entry.readiness.clone(),
                    _ => {
                        entry.next_logs = now + LOGS_EVERY;
                        let logs = runtime
                            .logs(&target.id, LOG_LINES)
                            .await
                            .unwrap_or_default();
                        Readiness::NotReady {
                            reason: reason_from_logs(&logs),
                        }
                    }
                }
            };
            if readiness != entry.readiness {
                entry.readiness = readiness.clone();
                if changes.send((target.id, readiness)).await.is_err() {
                    return;
                }
            }
        }
        let next = known.values().map(|k| k.next_probe).min();
        tokio::select! {
            changed = targets.changed() => if changed.is_err() { return },
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why PostgREST does not serve, in its own words: the last database error it logged
/// (PostgREST logs them as JSON with a `details` field), else its last log line.
pub(super) fn reason_from_logs(logs: &str) -> String {
    let lines: Vec<&str> = logs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from_json = lines.iter().rev().find_map(|line| {
        let start = line.find('{')?;
        let value: serde_json::Value = serde_json::from_str(&line[start..]).ok()?;
        let details = value.get("details").and_then(|d| d.as_str());
        let message = value.get("message").and_then(|m| m.as_str());
        match (message, details) {
            (Some(m), Some(d)) if !d.is_empty() => Some(format!("{m}: {d}")),
            (Some(m), _) => Some(m.to_owned()),
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => None,
        }
    });
    let reason = match (from_json, lines.last()) {
        (Some(reason), _) => reason,
        (None, Some(last)) => (*last).to_owned(),
        (None, None) => "PostgREST is starting".to_owned(),
    };
    let reason = reason.trim().to_owned();
    match reason.char_indices().nth(MAX_REASON) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_postgrests_own_error_lines() {
        let logs = "29/Nov/2026:07:00:00 +0000: Attempting to connect to the database...\n\
            29/Nov/2026:07:00:00 +0000: {\"code\":\"PGRST000\",\"details\":\"connection to server at \\\"pgbouncer\\\" failed: FATAL:  SASL authentication failed\\n\",\"hint\":null,\"message\":\"Database connection error. Retrying the connection.\"}\n\
            29/Nov/2026:07:00:00 +0000: Attempting to reconnect to the database in 1 seconds...\n";
        let reason = reason_from_logs(logs);
        assert!(reason.starts_with("Database connection error"), "{reason}");
        assert!(reason.contains("SASL authentication failed"), "{reason}");
        assert_eq!(reason_from_logs("just one line\n"), "just one line");
        assert_eq!(reason_from_logs(""), "PostgREST is starting");
        assert!(reason_from_logs(&"x".repeat(1000)).chars().count() <= MAX_REASON + 1);
    }
}
