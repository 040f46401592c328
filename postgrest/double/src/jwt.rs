//! HS256 JWT verification with PostgREST's checks: signature, `exp`/`nbf` (1 s skew), `aud`.
//!
//! The secret is used as raw bytes of the configured string, as PostgREST does when
//! `jwt-secret-is-base64` is false. Only HS256 is accepted: the manager only ever mints that.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// PostgREST's jose validation allows one second of clock skew.
const SKEW_SECONDS: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(String),
    InvalidSignature,
    Expired,
    NotYetValid,
    NotInAudience,
}

impl JwtError {
    /// The `message` of PostgREST's PGRST301 error body.
    pub fn message(&self) -> String {
        match self {
            JwtError::Malformed(why) => format!("JWSError (CompactDecodeError {why})"),
            JwtError::InvalidSignature => "JWSError JWSInvalidSignature".into(),
            JwtError::Expired => "JWT expired".into(),
            JwtError::NotYetValid => "JWT not yet valid".into(),
            JwtError::NotInAudience => "JWT not in audience".into(),
        }
    }
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    // Tokens are unpadded base64url; tolerate padding rather than fail on a client quirk.
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

/// Verifies `token` and returns its claims. `now` is Unix time in seconds.
pub fn verify(
    token: &str,
    secret: &[u8],
    audience: Option<&str>,
    now: f64,
) -> Result<Map<String, Value>, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(JwtError::Malformed(format!(
            "Invalid number of parts: Expected 3 parts; got {}",
            parts.len()
        )));
    };
    let head = json_object(&b64(header, "header")?, "header")?;
    if head.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::InvalidSignature);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&b64(signature, "signature")?)
        .map_err(|_| JwtError::InvalidSignature)?;

    let claims = json_object(&b64(payload, "payload")?, "payload")?;
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| JwtError::Malformed(format!("claim {name} is not a number"))),
    };
    if time("exp")?.is_some_and(|exp| now > exp + SKEW_SECONDS) {
        return Err(JwtError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| now + SKEW_SECONDS < nbf) {
        return Err(JwtError::NotYetValid);
    }
    // A token without `aud` passes; one with `aud` must name the configured audience.
    if let (Some(want), Some(aud)) = (audience, claims.get("aud")) {
        let ok = match aud {
            Value::String(s) => s == want,
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::NotInAudience);
        }
    }
    Ok(claims)
}

/// Mints an HS256 token (for tests, here and in `tests/`; the double itself only verifies).
pub fn mint(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{header}.{payload}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

    pub use super::mint;

    const NOW: f64 = 1_700_000_000.0;

    fn check(token: &str, aud: Option<&str>) -> Result<Map<String, Value>, JwtError> {
        verify(token, SECRET.as_bytes(), aud, NOW)
    }

    #[test]
    fn a_good_token_yields_its_claims() {
        let claims = check(&mint(SECRET, &json!({"role": "authenticated"})), None).unwrap();
        assert_eq!(claims["role"], "authenticated");
    }

    #[test]
    fn the_signature_must_match_the_secret() {
        let token = mint("ffffffffffffffffffffffffffffffff", &json!({"role": "x"}));
        assert_eq!(check(&token, None), Err(JwtError::InvalidSignature));
        assert_eq!(
            JwtError::InvalidSignature.message(),
            "JWSError JWSInvalidSignature"
        );
        // A tampered payload with the original signature.
        let good = mint(SECRET, &json!({"role": "anon"}));
        let evil = URL_SAFE_NO_PAD.encode(br#"{"role":"postgres"}"#);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(check(&forged, None), Err(JwtError::InvalidSignature));
    }

    #[test]
    fn only_hs256() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"role":"postgres"}"#);
        assert_eq!(
            check(&format!("{header}.{payload}."), None),
            Err(JwtError::InvalidSignature)
        );
    }

    #[test]
    fn expiry_and_not_before_with_one_second_skew() {
        let at = |claim: &str, t: f64| check(&mint(SECRET, &json!({ claim: t })), None);
        assert_eq!(at("exp", NOW - 2.0), Err(JwtError::Expired));
        assert!(at("exp", NOW - 0.5).is_ok());
        assert!(at("exp", NOW + 60.0).is_ok());
        assert_eq!(at("nbf", NOW + 2.0), Err(JwtError::NotYetValid));
        assert!(at("nbf", NOW).is_ok());
        assert_eq!(JwtError::Expired.message(), "JWT expired");
        let bad = mint(SECRET, &json!({"exp": "tomorrow"}));
        assert!(matches!(check(&bad, None), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn audience() {
        let tok = |aud: Value| mint(SECRET, &json!({ "aud": aud }));
        assert!(check(&tok(json!("authenticated")), Some("authenticated")).is_ok());
        assert!(check(&tok(json!(["x", "authenticated"])), Some("authenticated")).is_ok());
        assert_eq!(
            check(&tok(json!("other")), Some("authenticated")),
            Err(JwtError::NotInAudience)
        );
        assert_eq!(
            check(&tok(json!(["x"])), Some("authenticated")),
            Err(JwtError::NotInAudience)
        );
        // No aud claim, or no audience configured: accepted.
        assert!(check(&mint(SECRET, &json!({})), Some("authenticated")).is_ok());
        assert!(check(&tok(json!("other")), None).is_ok());
        assert_eq!(JwtError::NotInAudience.message(), "JWT not in audience");
    }

    #[test]
    fn malformed_tokens() {
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.%%"] {
            assert!(
                matches!(check(bad, None), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            check("abc", None).unwrap_err().message(),
            "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got 1)"
        );
    }
}
