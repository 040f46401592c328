//! The file watcher: a hint that the state directory changed. Only this module imports notify.
//!
//! The callback only pokes the loop, which re-reads the whole directory; what changed is never
//! passed on. An error or an inotify queue overflow is a poke too: "rescan everything" is what
//! the loop does on every wake-up anyway.

use std::path::Path;

use notify::{RecursiveMode, Watcher};

use crate::reconcile::Handle;

/// Keeps the watch alive; dropping it stops watching.
pub struct StateWatch {
    _watcher: notify::RecommendedWatcher,
}

pub fn watch(dir: &Path, loop_handle: Handle) -> notify::Result<StateWatch> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads and directory listings (our own loads) are no news.
        let is_access = matches!(&event, Ok(e) if e.kind.is_access());
        if !is_access {
            loop_handle.wake();
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(StateWatch { _watcher: watcher })
}
