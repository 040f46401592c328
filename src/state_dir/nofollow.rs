//! File operations inside the state and config directories that never follow a symbolic link:
//! every entry is opened relative to its directory's handle with `O_NOFOLLOW`, and changed
//! through the opened handle (`fchmod`, `fchown`), never by path.
//!
//! The manager runs as root. A path-based `chmod`/`chown`/`open` follows a link that someone
//! planted where a directory or file was expected (`projects/<id> -> /etc`) and hands its
//! target to PostgREST's UID; a handle opened without following links cannot be redirected.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

/// The most a state file (or a record) may hold: a real spec is well under 1 KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why an entry could not be read as a file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0} is a symbolic link, which the manager never follows here; put the file itself in its place")]
    Link(String),
    #[error("{0} is a {1}, not a regular file")]
    NotRegular(String, &'static str),
    #[error("{0} is larger than {max} KiB", max = MAX_FILE_BYTES / 1024)]
    TooLarge(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl From<ReadError> for std::io::Error {
    fn from(error: ReadError) -> std::io::Error {
        let kind = match &error {
            ReadError::Io(_, e) => e.kind(),
            _ => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, error.to_string())
    }
}

/// Opens the directory at `path` itself. Links on the way to it were checked at start
/// (`trust::check_trusted`); everything below it is opened through [`open_subdir`].
pub fn open_dir(path: &Path) -> std::io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Opens the subdirectory `name` of `dir`; a link or a file in its place is an error.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) => Err(refusal(dir, name, "a directory", e.into())),
    }
}

/// Creates the subdirectory `name` of `dir` (mode `mode`, before the umask) unless it exists,
/// and opens it without following a link.
pub fn ensure_subdir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> std::io::Result<File> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_subdir(dir, name)
}

/// Opens (creating it, mode 0600) the file `name` of `dir` for writing, without following a
/// link, without truncating it and without blocking (a FIFO in its place would otherwise wait
/// for a reader): for lock files. `flock` on it still waits; `O_NONBLOCK` does not change that.
pub fn open_lock_file(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<File> {
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => File::from(fd),
        Err(e) => return Err(refusal(dir, name, "a file", e.into())),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{name} is not a regular file"),
        ));
    }
    Ok(file)
}

/// Opens the regular file `name` of `dir` for reading: once, without following a link and
/// without blocking (a FIFO opens at once and is then refused), and checks what was opened,
/// not what the path showed a moment earlier. `Ok(None)` when there is no such entry.
pub fn open_regular(
    dir: BorrowedFd<'_>,
    name: &str,
) -> Result<Option<(File, std::fs::Metadata)>, ReadError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(ReadError::Link(name.to_owned())),
        Err(e) => return Err(ReadError::Io(name.to_owned(), e.into())),
    };
    let metadata = file
        .metadata()
        .map_err(|e| ReadError::Io(name.to_owned(), e))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(ReadError::NotRegular(name.to_owned(), what));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(name.to_owned()));
    }
    Ok(Some((file, metadata)))
}

/// Reads at most [`MAX_FILE_BYTES`] from an opened file: one that grew past them since it
/// was checked is too large, not read to its end.
pub fn read_capped(file: &File, name: &str) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(name.to_owned(), e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(name.to_owned()));
    }
    Ok(bytes)
}

/// [`open_regular`] and [`read_capped`]: the content and the metadata of the opened file.
pub fn read_file(
    dir: BorrowedFd<'_>,
    name: &str,
) -> Result<Option<(Vec<u8>, std::fs::Metadata)>, ReadError> {
    match open_regular(dir, name)? {
        Some((file, metadata)) => Ok(Some((read_capped(&file, name)?, metadata))),
        None => Ok(None),
    }
}

/// Gives an opened directory or file `mode` and, with `owner`, that UID and GID, through its
/// handle, and only where they differ (so a manager that is not root can still keep its own).
pub fn set_owner_and_mode(file: &File, mode: u32, owner: Option<u32>) -> std::io::Result<()> {
    let metadata = file.metadata()?;
    if metadata.mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(uid) = owner {
        if metadata.uid() != uid || metadata.gid() != uid {
            std::os::unix::fs::fchown(file, Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

/// Writes `contents` to `name` in `dir` so that readers see the old file or the new one: a
/// temp file created there (exclusively, so never through a link), owned and moded through its
/// handle, fsync, rename within the directory, fsync of the directory.
pub fn write_atomic_at(
    dir: &File,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> std::io::Result<()> {
    let tmp = format!(".{name}.{}.{}.tmp", std::process::id(), unique());
    let result = (|| {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd: OwnedFd = rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(mode))?;
        let mut file = File::from(fd);
        file.write_all(contents)?;
        if let Some(uid) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(uid))?;
        }
        file.sync_all()?;
        // Closed before the rename: a close after it would tell the watcher of a second write.
        drop(file);
        rustix::fs::renameat(dir, &tmp, dir, name)?;
        dir.sync_all()
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    result
}

/// Removes the temp files [`write_atomic_at`] leaves when its process is killed mid-write
/// (`.<name>.<pid>.<n>.tmp`, regular files only) in `dir` and, with `depth` 1, in each of its
/// subdirectories, when older than `age`. Everything is reached through handles: a link is
/// neither followed nor removed.
pub fn sweep_temp_files_at(
    dir: BorrowedFd<'_>,
    age: std::time::Duration,
    depth: u8,
) -> std::io::Result<usize> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut removed = 0;
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        if kind == rustix::fs::FileType::Directory && depth > 0 {
            if let Ok(sub) = open_subdir(dir, name) {
                removed += sweep_temp_files_at(sub.as_fd(), age, depth - 1)?;
            }
            continue;
        }
        let old =
            u64::try_from(stat.st_mtime).is_ok_and(|t| now.saturating_sub(t) >= age.as_secs());
        if kind == rustix::fs::FileType::RegularFile
            && name.starts_with('.')
            && name.ends_with(".tmp")
            && old
            && rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// A per-process counter, so concurrent writers in one process never share a temp file.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Turns a failed no-follow open into a message that says what was in the way.
fn refusal(
    dir: BorrowedFd<'_>,
    name: &str,
    expected: &str,
    error: std::io::Error,
) -> std::io::Error {
    let is_link =
        rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
        });
    if is_link {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{name} is a symbolic link where {expected} belongs; the manager never follows \
                 links here: remove it"
            ),
        )
    } else if error.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{name} is not {expected}: remove it"),
        )
    } else {
        error
    }
}
