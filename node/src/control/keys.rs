//! API keys of a project: create, update (name, roles), delete, and how each is audited.
//! Only a digest of a key's secret is stored.

use serde::{Deserialize, Serialize};

use super::audit::{key_resource, project_org, roles_param};
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};

/// Most API keys one project may hold.
pub const MAX_API_KEYS_PER_PROJECT: usize = 200;

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

/// A change of an API key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ApiKeyCommand {
    /// Create an API key.
    Create(ApiKey),
    /// Delete an API key.
    Delete {
        /// The key.
        id: String,
    },
    /// Rename an API key and/or replace its roles.
    Update {
        /// The key.
        id: String,
        /// New name, if changing.
        name: Option<String>,
        /// New roles (not empty), if changing.
        roles: Option<Vec<ApiKeyRole>>,
    },
}

impl ControlState {
    /// Applies an API-key command; on rejection nothing changes.
    pub(super) fn apply_api_key(&mut self, command: ApiKeyCommand) -> Outcome {
        match command {
            ApiKeyCommand::Create(key) => {
                if !self.projects.contains_key(&key.project_id) {
                    return Err(not_found("project", &key.project_id));
                }
                check_new(
                    self.api_keys
                        .contains_key(&key.id)
                        .then(|| format!("API key id '{}' already exists", key.id)),
                    self.keys_of(&key.project_id).len(),
                    MAX_API_KEYS_PER_PROJECT,
                    "project",
                    "API keys",
                )?;
                self.api_keys.insert(key.id.clone(), key.clone());
                Ok(Output::ApiKey(key))
            }
            ApiKeyCommand::Delete { id } => match self.api_keys.remove(&id) {
                Some(_) => Ok(Output::Done),
                None => Err(not_found("API key", &id)),
            },
            ApiKeyCommand::Update { id, name, roles } => {
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
        }
    }

    /// The API keys of a project.
    pub fn keys_of(&self, project_id: &str) -> Vec<&ApiKey> {
        self.api_keys
            .values()
            .filter(|k| k.project_id == project_id)
            .collect()
    }
}

/// The audit description of an API-key command (the state before it).
pub(super) fn describe(state: &ControlState, command: &ApiKeyCommand) -> Resource {
    match command {
        ApiKeyCommand::Create(key) => {
            Resource::new(Verb::Create, ResourceType::ApiKey, Some(&key.id))
                .id(Some(key.id.as_str()))
                .named(Some(&key.name))
                .in_org(project_org(state, &key.project_id).as_deref())
                .params(
                    Params::default()
                        .with("project_id", key.project_id.as_str())
                        .with("name", key.name.as_str())
                        .with("roles", roles_param(&key.roles)),
                )
        }
        ApiKeyCommand::Delete { id } => key_resource(state, Verb::Delete, id),
        ApiKeyCommand::Update { id, name, roles } => {
            let mut resource = key_resource(state, Verb::Update, id);
            resource.parameters = resource
                .parameters
                .with_some("name", name.as_deref())
                .with_some("roles", roles.as_ref().map(|r| roles_param(r)));
            resource
        }
    }
}
