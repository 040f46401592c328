//! Per-project locks for this process's requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::spec::ProjectId;

/// One async mutex per project, so two requests for a project never interleave their
/// read-modify-write and wait. Entries go when their last user does, so the map cannot grow
/// with ids nobody is working on.
#[derive(Default)]
pub(super) struct Locks {
    pub(super) map: Mutex<HashMap<ProjectId, Arc<tokio::sync::Mutex<()>>>>,
}

pub(super) struct ProjectLock<'a> {
    locks: &'a Locks,
    id: ProjectId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Locks {
    pub async fn lock(&self, id: &ProjectId) -> ProjectLock<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        ProjectLock {
            locks: self,
            id: id.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for ProjectLock<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        self.guard = None;
        // Only the map holds it now: nobody waits, so the entry can go. Waiters hold a clone
        // taken under the map's lock, so none can slip in between.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
