//! [`RouteSync`]: keeps Caddy's project slot equal to the desired route list.
//!
//! Level-triggered like the loop that calls it: each [`RouteSync::sync`] compares the desired
//! list with what Caddy holds and sends the whole list when they differ, so a Caddy restart, a
//! hand edit or a lost PATCH are all mended by the next call that looks. Looking costs a GET,
//! so it is skipped while the desired list equals the last one applied, unless the caller asks
//! (its resync tick).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{CaddyAdmin, CaddyError, Routes};
use crate::metrics::Metrics;
use crate::pending::Pending;

/// While Caddy is unreachable or refuses: 250 ms, doubling up to 10 s.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// What a [`RouteSync::sync`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// Caddy already held the desired list (or nothing changed and Caddy was not asked).
    InSync,
    /// The desired list was sent, and Caddy accepted it.
    Applied,
    /// The desired routes are not in place: Caddy is down, refused, or kept changing under
    /// us. Retried after [`RouteSync::retry_at`].
    Pending { reason: String },
}

/// Brings Caddy's project slot to the desired list. See the module documentation.
pub struct RouteSync<C: CaddyAdmin> {
    admin: C,
    /// The list Caddy held when it last answered: applied by us or found in place. `None`
    /// after a failure, when what Caddy holds is unknown.
    applied: Option<Routes>,
    /// Why Caddy is not in step, and when to try again.
    pending: Pending,
    /// Counts every sync that asked Caddy, by result.
    metrics: Option<Metrics>,
}

impl<C: CaddyAdmin> RouteSync<C> {
    pub fn new(admin: C) -> Self {
        RouteSync {
            admin,
            applied: None,
            pending: Pending::new("Caddy routes", FIRST_RETRY, LAST_RETRY),
            metrics: None,
        }
    }

    /// Counts every sync that asks Caddy into `pgm_caddy_syncs_total{result}`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The admin API this sync talks to (tests inspect their fake through it).
    pub fn admin(&self) -> &C {
        &self.admin
    }

    /// When the next try may happen while backing off; `None` when not backing off.
    pub fn retry_at(&self) -> Option<Instant> {
        self.pending.retry_at()
    }

    /// Brings Caddy to `desired`. Cheap when nothing changed: without `check_caddy` and with
    /// `desired` equal to the list last applied, Caddy is not asked at all. Otherwise one GET,
    /// and a PATCH only when Caddy's list differs; a 412 (the slot changed between the two) is
    /// retried once at once with a fresh GET. While backing off it answers `Pending` without
    /// a call until [`retry_at`](Self::retry_at).
    ///
    /// At most one PATCH per call is accepted by Caddy: the second one is sent only after the
    /// first was refused with 412, which changed nothing.
    pub async fn sync(&mut self, desired: &Routes, check_caddy: bool) -> SyncStatus {
        if let Some(reason) = self.pending.waiting() {
            return SyncStatus::Pending {
                reason: reason.to_owned(),
            };
        }
        if !check_caddy && self.applied.as_ref() == Some(desired) {
            return SyncStatus::InSync;
        }
        let brought = self.bring(desired).await;
        if let Some(metrics) = &self.metrics {
            metrics.caddy_sync(match &brought {
                Ok(SyncStatus::InSync) => "in_sync",
                Ok(SyncStatus::Applied) => "applied",
                Ok(SyncStatus::Pending { .. }) | Err(_) => "pending",
            });
        }
        match brought {
            Ok(status) => {
                if let Some(reason) = self.pending.succeeded() {
                    info!(routes = desired.len(), was = %reason, "Caddy routes in place again");
                }
                self.applied = Some(desired.clone());
                status
            }
            Err(error) => {
                self.applied = None;
                let reason = error.to_string();
                self.pending.failed(reason.clone());
                SyncStatus::Pending { reason }
            }
        }
    }

    async fn bring(&self, desired: &Routes) -> Result<SyncStatus, CaddyError> {
        let want = desired.to_json();
        let (held, etag) = self.admin.current().await?;
        if held == want {
            return Ok(SyncStatus::InSync);
        }
        if self.applied.as_ref() == Some(desired) {
            // Nothing changed on our side, so Caddy's did: a restart or a hand edit.
            warn!(
                routes = desired.len(),
                "Caddy's project routes differ from those applied (restarted or edited?); re-applying"
            );
        }
        match self.admin.replace(desired, &etag).await {
            Ok(()) => {
                info!(routes = desired.len(), "Caddy routes updated");
                return Ok(SyncStatus::Applied);
            }
            Err(CaddyError::Conflict) => {}
            Err(error) => return Err(error),
        }
        // Someone wrote the slot between our GET and PATCH: look again, once, at once.
        debug!("Caddy's project routes changed under us (412); reading them again");
        let (held, etag) = self.admin.current().await?;
        if held == want {
            return Ok(SyncStatus::InSync);
        }
        self.admin.replace(desired, &etag).await?;
        info!(routes = desired.len(), "Caddy routes updated");
        Ok(SyncStatus::Applied)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::caddy::fake::{Call, FakeCaddy};
    use crate::caddy::RouteTarget;
    use crate::spec::ProjectId;

    fn id(raw: &str) -> ProjectId {
        ProjectId::parse(raw).unwrap()
    }

    fn routes(ready: &[&str], not_ready: &[(&str, &str)]) -> Routes {
        let ready = ready.iter().map(|p| (id(p), RouteTarget::Ready));
        let not_ready = not_ready.iter().map(|(p, reason)| {
            (
                id(p),
                RouteTarget::NotReady {
                    reason: (*reason).to_owned(),
                },
            )
        });
        Routes::new(ready.chain(not_ready))
    }

    /// The calls since the last look, as `G` (GET) and `P` (PATCH) letters.
    fn calls(caddy: &FakeCaddy) -> String {
        caddy
            .take_calls()
            .iter()
            .map(|c| match c {
                Call::Current => 'G',
                Call::Replace(..) => 'P',
            })
            .collect()
    }

    fn pending(status: &SyncStatus) -> &str {
        match status {
            SyncStatus::Pending { reason } => reason,
            other => panic!("expected Pending, got {other:?}"),
        }
    }

    /// The loop may run a sync in a spawned task.
    #[test]
    fn a_sync_can_be_spawned() {
        fn send<T: Send + 'static>(_: T) {}
        let desired = Routes::default();
        send(async move {
            let mut sync = RouteSync::new(FakeCaddy::new());
            sync.sync(&desired, true).await
        });
    }

    #[tokio::test]
    async fn applies_once_then_stays_quiet() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[("b", "starting")]);

        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(caddy.routes(), desired.to_json());

        // Same list, no resync tick: Caddy is not asked.
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
        assert_eq!(calls(&caddy), "");
        // The resync tick looks, finds it in place, sends nothing.
        assert_eq!(sync.sync(&desired, true).await, SyncStatus::InSync);
        assert_eq!(calls(&caddy), "G");

        // A change is one GET and one PATCH carrying the whole list.
        let changed = routes(&["a", "b"], &[]);
        assert_eq!(sync.sync(&changed, false).await, SyncStatus::Applied);
        let sent = caddy.take_calls();
        assert!(
            matches!(&sent[..], [Call::Current, Call::Replace(list, _)] if *list == changed),
            "{sent:?}"
        );
        assert_eq!(caddy.routes(), changed.to_json());
        assert_eq!(sync.retry_at(), None);
    }

    #[tokio::test]
    async fn every_sync_that_asks_caddy_is_counted_by_result() {
        let caddy = FakeCaddy::new();
        let metrics = Metrics::new();
        let mut sync = RouteSync::new(caddy.clone()).with_metrics(metrics.clone());
        let desired = routes(&["a"], &[]);
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        // Not asked: not counted.
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
        assert_eq!(sync.sync(&desired, true).await, SyncStatus::InSync);
        caddy.set_unavailable(true);
        pending(&sync.sync(&routes(&[], &[]), false).await);
        let text = metrics.encode();
        for line in [
            r#"pgm_caddy_syncs_total{result="applied"} 1"#,
            r#"pgm_caddy_syncs_total{result="in_sync"} 1"#,
            r#"pgm_caddy_syncs_total{result="pending"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn finds_routes_already_in_place_without_patching() {
        // A manager restart: Caddy still holds what the previous run applied.
        let caddy = FakeCaddy::new();
        let desired = routes(&["a"], &[]);
        caddy.edit_by_hand(desired.to_json());
        let mut sync = RouteSync::new(caddy.clone());
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
        assert_eq!(calls(&caddy), "G");
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
        assert_eq!(calls(&caddy), "");
    }

    #[tokio::test]
    async fn the_patch_carries_the_etag_of_the_get() {
        let caddy = FakeCaddy::new();
        caddy.edit_by_hand(json!([{"@id": "something"}]));
        let (_, etag) = caddy.current().await.unwrap();
        caddy.take_calls();
        let mut sync = RouteSync::new(caddy.clone());
        sync.sync(&routes(&["a"], &[]), false).await;
        let sent = caddy.take_calls();
        assert!(
            matches!(&sent[..], [Call::Current, Call::Replace(_, sent)] if *sent == etag),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_restarted_caddy_gets_its_routes_back_on_the_resync_tick() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a", "b"], &[]);
        sync.sync(&desired, false).await;
        caddy.take_calls();

        caddy.restart();
        assert_eq!(caddy.routes(), json!([]));
        // Between ticks nothing is asked: the loop is cheap.
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::InSync);
        assert_eq!(calls(&caddy), "");
        assert_eq!(sync.sync(&desired, true).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(caddy.routes(), desired.to_json());
    }

    #[tokio::test]
    async fn a_concurrent_change_is_retried_once_at_once() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[]);

        caddy.interfere(1);
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GPGP");
        assert_eq!(caddy.routes(), desired.to_json());
        assert_eq!(sync.retry_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_keeps_changing_is_pending_and_retried_later() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[]);

        caddy.interfere(2);
        let status = sync.sync(&desired, false).await;
        assert!(pending(&status).contains("412"), "{status:?}");
        assert_eq!(calls(&caddy), "GPGP", "never a third PATCH in one sync");
        let retry_at = sync.retry_at().expect("backing off");
        assert_eq!(retry_at - Instant::now(), FIRST_RETRY);

        tokio::time::sleep_until(retry_at).await;
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(caddy.routes(), desired.to_json());
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_while_caddy_is_down_then_applies() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[("b", "starting")]);
        caddy.set_unavailable(true);

        let status = sync.sync(&desired, false).await;
        assert!(pending(&status).contains("unreachable"), "{status:?}");
        assert_eq!(calls(&caddy), "G");

        // Doubling from 250 ms, capped at 10 s; no call before each retry is due.
        let mut expected = Vec::new();
        let mut seen = Vec::new();
        let mut delay = FIRST_RETRY;
        for _ in 0..8 {
            expected.push(delay);
            let retry_at = sync.retry_at().expect("backing off");
            seen.push(retry_at - Instant::now());
            // Early calls (a state file changed, the resync tick) cost nothing.
            let early = sync.sync(&desired, true).await;
            assert_eq!(pending(&early), pending(&status));
            assert_eq!(calls(&caddy), "");
            tokio::time::sleep_until(retry_at).await;
            assert!(matches!(
                sync.sync(&desired, false).await,
                SyncStatus::Pending { .. }
            ));
            assert_eq!(calls(&caddy), "G");
            delay = (delay * 2).min(LAST_RETRY);
        }
        assert_eq!(seen, expected);
        assert_eq!(*seen.last().unwrap(), LAST_RETRY);

        caddy.set_unavailable(false);
        tokio::time::sleep_until(sync.retry_at().unwrap()).await;
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(sync.retry_at(), None);
        assert_eq!(caddy.routes(), desired.to_json());

        // The backoff starts over after a success.
        caddy.set_unavailable(true);
        sync.sync(&routes(&[], &[]), false).await;
        assert_eq!(sync.retry_at().unwrap() - Instant::now(), FIRST_RETRY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_patch_is_retried_even_for_the_same_list() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[]);
        caddy.set_refusal(Some((400, "loading new config: bad")));

        let status = sync.sync(&desired, false).await;
        assert_eq!(
            pending(&status),
            "Caddy's admin API answered 400: loading new config: bad"
        );
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(caddy.routes(), json!([]));

        caddy.set_refusal(None);
        tokio::time::sleep_until(sync.retry_at().unwrap()).await;
        // Not the resync tick and the same list: still sent, since the last one failed.
        assert_eq!(sync.sync(&desired, false).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
    }

    #[tokio::test]
    async fn a_hand_edit_is_undone_on_the_resync_tick() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        let desired = routes(&["a"], &[]);
        sync.sync(&desired, false).await;
        caddy.edit_by_hand(json!([{"@id": "by-hand"}]));
        caddy.take_calls();
        assert_eq!(sync.sync(&desired, true).await, SyncStatus::Applied);
        assert_eq!(calls(&caddy), "GP");
        assert_eq!(caddy.routes(), desired.to_json());
    }

    #[tokio::test]
    async fn an_empty_list_is_a_list_too() {
        let caddy = FakeCaddy::new();
        let mut sync = RouteSync::new(caddy.clone());
        // Caddy starts empty: nothing to send.
        assert_eq!(
            sync.sync(&Routes::default(), false).await,
            SyncStatus::InSync
        );
        assert_eq!(calls(&caddy), "G");
        sync.sync(&routes(&["a"], &[]), false).await;
        // The last project goes: its route goes too.
        assert_eq!(
            sync.sync(&Routes::default(), false).await,
            SyncStatus::Applied
        );
        assert_eq!(caddy.routes(), json!([]));
    }
}
