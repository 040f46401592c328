//! The file watcher: a hint that the state directory changed. Only this module imports notify.
//!
//! The callback only pokes the loop with the names of the entries that changed; the loop looks
//! at those files and no others. A change known to be complete (renamed into place, closed
//! by its writer) is looked at at once; one that may still be under way (created, modified,
//! removed or renamed away) after the loop's short debounce, which the close or rename that
//! ends it cuts short. Entries the loader passes over (temp files, backups) are no news. An
//! error, an inotify queue overflow or an event it cannot place asks for the whole directory
//! to be read again instead, as the periodic rescan does.

use std::path::Path;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};

use crate::reconcile::Handle;
use crate::state_dir;

/// Keeps the watch alive; dropping it stops watching.
pub struct StateWatch {
    _watcher: notify::RecommendedWatcher,
}

/// What the watcher tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
enum News {
    /// The entry's change is complete: look now.
    Written(String),
    /// The entry is changing: look soon.
    Changing(String),
    /// Something changed that no entry names: read the whole directory soon.
    Unplaced,
}

pub fn watch(dir: &Path, loop_handle: Handle) -> notify::Result<StateWatch> {
    watch_with(dir, move |news| match news {
        News::Written(name) => loop_handle.file_written(&name),
        News::Changing(name) => loop_handle.file_changed(&name),
        News::Unplaced => loop_handle.wake(),
    })
}

fn watch_with(dir: &Path, tell: impl Fn(News) + Send + 'static) -> notify::Result<StateWatch> {
    let watched = dir.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !event.need_rescan() => {
                let Some(news) = news_of(&event.kind) else {
                    return;
                };
                if event.paths.is_empty() {
                    tell(News::Unplaced);
                }
                for path in &event.paths {
                    match entry_name(&watched, path) {
                        Some(name) if state_dir::ignored(name) => {}
                        Some(name) => tell(news(name.to_owned())),
                        None => tell(News::Unplaced),
                    }
                }
            }
            _ => tell(News::Unplaced),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(StateWatch { _watcher: watcher })
}

/// What an event tells of each entry it names; `None`: no news (reads, our own loads among
/// them).
fn news_of(kind: &EventKind) -> Option<fn(String) -> News> {
    match kind {
        // Closed by its writer, renamed into place: the entry holds what its writer meant.
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(News::Written),
        EventKind::Access(_) => None,
        // inotify reports a rename's two ends each on its own (`From`, `To`) before the
        // `Both` that pairs them.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        // Created, written to, its metadata changed; or removed or renamed away, which an
        // editor does to the old file just before it writes the new one (vim's backup, `rm`
        // then a new file): more of the same change may follow. A file gone for good removes
        // its project only after the debounce, so one replaced at once never does.
        _ => Some(News::Changing),
    }
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
    use std::sync::mpsc;
    use std::time::Duration;

    /// What the watcher told, up to and including `last` (a safety net of a minute, not a
    /// measurement). What came before `last` is all a change brought: the changes are made
    /// one after another and inotify reports in order.
    fn told_until(news: &mpsc::Receiver<News>, last: &News) -> Vec<News> {
        let mut told = Vec::new();
        while told.last() != Some(last) {
            told.push(
                news.recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("{e}: waiting for {last:?} after {told:?}")),
            );
        }
        told
    }

    #[test]
    fn a_complete_change_is_told_as_written_and_one_under_way_as_changing() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, news) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let _watch = watch_with(dir.path(), move |n| tx.lock().unwrap().send(n).unwrap()).unwrap();
        let written = |name: &str| News::Written(name.to_owned());
        let changing = |name: &str| News::Changing(name.to_owned());

        // The API's and the CLI's atomic write (a dotfile, fsync, rename): one word, at once,
        // and nothing of its temp file.
        state_dir::write_atomic(&dir.path().join("p.toml"), b"x = 1\n", 0o600, None).unwrap();
        assert_eq!(told_until(&news, &written("p.toml")), [written("p.toml")]);

        // An edit in place: changing while it is written, written once its writer closes it.
        std::fs::write(dir.path().join("q.toml"), "x = 2\n").unwrap();
        let told = told_until(&news, &written("q.toml"));
        let (last, before) = told.split_last().unwrap();
        assert_eq!(last, &written("q.toml"));
        assert!(
            !before.is_empty() && before.iter().all(|n| *n == changing("q.toml")),
            "{told:?}"
        );

        // Reads (the loader's own) and entries the loader passes over are no news; a rename
        // is complete where it lands and under way where it left, as a removal is: an editor
        // moves the old file away (vim's backup) or removes it just before it writes the new.
        std::fs::read(dir.path().join("q.toml")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "n").unwrap();
        std::fs::write(dir.path().join(".q.toml.swp"), "n").unwrap();
        std::fs::rename(dir.path().join("q.toml"), dir.path().join("r.toml")).unwrap();
        assert_eq!(
            told_until(&news, &written("r.toml")),
            [changing("q.toml"), written("r.toml")]
        );
        std::fs::rename(dir.path().join("r.toml"), dir.path().join("r.toml~")).unwrap();
        std::fs::remove_file(dir.path().join("p.toml")).unwrap();
        std::fs::write(dir.path().join("p.toml"), "x = 3\n").unwrap();
        let told = told_until(&news, &written("p.toml"));
        assert_eq!(
            told[..2],
            [changing("r.toml"), changing("p.toml")],
            "{told:?}"
        );
        assert!(
            told[2..told.len() - 1]
                .iter()
                .all(|n| *n == changing("p.toml")),
            "{told:?}"
        );
    }

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
