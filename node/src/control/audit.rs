//! The control plane's side of the audit log: what each command is, in the seed's
//! vocabulary ([`describe`]), and the event of a command named from the state ([`event`]).
//! The `audit` library below knows no control-plane type; this is where commands and
//! principals become its resources and names.

use serde::Serialize;
use serde_json::Value;

use super::state::{Command, ControlState, MemberKind, Outcome, Output, Rejection};
use crate::audit::{
    self, ActorRef, AuditContext, AuditDraft, AuditEvent, EventNames, EventOutcome, Params,
    PrincipalType, Resource, ResourceType, Verb,
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

pub(super) fn roles_param<T: Serialize>(roles: &[T]) -> Value {
    serde_json::to_value(roles).unwrap_or(Value::Null)
}

pub(super) fn project_org(state: &ControlState, project_id: &str) -> Option<String> {
    state
        .projects
        .get(project_id)
        .map(|p| p.organization_id.clone())
}

pub(super) fn member_name(state: &ControlState, kind: MemberKind, id: &str) -> Option<String> {
    match kind {
        MemberKind::User => state.users.get(id).map(|u| u.email.clone()),
        MemberKind::ServiceAccount => state.service_accounts.get(id).map(|a| a.name.clone()),
    }
}

pub(super) fn principal_kind(state: &ControlState, id: &str) -> Option<MemberKind> {
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
pub(super) fn member_handle(state: &ControlState, kind: MemberKind, id: &str) -> String {
    match kind {
        MemberKind::User => member_name(state, kind, id).unwrap_or_else(|| id.to_string()),
        MemberKind::ServiceAccount => id.to_string(),
    }
}

/// The field naming a member in an object `resource_id` (`{user, role}`).
pub(super) fn member_field(kind: MemberKind) -> &'static str {
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
        Command::Organization(c) => super::organizations::describe(state, c),
        Command::Project(c) => super::projects::describe(state, c),
        Command::ApiKey(c) => super::keys::describe(state, c),
        Command::PrivateEndpoint(c) => super::private_endpoints::describe(state, c),
        Command::Index(c) => super::indexes::describe(state, c),
        Command::Backup(c) => super::backups::describe(state, c),
        Command::Identity(c) => super::identity::describe(state, c),
        Command::RootKeys(c) => super::root_keys::describe(state, c),
        Command::Audited { .. }
        | Command::RecordAudit(_)
        | Command::RecordObserved(_)
        | Command::PurgeAudit { .. } => Resource::new(V::Update, T::AuditLog, None),
        Command::Membership(record) => super::membership::describe(record),
    }
}

pub(super) fn project_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let project = state.projects.get(id);
    Resource::new(action, ResourceType::Project, Some(id))
        .id(project.map(|p| p.name.as_str()))
        .named(project.map(|p| p.name.as_str()))
        .in_org(project.map(|p| p.organization_id.as_str()))
}

pub(super) fn key_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let key = state.api_keys.get(id);
    let org = key.and_then(|k| project_org(state, &k.project_id));
    Resource::new(action, ResourceType::ApiKey, Some(id))
        .id(Some(id))
        .named(key.map(|k| k.name.as_str()))
        .in_org(org.as_deref())
        .params(Params::default().with_some("project_id", key.map(|k| k.project_id.as_str())))
}

pub(super) fn org_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let name = state.organizations.get(id).map(|o| o.name.as_str());
    Resource::new(action, ResourceType::Organization, Some(id))
        .id(name)
        .named(name)
        .in_org(Some(id))
}

/// The event of an index's keys becoming unusable on node `node_id`
/// (`index.key_unavailable`: `unavailable` is the key's state, a failure whose code is the
/// refusal the index answers — FAILED_PRECONDITION, or UNAVAILABLE when the key provider
/// does not answer — and whose reason names the key) or usable again (`index.key_available`),
/// on the index's organization chain; actor `system`; `parameters.key` names the key,
/// `parameters.node` the node.
pub fn key_state_event(
    state: &ControlState,
    node_id: u64,
    index: &crate::control::state::Index,
    key: &str,
    unavailable: Option<&crate::crypto::KeyStatus>,
) -> AuditDraft {
    use crate::crypto::{KeyStatus, Unavailability};
    let operation = match unavailable {
        Some(_) => "index.key_unavailable",
        None => "index.key_available",
    };
    let resource = index_resource(state, Verb::Update, &index.project_id, &index.name)
        .params(Params::default().with("key", key).with("node", node_id));
    let outcome = match unavailable {
        Some(KeyStatus::Unavailable { kind, reason, .. }) => EventOutcome::failure(
            match kind {
                Some(Unavailability::Unreachable) => "UNAVAILABLE",
                _ => "FAILED_PRECONDITION",
            },
            &format!("node {node_id}: {reason}"),
        ),
        Some(other) => {
            EventOutcome::failure("FAILED_PRECONDITION", &format!("node {node_id}: {other:?}"))
        }
        None => EventOutcome::success(),
    };
    AuditDraft {
        context: AuditContext::internal(operation, ActorRef::system(), node_id),
        resource,
        outcome,
    }
}

/// The event of node `node_id` giving the cluster's root key versions to node `to` (a node
/// joining a cluster whose root is a local keyring): `cluster.root_keys`, on the cluster
/// chain; actor `system`.
pub fn root_keys_event(node_id: u64, to: u64) -> AuditDraft {
    let node = to.to_string();
    AuditDraft {
        context: AuditContext::internal("cluster.root_keys", ActorRef::system(), node_id),
        resource: Resource::new(Verb::Read, ResourceType::Cluster, Some(&node))
            .id(Some(node.as_str()))
            .params(
                Params::default()
                    .with("node_id", to)
                    .with("from_node", node_id),
            ),
        outcome: EventOutcome::success(),
    }
}

pub(super) fn index_resource(
    state: &ControlState,
    action: Verb,
    project_id: &str,
    name: &str,
) -> Resource {
    Resource::new(action, ResourceType::Index, None)
        .id(Some(name))
        .named(Some(name))
        .in_org(project_org(state, project_id).as_deref())
}

/// A user of an organization, named by email in `resource_id` (the seed's "delete org
/// member"; callers replace it for the rows that name more).
pub(super) fn user_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let user = state.users.get(id);
    Resource::new(action, ResourceType::User, Some(id))
        .id(user.map(|u| u.email.as_str()))
        .named(user.map(|u| u.email.as_str()))
        .in_org(user.map(|u| u.organization_id.as_str()))
}

pub(super) fn account_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let account = state.service_accounts.get(id);
    Resource::new(action, ResourceType::ServiceAccount, Some(id))
        .id(Some(id))
        .named(account.map(|a| a.name.as_str()))
        .in_org(account.map(|a| a.organization_id.as_str()))
}

/// A project membership: a `user` (or `service-account`) resource; `resource_id` is set by
/// the caller to the seed's form of its row.
pub(super) fn membership_resource(
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

impl ControlState {
    /// Applies `command` and appends its event with the outcome. The event's names come from
    /// the state before the change (a deleted key is still named); an object the command
    /// creates (an organization) is looked up after it.
    pub(super) fn apply_audited(&mut self, context: AuditContext, command: Command) -> Outcome {
        if matches!(
            command,
            Command::Audited { .. }
                | Command::RecordAudit(_)
                | Command::RecordObserved(_)
                | Command::PurgeAudit { .. }
        ) {
            return Err(Rejection::Invalid(
                "audit commands cannot be audited".into(),
            ));
        }
        let resource = describe(self, &command);
        let resource_org = resource.organization_id.clone();
        let mut event = event(self, &context, resource, EventOutcome::success());
        // A membership change that failed outside the state machine keeps the code its
        // client received.
        let recorded_failure = match &command {
            Command::Membership(record) => record.failure.clone(),
            _ => None,
        };
        let outcome = self.apply(command);
        // The chaos harness's unsafe mode: the change without its event for about half the
        // commands (chosen by event id, the same on every replica), which its audit checker
        // must catch.
        #[cfg(feature = "failpoints")]
        if fail::eval("conifer::audit::drop_event", |_| ()).is_some()
            && context
                .id
                .ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e'])
        {
            return outcome;
        }
        if let Err(rejection) = &outcome {
            event.event.outcome = match recorded_failure {
                Some(f) => EventOutcome::failure(&f.error_code, &f.reason),
                None => rejected(rejection),
            };
        }
        if event.organization_id.is_none() {
            if let Some(org) = resource_org.and_then(|id| self.organizations.get(&id)) {
                event.organization_id = Some(org.id.clone());
                event.organization_name = Some(org.name.clone());
            }
        }
        self.audit.append(event, audit::EventClass::Change);
        outcome
    }

    /// Appends events of attempts that changed nothing (denials, failed sign-ins; class
    /// `Refusal`) or of what a node observed (class `Change`), at most
    /// [`audit::MAX_AUDIT_BATCH_EVENTS`] per batch.
    pub(super) fn apply_record_audit(
        &mut self,
        drafts: Vec<AuditDraft>,
        class: audit::EventClass,
    ) -> Outcome {
        if drafts.len() > audit::MAX_AUDIT_BATCH_EVENTS {
            return Err(Rejection::LimitExceeded(format!(
                "an audit batch holds at most {} events; this one has {}",
                audit::MAX_AUDIT_BATCH_EVENTS,
                drafts.len()
            )));
        }
        for draft in drafts {
            let event = event(self, &draft.context, draft.resource, draft.outcome);
            self.audit.append(event, class);
        }
        Ok(Output::Done)
    }

    /// Removes events older than `before`, recording the purge in each chain touched.
    pub(super) fn apply_purge_audit(&mut self, context: AuditContext, before: &str) -> Outcome {
        for (chain, removed) in self.audit.purge_before(before) {
            let org = (chain != audit::CLUSTER_CHAIN).then(|| chain.clone());
            let resource = Resource::new(Verb::Delete, ResourceType::AuditLog, None)
                .id(Some(chain.as_str()))
                .in_org(org.as_deref())
                .params(
                    Params::default()
                        .with("purged_events", removed)
                        .with("before", before),
                );
            let event = event(self, &context, resource, EventOutcome::success());
            self.audit.append(event, audit::EventClass::Change);
        }
        Ok(Output::Done)
    }
}
