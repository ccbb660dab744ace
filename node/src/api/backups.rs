//! Pinecone's backups, restore jobs and collections over REST, in the 2025-10 shapes (and
//! the 2026-07 ones when `X-Pinecone-Api-Version` asks): `POST/GET
//! /indexes/{name}/backups`, `GET /backups`, `GET/DELETE /backups/{id}`, `POST
//! /backups/{id}/create-index`, `GET /restore-jobs[/{id}]`, `POST/GET /collections`,
//! `GET/DELETE /collections/{name}`. A backup is written in the background (`Initializing`
//! until `Ready`); a restore checks the whole backup before it creates anything, then runs
//! as a job while its new index stays `Initializing`. See `docs/backups.md`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::Caller;
use super::body::{self, Plane};
use super::indexes::{
    check_name, check_tags, find, parse_protection, place, project, project_keys, schema_api,
    SHARD_REPLICAS,
};
use super::{ApiError, ApiState};
use crate::control::backups::{
    Backup, BackupCommand, BackupKind, BackupStatus, RestoreJob, RestoreStatus,
    MAX_BACKUP_DESCRIPTION_CHARS, MAX_BACKUP_NAME_CHARS,
};
use crate::control::indexes::{HnswParams, HNSW_EF_RANGE, HNSW_M_RANGE};
use crate::control::state::{Command, Index, IndexState, Output};

/// Default page size of the backup and restore-job lists (Pinecone's).
pub const DEFAULT_PAGE_LIMIT: usize = 10;
/// Largest page of the backup and restore-job lists (Pinecone's).
pub const MAX_PAGE_LIMIT: usize = 100;

/// The id Pinecone's `source_index_id` / `index_id` carry: the index's shard group.
fn index_id(group: u64) -> String {
    group.to_string()
}

/// `cloud` and `region` of a backup: the source index's serverless cloud and region, or
/// for a pod or BYOC spec its environment (with cloud `conifer`).
fn cloud_region(spec_json: &str) -> (String, String) {
    let spec: Value = serde_json::from_str(spec_json).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(s) = spec.get("serverless") {
        return (text(&s["cloud"]), text(&s["region"]));
    }
    let environment = spec
        .as_object()
        .and_then(|o| o.values().next())
        .map(|kind| text(&kind["environment"]))
        .unwrap_or_default();
    ("conifer".into(), environment)
}

/// A backup in Pinecone's `BackupModel` shape (2026-07: without `dimension` and `metric`,
/// failures as `InitializationFailed`), with Conifer's `log_position`, `records_digest`
/// and `error` beside.
fn backup_json(b: &Backup, schema_shape: bool) -> Value {
    let (cloud, region) = cloud_region(&b.source_spec_json);
    let status = match (b.status, schema_shape) {
        (BackupStatus::Pending, _) => "Initializing",
        (BackupStatus::Ready, _) => "Ready",
        (BackupStatus::Failed, false) => "Failed",
        (BackupStatus::Failed, true) => "InitializationFailed",
    };
    let mut out = json!({
        "backup_id": b.id,
        "source_index_name": b.source_index,
        "source_index_id": index_id(b.source_group),
        "name": b.name,
        "description": b.description,
        "status": status,
        "cloud": cloud,
        "region": region,
        "tags": {},
        "created_at": b.created_at,
    });
    if schema_shape {
        out["schema"] = json!({ "fields": { super::indexes::DENSE_FIELD: {
            "type": "dense_vector", "dimension": b.dimension, "metric": b.metric.as_str(),
        } } });
    } else {
        out["dimension"] = json!(b.dimension);
        out["metric"] = json!(b.metric.as_str());
    }
    if let Some(c) = &b.contents {
        out["record_count"] = json!(c.record_count);
        out["namespace_count"] = json!(c.namespace_count);
        out["size_bytes"] = json!(c.size_bytes);
        out["log_position"] = json!(c.log_position);
        out["records_digest"] = json!(c.records_digest);
    }
    if let Some(reason) = &b.failure {
        out["error"] = json!(reason);
    }
    out
}

/// A collection in Pinecone's `CollectionModel` shape.
fn collection_json(b: &Backup) -> Value {
    let (_, region) = cloud_region(&b.source_spec_json);
    let status = match b.status {
        BackupStatus::Pending => "Initializing",
        BackupStatus::Ready => "Ready",
        BackupStatus::Failed => "Failed",
    };
    let mut out = json!({
        "name": b.name,
        "status": status,
        "environment": region,
        "dimension": b.dimension,
        "source": b.source_index,
    });
    if let Some(c) = &b.contents {
        out["size"] = json!(c.size_bytes);
        out["vector_count"] = json!(c.record_count);
    }
    if let Some(reason) = &b.failure {
        out["error"] = json!(reason);
    }
    out
}

/// A restore job in Pinecone's `RestoreJobModel` shape: `Pending` until it completed or
/// failed, `percent_complete` a float (2026-07: an integer), with Conifer's record counts
/// and `error` beside.
fn restore_job_json(j: &RestoreJob, schema_shape: bool) -> Value {
    let status = match j.status {
        RestoreStatus::Pending | RestoreStatus::InProgress => "Pending",
        RestoreStatus::Completed => "Completed",
        RestoreStatus::Failed => "Failed",
    };
    let percent = j.percent_complete();
    let mut out = json!({
        "restore_job_id": j.id,
        "backup_id": j.backup_id,
        "target_index_name": j.target_index,
        "target_index_id": index_id(j.target_group),
        "status": status,
        "created_at": j.created_at,
        "completed_at": j.completed_at,
        "percent_complete": if schema_shape { json!(percent.floor() as u64) } else { json!(percent) },
        "records_restored": j.records_restored,
        "records_total": j.records_total,
    });
    if let Some(claim) = &j.claim {
        out["runner_node"] = json!(claim.node);
    }
    if let Some(reason) = &j.failure {
        out["error"] = json!(reason);
    }
    out
}

/// A page request: `limit` (1 to [`MAX_PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`]) and
/// `paginationToken`; anything else is refused.
fn page_request(query: &HashMap<String, String>) -> Result<(usize, Option<String>), ApiError> {
    if let Some(key) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "paginationToken"))
    {
        return Err(ApiError::invalid(format!(
            "unknown query parameter '{key}'; this list takes 'limit' and 'paginationToken'"
        )));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "'limit' is '{text}'; it must be an integer from 1 to {MAX_PAGE_LIMIT}"
                )))
            }
        },
    };
    Ok((limit, query.get("paginationToken").cloned()))
}

/// One page of `items` (in order of their sequence numbers, which apply assigns, so an
/// item created during the listing comes last and none is skipped) after `token`, with
/// the next token when more follow. A token is the page's last sequence number, in hex.
fn page<T>(
    mut items: Vec<(u64, T)>,
    limit: usize,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    items.sort_by_key(|(seq, _)| *seq);
    let after = match token {
        None => None,
        Some(t) => Some(
            u64::from_str_radix(t, 16)
                .ok()
                .filter(|_| t.len() <= 16)
                .ok_or_else(|| {
                    ApiError::invalid("'paginationToken' is not a token this list gave")
                })?,
        ),
    };
    let mut rest: Vec<(u64, T)> = items
        .into_iter()
        .filter(|(seq, _)| after.is_none_or(|a| *seq > a))
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = more
        .then(|| rest.last().map(|(seq, _)| format!("{seq:x}")))
        .flatten();
    Ok((rest.into_iter().map(|(_, item)| item).collect(), next))
}

fn list_json(data: Vec<Value>, next: Option<String>) -> Value {
    let mut out = json!({ "data": data });
    if let Some(next) = next {
        out["pagination"] = json!({ "next": next });
    }
    out
}

/// The backup `id` of the project, or 404.
fn find_backup(state: &ApiState, project_id: &str, id: &str) -> Result<Backup, ApiError> {
    state
        .control
        .read(|s| s.backups.get(id).cloned())
        .filter(|b| b.project_id == project_id && b.kind == BackupKind::Backup)
        .ok_or_else(|| ApiError::not_found(format!("backup '{id}' not found")))
}

/// A backup or collection as messages name it: `backup '<id>'`, `collection '<name>'`.
fn shown(b: &Backup) -> String {
    match b.kind {
        BackupKind::Backup => format!("backup '{}'", b.id),
        BackupKind::Collection => format!("collection '{}'", b.name),
    }
}

/// Checks a backup or collection name (free text, at most [`MAX_BACKUP_NAME_CHARS`]).
fn check_backup_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() > MAX_BACKUP_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "backup name must be at most {MAX_BACKUP_NAME_CHARS} characters, without control \
             characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBackup {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Makes and proposes a backup (or collection) of `source` in `project_id`.
async fn start_backup(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    source: &str,
    kind: BackupKind,
    name: String,
    description: String,
) -> Result<Backup, ApiError> {
    let index = find(state, project_id, source)?;
    let (project_key, cmek) = project_keys(state, project_id)?;
    let id = uuid::Uuid::new_v4().to_string();
    let key = state
        .keys
        .new_backup_key(project_id, &project_key, cmek.as_deref(), &id)
        .await?;
    let backup = Backup {
        id,
        seq: 0,
        max_project_bytes: 0,
        kind,
        project_id: project_id.to_string(),
        name,
        description,
        source_index: index.name.clone(),
        source_group: index.group_id,
        source_spec_json: index.spec_json.clone(),
        dimension: index.dimension,
        metric: index.metric,
        created_at: crate::now_rfc3339(),
        key,
        status: BackupStatus::Pending,
        claim: None,
        contents: None,
        failure: None,
    };
    let command = Command::Backup(BackupCommand::Create {
        backup,
        max_project_bytes: state.backups.max_project_bytes(),
    });
    match caller.propose(command).await? {
        Output::Backup(backup) => Ok(backup),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `POST /indexes/{name}/backups`: starts a backup of the index (201, 2026-07: 200) in
/// status `Initializing`; it turns `Ready` once written.
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(index): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let req: CreateBackup = if body.is_empty() {
        CreateBackup::default()
    } else {
        body::json(&headers, &body, Plane::Control)?
    };
    let name = req.name.unwrap_or_default();
    check_backup_name(&name)?;
    let description = req.description.unwrap_or_default();
    if description.chars().count() > MAX_BACKUP_DESCRIPTION_CHARS
        || description
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::invalid(format!(
            "'description' must be at most {MAX_BACKUP_DESCRIPTION_CHARS} characters, without \
             control characters other than newlines and tabs"
        )));
    }
    let backup = start_backup(
        &state,
        &caller,
        &project_id,
        &index,
        BackupKind::Backup,
        name,
        description,
    )
    .await?;
    let schema_shape = schema_api(&headers);
    let status = if schema_shape {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(backup_json(&backup, schema_shape))))
}

/// `GET /backups` and `GET /indexes/{name}/backups`: the project's backups (of that index,
/// including those kept after it was deleted), oldest first, a page at a time.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    index: Option<Path<String>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let (limit, token) = page_request(&query)?;
    let index = index.map(|Path(name)| name);
    let (backups, index_exists) = state.control.read(|s| {
        let backups: Vec<Backup> = s
            .backups_of(&project_id)
            .into_iter()
            .filter(|b| b.kind == BackupKind::Backup)
            .filter(|b| index.as_ref().is_none_or(|i| &b.source_index == i))
            .cloned()
            .collect();
        let exists = index
            .as_ref()
            .is_none_or(|i| s.indexes.contains_key(&(project_id.clone(), i.clone())));
        (backups, exists)
    });
    if !index_exists && backups.is_empty() {
        return Err(ApiError::not_found(format!(
            "index '{}' not found",
            index.unwrap_or_default()
        )));
    }
    let schema_shape = schema_api(&headers);
    let keyed = backups
        .iter()
        .map(|b| (b.seq, backup_json(b, schema_shape)))
        .collect();
    let (data, next) = page(keyed, limit, token.as_deref())?;
    Ok(Json(list_json(data, next)))
}

/// `GET /backups/{id}`.
pub async fn describe(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let backup = find_backup(&state, &project_id, &id)?;
    Ok(Json(backup_json(&backup, schema_api(&headers))))
}

/// Deletes backup or collection `id` and (best effort: the collector finishes what is
/// left) its files.
pub(super) async fn remove(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    id: &str,
) -> Result<(), ApiError> {
    let command = Command::Backup(BackupCommand::Delete {
        project_id: project_id.to_string(),
        id: id.to_string(),
    });
    caller.propose(command).await?;
    if let Err(e) = state
        .backups
        .store()
        .delete_prefix(&format!("{project_id}/{id}/"))
        .await
    {
        tracing::warn!(backup = id, "removing the files of a deleted backup: {e}");
    }
    Ok(())
}

/// `DELETE /backups/{id}` (202).
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    find_backup(&state, &project_id, &id)?;
    remove(&state, &caller, &project_id, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// HNSW parameters of a new index (Conifer's extension): each given one between its
/// bounds, the others the node's defaults.
fn hnsw_params(state: &ApiState, value: Option<&Value>) -> Result<Option<HnswParams>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let fields = value
        .as_object()
        .ok_or_else(|| ApiError::unprocessable("'hnsw' must be an object"))?;
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "m" | "ef_construction" | "ef_search"))
    {
        return Err(ApiError::unprocessable(format!(
            "unknown field '{key}' in 'hnsw' (m, ef_construction, ef_search)"
        )));
    }
    let defaults = state.router.shards().engine_defaults();
    let field = |name: &str, range: &std::ops::RangeInclusive<u32>, default: usize| match fields
        .get(name)
    {
        None | Some(Value::Null) => Ok(default as u32),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!(
                "'hnsw.{name}' is {v}; it must be an integer from {} to {}",
                range.start(),
                range.end()
            ))),
        },
    };
    Ok(Some(HnswParams {
        m: field("m", &HNSW_M_RANGE, defaults.hnsw_m)?,
        ef_construction: field(
            "ef_construction",
            &HNSW_EF_RANGE,
            defaults.hnsw_ef_construction,
        )?,
        ef_search: field("ef_search", &HNSW_EF_RANGE, defaults.hnsw_ef_search)?,
    }))
}

/// The configuration of an index created from a backup or collection.
pub(super) struct RestoreTarget {
    pub(super) name: String,
    pub(super) tags: Option<Map<String, Value>>,
    pub(super) deletion_protection: bool,
    /// Replicas asked for (`None`: up to [`SHARD_REPLICAS`], as the cluster has nodes).
    pub(super) replicas: Option<usize>,
    pub(super) hnsw: Option<HnswParams>,
    /// The new index's spec (JSON text); `None`: the source index's.
    pub(super) spec_json: Option<String>,
}

/// Creates an index from `backup` once every file of it checked out (nothing is created
/// for a damaged backup), with its restore job.
pub(super) async fn start_restore(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    backup: &Backup,
    target: RestoreTarget,
) -> Result<(Index, RestoreJob), ApiError> {
    if backup.status != BackupStatus::Ready {
        let (what, status) = (shown(backup), backup_json(backup, false)["status"].clone());
        return Err(ApiError::coded(
            "FAILED_PRECONDITION",
            format!("{what} is not ready (status {status}); restore it once it is"),
        ));
    }
    state.backups.check_restorable(backup).await?;
    let replicas = place(state, target.replicas.unwrap_or(SHARD_REPLICAS));
    if let Some(asked) = target.replicas.filter(|n| replicas.len() < *n) {
        return Err(ApiError::invalid(format!(
            "'replicas' is {asked}; the cluster has {} members",
            replicas.len()
        )));
    }
    if replicas.is_empty() {
        return Err(ApiError::unavailable(
            "the cluster has no members to place the index on",
        ));
    }
    let (project_key, cmek) = project_keys(state, project_id)?;
    let keys = state
        .keys
        .new_index_keys(project_id, &project_key, cmek.as_deref(), &target.name)
        .await?;
    let index = Index {
        name: target.name,
        project_id: project_id.to_string(),
        dimension: backup.dimension,
        metric: backup.metric,
        vector_type: "dense".into(),
        spec_json: target
            .spec_json
            .unwrap_or_else(|| backup.source_spec_json.clone()),
        tags_json: target
            .tags
            .map(Value::Object)
            .unwrap_or(Value::Null)
            .to_string(),
        deletion_protection: target.deletion_protection,
        group_id: 0,
        replicas,
        state: IndexState::Initializing,
        created_at: crate::now_rfc3339(),
        port: None,
        keys,
        restore: None,
        hnsw: target.hnsw,
    };
    let job = RestoreJob {
        id: uuid::Uuid::new_v4().to_string(),
        seq: 0,
        project_id: project_id.to_string(),
        backup_id: backup.id.clone(),
        target_index: index.name.clone(),
        target_group: 0,
        status: RestoreStatus::Pending,
        created_at: crate::now_rfc3339(),
        completed_at: None,
        chunks_total: 0,
        chunks_done: 0,
        records_total: 0,
        records_restored: 0,
        claim: None,
        failure: None,
    };
    let command = Command::Backup(BackupCommand::StartRestore {
        job,
        index: Box::new(index),
        ports: state.router.index_ports(),
    });
    match caller.propose(command).await? {
        Output::Restore(index, job) => Ok((*index, job)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The number of replicas asked for (Conifer's extension `replicas`, 1 to
/// [`SHARD_REPLICAS`]).
pub(super) fn replica_count(value: Option<&Value>) -> Result<Option<usize>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) if !v.is_number() => Err(ApiError::unprocessable("'replicas' must be an integer")),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=SHARD_REPLICAS as u64).contains(&n) => Ok(Some(n as usize)),
            _ => Err(ApiError::invalid(format!(
                "'replicas' is {v}; it must be an integer from 1 to {SHARD_REPLICAS}"
            ))),
        },
    }
}

/// `POST /backups/{id}/create-index`: `name`, `tags`, `deletion_protection` (Pinecone's),
/// and Conifer's `replicas` and `hnsw` (`m`, `ef_construction`, `ef_search`). Checks the
/// whole backup, creates the index (`Initializing`, refusing data-plane calls) and its
/// restore job, and answers 202 with `restore_job_id` and `index_id`.
pub async fn create_index(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let req = body::json::<Value>(&headers, &body, Plane::Control)?;
    let fields = req
        .as_object()
        .ok_or_else(|| ApiError::unprocessable("request body must be a JSON object"))?;
    if let Some(key) = fields.keys().find(|k| {
        !matches!(
            k.as_str(),
            "name" | "tags" | "deletion_protection" | "read_capacity" | "replicas" | "hnsw"
        )
    }) {
        return Err(ApiError::unprocessable(format!("unknown field '{key}'")));
    }
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::unprocessable("'name' is required and must be a string"))?
        .to_string();
    check_name(&name)?;
    let tags = match fields.get("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Object(tags)) => {
            check_tags(tags)?;
            (!tags.is_empty()).then(|| tags.clone())
        }
        Some(_) => return Err(ApiError::unprocessable("'tags' must be an object")),
    };
    let protection = match fields.get("deletion_protection") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.as_str()),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "'deletion_protection' must be a string",
            ))
        }
    };
    if let Some(rc) = fields.get("read_capacity").filter(|v| !v.is_null()) {
        if rc.get("mode").and_then(Value::as_str) != Some("OnDemand") {
            return Err(ApiError::invalid(
                "'read_capacity' other than {\"mode\": \"OnDemand\"} is not supported: Conifer \
                 serves reads on demand only",
            ));
        }
    }
    let target = RestoreTarget {
        name,
        tags,
        deletion_protection: parse_protection(protection)?.unwrap_or(false),
        replicas: replica_count(fields.get("replicas"))?,
        hnsw: hnsw_params(&state, fields.get("hnsw"))?,
        spec_json: None,
    };
    let backup = find_backup(&state, &project_id, &id)?;
    let (index, job) = start_restore(&state, &caller, &project_id, &backup, target).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "restore_job_id": job.id,
            "index_id": index_id(index.group_id),
        })),
    ))
}

/// `GET /restore-jobs`: the project's restore jobs, oldest first, a page at a time.
pub async fn list_restore_jobs(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let (limit, token) = page_request(&query)?;
    let schema_shape = schema_api(&headers);
    let keyed = state.control.read(|s| {
        s.restore_jobs
            .values()
            .filter(|j| j.project_id == project_id)
            .map(|j| (j.seq, restore_job_json(j, schema_shape)))
            .collect()
    });
    let (data, next) = page(keyed, limit, token.as_deref())?;
    Ok(Json(list_json(data, next)))
}

/// `GET /restore-jobs/{id}`: status, `percent_complete` and the records restored.
pub async fn describe_restore_job(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let job = state
        .control
        .read(|s| s.restore_jobs.get(&id).cloned())
        .filter(|j| j.project_id == project_id)
        .ok_or_else(|| ApiError::not_found(format!("restore job '{id}' not found")))?;
    Ok(Json(restore_job_json(&job, schema_api(&headers))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCollection {
    name: String,
    source: String,
}

/// The collection `name` of the project, or 404.
pub(super) fn find_collection(
    state: &ApiState,
    project_id: &str,
    name: &str,
) -> Result<Backup, ApiError> {
    state
        .control
        .read(|s| s.collection(project_id, name).cloned())
        .ok_or_else(|| ApiError::not_found(format!("collection '{name}' not found")))
}

/// `POST /collections` (`name`, `source`: an index): 201 with the collection,
/// `Initializing` until written.
pub async fn create_collection(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let req: CreateCollection = body::json(&headers, &body, Plane::Control)?;
    check_name(&req.name).map_err(|_| {
        ApiError::invalid(format!(
            "collection name '{}' is invalid: 1 to 45 characters of a-z, 0-9 and '-', starting \
             and ending with a letter or digit",
            req.name.chars().take(90).collect::<String>()
        ))
    })?;
    let collection = start_backup(
        &state,
        &caller,
        &project_id,
        &req.source,
        BackupKind::Collection,
        req.name,
        String::new(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(collection_json(&collection))))
}

/// `GET /collections`.
pub async fn list_collections(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let collections: Vec<Value> = state.control.read(|s| {
        s.backups_of(&project_id)
            .into_iter()
            .filter(|b| b.kind == BackupKind::Collection)
            .map(collection_json)
            .collect()
    });
    Ok(Json(json!({ "collections": collections })))
}

/// `GET /collections/{name}`.
pub async fn describe_collection(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let collection = find_collection(&state, &project_id, &name)?;
    Ok(Json(collection_json(&collection)))
}

/// `DELETE /collections/{name}` (202).
pub async fn delete_collection(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let project_id = project(&state, &caller, &headers).await?;
    let collection = find_collection(&state, &project_id, &name)?;
    remove(&state, &caller, &project_id, &collection.id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /indexes` with `spec.<kind>.source_collection`: the index is created from the
/// collection (its dimension and metric, which the request must match when it gives them),
/// answered as the index, `Initializing` until the restore job completes.
pub(super) async fn create_from_collection(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    collection: &str,
    request_dimension: Option<u32>,
    request_metric: Option<&str>,
    target: RestoreTarget,
) -> Result<Index, ApiError> {
    let collection = find_collection(state, project_id, collection)?;
    if request_dimension.is_some_and(|d| d != collection.dimension)
        || request_metric.is_some_and(|m| m != collection.metric.as_str())
    {
        return Err(ApiError::invalid(format!(
            "collection '{}' holds {}-dimensional {} vectors; the new index must have the \
             same dimension and metric",
            collection.name,
            collection.dimension,
            collection.metric.as_str()
        )));
    }
    let (index, _) = start_restore(state, caller, project_id, &collection, target).await?;
    Ok(index)
}
