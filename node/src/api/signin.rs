//! Signing in: `POST /auth/login` (user email and password) and `POST /oauth/token`
//! (service-account client credentials, OAuth 2.0's `client_credentials` grant, as
//! Pinecone's admin API takes it), which answer with a short-lived bearer token; and
//! `POST /auth/password`, a user changing their own password with the current one. All are
//! throttled per source address and per account ([`crate::auth::throttle`]), and their
//! argon2 work runs on the bounded pool of [`crate::auth::password::PasswordWork`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::access::ClientAddr;
use super::audit::RequestInfo;
use super::error::BUSY_RETRY_AFTER_S;
use super::identity::MAX_EMAIL_BYTES;
use super::{ApiError, ApiState};
use crate::audit::{
    ActorRef, AuditDraft, EventOutcome, PrincipalType, Resource, ResourceType, Verb,
};
use crate::auth::password::{self, Busy, PasswordWork, MAX_PASSWORD_BYTES};
use crate::auth::throttle::{
    PrincipalRate, SignInThrottle, SIGN_IN_BURST_PER_PRINCIPAL, SIGN_IN_INTERVAL_PER_PRINCIPAL_MS,
};
use crate::auth::token::{self, Claims, TOKEN_ISSUER};
use crate::auth::{self, MAX_CREDENTIAL_BYTES};
use crate::control::state::{IdentityCommand, MemberKind, SigningKey, User};
use crate::control::{Command, Output};
use crate::policy::Operation;

/// A node's sign-in machinery.
pub struct SignIn {
    /// Sign-in attempts per source and per account.
    pub throttle: SignInThrottle,
    /// Successful sign-ins per principal.
    pub per_principal: PrincipalRate,
    /// The argon2 worker pool (password checks and new password hashes).
    pub passwords: PasswordWork,
    /// Lifetime of the tokens this node issues, in seconds.
    pub token_ttl_s: u64,
}

impl SignIn {
    /// Sign-in with tokens living `token_ttl_s` seconds and one password worker per core.
    pub fn new(token_ttl_s: u64) -> Self {
        Self {
            throttle: SignInThrottle::default(),
            per_principal: PrincipalRate::default(),
            passwords: PasswordWork::per_core(),
            token_ttl_s,
        }
    }

    /// The PHC string of a new password, after checking its length; 429 when the password
    /// workers are saturated.
    pub async fn hash_new_password(&self, password: String) -> Result<String, ApiError> {
        password::check_new_password(&password).map_err(ApiError::invalid)?;
        self.passwords
            .hash(password)
            .await
            .map_err(|Busy| busy())?
            .map_err(ApiError::internal)
    }
}

/// The source or the account is waiting out its backoff for `wait` more.
fn throttled(wait: Duration) -> ApiError {
    let retry_after_s = ApiError::retry_after_seconds(wait);
    ApiError::retry_in(
        retry_after_s,
        format!(
            "too many failed sign-ins from this address or for this account; retry in \
             {retry_after_s} s"
        ),
    )
}

/// 429 with `Retry-After` for a principal past its sign-in rate, recorded as a refusal (so
/// rate-limited and summarized like every other).
fn over_rate(
    state: &ApiState,
    info: &RequestInfo,
    operation: Operation,
    subject: &Subject,
    wait: Duration,
) -> Response {
    let retry_after_s = ApiError::retry_after_seconds(wait);
    let error = ApiError::retry_in(
        retry_after_s,
        format!(
            "this principal signed in {SIGN_IN_BURST_PER_PRINCIPAL} times in a burst, then \
             more than once per {} s, on this node; reuse the token issued (it is valid \
             until its 'exp'), or retry in {retry_after_s} s",
            SIGN_IN_INTERVAL_PER_PRINCIPAL_MS / 1000
        ),
    );
    let actor = ActorRef::member(subject.kind.into(), &subject.id, &subject.organization_id);
    let resource = Resource::new(
        Verb::Login,
        crate::control::audit::member_resource_type(subject.kind),
        Some(&subject.id),
    )
    .in_org(Some(&subject.organization_id));
    state.audit.record(AuditDraft {
        context: info.context(operation.name(), actor),
        resource,
        outcome: EventOutcome::failure(error.code, &error.message),
    });
    error.into_response()
}

/// The password workers' queue is full.
fn busy() -> ApiError {
    ApiError::busy(format!(
        "this node is checking {} passwords already; retry in {BUSY_RETRY_AFTER_S} s",
        password::MAX_QUEUED_PASSWORD_HASHES
    ))
}

/// Who is signing in, once the secret checked out.
struct Subject {
    id: String,
    kind: MemberKind,
    organization_id: String,
    credential_version: u64,
}

fn issue(state: &ApiState, key: &SigningKey, subject: Subject) -> Result<Response, ApiError> {
    let now = token::now_s();
    let claims = Claims {
        iss: TOKEN_ISSUER.into(),
        sub: subject.id,
        kind: subject.kind.as_str().into(),
        org: subject.organization_id,
        ver: subject.credential_version,
        iat: now,
        exp: now + state.signin.token_ttl_s,
    };
    let access_token = token::sign(key, &claims).map_err(ApiError::internal)?;
    Ok(Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.signin.token_ttl_s,
    }))
    .into_response())
}

/// How a sign-in check ended.
enum Verdict {
    /// The credentials are good, but their principal is past its sign-in rate
    /// ([`PrincipalRate`]) for `wait` more.
    OverRate { subject: Subject, wait: Duration },
    /// The credentials are good. `recorded`: the check already proposed an audited change
    /// (a password change), so no separate sign-in event is needed.
    Accepted {
        key: SigningKey,
        subject: Subject,
        recorded: bool,
    },
    /// They are not; `actor` is whoever they named, as far as it is known.
    Refused { actor: ActorRef },
}

fn unknown_actor(principal_type: PrincipalType, name: &str) -> ActorRef {
    ActorRef {
        principal_type,
        principal_id: String::new(),
        organization_id: None,
        name_hint: Some(name.to_string()),
    }
}

/// Runs a sign-in `check` of `account` under the throttle, which counts the attempt before
/// the check runs. A good one is recorded in the audit log (committed) before the token is
/// issued; a bad one is queued as a failure event.
async fn attempt<F>(
    state: &ApiState,
    info: &RequestInfo,
    operation: Operation,
    (source, account): (std::net::IpAddr, &str),
    check: F,
) -> Response
where
    F: std::future::Future<Output = Result<Verdict, ApiError>>,
{
    let counted = match state.signin.throttle.admit(source, account, Instant::now()) {
        Ok(counted) => counted,
        Err(wait) => return throttled(wait).into_response(),
    };
    match check.await {
        Ok(Verdict::Accepted {
            key,
            subject,
            recorded,
        }) => {
            state.signin.throttle.succeeded(counted);
            if !recorded {
                let actor =
                    ActorRef::member(subject.kind.into(), &subject.id, &subject.organization_id);
                if let Err(wait) = state.signin.per_principal.allow(&subject.id) {
                    return over_rate(state, info, operation, &subject, wait);
                }
                let command = Command::Identity(IdentityCommand::SignIn {
                    principal_id: subject.id.clone(),
                    kind: subject.kind,
                });
                let context = info.context(operation.name(), actor);
                if let Err(e) = state.control.propose_as(context, command).await {
                    return ApiError::from(e).into_response();
                }
            }
            issue(state, &key, subject).unwrap_or_else(IntoResponse::into_response)
        }
        Ok(Verdict::OverRate { subject, wait }) => {
            state.signin.throttle.succeeded(counted);
            over_rate(state, info, operation, &subject, wait)
        }
        Ok(Verdict::Refused { actor }) => {
            let error = ApiError::unauthenticated("invalid credentials");
            // The seed's login event names the user (email) tried; a service account is
            // named by the client id it presented.
            let uid = Some(actor.principal_id.as_str()).filter(|id| !id.is_empty());
            let resource = match actor.principal_type {
                PrincipalType::ServiceAccount => {
                    Resource::new(Verb::Login, ResourceType::ServiceAccount, uid).id(uid)
                }
                _ => Resource::new(Verb::Login, ResourceType::User, uid)
                    .id(actor.name_hint.as_deref()),
            }
            .named(actor.name_hint.as_deref());
            state.audit.record(AuditDraft {
                context: info.context(operation.name(), actor),
                resource,
                outcome: EventOutcome::failure(error.code, &error.message),
            });
            error.into_response()
        }
        Err(e) => {
            // Not checked (the node could not): the attempt is given back.
            state.signin.throttle.abandoned(counted);
            e.into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    email: String,
    password: String,
}

fn check_sizes(email: &str, password: &str) -> Result<(), ApiError> {
    if email.len() > MAX_EMAIL_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid(format!(
            "'email' is limited to {MAX_EMAIL_BYTES} bytes and 'password' to {MAX_PASSWORD_BYTES}"
        )));
    }
    Ok(())
}

/// Checks `email` and `password`: (the signing key, the user if the email is known, whether
/// the password matched).
async fn verify_user(
    state: &ApiState,
    email: &str,
    password: String,
) -> Result<(SigningKey, Option<User>, bool), ApiError> {
    // Catch up with the leader first, every time: a user created through another node a
    // moment ago is found, and known and unknown emails take the same path.
    state.control.linearizable_barrier().await?;
    let (user, key) = state
        .control
        .read_authenticated(|s| {
            let user = s.user_by_email(email).cloned();
            (user, s.current_signing_key().cloned())
        })
        .await?;
    let key = key.ok_or_else(|| ApiError::unavailable("no signing key yet"))?;
    // An unknown email is checked against the decoy: the same work, never a match.
    let phc = user.as_ref().map(|u| u.password_phc.clone());
    let matches = state
        .signin
        .passwords
        .verify(password, phc)
        .await
        .map_err(|Busy| busy())?;
    Ok((key, user, matches))
}

fn refused_user(email: &str, user: Option<&User>) -> Verdict {
    Verdict::Refused {
        actor: match user {
            Some(u) => ActorRef::member(MemberKind::User.into(), &u.id, &u.organization_id)
                .with_name_hint(&u.email),
            None => unknown_actor(PrincipalType::User, email),
        },
    }
}

fn subject_of(user: User) -> Subject {
    Subject {
        id: user.id,
        kind: MemberKind::User,
        organization_id: user.organization_id,
        credential_version: user.credential_version,
    }
}

/// `POST /auth/login`: a user's email and password for a bearer token.
pub async fn login(
    State(state): State<ApiState>,
    Extension(ClientAddr(source)): Extension<ClientAddr>,
    Extension(info): Extension<Arc<RequestInfo>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = check_sizes(&body.email, &body.password) {
        return e.into_response();
    }
    let check = async {
        Ok(
            match verify_user(&state, &body.email, body.password).await? {
                (key, Some(user), true) => Verdict::Accepted {
                    key,
                    subject: subject_of(user),
                    recorded: false,
                },
                (_, user, _) => refused_user(&body.email, user.as_ref()),
            },
        )
    };
    attempt(
        &state,
        &info,
        Operation::Login,
        (source, &body.email),
        check,
    )
    .await
}

/// Body of `POST /auth/password`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    email: String,
    password: String,
    new_password: String,
}

/// `POST /auth/password`: a user sets a new password with the current one. Every token
/// issued before stops working (within the lease); the answer is a token for the new one.
pub async fn change_password(
    State(state): State<ApiState>,
    Extension(ClientAddr(source)): Extension<ClientAddr>,
    Extension(info): Extension<Arc<RequestInfo>>,
    body: Result<Json<ChangePassword>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = check_sizes(&body.email, &body.password)
        .and_then(|()| password::check_new_password(&body.new_password).map_err(ApiError::invalid))
    {
        return e.into_response();
    }
    let check = async {
        let (key, user) = match verify_user(&state, &body.email, body.password).await? {
            (key, Some(user), true) => (key, user),
            (_, user, _) => return Ok(refused_user(&body.email, user.as_ref())),
        };
        if let Err(wait) = state.signin.per_principal.allow(&user.id) {
            return Ok(Verdict::OverRate {
                subject: subject_of(user),
                wait,
            });
        }
        let actor = ActorRef::member(MemberKind::User.into(), &user.id, &user.organization_id);
        let password_phc = state.signin.hash_new_password(body.new_password).await?;
        let command = Command::Identity(IdentityCommand::SetUserPassword {
            id: user.id.clone(),
            password_phc,
        });
        let context = info.context(Operation::ChangePassword.name(), actor);
        match state.control.propose_as(context, command).await? {
            Output::User(changed) => Ok(Verdict::Accepted {
                key,
                subject: subject_of(changed),
                recorded: true,
            }),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    };
    attempt(
        &state,
        &info,
        Operation::ChangePassword,
        (source, &body.email),
        check,
    )
    .await
}

/// Body of `POST /oauth/token`.
#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    client_id: String,
    client_secret: String,
    /// Pinecone's SDKs send an audience; any value is accepted.
    #[serde(default)]
    #[allow(dead_code)]
    audience: Option<String>,
}

/// `POST /oauth/token`: a service account's client credentials for a bearer token.
pub async fn issue_token(
    State(state): State<ApiState>,
    Extension(ClientAddr(source)): Extension<ClientAddr>,
    Extension(info): Extension<Arc<RequestInfo>>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if body.grant_type != "client_credentials" {
        return ApiError::invalid("'grant_type' must be \"client_credentials\"").into_response();
    }
    if body.client_id.len() > MAX_CREDENTIAL_BYTES
        || body.client_secret.len() > MAX_CREDENTIAL_BYTES
    {
        return ApiError::invalid(format!(
            "'client_id' and 'client_secret' are limited to {MAX_CREDENTIAL_BYTES} bytes"
        ))
        .into_response();
    }
    let check = async {
        state.control.linearizable_barrier().await?;
        let (account, key) = state
            .control
            .read_authenticated(|s| {
                let account = s.service_accounts.get(&body.client_id).cloned();
                (account, s.current_signing_key().cloned())
            })
            .await?;
        let key = key.ok_or_else(|| ApiError::unavailable("no signing key yet"))?;
        Ok(match account {
            Some(a) if auth::verify_client_secret(&a, &body.client_secret) => Verdict::Accepted {
                key,
                subject: Subject {
                    id: a.id,
                    kind: MemberKind::ServiceAccount,
                    organization_id: a.organization_id,
                    credential_version: a.credential_version,
                },
                recorded: false,
            },
            Some(a) => Verdict::Refused {
                actor: ActorRef::member(
                    MemberKind::ServiceAccount.into(),
                    &a.id,
                    &a.organization_id,
                )
                .with_name_hint(&a.name),
            },
            None => Verdict::Refused {
                actor: unknown_actor(PrincipalType::ServiceAccount, &body.client_id),
            },
        })
    };
    attempt(
        &state,
        &info,
        Operation::IssueToken,
        (source, &body.client_id),
        check,
    )
    .await
}
