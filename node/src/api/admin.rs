//! Admin REST API in Pinecone's shapes: projects and API keys, plus cluster membership.
//! Organizations, members, service accounts and operator tokens are in `identity`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use conifer_proto::internal::MemberAction;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::Caller;
use super::data::CONSISTENCY_HEADER;
use super::{ApiError, ApiState};
use crate::auth::{self, Principal};
use crate::control::membership::{self, MemberChange};
use crate::control::state::{ApiKey, ApiKeyRole, Project, ProjectMember, ProjectRole};
use crate::control::state::{ApiKeyCommand, ProjectCommand};
use crate::control::{Command, Output};
use crate::policy::{self, Operation, Target};

/// Longest project name, in characters (Pinecone's admin API).
pub const MAX_PROJECT_NAME_CHARS: usize = 512;
/// Longest API key name, in characters (Pinecone's admin API).
pub const MAX_API_KEY_NAME_CHARS: usize = 80;
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
        "cmek_key_arn": p.cmek_key_arn,
        "require_client_certificate": p.require_client_certificate,
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
pub(super) async fn read_consistency(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
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

pub(super) fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::not_found(format!(
            "{kind} '{}' not found",
            id.chars().take(MAX_ID_BYTES).collect::<String>()
        )));
    }
    Ok(())
}

/// A name of the admin API (Pinecone's admin spec: project and organization names 1–512
/// characters, API key names 1–80): not blank, at most `max_chars` characters, no control
/// characters.
pub(super) fn check_name(field: &str, name: &str, max_chars: usize) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid(format!("'{field}' must not be empty")));
    }
    let chars = name.chars().count();
    if chars > max_chars {
        return Err(ApiError::invalid(format!(
            "'{field}' is {chars} characters; the limit is {max_chars}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "'{field}' must not contain control characters"
        )));
    }
    Ok(())
}

/// The organization a caller acts in when a request names none: a member's own, an API
/// key's project's, or — for the operator, who may act in any — the first one.
pub fn home_organization(state: &ApiState, caller: &Caller) -> Result<String, ApiError> {
    let org = state.control.read(|s| match caller.principal.as_ref() {
        Principal::Member(m) => Some(m.organization_id.clone()),
        Principal::ApiKey(k) => s
            .projects
            .get(&k.project_id)
            .map(|p| p.organization_id.clone()),
        Principal::Operator { .. } => s.organizations.keys().next().cloned(),
    });
    org.ok_or_else(|| ApiError::unavailable("the cluster is not bootstrapped yet"))
}

/// Body of `POST /admin/projects`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    max_pods: Option<u32>,
    #[serde(default)]
    force_encryption_with_cmek: Option<bool>,
    #[serde(default)]
    cmek_key_arn: Option<String>,
    #[serde(default)]
    require_client_certificate: Option<bool>,
}

/// Checks a customer-managed key setting before it is proposed: `cmek_key_arn` must be a
/// KMS key ARN (400 INVALID_ARGUMENT) that this node can use — a data key made and
/// unwrapped again through it (412 FAILED_PRECONDITION when KMS refuses or the key is
/// disabled, 503 UNAVAILABLE when KMS does not answer) — and
/// `force_encryption_with_cmek: false` does not go with a key (400). Whether the project's
/// state allows the change (on without a key, off again, another key) the control plane
/// decides.
async fn check_cmek(
    state: &ApiState,
    force_encryption_with_cmek: Option<bool>,
    cmek_key_arn: Option<&str>,
) -> Result<(), ApiError> {
    let Some(arn) = cmek_key_arn else {
        return Ok(());
    };
    if force_encryption_with_cmek == Some(false) {
        return Err(ApiError::invalid(
            "'cmek_key_arn' turns customer-managed encryption on: it does not go with \
             'force_encryption_with_cmek': false",
        ));
    }
    crate::crypto::kms::key_region(arn)
        .map_err(|reason| ApiError::invalid(format!("'cmek_key_arn': {reason}")))?;
    state.keys.check_kms_key(arn).await?;
    Ok(())
}

fn check_max_pods(max_pods: Option<u32>) -> Result<(), ApiError> {
    match max_pods {
        Some(n) if n > MAX_PODS_LIMIT => Err(ApiError::invalid(format!(
            "'max_pods' is {n}; the limit is {MAX_PODS_LIMIT}"
        ))),
        _ => Ok(()),
    }
}

/// `POST /admin/projects`: a user or service account that creates a project owns it.
pub async fn create_project(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<CreateProject>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let organization_id = match body.organization_id {
        Some(id) => {
            check_id("organization", &id)?;
            id
        }
        None => {
            let orgs = state.control.read(|s| s.organizations.len());
            if matches!(caller.principal.as_ref(), Principal::Operator { .. }) && orgs > 1 {
                return Err(ApiError::invalid(format!(
                    "the cluster has {orgs} organizations: name one in 'organization_id'"
                )));
            }
            home_organization(&state, &caller)?
        }
    };
    caller.authorize(Target::Organization(&organization_id))?;
    check_name("name", &body.name, MAX_PROJECT_NAME_CHARS)?;
    check_max_pods(body.max_pods)?;
    if body.force_encryption_with_cmek == Some(true) && body.cmek_key_arn.is_none() {
        return Err(ApiError::invalid(
            "'force_encryption_with_cmek': true needs the customer-managed AWS KMS key: give \
             its ARN in 'cmek_key_arn'",
        ));
    }
    check_cmek(
        &state,
        body.force_encryption_with_cmek,
        body.cmek_key_arn.as_deref(),
    )
    .await?;
    let id = uuid::Uuid::new_v4().to_string();
    let key = state.keys.new_project_key(&id).await?;
    let project = Project {
        id,
        organization_id,
        name: body.name,
        max_pods: body.max_pods.unwrap_or(0),
        force_encryption_with_cmek: body.cmek_key_arn.is_some(),
        cmek_key_arn: body.cmek_key_arn,
        require_client_certificate: body.require_client_certificate.unwrap_or(false),
        created_at: crate::now_rfc3339(),
        key,
    };
    let owner = match caller.principal.as_ref() {
        Principal::Member(m) => Some(ProjectMember {
            project_id: project.id.clone(),
            principal_id: m.id.clone(),
            kind: m.kind,
            role: ProjectRole::ProjectOwner,
            created_at: project.created_at.clone(),
        }),
        _ => None,
    };
    match caller
        .propose(Command::Project(ProjectCommand::Create { project, owner }))
        .await?
    {
        Output::Project(p) => Ok((StatusCode::CREATED, Json(project_json(&p)))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /admin/projects`: the projects the caller can see (`ProjectGet`), in its
/// organization (the operator: in every organization).
pub async fn list_projects(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let home = home_organization(&state, &caller)?;
    caller.authorize(Target::Organization(&home))?;
    let data: Vec<Value> = state.control.read(|s| {
        s.projects
            .values()
            .filter(|p| {
                policy::decide(
                    &caller.principal,
                    Operation::ProjectGet,
                    Target::Project {
                        id: &p.id,
                        organization_id: &p.organization_id,
                    },
                )
                .is_ok()
            })
            .map(project_json)
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

/// `GET /admin/projects/{id}`.
pub async fn get_project(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &id)?;
    read_consistency(&state, &headers).await?;
    Ok(Json(project_json(
        &caller.authorize_project(&state, &id).await?,
    )))
}

/// Body of `PATCH /admin/projects/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_pods: Option<u32>,
    #[serde(default)]
    force_encryption_with_cmek: Option<bool>,
    #[serde(default)]
    cmek_key_arn: Option<String>,
    #[serde(default)]
    require_client_certificate: Option<bool>,
}

/// `PATCH /admin/projects/{id}`: rename, quota, customer-managed encryption (a key once
/// set stays, and the requirement cannot be turned off again), whether the data plane
/// requires a client certificate (`require_client_certificate`).
pub async fn update_project(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<UpdateProject>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &id)?;
    caller.authorize_project(&state, &id).await?;
    let Json(body) = body?;
    if let Some(name) = &body.name {
        check_name("name", name, MAX_PROJECT_NAME_CHARS)?;
    }
    check_max_pods(body.max_pods)?;
    check_cmek(
        &state,
        body.force_encryption_with_cmek,
        body.cmek_key_arn.as_deref(),
    )
    .await?;
    let command = Command::Project(ProjectCommand::Update {
        id,
        name: body.name,
        max_pods: body.max_pods,
        force_encryption_with_cmek: body.force_encryption_with_cmek,
        cmek_key_arn: body.cmek_key_arn,
        require_client_certificate: body.require_client_certificate,
    });
    match caller.propose(command).await? {
        Output::Project(p) => Ok(Json(project_json(&p))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /admin/projects/{id}`: deletes the project, its API keys and memberships.
pub async fn delete_project(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id("project", &id)?;
    caller.authorize_project(&state, &id).await?;
    caller
        .propose(Command::Project(ProjectCommand::Delete { id: id.clone() }))
        .await?;
    // Its backups went with it (their keys were wrapped by the project's); their files go
    // now, or at the collector's next pass.
    if let Err(e) = state.backups.store().delete_prefix(&format!("{id}/")).await {
        tracing::warn!(project = %id, "removing the backups of a deleted project: {e}");
    }
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

fn parse_key_roles(names: &[String]) -> Result<Vec<ApiKeyRole>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid("'roles' must name at least one role"));
    }
    let mut roles = Vec::new();
    for name in names {
        let role = ApiKeyRole::parse(name).ok_or_else(|| {
            let known: Vec<&str> = ApiKeyRole::ALL.iter().map(|r| r.as_str()).collect();
            ApiError::invalid(format!(
                "'roles' contains unknown role '{}'; known roles: {}",
                name.chars()
                    .take(MAX_API_KEY_NAME_CHARS)
                    .collect::<String>(),
                known.join(", ")
            ))
        })?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(roles)
}

/// `POST /admin/projects/{id}/api-keys`: the response holds the key's `value`, shown only here.
pub async fn create_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project_id): Path<String>,
    body: Result<Json<CreateApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_id("project", &project_id)?;
    caller.authorize_project(&state, &project_id).await?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_API_KEY_NAME_CHARS)?;
    let roles = parse_key_roles(
        &body
            .roles
            .unwrap_or_else(|| vec![ApiKeyRole::ProjectEditor.as_str().to_string()]),
    )?;
    let secret = auth::new_api_key();
    let key = ApiKey {
        id: secret.id.clone(),
        project_id,
        name: body.name,
        roles,
        secret_sha256: secret.secret_sha256,
        created_at: crate::now_rfc3339(),
    };
    match caller
        .propose(Command::ApiKey(ApiKeyCommand::Create(key)))
        .await?
    {
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
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &project_id)?;
    caller.authorize_project(&state, &project_id).await?;
    let data: Vec<Value> = state
        .control
        .read(|s| s.keys_of(&project_id).into_iter().map(key_json).collect());
    Ok(Json(json!({ "data": data })))
}

/// The `kind` (e.g. "API key") `id` of a project, as `find` reads it (fresh: a miss asks
/// the leader), once the caller is authorized in the project `project_of` names — 404 for
/// one the caller cannot see, as for one that does not exist.
pub(super) async fn authorized_in_project<T>(
    state: &ApiState,
    caller: &Caller,
    kind: &str,
    id: &str,
    find: impl Fn(&crate::control::state::ControlState) -> Option<T>,
    project_of: impl Fn(&T) -> &str,
) -> Result<T, ApiError> {
    check_id(kind, id)?;
    let missing = || ApiError::not_found(format!("{kind} '{id}' not found"));
    let found = state.control.read_fresh(find).await?.ok_or_else(missing)?;
    caller
        .authorize_project(state, project_of(&found))
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                missing()
            } else {
                e
            }
        })?;
    Ok(found)
}

/// The API key `id`, once the caller is authorized in its project.
async fn authorized_key(state: &ApiState, caller: &Caller, id: &str) -> Result<ApiKey, ApiError> {
    authorized_in_project(
        state,
        caller,
        "API key",
        id,
        |s| s.api_keys.get(id).cloned(),
        |k| &k.project_id,
    )
    .await
}

/// `GET /admin/api-keys/{id}`.
pub async fn get_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    read_consistency(&state, &headers).await?;
    Ok(Json(key_json(&authorized_key(&state, &caller, &id).await?)))
}

/// Body of `PATCH /admin/api-keys/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// `PATCH /admin/api-keys/{id}`: rename, or replace the roles (effective on every node
/// within the lease).
pub async fn update_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<UpdateApiKey>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorized_key(&state, &caller, &id).await?;
    let Json(body) = body?;
    if let Some(name) = &body.name {
        check_name("name", name, MAX_API_KEY_NAME_CHARS)?;
    }
    let roles = body.roles.as_deref().map(parse_key_roles).transpose()?;
    let command = Command::ApiKey(ApiKeyCommand::Update {
        id,
        name: body.name,
        roles,
    });
    match caller.propose(command).await? {
        Output::ApiKey(k) => Ok(Json(key_json(&k))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /admin/api-keys/{id}`.
pub async fn delete_api_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorized_key(&state, &caller, &id).await?;
    caller
        .propose(Command::ApiKey(ApiKeyCommand::Delete { id }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

fn parse_node_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid(format!("node id '{id}' is not a number")))
}

/// `POST /admin/cluster/members/{id}/promote`: makes a learner a voter.
pub async fn promote_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.authorize(Target::Cluster)?;
    let node = parse_node_id(&id)?;
    let result =
        membership::change_member(&state.control, node, MemberAction::Promote, false).await;
    membership::record(
        &state.control,
        caller.context(),
        node,
        MemberChange::Promote,
        &result,
    )
    .await;
    result?;
    Ok(StatusCode::OK)
}

/// Query of `DELETE /admin/cluster/members/{id}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RemoveMemberQuery {
    /// Remove the node even if some index then has no reachable replica (those indexes
    /// report `Disabled` until deleted).
    #[serde(default)]
    force: bool,
}

/// `DELETE /admin/cluster/members/{id}[?force=true]`: removes a node from the cluster;
/// 412 naming the indexes when the node holds the last reachable replica of some, unless
/// forced.
pub async fn remove_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<RemoveMemberQuery>,
) -> Result<StatusCode, ApiError> {
    caller.authorize(Target::Cluster)?;
    let node = parse_node_id(&id)?;
    let result =
        membership::change_member(&state.control, node, MemberAction::Remove, query.force).await;
    let change = MemberChange::Remove { force: query.force };
    membership::record(&state.control, caller.context(), node, change, &result).await;
    result?;
    Ok(StatusCode::ACCEPTED)
}

/// The root key of the cluster: the control plane's version and rotation, deletions waiting
/// to be shredded, and each member's keyring (versions by key check value, the version its
/// node data key is wrapped under).
async fn root_keys_json(state: &ApiState) -> Value {
    use crate::control::rotation;
    let (root, rotation_json) = state.control.read(|s| {
        let rotation_json = s.root_keys.rotation.as_ref().map(|r| {
            let (done, total) = rotation::progress(s, r);
            json!({
                "from_version": r.from,
                "to_version": r.to,
                "started_at": r.started_at,
                "reason": r.reason.as_str(),
                "shreds": r.shreds.len(),
                "project_keys_rewrapped": done,
                "project_keys_total": total,
            })
        });
        (s.root_keys.clone(), rotation_json)
    });
    let Some(rotator) = &state.rotator else {
        return json!({
            "provider": "aws-kms",
            "key": state.keys.root().describe(),
            "rotation": null,
            "pending_shreds": root.pending_shreds.len(),
        });
    };
    let nodes: Vec<Value> = rotator
        .member_status()
        .await
        .into_iter()
        .map(|(node, status)| match status {
            Ok(keys) => json!({
                "node_id": node,
                "current_version": keys.keyring.current,
                "versions": keys.keyring.versions.iter().map(|(v, check)| json!({
                    "version": v,
                    "check_value": check,
                })).collect::<Vec<_>>(),
                "node_key_version": keys.node_key_version,
            }),
            Err(e) => json!({ "node_id": node, "error": e }),
        })
        .collect();
    json!({
        "provider": "local-keyring",
        "current_version": root.version(),
        "rotation": rotation_json,
        "rotations": root.rotations,
        "pending_shreds": root.pending_shreds.len(),
        "last_error": rotator.last_error(),
        "nodes": nodes,
    })
}

/// `GET /admin/cluster/root-keys` (operator): the root key's state ([`root_keys_json`]).
pub async fn describe_root_keys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    state.control.linearizable_barrier().await?;
    Ok(Json(root_keys_json(&state).await))
}

/// `POST /admin/cluster/root-keys/rotate` (operator): records a rotation of the local
/// keyring's root key to a new version and answers 202 with the root key's state; the
/// control-plane leader carries it out (follow it with `GET /admin/cluster/root-keys`).
/// 412 `FAILED_PRECONDITION` while one is in progress, or when the root is an AWS KMS key
/// (KMS rotates its key material itself and keeps the old material for decryption).
pub async fn rotate_root_key(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.authorize(Target::Cluster)?;
    if state.rotator.is_none() {
        return Err(ApiError::coded(
            "FAILED_PRECONDITION",
            format!(
                "the root key is the AWS KMS key {}: rotate it in KMS (automatic key \
                 rotation keeps the earlier key material for decryption, so nothing needs \
                 re-wrapping)",
                state.keys.root().describe()
            ),
        ));
    }
    state.control.linearizable_barrier().await?;
    crate::control::rotation::begin(
        &state.control,
        caller.context(),
        crate::control::root_keys::RotationReason::Requested,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(root_keys_json(&state).await)))
}
