//! An in-memory [`CaddyAdmin`] that records every call, for fast tests of [`RouteSync`] and
//! of the reconcile loop.
//!
//! It models what the sync relies on: the ETag changes exactly when the slot's content does
//! (an identical PATCH keeps it), a stale `If-Match` is a 412, a restart empties the slot, and
//! the whole admin API can be made unreachable or made to refuse.
//!
//! [`RouteSync`]: super::RouteSync

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::{CaddyAdmin, CaddyError, Etag, Routes};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A `GET` of the slot.
    Current,
    /// A `PATCH` of the route list, with the list sent and the `If-Match` it carried.
    Replace(Routes, Etag),
}

#[derive(Debug)]
struct Inner {
    routes: Value,
    /// Bumped on every change of `routes`; the ETag names it.
    version: u64,
    calls: Vec<Call>,
    unavailable: bool,
    refusal: Option<(u16, String)>,
    /// The next this many PATCHes find the slot changed by someone else just before them.
    interferences: usize,
}

/// A Caddy whose project slot lives in memory. Clones share it.
#[derive(Clone, Debug)]
pub struct FakeCaddy {
    inner: Arc<Mutex<Inner>>,
}

impl Default for FakeCaddy {
    fn default() -> Self {
        FakeCaddy {
            inner: Arc::new(Mutex::new(Inner {
                routes: json!([]),
                version: 0,
                calls: Vec::new(),
                unavailable: false,
                refusal: None,
                interferences: 0,
            })),
        }
    }
}

impl FakeCaddy {
    /// A Caddy just started from the static config: an empty slot.
    pub fn new() -> FakeCaddy {
        FakeCaddy::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order; clears the record.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The number of PATCHes so far (accepted or not), without clearing the record.
    pub fn replaces(&self) -> usize {
        let inner = self.lock();
        inner
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Replace(..)))
            .count()
    }

    /// The route list Caddy serves now.
    pub fn routes(&self) -> Value {
        self.lock().routes.clone()
    }

    /// Makes every call fail as if Caddy were down (or back up).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Makes every PATCH answer `status` with `message` (or, with `None`, succeed again).
    pub fn set_refusal(&self, refusal: Option<(u16, &str)>) {
        self.lock().refusal = refusal.map(|(status, message)| (status, message.to_owned()));
    }

    /// A Caddy restart: the static config again, with an empty slot.
    pub fn restart(&self) {
        set_routes(&mut self.lock(), json!([]));
    }

    /// Someone else (an operator with curl) writes the slot.
    pub fn edit_by_hand(&self, routes: Value) {
        set_routes(&mut self.lock(), routes);
    }

    /// The next `n` PATCHes each find that someone else changed the slot between the caller's
    /// GET and the PATCH, so their `If-Match` is stale: 412.
    pub fn interfere(&self, n: usize) {
        self.lock().interferences = n;
    }
}

fn set_routes(inner: &mut Inner, routes: Value) {
    if inner.routes != routes {
        inner.routes = routes;
        inner.version += 1;
    }
}

fn etag(inner: &Inner) -> Etag {
    Etag::new(format!("\"/config/fake/routes/0 {:08x}\"", inner.version))
}

impl CaddyAdmin for FakeCaddy {
    async fn current(&self) -> Result<(Value, Etag), CaddyError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Current);
        if inner.unavailable {
            return Err(CaddyError::Unavailable("connection refused (fake)".into()));
        }
        Ok((inner.routes.clone(), etag(&inner)))
    }

    async fn replace(&self, routes: &Routes, if_match: &Etag) -> Result<(), CaddyError> {
        let mut inner = self.lock();
        inner
            .calls
            .push(Call::Replace(routes.clone(), if_match.clone()));
        if inner.unavailable {
            return Err(CaddyError::Unavailable("connection refused (fake)".into()));
        }
        if inner.interferences > 0 {
            inner.interferences -= 1;
            let version = inner.version;
            set_routes(&mut inner, json!([{"@id": format!("by-hand-{version}")}]));
        }
        if *if_match != etag(&inner) {
            return Err(CaddyError::Conflict);
        }
        if let Some((status, message)) = inner.refusal.clone() {
            return Err(CaddyError::Rejected { status, message });
        }
        set_routes(&mut inner, routes.to_json());
        Ok(())
    }
}
