//! The rendered-config directory: `<config_dir>/<id>/postgrest.conf`, one directory per
//! project (each mounted into its own container only), plus the manager's record of which
//! config each container has loaded.
//!
//! The record lives in `<config_dir>/.loaded/<id>`, outside every mounted directory. It is
//! written only after a container was started with, or signalled to reload, a config; so a
//! manager that dies between rewriting a file and signalling finds no matching record on
//! restart and signals again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::render::{RenderedConfig, CONFIG_FILE};
use crate::spec::ProjectId;
use crate::state_dir::write_atomic;

const LOADED_DIR: &str = ".loaded";
/// `<config_dir>/.schema/<id>`: `<container id> <schema_reload_token>`, the token whose
/// schema reload the container has had (started with, or sent SIGUSR1 for).
const SCHEMA_DIR: &str = ".schema";

#[derive(Debug, Clone)]
pub struct ConfigDir {
    path: PathBuf,
    /// The UID PostgREST runs as in its container; it owns each project's directory and file.
    uid: u32,
}

impl ConfigDir {
    pub fn new(path: impl Into<PathBuf>, uid: u32) -> ConfigDir {
        ConfigDir {
            path: path.into(),
            uid,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn project_dir(&self, id: &ProjectId) -> PathBuf {
        self.path.join(id.as_str())
    }

    pub fn config_file(&self, id: &ProjectId) -> PathBuf {
        self.project_dir(id).join(CONFIG_FILE)
    }

    fn record(&self, id: &ProjectId) -> PathBuf {
        self.path.join(LOADED_DIR).join(id.as_str())
    }

    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.path.join(LOADED_DIR))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))?;
        std::fs::set_permissions(
            self.path.join(LOADED_DIR),
            std::fs::Permissions::from_mode(0o700),
        )
    }

    /// Writes the project's config if its content differs; returns whether it wrote.
    /// Directory 0700 and file 0600, both owned by the container's UID; atomic, so the
    /// container sees the old file or the new one through its directory mount.
    pub fn write(&self, id: &ProjectId, config: &RenderedConfig) -> std::io::Result<bool> {
        let dir = self.project_dir(id);
        let file = self.config_file(id);
        if std::fs::read(&file).is_ok_and(|current| current == config.text.as_bytes()) {
            return Ok(false);
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.uid))
            .map_err(|e| chown_error(e, self.uid))?;
        write_atomic(&file, config.text.as_bytes(), 0o600, Some(self.uid))
            .map_err(|e| chown_error(e, self.uid))?;
        Ok(true)
    }

    /// Removes the project's config directory and its record.
    pub fn remove(&self, id: &ProjectId) -> std::io::Result<()> {
        ignore_missing(std::fs::remove_dir_all(self.project_dir(id)))?;
        self.forget(id)
    }

    /// Projects that have a rendered config directory.
    pub fn projects(&self) -> std::io::Result<BTreeSet<ProjectId>> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(e),
        };
        let mut projects = BTreeSet::new();
        for entry in entries {
            let entry = entry?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ProjectId::parse(n).ok())
            {
                if entry.file_type()?.is_dir() {
                    projects.insert(id);
                }
            }
        }
        Ok(projects)
    }

    /// Records that `container` has loaded the config with `digest`.
    pub fn remember(&self, id: &ProjectId, container: &str, digest: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.path.join(LOADED_DIR))?;
        write_atomic(
            &self.record(id),
            format!("{container} {digest}\n").as_bytes(),
            0o600,
            None,
        )
    }

    pub fn forget(&self, id: &ProjectId) -> std::io::Result<()> {
        ignore_missing(std::fs::remove_file(self.record(id)))?;
        ignore_missing(std::fs::remove_file(self.schema_record(id)))
    }

    fn schema_record(&self, id: &ProjectId) -> PathBuf {
        self.path.join(SCHEMA_DIR).join(id.as_str())
    }

    /// Records that `container` has loaded its schema cache as of `token`.
    pub fn remember_schema(
        &self,
        id: &ProjectId,
        container: &str,
        token: u64,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(self.path.join(SCHEMA_DIR))?;
        write_atomic(
            &self.schema_record(id),
            format!("{container} {token}\n").as_bytes(),
            0o600,
            None,
        )
    }

    /// Every schema record: project -> (container id, schema_reload_token).
    pub fn schema_seen(&self) -> std::io::Result<BTreeMap<ProjectId, (String, u64)>> {
        let entries = match std::fs::read_dir(self.path.join(SCHEMA_DIR)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut seen = BTreeMap::new();
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ProjectId::parse(n).ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(entry.path())?;
            if let Some((container, token)) = text.trim().split_once(' ') {
                if let Ok(token) = token.parse() {
                    seen.insert(id, (container.to_owned(), token));
                }
            }
        }
        Ok(seen)
    }

    /// Every record: project -> (container id, config digest).
    pub fn loaded(&self) -> std::io::Result<BTreeMap<ProjectId, (String, String)>> {
        let entries = match std::fs::read_dir(self.path.join(LOADED_DIR)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut loaded = BTreeMap::new();
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ProjectId::parse(n).ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(entry.path())?;
            if let Some((container, digest)) = text.trim().split_once(' ') {
                loaded.insert(id, (container.to_owned(), digest.to_owned()));
            }
        }
        Ok(loaded)
    }
}

fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn chown_error(error: std::io::Error, uid: u32) -> std::io::Error {
    if error.kind() == ErrorKind::PermissionDenied {
        std::io::Error::new(
            error.kind(),
            format!("cannot hand the config to UID {uid}: run the manager as root or set PGM_CONFIG_UID to its own UID"),
        )
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_record_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata(tmp.path()).unwrap().uid_of_owner();
        let dir = ConfigDir::new(tmp.path().join("projects"), uid);
        dir.ensure().unwrap();
        let id = ProjectId::parse("p1").unwrap();
        let config = RenderedConfig {
            text: "jwt-secret = \"x\"\n".into(),
            digest: "d1".into(),
        };

        assert!(dir.write(&id, &config).unwrap());
        assert!(
            !dir.write(&id, &config).unwrap(),
            "unchanged content is not rewritten"
        );
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.project_dir(&id)), 0o700);
        assert_eq!(mode(dir.config_file(&id)), 0o600);
        assert_eq!(dir.projects().unwrap(), BTreeSet::from([id.clone()]));

        dir.remember(&id, "c1", "d1").unwrap();
        assert_eq!(
            dir.loaded().unwrap()[&id],
            ("c1".to_owned(), "d1".to_owned())
        );

        dir.remember_schema(&id, "c1", 3).unwrap();
        assert_eq!(dir.schema_seen().unwrap()[&id], ("c1".to_owned(), 3));
        assert_eq!(dir.projects().unwrap(), BTreeSet::from([id.clone()]));

        dir.remove(&id).unwrap();
        assert!(dir.projects().unwrap().is_empty());
        assert!(dir.loaded().unwrap().is_empty());
        assert!(dir.schema_seen().unwrap().is_empty());
        dir.remove(&id).unwrap();
    }

    trait OwnerUid {
        fn uid_of_owner(&self) -> u32;
    }

    impl OwnerUid for std::fs::Metadata {
        fn uid_of_owner(&self) -> u32 {
            std::os::unix::fs::MetadataExt::uid(self)
        }
    }
}
