//! The front door: one TLS client port per node serving REST (axum) and gRPC (tonic) on
//! the same listener (ALPN h2 / http/1.1), and with `--index-port-range` one more port per
//! index serving its data plane ([`ports`]).
//!
//! This layer only authenticates, authorizes, validates and routes; the control plane
//! holds the logic. Routes come from [`policy::ROUTES`]; every one except the public ones
//! (`/health`, sign-in) requires a credential, checked by [`access`].

pub mod access;
pub mod admin;
pub mod audit;
pub mod backups;
pub mod body;
pub mod conn;
pub mod data;
pub mod error;
pub mod grpc;
pub mod identity;
pub mod indexes;
pub mod ports;
pub mod private;
pub mod signin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Json;
use conifer_proto::pinecone::vector_service_server::VectorServiceServer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::control::ControlPlane;
use crate::dataplane::Router;
use crate::policy::{self, Operation, Scope, Target};
use access::Caller;
pub use error::ApiError;
use grpc::GrpcDataPlane;
use signin::SignIn;

/// Largest admin request body.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;
/// Largest data-plane or index request body (JSON of a 2 MB upsert, with room for encoding).
pub const MAX_DATA_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Time allowed for a client's TLS handshake.
pub const CLIENT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The control plane.
    pub control: ControlPlane,
    /// Data-plane routing.
    pub router: Router,
    /// Sign-in throttling and token lifetime.
    pub signin: Arc<SignIn>,
    /// Where events of denied and failed attempts wait to be proposed.
    pub audit: crate::control::audit_sink::AuditSink,
    /// The client connections this node holds.
    pub connections: Arc<conn::ConnectionTable>,
    /// Leader catch-ups that unknown credentials may cause, per source.
    pub catch_ups: Arc<crate::auth::throttle::SourceRate>,
    /// The key hierarchy: new projects and indexes get their keys here.
    pub keys: Arc<crate::crypto::KeyCache>,
    /// Root key rotation (`None` when the root is an AWS KMS key).
    pub rotator: Option<Arc<crate::control::rotation::RootRotator>>,
    /// The node's certificates, reloaded while it runs.
    pub certificates: Arc<crate::tls::reload::Certificates>,
    /// Days before expiry from which a certificate is reported with a warning.
    pub cert_expiry_warning_days: u32,
    /// Backups, collections and restore jobs.
    pub backups: crate::backup::Backups,
}

/// Every route of the client port, built from [`policy::ROUTES`]: each REST route with the
/// authentication middleware for its operation in front, and the gRPC `VectorService`,
/// whose operation the middleware finds by method path.
pub fn routes(state: ApiState) -> axum::Router {
    routes_where(state, |_| true)
}

/// The routes of an index's own port ([`ports`]): the data plane (REST and gRPC) and
/// `/health`; the control plane and administration stay on the client port.
pub fn index_port_routes(state: ApiState) -> axum::Router {
    routes_where(state, |op| op.is_data_plane() || op == Operation::Health)
}

fn routes_where(state: ApiState, served: impl Fn(Operation) -> bool) -> axum::Router {
    let mut router = axum::Router::new();
    for (method, path, operation) in policy::ROUTES {
        if path.starts_with(policy::GRPC_PREFIX) || !served(*operation) {
            continue;
        }
        let access = access::RouteAccess {
            api: state.clone(),
            operation: Some(*operation),
        };
        let body_limit = match operation.scope() {
            Scope::Project if is_data_operation(*operation) => MAX_DATA_BODY_BYTES,
            _ => MAX_ADMIN_BODY_BYTES,
        };
        let mut route = handler(method_filter(method), *operation);
        if !takes_query(*operation) {
            route = route.layer(axum::middleware::from_fn(refuse_query));
        }
        let rule = body::BodyRule {
            limit_bytes: body_limit,
            takes_body: takes_body(*operation),
            plane: if operation.is_data_plane() {
                body::Plane::Data
            } else {
                body::Plane::Control
            },
        };
        let route = route
            .layer(axum::middleware::from_fn_with_state(rule, body::limit_body))
            .layer::<_, std::convert::Infallible>(axum::middleware::from_fn_with_state(
                access,
                access::authenticate,
            ))
            .layer(DefaultBodyLimit::max(body_limit));
        router = router.route(path, route);
    }
    let grpc_service = VectorServiceServer::new(GrpcDataPlane::new(state.clone()))
        .max_decoding_message_size(MAX_DATA_BODY_BYTES);
    let grpc = axum::Router::new()
        .route_service(&format!("{}{{*method}}", policy::GRPC_PREFIX), grpc_service)
        .layer(axum::middleware::from_fn(grpc::check_frame))
        .layer(axum::middleware::from_fn_with_state(
            access::RouteAccess {
                api: state.clone(),
                operation: None,
            },
            access::authenticate,
        ));
    router
        .with_state(state)
        .merge(grpc)
        .fallback(no_such_route)
        .layer(axum::middleware::from_fn(error::pinecone_error_bodies))
        .layer(axum::middleware::map_request(copy_authority))
}

/// A path no route serves: 404 over REST; a gRPC method of an unknown service is
/// `UNIMPLEMENTED`, as gRPC defines it.
async fn no_such_route(request: axum::extract::Request) -> axum::response::Response {
    if access::is_grpc(request.headers()) {
        let unknown = ApiError::unimplemented(format!("no such method {}", request.uri().path()));
        return tonic::Status::from(unknown).into_http();
    }
    axum::response::IntoResponse::into_response(ApiError::not_found("no such route"))
}

/// Whether a REST operation reads query parameters (each refuses the ones it does not
/// know); every other route refuses any query string rather than ignore it.
fn takes_query(operation: Operation) -> bool {
    use Operation as O;
    matches!(
        operation,
        O::VectorFetch
            | O::VectorList
            | O::NamespaceList
            | O::AuditLogRead
            | O::ClusterAuditLogRead
            | O::ClusterDescribe
            | O::ClusterRemoveMember
            | O::BackupList
            | O::RestoreJobList
            | O::IndexDelete
    )
}

/// Whether a REST operation reads a JSON body; every other route refuses a non-empty one
/// rather than ignore it.
fn takes_body(operation: Operation) -> bool {
    use Operation as O;
    matches!(
        operation,
        O::Login
            | O::IssueToken
            | O::ChangePassword
            | O::OrgCreate
            | O::OrgUpdate
            | O::OrgMemberCreate
            | O::OrgMemberUpdate
            | O::ServiceAccountCreate
            | O::ServiceAccountUpdate
            | O::ServiceAccountSetCertificateNames
            | O::ProjectCreate
            | O::ProjectUpdate
            | O::ProjectMemberAdd
            | O::ProjectMemberUpdate
            | O::ApiKeyCreate
            | O::ApiKeyUpdate
            | O::PrivateEndpointCreate
            | O::IndexCreate
            | O::IndexConfigure
            | O::BackupCreate
            | O::BackupRestore
            | O::CollectionCreate
            | O::VectorUpsert
            | O::VectorUpdate
            | O::VectorDelete
            | O::VectorQuery
            | O::VectorFetchByMetadata
            | O::IndexStats
            | O::NamespaceCreate
    )
}

/// Refuses a request with a query string, for routes that take none.
async fn refuse_query(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match request.uri().query() {
        Some(query) if !query.is_empty() => {
            axum::response::IntoResponse::into_response(ApiError::invalid(format!(
                "{} takes no query parameters, got '{}'",
                request.uri().path(),
                query.chars().take(256).collect::<String>()
            )))
        }
        _ => next.run(request).await,
    }
}

/// Whether an operation of project scope carries index or vector payloads (the larger body
/// limit).
fn is_data_operation(operation: Operation) -> bool {
    operation
        .allowed()
        .iter()
        .any(|r| matches!(r, policy::Role::Key(_)))
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        other => panic!("policy::ROUTES names unknown method {other}"),
    }
}

/// The handler of each REST operation (gRPC operations are served by `GrpcDataPlane`).
fn handler(method: MethodFilter, operation: Operation) -> MethodRouter<ApiState> {
    use Operation as O;
    match operation {
        O::Health => on(method, health),
        O::Login => on(method, signin::login),
        O::IssueToken => on(method, signin::issue_token),
        O::ChangePassword => on(method, signin::change_password),
        O::ClusterDescribe => on(method, cluster),
        O::ClusterPromoteMember => on(method, admin::promote_member),
        O::ClusterRemoveMember => on(method, admin::remove_member),
        O::ClusterSnapshot => on(method, snapshot),
        O::RootKeysDescribe => on(method, admin::describe_root_keys),
        O::RootKeysRotate => on(method, admin::rotate_root_key),
        O::OperatorTokenList => on(method, identity::list_operator_tokens),
        O::OperatorTokenCreate => on(method, identity::create_operator_token),
        O::OperatorTokenRotate => on(method, identity::rotate_operator_token),
        O::OperatorTokenDelete => on(method, identity::delete_operator_token),
        O::SigningKeyRotate => on(method, identity::rotate_signing_key),
        O::OrgCreate => on(method, identity::create_organization),
        O::AuditLogRead => on(method, audit::list),
        O::ClusterAuditLogRead => on(method, audit::list_cluster),
        O::OrgList => on(method, identity::list_organizations),
        O::OrgGet => on(method, identity::get_organization),
        O::OrgUpdate => on(method, identity::update_organization),
        O::OrgDelete => on(method, identity::delete_organization),
        O::OrgMemberList => on(method, identity::list_members),
        O::OrgMemberCreate => on(method, identity::create_member),
        O::OrgMemberUpdate => on(method, identity::update_member),
        O::OrgMemberRemove => on(method, identity::remove_member),
        O::ServiceAccountList => on(method, identity::list_service_accounts),
        O::ServiceAccountCreate => on(method, identity::create_service_account),
        O::ServiceAccountUpdate => on(method, identity::update_service_account),
        O::ServiceAccountRotateSecret => on(method, identity::rotate_service_account_secret),
        O::ServiceAccountSetCertificateNames => on(method, identity::set_certificate_names),
        O::ServiceAccountDelete => on(method, identity::delete_service_account),
        O::ProjectCreate => on(method, admin::create_project),
        O::ProjectList => on(method, admin::list_projects),
        O::ProjectGet => on(method, admin::get_project),
        O::ProjectUpdate => on(method, admin::update_project),
        O::ProjectDelete => on(method, admin::delete_project),
        O::ProjectMemberList => on(method, identity::list_project_members),
        O::ProjectMemberAdd => on(method, identity::add_project_member),
        O::ProjectMemberUpdate => on(method, identity::update_project_member),
        O::ProjectMemberRemove => on(method, identity::remove_project_member),
        O::ApiKeyList => on(method, admin::list_api_keys),
        O::ApiKeyGet => on(method, admin::get_api_key),
        O::ApiKeyCreate => on(method, admin::create_api_key),
        O::ApiKeyUpdate => on(method, admin::update_api_key),
        O::ApiKeyDelete => on(method, admin::delete_api_key),
        O::PrivateEndpointList => on(method, private::list),
        O::PrivateEndpointGet => on(method, private::get),
        O::PrivateEndpointCreate => on(method, private::create),
        O::PrivateEndpointDelete => on(method, private::delete),
        O::IndexCreate => on(method, indexes::create),
        O::IndexList => on(method, indexes::list),
        O::IndexDescribe => on(method, indexes::describe),
        O::IndexConfigure => on(method, indexes::configure),
        O::IndexRotateKey => on(method, indexes::rotate_key),
        O::IndexDelete => on(method, indexes::delete),
        O::VectorUpsert => on(method, data::upsert),
        O::VectorUpdate => on(method, data::update),
        O::VectorDelete => on(method, data::delete),
        O::VectorQuery => on(method, data::query),
        O::VectorFetch => on(method, data::fetch),
        O::VectorFetchByMetadata => on(method, data::fetch_by_metadata),
        O::VectorList => on(method, data::list),
        O::IndexStats => on(method, data::describe_index_stats),
        O::NamespaceList => on(method, data::list_namespaces),
        O::NamespaceDescribe => on(method, data::describe_namespace),
        O::NamespaceCreate => on(method, data::create_namespace),
        O::NamespaceDelete => on(method, data::delete_namespace),
        O::BackupCreate => on(method, backups::create),
        O::BackupList => on(method, backups::list),
        O::BackupDescribe => on(method, backups::describe),
        O::BackupDelete => on(method, backups::delete),
        O::BackupRestore => on(method, backups::create_index),
        O::RestoreJobList => on(method, backups::list_restore_jobs),
        O::RestoreJobDescribe => on(method, backups::describe_restore_job),
        O::CollectionCreate => on(method, backups::create_collection),
        O::CollectionList => on(method, backups::list_collections),
        O::CollectionDescribe => on(method, backups::describe_collection),
        O::CollectionDelete => on(method, backups::delete_collection),
    }
}

/// Puts the request's authority (HTTP/2 `:authority` or HTTP/1.1 `Host`) into the header
/// [`grpc::AUTHORITY_METADATA`] that data-plane routing reads, replacing anything the client
/// sent under that name.
async fn copy_authority(mut request: axum::extract::Request) -> axum::extract::Request {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        });
    let headers = request.headers_mut();
    headers.remove(grpc::AUTHORITY_METADATA);
    if let Some(value) = authority.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        headers.insert(grpc::AUTHORITY_METADATA, value);
    }
    request
}

/// Serves `router` on `listener` until the process ends — over TLS with the client-port
/// configuration of the certificate set in use when each connection is accepted (`certs`
/// reloads), or plain HTTP when that set has none (`serve --dev-http`, loopback only) —
/// admitting connections by
/// `connections` ([`conn`]'s caps) and closing idle and slow ones ([`conn`]'s timeouts).
/// `served_index`: the shard group of the index this is the own port of
/// ([`ports`]), stamped on every request; `None` for the client port. `kind`: which of the
/// node's listeners this is (public or private), also stamped on every request.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<crate::tls::reload::Certificates>,
    router: axum::Router,
    connections: Arc<conn::ConnectionTable>,
    served_index: Option<u64>,
    kind: access::Listener,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(index = ?served_index, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match connections.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, "client connection refused");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = certs.current().client_port.clone().map(TlsAcceptor::from);
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return serve_connection(tcp, peer, None, router, served_index, kind).await;
            };
            let handshake = tokio::time::timeout(
                Duration::from_millis(CLIENT_TLS_HANDSHAKE_TIMEOUT_MS),
                async {
                    let tcp = speaks_tls(tcp).await?;
                    Some(acceptor.accept(tcp).await)
                },
            );
            match handshake.await {
                Ok(Some(Ok(tls))) => {
                    // Present only when the port has a client CA, which verified it.
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| {
                            access::ClientCertificate(Arc::new(crate::tls::presented_certificate(
                                leaf,
                            )))
                        });
                    serve_connection(tls, peer, certificate, router, served_index, kind).await
                }
                Ok(Some(Err(e))) => tracing::debug!(%peer, "client TLS handshake failed: {e}"),
                Ok(None) => tracing::debug!(%peer, "plaintext on the TLS client port refused"),
                Err(_) => {}
            }
        });
    }
}

/// First byte of a TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The body of what a TLS port answers a plaintext HTTP request before it closes.
const PLAINTEXT_REFUSAL: &str = "This port speaks TLS only: use https:// (TLS 1.2 or 1.3)\n";
/// Most bytes read from a refused plaintext client before closing.
const PLAINTEXT_DRAIN_BYTES: usize = 64 << 10;
/// Most time spent reading them.
const PLAINTEXT_DRAIN_MS: u64 = 500;

/// Whether the client on `tcp` starts a TLS handshake (peeked, nothing consumed). If it
/// does not, the connection is answered and closed here: plain HTTP/1.x (and h2c gRPC's
/// preface, which starts like it) gets a 400 saying so, anything else (an SSL 2.0
/// hello, noise) just the close. Never waits for more than the first byte.
async fn speaks_tls(mut tcp: TcpStream) -> Option<TcpStream> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => return Some(tcp),
        Ok(1) if first[0].is_ascii_uppercase() => {
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{PLAINTEXT_REFUSAL}",
                PLAINTEXT_REFUSAL.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        }
        Ok(1) => {}
        _ => return None,
    }
    let _ = tcp.shutdown().await;
    // Read what the client sent until it closes too (bounded), so that the close is a FIN
    // after the answer, not a reset that could discard it.
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < PLAINTEXT_DRAIN_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(PLAINTEXT_DRAIN_MS), drain).await;
    None
}

/// Serves HTTP/1.1 and HTTP/2 (gRPC) on one accepted connection `io` until it ends or
/// idles out ([`conn::Activity`]); `certificate`: the client certificate the TLS handshake
/// verified, stamped on every request.
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    certificate: Option<access::ClientCertificate>,
    router: axum::Router,
    served_index: Option<u64>,
    kind: access::Listener,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One wrapper around the whole router (not a layer on each of its routes, which
    // would rebuild every route's service stack per connection).
    let activity = conn::Activity::new();
    let service = tower::Layer::layer(
        &axum::Extension(access::ClientAddr(peer.ip())),
        tower::Layer::layer(
            &axum::Extension(served_index.map(access::ServedIndex)),
            tower::Layer::layer(
                &axum::Extension(kind),
                tower::Layer::layer(
                    &axum::Extension(certificate),
                    router.into_service::<hyper::body::Incoming>(),
                ),
            ),
        ),
    );
    let service = TowerToHyperService::new(conn::Tracked::new(service, activity.clone()));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(conn::CLIENT_HEADER_READ_TIMEOUT_MS));
    builder
        .http2()
        .max_concurrent_streams(conn::MAX_CONCURRENT_STREAMS_PER_CONNECTION);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = activity.idle() => {
            // Let whatever is in flight finish, then close regardless.
            connection.as_mut().graceful_shutdown();
            let grace = Duration::from_millis(conn::CLIENT_CLOSE_GRACE_MS);
            match tokio::time::timeout(grace, connection.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, "client connection ended: {e}");
    }
}

/// `GET /health`: no credential; 200 `{"status":"serving"}` once the node holds the
/// bootstrapped control plane and a valid lease (it can check credentials), 503 with
/// `{"status":"starting"}` before that and `{"status":"out_of_contact"}` when a lease ran out.
async fn health(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let bootstrapped = state.control.read(|s| !s.organizations.is_empty());
    let status = match (bootstrapped, state.control.lease().is_valid()) {
        (true, true) => return (StatusCode::OK, Json(json!({"status": "serving"}))),
        (true, false) if state.control.lease().was_ever_valid() => "out_of_contact",
        _ => "starting",
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": status})),
    )
}

/// Query of `GET /admin/cluster`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClusterQuery {
    /// Add each namespace's record digest (costs a pass over its records).
    #[serde(default)]
    digest: bool,
}

/// `GET /admin/cluster`: members, their addresses and roles, the leader, and the shard
/// replicas on this node with their indexes (operator only).
async fn cluster(
    State(state): State<ApiState>,
    caller: Caller,
    axum::extract::Query(query): axum::extract::Query<ClusterQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    let metrics = state.control.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members: Vec<Value> = membership
        .nodes()
        .map(|(id, node)| {
            json!({
                "id": id,
                "api_addr": node.api_addr,
                "cluster_addr": node.cluster_addr,
                "role": if voters.contains(id) { "voter" } else { "learner" },
                "leader": metrics.current_leader == Some(*id),
            })
        })
        .collect();
    let shards: Vec<Value> = state
        .router
        .shards()
        .hosted()
        .iter()
        .map(|shard| {
            let m = shard.raft.metrics().borrow().clone();
            let machine = shard.state.read();
            let namespaces: Vec<Value> = machine
                .engine_kinds()
                .into_iter()
                .map(|(name, kind, tombstones)| {
                    let ns = machine.namespace(&name);
                    let mut entry = json!({
                        "name": name,
                        "engine": format!("{kind:?}").to_lowercase(),
                        "tombstones": tombstones,
                        "index_saved": ns.map(|ns| ns.index_saved()),
                    });
                    if query.digest {
                        entry["records"] = json!(ns.map(|ns| ns.len()));
                        entry["digest"] = json!(ns.map(|ns| ns.digest()));
                    }
                    entry
                })
                .collect();
            let applied = machine.applied_index();
            drop(machine);
            json!({
                "group_id": shard.group,
                "leader_id": m.current_leader,
                "last_applied_index": m.last_applied.map(|l| l.index),
                "snapshot_index": m.snapshot.map(|l| l.index),
                "purged_index": m.purged.map(|l| l.index),
                "state_applied_index": applied,
                "namespaces": namespaces,
            })
        })
        .collect();
    Ok(Json(json!({
        "node_id": state.control.node_id(),
        "shards": shards,
        "leader_id": metrics.current_leader,
        "term": metrics.current_term,
        "millis_since_quorum_ack": metrics.millis_since_quorum_ack,
        "last_applied_index": metrics.last_applied.map(|l| l.index),
        "snapshot_index": metrics.snapshot.map(|l| l.index),
        "purged_index": metrics.purged.map(|l| l.index),
        "members": members,
        "audit_events_dropped": state.audit.dropped_total(),
        "audit_refusals_summarized": state.audit.summarized_total(),
        "audit_chains_over_budget": state.control.read(|s| {
            s.audit
                .chains_over_budget()
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        }),
        "client_connections": {
            "open": state.connections.open(),
            "refused": state.connections.refused(),
        },
        "sign_ins_refused_unchecked": state.signin.throttle.refused(),
        "sign_ins_refused_per_principal_rate": state.signin.per_principal.refused(),
        "max_records_per_project": state.router.max_records_per_project(),
        "unknown_credential_catch_ups_refused": state.catch_ups.refused(),
        "read_index_rounds": state.control.barrier_rounds(),
        "certificates": certificates_json(&state),
        "certificate_reload": state.certificates.status(),
    })))
}

/// This node's certificates for `/admin/cluster`: each with `days_left` and, within the
/// warning window (`serve --cert-expiry-warning-days`) or past expiry, a `warning`.
fn certificates_json(state: &ApiState) -> Vec<Value> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    state
        .certificates
        .current()
        .certificates
        .iter()
        .map(|cert| {
            let mut entry = serde_json::to_value(cert).unwrap_or(Value::Null);
            entry["days_left"] = json!(cert.days_left(now));
            entry["warning"] = json!(cert.warning(now, state.cert_expiry_warning_days));
            entry
        })
        .collect()
}

/// `POST /admin/cluster/snapshot`: asks every Raft group on this node to take a snapshot
/// now (operator only), e.g. before a planned restart so it loads instead of replaying.
async fn snapshot(State(state): State<ApiState>, caller: Caller) -> Result<StatusCode, ApiError> {
    caller.authorize(Target::Cluster)?;
    let mut groups = vec![state.control.raft().clone()];
    groups.extend(state.router.shards().hosted().into_iter().map(|s| s.raft));
    for raft in groups {
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// Parses `HOST:PORT` — an IP, or a host name resolved now to its first address — naming
/// the flag in the error.
pub fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .map_err(|e| format!("--{flag} {value:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--{flag} {value:?}: the name resolves to no address"))
}
