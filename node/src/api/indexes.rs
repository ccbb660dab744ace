//! Pinecone's index control plane over REST: `POST/GET /indexes`,
//! `GET/PATCH/DELETE /indexes/{name}`, with a project API key (or a bearer token and
//! `X-Project-Id`). Index
//! metadata lives in the control plane; the shard group is started by the reconciler on
//! the chosen replicas, and the index turns `Ready` when that group has a leader.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::{Caller, PROJECT_HEADER};
use super::{ApiError, ApiState};
use crate::control::state::{Command, Index, IndexState, Metric, Output};
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

/// The project the call addresses, once the caller is authorized there.
async fn project(
    state: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let header = headers.get(PROJECT_HEADER).and_then(|v| v.to_str().ok());
    caller.authorize_data_project(state, header).await
}

/// First API version with the schema-based index model (SDK 10.x).
pub const SCHEMA_API_VERSION: &str = "2026-07";
/// Name of the dense vector field of a legacy-shaped index in the 2026-07 schema.
pub const DENSE_FIELD: &str = "_values";

/// Whether the request asks for the 2026-07 (schema and deployment) index shapes.
fn schema_api(headers: &HeaderMap) -> bool {
    headers
        .get("x-pinecone-api-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v >= SCHEMA_API_VERSION)
}

/// The index in the shape the caller's API version expects.
fn render(state: &ApiState, index: &Index, schema_shape: bool) -> Value {
    if schema_shape {
        index_json_2026(state, index)
    } else {
        index_json(state, index)
    }
}

/// The 2026-07 shape: `schema.fields` and `deployment` instead of dimension, metric, spec.
fn index_json_2026(state: &ApiState, index: &Index) -> Value {
    let spec: Value = serde_json::from_str(&index.spec_json).unwrap_or(Value::Null);
    let (deployment, read_capacity) = if let Some(s) = spec.get("serverless") {
        let read_capacity = s
            .get("read_capacity")
            .cloned()
            .unwrap_or_else(|| json!({"mode": "OnDemand", "status": {"state": "Ready"}}));
        (
            json!({"deployment_type": "managed", "cloud": s["cloud"], "region": s["region"]}),
            read_capacity,
        )
    } else if let Some(p) = spec.get("pod") {
        let mut d = p.as_object().cloned().unwrap_or_default();
        d.insert("deployment_type".into(), json!("pod"));
        d.entry("replicas").or_insert(json!(1));
        d.entry("shards").or_insert(json!(1));
        d.entry("pod_type").or_insert(json!("p1.x1"));
        (Value::Object(d), Value::Null)
    } else {
        let mut d = spec
            .get("byoc")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        d.insert("deployment_type".into(), json!("byoc"));
        (Value::Object(d), Value::Null)
    };
    let tags: Value = serde_json::from_str(&index.tags_json).unwrap_or(Value::Null);
    let ready = index.state == IndexState::Ready;
    json!({
        "name": index.name,
        "host": state.router.host_of(index),
        "status": { "ready": ready, "state": if ready { "Ready" } else { "Initializing" } },
        "schema": { "fields": { DENSE_FIELD: {
            "type": "dense_vector", "dimension": index.dimension, "metric": index.metric.as_str(),
        } } },
        "deployment": deployment,
        "read_capacity": read_capacity,
        "deletion_protection": if index.deletion_protection { "enabled" } else { "disabled" },
        "tags": tags,
    })
}

/// Translates a 2026-07 create request into the legacy one both versions validate.
fn create_from_2026(body: &Value) -> Result<CreateIndex, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("request body must be a JSON object"))?;
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "name"
                | "schema"
                | "deployment"
                | "read_capacity"
                | "deletion_protection"
                | "tags"
                | "cmek_id"
        ) {
            return Err(ApiError::invalid(format!("unknown field '{key}'")));
        }
    }
    if obj.get("cmek_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid("'cmek_id' is not supported yet"));
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("'name' is required"))?;
    let fields = obj
        .get("schema")
        .and_then(|s| s.get("fields"))
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("'schema.fields' is required"))?;
    if fields.len() != 1 {
        return Err(ApiError::invalid(format!(
            "'schema.fields' has {} fields; exactly one dense_vector field is supported",
            fields.len()
        )));
    }
    let (field_name, field) = fields
        .iter()
        .next()
        .ok_or_else(|| ApiError::invalid("'schema.fields' is empty"))?;
    if field.get("type").and_then(Value::as_str) != Some("dense_vector") {
        return Err(ApiError::invalid(format!(
            "schema field '{field_name}' must have type 'dense_vector'; other field types are not supported"
        )));
    }
    let dimension = field
        .get("dimension")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "schema field '{field_name}' needs an integer 'dimension'"
            ))
        })?;
    let deployment = obj
        .get("deployment")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("'deployment' is required"))?;
    let mut rest = deployment.clone();
    let kind = rest
        .remove("deployment_type")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let spec_kind = match kind.as_str() {
        "managed" => "serverless",
        "pod" => "pod",
        "byoc" => "byoc",
        other => {
            return Err(ApiError::invalid(format!(
                "'deployment.deployment_type' is '{other}'; it must be managed, pod or byoc"
            )))
        }
    };
    if let Some(rc) = obj.get("read_capacity").filter(|v| !v.is_null()) {
        if spec_kind == "serverless" {
            rest.insert("read_capacity".into(), rc.clone());
        }
    }
    let mut spec = Map::new();
    spec.insert(spec_kind.into(), Value::Object(rest));
    Ok(CreateIndex {
        name: name.to_string(),
        dimension: Some(u32::try_from(dimension).unwrap_or(u32::MAX)),
        metric: field
            .get("metric")
            .and_then(Value::as_str)
            .map(String::from),
        spec,
        deletion_protection: obj
            .get("deletion_protection")
            .and_then(Value::as_str)
            .map(String::from),
        tags: obj.get("tags").and_then(Value::as_object).cloned(),
        vector_type: None,
    })
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
    let mut load: BTreeMap<u64, usize> = state
        .control
        .membership()
        .nodes()
        .map(|(id, _)| (*id, 0))
        .collect();
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

/// `POST /indexes`.
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let schema_shape = schema_api(&headers);
    let req: CreateIndex = if schema_shape {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
        create_from_2026(&value)?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?
    };
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
        project_id: project_id.clone(),
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
        created_at: crate::now_rfc3339(),
    };
    match caller.propose(Command::CreateIndex(index)).await? {
        Output::Index(index) => Ok((
            StatusCode::CREATED,
            Json(render(&state, &index, schema_shape)),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /indexes`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let indexes: Vec<Value> = state
        .control
        .read(|s| {
            s.indexes_of(&project_id)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .iter()
        .map(|i| render(&state, i, schema_api(&headers)))
        .collect();
    Ok(Json(json!({ "indexes": indexes })))
}

fn find(state: &ApiState, project_id: &str, name: &str) -> Result<Index, ApiError> {
    state
        .control
        .read(|s| {
            s.indexes
                .get(&(project_id.to_string(), name.to_string()))
                .cloned()
        })
        .ok_or_else(|| ApiError::not_found(format!("index '{name}' not found")))
}

/// `GET /indexes/{name}`.
pub async fn describe(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    Ok(Json(render(
        &state,
        &find(&state, &project_id, &name)?,
        schema_api(&headers),
    )))
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
    #[serde(default)]
    deployment: Option<Value>,
    #[serde(default)]
    read_capacity: Option<Value>,
}

/// `PATCH /indexes/{name}`: deletion protection and tags (a tag set to `""` is removed).
pub async fn configure(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let req: ConfigureIndex = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed request body: {e}")))?;
    if req.spec.is_some()
        || req.embed.is_some()
        || req.deployment.is_some()
        || req.read_capacity.is_some()
    {
        return Err(ApiError::invalid(
            "changing 'spec', 'deployment', 'read_capacity' or 'embed' of an existing index is not supported",
        ));
    }
    let current = find(&state, &project_id, &name)?;
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
        project_id: project_id.clone(),
        name,
        deletion_protection,
        tags_json,
    };
    match caller.propose(command).await? {
        Output::Index(index) => Ok(Json(render(&state, &index, schema_api(&headers)))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /indexes/{name}`: refused with 403 while deletion protection is enabled.
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let command = Command::DeleteIndex {
        project_id: project_id.clone(),
        name,
    };
    match caller.propose(command).await {
        Ok(_) => Ok(StatusCode::ACCEPTED),
        Err(ControlError::Rejected(Rejection::Invalid(m))) => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "FORBIDDEN",
            message: m,
        }),
        Err(e) => Err(e.into()),
    }
}
