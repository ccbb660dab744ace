//! Credentials and who they name.
//!
//! API keys and operator tokens are values `<prefix><id>_<secret>`: the id (a UUID in simple
//! form) lets the node find the record, the 256-bit secret is stored only as its SHA-256
//! digest and compared in constant time. Service-account client secrets are 256-bit secrets
//! stored the same way. Values are shown once, at creation. Users sign in with a password
//! ([`password`], argon2id) and, like service accounts, then carry a bearer [`token`]. A
//! service account may also authenticate with a client certificate from the client CA
//! (`serve --client-ca`) that carries a name bound to it ([`authenticate_certificate`]).
//! [`authenticate`] turns any credential into a [`Principal`] against the control-plane
//! state; what it may do is [`crate::policy`]'s business.

pub mod password;
pub mod throttle;
pub mod token;

use std::collections::BTreeMap;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::state::{
    ApiKey, ControlState, MemberKind, OperatorToken, OrgRole, ProjectRole, ServiceAccount,
};

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

/// A new service-account client secret: (the value shown once, its SHA-256 to store).
pub fn new_client_secret() -> (String, String) {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let value = hex::encode(raw);
    let digest = digest_hex(&value);
    (value, digest)
}

/// Whether `secret` is the client secret of `account` (constant-time comparison).
pub fn verify_client_secret(account: &ServiceAccount, secret: &str) -> bool {
    secret.len() <= MAX_CREDENTIAL_BYTES && digest_matches(secret, &account.secret_sha256)
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

/// Who a credential names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The break-glass operator token: administers the cluster and every organization.
    Operator {
        /// The token's id.
        token_id: String,
    },
    /// A user or a service account (a bearer token).
    Member(Member),
    /// A project's API key.
    ApiKey(ApiKey),
}

/// A user or service account, with its roles as the state held them when it authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The principal's id.
    pub id: String,
    /// User or service account.
    pub kind: MemberKind,
    /// Its organization.
    pub organization_id: String,
    /// Its organization role.
    pub org_role: OrgRole,
    /// Its project roles, by project id.
    pub project_roles: BTreeMap<String, ProjectRole>,
}

impl Principal {
    /// A short description for messages: `API key 'ci'`, `user 1b2c…`, `operator`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Operator { .. } => "the operator token".into(),
            Principal::Member(m) => format!("{} '{}'", m.kind.as_str().replace('_', " "), m.id),
            Principal::ApiKey(k) => format!("API key '{}'", k.name),
        }
    }
}

/// A credential as presented.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// `Api-Key` header / `api-key` metadata.
    ApiKey(&'a str),
    /// `Authorization: Bearer` (operator token or signed token).
    Bearer(&'a str),
}

/// Why a credential was refused (all are 401s; the message says which).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, altered or revoked API key.
    #[error("invalid or revoked API key")]
    BadApiKey,
    /// Unknown, altered or revoked operator token.
    #[error("invalid or revoked operator token")]
    BadOperatorToken,
    /// The bearer token did not verify.
    #[error(transparent)]
    BadToken(#[from] token::TokenError),
    /// The token verified but its principal is gone or its credentials changed since.
    #[error("the token's {0} was deleted or its credentials changed; sign in again")]
    Revoked(&'static str),
    /// A verified client certificate none of whose names is bound to a service account
    /// (never bound, unbound since, or its account deleted).
    #[error(
        "the client certificate ({0}) authenticates as no service account: none of its \
         names is bound to one (PUT /admin/service-accounts/{{id}}/certificate-names, or \
         `conifer service-account set-certificate-names`)"
    )]
    UnboundCertificate(String),
    /// A client certificate that may not authenticate: it does not declare client
    /// authentication, or it expired since its connection was opened (the reason).
    #[error("{0}")]
    UnusableCertificate(String),
    /// A client certificate whose names are bound to two service accounts.
    #[error(
        "the client certificate's names are bound to two service accounts ('{0}' and '{1}'); \
         a certificate must name one"
    )]
    AmbiguousCertificate(String, String),
}

impl AuthError {
    /// Whether the refusal could come from this replica lagging behind a recent change (a
    /// new key, user, account, secret or signing key), so that checking again after catching
    /// up with the leader could accept it.
    pub fn may_be_unseen(&self) -> bool {
        matches!(
            self,
            AuthError::BadApiKey
                | AuthError::BadOperatorToken
                | AuthError::Revoked(_)
                | AuthError::UnboundCertificate(_)
                | AuthError::BadToken(token::TokenError::UnknownKey)
        )
    }
}

/// The principal `credential` names in `state` at `now_s` (seconds since the epoch).
pub fn authenticate(
    state: &ControlState,
    credential: Credential<'_>,
    now_s: u64,
) -> Result<Principal, AuthError> {
    match credential {
        Credential::ApiKey(value) => verify_api_key(state, value)
            .map(|k| Principal::ApiKey(k.clone()))
            .ok_or(AuthError::BadApiKey),
        Credential::Bearer(value) if value.starts_with(OPERATOR_TOKEN_PREFIX) => {
            verify_operator_token(state, value)
                .map(|t| Principal::Operator {
                    token_id: t.id.clone(),
                })
                .ok_or(AuthError::BadOperatorToken)
        }
        Credential::Bearer(value) => {
            let claims = token::verify(&state.signing_keys, value, now_s)?;
            let (kind, org, role, version) = match claims.kind.as_str() {
                "user" => {
                    let u = state
                        .users
                        .get(&claims.sub)
                        .ok_or(AuthError::Revoked("user"))?;
                    (
                        MemberKind::User,
                        &u.organization_id,
                        u.role,
                        u.credential_version,
                    )
                }
                "service_account" => {
                    let a = state
                        .service_accounts
                        .get(&claims.sub)
                        .ok_or(AuthError::Revoked("service account"))?;
                    (
                        MemberKind::ServiceAccount,
                        &a.organization_id,
                        a.role,
                        a.credential_version,
                    )
                }
                _ => return Err(AuthError::BadToken(token::TokenError::Malformed)),
            };
            if *org != claims.org || version != claims.ver {
                return Err(AuthError::Revoked(kind.as_str()));
            }
            Ok(member(state, claims.sub, kind, org, role))
        }
    }
}

/// The member `id` with its organization role and its current project roles.
fn member(
    state: &ControlState,
    id: String,
    kind: MemberKind,
    org: &str,
    role: OrgRole,
) -> Principal {
    let project_roles = state
        .memberships_of(&id)
        .map(|m| (m.project_id.clone(), m.role))
        .collect();
    Principal::Member(Member {
        id,
        kind,
        organization_id: org.to_string(),
        org_role: role,
        project_roles,
    })
}

/// The service account a verified client certificate carrying `names` (its SANs and its
/// subject's common name, [`crate::tls::certificate_names`]) authenticates as in `state`,
/// with its current roles; `UnboundCertificate` when no name is bound to an account,
/// `AmbiguousCertificate` when they name two.
pub fn authenticate_certificate(
    state: &ControlState,
    names: &[String],
) -> Result<Principal, AuthError> {
    match state.certificate_account(names) {
        Ok(Some(account)) => Ok(member(
            state,
            account.id.clone(),
            MemberKind::ServiceAccount,
            &account.organization_id,
            account.role,
        )),
        Ok(None) => Err(AuthError::UnboundCertificate(describe_names(names))),
        Err((a, b)) => Err(AuthError::AmbiguousCertificate(a, b)),
    }
}

/// `names` for a message: the first few, quoted, with how many more there are.
fn describe_names(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{}'", n.chars().take(64).collect::<String>()))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    if text.is_empty() {
        text = "no names".into();
    }
    text
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

#[cfg(test)]
mod authenticate_tests {
    use super::*;
    use crate::control::state::tests::bootstrapped;
    use crate::control::state::{Command, IdentityCommand, ProjectMember, User};

    fn with_user() -> (ControlState, token::Claims) {
        let mut s = bootstrapped();
        s.signing_keys = vec![token::new_signing_key()];
        s.apply(Command::Identity(IdentityCommand::CreateUser(User {
            id: "u1".into(),
            organization_id: "o1".into(),
            email: "a@x.io".into(),
            name: "a".into(),
            role: OrgRole::OrgMember,
            password_phc: String::new(),
            credential_version: 0,
            created_at: "t".into(),
        })))
        .unwrap();
        s.apply(Command::Identity(IdentityCommand::AddProjectMember(
            ProjectMember {
                project_id: "p0".into(),
                principal_id: "u1".into(),
                kind: MemberKind::User,
                role: ProjectRole::ProjectManager,
                created_at: "t".into(),
            },
        )))
        .unwrap();
        let claims = token::Claims {
            iss: token::TOKEN_ISSUER.into(),
            sub: "u1".into(),
            kind: "user".into(),
            org: "o1".into(),
            ver: 0,
            iat: 1_000,
            exp: 2_000,
        };
        (s, claims)
    }

    #[test]
    fn a_users_token_names_the_user_with_current_roles() {
        let (s, claims) = with_user();
        let bearer = token::sign(s.current_signing_key().unwrap(), &claims).unwrap();
        let Principal::Member(m) = authenticate(&s, Credential::Bearer(&bearer), 1_500).unwrap()
        else {
            panic!("not a member");
        };
        assert_eq!(m.id, "u1");
        assert_eq!(m.project_roles["p0"], ProjectRole::ProjectManager);
    }

    #[test]
    fn a_bound_certificate_names_its_service_account_with_current_roles() {
        let (mut s, _) = with_user();
        s.apply(Command::Identity(IdentityCommand::CreateServiceAccount(
            ServiceAccount {
                id: "sa1".into(),
                organization_id: "o1".into(),
                name: "etl".into(),
                role: OrgRole::OrgMember,
                secret_sha256: String::new(),
                credential_version: 0,
                created_at: "t".into(),
                certificate_names: vec!["etl-loader".into()],
            },
        )))
        .unwrap();
        s.apply(Command::Identity(IdentityCommand::AddProjectMember(
            ProjectMember {
                project_id: "p0".into(),
                principal_id: "sa1".into(),
                kind: MemberKind::ServiceAccount,
                role: ProjectRole::ProjectMember,
                created_at: "t".into(),
            },
        )))
        .unwrap();
        let names = ["other".to_string(), "etl-loader".to_string()];
        let Principal::Member(m) = authenticate_certificate(&s, &names).unwrap() else {
            panic!("not a member");
        };
        assert_eq!((m.id.as_str(), m.kind), ("sa1", MemberKind::ServiceAccount));
        assert_eq!(m.project_roles["p0"], ProjectRole::ProjectMember);
        let unbound = authenticate_certificate(&s, &["nobody".to_string()]).unwrap_err();
        assert!(matches!(&unbound, AuthError::UnboundCertificate(n) if n == "'nobody'"));
        assert!(unbound.may_be_unseen());
        s.apply(Command::Identity(IdentityCommand::DeleteServiceAccount {
            id: "sa1".into(),
        }))
        .unwrap();
        assert!(authenticate_certificate(&s, &names).is_err());
    }

    #[test]
    fn a_token_dies_with_its_user_or_its_credential_version() {
        let (mut s, claims) = with_user();
        let bearer = token::sign(s.current_signing_key().unwrap(), &claims).unwrap();
        s.apply(Command::Identity(IdentityCommand::SetUserPassword {
            id: "u1".into(),
            password_phc: "x".into(),
        }))
        .unwrap();
        assert!(matches!(
            authenticate(&s, Credential::Bearer(&bearer), 1_500),
            Err(AuthError::Revoked(_))
        ));
        s.apply(Command::Identity(IdentityCommand::DeleteUser {
            id: "u1".into(),
        }))
        .unwrap();
        assert!(matches!(
            authenticate(&s, Credential::Bearer(&bearer), 1_500),
            Err(AuthError::Revoked(_))
        ));
    }

    #[test]
    fn operator_tokens_and_api_keys_do_not_pass_for_each_other() {
        let (s, _) = with_user();
        assert!(matches!(
            authenticate(&s, Credential::Bearer("cnfop_garbage"), 0),
            Err(AuthError::BadOperatorToken)
        ));
        assert!(matches!(
            authenticate(&s, Credential::ApiKey("cnfop_garbage"), 0),
            Err(AuthError::BadApiKey)
        ));
        assert!(matches!(
            authenticate(&s, Credential::Bearer("pcsk_x_y"), 0),
            Err(AuthError::BadToken(_))
        ));
    }
}
