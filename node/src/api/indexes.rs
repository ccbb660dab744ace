//! Pinecone's index control plane over REST: `POST/GET /indexes`,
//! `GET/PATCH/DELETE /indexes/{name}`, authenticated with a project API key. Index
//! metadata lives in the control plane; the shard group is started by the reconciler on
//! the chosen replicas, and the index turns `Ready` when that group has a leader.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ApiError, ApiState};
use crate::auth::Access;
use crate::control::state::{ApiKey, Command, Index, IndexState, Metric, Output};
use crate::control::{ControlError, Rejection};

/// Longest index name.
pub const MAX_INDEX_NAME_CHARS: usize = 45;
/// Largest dimension of a dense index.
pub const MAX_DIMENSION: u32 = 20_000;
/// Most tags on an index.
pub const MAX_TAGS: usize = 20;
/// Longest tag key.
pub const MAX_TAG_KEY_CHARS: usize = 80;
/// Longest tag value.
pub const MAX_TAG_VALUE_CHARS: usize = 120;
/// Replicas of each shard (fewer when the cluster has fewer nodes).
pub const SHARD_REPLICAS: usize = 3;

fn key(state: &ApiState, headers: &HeaderMap, access: Access) -> Result<ApiKey, ApiError> {
    state
        .router
        .authenticate(headers.get("api-key").and_then(|v| v.to_str().ok()), access)
}

fn index_json(state: &ApiState, index: &Index) -> Value {
    let mut spec: Value = serde_json::from_str(&index.spec_json).unwrap_or(Value::Null);
    // Serverless responses carry read capacity (on demand: there is nothing to provision).
    if let Some(serverless) = spec.get_mut("serverless").and_then(Value::as_object_mut) {
        serverless
            .entry("read_capacity")
            .or_insert_with(|| json!({"mode": "OnDemand", "status": {"state": "Ready"}}));
    }
    let tags: Value = serde_json::from_str(&index.tags_json).unwrap_or(Value::Null);
    let ready = index.state == IndexState::Ready;
    json!({
        "name": index.name,
        "dimension": index.dimension,
        "metric": index.metric.as_str(),
        "host": state.router.host_of(index),
        "vector_type": index.vector_type,
        "deletion_protection": if index.deletion_protection { "enabled" } else { "disabled" },
        "tags": tags,
        "spec": spec,
        "status": { "ready": ready, "state": if ready { "Ready" } else { "Initializing" } },
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let edges_ok = !name.starts_with('-') && !name.ends_with('-');
    if name.is_empty() || name.chars().count() > MAX_INDEX_NAME_CHARS || !valid_chars || !edges_ok {
        return Err(ApiError::invalid(format!(
            "index name '{name}' is invalid: 1 to {MAX_INDEX_NAME_CHARS} characters of a-z, 0-9 and '-', \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn check_tags(tags: &Map<String, Value>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "'tags' has {} entries; the limit is {MAX_TAGS}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_CHARS {
            return Err(ApiError::invalid(format!(
                "tag key '{k}' must be 1 to {MAX_TAG_KEY_CHARS} characters"
            )));
        }
        let Some(v) = v.as_str() else {
            return Err(ApiError::invalid(format!(
                "tag '{k}' must have a string value"
            )));
        };
        if v.chars().count() > MAX_TAG_VALUE_CHARS {
            return Err(ApiError::invalid(format!(
                "tag '{k}' value exceeds {MAX_TAG_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(())
}

fn parse_protection(value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid(format!(
            "'deletion_protection' is '{other}'; it must be 'enabled' or 'disabled'"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIndex {
    name: String,
    #[serde(default)]
    dimension: Option<u32>,
    #[serde(default)]
    metric: Option<String>,
    spec: Map<String, Value>,
    #[serde(default)]
    deletion_protection: Option<String>,
    #[serde(default)]
    tags: Option<Map<String, Value>>,
    #[serde(default)]
    vector_type: Option<String>,
}

/// Chooses up to [`SHARD_REPLICAS`] nodes, least loaded first (then lowest id).
fn place(state: &ApiState) -> Vec<u64> {
    let members: Vec<u64> = {
        let metrics = state.control.raft().metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    };
    let mut load: BTreeMap<u64, usize> = members.iter().map(|id| (*id, 0)).collect();
    state.control.read(|s| {
        for index in s.indexes.values() {
            for r in &index.replicas {
                if let Some(n) = load.get_mut(r) {
                    *n += 1;
                }
            }
        }
    });
    let mut nodes: Vec<(usize, u64)> = load.into_iter().map(|(id, n)| (n, id)).collect();
    nodes.sort();
    let mut chosen: Vec<u64> = nodes
        .into_iter()
        .take(SHARD_REPLICAS)
        .map(|(_, id)| id)
        .collect();
    chosen.sort();
    chosen
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `POST /indexes`.
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = key(&state, &headers, Access::ControlWrite)?;
    let req: CreateIndex = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
    check_name(&req.name)?;
    let vector_type = req.vector_type.unwrap_or_else(|| "dense".into());
    if vector_type != "dense" {
        return Err(ApiError::invalid(format!(
            "'vector_type' is '{vector_type}'; only 'dense' is supported"
        )));
    }
    let dimension = req
        .dimension
        .ok_or_else(|| ApiError::invalid("'dimension' is required for a dense index"))?;
    if dimension == 0 || dimension > MAX_DIMENSION {
        return Err(ApiError::invalid(format!(
            "'dimension' is {dimension}; it must be between 1 and {MAX_DIMENSION}"
        )));
    }
    let metric_name = req.metric.unwrap_or_else(|| "cosine".into());
    let metric = Metric::parse(&metric_name).ok_or_else(|| {
        ApiError::invalid(format!(
            "'metric' is '{metric_name}'; it must be cosine, euclidean or dotproduct"
        ))
    })?;
    let kinds: Vec<&String> = req.spec.keys().collect();
    if kinds.len() != 1 || !matches!(kinds[0].as_str(), "serverless" | "pod" | "byoc") {
        return Err(ApiError::invalid(
            "'spec' must have exactly one of 'serverless', 'pod' or 'byoc'",
        ));
    }
    let kind = kinds[0].clone();
    let required: &[&str] = match kind.as_str() {
        "serverless" => &["cloud", "region"],
        _ => &["environment"],
    };
    for field in required {
        if !req.spec[&kind].get(*field).is_some_and(Value::is_string) {
            return Err(ApiError::invalid(format!(
                "'spec.{kind}.{field}' is required and must be a string"
            )));
        }
    }
    if let Some(tags) = &req.tags {
        check_tags(tags)?;
    }
    let deletion_protection =
        parse_protection(req.deletion_protection.as_deref())?.unwrap_or(false);
    let replicas = place(&state);
    if replicas.is_empty() {
        return Err(ApiError::unavailable(
            "the cluster has no members to place the index on",
        ));
    }
    let index = Index {
        name: req.name,
        project_id: key.project_id.clone(),
        dimension,
        metric,
        vector_type,
        spec_json: Value::Object(req.spec).to_string(),
        tags_json: req
            .tags
            .map(Value::Object)
            .unwrap_or(Value::Null)
            .to_string(),
        deletion_protection,
        group_id: 0,
        replicas,
        state: IndexState::Initializing,
        created_at: now_rfc3339(),
    };
    match state.control.propose(Command::CreateIndex(index)).await? {
        Output::Index(index) => Ok((StatusCode::CREATED, Json(index_json(&state, &index)))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /indexes`.
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = key(&state, &headers, Access::ControlRead)?;
    let indexes: Vec<Value> = state
        .control
        .read(|s| {
            s.indexes_of(&key.project_id)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .iter()
        .map(|i| index_json(&state, i))
        .collect();
    Ok(Json(json!({ "indexes": indexes })))
}

fn find(state: &ApiState, key: &ApiKey, name: &str) -> Result<Index, ApiError> {
    state
        .control
        .read(|s| {
            s.indexes
                .get(&(key.project_id.clone(), name.to_string()))
                .cloned()
        })
        .ok_or_else(|| ApiError::not_found(format!("index '{name}' not found")))
}

/// `GET /indexes/{name}`.
pub async fn describe(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = key(&state, &headers, Access::ControlRead)?;
    Ok(Json(index_json(&state, &find(&state, &key, &name)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureIndex {
    #[serde(default)]
    deletion_protection: Option<String>,
    #[serde(default)]
    tags: Option<Map<String, Value>>,
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    embed: Option<Value>,
}

/// `PATCH /indexes/{name}`: deletion protection and tags (a tag set to `""` is removed).
pub async fn configure(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = key(&state, &headers, Access::ControlWrite)?;
    let req: ConfigureIndex = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
    if req.spec.is_some() || req.embed.is_some() {
        return Err(ApiError::invalid(
            "changing 'spec' or 'embed' of an existing index is not supported",
        ));
    }
    let current = find(&state, &key, &name)?;
    let tags_json = match req.tags {
        None => None,
        Some(changes) => {
            check_tags(&changes)?;
            let mut tags: Map<String, Value> =
                serde_json::from_str(&current.tags_json).unwrap_or_default();
            for (k, v) in changes {
                if v.as_str() == Some("") {
                    tags.remove(&k);
                } else {
                    tags.insert(k, v);
                }
            }
            check_tags(&tags)?;
            Some(
                if tags.is_empty() {
                    Value::Null
                } else {
                    Value::Object(tags)
                }
                .to_string(),
            )
        }
    };
    let deletion_protection = parse_protection(req.deletion_protection.as_deref())?;
    let command = Command::ConfigureIndex {
        project_id: key.project_id.clone(),
        name,
        deletion_protection,
        tags_json,
    };
    match state.control.propose(command).await? {
        Output::Index(index) => Ok(Json(index_json(&state, &index))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /indexes/{name}`: refused with 403 while deletion protection is enabled.
pub async fn delete(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key = key(&state, &headers, Access::ControlWrite)?;
    let command = Command::DeleteIndex {
        project_id: key.project_id.clone(),
        name,
    };
    match state.control.propose(command).await {
        Ok(_) => Ok(StatusCode::ACCEPTED),
        Err(ControlError::Rejected(Rejection::Invalid(m))) => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "FORBIDDEN",
            message: m,
        }),
        Err(e) => Err(e.into()),
    }
}
