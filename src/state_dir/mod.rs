//! The desired-state directory: loading every file (one bad file never stops the others),
//! the writer lock, atomic writes, and the one way to edit a project's file. Every entry is
//! opened through the directory's handle without following links (`nofollow.rs`), and the
//! directory is refused unless only the manager's user or root can change it (`trust.rs`).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod atomic;
pub(crate) mod nofollow;
mod trust;

use atomic::sync_dir;
pub use atomic::{sweep_temp_files, write_atomic};
pub use nofollow::MAX_FILE_BYTES;
pub use trust::check_trusted;

use crate::spec::{ProjectId, Spec, SpecError, SpecFile};

/// What one directory read found: the valid specs, and the errors, each with its file.
/// Specs are shared with the load cache: an unchanged file is the same `Arc` pass after pass,
/// so a caller can tell "unchanged" by pointer without comparing.
#[derive(Debug, Default)]
pub struct Loaded {
    pub specs: BTreeMap<ProjectId, Arc<Spec>>,
    /// Files named after a valid id whose content is invalid.
    pub invalid: BTreeMap<ProjectId, SpecError>,
    /// `*.toml` files whose name is not a valid project id, sorted.
    pub misnamed: Vec<PathBuf>,
    /// Every file is the one the previous load with the same cache found: nothing was read,
    /// added or removed, so what the caller derived from that load still holds.
    pub unchanged: bool,
}

/// What a project's state file holds: a spec, the reason it is invalid, or `None`: no file.
pub type FileState = Option<Result<Arc<Spec>, SpecError>>;

/// What a [`StateDir::load_named`] found: the named project files that changed, each with
/// what it holds now, and the misnamed files when one of them came or went.
#[derive(Debug, Default)]
pub struct Named {
    pub changed: Vec<(ProjectId, FileState)>,
    pub misnamed: Option<Vec<PathBuf>>,
}

impl Named {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.misnamed.is_none()
    }
}

/// What a directory entry is to the loader.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Project(ProjectId),
    Misnamed,
    Ignored,
}

/// Editors and tools leave all kinds of files next to the real ones: dotfiles (vim's `.x.swp`,
/// our own temp files), backups (`x~`), vim's `4913` probe, `*.tmp`. Only `<id>.toml` counts.
fn classify(file_name: &str) -> Entry {
    if file_name.starts_with('.') {
        return Entry::Ignored;
    }
    match file_name.strip_suffix(".toml") {
        Some(stem) => match ProjectId::parse(stem) {
            Ok(id) => Entry::Project(id),
            Err(_) => Entry::Misnamed,
        },
        None => Entry::Ignored,
    }
}

/// Whether the loader passes over the entry `file_name` whatever it holds (a temp file, a
/// backup, anything but `*.toml`): a change to it is no news.
pub fn ignored(file_name: &str) -> bool {
    classify(file_name) == Entry::Ignored
}

/// The desired-state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, id: &ProjectId) -> PathBuf {
        self.path.join(format!("{id}.toml"))
    }

    /// Creates the directory if missing, refuses it (clearly) when anyone but this process's
    /// user or root could change it or a directory above it ([`check_trusted`]), and keeps it
    /// 0700 through its handle.
    pub fn ensure(&self) -> std::io::Result<()> {
        self.open().map(drop)
    }

    /// [`StateDir::ensure`], and the directory's handle, which every entry is opened through.
    fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.path)?;
        check_trusted(&self.path, rustix::process::geteuid().as_raw())?;
        let dir = nofollow::open_dir(&self.path)?;
        nofollow::set_owner_and_mode(&dir, 0o700, None)?;
        Ok(dir)
    }

    /// Reads every project file. One bad file never stops the others; only a directory that
    /// cannot be listed is an error.
    pub fn load(&self) -> std::io::Result<Loaded> {
        self.load_cached(&mut LoadCache::default())
    }

    /// Like [`StateDir::load`], but files whose metadata has not changed since the last call
    /// (and had settled by then) are not read again. An idle manager with a thousand projects
    /// then costs a directory listing and a `stat` per file per resync, and no copies.
    pub fn load_cached(&self, cache: &mut LoadCache) -> std::io::Result<Loaded> {
        self.load_cached_at(cache, std::time::SystemTime::now())
    }

    /// [`StateDir::load_cached`], or `None` when every file is the one the last call found
    /// (nothing read, added or removed): what the caller derived from that load still holds.
    /// The usual idle pass then builds nothing at all: a lookup by name and a `stat` per file.
    pub fn load_changed(&self, cache: &mut LoadCache) -> std::io::Result<Option<Loaded>> {
        self.load_changed_at(cache, std::time::SystemTime::now())
    }

    fn load_changed_at(
        &self,
        cache: &mut LoadCache,
        now: std::time::SystemTime,
    ) -> std::io::Result<Option<Loaded>> {
        let changed = self.scan(cache, now)?;
        Ok(changed.then(|| self.loaded_from(cache, false)))
    }

    fn load_cached_at(
        &self,
        cache: &mut LoadCache,
        now: std::time::SystemTime,
    ) -> std::io::Result<Loaded> {
        let changed = self.scan(cache, now)?;
        Ok(self.loaded_from(cache, !changed))
    }

    /// Like [`StateDir::load_changed`], but looks at the files named in `names` alone (a
    /// watcher's word on what changed): a `stat` per name, not per file in the directory, and
    /// no listing. Says what became of each named project file that changed, and nothing of
    /// the others: the caller's cost is that of the change, not of the directory. A name
    /// that never was a project file is dropped.
    pub fn load_named<'a>(
        &self,
        cache: &mut LoadCache,
        names: impl IntoIterator<Item = &'a str>,
    ) -> std::io::Result<Named> {
        self.load_named_at(cache, names, std::time::SystemTime::now())
    }

    fn load_named_at<'a>(
        &self,
        cache: &mut LoadCache,
        names: impl IntoIterator<Item = &'a str>,
        now: std::time::SystemTime,
    ) -> std::io::Result<Named> {
        let mut named = Named::default();
        let mut misnamed = false;
        let mut dir = None;
        for name in names {
            let was = match cache.entries.get(name) {
                Some(cached) => match &cached.kind {
                    CachedKind::Project(id, _) => Entry::Project(id.clone()),
                    CachedKind::Misnamed => Entry::Misnamed,
                },
                None => classify(name),
            };
            if was == Entry::Ignored {
                continue;
            }
            let stamp = match std::fs::symlink_metadata(self.path.join(name)) {
                Ok(metadata) => (!metadata.is_dir()).then(|| FileStamp::of(&metadata)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if !self.visit(cache, name, stamp, now, &mut dir)? {
                continue;
            }
            match (was, cache.entries.get(name).map(|c| &c.kind)) {
                (_, Some(CachedKind::Project(id, Ok(spec)))) => {
                    named.changed.push((id.clone(), Some(Ok(spec.clone()))));
                }
                (_, Some(CachedKind::Project(id, Err(error)))) => {
                    named.changed.push((id.clone(), Some(Err(error.clone()))));
                }
                (Entry::Project(id), None) => named.changed.push((id, None)),
                _ => misnamed = true,
            }
        }
        if misnamed {
            named.misnamed = Some(self.loaded_from(cache, false).misnamed);
        }
        Ok(named)
    }

    /// Brings `cache` up to date with the directory; `true` when anything was read, added or
    /// removed since the last scan.
    fn scan(&self, cache: &mut LoadCache, now: std::time::SystemTime) -> std::io::Result<bool> {
        cache.generation += 1;
        let generation = cache.generation;
        let mut changed = false;
        // The handle files are read through, opened at the first read: an idle pass opens
        // nothing but the listing.
        let mut dir: Option<std::fs::File> = None;
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Known names are looked up as they are; a name is parsed once, when new.
            if !cache.entries.contains_key(name) && classify(name) == Entry::Ignored {
                continue;
            }
            changed |= self.visit(cache, name, stamp_of(&entry), now, &mut dir)?;
        }
        // What was not seen again: removed files.
        let before = cache.entries.len();
        cache.entries.retain(|_, cached| cached.seen == generation);
        Ok(changed || cache.entries.len() != before)
    }

    /// Brings the cache's entry for `name` in line with the directory entry's `stamp` (`None`:
    /// no file by that name, or a directory), reading the file only if the stamp changed or
    /// has not settled. `true` when the entry was read, added or removed. `dir` is the
    /// directory's handle, opened at the first read.
    fn visit(
        &self,
        cache: &mut LoadCache,
        name: &str,
        stamp: Option<FileStamp>,
        now: std::time::SystemTime,
        dir: &mut Option<std::fs::File>,
    ) -> std::io::Result<bool> {
        let generation = cache.generation;
        let Some(stamp) = stamp else {
            return Ok(cache.entries.remove(name).is_some());
        };
        let id = match cache.entries.get_mut(name) {
            Some(cached) => match &cached.kind {
                CachedKind::Misnamed => {
                    cached.seen = generation;
                    return Ok(false);
                }
                CachedKind::Project(id, _) => {
                    if cached.stamp == Some(stamp) && stamp.settled(now) {
                        cached.seen = generation;
                        return Ok(false);
                    }
                    id.clone()
                }
            },
            None => match classify(name) {
                Entry::Project(id) => id,
                Entry::Misnamed => {
                    cache.entries.insert(
                        name.to_owned(),
                        Cached {
                            stamp: None,
                            kind: CachedKind::Misnamed,
                            seen: generation,
                        },
                    );
                    return Ok(true);
                }
                Entry::Ignored => return Ok(false),
            },
        };
        cache.reads += 1;
        let handle = match dir.take() {
            Some(handle) => handle,
            None => nofollow::open_dir(&self.path)?,
        };
        let read = read_spec(handle.as_fd(), &id);
        *dir = Some(handle);
        let (stamp, result) = match read {
            Ok(Some((spec, opened))) => (FileStamp::of(&opened), Ok(Arc::new(spec))),
            // Deleted between listing and reading: it is simply gone.
            Ok(None) => {
                cache.entries.remove(name);
                return Ok(true);
            }
            Err(error) => (stamp, Err(error)),
        };
        cache.entries.insert(
            name.to_owned(),
            Cached {
                stamp: Some(stamp),
                kind: CachedKind::Project(id, result),
                seen: generation,
            },
        );
        Ok(true)
    }

    /// The load `cache` describes.
    fn loaded_from(&self, cache: &LoadCache, unchanged: bool) -> Loaded {
        let mut loaded = Loaded {
            unchanged,
            ..Loaded::default()
        };
        for (name, cached) in &cache.entries {
            match &cached.kind {
                CachedKind::Misnamed => loaded.misnamed.push(self.path.join(name)),
                CachedKind::Project(id, Ok(spec)) => {
                    loaded.specs.insert(id.clone(), spec.clone());
                }
                CachedKind::Project(id, Err(error)) => {
                    loaded.invalid.insert(id.clone(), error.clone());
                }
            }
        }
        loaded.misnamed.sort();
        loaded
    }

    /// Reads one project's file: `Ok(None)` when there is none.
    pub fn read(&self, id: &ProjectId) -> Result<Option<Spec>, SpecError> {
        match self.read_file(id)? {
            Some(file) => Spec::from_file(id.clone(), file).map(Some),
            None => Ok(None),
        }
    }

    /// Reads one project's wire form, for read-modify-write callers (CLI, API): like the
    /// loader, once, without following a link, at most [`MAX_FILE_BYTES`].
    pub fn read_file(&self, id: &ProjectId) -> Result<Option<SpecFile>, SpecError> {
        let dir = match nofollow::open_dir(&self.path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpecError::Io(e.kind().to_string())),
        };
        Ok(read_wire(dir.as_fd(), id)?.map(|(file, _)| file))
    }

    /// Validates and writes one project's file atomically (0600). A file that would not load
    /// is refused, so nothing invalid ever reaches the directory through this call.
    pub fn write(&self, id: &ProjectId, file: &SpecFile) -> Result<(), WriteError> {
        Spec::from_file(id.clone(), file.clone())?;
        self.ensure()?;
        write_atomic(&self.file(id), file.to_toml().as_bytes(), 0o600, None)?;
        Ok(())
    }

    /// The one way to change a project's file: read it, let `change` decide what to write,
    /// validate, write atomically (only when it differs), all under the writer lock. `change`
    /// gets the current file: `Ok(None)` when there is none, `Err` when it does not parse (a
    /// caller that replaces the whole spec may ignore that). A refusal from `change` writes
    /// nothing. The lock is released before this returns, so no caller holds it while it
    /// waits for the manager to act.
    pub fn edit<E: From<EditError>>(
        &self,
        id: &ProjectId,
        change: impl FnOnce(Result<Option<SpecFile>, SpecError>) -> Result<SpecFile, E>,
    ) -> Result<Edited, E> {
        let lock = self.lock().map_err(EditError::Lock)?;
        self.edit_locked(&lock, id, change)
    }

    /// [`StateDir::edit`] for a caller that already holds the writer lock (taken with
    /// [`StateDir::try_lock`], so that it could bound its wait).
    pub fn edit_locked<E: From<EditError>>(
        &self,
        _lock: &StateLock,
        id: &ProjectId,
        change: impl FnOnce(Result<Option<SpecFile>, SpecError>) -> Result<SpecFile, E>,
    ) -> Result<Edited, E> {
        let existed = std::fs::symlink_metadata(self.file(id)).is_ok();
        let current = self.read_file(id);
        let before = current.as_ref().ok().cloned().flatten();
        let file = change(current)?;
        let spec = Spec::from_file(id.clone(), file.clone()).map_err(EditError::Invalid)?;
        if before.as_ref() != Some(&file) {
            self.ensure().map_err(EditError::Io)?;
            write_atomic(&self.file(id), file.to_toml().as_bytes(), 0o600, None)
                .map_err(EditError::Io)?;
        }
        Ok(Edited {
            created: !existed,
            spec,
        })
    }

    /// Removes temp files a killed writer left behind (`.<name>.<pid>.<n>.tmp`: they may hold
    /// secrets). Only a serving manager calls it, holding [`StateDir::serve_lock`], and the
    /// CLI's writers finish within moments; a temp file older than a minute is nobody's.
    /// Returns how many it removed.
    pub fn sweep_temp_files(&self) -> std::io::Result<usize> {
        sweep_temp_files(&self.path, std::time::Duration::from_secs(60))
    }

    /// Takes the lock only one serving manager may hold on this directory, without waiting:
    /// `Ok(None)` when another process holds it. Released when the process ends.
    pub fn serve_lock(&self) -> std::io::Result<Option<StateLock>> {
        let file = nofollow::open_lock_file(self.open()?.as_fd(), SERVE_LOCK_FILE)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// A random token made once and kept in the directory: two managers are the same
    /// instance on a Docker daemon only if they serve the same state (wherever it is mounted).
    pub fn identity(&self) -> std::io::Result<String> {
        let dir = self.open()?;
        if let Some((bytes, _)) = nofollow::read_file(dir.as_fd(), IDENTITY_FILE)? {
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            if !token.is_empty() {
                return Ok(token);
            }
        }
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{token}\n");
        nofollow::write_atomic_at(&dir, IDENTITY_FILE, text.as_bytes(), 0o600, None)?;
        Ok(token)
    }

    /// Removes one project's file: `Ok(false)` when there was none.
    pub fn remove(&self, id: &ProjectId) -> std::io::Result<bool> {
        match std::fs::remove_file(self.file(id)) {
            Ok(()) => {
                sync_dir(&self.path)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes the directory's writer lock (an advisory `flock` on `.lock`), blocking until it is
    /// free. Every read-modify-write of a project file (CLI and API) holds it, so writers in
    /// different processes cannot interleave and lose one another's change. Readers need no
    /// lock: every write is an atomic rename. Released when the guard is dropped.
    pub fn lock(&self) -> std::io::Result<StateLock> {
        let file = self.lock_file()?;
        file.lock()?;
        Ok(StateLock { _file: file })
    }

    /// The writer lock if it is free now, `Ok(None)` if someone holds it: for a caller that
    /// must not park a thread on it (the API bounds its wait).
    pub fn try_lock(&self) -> std::io::Result<Option<StateLock>> {
        let file = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// `.lock`, opened through the directory's handle: a link in its place is refused, so
    /// the lock can never create or open a file anywhere else.
    fn lock_file(&self) -> std::io::Result<std::fs::File> {
        nofollow::open_lock_file(self.open()?.as_fd(), LOCK_FILE)
    }
}

/// The stamp of a directory entry that may be a project file: the entry itself, never a
/// link's target (`lstat`, relative to the directory). A directory named `x.toml` is not a
/// project file (`None`); a link, a FIFO, a device is an invalid one, and the read says so
/// without following or blocking. The cache is checked against this `lstat` (a pass over
/// idle files opens none of them); a file that is read is stamped with the `fstat` of the
/// handle it was read through, so the cache describes exactly what was parsed even if the
/// entry was swapped between the two: the next pass sees the difference and reads again.
fn stamp_of(entry: &std::fs::DirEntry) -> Option<FileStamp> {
    let metadata = entry.metadata().ok()?;
    (!metadata.is_dir()).then(|| FileStamp::of(&metadata))
}

/// Reads and parses `<id>.toml` in `dir` ([`nofollow::read_file`]): the wire form and the
/// metadata of the file that was read. A link, a FIFO, a device or a file over
/// [`MAX_FILE_BYTES`] is an invalid file that says what it is.
fn read_wire(
    dir: std::os::fd::BorrowedFd<'_>,
    id: &ProjectId,
) -> Result<Option<(SpecFile, std::fs::Metadata)>, SpecError> {
    let name = format!("{id}.toml");
    let read = nofollow::read_file(dir, &name).map_err(|e| match e {
        nofollow::ReadError::Io(_, e) => SpecError::Io(e.kind().to_string()),
        other => SpecError::Io(other.to_string()),
    })?;
    let Some((bytes, metadata)) = read else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| SpecError::Io("the file is not valid UTF-8".to_owned()))?;
    Ok(Some((SpecFile::parse(&text)?, metadata)))
}

/// [`read_wire`], validated.
fn read_spec(
    dir: std::os::fd::BorrowedFd<'_>,
    id: &ProjectId,
) -> Result<Option<(Spec, std::fs::Metadata)>, SpecError> {
    match read_wire(dir, id)? {
        Some((file, metadata)) => Ok(Some((Spec::from_file(id.clone(), file)?, metadata))),
        None => Ok(None),
    }
}

/// The loader ignores dotfiles, so the lock file is never taken for a project.
const LOCK_FILE: &str = ".lock";
/// Held by the one manager serving this directory, for as long as it runs.
const SERVE_LOCK_FILE: &str = ".manager.lock";
/// This directory's identity on a Docker daemon (see [`StateDir::identity`]).
const IDENTITY_FILE: &str = ".instance-id";

/// Holds [`StateDir::lock`] until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// What [`StateDir::load_cached`] remembers between calls, by file name.
#[derive(Debug, Default)]
pub struct LoadCache {
    entries: HashMap<String, Cached>,
    /// Bumped by every scan; an entry it did not mark was not seen again: a removed file.
    generation: u64,
    /// Files opened and parsed through this cache, ever: what an idle pass must not add to.
    reads: u64,
}

impl LoadCache {
    /// How many files were opened and parsed through this cache so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }
}

#[derive(Debug)]
struct Cached {
    /// The entry's stamp when it was read; `None` for a misnamed file, which is never read.
    stamp: Option<FileStamp>,
    kind: CachedKind,
    /// The scan that last saw the entry.
    seen: u64,
}

#[derive(Debug)]
enum CachedKind {
    Project(ProjectId, Result<Arc<Spec>, SpecError>),
    Misnamed,
}

/// Enough metadata to tell that a file changed: an atomic rename gives a new inode, an edit in
/// place a new size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            inode: metadata.ino(),
            size: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// File times tick coarsely (a few ms), so two same-size edits in place in one tick look
    /// alike. As git does with its index, trust a stamp only once the file has been left
    /// alone for a while; until then, read it every time.
    fn settled(&self, now: std::time::SystemTime) -> bool {
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(self.ctime.0.max(0) as u64, self.ctime.1 as u32);
        now.duration_since(changed)
            .is_ok_and(|age| age > std::time::Duration::from_secs(2))
    }
}

/// What [`StateDir::edit`] wrote.
#[derive(Debug)]
pub struct Edited {
    /// There was no file before.
    pub created: bool,
    /// The spec now in the file.
    pub spec: Spec,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("locking the state directory: {0}")]
    Lock(std::io::Error),
    #[error(transparent)]
    Invalid(SpecError),
    #[error("cannot write the state file: {0}")]
    Io(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("cannot write the state file: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::spec::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn id(raw: &str) -> ProjectId {
        ProjectId::parse(raw).unwrap()
    }

    #[test]
    fn classify_names() {
        assert_eq!(classify("p1.toml"), Entry::Project(id("p1")));
        assert_eq!(classify("P1.toml"), Entry::Misnamed);
        for ignored in [
            ".p1.toml.swp",
            ".p1.toml",
            "p1.toml~",
            "p1.toml.tmp",
            "4913",
            "p1.txt",
        ] {
            assert_eq!(classify(ignored), Entry::Ignored, "{ignored}");
        }
    }

    #[test]
    fn load_keeps_going_past_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let good = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        state.write(&id("good"), &good).unwrap();
        std::fs::write(dir.path().join("bad.toml"), "jwt_secret = [").unwrap();
        std::fs::write(dir.path().join("Bad-Name.toml"), "").unwrap();
        std::fs::write(dir.path().join(".good.toml.swp"), "junk").unwrap();
        std::fs::create_dir(dir.path().join("sub.toml")).unwrap();

        let loaded = state.load().unwrap();
        assert_eq!(loaded.specs.keys().collect::<Vec<_>>(), [&id("good")]);
        assert_eq!(loaded.invalid.keys().collect::<Vec<_>>(), [&id("bad")]);
        assert_eq!(loaded.misnamed.len(), 1);
        let mode = std::fs::metadata(state.file(&id("good")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn cached_loads_see_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let mut cache = LoadCache::default();
        let file = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        state.write(&id("a"), &file).unwrap();
        let first = state.load_cached(&mut cache).unwrap().specs[&id("a")].clone();
        assert_eq!(first.db_pool, 10);
        // Unchanged and settled (a clock 3 s ahead): the same spec, neither read nor copied.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        let again = state.load_cached_at(&mut cache, later).unwrap();
        assert!(Arc::ptr_eq(&first, &again.specs[&id("a")]));
        assert!(again.unchanged);
        // Unchanged but fresh: read again, since a same-size edit in the same tick looks alike.
        let fresh = state.load_cached(&mut cache).unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh.specs[&id("a")]));
        assert!(!fresh.unchanged);
        // A new file, even a misnamed one, and a removed one are changes.
        std::fs::write(dir.path().join("Bad Name.toml"), "").unwrap();
        assert!(!state.load_cached_at(&mut cache, later).unwrap().unchanged);
        assert!(state.load_cached_at(&mut cache, later).unwrap().unchanged);
        std::fs::remove_file(dir.path().join("Bad Name.toml")).unwrap();
        assert!(!state.load_cached_at(&mut cache, later).unwrap().unchanged);

        // Same size, in place, right away: a fresh file is always read again.
        let text = std::fs::read_to_string(state.file(&id("a"))).unwrap();
        std::fs::write(state.file(&id("a")), text.replace("pw", "qw")).unwrap();
        let loaded = state.load_cached(&mut cache).unwrap();
        assert_eq!(loaded.specs[&id("a")].authenticator_password.expose(), "qw");

        std::fs::write(state.file(&id("a")), "broken").unwrap();
        assert!(state
            .load_cached(&mut cache)
            .unwrap()
            .invalid
            .contains_key(&id("a")));
        std::fs::remove_file(state.file(&id("a"))).unwrap();
        assert!(state.load_cached(&mut cache).unwrap().invalid.is_empty());
    }

    /// The watcher's word: a named load looks at the named entries alone. A file nobody named
    /// waits for the next full load; a named file that is gone goes, and names that are no
    /// project file cost nothing.
    #[test]
    fn a_named_load_looks_at_the_named_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let file = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        for name in ["a", "b", "c"] {
            state.write(&id(name), &file).unwrap();
        }
        let mut cache = LoadCache::default();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        state.load_cached_at(&mut cache, later).unwrap();
        assert_eq!(cache.reads(), 3);

        let mut edited = file.clone();
        edited.bump_reload();
        state.write(&id("b"), &edited).unwrap();
        state.write(&id("unnamed"), &file).unwrap();
        std::fs::remove_file(state.file(&id("c"))).unwrap();
        let named = ["b.toml", "c.toml", ".b.toml.123.tmp", "notes.txt"];
        let loaded = state.load_named_at(&mut cache, named, later).unwrap();
        assert_eq!(cache.reads(), 4, "b alone was read");
        let [(b, Some(Ok(spec))), (c, None)] = &loaded.changed[..] else {
            panic!("b changed and c went: {loaded:?}");
        };
        assert_eq!((b, c), (&id("b"), &id("c")));
        assert_eq!(spec.reload_token, 1);
        assert!(loaded.misnamed.is_none());
        assert!(state
            .load_named_at(&mut cache, ["a.toml", "b.toml"], later)
            .unwrap()
            .is_empty());
        assert_eq!(cache.reads(), 4, "settled and unchanged: not read again");

        // A misnamed file named: the list of them, whole.
        std::fs::write(dir.path().join("Bad Name.toml"), "").unwrap();
        let loaded = state
            .load_named_at(&mut cache, ["Bad Name.toml"], later)
            .unwrap();
        assert!(loaded.changed.is_empty());
        assert_eq!(
            loaded.misnamed,
            Some(vec![dir.path().join("Bad Name.toml")])
        );

        let full = state.load_changed_at(&mut cache, later).unwrap().unwrap();
        assert!(
            full.specs.contains_key(&id("unnamed")),
            "the full load finds it"
        );
        assert_eq!(full.specs.len(), 3);
    }

    /// An idle pass reads nothing: unchanged, settled files are neither opened nor parsed
    /// again (counted through the cache, not timed), and `load_changed` has nothing to say.
    /// Only the file that changed is read again.
    #[test]
    fn the_loader_does_not_read_unchanged_files_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let file = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        for name in ["a", "b", "c"] {
            state.write(&id(name), &file).unwrap();
        }
        std::fs::write(dir.path().join("Bad Name.toml"), "").unwrap();
        std::fs::write(dir.path().join(".hidden.toml"), "").unwrap();
        let mut cache = LoadCache::default();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        let first = state.load_cached_at(&mut cache, later).unwrap();
        assert_eq!(cache.reads(), 3);
        assert_eq!(first.specs.len(), 3);
        assert_eq!(first.misnamed.len(), 1);
        for _ in 0..5 {
            let again = state.load_cached_at(&mut cache, later).unwrap();
            assert!(again.unchanged);
            assert_eq!(again.specs.len(), 3);
            assert_eq!(again.misnamed, first.misnamed);
        }
        assert_eq!(cache.reads(), 3, "an idle load opened a file");

        // Edited (a new inode, as every write here is): that file alone is read again.
        let mut edited = file;
        edited.bump_reload();
        state.write(&id("b"), &edited).unwrap();
        let changed = state
            .load_changed_at(&mut cache, later)
            .unwrap()
            .expect("a change");
        assert_eq!(cache.reads(), 4);
        assert_eq!(changed.specs[&id("b")].reload_token, 1);
        assert!(Arc::ptr_eq(
            &changed.specs[&id("a")],
            &first.specs[&id("a")]
        ));
        // Settled again (a clock 3 s ahead of the edit): nothing to say, nothing read.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        assert!(state.load_cached_at(&mut cache, later).unwrap().unchanged);
        assert_eq!(cache.reads(), 4);
        let reads = cache.reads();

        // A removed file is a change, and read nothing.
        std::fs::remove_file(state.file(&id("c"))).unwrap();
        let removed = state.load_cached_at(&mut cache, later).unwrap();
        assert!(!removed.unchanged);
        assert!(!removed.specs.contains_key(&id("c")));
        assert_eq!(cache.reads(), reads);
    }

    #[test]
    fn the_writer_lock_keeps_concurrent_edits_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let file = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        state.write(&id("p"), &file).unwrap();
        // Two writers bump the same counter: without the lock, one overwrites the other's
        // read-modify-write and increments are lost.
        let bumps = 100;
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..bumps {
                        let _lock = state.lock().unwrap();
                        let mut file = state.read_file(&id("p")).unwrap().unwrap();
                        file.reload_token = Some(file.reload_token.unwrap_or(0) + 1);
                        state.write(&id("p"), &file).unwrap();
                    }
                });
            }
        });
        let file = state.read_file(&id("p")).unwrap().unwrap();
        assert_eq!(file.reload_token, Some(2 * bumps));
        // The lock file is not a project.
        let loaded = state.load().unwrap();
        assert_eq!(loaded.specs.len(), 1);
        assert!(loaded.misnamed.is_empty() && loaded.invalid.is_empty());
    }

    #[test]
    fn write_refuses_invalid_specs() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let bad = SpecFile::new(Secret::new("short"), Secret::new("pw"));
        assert!(matches!(
            state.write(&id("p"), &bad),
            Err(WriteError::Invalid(_))
        ));
        assert!(!state.file(&id("p")).exists());
    }

    #[test]
    fn edit_refuses_without_writing_and_skips_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let fresh = |current: Result<Option<SpecFile>, SpecError>| {
            assert!(matches!(current, Ok(None)));
            Ok::<_, EditError>(SpecFile::new(Secret::new(SECRET), Secret::new("pw")))
        };
        assert!(state.edit(&id("p"), fresh).unwrap().created);
        let inode = || {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(state.file(&id("p"))).unwrap())
        };
        let before = inode();

        // The same content again: nothing is written (same inode), and it was not created.
        let same = state
            .edit(&id("p"), |f| Ok::<_, EditError>(f.unwrap().unwrap()))
            .unwrap();
        assert!(!same.created);
        assert_eq!(inode(), before);

        // An invalid result is refused and the file stays as it was.
        let invalid = state.edit(&id("p"), |f| {
            let mut file = f.unwrap().unwrap();
            file.jwt_secret = Secret::new("short");
            Ok::<_, EditError>(file)
        });
        assert!(matches!(invalid, Err(EditError::Invalid(_))));
        assert_eq!(inode(), before);

        let bumped = state
            .edit(&id("p"), |f| {
                let mut file = f.unwrap().unwrap();
                file.bump_reload();
                Ok::<_, EditError>(file)
            })
            .unwrap();
        assert_eq!(bumped.spec.reload_token, 1);
        assert_ne!(inode(), before);
    }

    /// A FIFO, a link (to a big file, to `/dev/zero`), a file over 64 KiB: each is an invalid
    /// file that says what it is, read without blocking or following, and the others load.
    #[test]
    fn the_loader_refuses_fifos_links_devices_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        let good = SpecFile::new(Secret::new(SECRET), Secret::new("pw"));
        state.write(&id("good"), &good).unwrap();
        let text = good.to_toml();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            state.file(&id("fifo")),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A valid spec padded past the cap with a comment: only the size is wrong with it.
        let padded = format!("{text}# {}\n", "x".repeat(100 * 1024));
        std::fs::write(state.file(&id("big")), &padded).unwrap();
        let outside = dir.path().join("outside.toml");
        std::fs::write(&outside, &text).unwrap();
        std::os::unix::fs::symlink(&outside, state.file(&id("link"))).unwrap();
        std::os::unix::fs::symlink("/dev/zero", state.file(&id("zero"))).unwrap();

        let mut cache = LoadCache::default();
        let loaded = state.load_cached(&mut cache).unwrap();
        assert_eq!(loaded.specs.keys().collect::<Vec<_>>(), [&id("good")]);
        let message = |name: &str| loaded.invalid[&id(name)].to_string();
        assert!(message("fifo").contains("is a FIFO"), "{}", message("fifo"));
        assert!(
            message("big").contains("larger than 64 KiB"),
            "{}",
            message("big")
        );
        for link in ["link", "zero"] {
            assert!(message(link).contains("symbolic link"), "{}", message(link));
        }
        // The read-modify-write path reads the same way.
        assert!(state.read_file(&id("zero")).is_err());
        assert!(state.read_file(&id("fifo")).is_err());

        // Replaced by a good file: it loads (the cache sees the new inode).
        std::fs::remove_file(state.file(&id("big"))).unwrap();
        std::fs::write(state.file(&id("big")), &text).unwrap();
        let loaded = state.load_cached(&mut cache).unwrap();
        assert!(loaded.specs.contains_key(&id("big")));
        assert_eq!(loaded.invalid.len(), 3);

        // Straight through the handle: a link is never opened, a FIFO opens without a writer.
        let handle = nofollow::open_dir(state.path()).unwrap();
        assert!(matches!(
            nofollow::read_file(handle.as_fd(), "zero.toml"),
            Err(nofollow::ReadError::Link(_))
        ));
        assert!(matches!(
            nofollow::read_file(handle.as_fd(), "fifo.toml"),
            Err(nofollow::ReadError::NotRegular(_, "FIFO"))
        ));
    }

    #[test]
    fn lock_files_that_are_links_are_refused_and_never_created_through() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        for name in [LOCK_FILE, SERVE_LOCK_FILE] {
            let target = dir.path().join(format!("target{name}"));
            std::os::unix::fs::symlink(&target, state.path().join(name)).unwrap();
            assert!(!target.exists());
        }
        let error = state.lock().unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert!(state.try_lock().is_err());
        assert!(state.serve_lock().is_err());
        for name in [LOCK_FILE, SERVE_LOCK_FILE] {
            assert!(!dir.path().join(format!("target{name}")).exists(), "{name}");
        }
        // A FIFO in its place is refused at once, not waited on for a reader.
        std::fs::remove_file(state.path().join(LOCK_FILE)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            state.path().join(LOCK_FILE),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(state.lock().is_err());
    }

    #[test]
    fn a_writable_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = state.ensure().unwrap_err().to_string();
        assert!(
            error.contains("writable by its group or by everyone"),
            "{error}"
        );
        // Refused, not quietly repaired: the operator decides.
        let mode = std::fs::metadata(state.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o777);
    }

    #[test]
    fn stale_temp_files_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state
            .write(
                &id("p"),
                &SpecFile::new(Secret::new(SECRET), Secret::new("pw")),
            )
            .unwrap();
        std::fs::write(dir.path().join(".p.toml.123.0.tmp"), "secret leftovers").unwrap();
        std::fs::write(dir.path().join("notes.tmp"), "not ours").unwrap();
        // Fresh: a writer may still be at work.
        assert_eq!(state.sweep_temp_files().unwrap(), 0);
        // Old enough: gone; the project file and other files stay.
        assert_eq!(
            sweep_temp_files(dir.path(), std::time::Duration::ZERO).unwrap(),
            1
        );
        assert!(!dir.path().join(".p.toml.123.0.tmp").exists());
        assert!(dir.path().join("notes.tmp").exists() && state.file(&id("p")).exists());
    }
}
