//! Private endpoints of a project ([`crate::control::private_endpoints`]):
//! `GET|POST /admin/projects/{id}/private-endpoints`, `GET|DELETE /admin/private-endpoints/{id}`.
//! Creating and deleting one is audited as the seed's `private-endpoints` event.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::Caller;
use super::admin::{authorized_in_project, check_id, check_name, read_consistency};
use super::{ApiError, ApiState};
use crate::control::private_endpoints::{parse_cidrs, PrivateEndpoint, PrivateEndpointCommand};
use crate::control::{Command, Output};

/// Longest private endpoint name, in characters.
pub const MAX_PRIVATE_ENDPOINT_NAME_CHARS: usize = 80;

fn endpoint_json(e: &PrivateEndpoint) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "project_id": e.project_id,
        "private_listener": e.private_listener,
        "allowed_cidrs": e.allowed_cidrs,
        "created_at": e.created_at,
    })
}

/// Body of `POST /admin/projects/{id}/private-endpoints`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePrivateEndpoint {
    name: String,
    #[serde(default)]
    private_listener: bool,
    #[serde(default)]
    allowed_cidrs: Vec<String>,
}

/// `POST /admin/projects/{id}/private-endpoints`: 201 with the endpoint. From then on the
/// project's data plane answers only calls that satisfy one of its endpoints (on every node
/// within the control-plane lease).
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project_id): Path<String>,
    body: Result<Json<CreatePrivateEndpoint>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_id("project", &project_id)?;
    caller.authorize_project(&state, &project_id).await?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_PRIVATE_ENDPOINT_NAME_CHARS)?;
    let allowed_cidrs = parse_cidrs(&body.allowed_cidrs).map_err(ApiError::invalid)?;
    if !body.private_listener && allowed_cidrs.is_empty() {
        return Err(ApiError::invalid(
            "a private endpoint needs the private listener (\"private_listener\": true), \
             allowed CIDR ranges (\"allowed_cidrs\"), or both",
        ));
    }
    let endpoint = PrivateEndpoint {
        id: format!("pe-{}", uuid::Uuid::new_v4().simple()),
        project_id,
        name: body.name,
        private_listener: body.private_listener,
        allowed_cidrs,
        created_at: crate::now_rfc3339(),
    };
    match caller
        .propose(Command::PrivateEndpoint(PrivateEndpointCommand::Create(
            endpoint,
        )))
        .await?
    {
        Output::PrivateEndpoint(e) => Ok((StatusCode::CREATED, Json(endpoint_json(&e)))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /admin/projects/{id}/private-endpoints`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &project_id)?;
    read_consistency(&state, &headers).await?;
    caller.authorize_project(&state, &project_id).await?;
    let data: Vec<Value> = state.control.read(|s| {
        s.private_endpoints_of(&project_id)
            .into_iter()
            .map(endpoint_json)
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

/// The private endpoint `id`, once the caller is authorized in its project.
async fn authorized(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<PrivateEndpoint, ApiError> {
    authorized_in_project(
        state,
        caller,
        "private endpoint",
        id,
        |s| s.private_endpoint(id).cloned(),
        |e| &e.project_id,
    )
    .await
}

/// `GET /admin/private-endpoints/{id}`.
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    read_consistency(&state, &headers).await?;
    Ok(Json(endpoint_json(
        &authorized(&state, &caller, &id).await?,
    )))
}

/// `DELETE /admin/private-endpoints/{id}`: 202; the project's data plane is open on the
/// public listener again once it has no private endpoint left.
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorized(&state, &caller, &id).await?;
    caller
        .propose(Command::PrivateEndpoint(PrivateEndpointCommand::Delete {
            id,
        }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}
