//! Rendering: a [`Spec`] plus the manager's settings become the PostgREST config file and the
//! container's shape, and the hashes that tell the planner what changed.
//!
//! Every PostgREST key is declared once, with whether a reload can change it; the config text
//! and the spec-hash are both derived from that one list, so a key cannot be rendered without
//! being classified.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::spec::{ProjectId, Spec};
use crate::spec_key::SpecKey;

/// The port PostgREST serves its API on, inside the container.
pub const SERVER_PORT: u16 = 3000;
/// The port of PostgREST's admin server (`/live`, `/ready`), inside the container.
pub const ADMIN_PORT: u16 = 3001;
/// Where each project's config directory is mounted, read-only, inside its container.
pub const CONFIG_MOUNT: &str = "/etc/postgrest";
/// The config file name inside that directory.
pub const CONFIG_FILE: &str = "postgrest.conf";

pub const LABEL_MANAGED_BY: &str = "launchdb.managed-by";
pub const LABEL_INSTANCE: &str = "launchdb.instance";
pub const LABEL_PROJECT: &str = "launchdb.project-id";
pub const LABEL_SPEC_HASH: &str = "launchdb.spec-hash";
/// The container's own network alias, the host a route dials: unlike its name it survives
/// the rename at the end of a blue/green replacement, and it differs from the alias of the
/// container it replaces, so a route never points at two containers at once.
pub const LABEL_UPSTREAM: &str = "launchdb.upstream";
pub const MANAGED_BY: &str = "postgrest-manager";
/// On the daemon-wide marker of an instance: which state directory's manager holds it.
pub const LABEL_LEASE_HOLDER: &str = "launchdb.lease-holder";
/// Container logs rotate: at most this many json-file logs of this size each, so a chatty
/// PostgREST cannot fill the disk that holds `state/`.
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILES: u32 = 3;

/// The manager settings that shape every project's config and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub instance: String,
    pub image: String,
    pub network: String,
    /// The config directory as the Docker daemon sees it (bind-mount sources are host paths).
    pub host_config_dir: PathBuf,
    pub db_host: String,
    pub db_port: u16,
    pub domain: Option<String>,
    /// The UID (and GID) PostgREST runs as inside the container; it owns the rendered files.
    pub uid: u32,
    pub memory_bytes: i64,
    /// CPU limit of each container, in billionths of a CPU (Docker's `NanoCpus`).
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub healthcheck_interval_secs: u64,
    /// How long a stopping PostgREST gets between SIGTERM and SIGKILL.
    pub stop_grace_secs: u64,
    /// The key of the spec-hash label (`<config_dir>/.spec-key`).
    pub spec_key: SpecKey,
}

impl Template {
    /// The template the tests use: the local test image, a network named after the
    /// instance, everything else at the manager's defaults.
    #[doc(hidden)]
    pub fn for_tests(instance: &str, host_config_dir: impl Into<PathBuf>, uid: u32) -> Template {
        Template {
            instance: instance.to_owned(),
            image: "launchdb/postgrest:v1-test".into(),
            network: format!("{instance}-net"),
            host_config_dir: host_config_dir.into(),
            db_host: "pgbouncer".into(),
            db_port: 6432,
            domain: None,
            uid,
            memory_bytes: 256 << 20,
            nano_cpus: 1_000_000_000,
            pids_limit: 512,
            healthcheck_interval_secs: 30,
            stop_grace_secs: 10,
            spec_key: SpecKey::from_bytes([7; 32]),
        }
    }
}

/// Whether a running PostgREST picks a key up on a config reload (postgrest-facts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    Yes,
    /// Changing it needs a new container, so it is part of the spec-hash.
    No,
}

enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
}

/// A rendered config file. Its text holds secrets; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedConfig {
    pub text: String,
    /// Digest of `text`: equal digests mean the same config is in force.
    pub digest: String,
}

impl std::fmt::Debug for RenderedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedConfig")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RenderedConfig {
    /// `text` with every secret of this config (the JWT secret, the password and the whole
    /// `db-uri`, as written and as read) replaced by `***`: for messages that come back from
    /// PostgREST about this file.
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        for line in self.text.lines() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if !matches!(key, "jwt-secret" | "db-uri") {
                continue;
            }
            let value = value.trim_matches('"');
            let read = value
                .replace("$$", "$")
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
            if key == "db-uri" {
                // postgres://<user>:<password>@host...
                if let Some(password) = value
                    .split_once("://")
                    .and_then(|(_, rest)| rest.rsplit_once('@'))
                    .and_then(|(userinfo, _)| userinfo.split_once(':'))
                    .map(|(_, password)| password)
                {
                    let decoded = percent_encoding::percent_decode_str(password)
                        .decode_utf8_lossy()
                        .into_owned();
                    secrets.extend([password.to_owned(), decoded]);
                }
            }
            secrets.extend([value.to_owned(), read]);
        }
        // Longest first, so a secret inside another is masked with it.
        secrets.retain(|s| s.chars().count() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
}

/// Everything the runtime needs to create one project's container.
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub network: String,
    /// Extra DNS names on `network` (the container's name is one anyway).
    pub aliases: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Host path of the project's config directory, mounted read-only at [`CONFIG_MOUNT`].
    pub config_source: PathBuf,
    pub user: String,
    pub memory_bytes: i64,
    /// Memory plus swap: equal to `memory_bytes`, so the container never swaps.
    pub memory_swap_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// The json-file log driver's options (`max-size`, `max-file`).
    pub log_options: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_grace_secs: u64,
    /// Writable scratch space on an otherwise read-only root filesystem.
    pub tmpfs: BTreeMap<String, String>,
    pub healthcheck: Vec<String>,
    pub healthcheck_interval_secs: u64,
    /// Swarm placement constraints (the project's `placement`); a container ignores them.
    pub placement: Vec<String>,
}

/// What `#[derive(Debug)]` prints, with `placement` only when there is one: the spec-hash
/// hashes this text, so a project without placement keeps the hash (and the container) it
/// had before the field existed (`render::tests::debug_is_the_derived_one_without_placement`).
impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("ContainerSpec");
        s.field("name", &self.name)
            .field("image", &self.image)
            .field("network", &self.network)
            .field("aliases", &self.aliases)
            .field("labels", &self.labels)
            .field("config_source", &self.config_source)
            .field("user", &self.user)
            .field("memory_bytes", &self.memory_bytes)
            .field("memory_swap_bytes", &self.memory_swap_bytes)
            .field("nano_cpus", &self.nano_cpus)
            .field("pids_limit", &self.pids_limit)
            .field("log_options", &self.log_options)
            .field("stop_grace_secs", &self.stop_grace_secs)
            .field("tmpfs", &self.tmpfs)
            .field("healthcheck", &self.healthcheck)
            .field("healthcheck_interval_secs", &self.healthcheck_interval_secs);
        if !self.placement.is_empty() {
            s.field("placement", &self.placement);
        }
        s.finish()
    }
}

/// One project rendered: its config file, its container and the hash of what only a new
/// container can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub config: RenderedConfig,
    pub container: ContainerSpec,
    pub spec_hash: String,
    /// Every key in the config, and whether a reload can change it (names only, no values):
    /// what `plan` and `diff` use to say why a change reloads or recreates.
    pub keys: Vec<(&'static str, bool)>,
    /// The spec's `schema_reload_token`: not in the config (a schema reload is a signal, not a
    /// config change), carried so the loop can record which token a container has seen.
    pub schema_token: u64,
}

/// Userinfo in `db-uri`: everything outside RFC 3986 "unreserved" is percent-encoded.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Escapes a value for a double-quoted PostgREST config string: the escapes the parser knows,
/// `\uXXXX` for other control characters, and `$$` for `$`, which would otherwise start a
/// `$(...)` interpolation.
pub fn escape_config_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' => out.push_str("$$"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn keys(spec: &Spec, template: &Template) -> Vec<(&'static str, Value, Reload)> {
    let password = utf8_percent_encode(spec.authenticator_password.expose(), USERINFO);
    let db_name = utf8_percent_encode(&spec.db_name, USERINFO);
    let host = spec.db_host.as_deref().unwrap_or(&template.db_host);
    let port = spec.db_port.unwrap_or(template.db_port);
    let db_uri = format!(
        "postgres://{}_authenticator:{password}@{host}:{port}/{db_name}",
        spec.id
    );
    let mut keys = vec![
        ("db-uri", Value::Str(db_uri), Reload::No),
        (
            "db-schemas",
            Value::Str(spec.db_schemas.join(",")),
            Reload::Yes,
        ),
        (
            "db-anon-role",
            Value::Str(spec.db_anon_role.clone()),
            Reload::Yes,
        ),
        ("db-pool", Value::Int(spec.db_pool.into()), Reload::No),
        // PgBouncer in transaction pooling mode cannot keep prepared statements.
        ("db-prepared-statements", Value::Bool(false), Reload::Yes),
        // Nor a LISTEN session: `NOTIFY pgrst` can never arrive through it, and PostgREST
        // v11 would wait for its listener before serving. The manager's signals (SIGUSR2
        // config, SIGUSR1 schema) are the reload path.
        ("db-channel-enabled", Value::Bool(false), Reload::Yes),
        (
            "jwt-secret",
            Value::Str(spec.jwt_secret.expose().to_owned()),
            Reload::Yes,
        ),
        ("jwt-aud", Value::Str(spec.jwt_aud.clone()), Reload::Yes),
        ("max-rows", Value::Int(spec.max_rows.into()), Reload::Yes),
        ("server-port", Value::Int(SERVER_PORT.into()), Reload::No),
        (
            "admin-server-port",
            Value::Int(ADMIN_PORT.into()),
            Reload::No,
        ),
    ];
    if let Some(domain) = &template.domain {
        // Caddy serves each project under /db/<id>/ (deploy/caddy), so PostgREST's OpenAPI
        // links must carry that prefix.
        let uri = format!("https://{domain}/db/{}", spec.id);
        keys.push(("openapi-server-proxy-uri", Value::Str(uri), Reload::No));
    }
    keys
}

fn render_value(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("\"{}\"", escape_config_string(s)),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// HMAC-SHA256 of `bytes` under `key`, as 16 hex digits (64 bits: a change detector, not a
/// signature; without the key it tells nothing about its input).
fn keyed_hash(key: &SpecKey, bytes: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.bytes()) else {
        // Never taken: HMAC accepts keys of any length. Still keyed, never a bare digest.
        return sha256_hex(&[key.bytes(), bytes].concat())[..16].to_owned();
    };
    mac.update(bytes);
    mac.finalize()
        .into_bytes()
        .iter()
        .take(8)
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn container_name(id: &ProjectId) -> String {
    id.container_name()
}

/// Renders one project. Pure: the same spec and template always give the same result.
pub fn render(spec: &Spec, template: &Template) -> Rendered {
    let keys = keys(spec, template);

    let mut text = format!(
        "# Rendered by postgrest-manager from state/{}.toml; edits here are overwritten.\n",
        spec.id
    );
    for (key, value, _) in &keys {
        let _ = writeln!(text, "{key} = {}", render_value(value));
    }
    // `reload_token` exists only to force a reload; writing it into the file makes a bumped
    // token change the digest, which is what the planner compares.
    let _ = writeln!(text, "# reload-token {}", spec.reload_token);
    let digest = sha256_hex(text.as_bytes());

    let container = container_spec(&spec.id, template, &spec.placement);

    // The spec-hash covers the container's whole shape and the keys a reload cannot change,
    // the database password among them. Labels travel where configs never go (event streams,
    // metrics exporters), so it is an HMAC under the host-local key: without the key, a
    // guessed password cannot be tested against the label offline.
    let mut canonical = format!("{container:?}\n");
    for (key, value, reload) in &keys {
        if *reload == Reload::No {
            let _ = writeln!(canonical, "{key}={}", render_value(value));
        }
    }
    let spec_hash = keyed_hash(&template.spec_key, canonical.as_bytes());

    let mut container = container;
    container
        .labels
        .insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
    Rendered {
        config: RenderedConfig { text, digest },
        container,
        spec_hash,
        keys: keys
            .iter()
            .map(|(k, _, r)| (*k, *r == Reload::Yes))
            .collect(),
        schema_token: spec.schema_reload_token,
    }
}

/// The labels every container of the manager `instance` carries, and the only ones it lists
/// or touches.
pub fn owner_labels(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
    ])
}

fn container_spec(id: &ProjectId, template: &Template, placement: &[String]) -> ContainerSpec {
    let mut labels = owner_labels(&template.instance);
    labels.insert(LABEL_PROJECT.to_owned(), id.to_string());
    // The wrapper writes its PID file to /run; PostgREST itself needs no writable disk.
    // Docker copies the image's /run (root, 0755) onto the tmpfs and that overrides `mode`,
    // so the tmpfs is handed to PostgREST's UID instead; otherwise the wrapper, running as that
    // UID, cannot write the PID file and the seed's `kill -HUP $(cat ...)` finds none.
    let tmpfs = BTreeMap::from([
        (
            "/run".to_owned(),
            format!(
                "rw,noexec,nosuid,size=1m,uid={0},gid={0},mode=0755",
                template.uid
            ),
        ),
        (
            "/tmp".to_owned(),
            "rw,noexec,nosuid,size=16m,mode=1777".to_owned(),
        ),
    ]);
    ContainerSpec {
        name: id.container_name(),
        image: template.image.clone(),
        network: template.network.clone(),
        aliases: Vec::new(),
        labels,
        config_source: template.host_config_dir.join(id.as_str()),
        user: format!("{0}:{0}", template.uid),
        memory_bytes: template.memory_bytes,
        memory_swap_bytes: template.memory_bytes,
        nano_cpus: template.nano_cpus,
        pids_limit: template.pids_limit,
        log_options: BTreeMap::from([
            ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
            ("max-file".to_owned(), LOG_MAX_FILES.to_string()),
        ]),
        stop_grace_secs: template.stop_grace_secs,
        tmpfs,
        healthcheck: match template.healthcheck_interval_secs {
            // Docker's way to say "none", also over a HEALTHCHECK the image declares.
            0 => vec!["NONE".into()],
            _ => vec!["CMD".into(), "/usr/local/bin/healthcheck.sh".into()],
        },
        healthcheck_interval_secs: template.healthcheck_interval_secs,
        placement: placement.to_vec(),
    }
}

#[cfg(test)]
mod tests {

    /// `ContainerSpec`'s hand-written `Debug` (which the spec-hash hashes) is exactly what the
    /// derive printed before `placement` existed, so no container is recreated by the upgrade;
    /// a placement adds itself.
    #[test]
    fn debug_is_the_derived_one_without_placement() {
        mod before {
            use std::collections::BTreeMap;
            use std::path::PathBuf;
            #[derive(Debug)]
            #[allow(dead_code)]
            pub struct ContainerSpec {
                pub name: String,
                pub image: String,
                pub network: String,
                pub aliases: Vec<String>,
                pub labels: BTreeMap<String, String>,
                pub config_source: PathBuf,
                pub user: String,
                pub memory_bytes: i64,
                pub memory_swap_bytes: i64,
                pub nano_cpus: i64,
                pub pids_limit: i64,
                pub log_options: BTreeMap<String, String>,
                pub stop_grace_secs: u64,
                pub tmpfs: BTreeMap<String, String>,
                pub healthcheck: Vec<String>,
                pub healthcheck_interval_secs: u64,
            }
        }
        let spec = Spec::parse(
            ProjectId::parse("p1").unwrap(),
            &format!(
                "jwt_secret = \"{}\"\nauthenticator_password = \"pw\"\n",
                "s".repeat(32)
            ),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let template = Template::for_tests("i", dir.path().to_owned(), 10001);
        let c = render(&spec, &template).container;
        let old = before::ContainerSpec {
            name: c.name.clone(),
            image: c.image.clone(),
            network: c.network.clone(),
            aliases: c.aliases.clone(),
            labels: c.labels.clone(),
            config_source: c.config_source.clone(),
            user: c.user.clone(),
            memory_bytes: c.memory_bytes,
            memory_swap_bytes: c.memory_swap_bytes,
            nano_cpus: c.nano_cpus,
            pids_limit: c.pids_limit,
            log_options: c.log_options.clone(),
            stop_grace_secs: c.stop_grace_secs,
            tmpfs: c.tmpfs.clone(),
            healthcheck: c.healthcheck.clone(),
            healthcheck_interval_secs: c.healthcheck_interval_secs,
        };
        assert_eq!(format!("{c:?}"), format!("{old:?}"));
        let mut placed = c;
        placed.placement = vec!["node.role==worker".into()];
        assert_eq!(
            format!("{placed:?}"),
            format!(
                "{}, placement: [\"node.role==worker\"] }}",
                format!("{old:?}").trim_end_matches(" }")
            )
        );
    }
    use super::*;
    use crate::spec::{Secret, SpecFile};

    fn template() -> Template {
        Template::for_tests("test", "/srv/projects", 1000)
    }

    fn spec_with(edit: impl FnOnce(&mut SpecFile)) -> Spec {
        let mut file = SpecFile::new(
            Secret::new("s".repeat(32) + "-secret"),
            Secret::new("pass word"),
        );
        edit(&mut file);
        Spec::from_file(ProjectId::parse("proj_abc123").unwrap(), file).unwrap()
    }

    #[test]
    fn renders_the_seed_config() {
        let rendered = render(&spec_with(|_| {}), &template());
        let expected = "\
db-uri = \"postgres://proj_abc123_authenticator:pass%20word@pgbouncer:6432/proj_abc123\"
db-schemas = \"public,storage\"
db-anon-role = \"anon\"
db-pool = 10
db-prepared-statements = false
db-channel-enabled = false
jwt-secret = \"ssssssssssssssssssssssssssssssss-secret\"
jwt-aud = \"authenticated\"
max-rows = 1000
server-port = 3000
admin-server-port = 3001
# reload-token 0
";
        let body = rendered.config.text.split_once('\n').unwrap().1;
        assert_eq!(body, expected);
        assert_eq!(
            rendered.container.config_source,
            PathBuf::from("/srv/projects/proj_abc123")
        );
    }

    #[test]
    fn escaping_cannot_inject() {
        assert_eq!(
            escape_config_string("a\"b\\c$d$(HOME)\ne\u{1}é"),
            "a\\\"b\\\\c$$d$$(HOME)\\ne\\u0001é"
        );
        let spec = spec_with(|f| f.authenticator_password = Secret::new("p@:/?#%$\"\\\nü"));
        let text = render(&spec, &template()).config.text;
        assert!(
            text.contains(":p%40%3A%2F%3F%23%25%24%22%5C%0A%C3%BC@pgbouncer"),
            "{text}"
        );
        // Every line is a comment or a single `key = value`.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.split(" = ").count() == 2,
                "{line}"
            );
        }
    }

    #[test]
    fn reloadable_changes_keep_the_spec_hash() {
        let base = render(&spec_with(|_| {}), &template());
        let reloadable: [&dyn Fn(&mut SpecFile); 5] = [
            &|f| f.jwt_secret = Secret::new("t".repeat(40)),
            &|f| f.jwt_aud = Some("other".into()),
            &|f| f.max_rows = Some(5),
            &|f| f.db_schemas = Some(vec!["api".into()]),
            &|f| f.reload_token = Some(7),
        ];
        for edit in reloadable {
            let changed = render(&spec_with(edit), &template());
            assert_eq!(changed.spec_hash, base.spec_hash);
            assert_ne!(changed.config.digest, base.config.digest);
        }
        let recreating: [&dyn Fn(&mut SpecFile); 4] = [
            &|f| f.authenticator_password = Secret::new("new"),
            &|f| f.db_pool = Some(3),
            &|f| f.db_host = Some("elsewhere".into()),
            &|f| f.db_name = Some("other".into()),
        ];
        for edit in recreating {
            assert_ne!(
                render(&spec_with(edit), &template()).spec_hash,
                base.spec_hash
            );
        }
        let mut limits = template();
        limits.nano_cpus = 500_000_000;
        assert_ne!(
            render(&spec_with(|_| {}), &limits).spec_hash,
            base.spec_hash
        );
        let mut other_image = template();
        other_image.image = "launchdb/postgrest:v2".into();
        assert_ne!(
            render(&spec_with(|_| {}), &other_image).spec_hash,
            base.spec_hash
        );
    }

    /// Interval 0 is Docker's `NONE` (no check, also over the image's own), and a container
    /// made with checks is recreated once for it, as for any setting in the container's spec.
    #[test]
    fn healthchecks_off_is_docker_none_and_another_spec() {
        let spec = spec_with(|_| {});
        let on = render(&spec, &template());
        assert_eq!(
            on.container.healthcheck,
            ["CMD", "/usr/local/bin/healthcheck.sh"]
        );
        let off = render(
            &spec,
            &Template {
                healthcheck_interval_secs: 0,
                ..template()
            },
        );
        assert_eq!(off.container.healthcheck, ["NONE"]);
        assert_ne!(off.spec_hash, on.spec_hash);
    }

    #[test]
    fn the_spec_hash_is_keyed() {
        let spec = spec_with(|_| {});
        let base = render(&spec, &template());
        // The same key: the same hash, so a restarted manager adopts what runs.
        assert_eq!(render(&spec, &template()).spec_hash, base.spec_hash);
        // Another key: another hash for the same spec.
        let mut other = template();
        other.spec_key = SpecKey::from_bytes([8; 32]);
        assert_ne!(render(&spec, &other).spec_hash, base.spec_hash);
        // Without the key the label tells nothing: an attacker who knows everything but the
        // key and guesses the password right (and so can rebuild the canonical text) cannot
        // tell it from a wrong guess, because neither a bare digest of it, nor an HMAC under
        // any key they might try, matches the label.
        let canonical_of = |password: &str| {
            let spec = spec_with(|f| f.authenticator_password = Secret::new(password));
            let rendered = render(&spec, &template());
            let mut canonical = format!(
                "{:?}\n",
                container_spec(&spec.id, &template(), &spec.placement)
            );
            for (key, value, reload) in keys(&spec, &template()) {
                if reload == Reload::No {
                    let _ = writeln!(canonical, "{key}={}", render_value(&value));
                }
            }
            (rendered.spec_hash, canonical)
        };
        let (label, canonical) = canonical_of("pass word");
        assert_eq!(
            label,
            keyed_hash(&template().spec_key, canonical.as_bytes())
        );
        assert_ne!(label, sha256_hex(canonical.as_bytes())[..16]);
        for guess_key in [[0u8; 32], [1; 32], [255; 32]] {
            assert_ne!(
                label,
                keyed_hash(&SpecKey::from_bytes(guess_key), canonical.as_bytes())
            );
        }
        // The label is not in the config, not derived from the password alone, and a wrong
        // password guess under the right key gives another label (it still detects change).
        assert_ne!(canonical_of("pass wore").0, label);
        assert!(!label.contains("pass"));
    }

    #[test]
    fn the_container_has_limits_and_rotated_logs() {
        let c = render(&spec_with(|_| {}), &template()).container;
        assert_eq!(c.memory_swap_bytes, c.memory_bytes);
        assert_eq!(c.nano_cpus, 1_000_000_000);
        assert_eq!(c.log_options["max-size"], "10m");
        assert_eq!(c.log_options["max-file"], "3");
        assert_eq!(c.stop_grace_secs, 10);
    }

    #[test]
    fn redact_masks_every_secret_of_the_config() {
        let spec = spec_with(|f| {
            f.authenticator_password = Secret::new("p@ss$word\"");
            f.jwt_secret = Secret::new("j$wt\"secret-0123456789012345678901234");
        });
        let config = render(&spec, &template()).config;
        for leaked in [
            "p@ss$word\"",
            "p%40ss%24word%22",
            "j$wt\"secret-0123456789012345678901234",
            "j$$wt\\\"secret-0123456789012345678901234",
        ] {
            let message = format!("bad value <{leaked}> here");
            assert_eq!(config.redact(&message), "bad value <***> here", "{leaked}");
        }
        assert_eq!(
            config.redact("Error in $: no secrets"),
            "Error in $: no secrets"
        );
    }
}
