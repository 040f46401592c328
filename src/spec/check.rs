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
