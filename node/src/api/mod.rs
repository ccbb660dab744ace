//! The front door: one TLS port per node serving REST (axum) and, from the data-plane
//! issue on, gRPC (tonic) on the same listener (ALPN h2 / http/1.1).
//!
//! This layer only authenticates, authorizes, validates and routes; the control plane
//! holds the logic. Every route except `/health` requires a credential.

pub mod admin;
pub mod convert;
pub mod data;
pub mod error;
pub mod grpc;
pub mod indexes;
pub mod vectors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::Json;
use conifer_proto::pinecone::vector_service_server::VectorServiceServer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth;
use crate::control::ControlPlane;
use crate::router::Router;
pub use error::ApiError;
use grpc::GrpcDataPlane;

/// Largest admin request body.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;
/// Largest data-plane or index request body (JSON of a 2 MB upsert, with room for encoding).
pub const MAX_DATA_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most client connections served at once per node; further connections wait in the backlog.
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;
/// Time allowed for a client's TLS handshake.
pub const CLIENT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The control plane.
    pub control: ControlPlane,
    /// Data-plane routing.
    pub router: Router,
}

/// Every route of the client port: admin and index REST, data-plane REST, and the
/// data-plane gRPC service.
pub fn routes(state: ApiState) -> axum::Router {
    let grpc_service = VectorServiceServer::new(GrpcDataPlane::new(state.router.clone()))
        .max_decoding_message_size(MAX_DATA_BODY_BYTES);
    let grpc = axum::Router::new()
        .route_service("/VectorService/{*method}", grpc_service)
        .layer(axum::middleware::map_request(copy_authority));
    let data = axum::Router::new()
        .route("/indexes", post(indexes::create).get(indexes::list))
        .route(
            "/indexes/{name}",
            get(indexes::describe)
                .patch(indexes::configure)
                .delete(indexes::delete),
        )
        .route("/vectors/upsert", post(data::upsert))
        .route("/query", post(data::query))
        .route("/vectors/fetch", get(data::fetch))
        .route("/vectors/list", get(data::list))
        .route("/vectors/fetch_by_metadata", post(data::fetch_by_metadata))
        .route("/vectors/delete", post(data::delete).delete(data::delete))
        .route("/vectors/update", post(data::update))
        .route(
            "/describe_index_stats",
            post(data::describe_index_stats).get(data::describe_index_stats),
        )
        .route(
            "/namespaces",
            get(data::list_namespaces).post(data::create_namespace),
        )
        .route(
            "/namespaces/{namespace}",
            get(data::describe_namespace).delete(data::delete_namespace),
        )
        .layer(DefaultBodyLimit::max(MAX_DATA_BODY_BYTES))
        .layer(axum::middleware::map_request(copy_authority))
        .with_state(state.clone());
    admin_routes(state)
        .merge(data)
        .merge(grpc)
        .fallback(|| async { ApiError::not_found("no such route") })
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

fn admin_routes(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/admin/cluster", get(cluster))
        .route(
            "/admin/cluster/members/{id}/promote",
            post(admin::promote_member),
        )
        .route("/admin/cluster/members/{id}", delete(admin::remove_member))
        .route("/admin/cluster/snapshot", post(snapshot))
        .route(
            "/admin/projects",
            post(admin::create_project).get(admin::list_projects),
        )
        .route(
            "/admin/projects/{id}",
            get(admin::get_project).delete(admin::delete_project),
        )
        .route(
            "/admin/projects/{id}/api-keys",
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route(
            "/admin/api-keys/{id}",
            get(admin::get_api_key).delete(admin::delete_api_key),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES))
        .with_state(state)
}

/// Serves `router` with TLS on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: axum::Router) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(MAX_CLIENT_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accept on client port failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(
                Duration::from_millis(CLIENT_TLS_HANDSHAKE_TIMEOUT_MS),
                acceptor.accept(tcp),
            );
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "client TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router.into_service::<hyper::body::Incoming>());
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, "client connection ended: {e}");
            }
        });
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

/// The caller proved to be the operator.
pub struct Operator;

/// Checks `Authorization: Bearer <operator token>`.
pub async fn require_operator(state: &ApiState, headers: &HeaderMap) -> Result<Operator, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthenticated("missing Authorization header (expected 'Bearer <token>')")
        })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("Authorization header is not ASCII"))?;
    let token = value.strip_prefix("Bearer ").ok_or_else(|| {
        ApiError::unauthenticated("Authorization header must be 'Bearer <token>'")
    })?;
    if token.len() > auth::MAX_CREDENTIAL_BYTES {
        return Err(ApiError::unauthenticated(format!(
            "bearer token exceeds {} bytes",
            auth::MAX_CREDENTIAL_BYTES
        )));
    }
    if state
        .control
        .read_authenticated(|s| auth::verify_operator_token(s, token).is_some())
        .await?
    {
        Ok(Operator)
    } else {
        Err(ApiError::unauthenticated("invalid or revoked token"))
    }
}

/// Query of `GET /admin/cluster`.
#[derive(serde::Deserialize, Default)]
struct ClusterQuery {
    /// Add each namespace's record digest (costs a pass over its records).
    #[serde(default)]
    digest: bool,
}

/// `GET /admin/cluster`: members, their addresses and roles, the leader, and the shard
/// replicas on this node with their indexes (operator only).
async fn cluster(
    State(state): State<ApiState>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<ClusterQuery>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&state, &headers).await?;
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
        "last_applied_index": metrics.last_applied.map(|l| l.index),
        "snapshot_index": metrics.snapshot.map(|l| l.index),
        "purged_index": metrics.purged.map(|l| l.index),
        "members": members,
    })))
}

/// `POST /admin/cluster/snapshot`: asks every Raft group on this node to take a snapshot
/// now (operator only), e.g. before a planned restart so it loads instead of replaying.
async fn snapshot(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &headers).await?;
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

/// Parses a `SocketAddr`, naming the flag in the error.
pub fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|e| format!("--{flag} {value:?}: {e}"))
}
