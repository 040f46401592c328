//! Desired state: a project's id, its secrets, and its spec in wire and validated form.
//!
//! Two levels, as in ripgrep's `LowArgs -> HiArgs`: [`SpecFile`] is the serde wire form (unknown
//! keys rejected), [`Spec`] the validated domain form. A [`ProjectId`] can only hold a valid id,
//! so every path, container name and config file built from one is safe by construction.

mod check;

use std::fmt;

use check::{
    check_hostname, check_identifier, check_jwt_aud, check_jwt_secret, check_pool, field_error,
};

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

/// The keys of a state file, in [`SpecFile`]'s order.
const FIELDS: [&str; 16] = [
    "jwt_secret",
    "authenticator_password",
    "enabled",
    "db_name",
    "db_host",
    "db_port",
    "db_schemas",
    "db_anon_role",
    "jwt_aud",
    "max_rows",
    "db_pool",
    "pool_size",
    "reserve_pool",
    "reload_token",
    "schema_reload_token",
    "placement",
];

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
    /// The project's PgBouncer pool (`pool_size` of its `[databases]` entry); only used when
    /// the manager keeps PgBouncer's include file (`PGM_PGBOUNCER_INCLUDE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// PgBouncer's `reserve_pool` for the project's database entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_pool: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_token: Option<u64>,
    /// Bumped to make PostgREST reload its schema cache (SIGUSR1), e.g. after a migration;
    /// never part of the config, so it never reloads the config or recreates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_reload_token: Option<u64>,
    /// Swarm placement constraints (`PGM_ORCHESTRATOR=swarm`), e.g. `["node.role==worker",
    /// "node.labels.zone!=eu-1"]`; containers on one Docker host ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Vec<String>>,
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
            pool_size: None,
            reserve_pool: None,
            reload_token: None,
            schema_reload_token: None,
            placement: None,
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
            // Only a real key is named: the line may be inside a (multi-line) secret, whose
            // text must never reach an error.
            match FIELDS.contains(&key) {
                true => SpecError::Syntax(format!("line {line_no}, `{key}`: {message}")),
                false => SpecError::Syntax(format!("line {line_no}: {message}")),
            }
        })
    }

    /// Enabled is the default, so enabling removes the key.
    pub fn enable(&mut self) {
        self.enabled = None;
    }

    pub fn disable(&mut self) {
        self.enabled = Some(false);
    }

    /// Makes the next pass reload the project's PostgREST; returns the new token.
    pub fn bump_reload(&mut self) -> u64 {
        let token = self.reload_token.unwrap_or(0).wrapping_add(1);
        self.reload_token = Some(token);
        token
    }

    /// Makes the next pass send the schema-reload signal; returns the new token.
    pub fn bump_schema_reload(&mut self) -> u64 {
        let token = self.schema_reload_token.unwrap_or(0).wrapping_add(1);
        self.schema_reload_token = Some(token);
        token
    }

    /// Replaces the secrets that are given and enables the project: what `spawn` and
    /// `add-project` mean.
    pub fn set_secrets_and_enable(
        &mut self,
        jwt_secret: Option<Secret>,
        authenticator_password: Option<Secret>,
    ) {
        if let Some(secret) = jwt_secret {
            self.jwt_secret = secret;
        }
        if let Some(password) = authenticator_password {
            self.authenticator_password = password;
        }
        self.enable();
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a SpecFile always serializes")
    }
}

/// What the manager wants for a project, in the words the API and the CLI both show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Enabled,
    Disabled,
    /// The state file is invalid and there is no last good spec.
    Invalid,
    /// No state file: any container is being removed.
    Absent,
}

impl DesiredState {
    pub fn of(enabled: bool) -> DesiredState {
        if enabled {
            DesiredState::Enabled
        } else {
            DesiredState::Disabled
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DesiredState::Enabled => "enabled",
            DesiredState::Disabled => "disabled",
            DesiredState::Invalid => "invalid",
            DesiredState::Absent => "absent",
        })
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
    /// PgBouncer's pool for the project; `db_pool` fits in `pool_size + reserve_pool`.
    pub pool_size: u32,
    pub reserve_pool: u32,
    pub reload_token: u64,
    pub schema_reload_token: u64,
    /// Swarm placement constraints, each checked (`check_placement`).
    pub placement: Vec<String>,
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

impl Spec {
    pub fn from_file(id: ProjectId, file: SpecFile) -> Result<Spec, SpecError> {
        if file.jwt_secret.expose().chars().count() < MIN_JWT_SECRET_LEN {
            return Err(field_error("jwt_secret", "must be at least 32 characters"));
        }
        check_jwt_secret(file.jwt_secret.expose())?;
        if file.authenticator_password.expose().is_empty() {
            return Err(field_error("authenticator_password", "must not be empty"));
        }
        // libpq cannot carry a NUL in a connection string, percent-encoded or not.
        if file.authenticator_password.expose().contains('\0') {
            return Err(field_error(
                "authenticator_password",
                "must not contain a NUL character",
            ));
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
            // PostgREST v16+ refuses to start with them, older ones expose the catalogs.
            if matches!(schema.as_str(), "pg_catalog" | "information_schema") {
                return Err(field_error(
                    "db_schemas",
                    "must not name pg_catalog or information_schema",
                ));
            }
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
        check_jwt_aud(&jwt_aud)?;
        let max_rows = file.max_rows.unwrap_or(1000);
        if max_rows == 0 {
            return Err(field_error("max_rows", "must be at least 1"));
        }
        let db_pool = file.db_pool.unwrap_or(10);
        if !(1..=1000).contains(&db_pool) {
            return Err(field_error("db_pool", "must be between 1 and 1000"));
        }
        let (pool_size, reserve_pool) = check_pool(db_pool, file.pool_size, file.reserve_pool)?;
        let placement = file.placement.unwrap_or_default();
        check_placement(&placement)?;
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
            pool_size,
            reserve_pool,
            reload_token: file.reload_token.unwrap_or(0),
            schema_reload_token: file.schema_reload_token.unwrap_or(0),
            placement,
        })
    }

    pub fn parse(id: ProjectId, text: &str) -> Result<Spec, SpecError> {
        Spec::from_file(id, SpecFile::parse(text)?)
    }
}

/// The most placement constraints a project may have.
const MAX_CONSTRAINTS: usize = 16;

/// A Swarm placement constraint Docker accepts and means what it says: `<attribute><op><value>`
/// with `==` or `!=`, a node or engine attribute Swarm knows, and a plain value (letters,
/// digits, `.`, `_`, `-`), so nothing can smuggle a second constraint or an expression in.
fn check_placement(constraints: &[String]) -> Result<(), SpecError> {
    if constraints.len() > MAX_CONSTRAINTS {
        return Err(field_error(
            "placement",
            format!("at most {MAX_CONSTRAINTS} constraints"),
        ));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    for constraint in constraints {
        let bad = || {
            field_error(
                "placement",
                "each constraint is `<attribute>==<value>` or `<attribute>!=<value>` with \
                 node.id, node.hostname, node.role (manager or worker), node.platform.os, \
                 node.platform.arch, node.labels.<name> or engine.labels.<name>, and a value \
                 of letters, digits, `.`, `_` and `-`",
            )
        };
        let (attribute, value) = constraint
            .split_once("==")
            .or_else(|| constraint.split_once("!="))
            .ok_or_else(bad)?;
        let (attribute, value) = (attribute.trim(), value.trim());
        let known = match attribute {
            "node.id" | "node.hostname" | "node.platform.os" | "node.platform.arch" => true,
            "node.role" => matches!(value, "manager" | "worker"),
            _ => attribute
                .strip_prefix("node.labels.")
                .or_else(|| attribute.strip_prefix("engine.labels."))
                .is_some_and(plain),
        };
        if !known || !plain(value) {
            return Err(bad());
        }
    }
    Ok(())
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
    fn placement_constraints_are_checked() {
        let with = |placement: &str| {
            let text = format!(
                "jwt_secret = \"{SECRET}\"\nauthenticator_password = \"pw\"\nplacement = {placement}\n"
            );
            Spec::parse(id("p1"), &text)
        };
        let spec =
            with(r#"["node.role==worker", "node.labels.zone != eu-1", "engine.labels.ssd==true"]"#)
                .unwrap();
        assert_eq!(spec.placement.len(), 3);
        let none = format!("jwt_secret = \"{SECRET}\"\nauthenticator_password = \"pw\"\n");
        assert!(Spec::parse(id("p1"), &none).unwrap().placement.is_empty());
        for bad in [
            r#"["node.role==boss"]"#,
            r#"["node.role=worker"]"#,
            r#"["node.labels.==x"]"#,
            r#"["node.labels.zone==a,node.role==manager"]"#,
            r#"["node.color==red"]"#,
            r#"["node.hostname=="]"#,
            r#"["node.hostname==a b"]"#,
        ] {
            match with(bad) {
                Err(SpecError::Field { field, .. }) => assert_eq!(field, "placement", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let many = format!("[{}]", vec!["\"node.role==worker\""; 17].join(","));
        assert!(with(&many).is_err());
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
        // The pool defaults to db_pool, so files from before the pool keys stay valid.
        assert_eq!((spec.pool_size, spec.reserve_pool), (10, 0));
        let big = Spec::parse(id("p1"), &format!("{text}db_pool = 40\n")).unwrap();
        assert_eq!((big.pool_size, big.reserve_pool), (40, 0));
        let fits = format!("{text}db_pool = 12\npool_size = 8\nreserve_pool = 4\n");
        let fits = Spec::parse(id("p1"), &fits).unwrap();
        assert_eq!(
            (fits.db_pool, fits.pool_size, fits.reserve_pool),
            (12, 8, 4)
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
            (&format!("{text}pool_size = 0\n"), "`pool_size`: must be between 1 and 1000"),
            (&format!("{text}reserve_pool = 1001\n"), "`reserve_pool`"),
            (
                &format!("{text}db_pool = 12\npool_size = 8\nreserve_pool = 3\n"),
                "`db_pool`: 12 is larger than the PgBouncer pool of 11 (pool size 8 + reserve pool 3)",
            ),
            (
                &format!("{text}pool_size = 5\n"),
                "`db_pool`: 10 is larger than the PgBouncer pool of 5 (pool size 5 + reserve pool 0)",
            ),
            (&format!("{text}max_rows = \"x\"\n"), "line 3, `max_rows`"),
            (
                "jwt_secret = 12345678901234567890123456789012345\n",
                "`jwt_secret`: expected a string",
            ),
            (&format!("{text}db_host = \"a b\"\n"), "db_host"),
            (
                "jwt_secret = \"@/etc/postgrest/secret-file-0123456789abcdef\"\nauthenticator_password = \"pw\"\n",
                "file path",
            ),
            (
                "jwt_secret = '{\"kty\":\"oct\",\"k\":\"0123456789abcdef0123456789\"}'\nauthenticator_password = \"pw\"\n",
                "JWK",
            ),
            (
                &format!("{text}db_schemas = [\"public\", \"pg_catalog\"]\n"),
                "pg_catalog",
            ),
            (&format!("{text}jwt_aud = \"my aud: x\"\n"), "URI"),
            (
                &format!("jwt_secret = \"{SECRET}\"\nauthenticator_password = \"a\\u0000b\"\n"),
                "NUL",
            ),
            ("jwt_secret = ", "TOML"),
        ];
        for (text, expected) in cases {
            let err = Spec::parse(id("p1"), text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains(SECRET), "secret in error: {err}");
        }
    }

    #[test]
    fn a_line_inside_a_secret_is_never_named_as_a_key() {
        // An invalid escape on the secret's second line: the error points into the secret.
        let text = "jwt_secret = \"\"\"\nsecret_part = \\q\n\"\"\"\n";
        let err = Spec::parse(id("p1"), text).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secret_part"), "{err}");
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
}
