//! The checks a spec passes before it is one: what PostgreSQL and PostgREST accept, and what
//! they would read differently from what was meant.

use super::SpecError;

pub(super) fn field_error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        reason: reason.into(),
    }
}

/// Names PostgREST puts into SQL as identifiers (schemas, roles): no separators, no control
/// characters, within PostgreSQL's 63-byte limit.
pub(super) fn check_identifier(field: &'static str, value: &str) -> Result<(), SpecError> {
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

/// What PostgREST would read differently from a plain secret, and so refuse on a reload while
/// the old secret stays in force (postgrest-facts.md, "Values PostgREST refuses"): a leading
/// `@` is a file path to read, a JSON object or array is a JWK or JWKS.
pub(super) fn check_jwt_secret(secret: &str) -> Result<(), SpecError> {
    if secret.starts_with('@') {
        return Err(field_error(
            "jwt_secret",
            "must not start with @ (PostgREST reads that as a file path)",
        ));
    }
    let trimmed = secret.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && serde_json::from_str::<serde_json::Value>(secret).is_ok()
    {
        return Err(field_error(
            "jwt_secret",
            "must be a plain secret, not JSON (PostgREST reads JSON as a JWK or JWKS)",
        ));
    }
    Ok(())
}

/// PostgREST parses `jwt-aud` as a JWT StringOrURI: a value with a `:` must be a URI.
pub(super) fn check_jwt_aud(aud: &str) -> Result<(), SpecError> {
    let Some((scheme, _)) = aud.split_once(':') else {
        return Ok(());
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if scheme_ok && !aud.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(field_error(
            "jwt_aud",
            "with a ':' it must be a URI (scheme:rest, no spaces), as PostgREST requires",
        ))
    }
}

pub(super) fn check_hostname(value: &str) -> Result<(), SpecError> {
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

/// PgBouncer's pool for a project, with its defaults, and PostgREST's `db-pool` fitting in it:
/// PgBouncer gives a (database, user) pair at most `pool_size + reserve_pool` server
/// connections, so a larger `db-pool` leaves PostgREST's extra connections waiting in
/// PgBouncer's queue. `pool_size` defaults to `db_pool` (10 by default), so a file written
/// before the pool keys existed stays valid.
pub(super) fn check_pool(
    db_pool: u32,
    pool_size: Option<u32>,
    reserve_pool: Option<u32>,
) -> Result<(u32, u32), SpecError> {
    let pool_size = pool_size.unwrap_or(db_pool);
    if !(1..=1000).contains(&pool_size) {
        return Err(field_error("pool_size", "must be between 1 and 1000"));
    }
    let reserve_pool = reserve_pool.unwrap_or(0);
    if reserve_pool > 1000 {
        return Err(field_error("reserve_pool", "must be between 0 and 1000"));
    }
    if db_pool > pool_size + reserve_pool {
        return Err(field_error(
            "db_pool",
            format!(
                "{db_pool} is larger than the PgBouncer pool of {} (pool size {pool_size} + \
                 reserve pool {reserve_pool})",
                pool_size + reserve_pool
            ),
        ));
    }
    Ok((pool_size, reserve_pool))
}
