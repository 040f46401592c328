//! The API's one error type and its JSON shape, `{"error": "<code>", "message": "..."}`.
//!
//! Every failure a client can see goes through [`ApiError`], including the ones axum would
//! answer with its own plain-text bodies (bad JSON, too large, unknown route), so clients parse
//! one shape. Internal details are logged here once and never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `bad_request`, `timeout`.
    #[schema(example = "bad_request")]
    pub error: String,
    /// What happened and what to do about it.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the X-Internal-Key header is missing")]
    MissingKey,
    #[error("the X-Internal-Key header is wrong")]
    WrongKey,
    #[error("{0}")]
    NotFound(String),
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    DockerUnavailable(String),
    #[error("the manager is shutting down; retry against the next instance")]
    ShuttingDown,
    #[error("{0}")]
    NotReady(String),
    /// Too many writes in flight: retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Timeout(String),
    /// The disk that holds the state directory is full (ENOSPC) or the quota is used up
    /// (EDQUOT): the operator must free space, and the client may retry then.
    #[error(
        "the manager's state directory is out of disk space ({0}); nothing was changed, \
         retry once space is freed"
    )]
    InsufficientStorage(&'static str),
    /// The state file was saved, but the loop cannot write the rendered config: the disk
    /// under the config directory is full. It applies the saved state once space is freed.
    #[error(
        "the manager's config directory is out of disk space ({0}); the desired state is saved \
         and the manager applies it once space is freed"
    )]
    ConfigOutOfSpace(&'static str),
    /// The detail is logged, never sent: it may name paths or other internals.
    #[error("internal error; the manager's log has the details")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::MissingKey | ApiError::WrongKey => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::DockerUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable")
            }
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::InsufficientStorage(_) | ApiError::ConfigOutOfSpace(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = %detail, "API request failed"),
            ApiError::InsufficientStorage(cause) => {
                tracing::error!(
                    cause,
                    "API write failed: the state directory is out of space"
                );
            }
            _ => {}
        }
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl ApiError {
    /// An I/O error while writing desired state: a full disk (or used-up quota) is the
    /// client's 507 with the cause; anything else is an internal error, `context` logged.
    pub fn from_io(context: &str, error: &std::io::Error) -> ApiError {
        match error.kind() {
            std::io::ErrorKind::StorageFull => {
                ApiError::InsufficientStorage("no space left on device")
            }
            std::io::ErrorKind::QuotaExceeded => {
                ApiError::InsufficientStorage("disk quota exceeded")
            }
            _ => ApiError::Internal(format!("{context}: {error}")),
        }
    }
}

/// The API spells fields in camelCase; validation errors name the state file's snake_case key.
pub fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Describes a JSON body that did not deserialize: which field, what was wrong, where. serde
/// quotes the offending value ("invalid type: string \"...\""), which may be a secret sent in
/// the wrong field, so the value is cut out and only its kind kept.
pub fn describe_json_error(error: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return format!(
            "malformed JSON at line {} column {}",
            inner.line(),
            inner.column()
        );
    }
    let message = without_values(&inner.to_string());
    if path == "." || path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    }
}

fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = rest
                .split([' ', ','])
                .next()
                .filter(|k| !k.is_empty())
                .unwrap_or("value");
            let expected = rest
                .find(", expected ")
                .map(|at| &rest[at..])
                .unwrap_or_default();
            return format!("{prefix}{kind}{expected}");
        }
    }
    // "unknown field `x`, expected one of ..." echoes a field name the client chose; keep it
    // short so a hostile name cannot make the answer large.
    message.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(json: &str) -> String {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            project_id: String,
            max_rows: Option<u32>,
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let error = serde_path_to_error::deserialize::<_, Body>(&mut de).unwrap_err();
        describe_json_error(error)
    }

    #[test]
    fn json_errors_name_the_field_and_hide_the_value() {
        let message = describe(r#"{"projectId": "p", "maxRows": "hunter2-secret"}"#);
        assert!(
            message.starts_with("maxRows: invalid type: string, expected u32"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        assert!(describe(r#"{"projectId": "p", "bogus": 1}"#).contains("unknown field `bogus`"));
        assert!(describe(r#"{}"#).contains("missing field `projectId`"));
        assert!(describe(r#"{"projectId": "#).starts_with("malformed JSON"));
        assert!(describe(r#"{"projectId": 5}"#).starts_with("projectId: invalid type: integer"));
    }

    #[test]
    fn a_full_disk_is_507_and_other_io_errors_stay_internal() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let error = ApiError::from_io("writing", &full);
        assert_eq!(error.status_and_code().0, StatusCode::INSUFFICIENT_STORAGE);
        assert!(
            error.to_string().contains("no space left on device"),
            "{error}"
        );
        let quota = std::io::Error::from_raw_os_error(122); // EDQUOT
        assert_eq!(
            ApiError::from_io("writing", &quota).status_and_code().0,
            StatusCode::INSUFFICIENT_STORAGE
        );
        let denied = std::io::Error::from_raw_os_error(13); // EACCES
        let error = ApiError::from_io("writing /secret/path", &denied);
        assert_eq!(error.status_and_code().0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.to_string().contains("/secret/path"), "{error}");
    }

    #[test]
    fn camel_cases() {
        assert_eq!(camel_case("jwt_secret"), "jwtSecret");
        assert_eq!(camel_case("db_anon_role"), "dbAnonRole");
        assert_eq!(camel_case("enabled"), "enabled");
    }
}
