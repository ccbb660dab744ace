//! The control-plane state and its deterministic transition function.
//!
//! Every id and timestamp is chosen by the proposer and carried in the command, so applying
//! the same log gives byte-identical state on every node. Secrets never enter the state:
//! API keys and operator tokens are stored as SHA-256 digests of high-entropy secrets.

use std::collections::BTreeMap;

use conifer_raft::group_state::StateWrites;
use conifer_raft::{Format, MachineError};
use serde::{Deserialize, Serialize};

use crate::audit::{
    self, AuditContext, AuditDraft, AuditLog, EventOutcome, Params, Resource, ResourceType, Verb,
};

pub use super::identity::{
    IdentityCommand, MemberKind, OrgRole, ProjectMember, ProjectRole, ServiceAccount, SigningKey,
    User,
};

/// Most organizations one cluster may hold.
pub const MAX_ORGANIZATIONS: usize = 100;
/// Most projects one organization may hold.
pub const MAX_PROJECTS_PER_ORG: usize = 1_000;
/// Most API keys one project may hold.
pub const MAX_API_KEYS_PER_PROJECT: usize = 200;
/// Most indexes one project may hold.
pub const MAX_INDEXES_PER_PROJECT: usize = 100;

/// An organization: owns projects (and later users).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A project: the unit API keys and indexes belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Stable id.
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Name, unique within the organization.
    pub name: String,
    /// Pinecone's pod quota; stored and reported.
    pub max_pods: u32,
    /// Whether indexes must use customer-managed keys.
    pub force_encryption_with_cmek: bool,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// Roles an API key can carry (Pinecone's six).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApiKeyRole {
    /// Full control- and data-plane access to the project.
    ProjectEditor,
    /// Read-only control- and data-plane access.
    ProjectViewer,
    /// Read-write control plane.
    ControlPlaneEditor,
    /// Read-only control plane.
    ControlPlaneViewer,
    /// Read-write data plane.
    DataPlaneEditor,
    /// Read-only data plane.
    DataPlaneViewer,
}

impl ApiKeyRole {
    /// Every role, in declaration order.
    pub const ALL: [ApiKeyRole; 6] = [
        ApiKeyRole::ProjectEditor,
        ApiKeyRole::ProjectViewer,
        ApiKeyRole::ControlPlaneEditor,
        ApiKeyRole::ControlPlaneViewer,
        ApiKeyRole::DataPlaneEditor,
        ApiKeyRole::DataPlaneViewer,
    ];

    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyRole::ProjectEditor => "ProjectEditor",
            ApiKeyRole::ProjectViewer => "ProjectViewer",
            ApiKeyRole::ControlPlaneEditor => "ControlPlaneEditor",
            ApiKeyRole::ControlPlaneViewer => "ControlPlaneViewer",
            ApiKeyRole::DataPlaneEditor => "DataPlaneEditor",
            ApiKeyRole::DataPlaneViewer => "DataPlaneViewer",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// An API key of a project. The secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Stable id, also embedded in the key's value so it can be looked up.
    pub id: String,
    /// Project the key belongs to.
    pub project_id: String,
    /// Name shown in listings.
    pub name: String,
    /// Roles granted.
    pub roles: Vec<ApiKeyRole>,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

pub use crate::shard::engine::Metric;

/// Lifecycle state of an index, as Pinecone reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    /// The shard group is being created.
    Initializing,
    /// The shard group has elected a leader and serves.
    Ready,
}

/// An index of a project: configuration plus where its (single, for now) shard lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Name, unique within the project.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Vector dimension.
    pub dimension: u32,
    /// Similarity metric.
    pub metric: Metric,
    /// `dense` (sparse indexes come later).
    pub vector_type: String,
    /// Pinecone `spec` (serverless or pod) as given, JSON text.
    pub spec_json: String,
    /// Pinecone `tags` as given, JSON text (`null` when none).
    pub tags_json: String,
    /// Whether deletion is refused.
    pub deletion_protection: bool,
    /// Raft group of the shard (assigned at apply).
    pub group_id: u64,
    /// Nodes holding a replica of the shard.
    pub replicas: Vec<u64>,
    /// Lifecycle state.
    pub state: IndexState,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Its own client port on every node, from the index port range (`None`: addressed by
    /// host name or header only). Assigned at apply.
    pub port: Option<u16>,
}

/// The operator (break-glass cluster-admin) token; only its digest is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    /// Stable id, embedded in the token's value.
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A control-plane command. Proposers fill in ids and times.
// Commands live only between decode and apply; boxing the rare Bootstrap buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// First command of a new cluster: default organization, project, key and operator token.
    Bootstrap {
        /// The default organization.
        organization: Organization,
        /// The default project.
        project: Project,
        /// Its `ProjectEditor` key.
        api_key: ApiKey,
        /// The operator token.
        operator_token: OperatorToken,
        /// The first key that signs bearer tokens.
        signing_key: SigningKey,
    },
    /// Create a project; `owner`, when given, becomes its `ProjectOwner` in the same step.
    CreateProject {
        /// The project.
        project: Project,
        /// The user or service account that created it.
        owner: Option<ProjectMember>,
    },
    /// Rename a project or change its settings.
    UpdateProject {
        /// The project.
        id: String,
        /// New name, if changing.
        name: Option<String>,
        /// New pod quota, if changing.
        max_pods: Option<u32>,
        /// New CMEK requirement, if changing.
        force_encryption_with_cmek: Option<bool>,
    },
    /// Delete a project and its API keys.
    DeleteProject {
        /// The project.
        id: String,
    },
    /// Create an API key.
    CreateApiKey(ApiKey),
    /// Delete an API key.
    DeleteApiKey {
        /// The key.
        id: String,
    },
    /// Rename an API key and/or replace its roles.
    UpdateApiKey {
        /// The key.
        id: String,
        /// New name, if changing.
        name: Option<String>,
        /// New roles (not empty), if changing.
        roles: Option<Vec<ApiKeyRole>>,
    },
    /// Create an organization (operator only).
    CreateOrganization(Organization),
    /// Rename an organization.
    RenameOrganization {
        /// The organization.
        id: String,
        /// The new name.
        name: String,
    },
    /// Delete an organization with no projects, and its users and service accounts.
    DeleteOrganization {
        /// The organization.
        id: String,
    },
    /// Users, service accounts, memberships, operator tokens and signing keys.
    Identity(IdentityCommand),
    /// Create an index; the state machine assigns its shard group id and, given `ports`
    /// (the first and last of the proposing node's index port range), the lowest port of
    /// the range no other index holds.
    CreateIndex {
        /// The index.
        index: Index,
        /// Index port range, inclusive.
        ports: Option<(u16, u16)>,
    },
    /// Change an index's deletion protection and/or tags.
    ConfigureIndex {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
        /// New deletion protection, if changing.
        deletion_protection: Option<bool>,
        /// New tags (JSON text), if changing.
        tags_json: Option<String>,
    },
    /// Mark an index ready (proposed by its shard leader once the group serves).
    MarkIndexReady {
        /// Shard group of the index.
        group_id: u64,
    },
    /// Delete an index (refused while deletion protection is on).
    DeleteIndex {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
    },
    /// A user or service account signed in (its audit event is the point; refused when the
    /// principal was deleted meanwhile).
    SignIn {
        /// The principal.
        principal_id: String,
        /// Its kind.
        kind: MemberKind,
    },
    /// Apply `command` and append its audit event, with the outcome, in the same step.
    Audited {
        /// Who asked, when, from where.
        context: AuditContext,
        /// What they asked for.
        command: Box<Command>,
    },
    /// Append events of attempts that changed nothing (denials, failed sign-ins).
    RecordAudit(Vec<AuditDraft>),
    /// Remove audit events older than `before`, recording the purge in each chain touched.
    PurgeAudit {
        /// The purge's own context (actor: the system).
        context: AuditContext,
        /// Cut-off time ([`audit::timestamp`] text).
        before: String,
    },
    /// Record a change of the cluster's membership that was attempted (made by openraft's
    /// own membership entry before it; see [`super::membership`]); rejected, changing
    /// nothing, when the change failed, so its audit event records the failure.
    Membership(super::membership::MembershipRecord),
}

/// What a command produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Output {
    /// Nothing to report.
    Done,
    /// The project as stored.
    Project(Project),
    /// The key as stored.
    ApiKey(ApiKey),
    /// The index as stored.
    Index(Index),
    /// The organization as stored.
    Organization(Organization),
    /// The user as stored.
    User(User),
    /// The service account as stored.
    ServiceAccount(ServiceAccount),
    /// The project membership as stored.
    ProjectMember(ProjectMember),
}

/// Why a command was rejected; the state is unchanged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A referenced object does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// Kind of object.
        kind: String,
        /// Its id.
        id: String,
    },
    /// An object with that id or unique name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A count limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The command does not apply in this state.
    #[error("{0}")]
    Invalid(String),
}

impl Rejection {
    /// Pinecone's error code for the rejection (`api::error::CODES` gives its statuses;
    /// the audit log records it): `NOT_FOUND`, `ALREADY_EXISTS`, `RESOURCE_EXHAUSTED` for a
    /// count limit, `FAILED_PRECONDITION` for a command that does not apply in this state.
    pub fn error_code(&self) -> &'static str {
        match self {
            Rejection::NotFound { .. } => "NOT_FOUND",
            Rejection::AlreadyExists(_) => "ALREADY_EXISTS",
            Rejection::LimitExceeded(_) => "RESOURCE_EXHAUSTED",
            Rejection::Invalid(_) => "FAILED_PRECONDITION",
        }
    }
}

/// The result of applying one command.
pub type Outcome = Result<Output, Rejection>;

/// The whole control-plane state (group 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Organizations by id.
    pub organizations: BTreeMap<String, Organization>,
    /// Projects by id.
    pub projects: BTreeMap<String, Project>,
    /// API keys by id.
    pub api_keys: BTreeMap<String, ApiKey>,
    /// Operator tokens by id.
    pub operator_tokens: BTreeMap<String, OperatorToken>,
    /// Indexes by (project id, name).
    pub indexes: BTreeMap<(String, String), Index>,
    /// Next shard group id to assign (group 0 is the control plane).
    pub next_group_id: u64,
    /// Users by id.
    pub users: BTreeMap<String, User>,
    /// Service accounts by id.
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Project memberships by (principal id, project id): a principal's roles, read on every
    /// bearer-token request, are one range.
    pub project_members: BTreeMap<(String, String), ProjectMember>,
    /// Token-signing keys, oldest first; the last one signs.
    pub signing_keys: Vec<SigningKey>,
    /// The audit log: one hash chain per organization.
    pub audit: AuditLog,
    /// The index port given out last: the next index gets the first free port after it,
    /// wrapping within the range, so a deleted index's port is the last to be given again.
    pub last_index_port: Option<u16>,
}

pub(super) fn not_found(kind: &str, id: &str) -> Rejection {
    Rejection::NotFound {
        kind: kind.into(),
        id: id.into(),
    }
}

impl ControlState {
    /// Applies `command`; on rejection nothing changes.
    pub fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::Bootstrap {
                organization,
                project,
                api_key,
                operator_token,
                signing_key,
            } => {
                if !self.organizations.is_empty() || !self.operator_tokens.is_empty() {
                    return Err(Rejection::Invalid("cluster is already bootstrapped".into()));
                }
                self.signing_keys.push(signing_key);
                self.organizations
                    .insert(organization.id.clone(), organization);
                self.projects.insert(project.id.clone(), project);
                self.api_keys.insert(api_key.id.clone(), api_key);
                self.operator_tokens
                    .insert(operator_token.id.clone(), operator_token);
                Ok(Output::Done)
            }
            Command::CreateProject { project, owner } => {
                if !self.organizations.contains_key(&project.organization_id) {
                    return Err(not_found("organization", &project.organization_id));
                }
                if self.projects.contains_key(&project.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "project id '{}' already exists",
                        project.id
                    )));
                }
                let in_org = self
                    .projects
                    .values()
                    .filter(|p| p.organization_id == project.organization_id);
                let mut count = 0;
                for p in in_org {
                    if p.name == project.name {
                        return Err(Rejection::AlreadyExists(format!(
                            "a project named '{}' already exists in this organization",
                            project.name
                        )));
                    }
                    count += 1;
                }
                if count >= MAX_PROJECTS_PER_ORG {
                    return Err(Rejection::LimitExceeded(format!(
                        "organization already has {count} projects; the limit is {MAX_PROJECTS_PER_ORG}"
                    )));
                }
                if let Some(owner) = &owner {
                    let known = match owner.kind {
                        MemberKind::User => self.users.contains_key(&owner.principal_id),
                        MemberKind::ServiceAccount => {
                            self.service_accounts.contains_key(&owner.principal_id)
                        }
                    };
                    if !known || owner.project_id != project.id {
                        return Err(not_found(owner.kind.as_str(), &owner.principal_id));
                    }
                }
                self.projects.insert(project.id.clone(), project.clone());
                if let Some(owner) = owner {
                    self.project_members
                        .insert((owner.principal_id.clone(), project.id.clone()), owner);
                }
                Ok(Output::Project(project))
            }
            Command::UpdateProject {
                id,
                name,
                max_pods,
                force_encryption_with_cmek,
            } => {
                let org = match self.projects.get(&id) {
                    Some(p) => p.organization_id.clone(),
                    None => return Err(not_found("project", &id)),
                };
                if let Some(name) = &name {
                    let taken = self
                        .projects_of(&org)
                        .iter()
                        .any(|p| p.name == *name && p.id != id);
                    if taken {
                        return Err(Rejection::AlreadyExists(format!(
                            "a project named '{name}' already exists in this organization"
                        )));
                    }
                }
                let project = self.projects.get_mut(&id).expect("checked above");
                if let Some(name) = name {
                    project.name = name;
                }
                if let Some(max_pods) = max_pods {
                    project.max_pods = max_pods;
                }
                if let Some(force) = force_encryption_with_cmek {
                    project.force_encryption_with_cmek = force;
                }
                Ok(Output::Project(project.clone()))
            }
            Command::DeleteProject { id } => {
                if !self.projects.contains_key(&id) {
                    return Err(not_found("project", &id));
                }
                let indexes = self.indexes_of(&id).len();
                if indexes > 0 {
                    return Err(Rejection::Invalid(format!(
                        "project '{id}' still has {indexes} index(es); delete them first"
                    )));
                }
                self.projects.remove(&id);
                self.api_keys.retain(|_, k| k.project_id != id);
                self.project_members.retain(|(_, p), _| *p != id);
                Ok(Output::Done)
            }
            Command::CreateApiKey(key) => {
                if !self.projects.contains_key(&key.project_id) {
                    return Err(not_found("project", &key.project_id));
                }
                if self.api_keys.contains_key(&key.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "API key id '{}' already exists",
                        key.id
                    )));
                }
                let count = self
                    .api_keys
                    .values()
                    .filter(|k| k.project_id == key.project_id)
                    .count();
                if count >= MAX_API_KEYS_PER_PROJECT {
                    return Err(Rejection::LimitExceeded(format!(
                        "project already has {count} API keys; the limit is {MAX_API_KEYS_PER_PROJECT}"
                    )));
                }
                self.api_keys.insert(key.id.clone(), key.clone());
                Ok(Output::ApiKey(key))
            }
            Command::DeleteApiKey { id } => match self.api_keys.remove(&id) {
                Some(_) => Ok(Output::Done),
                None => Err(not_found("API key", &id)),
            },
            Command::UpdateApiKey { id, name, roles } => {
                if roles.as_ref().is_some_and(|r| r.is_empty()) {
                    return Err(Rejection::Invalid(
                        "an API key needs at least one role".into(),
                    ));
                }
                let key = self
                    .api_keys
                    .get_mut(&id)
                    .ok_or_else(|| not_found("API key", &id))?;
                if let Some(name) = name {
                    key.name = name;
                }
                if let Some(roles) = roles {
                    key.roles = roles;
                }
                Ok(Output::ApiKey(key.clone()))
            }
            Command::CreateOrganization(org) => {
                if self.organizations.contains_key(&org.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "organization id '{}' already exists",
                        org.id
                    )));
                }
                if self.organizations.len() >= MAX_ORGANIZATIONS {
                    return Err(Rejection::LimitExceeded(format!(
                        "the cluster already has {} organizations; the limit is {MAX_ORGANIZATIONS}",
                        self.organizations.len()
                    )));
                }
                self.organizations.insert(org.id.clone(), org.clone());
                Ok(Output::Organization(org))
            }
            Command::RenameOrganization { id, name } => {
                let org = self
                    .organizations
                    .get_mut(&id)
                    .ok_or_else(|| not_found("organization", &id))?;
                org.name = name;
                Ok(Output::Organization(org.clone()))
            }
            Command::DeleteOrganization { id } => {
                if !self.organizations.contains_key(&id) {
                    return Err(not_found("organization", &id));
                }
                let projects = self.projects_of(&id).len();
                if projects > 0 {
                    return Err(Rejection::Invalid(format!(
                        "organization '{id}' still has {projects} project(s); delete them first"
                    )));
                }
                self.organizations.remove(&id);
                self.users.retain(|_, u| u.organization_id != id);
                self.service_accounts.retain(|_, a| a.organization_id != id);
                Ok(Output::Done)
            }
            Command::Identity(command) => self.apply_identity(command),
            Command::CreateIndex { mut index, ports } => {
                if !self.projects.contains_key(&index.project_id) {
                    return Err(not_found("project", &index.project_id));
                }
                let key = (index.project_id.clone(), index.name.clone());
                if self.indexes.contains_key(&key) {
                    return Err(Rejection::AlreadyExists(format!(
                        "index '{}' already exists",
                        index.name
                    )));
                }
                let count = self.indexes_of(&index.project_id).len();
                if count >= MAX_INDEXES_PER_PROJECT {
                    return Err(Rejection::LimitExceeded(format!(
                        "project already has {count} indexes; the limit is {MAX_INDEXES_PER_PROJECT}"
                    )));
                }
                index.port = match ports {
                    None => None,
                    Some(range) => Some(self.next_index_port(range)?),
                };
                self.last_index_port = index.port.or(self.last_index_port);
                self.next_group_id = self.next_group_id.max(1);
                index.group_id = self.next_group_id;
                index.state = IndexState::Initializing;
                self.next_group_id += 1;
                self.indexes.insert(key, index.clone());
                Ok(Output::Index(index))
            }
            Command::ConfigureIndex {
                project_id,
                name,
                deletion_protection,
                tags_json,
            } => {
                let index = self
                    .indexes
                    .get_mut(&(project_id, name.clone()))
                    .ok_or_else(|| not_found("index", &name))?;
                if let Some(protect) = deletion_protection {
                    index.deletion_protection = protect;
                }
                if let Some(tags) = tags_json {
                    index.tags_json = tags;
                }
                Ok(Output::Index(index.clone()))
            }
            Command::MarkIndexReady { group_id } => {
                match self.indexes.values_mut().find(|i| i.group_id == group_id) {
                    Some(index) => {
                        index.state = IndexState::Ready;
                        Ok(Output::Done)
                    }
                    None => Err(not_found("index with shard group", &group_id.to_string())),
                }
            }
            Command::SignIn { principal_id, kind } => {
                let exists = match kind {
                    MemberKind::User => self.users.contains_key(&principal_id),
                    MemberKind::ServiceAccount => self.service_accounts.contains_key(&principal_id),
                };
                if exists {
                    Ok(Output::Done)
                } else {
                    Err(not_found(kind.as_str(), &principal_id))
                }
            }
            Command::Audited { context, command } => self.apply_audited(context, *command),
            Command::Membership(record) => match record.failure {
                None => Ok(Output::Done),
                Some(failure) => Err(Rejection::Invalid(failure.reason)),
            },
            Command::RecordAudit(drafts) => {
                if drafts.len() > audit::MAX_AUDIT_BATCH_EVENTS {
                    return Err(Rejection::LimitExceeded(format!(
                        "an audit batch holds at most {} events; this one has {}",
                        audit::MAX_AUDIT_BATCH_EVENTS,
                        drafts.len()
                    )));
                }
                for draft in drafts {
                    let event =
                        super::audit::event(self, &draft.context, draft.resource, draft.outcome);
                    self.audit.append(event, audit::EventClass::Refusal);
                }
                Ok(Output::Done)
            }
            Command::PurgeAudit { context, before } => {
                for (chain, removed) in self.audit.purge_before(&before) {
                    let org = (chain != audit::CLUSTER_CHAIN).then(|| chain.clone());
                    let resource = Resource::new(Verb::Delete, ResourceType::AuditLog, None)
                        .id(Some(chain.as_str()))
                        .in_org(org.as_deref())
                        .params(
                            Params::default()
                                .with("purged_events", removed)
                                .with("before", before.as_str()),
                        );
                    let event =
                        super::audit::event(self, &context, resource, EventOutcome::success());
                    self.audit.append(event, audit::EventClass::Change);
                }
                Ok(Output::Done)
            }
            Command::DeleteIndex { project_id, name } => {
                let key = (project_id, name.clone());
                match self.indexes.get(&key) {
                    None => Err(not_found("index", &name)),
                    Some(index) if index.deletion_protection => Err(Rejection::Invalid(format!(
                        "index '{name}' has deletion protection enabled; disable it before deleting"
                    ))),
                    Some(_) => {
                        self.indexes.remove(&key);
                        Ok(Output::Done)
                    }
                }
            }
        }
    }

    /// Applies `command` and appends its event with the outcome. The event's names come from
    /// the state before the change (a deleted key is still named); an object the command
    /// creates (an organization) is looked up after it.
    fn apply_audited(&mut self, context: AuditContext, command: Command) -> Outcome {
        if matches!(
            command,
            Command::Audited { .. } | Command::RecordAudit(_) | Command::PurgeAudit { .. }
        ) {
            return Err(Rejection::Invalid(
                "audit commands cannot be audited".into(),
            ));
        }
        let resource = super::audit::describe(self, &command);
        let resource_org = resource.organization_id.clone();
        let mut event = super::audit::event(self, &context, resource, EventOutcome::success());
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
                None => super::audit::rejected(rejection),
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

    /// The port for a new index from `(first, last)`: the first one after the port given
    /// out last that no index holds, wrapping within the range.
    fn next_index_port(&self, (first, last): (u16, u16)) -> Result<u16, Rejection> {
        let taken: std::collections::BTreeSet<u16> =
            self.indexes.values().filter_map(|i| i.port).collect();
        let start = match self.last_index_port {
            Some(p) if (first..last).contains(&p) => p + 1,
            _ => first,
        };
        (start..=last)
            .chain(first..start)
            .find(|p| !taken.contains(p))
            .ok_or_else(|| {
                Rejection::LimitExceeded(format!(
                    "every port of the index port range {first}-{last} is taken; delete an \
                     index or widen --index-port-range"
                ))
            })
    }

    /// The index whose shard is Raft group `group`.
    pub fn index_of_group(&self, group: u64) -> Option<&Index> {
        self.indexes.values().find(|i| i.group_id == group)
    }

    /// Indexes of a project, by name order.
    pub fn indexes_of(&self, project_id: &str) -> Vec<&Index> {
        self.indexes
            .values()
            .filter(|i| i.project_id == project_id)
            .collect()
    }

    /// Projects of an organization, by id order.
    pub fn projects_of(&self, organization_id: &str) -> Vec<&Project> {
        self.projects
            .values()
            .filter(|p| p.organization_id == organization_id)
            .collect()
    }

    /// API keys of a project, by id order.
    pub fn keys_of(&self, project_id: &str) -> Vec<&ApiKey> {
        self.api_keys
            .values()
            .filter(|k| k.project_id == project_id)
            .collect()
    }
}

/// Format of control-plane commands in group 0's log (and in forwarded proposals).
pub const COMMAND_FORMAT: Format = Format::new("control-plane command", 1);
/// Format of group 0's snapshots: the whole [`ControlState`].
pub const SNAPSHOT_FORMAT: Format = Format::new("control-plane snapshot", 1);
/// Format of a command's [`Outcome`], as the response of its proposal.
pub const OUTCOME_FORMAT: Format = Format::new("control-plane outcome", 1);

/// Adapter that lets Raft replicate [`ControlState`].
#[derive(Default)]
pub struct ControlMachine {
    /// The state.
    pub state: ControlState,
}

impl conifer_raft::StateMachine for ControlMachine {
    const DURABLE: bool = false;

    fn apply(&mut self, _log_index: u64, command: &[u8], _writes: &mut StateWrites<'_>) -> Vec<u8> {
        let outcome: Outcome = match COMMAND_FORMAT.decode::<Command>(command) {
            Ok(cmd) => self.state.apply(cmd),
            Err(e) => Err(Rejection::Invalid(e.to_string())),
        };
        OUTCOME_FORMAT.encode(&outcome)
    }

    fn snapshot(&self) -> Vec<u8> {
        SNAPSHOT_FORMAT.encode(&self.state)
    }

    fn restore(
        &mut self,
        snapshot: &[u8],
        _writes: &mut StateWrites<'_>,
    ) -> Result<(), MachineError> {
        self.state = SNAPSHOT_FORMAT.decode(snapshot)?;
        // The state holds ordered maps only, so it encodes to the bytes it came from; a
        // difference means a decoder that loses or invents something.
        debug_assert!(
            SNAPSHOT_FORMAT.encode(&self.state) == snapshot,
            "a restored control-plane snapshot does not re-encode to the same bytes"
        );
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn org() -> Organization {
        Organization {
            id: "o1".into(),
            name: "default".into(),
            created_at: "t".into(),
        }
    }

    fn project(id: &str, name: &str) -> Project {
        Project {
            id: id.into(),
            organization_id: "o1".into(),
            name: name.into(),
            max_pods: 0,
            force_encryption_with_cmek: false,
            created_at: "t".into(),
        }
    }

    fn key(id: &str, project: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            project_id: project.into(),
            name: "k".into(),
            roles: vec![ApiKeyRole::ProjectEditor],
            secret_sha256: "00".into(),
            created_at: "t".into(),
        }
    }

    /// A state after bootstrap: organization `o1`, project `p0`, key `k0`, token `op`.
    pub(crate) fn bootstrapped() -> ControlState {
        let mut s = ControlState::default();
        s.apply(Command::Bootstrap {
            organization: org(),
            project: project("p0", "default"),
            api_key: key("k0", "p0"),
            operator_token: OperatorToken {
                id: "op".into(),
                secret_sha256: "11".into(),
                created_at: "t".into(),
            },
            signing_key: SigningKey {
                id: "sk0".into(),
                secret_hex: "00".into(),
                created_at: "t".into(),
            },
        })
        .unwrap();
        s
    }

    fn index(name: &str) -> Index {
        Index {
            name: name.into(),
            project_id: "p0".into(),
            dimension: 3,
            metric: Metric::Cosine,
            vector_type: "dense".into(),
            spec_json: "{}".into(),
            tags_json: "null".into(),
            deletion_protection: false,
            group_id: 0,
            replicas: vec![1],
            state: IndexState::Initializing,
            created_at: "t".into(),
            port: None,
        }
    }

    #[test]
    fn index_ports_are_given_after_the_last_wrapping_and_a_full_range_refuses() {
        let mut s = bootstrapped();
        let create = |s: &mut ControlState, name: &str| {
            s.apply(Command::CreateIndex {
                index: index(name),
                ports: Some((7500, 7502)),
            })
            .map(|out| match out {
                Output::Index(i) => i.port,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(create(&mut s, "a"), Ok(Some(7500)));
        assert_eq!(create(&mut s, "b"), Ok(Some(7501)));
        s.apply(Command::DeleteIndex {
            project_id: "p0".into(),
            name: "a".into(),
        })
        .unwrap();
        // 7500 is free again, but given last: a client still holding it meets no new index
        // before the range has gone round.
        assert_eq!(create(&mut s, "c"), Ok(Some(7502)));
        assert_eq!(create(&mut s, "d"), Ok(Some(7500)));
        let before = s.clone();
        let full = create(&mut s, "e");
        assert!(
            matches!(&full, Err(Rejection::LimitExceeded(m)) if m.contains("7500-7502 is taken")),
            "{full:?}"
        );
        assert_eq!(s, before, "a refused index changes nothing");
        // Without a range, no port.
        let plain = s.apply(Command::CreateIndex {
            index: index("f"),
            ports: None,
        });
        assert!(matches!(plain, Ok(Output::Index(Index { port: None, .. }))));
    }

    #[test]
    fn bootstrap_happens_once() {
        let mut s = bootstrapped();
        let before = s.clone();
        let again = s.apply(Command::Bootstrap {
            organization: org(),
            project: project("p9", "x"),
            api_key: key("k9", "p9"),
            operator_token: OperatorToken {
                id: "op2".into(),
                secret_sha256: "22".into(),
                created_at: "t".into(),
            },
            signing_key: SigningKey {
                id: "sk9".into(),
                secret_hex: "00".into(),
                created_at: "t".into(),
            },
        });
        assert!(matches!(again, Err(Rejection::Invalid(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn duplicate_project_name_is_rejected_without_change() {
        let mut s = bootstrapped();
        s.apply(Command::CreateProject {
            project: project("p1", "alpha"),
            owner: None,
        })
        .unwrap();
        let before = s.clone();
        let dup = s.apply(Command::CreateProject {
            project: project("p2", "alpha"),
            owner: None,
        });
        assert!(matches!(dup, Err(Rejection::AlreadyExists(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn deleting_a_project_deletes_its_keys() {
        let mut s = bootstrapped();
        s.apply(Command::CreateProject {
            project: project("p1", "alpha"),
            owner: None,
        })
        .unwrap();
        s.apply(Command::CreateApiKey(key("k1", "p1"))).unwrap();
        s.apply(Command::DeleteProject { id: "p1".into() }).unwrap();
        assert!(!s.api_keys.contains_key("k1"));
        assert!(s.api_keys.contains_key("k0"));
        assert!(matches!(
            s.apply(Command::DeleteProject { id: "p1".into() }),
            Err(Rejection::NotFound { .. })
        ));
    }

    #[test]
    fn key_limit_per_project_is_enforced_at_the_edge() {
        let mut s = bootstrapped();
        for i in 1..MAX_API_KEYS_PER_PROJECT {
            s.apply(Command::CreateApiKey(key(&format!("k{i}"), "p0")))
                .unwrap();
        }
        assert_eq!(s.keys_of("p0").len(), MAX_API_KEYS_PER_PROJECT);
        let over = s.apply(Command::CreateApiKey(key("one-too-many", "p0")));
        assert!(matches!(over, Err(Rejection::LimitExceeded(_))));
    }

    fn context(id: &str) -> AuditContext {
        AuditContext {
            id: id.into(),
            time: audit::timestamp(1_000),
            operation: "project.create".into(),
            actor: audit::ActorRef {
                principal_type: audit::PrincipalType::Operator,
                principal_id: "op".into(),
                organization_id: None,
                name_hint: None,
            },
            source_ip: None,
            request_id: Some(id.into()),
            user_agent: None,
            node_id: 1,
        }
    }

    fn audited(id: &str, command: Command) -> Command {
        Command::Audited {
            context: context(id),
            command: Box::new(command),
        }
    }

    #[test]
    fn an_audited_change_and_its_event_apply_together_and_a_rejection_is_recorded_alone() {
        let mut s = bootstrapped();
        let create = |id: &str| CreateProject {
            project: project(id, "alpha"),
            owner: None,
        };
        use Command::CreateProject;
        s.apply(audited("e1", create("p1"))).unwrap();
        let chain = &s.audit.chains["o1"];
        assert!(s.projects.contains_key("p1"));
        assert_eq!(chain.events.len(), 1);
        let event = &chain.events[&1];
        assert_eq!(event.event.outcome, EventOutcome::success());
        assert_eq!(event.event.resource_uid.as_deref(), Some("p1"));
        assert_eq!(
            event.event.resource_id,
            Some(audit::JsonValue(serde_json::json!("alpha")))
        );
        assert_eq!(event.event.action, "create");
        assert_eq!(event.event.operation, "project.create");
        assert_eq!(event.event.resource_name.as_deref(), Some("alpha"));

        let before = s.clone();
        let duplicate = s.apply(audited("e2", create("p2")));
        assert!(matches!(duplicate, Err(Rejection::AlreadyExists(_))));
        assert!(!s.projects.contains_key("p2"));
        let chain = &s.audit.chains["o1"];
        assert_eq!(chain.events.len(), 2);
        let failure = &chain.events[&2].event.outcome;
        assert_eq!(failure.result, "failure");
        assert_eq!(failure.error_code.as_deref(), Some("ALREADY_EXISTS"));
        // Nothing else changed.
        let mut without_audit = s.clone();
        without_audit.audit = before.audit.clone();
        assert_eq!(without_audit, before);
    }

    #[test]
    fn audit_commands_do_not_nest() {
        let mut s = bootstrapped();
        let before = s.clone();
        let nested = audited(
            "outer",
            audited("inner", Command::DeleteProject { id: "p0".into() }),
        );
        assert!(matches!(s.apply(nested), Err(Rejection::Invalid(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn an_oversized_audit_batch_is_refused_whole() {
        let mut s = bootstrapped();
        let before = s.clone();
        let draft = AuditDraft {
            context: context("d"),
            resource: Resource::new(Verb::Create, ResourceType::Project, Some("p0")),
            outcome: EventOutcome::failure("PERMISSION_DENIED", "no"),
        };
        let batch = vec![draft; audit::MAX_AUDIT_BATCH_EVENTS + 1];
        assert!(matches!(
            s.apply(Command::RecordAudit(batch.clone())),
            Err(Rejection::LimitExceeded(_))
        ));
        assert_eq!(s, before);
        s.apply(Command::RecordAudit(batch[1..].to_vec())).unwrap();
        assert_eq!(
            s.audit.chains[audit::CLUSTER_CHAIN].events.len(),
            audit::MAX_AUDIT_BATCH_EVENTS
        );
    }

    #[test]
    fn key_for_unknown_project_is_rejected() {
        let mut s = bootstrapped();
        assert!(matches!(
            s.apply(Command::CreateApiKey(key("k1", "nope"))),
            Err(Rejection::NotFound { .. })
        ));
    }
}
