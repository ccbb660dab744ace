//! Admin REST API in Pinecone's shapes: projects and API keys (operator token for now;
//! users, service accounts and roles come with the identity issue), plus membership.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use conifer_proto::internal::MemberAction;
use serde::Deserialize;
use serde_json::{json, Value};

use super::data::CONSISTENCY_HEADER;
use super::{require_operator, ApiError, ApiState};
use crate::auth;
use crate::cluster::change_member;
use crate::control::state::{ApiKey, ApiKeyRole, Project};
use crate::control::{Command, Output};

/// Longest project name, in bytes.
pub const MAX_PROJECT_NAME_BYTES: usize = 512;
/// Longest API key name, in bytes.
pub const MAX_API_KEY_NAME_BYTES: usize = 80;
/// Largest `max_pods` accepted.
pub const MAX_PODS_LIMIT: u32 = 100_000;
/// Longest id accepted in a path; longer ids cannot exist.
pub const MAX_ID_BYTES: usize = 64;

fn project_json(p: &Project) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "max_pods": p.max_pods,
        "force_encryption_with_cmek": p.force_encryption_with_cmek,
        "organization_id": p.organization_id,
        "created_at": p.created_at,
    })
}

fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "project_id": k.project_id,
        "roles": k.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "created_at": k.created_at,
    })
}

/// Honours [`CONSISTENCY_HEADER`] on an admin read: `linearizable` first applies group 0's
/// read index here, so the read sees every change acknowledged before it.
async fn read_consistency(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(CONSISTENCY_HEADER)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("eventual") => Ok(()),
        Some("linearizable") => Ok(state.control.linearizable_barrier().await?),
        Some(other) => Err(ApiError::invalid(format!(
            "{CONSISTENCY_HEADER} is {other:?}; expected \"eventual\" or \"linearizable\""
        ))),
    }
}

fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::not_found(format!(
            "{kind} '{}' not found",
            id.chars().take(MAX_ID_BYTES).collect::<String>()
        )));
    }
    Ok(())
}

fn check_name(field: &str, name: &str, max: usize) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(format!("'{field}' must not be empty")));
    }
    if name.len() > max {
        return Err(ApiError::invalid(format!(
            "'{field}' is {} bytes; the limit is {max}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "'{field}' must not contain control characters"
        )));
    }
    Ok(())
}

/// Body of `POST /admin/projects`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    #[serde(default)]
    max_pods: Option<u32>,
    #[serde(default)]
    force_encryption_with_cmek: Option<bool>,
}

/// `POST /admin/projects`.
pub async fn create_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<CreateProject>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_operator(&state, &headers).await?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_PROJECT_NAME_BYTES)?;
    let max_pods = body.max_pods.unwrap_or(0);
    if max_pods > MAX_PODS_LIMIT {
        return Err(ApiError::invalid(format!(
            "'max_pods' is {max_pods}; the limit is {MAX_PODS_LIMIT}"
        )));
    }
    let organization_id = state
        .control
        .read(|s| s.organizations.keys().next().cloned())
        .ok_or_else(|| ApiError::unavailable("the cluster is not bootstrapped yet"))?;
    let project = Project {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id,
        name: body.name,
        max_pods,
        force_encryption_with_cmek: body.force_encryption_with_cmek.unwrap_or(false),
        created_at: crate::now_rfc3339(),
    };
    match state
        .control
        .propose(Command::CreateProject(project))
        .await?
    {
        Output::Project(p) => Ok((StatusCode::CREATED, Json(project_json(&p)))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /admin/projects`.
pub async fn list_projects(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_operator(&state, &headers).await?;
    let data: Vec<Value> = state
        .control
        .read(|s| s.projects.values().map(project_json).collect());
    Ok(Json(json!({ "data": data })))
}

/// `GET /admin/projects/{id}`.
pub async fn get_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&state, &headers).await?;
    check_id("project", &id)?;
    read_consistency(&state, &headers).await?;
    state
        .control
        .read(|s| s.projects.get(&id).map(project_json))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("project '{id}' not found")))
}

/// `DELETE /admin/projects/{id}`: deletes the project and its API keys.
pub async fn delete_project(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &headers).await?;
    check_id("project", &id)?;
    state.control.propose(Command::DeleteProject { id }).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Body of `POST /admin/projects/{id}/api-keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    name: String,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// `POST /admin/projects/{id}/api-keys`: the response holds the key's `value`, shown only here.
pub async fn create_api_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Result<Json<CreateApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_operator(&state, &headers).await?;
    check_id("project", &project_id)?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_API_KEY_NAME_BYTES)?;
    let names = body
        .roles
        .unwrap_or_else(|| vec![ApiKeyRole::ProjectEditor.as_str().to_string()]);
    if names.is_empty() {
        return Err(ApiError::invalid("'roles' must name at least one role"));
    }
    let mut roles = Vec::new();
    for name in &names {
        let role = ApiKeyRole::parse(name).ok_or_else(|| {
            let known: Vec<&str> = ApiKeyRole::ALL.iter().map(|r| r.as_str()).collect();
            ApiError::invalid(format!(
                "'roles' contains unknown role '{name}'; known roles: {}",
                known.join(", ")
            ))
        })?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let secret = auth::new_api_key();
    let key = ApiKey {
        id: secret.id.clone(),
        project_id,
        name: body.name,
        roles,
        secret_sha256: secret.secret_sha256,
        created_at: crate::now_rfc3339(),
    };
    match state.control.propose(Command::CreateApiKey(key)).await? {
        Output::ApiKey(k) => Ok((
            StatusCode::CREATED,
            Json(json!({ "key": key_json(&k), "value": secret.value })),
        )),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /admin/projects/{id}/api-keys`.
pub async fn list_api_keys(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&state, &headers).await?;
    check_id("project", &project_id)?;
    state
        .control
        .read(|s| {
            s.projects.contains_key(&project_id).then(|| {
                s.keys_of(&project_id)
                    .into_iter()
                    .map(key_json)
                    .collect::<Vec<_>>()
            })
        })
        .map(|data| Json(json!({ "data": data })))
        .ok_or_else(|| ApiError::not_found(format!("project '{project_id}' not found")))
}

/// `GET /admin/api-keys/{id}`.
pub async fn get_api_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_operator(&state, &headers).await?;
    check_id("API key", &id)?;
    read_consistency(&state, &headers).await?;
    state
        .control
        .read(|s| s.api_keys.get(&id).map(key_json))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("API key '{id}' not found")))
}

/// `DELETE /admin/api-keys/{id}`.
pub async fn delete_api_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &headers).await?;
    check_id("API key", &id)?;
    state.control.propose(Command::DeleteApiKey { id }).await?;
    Ok(StatusCode::ACCEPTED)
}

fn parse_node_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid(format!("node id '{id}' is not a number")))
}

fn status_to_api(status: tonic::Status) -> ApiError {
    match status.code() {
        tonic::Code::NotFound => ApiError::not_found(status.message()),
        tonic::Code::InvalidArgument => ApiError::invalid(status.message()),
        tonic::Code::FailedPrecondition => ApiError {
            status: StatusCode::PRECONDITION_FAILED,
            code: "FAILED_PRECONDITION",
            message: status.message().to_string(),
        },
        _ => ApiError::unavailable(status.message()),
    }
}

/// `POST /admin/cluster/members/{id}/promote`: makes a learner a voter.
pub async fn promote_member(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &headers).await?;
    change_member(&state.control, parse_node_id(&id)?, MemberAction::Promote)
        .await
        .map_err(status_to_api)?;
    Ok(StatusCode::OK)
}

/// `DELETE /admin/cluster/members/{id}`: removes a node from the cluster.
pub async fn remove_member(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &headers).await?;
    change_member(&state.control, parse_node_id(&id)?, MemberAction::Remove)
        .await
        .map_err(status_to_api)?;
    Ok(StatusCode::ACCEPTED)
}
