//! Admin REST API for principals: organizations, their members (users) and service accounts,
//! project members, operator tokens and token-signing keys. Secrets (passwords, client
//! secrets, operator tokens) are taken or shown once and stored only hashed.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::Caller;
use super::admin::{check_id, check_name, home_organization};
use super::{ApiError, ApiState};
use crate::auth::{self, token, Principal};
use crate::control::identity::{MAX_CERTIFICATE_NAMES_PER_ACCOUNT, MAX_CERTIFICATE_NAME_BYTES};
use crate::control::state::OrganizationCommand;
use crate::control::state::{
    IdentityCommand, MemberKind, OperatorToken, OrgRole, Organization, ProjectMember, ProjectRole,
    ServiceAccount, User,
};
use crate::control::{Command, Output};
use crate::policy::{self, Target};

/// Longest organization name, in characters.
pub const MAX_ORGANIZATION_NAME_CHARS: usize = 512;
/// Longest email address (RFC 5321's path limit), in bytes.
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest user or service-account display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 128;

fn org_json(o: &Organization) -> Value {
    json!({ "id": o.id, "name": o.name, "created_at": o.created_at })
}

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "role": u.role.as_str(),
        "organization_id": u.organization_id,
        "created_at": u.created_at,
    })
}

fn account_json(a: &ServiceAccount) -> Value {
    json!({
        "id": a.id,
        "client_id": a.id,
        "name": a.name,
        "role": a.role.as_str(),
        "organization_id": a.organization_id,
        "created_at": a.created_at,
        "certificate_names": a.certificate_names,
    })
}

/// Checks `certificate_names` of a service-account body: at most
/// [`MAX_CERTIFICATE_NAMES_PER_ACCOUNT`], each 1 to [`MAX_CERTIFICATE_NAME_BYTES`] bytes of
/// printable ASCII (a DNS name, an email address, a URI or a common name) without
/// surrounding spaces, none twice (400 naming the first that is not).
fn check_certificate_names(names: &[String]) -> Result<(), ApiError> {
    if names.len() > MAX_CERTIFICATE_NAMES_PER_ACCOUNT {
        return Err(ApiError::invalid(format!(
            "'certificate_names' holds {} names; the limit is {MAX_CERTIFICATE_NAMES_PER_ACCOUNT}",
            names.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let printable = name.bytes().all(|b| (0x20..0x7f).contains(&b));
        if name.is_empty()
            || name.len() > MAX_CERTIFICATE_NAME_BYTES
            || !printable
            || name.trim() != name
        {
            return Err(ApiError::invalid(format!(
                "certificate name {:?} must be 1 to {MAX_CERTIFICATE_NAME_BYTES} bytes of \
                 printable ASCII without surrounding spaces (a DNS name, email address, URI or \
                 common name the certificate carries)",
                name.chars().take(64).collect::<String>()
            )));
        }
        if !seen.insert(name) {
            return Err(ApiError::invalid(format!(
                "certificate name '{name}' is given twice"
            )));
        }
    }
    Ok(())
}

fn member_json(m: &ProjectMember) -> Value {
    json!({
        "principal_id": m.principal_id,
        "principal_type": m.kind.as_str(),
        "role": m.role.as_str(),
        "project_id": m.project_id,
        "created_at": m.created_at,
    })
}

fn unexpected(other: Output) -> ApiError {
    ApiError::internal(format!("unexpected outcome {other:?}"))
}

fn parse_org_role(name: &str) -> Result<OrgRole, ApiError> {
    OrgRole::parse(name).ok_or_else(|| {
        let known: Vec<&str> = OrgRole::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::invalid(format!(
            "'role' is not an organization role; known roles: {}",
            known.join(", ")
        ))
    })
}

fn parse_project_role(name: &str) -> Result<ProjectRole, ApiError> {
    ProjectRole::parse(name).ok_or_else(|| {
        let known: Vec<&str> = ProjectRole::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::invalid(format!(
            "'role' is not a project role; known roles: {}",
            known.join(", ")
        ))
    })
}

/// Refuses when the caller may not give or take away `role` in `org` (only the operator and
/// organization owners touch `OrgOwner`).
fn check_role_management(caller: &Caller, org: &str, role: OrgRole) -> Result<(), ApiError> {
    if policy::may_manage_org_role(&caller.principal, org, role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "only organization owners and the operator may grant, change or remove {}",
            role.as_str()
        )))
    }
}

/// Body naming an organization.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationBody {
    name: String,
}

/// `POST /admin/organizations` (operator).
pub async fn create_organization(
    caller: Caller,
    body: Result<Json<OrganizationBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.authorize(Target::Cluster)?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_ORGANIZATION_NAME_CHARS)?;
    let org = Organization {
        id: uuid::Uuid::new_v4().to_string(),
        name: body.name,
        created_at: crate::now_rfc3339(),
    };
    match caller
        .propose(Command::Organization(OrganizationCommand::Create(org)))
        .await?
    {
        Output::Organization(o) => Ok((StatusCode::CREATED, Json(org_json(&o)))),
        other => Err(unexpected(other)),
    }
}

/// `GET /admin/organizations`: the caller's organization (the operator: all).
pub async fn list_organizations(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let home = home_organization(&state, &caller)?;
    caller.authorize(Target::Organization(&home))?;
    let all = matches!(caller.principal.as_ref(), Principal::Operator { .. });
    let data: Vec<Value> = state.control.read(|s| {
        s.organizations
            .values()
            .filter(|o| all || o.id == home)
            .map(org_json)
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

async fn authorized_org(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Organization, ApiError> {
    check_id("organization", id)?;
    caller.authorize(Target::Organization(id))?;
    state
        .control
        .read_fresh(|s| s.organizations.get(id).cloned())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("organization '{id}' not found")))
}

/// `GET /admin/organizations/{id}`.
pub async fn get_organization(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(org_json(&authorized_org(&state, &caller, &id).await?)))
}

/// `PATCH /admin/organizations/{id}`: rename.
pub async fn update_organization(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<OrganizationBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorized_org(&state, &caller, &id).await?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_ORGANIZATION_NAME_CHARS)?;
    match caller
        .propose(Command::Organization(OrganizationCommand::Rename {
            id,
            name: body.name,
        }))
        .await?
    {
        Output::Organization(o) => Ok(Json(org_json(&o))),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /admin/organizations/{id}`: only once it has no projects; removes its members
/// and service accounts.
pub async fn delete_organization(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorized_org(&state, &caller, &id).await?;
    caller
        .propose(Command::Organization(OrganizationCommand::Delete { id }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /admin/organizations/{id}/members`.
pub async fn list_members(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorized_org(&state, &caller, &id).await?;
    let data: Vec<Value> = state
        .control
        .read(|s| s.users_of(&id).into_iter().map(user_json).collect());
    Ok(Json(json!({ "data": data })))
}

/// Body of `POST /admin/organizations/{id}/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    email: String,
    #[serde(default)]
    name: Option<String>,
    role: String,
    password: String,
}

/// A user's email: at most [`MAX_EMAIL_BYTES`], an address as RFC 5322 defines it with a
/// dotted domain; returned lowercased (emails name users case-insensitively).
fn check_email(email: &str) -> Result<String, ApiError> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err(ApiError::invalid(format!(
            "'email' is {} bytes; the limit is {MAX_EMAIL_BYTES}",
            email.len()
        )));
    }
    // RFC 5322 addresses (the `email_address` crate) with a domain of at least two labels,
    // no display name and no IP literal: `a@@b.c`, `a@b.` and `<a@b.c>` are refused.
    let options = email_address::Options {
        minimum_sub_domains: 2,
        allow_domain_literal: false,
        allow_display_text: false,
        ..email_address::Options::default()
    };
    let valid = email_address::EmailAddress::parse_with_options(email, options).is_ok()
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(ApiError::invalid(format!(
            "'email' {:?} is not an email address",
            email.chars().take(MAX_EMAIL_BYTES).collect::<String>()
        )));
    }
    Ok(email.to_lowercase())
}

/// `POST /admin/organizations/{id}/members`: creates a user who signs in with the password
/// given (the self-hosted stand-in for an email invitation).
pub async fn create_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path(org): Path<String>,
    body: Result<Json<CreateMember>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorized_org(&state, &caller, &org).await?;
    let Json(body) = body?;
    let role = parse_org_role(&body.role)?;
    check_role_management(&caller, &org, role)?;
    let email = check_email(&body.email)?;
    let name = body.name.unwrap_or_else(|| email.clone());
    check_name("name", &name, MAX_DISPLAY_NAME_CHARS)?;
    let password_phc = state.signin.hash_new_password(body.password).await?;
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org,
        email,
        name,
        role,
        password_phc,
        credential_version: 0,
        created_at: crate::now_rfc3339(),
    };
    match caller
        .propose(Command::Identity(IdentityCommand::CreateUser(user)))
        .await?
    {
        Output::User(u) => Ok((StatusCode::CREATED, Json(user_json(&u)))),
        other => Err(unexpected(other)),
    }
}

/// The user `user_id` of organization `org` (404 for a user of another organization).
async fn user_in(state: &ApiState, org: &str, user_id: &str) -> Result<User, ApiError> {
    check_id("user", user_id)?;
    state
        .control
        .read_fresh(|s| s.users.get(user_id).cloned())
        .await?
        .filter(|u| u.organization_id == org)
        .ok_or_else(|| ApiError::not_found(format!("user '{user_id}' not found")))
}

/// Body of `PATCH /admin/organizations/{id}/members/{user_id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `PATCH /admin/organizations/{id}/members/{user_id}`: change the role and/or set a new
/// password (which signs the user out everywhere).
pub async fn update_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path((org, user_id)): Path<(String, String)>,
    body: Result<Json<UpdateMember>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorized_org(&state, &caller, &org).await?;
    let user = user_in(&state, &org, &user_id).await?;
    check_role_management(&caller, &org, user.role)?;
    let Json(body) = body?;
    if body.role.is_none() && body.password.is_none() {
        return Err(ApiError::invalid("give 'role' and/or 'password'"));
    }
    // Setting someone's password takes over their account: owners and the operator only,
    // checked before anything changes.
    if body.password.is_some()
        && !policy::may_manage_org_role(&caller.principal, &org, OrgRole::OrgOwner)
    {
        return Err(ApiError::forbidden(
            "only organization owners and the operator may set a member's password",
        ));
    }
    let mut latest = user;
    if let Some(role) = body.role.as_deref().map(parse_org_role).transpose()? {
        check_role_management(&caller, &org, role)?;
        match caller
            .propose(Command::Identity(IdentityCommand::SetUserRole {
                id: user_id.clone(),
                role,
            }))
            .await?
        {
            Output::User(u) => latest = u,
            other => return Err(unexpected(other)),
        }
    }
    if let Some(password) = body.password {
        let password_phc = state.signin.hash_new_password(password).await?;
        match caller
            .propose(Command::Identity(IdentityCommand::SetUserPassword {
                id: user_id,
                password_phc,
            }))
            .await?
        {
            Output::User(u) => latest = u,
            other => return Err(unexpected(other)),
        }
    }
    Ok(Json(user_json(&latest)))
}

/// `DELETE /admin/organizations/{id}/members/{user_id}`: removes the user, their project
/// memberships and (within the lease) their tokens.
pub async fn remove_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path((org, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorized_org(&state, &caller, &org).await?;
    let user = user_in(&state, &org, &user_id).await?;
    check_role_management(&caller, &org, user.role)?;
    caller
        .propose(Command::Identity(IdentityCommand::DeleteUser {
            id: user_id,
        }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /admin/organizations/{id}/service-accounts`.
pub async fn list_service_accounts(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorized_org(&state, &caller, &id).await?;
    let data: Vec<Value> = state.control.read(|s| {
        s.service_accounts_of(&id)
            .into_iter()
            .map(account_json)
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

/// Body of `POST /admin/organizations/{id}/service-accounts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    name: String,
    #[serde(default)]
    role: Option<String>,
}

/// `POST /admin/organizations/{id}/service-accounts`: the response holds `client_secret`,
/// shown only here.
pub async fn create_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    Path(org): Path<String>,
    body: Result<Json<CreateServiceAccount>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorized_org(&state, &caller, &org).await?;
    let Json(body) = body?;
    check_name("name", &body.name, MAX_DISPLAY_NAME_CHARS)?;
    let role = match body.role.as_deref() {
        Some(name) => parse_org_role(name)?,
        None => OrgRole::OrgMember,
    };
    check_role_management(&caller, &org, role)?;
    let (secret, secret_sha256) = auth::new_client_secret();
    let account = ServiceAccount {
        id: uuid::Uuid::new_v4().simple().to_string(),
        organization_id: org,
        name: body.name,
        role,
        secret_sha256,
        credential_version: 0,
        created_at: crate::now_rfc3339(),
        certificate_names: Vec::new(),
    };
    match caller
        .propose(Command::Identity(IdentityCommand::CreateServiceAccount(
            account,
        )))
        .await?
    {
        Output::ServiceAccount(a) => {
            let mut body = account_json(&a);
            body["client_secret"] = json!(secret);
            Ok((StatusCode::CREATED, Json(body)))
        }
        other => Err(unexpected(other)),
    }
}

/// The service account `id`, once the caller is authorized in its organization.
async fn authorized_account(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<ServiceAccount, ApiError> {
    check_id("service account", id)?;
    let missing = || ApiError::not_found(format!("service account '{id}' not found"));
    let account = state
        .control
        .read_fresh(|s| s.service_accounts.get(id).cloned())
        .await?
        .ok_or_else(missing)?;
    caller
        .authorize(Target::Organization(&account.organization_id))
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                missing()
            } else {
                e
            }
        })?;
    check_role_management(caller, &account.organization_id, account.role)?;
    Ok(account)
}

/// Body of `PATCH /admin/service-accounts/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceAccount {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// `PATCH /admin/service-accounts/{id}`: rename and/or change the organization role.
pub async fn update_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<UpdateServiceAccount>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let account = authorized_account(&state, &caller, &id).await?;
    let Json(body) = body?;
    if let Some(name) = &body.name {
        check_name("name", name, MAX_DISPLAY_NAME_CHARS)?;
    }
    let role = body.role.as_deref().map(parse_org_role).transpose()?;
    if let Some(role) = role {
        check_role_management(&caller, &account.organization_id, role)?;
    }
    match caller
        .propose(Command::Identity(IdentityCommand::UpdateServiceAccount {
            id,
            name: body.name,
            role,
            certificate_names: None,
        }))
        .await?
    {
        Output::ServiceAccount(a) => Ok(Json(account_json(&a))),
        other => Err(unexpected(other)),
    }
}

/// Body of `PUT /admin/service-accounts/{id}/certificate-names`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCertificateNames {
    certificate_names: Vec<String>,
}

/// `PUT /admin/service-accounts/{id}/certificate-names` (the operator's): the names of the
/// client certificates of the client CA that authenticate as the account from now on,
/// replacing the earlier ones (`[]` unbinds them all; the account's certificates stop
/// working within the lease). 409 naming the holder if a name is bound to another account
/// (the operator sees every organization).
pub async fn set_certificate_names(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<SetCertificateNames>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorized_account(&state, &caller, &id).await?;
    let Json(body) = body?;
    check_certificate_names(&body.certificate_names)?;
    match caller
        .propose(Command::Identity(IdentityCommand::UpdateServiceAccount {
            id,
            name: None,
            role: None,
            certificate_names: Some(body.certificate_names),
        }))
        .await?
    {
        Output::ServiceAccount(a) => Ok(Json(account_json(&a))),
        other => Err(unexpected(other)),
    }
}

/// `POST /admin/service-accounts/{id}/rotate-secret`: a new secret, shown only here; the old
/// one and every token issued with it stop working (within the lease).
pub async fn rotate_service_account_secret(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorized_account(&state, &caller, &id).await?;
    let (secret, secret_sha256) = auth::new_client_secret();
    match caller
        .propose(Command::Identity(
            IdentityCommand::RotateServiceAccountSecret { id, secret_sha256 },
        ))
        .await?
    {
        Output::ServiceAccount(a) => {
            let mut body = account_json(&a);
            body["client_secret"] = json!(secret);
            Ok(Json(body))
        }
        other => Err(unexpected(other)),
    }
}

/// `DELETE /admin/service-accounts/{id}`.
pub async fn delete_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorized_account(&state, &caller, &id).await?;
    caller
        .propose(Command::Identity(IdentityCommand::DeleteServiceAccount {
            id,
        }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /admin/projects/{id}/members`.
pub async fn list_project_members(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &project_id)?;
    caller.authorize_project(&state, &project_id).await?;
    let data: Vec<Value> = state.control.read(|s| {
        s.members_of(&project_id)
            .into_iter()
            .map(member_json)
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

/// Body of `POST /admin/projects/{id}/members`: a user (by `user_id` or `email`) or a
/// service account (`service_account_id`), and the role.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProjectMember {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    service_account_id: Option<String>,
    role: String,
}

/// `POST /admin/projects/{id}/members`.
pub async fn add_project_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path(project_id): Path<String>,
    body: Result<Json<AddProjectMember>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_id("project", &project_id)?;
    let project = caller.authorize_project(&state, &project_id).await?;
    let Json(body) = body?;
    let role = parse_project_role(&body.role)?;
    let (principal_id, kind) = match (body.user_id, body.email, body.service_account_id) {
        (Some(id), None, None) => (id, MemberKind::User),
        (None, Some(email), None) => {
            let email = check_email(&email)?;
            let id = state
                .control
                .read(|s| {
                    s.user_by_email(&email)
                        .filter(|u| u.organization_id == project.organization_id)
                        .map(|u| u.id.clone())
                })
                .ok_or_else(|| ApiError::not_found(format!("user '{email}' not found")))?;
            (id, MemberKind::User)
        }
        (None, None, Some(id)) => (id, MemberKind::ServiceAccount),
        _ => {
            return Err(ApiError::invalid(
                "name exactly one of 'user_id', 'email' or 'service_account_id'",
            ))
        }
    };
    check_id(kind.as_str(), &principal_id)?;
    let member = ProjectMember {
        project_id,
        principal_id,
        kind,
        role,
        created_at: crate::now_rfc3339(),
    };
    match caller
        .propose(Command::Identity(IdentityCommand::AddProjectMember(member)))
        .await?
    {
        Output::ProjectMember(m) => Ok((StatusCode::CREATED, Json(member_json(&m)))),
        other => Err(unexpected(other)),
    }
}

/// Body of `PATCH /admin/projects/{id}/members/{principal_id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectMember {
    role: String,
}

/// `PATCH /admin/projects/{id}/members/{principal_id}`.
pub async fn update_project_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path((project_id, principal_id)): Path<(String, String)>,
    body: Result<Json<UpdateProjectMember>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_id("project", &project_id)?;
    check_id("project member", &principal_id)?;
    caller.authorize_project(&state, &project_id).await?;
    let Json(body) = body?;
    let role = parse_project_role(&body.role)?;
    match caller
        .propose(Command::Identity(IdentityCommand::SetProjectMemberRole {
            project_id,
            principal_id,
            role,
        }))
        .await?
    {
        Output::ProjectMember(m) => Ok(Json(member_json(&m))),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /admin/projects/{id}/members/{principal_id}`.
pub async fn remove_project_member(
    State(state): State<ApiState>,
    caller: Caller,
    Path((project_id, principal_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_id("project", &project_id)?;
    check_id("project member", &principal_id)?;
    caller.authorize_project(&state, &project_id).await?;
    caller
        .propose(Command::Identity(IdentityCommand::RemoveProjectMember {
            project_id,
            principal_id,
        }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

fn new_operator_token() -> (OperatorToken, String) {
    let secret = auth::new_operator_token();
    (
        OperatorToken {
            id: secret.id,
            secret_sha256: secret.secret_sha256,
            created_at: crate::now_rfc3339(),
        },
        secret.value,
    )
}

/// `GET /admin/operator-tokens`: ids and creation times.
pub async fn list_operator_tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    let data: Vec<Value> = state.control.read(|s| {
        s.operator_tokens
            .values()
            .map(|t| json!({ "id": t.id, "created_at": t.created_at }))
            .collect()
    });
    Ok(Json(json!({ "data": data })))
}

/// `POST /admin/operator-tokens`: a further operator token, its value shown only here.
pub async fn create_operator_token(caller: Caller) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.authorize(Target::Cluster)?;
    let (token, value) = new_operator_token();
    let id = token.id.clone();
    caller
        .propose(Command::Identity(IdentityCommand::CreateOperatorToken(
            token,
        )))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "value": value })),
    ))
}

/// `POST /admin/operator-tokens/{id}/rotate`: replaces the token in one step.
pub async fn rotate_operator_token(
    caller: Caller,
    Path(old_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    check_id("operator token", &old_id)?;
    let (new, value) = new_operator_token();
    let id = new.id.clone();
    caller
        .propose(Command::Identity(IdentityCommand::RotateOperatorToken {
            old_id,
            new,
        }))
        .await?;
    Ok(Json(json!({ "id": id, "value": value })))
}

/// `DELETE /admin/operator-tokens/{id}`.
pub async fn delete_operator_token(
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.authorize(Target::Cluster)?;
    check_id("operator token", &id)?;
    caller
        .propose(Command::Identity(IdentityCommand::DeleteOperatorToken {
            id,
        }))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /admin/signing-keys/rotate`: new tokens are signed with a new key; tokens signed
/// with the previous key stay valid until they expire, older ones are refused.
pub async fn rotate_signing_key(caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    let key = token::new_signing_key();
    let id = key.id.clone();
    caller
        .propose(Command::Identity(IdentityCommand::RotateSigningKey(key)))
        .await?;
    Ok(Json(json!({ "id": id })))
}

#[cfg(test)]
mod tests {
    use super::check_email;

    #[test]
    fn emails_are_addresses_with_a_dotted_domain() {
        assert_eq!(check_email("Ana@Example.com").unwrap(), "ana@example.com");
        assert!(check_email("first.last+tag@mail.example.co").is_ok());
        for bad in [
            "a@@b.c",
            "a@b.",
            "a@b",
            "@b.c",
            "a b@c.d",
            "<a@b.c>",
            "a@[127.0.0.1]",
            "a@.b.c",
            "a@b..c",
            "",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} accepted");
        }
    }
}
