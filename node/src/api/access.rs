//! Authentication and authorization at the front door. Every route is built from
//! [`policy::ROUTES`] with this module's middleware in front of it: the middleware knows the
//! route's [`Operation`], authenticates the credential under the control-plane lease (public
//! operations excepted) and hands the handler a [`Caller`]. The handler finds what the call
//! acts on and asks [`Caller::authorize`]; a handler that answers with success without
//! having asked is turned into a 500 (fail closed, and loud in tests).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::{actor_of, RequestInfo, REQUEST_ID_HEADER};
use super::{ApiError, ApiState};
use crate::audit::{AuditContext, AuditDraft, EventOutcome, Params, Resource};
use crate::auth::{self, token, Credential, Principal};
use crate::control::state::Project;
use crate::control::{Command, ControlError, Output};
use crate::policy::{self, Denied, Operation, Scope, Target};

/// Header naming the project of a call made with a bearer token (an API key implies its own
/// project).
pub const PROJECT_HEADER: &str = "x-project-id";

/// The client's address, set on every request by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Which of a node's listeners a request came in on, set on every request by the accept
/// loop: the client port and its index ports, or the private listener
/// (`serve --private-api-addr`) and its index ports. A project with private endpoints
/// ([`crate::control::private_endpoints`]) may require the private one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The client port (`--api-addr`) or one of its index ports.
    Public,
    /// The private listener (`--private-api-addr`) or one of its index ports.
    Private,
}

/// The client certificate the TLS handshake of a request's connection verified against the
/// client CA (`serve --client-ca`): its names and expiry, or why it authenticates no one
/// ([`crate::tls::presented_certificate`]). Every accept loop sets an
/// `Option<ClientCertificate>`, `None` without one.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Arc<Result<crate::tls::PresentedCertificate, String>>);

impl ClientCertificate {
    /// Its names, if it may authenticate at `now_s` (seconds since the epoch): `Err` when
    /// it does not declare client authentication or expired since the handshake.
    fn names(&self, now_s: u64) -> Result<&[String], String> {
        let presented = self.0.as_ref().as_ref().map_err(Clone::clone)?;
        if presented.not_after_unix < i64::try_from(now_s).unwrap_or(i64::MAX) {
            return Err(format!(
                "the client certificate expired at {} (seconds since the epoch) after its \
                 connection was opened; reconnect with a valid one",
                presented.not_after_unix
            ));
        }
        Ok(&presented.names)
    }
}

/// The shard group of the index whose own port a request came in on
/// (`--index-port-range`): every accept loop sets an `Option<ServedIndex>`, `None` on the
/// client port.
#[derive(Clone, Copy, Debug)]
pub struct ServedIndex(pub u64);

/// An authenticated caller and the operation its route performs.
#[derive(Clone)]
pub struct Caller {
    /// Who called.
    pub principal: Arc<Principal>,
    /// What the route does.
    pub operation: Operation,
    /// Where the request came from, for its audit event.
    pub request: Arc<RequestInfo>,
    /// The index whose own port the request came in on ([`ServedIndex`]), by shard group.
    pub served_index: Option<u64>,
    /// The listener the request came in on.
    pub listener: Listener,
    /// The client's address.
    pub client_addr: Option<IpAddr>,
    /// The service account the connection's client certificate authenticates as (the
    /// principal itself when no other credential was sent), or why it authenticates as
    /// none; `None` without a client certificate.
    pub certificate: Option<Result<Arc<Principal>, String>>,
    api: ApiState,
    authorized: Arc<AtomicBool>,
}

impl Caller {
    /// Checks the policy for this call's operation at `target`. A refusal of anything but a
    /// vector or namespace operation is queued as an audit event (in the caller's own
    /// organization's chain).
    pub fn authorize(&self, target: Target<'_>) -> Result<(), ApiError> {
        let error = match policy::decide(&self.principal, self.operation, target) {
            Ok(()) => {
                // A project's private endpoints bind its data plane (with the key still
                // required): checked once the caller may call it at all.
                if let (true, Target::Project { id, .. }) = (self.operation.is_data_plane(), target)
                {
                    let private = self.listener == Listener::Private;
                    let source = self.client_addr;
                    self.api
                        .control
                        .read(|s| s.private_access(id, private, source))
                        .map_err(|refusal| ApiError::forbidden(refusal.0))?;
                    self.check_client_certificate(id, target)?;
                }
                self.authorized.store(true, Ordering::Release);
                return Ok(());
            }
            Err(Denied::NotFound) => ApiError::not_found(match target {
                Target::Project { id, .. } => format!("project '{id}' not found"),
                _ => "not found".to_string(),
            }),
            Err(Denied::Forbidden(message)) => ApiError::forbidden(message),
        };
        if !self.operation.is_data_plane() {
            let (verb, kind) = self.operation.audit_terms();
            let (target_type, target_id) = match target {
                Target::Cluster => ("cluster", None),
                Target::Organization(id) => ("organization", Some(id)),
                Target::Project { id, .. } => ("project", Some(id)),
            };
            // The seed's resource id of what the attempt aimed at: the path's resource (an
            // index name, a key id), or the organization or project itself by name.
            let hint = self.request.resource_hint.clone();
            let resource_id = match (hint, target) {
                (Some(h), Target::Project { id, .. }) if h == id => self
                    .api
                    .control
                    .read(|s| s.projects.get(id).map(|p| p.name.clone())),
                (Some(h), Target::Organization(id)) if h == id => self
                    .api
                    .control
                    .read(|s| s.organizations.get(id).map(|o| o.name.clone())),
                // A member named by id (`…/members/{user_id}`) is named by email, as the seed
                // names users.
                (hint, _) => hint.map(|h| {
                    self.api
                        .control
                        .read(|s| s.users.get(&h).map(|u| u.email.clone()))
                        .unwrap_or(h)
                }),
            };
            let resource = Resource::new(verb, kind, None).id(resource_id).params(
                Params::default()
                    .with("target_type", target_type)
                    .with_some("target_id", target_id),
            );
            let mut context = self.context();
            // Named now: the batch may apply after the principal is gone.
            context.actor.name_hint = self
                .api
                .control
                .read(|s| crate::control::audit::actor_names(s, &context.actor))
                .map(|(name, _)| name);
            self.api.audit.record(AuditDraft {
                context,
                resource,
                outcome: EventOutcome::failure(error.code, &error.message),
            });
        }
        Err(error)
    }

    /// For a data-plane call into project `id`: when the project requires a client
    /// certificate, the connection's must authenticate as a service account that may make
    /// this call there too (whatever other credential came with it); 403 naming the rule.
    fn check_client_certificate(&self, id: &str, target: Target<'_>) -> Result<(), ApiError> {
        let required = self.api.control.read(|s| {
            s.projects
                .get(id)
                .is_some_and(|p| p.require_client_certificate)
        });
        if !required {
            return Ok(());
        }
        let rule = format!(
            "project '{id}' requires a client certificate (mutual TLS) for its data plane, \
             and an API key or token alone is refused there"
        );
        match &self.certificate {
            None => Err(ApiError::forbidden(format!(
                "{rule}: connect with a certificate from the cluster's client CA whose name is \
                 bound to a service account with access to the project"
            ))),
            Some(Err(reason)) => Err(ApiError::forbidden(format!("{rule}: {reason}"))),
            Some(Ok(account)) => policy::decide(account, self.operation, target).map_err(|_| {
                ApiError::forbidden(format!(
                    "{rule}: the client certificate's {} may not call {} in it",
                    account.describe(),
                    self.operation.name()
                ))
            }),
        }
    }

    /// Proposes `command` as this call: one log entry with its audit event (how every
    /// change a client asks for is made).
    pub async fn propose(&self, command: Command) -> Result<Output, ControlError> {
        self.api.control.propose_as(self.context(), command).await
    }

    /// The audit context of this call's operation by this caller, stamped now.
    pub fn context(&self) -> AuditContext {
        self.request
            .context(self.operation.name(), actor_of(&self.principal))
    }

    /// Authorizes at the project `project_id` (404 when it does not exist) and returns it.
    pub async fn authorize_project(
        &self,
        state: &ApiState,
        project_id: &str,
    ) -> Result<Project, ApiError> {
        let project = state
            .control
            .read_fresh(|s| s.projects.get(project_id).cloned())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("project '{project_id}' not found")))?;
        self.authorize(Target::Project {
            id: &project.id,
            organization_id: &project.organization_id,
        })?;
        Ok(project)
    }

    /// The project an index or data-plane call addresses: the `X-Project-Id` header, else
    /// an API key's own project; authorized, and returned by id.
    pub async fn authorize_data_project(
        &self,
        state: &ApiState,
        header: Option<&str>,
    ) -> Result<String, ApiError> {
        let id = match (header.filter(|h| !h.is_empty()), self.principal.as_ref()) {
            (Some(h), _) => h.to_string(),
            (None, Principal::ApiKey(key)) => key.project_id.clone(),
            (None, _) => {
                return Err(ApiError::invalid(format!(
                    "a call made without an API key (with a bearer token or a client \
                     certificate) must name its project in the {PROJECT_HEADER} header"
                )))
            }
        };
        if id.len() > super::admin::MAX_ID_BYTES {
            return Err(ApiError::not_found("project not found"));
        }
        Ok(self.authorize_project(state, &id).await?.id)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route has no authenticated caller"))
    }
}

/// What the middleware of one route knows.
#[derive(Clone)]
pub struct RouteAccess {
    /// Shared API state.
    pub api: ApiState,
    /// The route's operation; `None` for the gRPC service, whose operation is found by path.
    pub operation: Option<Operation>,
}

/// Whether a request or response is gRPC (its content type).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn reply(error: ApiError, grpc: bool) -> Response {
    if grpc {
        tonic::Status::from(error).into_http::<axum::body::Body>()
    } else {
        error.into_response()
    }
}

/// Headers that name one thing (a credential, the index, the API version, a read option):
/// sent twice with different values they would be ambiguous, so they are refused rather than
/// the first one used.
pub const SINGLE_HEADERS: &[&str] = &[
    "api-key",
    "authorization",
    PROJECT_HEADER,
    "x-conifer-index",
    "service-name",
    "content-type",
    "content-encoding",
    "x-pinecone-api-version",
    "x-conifer-min-lsn",
    "x-conifer-read-consistency",
    super::audit::REQUEST_ID_HEADER,
];

/// Refuses a request that repeats one of [`SINGLE_HEADERS`] with different values, or sends an
/// `X-Pinecone-Api-Version` that is not a version (`YYYY-MM`, as `2025-10`).
fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in SINGLE_HEADERS {
        // The same value twice is harmless (SDK 8 sends its API version twice); different
        // values are ambiguous.
        let values: std::collections::BTreeSet<&[u8]> = headers
            .get_all(*name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if values.len() > 1 {
            return Err(ApiError::invalid(format!(
                "header {name} appears {} times with different values; send one",
                values.len()
            )));
        }
    }
    if let Some(version) = headers.get("x-pinecone-api-version") {
        let text = version.to_str().unwrap_or("");
        let b = text.as_bytes();
        let shaped = b.len() == 7
            && b[4] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || c.is_ascii_digit());
        if !shaped {
            return Err(ApiError::invalid(format!(
                "X-Pinecone-Api-Version is {:?}; expected a version such as 2025-10",
                text.chars().take(32).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// The credential of a request: `Api-Key` or `Authorization: Bearer`, never both.
pub fn credential(headers: &HeaderMap) -> Result<Credential<'_>, ApiError> {
    let api_key = headers.get("api-key");
    let authorization = headers.get(axum::http::header::AUTHORIZATION);
    match (api_key, authorization) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "send one credential: either the Api-Key header or Authorization: Bearer, not both",
        )),
        (Some(value), None) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthenticated("Api-Key header is not ASCII"))?;
            if value.len() > auth::MAX_CREDENTIAL_BYTES {
                return Err(ApiError::unauthenticated(format!(
                    "Api-Key exceeds {} bytes",
                    auth::MAX_CREDENTIAL_BYTES
                )));
            }
            Ok(Credential::ApiKey(value))
        }
        (None, Some(value)) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthenticated("Authorization header is not ASCII"))?;
            let bearer = value.strip_prefix("Bearer ").ok_or_else(|| {
                ApiError::unauthenticated("Authorization header must be 'Bearer <token>'")
            })?;
            if bearer.len() > token::MAX_BEARER_TOKEN_BYTES {
                return Err(ApiError::unauthenticated(format!(
                    "bearer token exceeds {} bytes",
                    token::MAX_BEARER_TOKEN_BYTES
                )));
            }
            Ok(Credential::Bearer(bearer))
        }
        (None, None) => Err(ApiError::unauthenticated(
            "missing credential: send an Api-Key header, or Authorization: Bearer <token>",
        )),
    }
}

/// The middleware in front of every route.
pub async fn authenticate(
    State(route): State<RouteAccess>,
    request: Request,
    next: Next,
) -> Response {
    let arrived = std::time::Instant::now();
    let grpc = is_grpc(request.headers());
    let operation = match route
        .operation
        .or_else(|| policy::grpc_operation(request.uri().path()))
    {
        Some(op) => op,
        None => {
            return reply(
                ApiError::unimplemented(format!("no such method {}", request.uri().path())),
                grpc,
            )
        }
    };
    if let Err(e) = check_headers(request.headers()) {
        return reply(e, grpc);
    }
    let (mut parts, body) = request.into_parts();
    // The route's last path parameter (decoded), if any: what a refused attempt aimed at.
    let params = axum::extract::RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok();
    let resource = params
        .as_ref()
        .and_then(|p| p.iter().last().map(|(_, v)| v));
    let info = Arc::new(
        RequestInfo::new(
            &parts.headers,
            parts.extensions.get::<ClientAddr>().copied(),
            route.api.control.node_id(),
        )
        .with_resource_hint(resource)
        .with_arrival(arrived),
    );
    let request = Request::from_parts(parts, body);
    let request_id = axum::http::HeaderValue::from_str(&info.request_id).ok();
    let mut response = authenticated(route, operation, grpc, info, request, next).await;
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

async fn authenticated(
    route: RouteAccess,
    operation: Operation,
    grpc: bool,
    info: Arc<RequestInfo>,
    mut request: Request,
    next: Next,
) -> Response {
    if operation.scope() == Scope::Public {
        request.extensions_mut().insert(info);
        return next.run(request).await;
    }
    let certificate = request
        .extensions()
        .get::<Option<ClientCertificate>>()
        .cloned()
        .flatten();
    let headers = request.headers();
    let sent_credential =
        headers.contains_key("api-key") || headers.contains_key(axum::http::header::AUTHORIZATION);
    // A client certificate alone is a credential (of its service account); with another
    // credential, that one names the caller and the certificate's account is checked only
    // where a project requires a certificate.
    let cred = match (credential(headers), &certificate) {
        (Ok(cred), _) => Some(cred),
        (Err(_), Some(_)) if !sent_credential => None,
        (Err(e), _) => return reply(e, grpc),
    };
    let names = certificate.as_ref().map(|c| c.names(token::now_s()));
    let control = &route.api.control;
    let check = || {
        control.read_authenticated(|s| {
            let by_certificate = names.as_ref().map(|names| match names {
                Ok(names) => auth::authenticate_certificate(s, names),
                Err(unusable) => Err(auth::AuthError::UnusableCertificate(unusable.clone())),
            });
            match cred {
                Some(cred) => (auth::authenticate(s, cred, token::now_s()), by_certificate),
                None => (
                    by_certificate.expect("no other credential without a certificate"),
                    None,
                ),
            }
        })
    };
    let mut outcome = check().await;
    // A credential created through another node a moment ago may not be here yet: catch up
    // with the leader once before refusing it — at a bounded rate per source, so a flood of
    // garbage keys costs the leader nothing more.
    let source = request.extensions().get::<ClientAddr>().map(|a| a.0);
    if matches!(&outcome, Ok((Err(refused), _)) if refused.may_be_unseen())
        && source.is_none_or(|ip| route.api.catch_ups.allow(ip))
        && control.linearizable_barrier().await.is_ok()
    {
        outcome = check().await;
    }
    let (principal, certificate) = match outcome {
        Ok((Ok(principal), by_certificate)) => {
            let principal = Arc::new(principal);
            let certificate = match (cred, by_certificate) {
                (None, _) => Some(Ok(principal.clone())),
                (Some(_), by_certificate) => {
                    by_certificate.map(|r| r.map(Arc::new).map_err(|e| e.to_string()))
                }
            };
            (principal, certificate)
        }
        Ok((Err(refused), _)) => return reply(ApiError::from(refused), grpc),
        Err(unavailable) => return reply(unavailable.into(), grpc),
    };
    let caller = Caller {
        principal,
        certificate,
        operation,
        request: info,
        served_index: request
            .extensions()
            .get::<Option<ServedIndex>>()
            .copied()
            .flatten()
            .map(|index| index.0),
        listener: request
            .extensions()
            .get::<Listener>()
            .copied()
            .unwrap_or(Listener::Public),
        client_addr: source,
        api: route.api.clone(),
        authorized: Arc::new(AtomicBool::new(false)),
    };
    let authorized = caller.authorized.clone();
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    // gRPC answers 200 and puts its status in trailers; its handlers all go through
    // `GrpcDataPlane::target`, which authorizes.
    if !grpc && response.status().is_success() && !authorized.load(Ordering::Acquire) {
        tracing::error!(
            operation = operation.name(),
            "a handler answered without authorizing; refusing the response"
        );
        return reply(
            ApiError::internal(format!("{} did not check authorization", operation.name())),
            grpc,
        );
    }
    response
}
