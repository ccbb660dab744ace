//! Bearer tokens for users and service accounts: JSON Web Tokens signed with HMAC-SHA256
//! by a key held in the control plane (`kid` names it), short-lived, and carrying only who
//! the caller is. What the caller may do is read from the current state on every request, so
//! removing a membership takes effect without waiting for tokens to expire; deleting the
//! principal or changing its password or secret (its credential version) refuses its tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::control::state::SigningKey;

/// Lifetime of a token unless the node is configured otherwise, in seconds.
pub const DEFAULT_TOKEN_TTL_S: u64 = 900;
/// Longest lifetime a node may be configured to give tokens, in seconds.
pub const MAX_TOKEN_TTL_S: u64 = 86_400;
/// Longest bearer token accepted; longer ones are refused unparsed.
pub const MAX_BEARER_TOKEN_BYTES: usize = 2_048;
/// How far in the future a token's issue time may lie (clocks of nodes differ), in seconds.
pub const TOKEN_CLOCK_SKEW_S: u64 = 60;
/// The `iss` claim of every token.
pub const TOKEN_ISSUER: &str = "conifer";

/// What a token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`TOKEN_ISSUER`].
    pub iss: String,
    /// The user's or service account's id.
    pub sub: String,
    /// `user` or `service_account`.
    pub kind: String,
    /// The principal's organization.
    pub org: String,
    /// The principal's credential version when the token was issued.
    pub ver: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry time, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed token of ours.
    #[error("malformed bearer token")]
    Malformed,
    /// Signed by a key the cluster no longer (or never) held.
    #[error("bearer token signed by an unknown key (keys rotate; sign in again)")]
    UnknownKey,
    /// The signature does not match.
    #[error("bearer token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("bearer token expired; sign in again")]
    Expired,
    /// Issued in the future (beyond the allowed clock skew).
    #[error("bearer token is not valid yet")]
    NotYetValid,
}

fn mac(key: &SigningKey) -> Option<Hmac<Sha256>> {
    let secret = hex::decode(&key.secret_hex).ok()?;
    Hmac::<Sha256>::new_from_slice(&secret).ok()
}

/// Signs `claims` with `key`.
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, String> {
    let header = Header {
        alg: "HS256".into(),
        typ: "JWT".into(),
        kid: key.id.clone(),
    };
    let encode = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let signing_input = format!("{}.{}", encode(&header), encode(&body));
    let mut mac = mac(key).ok_or("the signing key is not valid hex")?;
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    Ok(format!("{signing_input}.{}", encode(&signature)))
}

/// Verifies `token` against the cluster's signing `keys` at `now_s`: only `HS256`, a known
/// `kid`, a signature checked in constant time, our issuer, and the validity window.
pub fn verify(keys: &[SigningKey], token: &str, now_s: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_BEARER_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(body_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |v: &str| URL_SAFE_NO_PAD.decode(v).map_err(|_| TokenError::Malformed);
    let header: Header =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" || header.typ != "JWT" {
        return Err(TokenError::Malformed);
    }
    let key = keys
        .iter()
        .find(|k| k.id == header.kid)
        .ok_or(TokenError::UnknownKey)?;
    let mut mac = mac(key).ok_or(TokenError::UnknownKey)?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(body_b64.as_bytes());
    mac.verify_slice(&decode(sig_b64)?)
        .map_err(|_| TokenError::BadSignature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(body_b64)?).map_err(|_| TokenError::Malformed)?;
    if claims.iss != TOKEN_ISSUER {
        return Err(TokenError::Malformed);
    }
    if claims.exp <= now_s {
        return Err(TokenError::Expired);
    }
    if claims.iat > now_s + TOKEN_CLOCK_SKEW_S {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// A new random signing key.
pub fn new_signing_key() -> SigningKey {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SigningKey {
        id: uuid::Uuid::new_v4().simple().to_string(),
        secret_hex: hex::encode(raw),
        created_at: crate::now_rfc3339(),
    }
}

/// Seconds since the Unix epoch, by this node's clock.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: u64, exp: u64) -> Claims {
        Claims {
            iss: TOKEN_ISSUER.into(),
            sub: "u1".into(),
            kind: "user".into(),
            org: "o1".into(),
            ver: 0,
            iat,
            exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = new_signing_key();
        let token = sign(&key, &claims(1_000, 1_900)).unwrap();
        let keys = [key];
        assert_eq!(verify(&keys, &token, 1_000).unwrap(), claims(1_000, 1_900));
        assert_eq!(verify(&keys, &token, 1_899).unwrap().sub, "u1");
        assert_eq!(verify(&keys, &token, 1_900), Err(TokenError::Expired));
        assert_eq!(
            verify(&keys, &token, 1_000 - TOKEN_CLOCK_SKEW_S - 1),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn rotation_keeps_tokens_of_kept_keys_and_refuses_dropped_ones() {
        let old = new_signing_key();
        let new = new_signing_key();
        let token = sign(&old, &claims(1_000, 1_900)).unwrap();
        assert!(verify(&[old.clone(), new.clone()], &token, 1_000).is_ok());
        assert_eq!(verify(&[new], &token, 1_000), Err(TokenError::UnknownKey));
    }

    #[test]
    fn altered_forged_or_oversized_tokens_are_refused() {
        let key = new_signing_key();
        let keys = [key.clone()];
        let token = sign(&key, &claims(1_000, 1_900)).unwrap();
        // Another subject under the original signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged_claims = claims(1_000, 1_900);
        forged_claims.sub = "u2".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{head}.{forged_body}.{sig}");
        assert_eq!(verify(&keys, &forged, 1_000), Err(TokenError::BadSignature));
        // A token signed with a different secret under the same key id.
        let mut impostor = new_signing_key();
        impostor.id = key.id.clone();
        let other = sign(&impostor, &claims(1_000, 1_900)).unwrap();
        assert_eq!(verify(&keys, &other, 1_000), Err(TokenError::BadSignature));
        // `alg: none` and friends.
        let none_header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            key.id
        ));
        let body = rest.split_once('.').unwrap().0;
        assert_eq!(
            verify(&keys, &format!("{none_header}.{body}."), 1_000),
            Err(TokenError::Malformed)
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(
                verify(&keys, bad, 1_000),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let long = format!("{token}{}", "A".repeat(MAX_BEARER_TOKEN_BYTES));
        assert_eq!(verify(&keys, &long, 1_000), Err(TokenError::Malformed));
    }
}
