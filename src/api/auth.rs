//! The `X-Internal-Key` check, in constant time: both sides are compared as SHA-256 digests,
//! so neither the key's length nor its content shows in the timing.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, Shared};

const KEY_HEADER: &str = "x-internal-key";

/// The digest a request's key is compared with.
pub(super) fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(super) async fn require_key(
    State(ctx): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let Some(given) = request.headers().get(KEY_HEADER) else {
        return ApiError::MissingKey.into_response();
    };
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if bool::from(given.ct_eq(&ctx.key_digest)) {
        next.run(request).await
    } else {
        ApiError::WrongKey.into_response()
    }
}
