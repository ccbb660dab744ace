//! Organizations: create, rename, delete (one with no projects, with its users and service
//! accounts), and how each is audited.

use serde::{Deserialize, Serialize};

use super::audit::org_resource;
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};

/// Most organizations one cluster may hold.
pub const MAX_ORGANIZATIONS: usize = 100;

/// An organization: owns projects, users and service accounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A change of an organization.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OrganizationCommand {
    /// Create an organization (operator only).
    Create(Organization),
    /// Rename an organization.
    Rename {
        /// The organization.
        id: String,
        /// The new name.
        name: String,
    },
    /// Delete an organization with no projects, and its users and service accounts.
    Delete {
        /// The organization.
        id: String,
    },
}

impl ControlState {
    /// Applies an organization command; on rejection nothing changes.
    pub(super) fn apply_organization(&mut self, command: OrganizationCommand) -> Outcome {
        match command {
            OrganizationCommand::Create(org) => {
                check_new(
                    self.organizations
                        .contains_key(&org.id)
                        .then(|| format!("organization id '{}' already exists", org.id)),
                    self.organizations.len(),
                    MAX_ORGANIZATIONS,
                    "the cluster",
                    "organizations",
                )?;
                self.organizations.insert(org.id.clone(), org.clone());
                Ok(Output::Organization(org))
            }
            OrganizationCommand::Rename { id, name } => {
                let org = self
                    .organizations
                    .get_mut(&id)
                    .ok_or_else(|| not_found("organization", &id))?;
                org.name = name;
                Ok(Output::Organization(org.clone()))
            }
            OrganizationCommand::Delete { id } => {
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
                let accounts = &self.service_accounts;
                self.certificate_names
                    .retain(|_, account| accounts.contains_key(account));
                Ok(Output::Done)
            }
        }
    }
}

/// The audit description of an organization command (the state before it).
pub(super) fn describe(state: &ControlState, command: &OrganizationCommand) -> Resource {
    match command {
        OrganizationCommand::Create(org) => {
            Resource::new(Verb::Create, ResourceType::Organization, Some(&org.id))
                .id(Some(org.name.as_str()))
                .named(Some(&org.name))
                .in_org(Some(&org.id))
                .params(Params::default().with("name", org.name.as_str()))
        }
        // A rename is recorded under the new name, as the seed says.
        OrganizationCommand::Rename { id, name } => org_resource(state, Verb::Update, id)
            .id(Some(name.as_str()))
            .params(Params::default().with("name", name.as_str())),
        OrganizationCommand::Delete { id } => org_resource(state, Verb::Delete, id),
    }
}
