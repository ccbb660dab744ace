//! The control plane's side of the audit log: what each command is, in the seed's
//! vocabulary ([`describe`]), and the event of a command named from the state ([`event`]).
//! The `audit` library below knows no control-plane type; this is where commands and
//! principals become its resources and names.

use serde::Serialize;
use serde_json::Value;

use super::identity::IdentityCommand;
use super::state::{Command, ControlState, MemberKind, Rejection};
use crate::audit::{
    ActorRef, AuditContext, AuditEvent, EventNames, EventOutcome, Params, PrincipalType, Resource,
    ResourceType, Verb,
};

impl From<MemberKind> for PrincipalType {
    fn from(kind: MemberKind) -> Self {
        match kind {
            MemberKind::User => PrincipalType::User,
            MemberKind::ServiceAccount => PrincipalType::ServiceAccount,
        }
    }
}

/// The project-member resource of a principal kind: users are `user` (the seed's "invite
/// project member"), service accounts `service-account`.
pub fn member_resource_type(kind: MemberKind) -> ResourceType {
    match kind {
        MemberKind::User => ResourceType::User,
        MemberKind::ServiceAccount => ResourceType::ServiceAccount,
    }
}

/// The outcome of a command the state machine rejected: the rejection's error code (the
/// one its client receives) and message.
pub fn rejected(rejection: &Rejection) -> EventOutcome {
    EventOutcome::failure(rejection.error_code(), &rejection.to_string())
}

/// The event of `context` for `resource`, its actor and organization named from `state`:
/// the resource's organization, else the actor's (an API key's is its project's), when it
/// exists.
pub fn event(
    state: &ControlState,
    context: &AuditContext,
    resource: Resource,
    outcome: EventOutcome,
) -> AuditEvent {
    let actor_org = context.actor.organization_id.clone().or_else(|| {
        (context.actor.principal_type == PrincipalType::ApiKey)
            .then(|| state.api_keys.get(&context.actor.principal_id))
            .flatten()
            .and_then(|k| project_org(state, &k.project_id))
    });
    let organization = resource
        .organization_id
        .clone()
        .or(actor_org)
        .and_then(|id| state.organizations.get(&id))
        .map(|o| (o.id.clone(), o.name.clone()));
    let names = EventNames {
        actor: actor_names(state, &context.actor),
        organization,
    };
    crate::audit::build_event(context, resource, outcome, names)
}

fn roles_param<T: Serialize>(roles: &[T]) -> Value {
    serde_json::to_value(roles).unwrap_or(Value::Null)
}

fn project_org(state: &ControlState, project_id: &str) -> Option<String> {
    state
        .projects
        .get(project_id)
        .map(|p| p.organization_id.clone())
}

fn member_name(state: &ControlState, kind: MemberKind, id: &str) -> Option<String> {
    match kind {
        MemberKind::User => state.users.get(id).map(|u| u.email.clone()),
        MemberKind::ServiceAccount => state.service_accounts.get(id).map(|a| a.name.clone()),
    }
}

fn principal_kind(state: &ControlState, id: &str) -> Option<MemberKind> {
    if state.users.contains_key(id) {
        Some(MemberKind::User)
    } else if state.service_accounts.contains_key(id) {
        Some(MemberKind::ServiceAccount)
    } else {
        None
    }
}

/// How the seed names a member in `resource_id`: a user by email, a service account (which
/// the seed does not list) by its id.
fn member_handle(state: &ControlState, kind: MemberKind, id: &str) -> String {
    match kind {
        MemberKind::User => member_name(state, kind, id).unwrap_or_else(|| id.to_string()),
        MemberKind::ServiceAccount => id.to_string(),
    }
}

/// The field naming a member in an object `resource_id` (`{user, role}`).
fn member_field(kind: MemberKind) -> &'static str {
    match kind {
        MemberKind::User => "user",
        MemberKind::ServiceAccount => "service_account",
    }
}

/// What `command` does to what, read from the state before it applies, in the seed's
/// vocabulary (its tables give `action`, `resource_type` and `resource_id` for each row).
/// Secrets (hashes, keys) never become parameters.
pub fn describe(state: &ControlState, command: &Command) -> Resource {
    use ResourceType as T;
    use Verb as V;
    match command {
        Command::Bootstrap {
            organization,
            project,
            api_key,
            ..
        } => Resource::new(V::Create, T::Organization, Some(&organization.id))
            .id(Some(organization.name.as_str()))
            .named(Some(&organization.name))
            .in_org(Some(&organization.id))
            .params(
                Params::default()
                    .with("project_id", project.id.as_str())
                    .with("project_name", project.name.as_str())
                    .with("api_key_id", api_key.id.as_str()),
            ),
        Command::CreateProject { project, owner } => {
            Resource::new(V::Create, T::Project, Some(&project.id))
                .id(Some(project.name.as_str()))
                .named(Some(&project.name))
                .in_org(Some(&project.organization_id))
                .params(
                    Params::default()
                        .with("name", project.name.as_str())
                        .with("max_pods", project.max_pods)
                        .with(
                            "force_encryption_with_cmek",
                            project.force_encryption_with_cmek,
                        )
                        .with_some("owner_id", owner.as_ref().map(|o| o.principal_id.as_str())),
                )
        }
        Command::UpdateProject {
            id,
            name,
            max_pods,
            force_encryption_with_cmek,
        } => {
            let mut resource = project_resource(state, V::Update, id);
            // A rename is recorded under the new name, as the seed's organization rename is.
            if let Some(name) = name {
                resource = resource.id(Some(name.as_str()));
            }
            resource.params(
                Params::default()
                    .with_some("name", name.as_deref())
                    .with_some("max_pods", *max_pods)
                    .with_some("force_encryption_with_cmek", *force_encryption_with_cmek),
            )
        }
        Command::DeleteProject { id } => project_resource(state, V::Delete, id),
        Command::CreateApiKey(key) => Resource::new(V::Create, T::ApiKey, Some(&key.id))
            .id(Some(key.id.as_str()))
            .named(Some(&key.name))
            .in_org(project_org(state, &key.project_id).as_deref())
            .params(
                Params::default()
                    .with("project_id", key.project_id.as_str())
                    .with("name", key.name.as_str())
                    .with("roles", roles_param(&key.roles)),
            ),
        Command::DeleteApiKey { id } => key_resource(state, V::Delete, id),
        Command::UpdateApiKey { id, name, roles } => {
            let mut resource = key_resource(state, V::Update, id);
            resource.parameters = resource
                .parameters
                .with_some("name", name.as_deref())
                .with_some("roles", roles.as_ref().map(|r| roles_param(r)));
            resource
        }
        Command::CreateOrganization(org) => {
            Resource::new(V::Create, T::Organization, Some(&org.id))
                .id(Some(org.name.as_str()))
                .named(Some(&org.name))
                .in_org(Some(&org.id))
                .params(Params::default().with("name", org.name.as_str()))
        }
        Command::RenameOrganization { id, name } => org_resource(state, V::Update, id)
            .id(Some(name.as_str()))
            .params(Params::default().with("name", name.as_str())),
        Command::DeleteOrganization { id } => org_resource(state, V::Delete, id),
        Command::Identity(identity) => describe_identity(state, identity),
        Command::CreateIndex { index, .. } => {
            index_resource(state, V::Create, &index.project_id, &index.name).params(
                Params::default()
                    .with("project_id", index.project_id.as_str())
                    .with("dimension", index.dimension)
                    .with("metric", index.metric.as_str())
                    .with("vector_type", index.vector_type.as_str())
                    .with("deletion_protection", index.deletion_protection),
            )
        }
        Command::ConfigureIndex {
            project_id,
            name,
            deletion_protection,
            tags_json,
        } => index_resource(state, V::Update, project_id, name).params(
            Params::default()
                .with("project_id", project_id.as_str())
                .with_some("deletion_protection", *deletion_protection)
                .with_some(
                    "tags",
                    tags_json
                        .as_deref()
                        .and_then(|t| serde_json::from_str::<Value>(t).ok()),
                ),
        ),
        Command::DeleteIndex { project_id, name } => {
            index_resource(state, V::Delete, project_id, name)
                .params(Params::default().with("project_id", project_id.as_str()))
        }
        Command::MarkIndexReady { group_id } => {
            let index = state.index_of_group(*group_id);
            let resource = match index {
                Some(i) => index_resource(state, V::Update, &i.project_id, &i.name),
                None => Resource::new(V::Update, T::Index, None),
            };
            resource.params(Params::default().with("group_id", *group_id))
        }
        Command::SignIn { principal_id, kind } => {
            let org = match kind {
                MemberKind::User => state.users.get(principal_id).map(|u| &u.organization_id),
                MemberKind::ServiceAccount => state
                    .service_accounts
                    .get(principal_id)
                    .map(|a| &a.organization_id),
            };
            Resource::new(V::Login, member_resource_type(*kind), Some(principal_id))
                .id(Some(member_handle(state, *kind, principal_id)))
                .named(member_name(state, *kind, principal_id).as_deref())
                .in_org(org.map(String::as_str))
        }
        Command::Audited { .. } | Command::RecordAudit(_) | Command::PurgeAudit { .. } => {
            Resource::new(V::Update, T::AuditLog, None)
        }
        Command::Membership(record) => describe_membership(record),
    }
}

/// A membership change: the cluster, named by the node changed (as a refused promote or
/// remove names it), on the cluster chain.
fn describe_membership(record: &super::membership::MembershipRecord) -> Resource {
    use super::membership::MemberChange;
    let node = record.node_id.to_string();
    let (verb, params) = match &record.change {
        MemberChange::Join {
            cluster_addr,
            api_addr,
            voter,
        } => (
            Verb::Create,
            Params::default()
                .with("cluster_addr", cluster_addr.as_str())
                .with("api_addr", api_addr.as_str())
                .with("voter", *voter),
        ),
        MemberChange::Promote => (Verb::Update, Params::default()),
        MemberChange::Remove { force } => (Verb::Delete, Params::default().with("force", *force)),
    };
    Resource::new(verb, ResourceType::Cluster, Some(&node))
        .id(Some(node.as_str()))
        .params(params.with("node_id", record.node_id))
}

fn project_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let project = state.projects.get(id);
    Resource::new(action, ResourceType::Project, Some(id))
        .id(project.map(|p| p.name.as_str()))
        .named(project.map(|p| p.name.as_str()))
        .in_org(project.map(|p| p.organization_id.as_str()))
}

fn key_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let key = state.api_keys.get(id);
    let org = key.and_then(|k| project_org(state, &k.project_id));
    Resource::new(action, ResourceType::ApiKey, Some(id))
        .id(Some(id))
        .named(key.map(|k| k.name.as_str()))
        .in_org(org.as_deref())
        .params(Params::default().with_some("project_id", key.map(|k| k.project_id.as_str())))
}

fn org_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let name = state.organizations.get(id).map(|o| o.name.as_str());
    Resource::new(action, ResourceType::Organization, Some(id))
        .id(name)
        .named(name)
        .in_org(Some(id))
}

fn index_resource(state: &ControlState, action: Verb, project_id: &str, name: &str) -> Resource {
    Resource::new(action, ResourceType::Index, None)
        .id(Some(name))
        .named(Some(name))
        .in_org(project_org(state, project_id).as_deref())
}

/// A user of an organization, named by email in `resource_id` (the seed's "delete org
/// member"; callers replace it for the rows that name more).
fn user_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let user = state.users.get(id);
    Resource::new(action, ResourceType::User, Some(id))
        .id(user.map(|u| u.email.as_str()))
        .named(user.map(|u| u.email.as_str()))
        .in_org(user.map(|u| u.organization_id.as_str()))
}

fn account_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let account = state.service_accounts.get(id);
    Resource::new(action, ResourceType::ServiceAccount, Some(id))
        .id(Some(id))
        .named(account.map(|a| a.name.as_str()))
        .in_org(account.map(|a| a.organization_id.as_str()))
}

/// A project membership: a `user` (or `service-account`) resource; `resource_id` is set by
/// the caller to the seed's form of its row.
fn membership_resource(
    state: &ControlState,
    action: Verb,
    project_id: &str,
    principal_id: &str,
    kind: Option<MemberKind>,
) -> Resource {
    let kind = kind.or_else(|| principal_kind(state, principal_id));
    Resource::new(
        action,
        member_resource_type(kind.unwrap_or(MemberKind::User)),
        Some(principal_id),
    )
    .named(
        kind.and_then(|k| member_name(state, k, principal_id))
            .as_deref(),
    )
    .in_org(project_org(state, project_id).as_deref())
    .params(
        Params::default()
            .with("project_id", project_id)
            .with_some("member_type", kind.map(MemberKind::as_str)),
    )
}

fn describe_identity(state: &ControlState, command: &IdentityCommand) -> Resource {
    use IdentityCommand as C;
    use ResourceType as T;
    use Verb as V;
    match command {
        C::CreateUser(user) => Resource::new(V::Create, T::User, Some(&user.id))
            .id(Some(serde_json::json!([user.email])))
            .named(Some(&user.email))
            .in_org(Some(&user.organization_id))
            .params(
                Params::default()
                    .with("email", user.email.as_str())
                    .with("name", user.name.as_str())
                    .with("role", user.role.as_str()),
            ),
        C::SetUserRole { id, role } => {
            let email = state.users.get(id).map(|u| u.email.clone());
            user_resource(state, V::Update, id)
                .id(Some(
                    serde_json::json!({"user": email, "role": role.as_str()}),
                ))
                .params(Params::default().with("role", role.as_str()))
        }
        C::SetUserPassword { id, .. } => user_resource(state, V::Update, id),
        C::DeleteUser { id } => user_resource(state, V::Delete, id),
        C::CreateServiceAccount(account) => {
            Resource::new(V::Create, T::ServiceAccount, Some(&account.id))
                .id(Some(account.id.as_str()))
                .named(Some(&account.name))
                .in_org(Some(&account.organization_id))
                .params(
                    Params::default()
                        .with("name", account.name.as_str())
                        .with("role", account.role.as_str()),
                )
        }
        C::UpdateServiceAccount { id, name, role } => account_resource(state, V::Update, id)
            .params(
                Params::default()
                    .with_some("name", name.as_deref())
                    .with_some("role", role.map(|r| r.as_str())),
            ),
        C::RotateServiceAccountSecret { id, .. } => account_resource(state, V::Update, id),
        C::DeleteServiceAccount { id } => account_resource(state, V::Delete, id),
        C::AddProjectMember(member) => {
            let handle = member_handle(state, member.kind, &member.principal_id);
            let mut resource = membership_resource(
                state,
                V::Create,
                &member.project_id,
                &member.principal_id,
                Some(member.kind),
            )
            .id(Some(serde_json::json!([handle])));
            resource.parameters = resource
                .parameters
                .with("member_type", member.kind.as_str())
                .with("role", member.role.as_str());
            resource
        }
        C::SetProjectMemberRole {
            project_id,
            principal_id,
            role,
        } => {
            let mut resource =
                membership_resource(state, V::Update, project_id, principal_id, None);
            let kind = principal_kind(state, principal_id).unwrap_or(MemberKind::User);
            resource = resource.id(Some(serde_json::json!({
                member_field(kind): member_handle(state, kind, principal_id),
                "role": role.as_str(),
            })));
            resource.parameters = resource.parameters.with("role", role.as_str());
            resource
        }
        C::RemoveProjectMember {
            project_id,
            principal_id,
        } => {
            let kind = principal_kind(state, principal_id).unwrap_or(MemberKind::User);
            let project = state.projects.get(project_id).map(|p| p.name.clone());
            membership_resource(state, V::Delete, project_id, principal_id, None).id(Some(
                serde_json::json!({
                    member_field(kind): member_handle(state, kind, principal_id),
                    "project": project,
                }),
            ))
        }
        C::CreateOperatorToken(token) => {
            Resource::new(V::Create, T::OperatorToken, Some(&token.id)).id(Some(token.id.as_str()))
        }
        C::RotateOperatorToken { old_id, new } => {
            Resource::new(V::Update, T::OperatorToken, Some(old_id))
                .id(Some(old_id.as_str()))
                .params(Params::default().with("new_id", new.id.as_str()))
        }
        C::DeleteOperatorToken { id } => {
            Resource::new(V::Delete, T::OperatorToken, Some(id)).id(Some(id.as_str()))
        }
        C::RotateSigningKey(key) => {
            Resource::new(V::Create, T::SigningKey, Some(&key.id)).id(Some(key.id.as_str()))
        }
    }
}

/// The actor's (principal name, display name) as the state knows them.
pub fn actor_names(state: &ControlState, actor: &ActorRef) -> Option<(String, String)> {
    let id = actor.principal_id.as_str();
    match actor.principal_type {
        PrincipalType::User => state
            .users
            .get(id)
            .map(|u| (u.email.clone(), u.name.clone())),
        PrincipalType::ServiceAccount => state
            .service_accounts
            .get(id)
            .map(|a| (a.name.clone(), a.name.clone())),
        PrincipalType::ApiKey => state
            .api_keys
            .get(id)
            .map(|k| (k.name.clone(), k.name.clone())),
        PrincipalType::Operator => Some(("operator".into(), "Operator token".into())),
        PrincipalType::System => Some(("conifer".into(), "Conifer".into())),
    }
}
