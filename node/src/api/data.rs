//! The data plane over REST with Pinecone's camelCase JSON. Each handler converts its JSON
//! into the protobuf request, runs the shared operation ([`dataplane::run`]), and converts
//! the response back, adding the sequence-number headers.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use conifer_proto::pinecone as pb;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::{Caller, PROJECT_HEADER};
use super::{ApiError, ApiState};
use crate::dataplane::convert::{json_to_struct, struct_to_json};
use crate::dataplane::{self, Lsn, Resolved};
use crate::timing;

/// Request header asking a read to wait until this sequence number is applied locally.
pub const MIN_LSN_HEADER: &str = "x-conifer-min-lsn";
/// Request header choosing a read's consistency: `eventual` (the default: the replica's
/// latest applied state) or `linearizable` (the replica first applies the shard's read index,
/// confirmed by the shard leader, so the read sees every write acknowledged before it).
pub const CONSISTENCY_HEADER: &str = "x-conifer-read-consistency";
/// Request header naming the index explicitly (instead of the host name).
pub const INDEX_HEADER: &str = "x-conifer-index";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates, authorizes and resolves the index of a REST data-plane call, and honours
/// [`MIN_LSN_HEADER`].
async fn target(
    state: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Resolved, ApiError> {
    let project_id = caller
        .authorize_data_project(state, header(headers, PROJECT_HEADER))
        .await?;
    let host = header(headers, super::grpc::AUTHORITY_METADATA);
    let mut target = state.router.resolve(
        &project_id,
        caller.served_index,
        header(headers, INDEX_HEADER),
        host,
    )?;
    read_headers(&state.router, &mut target, |name| header(headers, name)).await?;
    Ok(target)
}

/// Honours the read headers of a data-plane call (REST header or gRPC metadata, looked up
/// through `get`): [`MIN_LSN_HEADER`] and [`CONSISTENCY_HEADER`].
pub async fn read_headers<'a>(
    router: &dataplane::Router,
    target: &mut Resolved,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), ApiError> {
    if let Some(min) = get(MIN_LSN_HEADER) {
        let lsn: u64 = min
            .parse()
            .map_err(|_| ApiError::invalid(format!("{MIN_LSN_HEADER} must be a number")))?;
        router.wait_for(target, lsn).await?;
    }
    match get(CONSISTENCY_HEADER) {
        None | Some("eventual") => Ok(()),
        Some("linearizable") => Ok(router.linearizable(target).await?),
        Some(other) => Err(ApiError::invalid(format!(
            "{CONSISTENCY_HEADER} is {other:?}; expected \"eventual\" or \"linearizable\""
        ))),
    }
}

fn with_lsn(body: Value, lsn: Lsn) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    if let Some(n) = lsn.request {
        headers.insert("x-pinecone-request-lsn", HeaderValue::from(n));
    }
    if let Some(n) = lsn.max_indexed {
        headers.insert("x-pinecone-max-indexed-lsn", HeaderValue::from(n));
    }
    response
}

fn parse_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    super::body::json(headers, body, super::body::Plane::Data)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SparseJson {
    indices: Vec<u32>,
    values: Vec<f32>,
}

impl From<SparseJson> for pb::SparseValues {
    fn from(s: SparseJson) -> Self {
        Self {
            indices: s.indices,
            values: s.values,
        }
    }
}

fn sparse_json(s: &Option<pb::SparseValues>) -> Option<Value> {
    s.as_ref()
        .map(|s| json!({"indices": s.indices, "values": s.values}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VectorJson {
    id: String,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    values: Vec<f32>,
    #[serde(default)]
    sparse_values: Option<SparseJson>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn vector_json(v: &pb::Vector) -> Value {
    let mut out = json!({"id": v.id, "values": v.values});
    if let Some(s) = sparse_json(&v.sparse_values) {
        out["sparseValues"] = s;
    }
    if let Some(m) = &v.metadata {
        out["metadata"] = Value::Object(struct_to_json(m));
    }
    out
}

fn usage_json(u: &Option<pb::Usage>) -> Value {
    json!({"readUnits": u.as_ref().and_then(|u| u.read_units).unwrap_or(0)})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpsertJson {
    vectors: Vec<VectorJson>,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    namespace: String,
}

/// `POST /vectors/upsert`.
pub async fn upsert(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: UpsertJson = parse_body(&headers, &body)?;
    let req = pb::UpsertRequest {
        vectors: req
            .vectors
            .into_iter()
            .map(|v| pb::Vector {
                id: v.id,
                values: v.values,
                sparse_values: v.sparse_values.map(Into::into),
                metadata: v.metadata.as_ref().map(json_to_struct),
            })
            .collect(),
        namespace: req.namespace,
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    Ok(with_lsn(json!({"upsertedCount": resp.upserted_count}), lsn))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueryJson {
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    namespace: String,
    top_k: u32,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    include_values: bool,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    include_metadata: bool,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    vector: Vec<f32>,
    #[serde(default)]
    sparse_vector: Option<SparseJson>,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    id: String,
    /// Refused with an explanation by the shared operation (not honoured).
    #[serde(default)]
    scan_factor: Option<f32>,
    /// Refused with an explanation by the shared operation (not honoured).
    #[serde(default)]
    max_candidates: Option<u32>,
}

/// `POST /query`.
#[allow(deprecated)] // `queries` is part of the wire format; it is left empty.
pub async fn query(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let target = target(&state, &caller, &headers).await?;
    let routed = started.elapsed();
    let req: QueryJson = parse_body(&headers, &body)?;
    let req = pb::QueryRequest {
        namespace: req.namespace,
        top_k: req.top_k,
        filter: req.filter.as_ref().map(json_to_struct),
        include_values: req.include_values,
        include_metadata: req.include_metadata,
        queries: Vec::new(),
        vector: req.vector,
        id: req.id,
        sparse_vector: req.sparse_vector.map(Into::into),
        scan_factor: req.scan_factor,
        max_candidates: req.max_candidates,
    };
    let arrived = caller.request.arrived;
    let (answer, mut spans) = timing::collect(async {
        timing::record("receive", started.saturating_duration_since(arrived));
        timing::record("route", routed);
        dataplane::run(&state.router, &target, req).await
    })
    .await;
    let (resp, lsn) = answer?;
    // The JSON body: matches converted, then serialized.
    let encoding = Instant::now();
    let matches: Vec<Value> = resp
        .matches
        .iter()
        .map(|m| {
            let mut out = json!({"id": m.id, "score": m.score, "values": m.values});
            if let Some(s) = sparse_json(&m.sparse_values) {
                out["sparseValues"] = s;
            }
            if let Some(md) = &m.metadata {
                out["metadata"] = Value::Object(struct_to_json(md));
            }
            out
        })
        .collect();
    let mut response = with_lsn(
        json!({"matches": matches, "namespace": resp.namespace, "usage": usage_json(&resp.usage)}),
        lsn,
    );
    spans.push("encode", encoding.elapsed());
    spans.push("total", arrived.elapsed());
    if let Ok(value) = HeaderValue::try_from(spans.header_value()) {
        response.headers_mut().insert("server-timing", value);
    }
    Ok(response)
}

/// Query-string pairs of a GET request, refusing a parameter the route does not take
/// (`allowed`) rather than ignoring it.
fn query_pairs(raw: &Option<String>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = raw
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown query parameter '{name}'; this route takes {}",
            allowed.join(", ")
        )));
    }
    Ok(pairs)
}

/// The value of query parameter `name`, refused when it is given more than once (only
/// `ids` repeats).
fn single(pairs: &[(String, String)], name: &str) -> Result<Option<String>, ApiError> {
    let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = values.next().cloned();
    if values.next().is_some() {
        return Err(ApiError::invalid(format!(
            "query parameter '{name}' is given more than once"
        )));
    }
    Ok(first)
}

fn number(pairs: &[(String, String)], name: &str) -> Result<Option<u32>, ApiError> {
    single(pairs, name)?
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::invalid(format!("{name} must be a non-negative integer, got '{v}'"))
            })
        })
        .transpose()
}

/// `GET /vectors/fetch?ids=…&namespace=…`.
pub async fn fetch(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let pairs = query_pairs(&raw, &["ids", "namespace"])?;
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.clone())
        .collect();
    let req = pb::FetchRequest {
        ids,
        namespace: single(&pairs, "namespace")?.unwrap_or_default(),
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    let vectors: Map<String, Value> = resp
        .vectors
        .iter()
        .map(|(id, v)| (id.clone(), vector_json(v)))
        .collect();
    Ok(with_lsn(
        json!({"vectors": vectors, "namespace": resp.namespace, "usage": usage_json(&resp.usage)}),
        lsn,
    ))
}

/// `GET /vectors/list?prefix=…&limit=…&paginationToken=…&namespace=…`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let pairs = query_pairs(&raw, &["prefix", "limit", "paginationToken", "namespace"])?;
    let req = pb::ListRequest {
        prefix: single(&pairs, "prefix")?,
        limit: number(&pairs, "limit")?,
        pagination_token: single(&pairs, "paginationToken")?,
        namespace: single(&pairs, "namespace")?.unwrap_or_default(),
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    let mut body = json!({
        "vectors": resp.vectors.iter().map(|v| json!({"id": v.id})).collect::<Vec<_>>(),
        "namespace": resp.namespace,
        "usage": usage_json(&resp.usage),
    });
    if let Some(p) = resp.pagination {
        body["pagination"] = json!({"next": p.next});
    }
    Ok(with_lsn(body, lsn))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FetchByMetadataJson {
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    namespace: String,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    pagination_token: Option<String>,
}

/// `POST /vectors/fetch_by_metadata`.
pub async fn fetch_by_metadata(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: FetchByMetadataJson = parse_body(&headers, &body)?;
    let req = pb::FetchByMetadataRequest {
        namespace: req.namespace,
        filter: req.filter.as_ref().map(json_to_struct),
        limit: req.limit,
        pagination_token: req.pagination_token,
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    let vectors: Map<String, Value> = resp
        .vectors
        .iter()
        .map(|(id, v)| (id.clone(), vector_json(v)))
        .collect();
    let mut body =
        json!({"vectors": vectors, "namespace": resp.namespace, "usage": usage_json(&resp.usage)});
    if let Some(p) = resp.pagination {
        body["pagination"] = json!({"next": p.next});
    }
    Ok(with_lsn(body, lsn))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeleteJson {
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    ids: Vec<String>,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    delete_all: bool,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    namespace: String,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
}

/// `POST /vectors/delete` (and `DELETE /vectors/delete`).
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: DeleteJson = if body.is_empty() {
        DeleteJson::default()
    } else {
        parse_body(&headers, &body)?
    };
    let req = pb::DeleteRequest {
        ids: req.ids,
        delete_all: req.delete_all,
        namespace: req.namespace,
        filter: req.filter.as_ref().map(json_to_struct),
    };
    let (_, lsn) = dataplane::run(&state.router, &target, req).await?;
    Ok(with_lsn(json!({}), lsn))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateJson {
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    values: Vec<f32>,
    #[serde(default)]
    sparse_values: Option<SparseJson>,
    #[serde(default)]
    set_metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "crate::api::body::null_as_default")]
    namespace: String,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// `POST /vectors/update`.
pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: UpdateJson = parse_body(&headers, &body)?;
    let req = pb::UpdateRequest {
        id: req.id,
        values: req.values,
        sparse_values: req.sparse_values.map(Into::into),
        set_metadata: req.set_metadata.as_ref().map(json_to_struct),
        namespace: req.namespace,
        filter: req.filter.as_ref().map(json_to_struct),
        dry_run: req.dry_run,
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    let body = match resp.matched_records {
        Some(n) => json!({"matchedRecords": n}),
        None => json!({}),
    };
    Ok(with_lsn(body, lsn))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatsJson {
    #[serde(default)]
    filter: Option<Map<String, Value>>,
}

/// `POST|GET /describe_index_stats`.
pub async fn describe_index_stats(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: StatsJson = if body.is_empty() {
        StatsJson::default()
    } else {
        parse_body(&headers, &body)?
    };
    let (resp, lsn) = dataplane::run(
        &state.router,
        &target,
        pb::DescribeIndexStatsRequest {
            filter: req.filter.as_ref().map(json_to_struct),
        },
    )
    .await?;
    let namespaces: Map<String, Value> = resp
        .namespaces
        .iter()
        .map(|(n, s)| (n.clone(), json!({"vectorCount": s.vector_count})))
        .collect();
    Ok(with_lsn(
        json!({
            "namespaces": namespaces,
            "dimension": resp.dimension,
            "indexFullness": resp.index_fullness,
            "totalVectorCount": resp.total_vector_count,
            "metric": resp.metric,
            "vectorType": resp.vector_type,
        }),
        lsn,
    ))
}

fn namespace_json(n: &pb::NamespaceDescription) -> Value {
    // Pinecone's namespace endpoints use snake_case keys, unlike the rest of the data plane.
    json!({"name": n.name, "record_count": n.record_count})
}

/// `GET /namespaces`.
pub async fn list_namespaces(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let pairs = query_pairs(&raw, &["paginationToken", "limit", "prefix"])?;
    let req = pb::ListNamespacesRequest {
        pagination_token: single(&pairs, "paginationToken")?,
        limit: number(&pairs, "limit")?,
        prefix: single(&pairs, "prefix")?,
    };
    let (resp, lsn) = dataplane::run(&state.router, &target, req).await?;
    let mut body = json!({
        "namespaces": resp.namespaces.iter().map(namespace_json).collect::<Vec<_>>(),
        "total_count": resp.total_count,
    });
    if let Some(p) = resp.pagination {
        body["pagination"] = json!({"next": p.next});
    }
    Ok(with_lsn(body, lsn))
}

/// `GET /namespaces/{namespace}`.
pub async fn describe_namespace(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let (resp, lsn) = dataplane::run(
        &state.router,
        &target,
        pb::DescribeNamespaceRequest { namespace },
    )
    .await?;
    Ok(with_lsn(namespace_json(&resp), lsn))
}

/// `DELETE /namespaces/{namespace}`.
pub async fn delete_namespace(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let (_, lsn) = dataplane::run(
        &state.router,
        &target,
        pb::DeleteNamespaceRequest { namespace },
    )
    .await?;
    Ok(with_lsn(json!({}), lsn))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNamespaceJson {
    name: String,
    /// Refused by the shared operation whatever it holds (Conifer indexes every field).
    #[serde(default)]
    schema: Option<serde::de::IgnoredAny>,
}

/// `POST /namespaces`.
pub async fn create_namespace(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &caller, &headers).await?;
    let req: CreateNamespaceJson = parse_body(&headers, &body)?;
    let (resp, lsn) = dataplane::run(
        &state.router,
        &target,
        pb::CreateNamespaceRequest {
            name: req.name,
            schema: req.schema.map(|_| pb::MetadataSchema::default()),
        },
    )
    .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        with_lsn(namespace_json(&resp), lsn),
    )
        .into_response())
}
