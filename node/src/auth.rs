//! Credentials: generation, hashing and verification of API keys and operator tokens.
//!
//! A credential's value is `<prefix><id>_<secret>`: the id (a UUID in simple form) lets the
//! node find the record, the 256-bit secret is stored only as its SHA-256 digest and
//! compared in constant time. Values are shown once, at creation.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::state::{ApiKey, ControlState, OperatorToken};

/// Prefix of API key values (Pinecone's).
pub const API_KEY_PREFIX: &str = "pcsk_";
/// Prefix of operator token values.
pub const OPERATOR_TOKEN_PREFIX: &str = "cnfop_";
/// Longest credential accepted in a header; longer ones are rejected unparsed.
pub const MAX_CREDENTIAL_BYTES: usize = 256;
/// Bytes of randomness in a secret.
const SECRET_BYTES: usize = 32;

/// A freshly generated credential: its id, the value shown once, and the digest to store.
pub struct NewSecret {
    /// Record id (UUID, hyphenated).
    pub id: String,
    /// The full value to hand to the user once.
    pub value: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
}

fn digest_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn generate(prefix: &str) -> NewSecret {
    let id = uuid::Uuid::new_v4();
    let mut raw = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = hex::encode(raw);
    NewSecret {
        id: id.hyphenated().to_string(),
        value: format!("{prefix}{}_{secret}", id.simple()),
        secret_sha256: digest_hex(&secret),
    }
}

/// A new API key secret.
pub fn new_api_key() -> NewSecret {
    generate(API_KEY_PREFIX)
}

/// A new operator token.
pub fn new_operator_token() -> NewSecret {
    generate(OPERATOR_TOKEN_PREFIX)
}

/// Splits `<prefix><uuid-simple>_<secret>` into (hyphenated id, secret).
fn parse<'a>(value: &'a str, prefix: &str) -> Option<(String, &'a str)> {
    if value.len() > MAX_CREDENTIAL_BYTES {
        return None;
    }
    let rest = value.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    Some((id.hyphenated().to_string(), secret))
}

fn digest_matches(secret: &str, stored_hex: &str) -> bool {
    let computed = digest_hex(secret);
    computed.as_bytes().ct_eq(stored_hex.as_bytes()).into()
}

/// The API key whose value is `value`, if it exists and the secret matches.
pub fn verify_api_key<'a>(state: &'a ControlState, value: &str) -> Option<&'a ApiKey> {
    let (id, secret) = parse(value, API_KEY_PREFIX)?;
    let key = state.api_keys.get(&id)?;
    digest_matches(secret, &key.secret_sha256).then_some(key)
}

/// The operator token whose value is `value`, if it exists and the secret matches.
pub fn verify_operator_token<'a>(
    state: &'a ControlState,
    value: &str,
) -> Option<&'a OperatorToken> {
    let (id, secret) = parse(value, OPERATOR_TOKEN_PREFIX)?;
    let token = state.operator_tokens.get(&id)?;
    digest_matches(secret, &token.secret_sha256).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::ApiKeyRole;

    fn state_with(key: &NewSecret) -> ControlState {
        let mut state = ControlState::default();
        state.api_keys.insert(
            key.id.clone(),
            ApiKey {
                id: key.id.clone(),
                project_id: "p".into(),
                name: "n".into(),
                roles: vec![ApiKeyRole::ProjectEditor],
                secret_sha256: key.secret_sha256.clone(),
                created_at: "t".into(),
            },
        );
        state
    }

    #[test]
    fn generated_key_verifies_and_its_digest_hides_the_secret() {
        let key = new_api_key();
        let state = state_with(&key);
        assert!(verify_api_key(&state, &key.value).is_some());
        let (_, secret) = parse(&key.value, API_KEY_PREFIX).unwrap();
        assert!(!key.secret_sha256.contains(secret));
    }

    #[test]
    fn altered_unknown_or_oversized_keys_are_refused() {
        let key = new_api_key();
        let state = state_with(&key);
        let mut altered = key.value.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert!(verify_api_key(&state, &altered).is_none());
        assert!(verify_api_key(&state, &new_api_key().value).is_none());
        assert!(verify_api_key(&state, "pcsk_garbage").is_none());
        assert!(verify_api_key(
            &state,
            &format!("{}{}", key.value, "0".repeat(MAX_CREDENTIAL_BYTES))
        )
        .is_none());
        // An API key is not an operator token even with the right secret.
        assert!(verify_operator_token(&state, &key.value).is_none());
    }
}

/// What an API-key request needs; issue 5 grows this into the full permission matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Describe / list indexes.
    ControlRead,
    /// Create / configure / delete indexes.
    ControlWrite,
    /// Query, fetch, list, stats.
    DataRead,
    /// Upsert, update, delete, namespaces.
    DataWrite,
}

/// Whether a key with `roles` may perform an operation needing `access`.
pub fn key_allows(roles: &[crate::control::state::ApiKeyRole], access: Access) -> bool {
    use crate::control::state::ApiKeyRole as R;
    roles.iter().any(|role| match access {
        Access::ControlRead => matches!(
            role,
            R::ProjectEditor | R::ProjectViewer | R::ControlPlaneEditor | R::ControlPlaneViewer
        ),
        Access::ControlWrite => matches!(role, R::ProjectEditor | R::ControlPlaneEditor),
        Access::DataRead => matches!(
            role,
            R::ProjectEditor | R::ProjectViewer | R::DataPlaneEditor | R::DataPlaneViewer
        ),
        Access::DataWrite => matches!(role, R::ProjectEditor | R::DataPlaneEditor),
    })
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use crate::control::state::ApiKeyRole;

    #[test]
    fn each_key_role_grants_exactly_its_plane_and_mode() {
        let expect = |role, access| key_allows(&[role], access);
        for access in [
            Access::ControlRead,
            Access::ControlWrite,
            Access::DataRead,
            Access::DataWrite,
        ] {
            assert!(expect(ApiKeyRole::ProjectEditor, access));
        }
        assert!(expect(ApiKeyRole::ProjectViewer, Access::DataRead));
        assert!(!expect(ApiKeyRole::ProjectViewer, Access::DataWrite));
        assert!(!expect(ApiKeyRole::ProjectViewer, Access::ControlWrite));
        assert!(expect(ApiKeyRole::ControlPlaneEditor, Access::ControlWrite));
        assert!(!expect(ApiKeyRole::ControlPlaneEditor, Access::DataRead));
        assert!(expect(ApiKeyRole::ControlPlaneViewer, Access::ControlRead));
        assert!(!expect(
            ApiKeyRole::ControlPlaneViewer,
            Access::ControlWrite
        ));
        assert!(expect(ApiKeyRole::DataPlaneEditor, Access::DataWrite));
        assert!(!expect(ApiKeyRole::DataPlaneEditor, Access::ControlRead));
        assert!(expect(ApiKeyRole::DataPlaneViewer, Access::DataRead));
        assert!(!expect(ApiKeyRole::DataPlaneViewer, Access::DataWrite));
        assert!(!key_allows(&[], Access::DataRead));
    }
}
