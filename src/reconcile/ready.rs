//! Readiness: whether each running container's PostgREST serves (`GET /ready` on its admin
//! port: logged in to its database, schema cache loaded) and, when it does not, why (its own
//! last words in the log). A hint source like Docker's events: it reports changes to the loop,
//! which patches its view and republishes; it never changes anything in Docker.
//!
//! A container that is not ready is probed often: a young one (its first 5 s) from 10 ms,
//! doubling to every 50 ms, so Caddy routes it within moments of its first `/ready`; an older
//! one every 500 ms. One that is ready is probed now and then: every 30 s, and no more than 3
//! serving containers a second fleet-wide (1,000 are probed every 335 s); the first one found
//! not serving has all the others probed at once. Probes of serving containers fall due on
//! ticks 5 s apart, so a serving fleet wakes the watcher at most once in 5 s, and a wake-up
//! costs the probes that are due (at most 15), not a look at every container.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
/// A serving container is probed this often, while the fleet is small enough for
/// [`READY_PROBES_PER_SEC`]. A database outage shows in the status within this long.
const READY_EVERY: Duration = Duration::from_secs(30);
/// Serving containers are probed at most this many a second, fleet-wide, spread evenly. A
/// probe is a TCP connection to the container, and the kernel handles the container's side
/// of it in the manager's time too: about 150 µs of CPU each. At 5 a second they were three
/// quarters of an idle manager's CPU at 1,000 serving containers (0.077 % of a core of
/// 0.103 %; `perf`, BENCHMARKS.md, "Scale"). Up to 90 containers keep [`READY_EVERY`];
/// 1,000 are probed every 335 s, and the first one found not serving has every other serving
/// one probed within seconds ([`Probes::sweep`]), since what takes one down (its database,
/// PgBouncer) usually takes many. A fault of one project alone, while its container runs,
/// shows within that period; a container that dies shows at once (Docker's events).
const READY_PROBES_PER_SEC: u32 = 3;
/// How fast a sweep probes every serving container: 1,000 within 20 s.
const SWEEP_PROBES_PER_SEC: usize = 50;
/// Ready probes fall due on ticks this far apart, [`READY_PER_TICK`] at most on each: one
/// wake-up probes every serving container due in those seconds. A probe alone cost about
/// 470 µs of CPU, one of a batch of 33 about 90 µs (BENCHMARKS.md, "Scale"): the wake-up is
/// most of a lone probe's cost, so fewer wake-ups with more probes each.
const READY_BATCH: Duration = Duration::from_secs(5);
/// The budgets of one tick.
const READY_PER_TICK: u32 = READY_PROBES_PER_SEC * READY_BATCH.as_secs() as u32;
const SWEEP_PER_TICK: usize = SWEEP_PROBES_PER_SEC * READY_BATCH.as_secs() as usize;
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
    target: Target,
    readiness: Readiness,
    /// Its place in [`Probes::schedule`].
    next_probe: Instant,
    /// The tick of [`Probes::slots`] it holds while it waits as a serving container.
    slot: Option<u64>,
    /// Between probes while not ready: doubles up to [`YOUNG_EVERY`], later [`NOT_READY_EVERY`].
    interval: Duration,
    next_logs: Instant,
    first_seen: Instant,
}

/// Every target and when each is probed next. A wake-up costs the probes that are due, not the
/// fleet: at 1,000 serving containers, due one by one over 30 s, a scan of every target per
/// wake-up was 33 scans of 1,000 a second.
struct Probes {
    known: HashMap<String, Known>,
    schedule: BTreeSet<(Instant, String)>,
    /// Serving containers waiting for their probe, by tick ([`READY_BATCH`] from `epoch`).
    slots: BTreeMap<u64, u32>,
    epoch: Instant,
    last_sweep: Option<Instant>,
}

impl Probes {
    fn new(now: Instant) -> Probes {
        Probes {
            known: HashMap::new(),
            schedule: BTreeSet::new(),
            slots: BTreeMap::new(),
            epoch: now,
            last_sweep: None,
        }
    }

    /// The first tick at or after `at`.
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos().div_ceil(READY_BATCH.as_nanos())).unwrap_or(u64::MAX)
    }

    fn at_tick(&self, tick: u64) -> Instant {
        self.epoch + READY_BATCH * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    /// The first tick from `from` on with room for one more serving probe.
    fn free_tick(&self, from: u64) -> u64 {
        let mut tick = from;
        for (&booked, &count) in self.slots.range(from..) {
            if booked > tick || count < READY_PER_TICK {
                break;
            }
            tick = booked + 1;
        }
        tick
    }

    fn book(slots: &mut BTreeMap<u64, u32>, tick: u64) {
        *slots.entry(tick).or_default() += 1;
    }

    fn release(slots: &mut BTreeMap<u64, u32>, known: &mut Known) {
        if let Some(tick) = known.slot.take() {
            if let std::collections::btree_map::Entry::Occupied(mut count) = slots.entry(tick) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
    }

    /// Follows a new list of targets: a new one is probed at once, so is one whose address
    /// or runtime verdict changed; what is gone is forgotten. Runs once per changed listing.
    fn retarget(&mut self, targets: &[Target], now: Instant) {
        let ids: HashSet<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let (schedule, slots) = (&mut self.schedule, &mut self.slots);
        self.known.retain(|id, known| {
            let keep = ids.contains(id.as_str());
            if !keep {
                schedule.remove(&(known.next_probe, id.clone()));
                Probes::release(slots, known);
            }
            keep
        });
        for target in targets {
            match self.known.get_mut(&target.id) {
                Some(known) if known.target == *target => {}
                Some(known) => {
                    known.target = target.clone();
                    self.schedule.remove(&(known.next_probe, target.id.clone()));
                    Probes::release(&mut self.slots, known);
                    known.next_probe = now;
                    self.schedule.insert((now, target.id.clone()));
                }
                None => {
                    self.known.insert(
                        target.id.clone(),
                        Known {
                            target: target.clone(),
                            readiness: Readiness::Unknown,
                            next_probe: now,
                            slot: None,
                            interval: NOT_READY_FIRST,
                            next_logs: now,
                            first_seen: now,
                        },
                    );
                    self.schedule.insert((now, target.id.clone()));
                }
            }
        }
    }

    /// The targets due at `now`, taken off the schedule until [`Probes::probed`] puts them back.
    fn due(&mut self, now: Instant) -> Vec<Target> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.schedule.first() {
            if *at > now {
                break;
            }
            let (_, id) = self.schedule.pop_first().expect("just looked");
            let known = self
                .known
                .get_mut(&id)
                .expect("scheduled targets are known");
            Probes::release(&mut self.slots, known);
            due.push(known.target.clone());
        }
        due
    }

    /// When the next probe is due.
    fn next(&self) -> Option<Instant> {
        self.schedule.first().map(|(at, _)| *at)
    }

    /// Puts a probed target back on the schedule: `ready`, on the first tick at least
    /// [`READY_EVERY`] away with room for it ([`READY_PER_TICK`] a tick), so a serving
    /// fleet wakes the watcher at most once a tick and never probes in a burst; not ready,
    /// after its backoff.
    fn reschedule(&mut self, id: &str, ready: bool, now: Instant) -> Option<&mut Known> {
        let tick = self.free_tick(self.tick_of(now + READY_EVERY));
        let at = self.at_tick(tick);
        let known = self.known.get_mut(id)?;
        Probes::release(&mut self.slots, known);
        self.schedule.remove(&(known.next_probe, id.to_owned()));
        if ready {
            known.next_probe = at;
            known.slot = Some(tick);
            Probes::book(&mut self.slots, tick);
            known.interval = NOT_READY_FIRST;
        } else {
            known.next_probe = now + known.interval;
            let cap = if now < known.first_seen + YOUNG {
                YOUNG_EVERY
            } else {
                NOT_READY_EVERY
            };
            known.interval = (known.interval * 2).min(cap);
        }
        self.schedule.insert((known.next_probe, id.to_owned()));
        Some(known)
    }

    /// A serving container stopped serving: every other one that served is probed within
    /// seconds ([`SWEEP_PROBES_PER_SEC`]), at most once per [`READY_EVERY`], so a shared
    /// cause shows on every project it hit.
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now < last + READY_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        let first = self.tick_of(now);
        let mut swept = 0;
        for (id, known) in &mut self.known {
            if known.readiness != Readiness::Ready || known.next_probe <= now {
                continue;
            }
            let tick = first + (swept / SWEEP_PER_TICK) as u64;
            swept += 1;
            self.schedule.remove(&(known.next_probe, id.clone()));
            Probes::release(&mut self.slots, known);
            known.next_probe = self.epoch + READY_BATCH * u32::try_from(tick).unwrap_or(u32::MAX);
            known.slot = Some(tick);
            Probes::book(&mut self.slots, tick);
            self.schedule.insert((known.next_probe, id.clone()));
        }
    }
}

/// Probes `targets` (replaced by the loop after every listing) until the loop goes away.
pub(super) async fn watch_readiness<R: Runtime>(
    runtime: Arc<R>,
    port: u16,
    mut targets: watch::Receiver<Vec<Target>>,
    changes: mpsc::Sender<(String, Readiness)>,
) {
    let mut probes = Probes::new(Instant::now());
    let mut retarget = true;
    loop {
        if retarget {
            probes.retarget(&targets.borrow_and_update(), Instant::now());
        }
        let due = probes.due(Instant::now());
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
        let mut sweep = false;
        for (target, ready) in results {
            let now = Instant::now();
            let Some(entry) = probes.reschedule(&target.id, ready, now) else {
                continue;
            };
            sweep |= !ready && entry.readiness == Readiness::Ready;
            let readiness = if ready {
                Readiness::Ready
            } else {
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
        if sweep {
            probes.sweep(Instant::now());
        }
        retarget = false;
        tokio::select! {
            changed = targets.changed() => match changed {
                Ok(()) => retarget = true,
                Err(_) => return,
            },
            () = sleep_until(probes.next()) => {}
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

    fn target(id: &str, last: u8) -> Target {
        Target {
            id: id.to_owned(),
            ip: Some(IpAddr::from([10, 0, 0, last])),
            serves: None,
        }
    }

    /// Takes every probe due up to `until`, tick by tick: how many fell due on each tick.
    fn drain(probes: &mut Probes, until: Instant) -> Vec<usize> {
        let mut per_tick = Vec::new();
        while let Some(next) = probes.next().filter(|next| *next <= until) {
            per_tick.push(probes.due(next).len());
        }
        per_tick
    }

    #[test]
    fn serving_probes_fall_due_on_ticks_at_most_the_budget_a_tick() {
        let t0 = Instant::now();
        let mut probes = Probes::new(t0);
        let fleet: Vec<Target> = (0..50).map(|i| target(&format!("c{i}"), i)).collect();
        probes.retarget(&fleet, t0);
        assert_eq!(probes.due(t0).len(), 50, "new targets are probed at once");
        assert_eq!(probes.next(), None, "taken off the schedule while probed");
        // All answer within one second.
        for (i, t) in fleet.iter().enumerate() {
            let answered = t0 + Duration::from_millis(1 + 18 * i as u64);
            probes.reschedule(&t.id, true, answered);
        }
        let first = probes.next().expect("all rescheduled");
        assert!(first >= t0 + READY_EVERY && first <= t0 + READY_EVERY + READY_BATCH);
        let per_tick = drain(&mut probes, t0 + Duration::from_secs(3600));
        assert_eq!(per_tick, [15, 15, 15, 5], "15 a tick, one wake-up each");
    }

    #[test]
    fn a_big_serving_fleet_is_probed_within_the_budget_and_swept_on_a_failure() {
        let t0 = Instant::now();
        let mut probes = Probes::new(t0);
        let fleet: Vec<Target> = (0..1000)
            .map(|i| target(&format!("c{i}"), (i % 250) as u8))
            .collect();
        probes.retarget(&fleet, t0);
        for t in probes.due(t0) {
            let known = probes.reschedule(&t.id, true, t0).unwrap();
            known.readiness = Readiness::Ready;
        }
        // 1,000 at 3 a second, 15 every 5 s: spread over 335 s from 30 s on, never a burst.
        let last = probes.schedule.last().unwrap().0;
        assert_eq!(probes.next(), Some(t0 + READY_EVERY));
        assert_eq!(last, t0 + READY_EVERY + Duration::from_secs(330));
        assert!(probes.slots.values().all(|n| *n <= READY_PER_TICK));

        // One stops serving before any is due again: the other 999 are probed within 20 s,
        // 50 a second (250 a tick), and not swept again within the period.
        let later = t0 + Duration::from_secs(20);
        probes.reschedule("c7", false, later).unwrap().readiness = Readiness::NotReady {
            reason: "database down".into(),
        };
        probes.sweep(later);
        let swept = drain(&mut probes, later + Duration::from_secs(19));
        assert_eq!(
            swept.iter().sum::<usize>(),
            999 + 1,
            "and c7's own: {swept:?}"
        );
        assert!(swept.iter().all(|n| *n <= SWEEP_PER_TICK + 1), "{swept:?}");
        for t in fleet.iter().filter(|t| t.id != "c7") {
            probes.reschedule(&t.id, true, later + Duration::from_secs(20));
        }
        probes.sweep(later + Duration::from_secs(21));
        let next = probes.schedule.first().unwrap().0;
        assert!(
            next >= later + Duration::from_secs(50),
            "no second sweep within 30 s"
        );
        assert!(probes.slots.values().all(|n| *n <= READY_PER_TICK));
    }

    #[test]
    fn a_new_listing_probes_new_and_changed_targets_at_once_and_forgets_the_gone() {
        let t0 = Instant::now();
        let mut probes = Probes::new(t0);
        probes.retarget(&[target("a", 1), target("b", 2), target("c", 3)], t0);
        for t in probes.due(t0) {
            probes.reschedule(&t.id, true, t0);
        }
        let later = t0 + Duration::from_secs(5);
        // b is gone, c has a new address, d is new, a is as it was.
        probes.retarget(&[target("a", 1), target("c", 9), target("d", 4)], later);
        let mut due: Vec<Target> = probes.due(later);
        due.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(due, [target("c", 9), target("d", 4)]);
        assert!(!probes.known.contains_key("b"));
        assert_eq!(
            probes.schedule.len(),
            1,
            "a alone waits: {:?}",
            probes.schedule
        );
        // Not ready: the young backoff, not the ready period.
        let known = probes.reschedule("d", false, later).unwrap();
        assert_eq!(known.next_probe, later + NOT_READY_FIRST);
    }

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
