//! Projects: create (with an owner in the same step), update, delete (one with no indexes,
//! with its API keys and memberships), and how each is audited.

use serde::{Deserialize, Serialize};

use super::audit::project_resource;
use super::identity::{MemberKind, ProjectMember};
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};
use crate::crypto::ProjectKey;

/// Most projects one organization may hold.
pub const MAX_PROJECTS_PER_ORG: usize = 1_000;

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
    /// The project's key-encryption key, wrapped by the root key; it wraps the data keys
    /// of the project's indexes created without customer-managed encryption.
    pub key: ProjectKey,
    /// The customer-managed AWS KMS key (ARN) that makes the data keys of the indexes
    /// created while it is set; once set it stays (and `force_encryption_with_cmek` is on).
    pub cmek_key_arn: Option<String>,
    /// Whether the project's data plane requires a client certificate (mutual TLS) that
    /// authenticates as a service account with access to the project: an API key or
    /// bearer token alone is refused there ([`crate::tls`]'s client CA, `serve --client-ca`).
    pub require_client_certificate: bool,
}

/// Why a CMEK setting was refused: the requirement and the key go together.
const CMEK_NEEDS_KEY: &str = "force_encryption_with_cmek and cmek_key_arn go together: \
     give the customer-managed AWS KMS key's ARN in cmek_key_arn to turn it on";

/// A change of a project.
// A command lives for one proposal and is serialized at once; boxing the project (with its
// wrapped key) would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ProjectCommand {
    /// Create a project; `owner`, when given, becomes its `ProjectOwner` in the same step.
    Create {
        /// The project.
        project: Project,
        /// The user or service account that created it.
        owner: Option<ProjectMember>,
    },
    /// Rename a project or change its settings.
    Update {
        /// The project.
        id: String,
        /// New name, if changing.
        name: Option<String>,
        /// New pod quota, if changing.
        max_pods: Option<u32>,
        /// New CMEK requirement, if changing (on only with a key; never off again).
        force_encryption_with_cmek: Option<bool>,
        /// The customer-managed KMS key, if setting it (never changed once set).
        cmek_key_arn: Option<String>,
        /// New client-certificate requirement of the data plane, if changing.
        require_client_certificate: Option<bool>,
    },
    /// Delete a project and its API keys.
    Delete {
        /// The project.
        id: String,
    },
}

impl ControlState {
    /// Applies a project command; on rejection nothing changes.
    pub(super) fn apply_project(&mut self, command: ProjectCommand) -> Outcome {
        match command {
            ProjectCommand::Create { project, owner } => {
                if !self.organizations.contains_key(&project.organization_id) {
                    return Err(not_found("organization", &project.organization_id));
                }
                if project.force_encryption_with_cmek != project.cmek_key_arn.is_some() {
                    return Err(Rejection::Invalid(CMEK_NEEDS_KEY.into()));
                }
                self.check_project_key_version(&project.key)?;
                let siblings = self.projects_of(&project.organization_id);
                let taken = if self.projects.contains_key(&project.id) {
                    Some(format!("project id '{}' already exists", project.id))
                } else {
                    siblings.iter().any(|p| p.name == project.name).then(|| {
                        format!(
                            "a project named '{}' already exists in this organization",
                            project.name
                        )
                    })
                };
                check_new(
                    taken,
                    siblings.len(),
                    MAX_PROJECTS_PER_ORG,
                    "organization",
                    "projects",
                )?;
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
            ProjectCommand::Update {
                id,
                name,
                max_pods,
                force_encryption_with_cmek,
                cmek_key_arn,
                require_client_certificate,
            } => {
                let (org, current_key) = match self.projects.get(&id) {
                    Some(p) => (p.organization_id.clone(), p.cmek_key_arn.clone()),
                    None => return Err(not_found("project", &id)),
                };
                match (&current_key, &cmek_key_arn) {
                    (Some(current), Some(asked)) if current != asked => {
                        return Err(Rejection::Invalid(format!(
                            "project '{id}' encrypts with the customer-managed key {current}; \
                             a project's CMEK key cannot be changed"
                        )))
                    }
                    _ => {}
                }
                let keyed = current_key.is_some() || cmek_key_arn.is_some();
                match force_encryption_with_cmek {
                    Some(false) if current_key.is_some() => {
                        return Err(Rejection::Invalid(format!(
                            "project '{id}' encrypts with a customer-managed key: \
                             force_encryption_with_cmek cannot be turned off"
                        )))
                    }
                    Some(false) if cmek_key_arn.is_some() => {
                        return Err(Rejection::Invalid(CMEK_NEEDS_KEY.into()))
                    }
                    Some(true) if !keyed => return Err(Rejection::Invalid(CMEK_NEEDS_KEY.into())),
                    _ => {}
                }
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
                if let Some(arn) = cmek_key_arn {
                    project.cmek_key_arn = Some(arn);
                    project.force_encryption_with_cmek = true;
                }
                if let Some(required) = require_client_certificate {
                    project.require_client_certificate = required;
                }
                Ok(Output::Project(project.clone()))
            }
            ProjectCommand::Delete { id } => {
                if !self.projects.contains_key(&id) {
                    return Err(not_found("project", &id));
                }
                let indexes = self.indexes_of(&id).len();
                if indexes > 0 {
                    return Err(Rejection::Invalid(format!(
                        "project '{id}' still has {indexes} index(es); delete them first"
                    )));
                }
                let name = self.projects[&id].name.clone();
                self.shred_later("project", &id, &name);
                self.projects.remove(&id);
                self.api_keys.retain(|_, k| k.project_id != id);
                self.private_endpoints
                    .retain(|(project, _), _| *project != id);
                self.project_members.retain(|(_, p), _| *p != id);
                self.drop_backups_of_project(&id);
                Ok(Output::Done)
            }
        }
    }

    /// The projects of an organization.
    pub fn projects_of(&self, organization_id: &str) -> Vec<&Project> {
        self.projects
            .values()
            .filter(|p| p.organization_id == organization_id)
            .collect()
    }
}

/// The audit description of a project command (the state before it).
pub(super) fn describe(state: &ControlState, command: &ProjectCommand) -> Resource {
    match command {
        ProjectCommand::Create { project, owner } => {
            Resource::new(Verb::Create, ResourceType::Project, Some(&project.id))
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
                        .with_some("cmek_key_arn", project.cmek_key_arn.as_deref())
                        .with_some("owner_id", owner.as_ref().map(|o| o.principal_id.as_str())),
                )
        }
        ProjectCommand::Update {
            id,
            name,
            max_pods,
            force_encryption_with_cmek,
            cmek_key_arn,
            require_client_certificate,
        } => {
            let mut resource = project_resource(state, Verb::Update, id);
            // A rename is recorded under the new name, as the seed's organization rename is.
            if let Some(name) = name {
                resource = resource.id(Some(name.as_str()));
            }
            resource.params(
                Params::default()
                    .with_some("name", name.as_deref())
                    .with_some("max_pods", *max_pods)
                    .with_some("force_encryption_with_cmek", *force_encryption_with_cmek)
                    .with_some("cmek_key_arn", cmek_key_arn.as_deref())
                    .with_some("require_client_certificate", *require_client_certificate),
            )
        }
        ProjectCommand::Delete { id } => project_resource(state, Verb::Delete, id),
    }
}
