//! The file watcher: a hint that the state directory changed. Only this module imports notify.
//!
//! The callback only pokes the loop with the names of the entries that changed; the loop looks
//! at those files and no others. An error, an inotify queue overflow or an event it cannot
//! place asks for the whole directory to be read again instead, as the periodic rescan does.

use std::path::Path;

use notify::{RecursiveMode, Watcher};

use crate::reconcile::Handle;

/// Keeps the watch alive; dropping it stops watching.
pub struct StateWatch {
    _watcher: notify::RecommendedWatcher,
}

pub fn watch(dir: &Path, loop_handle: Handle) -> notify::Result<StateWatch> {
    let watched = dir.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reads and directory listings (our own loads) are no news.
            Ok(event) if event.kind.is_access() => {}
            Ok(event) if !event.need_rescan() && !event.paths.is_empty() => {
                for path in &event.paths {
                    match entry_name(&watched, path) {
                        Some(name) => loop_handle.file_changed(name),
                        None => loop_handle.wake(),
                    }
                }
            }
            _ => loop_handle.wake(),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(StateWatch { _watcher: watcher })
}

/// The name of `path` as an entry of the watched directory: `None` for the directory itself
/// or a path the loop could not look up by name.
fn entry_name<'a>(watched: &Path, path: &'a Path) -> Option<&'a str> {
    (path.parent() == Some(watched))
        .then(|| path.file_name()?.to_str())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_named_and_anything_else_is_not() {
        let dir = Path::new("/srv/state");
        assert_eq!(
            entry_name(dir, Path::new("/srv/state/a.toml")),
            Some("a.toml")
        );
        assert_eq!(entry_name(dir, Path::new("/srv/state")), None);
        assert_eq!(entry_name(dir, Path::new("/srv/other/a.toml")), None);
        assert_eq!(entry_name(dir, Path::new("/srv/state/sub/a.toml")), None);
    }
}
