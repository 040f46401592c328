//! The host-local key of the spec-hash label: `<config_dir>/.spec-key`, 32 random bytes from
//! the OS, created once (0600, never through a link) and read at every start.
//!
//! The spec-hash covers the database password, and labels travel where configs never go
//! (event streams, metrics exporters, socket proxies). Keyed, the label is an HMAC nobody
//! without this file can test a guessed password against. The file sits next to the project
//! directories, never inside one, so no container sees it (only `<config_dir>/<id>` is
//! mounted, and an id cannot start with a dot). Losing it costs one recreate of every
//! container: a new key gives every project a new spec-hash.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The key file's name inside the config directory.
pub const SPEC_KEY_FILE: &str = ".spec-key";
const KEY_LEN: usize = 32;

/// The spec-hash key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SpecKey([u8; KEY_LEN]);

impl std::fmt::Debug for SpecKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpecKey(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecKeyError {
    #[error("cannot read random bytes from the OS: {0}")]
    Random(std::io::Error),
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path} (it must be a regular file, not a link): {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a spec-hash key: it must hold exactly 32 bytes and be mode 0600 (remove it to make a new one; every container is recreated once)")]
    Invalid { path: String },
}

impl SpecKey {
    /// A key from the OS's random source, held in memory only.
    pub fn random() -> Result<SpecKey, SpecKeyError> {
        let mut key = [0; KEY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(SpecKeyError::Random)?;
        Ok(SpecKey(key))
    }

    /// A fixed key, for tests that need two renderings to agree.
    #[doc(hidden)]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SpecKey {
        SpecKey(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads `<config_dir>/.spec-key`, or creates it when it does not exist. Creation is
    /// `O_CREAT|O_EXCL|O_NOFOLLOW` with mode 0600, so it never writes through a link or over
    /// a file someone else put there first; two managers racing both end up reading the one
    /// that won. The read does not follow links either.
    pub fn load_or_create(config_dir: &Path) -> Result<SpecKey, SpecKeyError> {
        let path = config_dir.join(SPEC_KEY_FILE);
        let shown = path.display().to_string();
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match created {
            Ok(mut file) => {
                let key = SpecKey::random()?;
                file.write_all(&key.0)
                    .and_then(|()| file.sync_all())
                    .map_err(|source| SpecKeyError::Create {
                        path: shown.clone(),
                        source,
                    })?;
                tracing::info!(path = %shown, "created the spec-hash key");
                return Ok(key);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(SpecKeyError::Create {
                    path: shown,
                    source,
                })
            }
        }
        match SpecKey::load(config_dir)? {
            Some(key) => Ok(key),
            // Created and gone again before the read: say it was not there.
            None => Err(SpecKeyError::Read {
                path: shown,
                source: std::io::Error::from(ErrorKind::NotFound),
            }),
        }
    }

    /// Reads `<config_dir>/.spec-key` without creating it (`plan` and `diff`, which must
    /// render as the running manager does and change nothing): `None` when there is none yet.
    pub fn load(config_dir: &Path) -> Result<Option<SpecKey>, SpecKeyError> {
        let path = config_dir.join(SPEC_KEY_FILE);
        let shown = path.display().to_string();
        let read_error = |source| SpecKeyError::Read {
            path: shown.clone(),
            source,
        };
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let meta = file.metadata().map_err(read_error)?;
        if !meta.is_file() || meta.len() != KEY_LEN as u64 || meta.permissions().mode() & 0o077 != 0
        {
            return Err(SpecKeyError::Invalid { path: shown });
        }
        let mut key = [0; KEY_LEN];
        file.read_exact(&mut key).map_err(read_error)?;
        Ok(Some(SpecKey(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = SpecKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SPEC_KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(SpecKey::load_or_create(dir.path()).unwrap(), first);
        assert_ne!(first.bytes(), &[0; 32]);
        assert_eq!(format!("{first:?}"), "SpecKey(***)");

        // Lost: a new, different key (the one recreate of every container).
        std::fs::remove_file(&path).unwrap();
        assert_ne!(SpecKey::load_or_create(dir.path()).unwrap(), first);
    }

    #[test]
    fn links_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, [1u8; 32]).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(SPEC_KEY_FILE)).unwrap();
        assert!(matches!(
            SpecKey::load_or_create(dir.path()),
            Err(SpecKeyError::Read { .. })
        ));
        // A dangling link is not followed to create a file either.
        let dangling = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            dangling.path().join("nowhere"),
            dangling.path().join(SPEC_KEY_FILE),
        )
        .unwrap();
        assert!(SpecKey::load_or_create(dangling.path()).is_err());
        assert!(!dangling.path().join("nowhere").exists());

        let short = tempfile::tempdir().unwrap();
        std::fs::write(short.path().join(SPEC_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            SpecKey::load_or_create(short.path()),
            Err(SpecKeyError::Invalid { .. })
        ));
        let readable = tempfile::tempdir().unwrap();
        let path = readable.path().join(SPEC_KEY_FILE);
        std::fs::write(&path, [2u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SpecKey::load_or_create(readable.path()),
            Err(SpecKeyError::Invalid { .. })
        ));
    }
}
