//! The start-time check that nobody but the manager's user (or root) can change the state and
//! config directories or any directory above them.
//!
//! Whoever can write the state directory controls every project; whoever can write the config
//! directory, or rename an entry in a parent, can swap a project's directory for a link and
//! have the manager (root) hand its target to PostgREST's UID. So each directory on the way
//! from `/` must be owned by the manager's user or root, and not writable by group or others.
//! One exception keeps `/tmp`-like parents usable: a sticky world-writable parent (`/tmp`,
//! mode 1777) lets others create entries but never rename or remove ours, so it is safe above
//! a directory we own. The directory itself may never be group- or world-writable.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// How many symbolic links the walk follows before it gives up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Refuses `path` (an existing directory) unless it and every directory above it, after
/// following the links on the way, pass the rule above for a process of effective UID `euid`.
/// The error says which directory and how to fix it.
pub fn check_trusted(path: &Path, euid: u32) -> std::io::Result<()> {
    let path = std::path::absolute(path)?;
    let mut queue = names(&path);
    let mut current = PathBuf::from("/");
    check_one(
        &current,
        &std::fs::metadata(&current)?,
        euid,
        queue.is_empty(),
    )?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&name);
        let metadata = std::fs::symlink_metadata(&next)?;
        if metadata.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(refuse(
                    &next,
                    "has too many levels of symbolic links".into(),
                ));
            }
            // The link lives in `current`, which passed: only its owner could have made it.
            let target = std::fs::read_link(&next)?;
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            let mut resolved = names(&target);
            resolved.extend(queue.drain(..));
            queue = resolved;
            continue;
        }
        check_one(&next, &metadata, euid, queue.is_empty())?;
        current = next;
    }
    Ok(())
}

/// The names to walk, in order (`..` kept: it is resolved against the real path so far).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// One directory of the walk; `last` is the state or config directory itself.
fn check_one(
    dir: &Path,
    metadata: &std::fs::Metadata,
    euid: u32,
    last: bool,
) -> std::io::Result<()> {
    if !metadata.is_dir() {
        return Err(refuse(dir, "is not a directory".into()));
    }
    let owner = metadata.uid();
    if owner != euid && owner != 0 {
        return Err(refuse(
            dir,
            format!(
                "is owned by UID {owner}, not by the manager's user (UID {euid}) or root; its \
                 owner could swap what the manager reads and writes. `chown {euid}` it"
            ),
        ));
    }
    let mode = metadata.mode() & 0o7777;
    let writable_by_others = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if writable_by_others && (last || !sticky) {
        return Err(refuse(
            dir,
            format!(
                "is writable by its group or by everyone (mode {mode:04o}); anyone who can \
                 write it controls the projects. `chmod go-w` it (0700 for the state and \
                 config directories)"
            ),
        ));
    }
    Ok(())
}

fn refuse(dir: &Path, reason: String) -> std::io::Error {
    std::io::Error::new(
        ErrorKind::PermissionDenied,
        format!("refusing {}: it {reason}", dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn euid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn writable_directories_and_parents_are_refused_and_sticky_parents_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("parent");
        let state = parent.join("state");
        std::fs::create_dir_all(&state).unwrap();
        chmod(&parent, 0o755);
        chmod(&state, 0o700);
        check_trusted(&state, euid()).unwrap();

        // The directory itself: never writable by others, sticky or not.
        for mode in [0o777, 0o770, 0o1777, 0o720] {
            chmod(&state, mode);
            let error = check_trusted(&state, euid()).unwrap_err().to_string();
            assert!(error.contains("writable by its group"), "{mode:o}: {error}");
            assert!(error.contains(&state.display().to_string()), "{error}");
        }
        chmod(&state, 0o700);

        // A parent: writable by others only if sticky (like /tmp).
        chmod(&parent, 0o777);
        let error = check_trusted(&state, euid()).unwrap_err().to_string();
        assert!(error.contains(&parent.display().to_string()), "{error}");
        chmod(&parent, 0o1777);
        check_trusted(&state, euid()).unwrap();
        chmod(&parent, 0o755);

        // Owned by someone else: refused. Root hands it to another UID; a test that is not
        // root cannot, and checks as another UID instead (root-owned would pass for anyone).
        let error = if euid() == 0 {
            std::os::unix::fs::chown(&state, Some(4242), Some(4242)).unwrap();
            let error = check_trusted(&state, 0).unwrap_err().to_string();
            std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
            error
        } else {
            check_trusted(&state, euid() + 4242)
                .unwrap_err()
                .to_string()
        };
        assert!(error.contains("is owned by UID"), "{error}");

        // A link on the way is followed and its target checked as well.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&parent, &link).unwrap();
        check_trusted(&link.join("state"), euid()).unwrap();
        chmod(&parent, 0o777);
        let error = check_trusted(&link.join("state"), euid())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&parent.display().to_string()), "{error}");
        chmod(&parent, 0o755);
    }
}
