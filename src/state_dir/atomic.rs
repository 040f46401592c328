//! Writes that readers see whole or not at all, and the sweep of what a killed writer left.

use std::path::Path;

use super::nofollow::{open_dir, write_atomic_at};

/// Writes `contents` to `path` so that readers see the old file or the new one, never a torn
/// one: a temp file in the same directory (a dotfile, which the loader ignores), fsync, rename,
/// fsync of the directory (see [`write_atomic_at`], which does the work through the directory's
/// handle, never following a link at `path`).
///
/// With an `owner`, the temp file is chowned to that UID (and GID) before the rename, so the
/// file never exists under its final name with the wrong owner.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    write_atomic_at(&open_dir(dir)?, name, contents, mode, owner)
}

/// Removes `write_atomic`'s leftovers in `dir` older than `age`.
pub fn sweep_temp_files(dir: &Path, age: std::time::Duration) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let old = metadata
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed >= age);
        if metadata.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
