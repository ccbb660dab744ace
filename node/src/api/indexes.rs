//! Pinecone's index control plane over REST: `POST/GET /indexes`,
//! `GET/PATCH/DELETE /indexes/{name}`, with a project API key (or a bearer token and
//! `X-Project-Id`). Index
//! metadata lives in the control plane; the shard group is started by the reconciler on
//! the chosen replicas, and the index turns `Ready` when that group has a leader.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::{Caller, PROJECT_HEADER};
use super::body::{self, Plane};
use super::{ApiError, ApiState};
use crate::control::state::IndexCommand;
use crate::control::state::{Command, Index, IndexState, Metric, Output};
use crate::crypto::KeyStatus;

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
/// Longest text setting of a spec (`cloud`, `region`, `environment`, `pod_type`).
pub const MAX_SPEC_TEXT_CHARS: usize = 128;
/// Replicas of each shard (fewer when the cluster has fewer nodes).
pub const SHARD_REPLICAS: usize = 3;

/// The project the call addresses, once the caller is authorized there.
pub(super) async fn project(
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
pub(super) fn schema_api(headers: &HeaderMap) -> bool {
    headers
        .get("x-pinecone-api-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v >= SCHEMA_API_VERSION)
}

/// The indexes in the shape the caller's API version expects, each with the status the
/// cluster can serve it in ([`status_json`]).
async fn render(state: &ApiState, indexes: &[Index], schema_shape: bool) -> Vec<Value> {
    let up = serving_nodes(state, indexes).await;
    indexes
        .iter()
        .map(|index| {
            let mut out = if schema_shape {
                index_json_2026(state, index)
            } else {
                index_json(state, index)
            };
            out["status"] = status_json(index, &up);
            out["encryption"] = encryption_json(state, index);
            // Pinecone's host on a private endpoint: the index on this node's private
            // listener (`serve --private-api-addr`), when it has one.
            if let Some(private) = state.router.private_host_of(index) {
                out["private_host"] = json!(private);
            }
            out
        })
        .collect()
}

/// How `index` is encrypted at rest, as this node sees it: the key that wraps its current
/// data key (the project's customer-managed KMS key, or the project key under the root),
/// the data key version, and the key state here (`available`; `unavailable` with the
/// reason; `not_loaded` on a node that holds no replica of it).
fn encryption_json(state: &ApiState, index: &Index) -> Value {
    let current = index
        .keys
        .versions
        .iter()
        .find(|v| v.version == index.keys.current);
    let wrapping_key = match current {
        Some(v) if v.wrapped.provider == crate::crypto::kms::KMS_PROVIDER => {
            v.wrapped.key_id.clone()
        }
        _ => format!(
            "project key (wrapped by {})",
            state.keys.wrapping_key(&index.keys)
        ),
    };
    let mut out = json!({
        "algorithm": "AES-256-GCM",
        "key": wrapping_key,
        "customer_managed": current
            .is_some_and(|v| v.wrapped.provider == crate::crypto::kms::KMS_PROVIDER),
        "data_key_version": index.keys.current,
    });
    match state.router.shards().keys().status(index.group_id) {
        KeyStatus::Available { .. } => out["key_state"] = json!("available"),
        KeyStatus::Unavailable { reason, .. } => {
            out["key_state"] = json!("unavailable");
            out["reason"] = json!(reason);
        }
        KeyStatus::NotLoaded => out["key_state"] = json!("not_loaded"),
    }
    if index.keys.versions.len() > 1 {
        out["rotation"] = json!({
            "from_versions": index
                .keys
                .versions
                .iter()
                .filter(|v| v.version != index.keys.current)
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            "to_version": index.keys.current,
            "replicas_resealed": index
                .replicas
                .iter()
                .filter(|r| index.keys.resealed.contains(r))
                .count(),
            "replicas": index.replicas.len(),
        });
    }
    out
}

/// The replica nodes of `indexes` that can serve now: this node, when it is a member, and
/// the other members holding a replica that answer a ping — asked only for the indexes
/// this node holds no replica of, all at once, so a healthy describe costs no round trip.
async fn serving_nodes(state: &ApiState, indexes: &[Index]) -> BTreeSet<u64> {
    let me = state.control.node_id();
    let mut up = BTreeSet::new();
    if state.control.membership().get_node(&me).is_some() {
        up.insert(me);
    }
    // `reachable_of` answers no for a node outside the membership without asking it.
    let ask: Vec<u64> = indexes
        .iter()
        .filter(|i| !i.replicas.iter().any(|r| up.contains(r)))
        .flat_map(|i| i.replicas.iter().copied())
        .collect();
    up.extend(state.control.reachable_of(ask).await);
    up
}

/// One index as [`render`] shows it.
pub(super) async fn render_one(state: &ApiState, index: Index, schema_shape: bool) -> Value {
    render(state, &[index], schema_shape)
        .await
        .pop()
        .unwrap_or(Value::Null)
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
    json!({
        "name": index.name,
        "host": state.router.host_of(index),
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
        .ok_or_else(|| ApiError::unprocessable("request body must be a JSON object"))?;
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
            return Err(ApiError::unprocessable(format!("unknown field '{key}'")));
        }
    }
    if obj.get("cmek_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid("'cmek_id' is not supported yet"));
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::unprocessable("'name' is required and must be a string"))?;
    let fields = obj
        .get("schema")
        .and_then(|s| s.get("fields"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::unprocessable("'schema.fields' is required and must be an object")
        })?;
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
    if field_name != DENSE_FIELD {
        return Err(ApiError::invalid(format!(
            "schema field '{field_name}': Conifer names an index's dense vector field \
             '{DENSE_FIELD}' (it would be shown under that name)"
        )));
    }
    if field.get("type").and_then(Value::as_str) != Some("dense_vector") {
        return Err(ApiError::invalid(format!(
            "schema field '{field_name}' must have type 'dense_vector'; other field types are not supported"
        )));
    }
    let dimension = field
        .get("dimension")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::unprocessable(format!(
                "schema field '{field_name}' needs an integer 'dimension'"
            ))
        })?;
    let deployment = obj
        .get("deployment")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::unprocessable("'deployment' is required and must be an object"))?;
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
        if spec_kind != "serverless" {
            return Err(ApiError::invalid(format!(
                "'read_capacity' applies to managed deployments only, not '{kind}'"
            )));
        }
        rest.insert("read_capacity".into(), rc.clone());
    }
    let mut spec = Map::new();
    spec.insert(spec_kind.into(), Value::Object(rest));
    if let Some(key) = field.as_object().and_then(|f| {
        f.keys()
            .find(|k| !matches!(k.as_str(), "type" | "dimension" | "metric"))
    }) {
        return Err(ApiError::unprocessable(format!(
            "unknown field '{key}' in schema field '{field_name}'"
        )));
    }
    Ok(CreateIndex {
        name: name.to_string(),
        dimension: Some(u32::try_from(dimension).unwrap_or(u32::MAX)),
        metric: typed_field(field, "metric")?,
        spec,
        deletion_protection: typed_field(body, "deletion_protection")?,
        tags: typed_field(body, "tags")?,
        vector_type: None,
    })
}

/// Field `key` of `object` as a `T` (absent or `null`: `None`); 422 naming the field when it
/// is of another type, so no field is dropped for its type.
fn typed_field<T: serde::de::DeserializeOwned>(
    object: &Value,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            ApiError::unprocessable(format!(
                "Failed to deserialize the JSON body into the target type: {key}: {e}"
            ))
        }),
    }
}

/// Checks an index's `spec` (the 2025-10 shape; 2026-07 deployments are translated into
/// it): each kind's known fields with their types, and a refusal of every setting Conifer
/// would store but not honour — dedicated read capacity, more than one pod, shard or replica (Conifer places
/// one shard on up to [`SHARD_REPLICAS`] nodes itself), and metadata indexing limited to some
/// fields (Conifer indexes every field).
fn check_spec(kind: &str, spec: &Value) -> Result<(), ApiError> {
    let fields = spec
        .as_object()
        .ok_or_else(|| ApiError::unprocessable(format!("'spec.{kind}' must be an object")))?;
    let known: &[&str] = match kind {
        "serverless" => &[
            "cloud",
            "region",
            "read_capacity",
            "source_collection",
            "schema",
        ],
        "pod" => &[
            "environment",
            "pod_type",
            "pods",
            "replicas",
            "shards",
            "metadata_config",
            "source_collection",
        ],
        _ => &["environment"],
    };
    if let Some(key) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::unprocessable(format!(
            "unknown field '{key}' in 'spec.{kind}'"
        )));
    }
    let required: &[&str] = match kind {
        "serverless" => &["cloud", "region"],
        _ => &["environment"],
    };
    for field in required {
        if !fields.get(*field).is_some_and(Value::is_string) {
            return Err(ApiError::unprocessable(format!(
                "'spec.{kind}.{field}' is required and must be a string"
            )));
        }
    }
    for text in ["cloud", "region", "environment", "pod_type"] {
        match fields.get(text) {
            None => {}
            Some(Value::String(v)) if v.chars().count() <= MAX_SPEC_TEXT_CHARS => {}
            Some(Value::String(_)) => {
                return Err(ApiError::invalid(format!(
                    "'spec.{kind}.{text}' exceeds {MAX_SPEC_TEXT_CHARS} characters"
                )))
            }
            Some(_) => {
                return Err(ApiError::unprocessable(format!(
                    "'spec.{kind}.{text}' must be a string"
                )))
            }
        }
    }
    match fields.get("source_collection") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "'spec.{kind}.source_collection' must be a string"
            )))
        }
    }
    for count in ["pods", "replicas", "shards"] {
        match fields.get(count) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(1) => {}
            Some(v) if v.as_u64().is_some() => {
                return Err(ApiError::invalid(format!(
                    "'spec.{kind}.{count}' is {v}; Conifer serves each index from one shard \
                     replicated on up to {SHARD_REPLICAS} nodes and takes only 1 here"
                )))
            }
            Some(_) => {
                return Err(ApiError::unprocessable(format!(
                    "'spec.{kind}.{count}' must be an integer"
                )))
            }
        }
    }
    if let Some(rc) = fields.get("read_capacity").filter(|v| !v.is_null()) {
        if let Some(key) = rc
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "mode"))
        {
            return Err(ApiError::unprocessable(format!(
                "unknown field '{key}' in 'spec.{kind}.read_capacity'"
            )));
        }
        let mode = rc.get("mode").and_then(Value::as_str);
        if mode != Some("OnDemand") {
            return Err(ApiError::invalid(format!(
                "'spec.{kind}.read_capacity.mode' is {}; Conifer serves reads on demand only \
                 ('OnDemand')",
                rc.get("mode").unwrap_or(&Value::Null)
            )));
        }
    }
    if fields.get("metadata_config").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(format!(
            "'spec.{kind}.metadata_config' is not supported: Conifer indexes every metadata \
             field, so it cannot limit filtering to the listed ones"
        )));
    }
    if fields.get("schema").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(format!(
            "'spec.{kind}.schema' is not supported: Conifer indexes every metadata field, so \
             it cannot limit filtering to the fields a schema lists"
        )));
    }
    Ok(())
}

/// Pinecone's `status` of an index as the cluster can serve it now: `Disabled` (not ready)
/// when none of its replicas is on a node in `up` (the members that answer: see
/// [`serving_nodes`]), so no node can serve it, whatever its recorded state; else `Ready`
/// once its shard group has served, and `Initializing` before.
fn status_json(index: &Index, up: &BTreeSet<u64>) -> Value {
    let placed = index.replicas.iter().any(|r| up.contains(r));
    let (ready, name) = match (placed, &index.state) {
        (false, _) => (false, "Disabled"),
        (true, IndexState::Ready) => (true, "Ready"),
        (true, IndexState::Initializing) => (false, "Initializing"),
    };
    json!({ "ready": ready, "state": name })
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
    json!({
        "name": index.name,
        "dimension": index.dimension,
        "metric": index.metric.as_str(),
        "host": state.router.host_of(index),
        "vector_type": index.vector_type,
        "deletion_protection": if index.deletion_protection { "enabled" } else { "disabled" },
        "tags": tags,
        "spec": spec,
    })
}

/// An index name as Pinecone's control-plane spec defines it: 1 to
/// [`MAX_INDEX_NAME_CHARS`] characters of `a-z`, `0-9` and `-`, starting and ending with a
/// letter or digit.
pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let edges_ok = !name.starts_with('-') && !name.ends_with('-');
    if name.is_empty() || name.chars().count() > MAX_INDEX_NAME_CHARS || !valid_chars || !edges_ok {
        return Err(ApiError::invalid(format!(
            "Name must consist of lower case alphanumeric characters or '-': index name '{}' \
             is invalid (1 to {MAX_INDEX_NAME_CHARS} characters of a-z, 0-9 and '-', starting \
             and ending with a letter or digit)",
            name.chars()
                .take(2 * MAX_INDEX_NAME_CHARS)
                .collect::<String>()
        )));
    }
    Ok(())
}

/// A tag key's characters (Pinecone's `IndexTags`): letters, digits, `_` and `-`.
fn is_tag_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// A tag value's characters (Pinecone's `IndexTags`): letters, digits, `;`, `@`, `_`,
/// `-`, `.`, `+` and space.
fn is_tag_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ';' | '@' | '_' | '-' | '.' | '+' | ' ')
}

/// Tags as Pinecone's control-plane spec defines them: at most [`MAX_TAGS`], keys of 1 to
/// [`MAX_TAG_KEY_CHARS`] [`is_tag_key_char`]s, string values of at most
/// [`MAX_TAG_VALUE_CHARS`] [`is_tag_value_char`]s (the empty value unsets a key on
/// configure). Checked on a create, on a configure's changes and on the tags it produces.
pub(super) fn check_tags(tags: &Map<String, Value>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "'tags' has {} entries; the limit is {MAX_TAGS}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        let shown: String = k.chars().take(2 * MAX_TAG_KEY_CHARS).collect();
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_CHARS {
            return Err(ApiError::invalid(format!(
                "tag key '{shown}' must be 1 to {MAX_TAG_KEY_CHARS} characters"
            )));
        }
        if let Some(bad) = k.chars().find(|c| !is_tag_key_char(*c)) {
            return Err(ApiError::invalid(format!(
                "tag key '{shown}' contains {bad:?}: keys must be alphanumeric, '_', or '-'"
            )));
        }
        let Some(v) = v.as_str() else {
            return Err(ApiError::unprocessable(format!(
                "tag '{shown}' must have a string value"
            )));
        };
        if v.chars().count() > MAX_TAG_VALUE_CHARS {
            return Err(ApiError::invalid(format!(
                "tag '{shown}' value exceeds {MAX_TAG_VALUE_CHARS} characters"
            )));
        }
        if let Some(bad) = v.chars().find(|c| !is_tag_value_char(*c)) {
            return Err(ApiError::invalid(format!(
                "tag '{shown}' value contains {bad:?}: values must be alphanumeric, ';', '@', \
                 '_', '-', '.', '+', or ' '"
            )));
        }
    }
    Ok(())
}

pub(super) fn parse_protection(value: Option<&str>) -> Result<Option<bool>, ApiError> {
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

/// Chooses up to `replicas` nodes, least loaded first (then lowest id).
pub(super) fn place(state: &ApiState, replicas: usize) -> Vec<u64> {
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
    let mut chosen: Vec<u64> = nodes.into_iter().take(replicas).map(|(_, id)| id).collect();
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
        create_from_2026(&body::json(&headers, &body, Plane::Control)?)?
    } else {
        body::json(&headers, &body, Plane::Control)?
    };
    check_name(&req.name)?;
    if let Some(collection) = source_collection(&req.spec) {
        checked_spec(&req.spec)?;
        if req.vector_type.as_deref().is_some_and(|t| t != "dense") {
            return Err(ApiError::invalid(
                "a collection restores into a dense index",
            ));
        }
        if let Some(tags) = &req.tags {
            check_tags(tags)?;
        }
        let target = super::backups::RestoreTarget {
            name: req.name.clone(),
            tags: req.tags.clone().filter(|t| !t.is_empty()),
            deletion_protection: parse_protection(req.deletion_protection.as_deref())?
                .unwrap_or(false),
            replicas: None,
            hnsw: None,
            spec_json: Some(Value::Object(req.spec.clone()).to_string()),
        };
        let index = super::backups::create_from_collection(
            &state,
            &caller,
            &project_id,
            &collection,
            req.dimension,
            req.metric.as_deref(),
            target,
        )
        .await?;
        return Ok((
            StatusCode::CREATED,
            Json(render_one(&state, index, schema_shape).await),
        ));
    }
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
    checked_spec(&req.spec)?;
    if let Some(tags) = &req.tags {
        check_tags(tags)?;
    }
    let deletion_protection =
        parse_protection(req.deletion_protection.as_deref())?.unwrap_or(false);
    let replicas = place(&state, SHARD_REPLICAS);
    if replicas.is_empty() {
        return Err(ApiError::unavailable(
            "the cluster has no members to place the index on",
        ));
    }
    let (project_key, cmek) = project_keys(&state, &project_id)?;
    let keys = state
        .keys
        .new_index_keys(&project_id, &project_key, cmek.as_deref(), &req.name)
        .await?;
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
        port: None,
        keys,
        restore: None,
        hnsw: None,
    };
    let ports = state.router.index_ports();
    match caller
        .propose(Command::Index(IndexCommand::Create { index, ports }))
        .await?
    {
        Output::Index(index) => Ok((
            StatusCode::CREATED,
            Json(render_one(&state, index, schema_shape).await),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Checks a create request's `spec`: exactly one known kind, each checked by [`check_spec`].
fn checked_spec(spec: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(key) = spec
        .keys()
        .find(|k| !matches!(k.as_str(), "serverless" | "pod" | "byoc"))
    {
        return Err(ApiError::unprocessable(format!(
            "unknown field '{key}' in 'spec'"
        )));
    }
    let kinds: Vec<&String> = spec.keys().collect();
    if kinds.len() != 1 {
        return Err(ApiError::invalid(
            "'spec' must have exactly one of 'serverless', 'pod' or 'byoc'",
        ));
    }
    check_spec(kinds[0], &spec[kinds[0].as_str()])
}

/// The collection a create request restores from (`spec.<kind>.source_collection`).
fn source_collection(spec: &Map<String, Value>) -> Option<String> {
    spec.values()
        .find_map(|kind| kind.get("source_collection").and_then(Value::as_str))
        .map(String::from)
}

/// `GET /indexes`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let indexes: Vec<Index> = state.control.read(|s| {
        s.indexes_of(&project_id)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    });
    let indexes = render(&state, &indexes, schema_api(&headers)).await;
    Ok(Json(json!({ "indexes": indexes })))
}

pub(super) fn find(state: &ApiState, project_id: &str, name: &str) -> Result<Index, ApiError> {
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
    let index = find(&state, &project_id, &name)?;
    Ok(Json(render_one(&state, index, schema_api(&headers)).await))
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
    let req: ConfigureIndex = body::json(&headers, &body, Plane::Control)?;
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
    let command = Command::Index(IndexCommand::Configure {
        project_id: project_id.clone(),
        name,
        deletion_protection,
        tags_json,
    });
    match caller.propose(command).await? {
        Output::Index(index) => Ok(Json(render_one(&state, index, schema_api(&headers)).await)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Project `project_id`'s key and customer-managed KMS key (if set), for making index keys.
pub(super) fn project_keys(
    state: &ApiState,
    project_id: &str,
) -> Result<(crate::crypto::ProjectKey, Option<String>), ApiError> {
    state
        .control
        .read(|s| {
            s.projects
                .get(project_id)
                .map(|p| (p.key.clone(), p.cmek_key_arn.clone()))
        })
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))
}

/// `POST /indexes/{name}/rotate-key`: starts a rotation of the index's data key and
/// answers 202 with the index (its `encryption.rotation` shows the progress). The new
/// version is made as the first was (the project's customer-managed KMS key, or wrapped by
/// the project key); new values are sealed with it at once, and every replica re-seals its
/// stored values in the background while the index serves reads and writes; the older
/// version is dropped once every replica is done. 412 `FAILED_PRECONDITION` while a
/// rotation of the index runs.
pub async fn rotate_key(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    state.control.linearizable_barrier().await?;
    let current = find(&state, &project_id, &name)?;
    let (project_key, cmek) = project_keys(&state, &project_id)?;
    let version = state
        .keys
        .new_index_key_version(
            &project_id,
            &project_key,
            cmek.as_deref(),
            &name,
            current.keys.current + 1,
        )
        .await?;
    let command = Command::Index(IndexCommand::RotateKey {
        project_id,
        name,
        version,
    });
    match caller.propose(command).await? {
        Output::Index(index) => Ok((
            StatusCode::ACCEPTED,
            Json(render_one(&state, index, schema_api(&headers)).await),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /indexes/{name}`: refused with 403 while deletion protection is enabled. The
/// index's backups and collections are kept (Pinecone's behaviour) unless
/// `?delete_backups=true`, which deletes them after the index.
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    if let Some(key) = query.keys().find(|k| k.as_str() != "delete_backups") {
        return Err(ApiError::invalid(format!(
            "unknown query parameter '{key}'; DELETE /indexes/{{name}} takes 'delete_backups'"
        )));
    }
    let delete_backups = match query.get("delete_backups").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "'delete_backups' is '{other}'; it must be true or false"
            )))
        }
    };
    let group = find(&state, &project_id, &name)?.group_id;
    // Deleting the backups too is a backup deletion: the caller must be allowed that, and
    // no backup of the index may be being restored — checked before anything is deleted.
    let backups_caller = if delete_backups {
        let mut as_backups = caller.clone();
        as_backups.operation = crate::policy::Operation::BackupDelete;
        let header = headers.get(PROJECT_HEADER).and_then(|v| v.to_str().ok());
        as_backups.authorize_data_project(&state, header).await?;
        let restoring = state.control.read(|s| {
            s.restore_jobs
                .values()
                .filter(|j| j.running())
                .find(|j| {
                    s.backups
                        .get(&j.backup_id)
                        .is_some_and(|b| b.source_group == group)
                })
                .map(|j| (j.backup_id.clone(), j.target_index.clone()))
        });
        if let Some((backup, target)) = restoring {
            return Err(ApiError::coded(
                "FAILED_PRECONDITION",
                format!(
                    "backup '{backup}' of index '{name}' is being restored into index \
                     '{target}'; delete the index with its backups once the restore finished"
                ),
            ));
        }
        Some(as_backups)
    } else {
        None
    };
    let command = Command::Index(IndexCommand::Delete {
        project_id: project_id.clone(),
        name,
    });
    caller
        .propose(command)
        .await
        .map_err(ApiError::from_index_delete)?;
    if let Some(backups_caller) = backups_caller {
        let ids: Vec<String> = state.control.read(|s| {
            s.backups_of(&project_id)
                .into_iter()
                .filter(|b| b.source_group == group)
                .map(|b| b.id.clone())
                .collect()
        });
        for id in ids {
            super::backups::remove(&state, &backups_caller, &project_id, &id).await?;
        }
    }
    Ok(StatusCode::ACCEPTED)
}
