//! The rendered-config directory: `<config_dir>/<id>/postgrest.conf`, one directory per
//! project (each mounted into its own container only), plus the manager's record of which
//! config each container has loaded.
//!
//! The record lives in `<config_dir>/.loaded/<id>`, outside every mounted directory. It is
//! written only after a container was started with, or signalled to reload, a config; so a
//! manager that dies between rewriting a file and signalling finds no matching record on
//! restart and signals again.
//!
//! The manager runs as root and chowns what it writes here, so nothing below the directory is
//! reached by path: every project directory, config file and record is opened through its
//! directory's handle without following links (`state_dir::nofollow`), and a link planted where
//! a directory or file belongs is an error, never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::render::{RenderedConfig, CONFIG_FILE};
use crate::spec::ProjectId;
use crate::state_dir::check_trusted;
use crate::state_dir::nofollow::{
    ensure_subdir, open_dir, open_regular, open_subdir, read_capped, read_file, set_owner_and_mode,
    write_atomic_at,
};

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

    /// Creates the directory and `.loaded/` if missing, refuses the directory (clearly) when
    /// anyone but this process's user or root could change it or a directory above it
    /// ([`check_trusted`]), and keeps both 0700 through their handles.
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.path)?;
        check_trusted(&self.path, rustix::process::geteuid().as_raw())?;
        let root = open_dir(&self.path)?;
        set_owner_and_mode(&root, 0o700, None)?;
        let loaded = ensure_subdir(root.as_fd(), LOADED_DIR, 0o700)?;
        set_owner_and_mode(&loaded, 0o700, None)
    }

    /// Writes the project's config if its content differs; returns whether it wrote.
    /// Directory 0700 and file 0600, both owned by the container's UID; atomic, so the
    /// container sees the old file or the new one through its directory mount.
    ///
    /// Owner and mode are set through the handles every time, also when the content is
    /// unchanged: a directory rendered for an earlier UID (the default was 1000) is handed to
    /// the new one before its container is recreated to run as it.
    pub fn write(&self, id: &ProjectId, config: &RenderedConfig) -> std::io::Result<bool> {
        let root = open_dir(&self.path)?;
        let dir = ensure_subdir(root.as_fd(), id.as_str(), 0o700)?;
        set_owner_and_mode(&dir, 0o700, Some(self.uid)).map_err(|e| chown_error(e, self.uid))?;
        if let Some((file, _)) = open_regular(dir.as_fd(), CONFIG_FILE)? {
            if read_capped(&file, CONFIG_FILE)? == config.text.as_bytes() {
                set_owner_and_mode(&file, 0o600, Some(self.uid))
                    .map_err(|e| chown_error(e, self.uid))?;
                return Ok(false);
            }
        }
        write_atomic_at(
            &dir,
            CONFIG_FILE,
            config.text.as_bytes(),
            0o600,
            Some(self.uid),
        )
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

    /// Those of `projects` that have a rendered config directory: a `stat` each.
    pub fn projects_among(
        &self,
        projects: BTreeSet<ProjectId>,
    ) -> std::io::Result<BTreeSet<ProjectId>> {
        let mut found = BTreeSet::new();
        for id in projects {
            match std::fs::symlink_metadata(self.path.join(id.as_str())) {
                Ok(metadata) if metadata.is_dir() => {
                    found.insert(id);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Removes the temp files a killed write left here (they hold secrets): in each project
    /// directory and in the records, when older than a minute. Through handles, like every
    /// other operation here.
    pub fn sweep_temp_files(&self) -> std::io::Result<usize> {
        crate::state_dir::nofollow::sweep_temp_files_at(
            open_dir(&self.path)?.as_fd(),
            std::time::Duration::from_secs(60),
            1,
        )
    }

    /// Records that `container` has loaded the config with `digest`.
    pub fn remember(&self, id: &ProjectId, container: &str, digest: &str) -> std::io::Result<()> {
        self.write_record(LOADED_DIR, id, container, digest)
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
        self.write_record(SCHEMA_DIR, id, container, &token.to_string())
    }

    /// Every schema record: project -> (container id, schema_reload_token).
    pub fn schema_seen(&self) -> std::io::Result<BTreeMap<ProjectId, (String, u64)>> {
        Ok(self
            .read_records(SCHEMA_DIR)?
            .into_iter()
            .filter_map(|(id, (container, token))| Some((id, (container, token.parse().ok()?))))
            .collect())
    }

    /// Every record: project -> (container id, config digest).
    pub fn loaded(&self) -> std::io::Result<BTreeMap<ProjectId, (String, String)>> {
        self.read_records(LOADED_DIR)
    }

    /// `<config_dir>/<records>/<id>`: `<container id> <value>`, written atomically.
    fn write_record(
        &self,
        records: &str,
        id: &ProjectId,
        container: &str,
        value: &str,
    ) -> std::io::Result<()> {
        let records = ensure_subdir(open_dir(&self.path)?.as_fd(), records, 0o700)?;
        write_atomic_at(
            &records,
            id.as_str(),
            format!("{container} {value}\n").as_bytes(),
            0o600,
            None,
        )
    }

    /// Every record in `<config_dir>/<records>`: project -> (container id, value).
    fn read_records(
        &self,
        records: &str,
    ) -> std::io::Result<BTreeMap<ProjectId, (String, String)>> {
        let dir: File =
            match open_dir(&self.path).and_then(|root| open_subdir(root.as_fd(), records)) {
                Ok(dir) => dir,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
                Err(e) => return Err(e),
            };
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(self.path.join(records))? {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ProjectId::parse(n).ok())
            else {
                continue;
            };
            // A record that is not a plain file (a link, say) is no record: the project's
            // config or schema reload is then signalled again, which is harmless; it is never
            // followed.
            let text = match read_file(dir.as_fd(), id.as_str()) {
                Ok(Some((bytes, _))) => String::from_utf8_lossy(&bytes).into_owned(),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(project = %id, error = %e, records, "ignoring a record");
                    continue;
                }
            };
            if let Some((container, value)) = text.trim().split_once(' ') {
                found.insert(id, (container.to_owned(), value.to_owned()));
            }
        }
        Ok(found)
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
    use std::os::unix::fs::PermissionsExt;

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

    fn config() -> RenderedConfig {
        RenderedConfig {
            text: "jwt-secret = \"x\"\n".into(),
            digest: "d1".into(),
        }
    }

    fn own_uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn a_project_dir_that_is_a_link_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = ConfigDir::new(tmp.path().join("projects"), own_uid());
        dir.ensure().unwrap();
        let id = ProjectId::parse("p1").unwrap();
        // Someone who could write the checkout points the project's directory at another one.
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let before = std::fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.project_dir(&id)).unwrap();

        let error = dir.write(&id, &config()).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(after.mode(), before.mode(), "the target was chmodded");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert!(
            !target.join(CONFIG_FILE).exists(),
            "a config went through the link"
        );

        // A link in place of the config file or of a record is refused as well.
        std::fs::remove_file(dir.project_dir(&id)).unwrap();
        std::fs::create_dir(dir.project_dir(&id)).unwrap();
        std::os::unix::fs::symlink(target.join("x"), dir.config_file(&id)).unwrap();
        let error = dir.write(&id, &config()).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert!(!target.join("x").exists());
        std::os::unix::fs::symlink(target.join("r"), dir.record(&id)).unwrap();
        std::fs::write(target.join("r"), "c1 d1\n").unwrap();
        assert!(
            dir.loaded().unwrap().is_empty(),
            "a record was read through a link"
        );
    }

    /// A directory and file rendered for the old default UID get the configured one, even when
    /// the content is unchanged (only root may hand files to another UID).
    #[test]
    fn an_existing_config_of_another_uid_is_handed_to_the_configured_one() {
        use std::os::unix::fs::MetadataExt;
        if own_uid() != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let old = ConfigDir::new(tmp.path().join("projects"), 1000);
        old.ensure().unwrap();
        let id = ProjectId::parse("p1").unwrap();
        assert!(old.write(&id, &config()).unwrap());
        let new = ConfigDir::new(tmp.path().join("projects"), 10001);
        assert!(
            !new.write(&id, &config()).unwrap(),
            "same content, not rewritten"
        );
        for path in [new.project_dir(&id), new.config_file(&id)] {
            let m = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!((m.uid(), m.gid()), (10001, 10001), "{}", path.display());
        }
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
