//! Desired state: the `state/<id>.toml` files, their validation, and atomic writes.
//!
//! Two levels, as in ripgrep's `LowArgs -> HiArgs`: [`SpecFile`] is the serde wire form (unknown
//! keys rejected), [`Spec`] the validated domain form. A [`ProjectId`] can only hold a valid id,
//! so every path, container name and config file built from one is safe by construction.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest project id: `<id>_authenticator` must fit PostgreSQL's 63-byte identifiers.
pub const MAX_PROJECT_ID_LEN: usize = 49;

/// The shortest JWT secret PostgREST accepts (v13+ refuses to start with less).
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// A validated project id: a lowercase ASCII letter, then lowercase letters, digits or `_`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProjectId(String);

impl ProjectId {
    pub fn parse(raw: &str) -> Result<ProjectId, InvalidProjectId> {
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if first_ok && rest_ok && raw.len() <= MAX_PROJECT_ID_LEN {
            Ok(ProjectId(raw.to_owned()))
        } else {
            Err(InvalidProjectId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The container name, `postgrest-<id>`.
    pub fn container_name(&self) -> String {
        format!("postgrest-{}", self.0)
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for ProjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ProjectId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid project id: use a lowercase letter, then lowercase letters, digits or '_', \
     at most 49 characters"
)]
pub struct InvalidProjectId;

/// A secret string. `Debug` and `Display` print `***`, so no log line can leak one by accident;
/// the value is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The wire form of `state/<id>.toml`. Unknown keys are rejected so a typo is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub jwt_secret: Secret,
    pub authenticator_password: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_schemas: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_anon_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_pool: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_token: Option<u64>,
}

impl SpecFile {
    /// A minimal file with the two required secrets, everything else defaulted.
    pub fn new(jwt_secret: Secret, authenticator_password: Secret) -> SpecFile {
        SpecFile {
            jwt_secret,
            authenticator_password,
            enabled: None,
            db_name: None,
            db_host: None,
            db_port: None,
            db_schemas: None,
            db_anon_role: None,
            jwt_aud: None,
            max_rows: None,
            db_pool: None,
            reload_token: None,
        }
    }

    /// Parses the TOML. Errors name the line and key but never quote the file: the line may
    /// hold a secret. Only `message()` is used, never toml's snippet of the source.
    pub fn parse(text: &str) -> Result<SpecFile, SpecError> {
        toml::from_str(text).map_err(|e| {
            let whole_file = e.message().starts_with("missing field");
            let Some(span) = e.span().filter(|_| !whole_file) else {
                return SpecError::Syntax(e.message().to_owned());
            };
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or_default();
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim())
                .unwrap_or_default();
            let message = if key == "jwt_secret" || key == "authenticator_password" {
                "expected a string".to_owned()
            } else {
                e.message().to_owned()
            };
            match key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !key.is_empty() {
                true => SpecError::Syntax(format!("line {line_no}, `{key}`: {message}")),
                false => SpecError::Syntax(format!("line {line_no}: {message}")),
            }
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a SpecFile always serializes")
    }
}

/// A validated project spec. Database host and port stay optional here: their defaults are
/// manager settings, applied when the config is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub id: ProjectId,
    pub enabled: bool,
    pub jwt_secret: Secret,
    pub authenticator_password: Secret,
    pub db_name: String,
    pub db_host: Option<String>,
    pub db_port: Option<u16>,
    pub db_schemas: Vec<String>,
    pub db_anon_role: String,
    pub jwt_aud: String,
    pub max_rows: u32,
    pub db_pool: u32,
    pub reload_token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("TOML syntax: {0}")]
    Syntax(String),
    #[error("`{field}`: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("cannot read: {0}")]
    Io(String),
}

fn field_error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        reason: reason.into(),
    }
}

/// Names PostgREST puts into SQL as identifiers (schemas, roles): no separators, no control
/// characters, within PostgreSQL's 63-byte limit.
fn check_identifier(field: &'static str, value: &str) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(field_error(
            field,
            "use letters, digits, '_', '$' or '-', at most 63 bytes",
        ))
    }
}

fn check_hostname(value: &str) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(field_error("db_host", "use a host name or IPv4 address"))
    }
}

impl Spec {
    pub fn from_file(id: ProjectId, file: SpecFile) -> Result<Spec, SpecError> {
        if file.jwt_secret.expose().chars().count() < MIN_JWT_SECRET_LEN {
            return Err(field_error("jwt_secret", "must be at least 32 characters"));
        }
        if file.authenticator_password.expose().is_empty() {
            return Err(field_error("authenticator_password", "must not be empty"));
        }
        let db_name = file.db_name.unwrap_or_else(|| id.as_str().to_owned());
        check_identifier("db_name", &db_name)?;
        if let Some(host) = &file.db_host {
            check_hostname(host)?;
        }
        if file.db_port == Some(0) {
            return Err(field_error("db_port", "must be between 1 and 65535"));
        }
        let db_schemas = file
            .db_schemas
            .unwrap_or_else(|| vec!["public".into(), "storage".into()]);
        if db_schemas.is_empty() {
            return Err(field_error("db_schemas", "name at least one schema"));
        }
        for schema in &db_schemas {
            check_identifier("db_schemas", schema)?;
        }
        let db_anon_role = file.db_anon_role.unwrap_or_else(|| "anon".into());
        check_identifier("db_anon_role", &db_anon_role)?;
        let jwt_aud = file.jwt_aud.unwrap_or_else(|| "authenticated".into());
        if jwt_aud.chars().any(char::is_control) {
            return Err(field_error(
                "jwt_aud",
                "must not contain control characters",
            ));
        }
        let max_rows = file.max_rows.unwrap_or(1000);
        if max_rows == 0 {
            return Err(field_error("max_rows", "must be at least 1"));
        }
        let db_pool = file.db_pool.unwrap_or(10);
        if !(1..=1000).contains(&db_pool) {
            return Err(field_error("db_pool", "must be between 1 and 1000"));
        }
        Ok(Spec {
            id,
            enabled: file.enabled.unwrap_or(true),
            jwt_secret: file.jwt_secret,
            authenticator_password: file.authenticator_password,
            db_name,
            db_host: file.db_host,
            db_port: file.db_port,
            db_schemas,
            db_anon_role,
            jwt_aud,
            max_rows,
            db_pool,
            reload_token: file.reload_token.unwrap_or(0),
        })
    }

    pub fn parse(id: ProjectId, text: &str) -> Result<Spec, SpecError> {
        Spec::from_file(id, SpecFile::parse(text)?)
    }
}

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

    /// Creates the directory (0700) if missing.
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
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

    fn load_cached_at(
        &self,
        cache: &mut LoadCache,
        now: std::time::SystemTime,
    ) -> std::io::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut read_any = false;
        let mut seen = BTreeMap::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = match classify(name) {
                Entry::Project(id) => id,
                Entry::Misnamed => {
                    loaded.misnamed.push(entry.path());
                    continue;
                }
                Entry::Ignored => continue,
            };
            // A directory named `x.toml` is not a project file. A symlink counts as its target;
            // anything else is stat'ed relative to the open directory, not by its full path.
            let metadata = match entry.file_type() {
                Ok(kind) if !kind.is_symlink() => entry.metadata(),
                _ => std::fs::metadata(entry.path()),
            };
            let Ok(metadata) = metadata else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let stamp = FileStamp::of(&metadata);
            let result = match cache.entries.remove(&id) {
                Some((cached, result)) if cached == stamp && stamp.settled(now) => result,
                _ => {
                    read_any = true;
                    match self.read(&id) {
                        Ok(Some(spec)) => Ok(Arc::new(spec)),
                        // Deleted between listing and reading: it is simply gone.
                        Ok(None) => continue,
                        Err(error) => Err(error),
                    }
                }
            };
            match &result {
                Ok(spec) => loaded.specs.insert(id.clone(), spec.clone()).map(drop),
                Err(error) => loaded.invalid.insert(id.clone(), error.clone()).map(drop),
            };
            seen.insert(id, (stamp, result));
        }
        loaded.misnamed.sort();
        // What is left in the cache was not seen again: removed files.
        loaded.unchanged =
            !read_any && cache.entries.is_empty() && loaded.misnamed == cache.misnamed;
        cache.entries = seen;
        cache.misnamed = loaded.misnamed.clone();
        Ok(loaded)
    }

    /// Reads one project's file: `Ok(None)` when there is none.
    pub fn read(&self, id: &ProjectId) -> Result<Option<Spec>, SpecError> {
        match self.read_file(id)? {
            Some(file) => Spec::from_file(id.clone(), file).map(Some),
            None => Ok(None),
        }
    }

    /// Reads one project's wire form, for read-modify-write callers (CLI, API).
    pub fn read_file(&self, id: &ProjectId) -> Result<Option<SpecFile>, SpecError> {
        match std::fs::read_to_string(self.file(id)) {
            Ok(text) => SpecFile::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SpecError::Io(e.kind().to_string())),
        }
    }

    /// Validates and writes one project's file atomically (0600). A file that would not load
    /// is refused, so nothing invalid ever reaches the directory through this call.
    pub fn write(&self, id: &ProjectId, file: &SpecFile) -> Result<(), WriteError> {
        Spec::from_file(id.clone(), file.clone())?;
        self.ensure()?;
        write_atomic(&self.file(id), file.to_toml().as_bytes(), 0o600, None)?;
        Ok(())
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
        self.ensure()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.path.join(LOCK_FILE))?;
        file.lock()?;
        Ok(StateLock { _file: file })
    }
}

/// The loader ignores dotfiles, so the lock file is never taken for a project.
const LOCK_FILE: &str = ".lock";

/// Holds [`StateDir::lock`] until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// What [`StateDir::load_cached`] remembers between calls.
#[derive(Debug, Default)]
pub struct LoadCache {
    entries: BTreeMap<ProjectId, (FileStamp, Result<Arc<Spec>, SpecError>)>,
    misnamed: Vec<PathBuf>,
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

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("cannot write the state file: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes `contents` to `path` so that readers see the old file or the new one, never a torn
/// one: a temp file in the same directory (a dotfile, which the loader ignores), fsync, rename,
/// fsync of the directory.
///
/// With an `owner`, the temp file is chowned to that UID (and GID) before the rename, so the
/// file never exists under its final name with the wrong owner.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        if let Some(uid) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(uid))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A per-process counter, so concurrent writers in one process never share a temp file.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn id(raw: &str) -> ProjectId {
        ProjectId::parse(raw).unwrap()
    }

    #[test]
    fn project_ids() {
        for ok in ["a", "proj_abc123", "x1", &"a".repeat(49)] {
            assert!(ProjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "_a",
            "A",
            "aB",
            "a-b",
            "a.b",
            "a/b",
            "../a",
            "a b",
            "a;ls",
            "é",
            &"a".repeat(50),
        ] {
            assert!(ProjectId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let text = format!("jwt_secret = \"{SECRET}\"\nauthenticator_password = \"pw\"\n");
        let spec = Spec::parse(id("p1"), &text).unwrap();
        assert!(spec.enabled);
        assert_eq!(spec.db_name, "p1");
        assert_eq!(spec.db_schemas, ["public", "storage"]);
        assert_eq!(
            (spec.db_anon_role.as_str(), spec.jwt_aud.as_str()),
            ("anon", "authenticated")
        );
        assert_eq!(
            (spec.max_rows, spec.db_pool, spec.reload_token),
            (1000, 10, 0)
        );

        let cases = [
            (
                "jwt_secret = \"short\"\nauthenticator_password = \"pw\"",
                "jwt_secret",
            ),
            (
                &format!("jwt_secret = \"{SECRET}\""),
                "authenticator_password",
            ),
            (&format!("{text}enabeld = false\n"), "unknown field"),
            (&format!("{text}db_schemas = [\"a,b\"]\n"), "db_schemas"),
            (&format!("{text}db_pool = 0\n"), "db_pool"),
            (&format!("{text}max_rows = \"x\"\n"), "line 3, `max_rows`"),
            (
                "jwt_secret = 12345678901234567890123456789012345\n",
                "`jwt_secret`: expected a string",
            ),
            (&format!("{text}db_host = \"a b\"\n"), "db_host"),
            ("jwt_secret = ", "TOML"),
        ];
        for (text, expected) in cases {
            let err = Spec::parse(id("p1"), text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains(SECRET), "secret in error: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let file = SpecFile::new(Secret::new(SECRET), Secret::new("hunter2"));
        let spec = Spec::from_file(id("p"), file).unwrap();
        let printed = format!("{spec:?}");
        assert!(
            !printed.contains(SECRET) && !printed.contains("hunter2"),
            "{printed}"
        );
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
}
