//! PgBouncer's `[databases]` kept in step with desired state: [`render`] (pure) turns the
//! projects' specs into the text of an include file, one entry per project database with its
//! pool, and [`PoolSync`] writes it (atomically) and has PgBouncer reload it (SIGHUP to its
//! container, PgBouncer's own reload signal) when, and only when, the text changed.
//!
//! The stack's PgBouncer `%include`s the file instead of a wildcard `*` entry, so a role can
//! reach only the databases of projects that exist. The file carries no password: PgBouncer
//! authenticates every login through `auth_query`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::pending::Pending;
use crate::runtime::Runtime;
use crate::spec::Spec;
use crate::state_dir::write_atomic;

/// While the file cannot be written or PgBouncer cannot be signalled: 500 ms, doubling up to
/// 30 s.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// PgBouncer's reload signal.
pub const RELOAD_SIGNAL: &str = "SIGHUP";

/// Where the include goes and whom to tell, from the manager's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBouncerConfig {
    /// The include file (`PGM_PGBOUNCER_INCLUDE`); written through a temp file and a rename in
    /// its directory, so PgBouncer reads the old file or the new one, never half of one.
    pub include: PathBuf,
    /// PgBouncer's container (`PGM_PGBOUNCER_CONTAINER`), sent SIGHUP after a change.
    pub container: String,
    /// Where PgBouncer finds PostgreSQL (`PGM_PGBOUNCER_SERVER_HOST`, `_PORT`).
    pub server_host: String,
    pub server_port: u16,
}

/// A database name PgBouncer's ini parser reads back as written: ASCII letters, digits, `_`,
/// `$`, `-`. The spec also allows other Unicode letters, which such an entry could not carry.
fn ini_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-'))
}

/// The include file for `specs`: every project with a spec, enabled or not (a disabled
/// project's database stays reachable, so enabling it again is instant; removing the file
/// removes the entry). One entry per database name, sorted; projects sharing a database share
/// its entry with the largest of their pools (PgBouncer keeps one pool per database and user,
/// and each project logs in as its own `<id>_authenticator`, so each gets that size). Names
/// the ini cannot carry are left out and returned, to be logged.
pub fn render<'a>(
    specs: impl IntoIterator<Item = &'a Spec>,
    server_host: &str,
    server_port: u16,
) -> (String, Vec<String>) {
    let mut pools: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut skipped = Vec::new();
    for spec in specs {
        if !ini_safe(&spec.db_name) {
            skipped.push(spec.id.to_string());
            continue;
        }
        let pool = pools.entry(&spec.db_name).or_insert((0, 0));
        *pool = (pool.0.max(spec.pool_size), pool.1.max(spec.reserve_pool));
    }
    let mut text = String::from(
        "; Written by postgrest-manager from its desired state (one entry per project\n\
         ; database); every change is overwritten. No passwords: logins go through auth_query.\n",
    );
    for (db, (size, reserve)) in pools {
        text.push_str(&format!(
            "{db} = host={server_host} port={server_port} dbname={db} pool_size={size} reserve_pool={reserve}\n"
        ));
    }
    (text, skipped)
}

/// What a [`PoolSync::sync`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    /// PgBouncer already has this text (written and signalled before).
    InSync,
    /// Written (when the file differed) and PgBouncer signalled.
    Applied,
    /// Not in place; retried after [`PoolSync::retry_at`].
    Pending { reason: String },
}

/// Writes the include and signals PgBouncer; see the module documentation.
pub struct PoolSync {
    cfg: PgBouncerConfig,
    /// The text PgBouncer was signalled to reload. `None` at start, so a restarted manager
    /// signals once even when the file is already in place (it may have died between the
    /// write and the signal).
    applied: Option<String>,
    pending: Pending,
}

impl PoolSync {
    pub fn new(cfg: PgBouncerConfig) -> PoolSync {
        PoolSync {
            cfg,
            applied: None,
            pending: Pending::new("PgBouncer pools", FIRST_RETRY, LAST_RETRY),
        }
    }

    pub fn config(&self) -> &PgBouncerConfig {
        &self.cfg
    }

    /// When the next try may happen while backing off.
    pub fn retry_at(&self) -> Option<Instant> {
        self.pending.retry_at()
    }

    /// The pools were put in place and nothing failed since: only a change of the specs
    /// needs another [`PoolSync::sync`] (which renders every project's entry).
    pub fn in_place(&self) -> bool {
        self.applied.is_some() && self.pending.reason().is_none()
    }

    /// Why the pools are not in place, while they are not.
    pub fn pending(&self) -> Option<&str> {
        self.pending.reason()
    }

    /// Brings PgBouncer to `specs`: nothing when the rendered text equals the one applied;
    /// otherwise the file is written (unless it already holds the text) and PgBouncer gets
    /// SIGHUP. A failure backs off (logged once per reason) and is retried by a later call.
    pub async fn sync<'a, R: Runtime>(
        &mut self,
        runtime: &R,
        specs: impl IntoIterator<Item = &'a Spec>,
    ) -> PoolStatus {
        let (text, skipped) = render(specs, &self.cfg.server_host, self.cfg.server_port);
        if self.applied.as_ref() == Some(&text) {
            return PoolStatus::InSync;
        }
        if let Some(reason) = self.pending.waiting() {
            return PoolStatus::Pending {
                reason: reason.to_owned(),
            };
        }
        if !skipped.is_empty() {
            warn!(projects = ?skipped, "db_name not representable in PgBouncer's ini; no pool entry for these projects");
        }
        match self.apply(runtime, &text).await {
            Ok(()) => {
                let entries = text.lines().filter(|l| !l.starts_with(';')).count();
                match self.pending.succeeded() {
                    Some(was) => info!(entries, %was, "PgBouncer pools in place again"),
                    None => info!(entries, "PgBouncer pools updated"),
                }
                self.applied = Some(text);
                PoolStatus::Applied
            }
            Err(reason) => {
                self.pending.failed(reason.clone());
                PoolStatus::Pending { reason }
            }
        }
    }

    async fn apply<R: Runtime>(&self, runtime: &R, text: &str) -> Result<(), String> {
        let path = self.cfg.include.clone();
        let body = text.to_owned();
        let written = tokio::task::spawn_blocking(move || {
            if std::fs::read(&path).is_ok_and(|held| held == body.as_bytes()) {
                return Ok(());
            }
            // 0644: no secret in it, and PgBouncer reads it as its own user.
            write_atomic(&path, body.as_bytes(), 0o644, None)
        })
        .await
        .map_err(|e| format!("writing the include: {e}"))?;
        written.map_err(|e| format!("writing {}: {e}", self.cfg.include.display()))?;
        runtime
            .signal(&self.cfg.container, RELOAD_SIGNAL)
            .await
            .map_err(|e| format!("signalling {}: {e}", self.cfg.container))
    }
}

#[cfg(test)]
mod tests;
