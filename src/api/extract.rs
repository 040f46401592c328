//! Extractors whose every rejection is an [`ApiError`]: a size-limited JSON body that names a
//! bad field but never echoes its value, and a project id validated before it is used.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use super::error;
use super::{ApiError, BODY_LIMIT};
use crate::spec::ProjectId;

/// A JSON body, limited in size, whose every rejection is an [`ApiError`].
pub(super) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
            if !is_json(content_type) {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::TooLarge(BODY_LIMIT)
                    } else {
                        ApiError::BadRequest("cannot read the request body".into())
                    }
                })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| ApiError::BadRequest(error::describe_json_error(e)))?;
        deserializer
            .end()
            .map_err(|_| ApiError::BadRequest("unexpected data after the JSON body".into()))?;
        Ok(ApiJson(value))
    }
}

fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(value) = content_type.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence.to_ascii_lowercase().ends_with("+json"))
}

/// A project id from the path, validated before it reaches a file name or a container name.
pub(super) struct ProjectPath(pub ProjectId);

impl<S: Send + Sync> FromRequestParts<S> for ProjectPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::BadRequest("the project id in the path is not valid UTF-8".into())
            })?;
        parse_id(&raw).map(ProjectPath)
    }
}

pub(super) fn parse_id(raw: &str) -> Result<ProjectId, ApiError> {
    ProjectId::parse(raw).map_err(|e| ApiError::BadRequest(format!("projectId: {e}")))
}
