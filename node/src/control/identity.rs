//! Principals of the control plane and their deterministic transitions: users (organization
//! members), service accounts, project memberships, operator tokens and the keys that sign
//! bearer tokens.
//!
//! Secrets never enter the state in the clear: passwords as argon2id PHC strings, client
//! secrets and operator tokens as SHA-256 of 256-bit secrets. The token-signing keys are the
//! one exception the design needs (a node must be able to sign); like everything in group 0
//! they are at rest only inside the sealed Raft log and snapshots, and no API returns them.

use serde::{Deserialize, Serialize};

use super::audit::{
    account_resource, member_field, member_handle, member_name, member_resource_type,
    membership_resource, principal_kind, user_resource,
};
use super::state::{check_new, not_found, ControlState, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};

/// Most users (organization members) one organization may hold.
pub const MAX_USERS_PER_ORG: usize = 10_000;
/// Most service accounts one organization may hold.
pub const MAX_SERVICE_ACCOUNTS_PER_ORG: usize = 200;
/// Most members (users and service accounts) one project may hold.
pub const MAX_MEMBERS_PER_PROJECT: usize = 1_000;
/// Most operator tokens the cluster may hold at once.
pub const MAX_OPERATOR_TOKENS: usize = 10;
/// Most certificate names one service account may have bound to it.
pub const MAX_CERTIFICATE_NAMES_PER_ACCOUNT: usize = 10;
/// Longest certificate name (a DNS name's limit, RFC 1035).
pub const MAX_CERTIFICATE_NAME_BYTES: usize = 253;
/// Signing keys kept: the current one and the one before it, so tokens signed just before a
/// rotation stay valid until they expire.
pub const SIGNING_KEYS_KEPT: usize = 2;

/// A role in an organization (Pinecone's four).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrgRole {
    /// Everything in the organization, and owner of every project in it.
    OrgOwner,
    /// Creates projects, manages members and service accounts (except owners).
    OrgManager,
    /// Sees the organization (billing is not part of a self-hosted cluster).
    OrgBillingAdmin,
    /// Sees the organization and creates projects.
    OrgMember,
}

impl OrgRole {
    /// Every role, in declaration order.
    pub const ALL: [OrgRole; 4] = [
        OrgRole::OrgOwner,
        OrgRole::OrgManager,
        OrgRole::OrgBillingAdmin,
        OrgRole::OrgMember,
    ];

    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::OrgOwner => "OrgOwner",
            OrgRole::OrgManager => "OrgManager",
            OrgRole::OrgBillingAdmin => "OrgBillingAdmin",
            OrgRole::OrgMember => "OrgMember",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// A role in a project (Pinecone's membership roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProjectRole {
    /// Everything in the project: settings, members, API keys, indexes, data.
    ProjectOwner,
    /// Builds and queries: indexes and data; sees members and API keys.
    ProjectManager,
    /// Reads: the project, its members and keys, index descriptions and data.
    ProjectMember,
}

impl ProjectRole {
    /// Every role, in declaration order.
    pub const ALL: [ProjectRole; 3] = [
        ProjectRole::ProjectOwner,
        ProjectRole::ProjectManager,
        ProjectRole::ProjectMember,
    ];

    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::ProjectOwner => "ProjectOwner",
            ProjectRole::ProjectManager => "ProjectManager",
            ProjectRole::ProjectMember => "ProjectMember",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// A person: a member of exactly one organization, signing in with email and password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id (UUID).
    pub id: String,
    /// The organization the user belongs to.
    pub organization_id: String,
    /// Sign-in name, lower case, unique in the cluster.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role in the organization.
    pub role: OrgRole,
    /// argon2id hash of the password, PHC string format.
    pub password_phc: String,
    /// Raised whenever the password changes; bearer tokens of older versions are refused.
    pub credential_version: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A machine principal of an organization, signing in with client credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Stable id (UUID); its simple form is the OAuth `client_id`.
    pub id: String,
    /// The organization the account belongs to.
    pub organization_id: String,
    /// Name shown in listings.
    pub name: String,
    /// Role in the organization.
    pub role: OrgRole,
    /// SHA-256 of the client secret, hex.
    pub secret_sha256: String,
    /// Raised whenever the secret is rotated; bearer tokens of older versions are refused.
    pub credential_version: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Names of the client certificates that authenticate as this account (a SAN or the
    /// subject's common name, compared exactly), sorted; also indexed by name in
    /// [`ControlState::certificate_names`], which apply keeps in step.
    pub certificate_names: Vec<String>,
}

/// Which kind of principal a project membership names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKind {
    /// A [`User`].
    User,
    /// A [`ServiceAccount`].
    ServiceAccount,
}

impl MemberKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::ServiceAccount => "service_account",
        }
    }
}

/// A user's or service account's role in one project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectMember {
    /// The project.
    pub project_id: String,
    /// The user's or service account's id.
    pub principal_id: String,
    /// Which kind `principal_id` names.
    pub kind: MemberKind,
    /// Role in the project.
    pub role: ProjectRole,
    /// When the membership was created, RFC 3339.
    pub created_at: String,
}

/// A key that signs bearer tokens (HMAC-SHA256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// Key id, carried in a token's header (`kid`).
    pub id: String,
    /// The 256-bit key, hex.
    pub secret_hex: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A command on principals; proposers fill in ids, times and hashes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum IdentityCommand {
    /// Add a user to its organization (email unique in the cluster).
    CreateUser(User),
    /// Change a user's organization role.
    SetUserRole {
        /// The user.
        id: String,
        /// The new role.
        role: OrgRole,
    },
    /// Replace a user's password hash; the user's earlier tokens stop working.
    SetUserPassword {
        /// The user.
        id: String,
        /// The new argon2id PHC string.
        password_phc: String,
    },
    /// Remove a user and their project memberships.
    DeleteUser {
        /// The user.
        id: String,
    },
    /// Create a service account.
    CreateServiceAccount(ServiceAccount),
    /// Rename a service account, change its organization role and/or replace the names
    /// of client certificates that authenticate as it.
    UpdateServiceAccount {
        /// The account.
        id: String,
        /// New name, if changing.
        name: Option<String>,
        /// New role, if changing.
        role: Option<OrgRole>,
        /// The certificate names bound to the account from now on, if changing (each bound
        /// to no other account).
        certificate_names: Option<Vec<String>>,
    },
    /// Replace a service account's secret digest; its earlier tokens stop working.
    RotateServiceAccountSecret {
        /// The account.
        id: String,
        /// SHA-256 of the new secret, hex.
        secret_sha256: String,
    },
    /// Remove a service account and its project memberships.
    DeleteServiceAccount {
        /// The account.
        id: String,
    },
    /// Give a user or service account of the project's organization a role in the project.
    AddProjectMember(ProjectMember),
    /// Change a member's project role.
    SetProjectMemberRole {
        /// The project.
        project_id: String,
        /// The member.
        principal_id: String,
        /// The new role.
        role: ProjectRole,
    },
    /// Remove a member from a project.
    RemoveProjectMember {
        /// The project.
        project_id: String,
        /// The member.
        principal_id: String,
    },
    /// Add an operator token.
    CreateOperatorToken(super::state::OperatorToken),
    /// Replace one operator token by another in one step.
    RotateOperatorToken {
        /// The token being replaced.
        old_id: String,
        /// Its replacement.
        new: super::state::OperatorToken,
    },
    /// Revoke an operator token. The last one can be revoked only while some user is an
    /// organization owner, so the cluster is never left without an administrator.
    DeleteOperatorToken {
        /// The token.
        id: String,
    },
    /// Start signing tokens with a new key; the previous key still verifies.
    RotateSigningKey(SigningKey),
    /// A user or service account signed in (its audit event is the point; refused when the
    /// principal was deleted meanwhile).
    SignIn {
        /// The principal.
        principal_id: String,
        /// Its kind.
        kind: MemberKind,
    },
}

fn exists(message: String) -> Rejection {
    Rejection::AlreadyExists(message)
}

impl ControlState {
    /// Applies an identity command; on rejection nothing changes.
    pub(super) fn apply_identity(&mut self, command: IdentityCommand) -> Result<Output, Rejection> {
        use IdentityCommand as C;
        match command {
            C::CreateUser(user) => {
                if !self.organizations.contains_key(&user.organization_id) {
                    return Err(not_found("organization", &user.organization_id));
                }
                let taken = if self.users.contains_key(&user.id) {
                    Some(format!("user id '{}' already exists", user.id))
                } else {
                    (self.users.values().any(|u| u.email == user.email))
                        .then(|| format!("a user with email '{}' already exists", user.email))
                };
                check_new(
                    taken,
                    self.users_of(&user.organization_id).len(),
                    MAX_USERS_PER_ORG,
                    "organization",
                    "members",
                )?;
                self.users.insert(user.id.clone(), user.clone());
                Ok(Output::User(user))
            }
            C::SetUserRole { id, role } => {
                let user = self
                    .users
                    .get_mut(&id)
                    .ok_or_else(|| not_found("user", &id))?;
                user.role = role;
                Ok(Output::User(user.clone()))
            }
            C::SetUserPassword { id, password_phc } => {
                let user = self
                    .users
                    .get_mut(&id)
                    .ok_or_else(|| not_found("user", &id))?;
                user.password_phc = password_phc;
                user.credential_version += 1;
                Ok(Output::User(user.clone()))
            }
            C::DeleteUser { id } => {
                self.users
                    .remove(&id)
                    .ok_or_else(|| not_found("user", &id))?;
                self.remove_memberships_of(&id);
                Ok(Output::Done)
            }
            C::CreateServiceAccount(account) => {
                if !self.organizations.contains_key(&account.organization_id) {
                    return Err(not_found("organization", &account.organization_id));
                }
                check_new(
                    self.service_accounts
                        .contains_key(&account.id)
                        .then(|| format!("service account id '{}' already exists", account.id)),
                    self.service_accounts_of(&account.organization_id).len(),
                    MAX_SERVICE_ACCOUNTS_PER_ORG,
                    "organization",
                    "service accounts",
                )?;
                let mut account = account;
                account.certificate_names = self.bind_certificate_names(
                    &account.id,
                    std::mem::take(&mut account.certificate_names),
                )?;
                self.service_accounts
                    .insert(account.id.clone(), account.clone());
                Ok(Output::ServiceAccount(account))
            }
            C::UpdateServiceAccount {
                id,
                name,
                role,
                certificate_names,
            } => {
                if !self.service_accounts.contains_key(&id) {
                    return Err(not_found("service account", &id));
                }
                let names = certificate_names
                    .map(|names| self.bind_certificate_names(&id, names))
                    .transpose()?;
                let account = self
                    .service_accounts
                    .get_mut(&id)
                    .ok_or_else(|| not_found("service account", &id))?;
                if let Some(names) = names {
                    account.certificate_names = names;
                }
                if let Some(name) = name {
                    account.name = name;
                }
                if let Some(role) = role {
                    account.role = role;
                }
                Ok(Output::ServiceAccount(account.clone()))
            }
            C::RotateServiceAccountSecret { id, secret_sha256 } => {
                let account = self
                    .service_accounts
                    .get_mut(&id)
                    .ok_or_else(|| not_found("service account", &id))?;
                account.secret_sha256 = secret_sha256;
                account.credential_version += 1;
                Ok(Output::ServiceAccount(account.clone()))
            }
            C::DeleteServiceAccount { id } => {
                self.service_accounts
                    .remove(&id)
                    .ok_or_else(|| not_found("service account", &id))?;
                self.remove_memberships_of(&id);
                self.certificate_names.retain(|_, account| *account != id);
                Ok(Output::Done)
            }
            C::AddProjectMember(member) => {
                let project = self
                    .projects
                    .get(&member.project_id)
                    .ok_or_else(|| not_found("project", &member.project_id))?;
                let org = match member.kind {
                    MemberKind::User => self
                        .users
                        .get(&member.principal_id)
                        .map(|u| &u.organization_id),
                    MemberKind::ServiceAccount => self
                        .service_accounts
                        .get(&member.principal_id)
                        .map(|a| &a.organization_id),
                };
                // A principal of another organization is as unknown here as a missing one.
                if org != Some(&project.organization_id) {
                    return Err(not_found(member.kind.as_str(), &member.principal_id));
                }
                let key = (member.principal_id.clone(), member.project_id.clone());
                check_new(
                    self.project_members.contains_key(&key).then(|| {
                        format!(
                            "'{}' is already a member of project '{}'",
                            member.principal_id, member.project_id
                        )
                    }),
                    self.members_of(&member.project_id).len(),
                    MAX_MEMBERS_PER_PROJECT,
                    "project",
                    "members",
                )?;
                self.project_members.insert(key, member.clone());
                Ok(Output::ProjectMember(member))
            }
            C::SetProjectMemberRole {
                project_id,
                principal_id,
                role,
            } => {
                let member = self
                    .project_members
                    .get_mut(&(principal_id.clone(), project_id))
                    .ok_or_else(|| not_found("project member", &principal_id))?;
                member.role = role;
                Ok(Output::ProjectMember(member.clone()))
            }
            C::RemoveProjectMember {
                project_id,
                principal_id,
            } => {
                self.project_members
                    .remove(&(principal_id.clone(), project_id))
                    .ok_or_else(|| not_found("project member", &principal_id))?;
                Ok(Output::Done)
            }
            C::CreateOperatorToken(token) => {
                check_new(
                    self.operator_tokens
                        .contains_key(&token.id)
                        .then(|| format!("operator token '{}' already exists", token.id)),
                    self.operator_tokens.len(),
                    MAX_OPERATOR_TOKENS,
                    "the cluster",
                    "operator tokens",
                )?;
                self.operator_tokens.insert(token.id.clone(), token);
                Ok(Output::Done)
            }
            C::RotateOperatorToken { old_id, new } => {
                if !self.operator_tokens.contains_key(&old_id) {
                    return Err(not_found("operator token", &old_id));
                }
                if self.operator_tokens.contains_key(&new.id) {
                    return Err(exists(format!(
                        "operator token '{}' already exists",
                        new.id
                    )));
                }
                self.operator_tokens.remove(&old_id);
                self.operator_tokens.insert(new.id.clone(), new);
                Ok(Output::Done)
            }
            C::DeleteOperatorToken { id } => {
                if !self.operator_tokens.contains_key(&id) {
                    return Err(not_found("operator token", &id));
                }
                let has_owner = self.users.values().any(|u| u.role == OrgRole::OrgOwner);
                if self.operator_tokens.len() == 1 && !has_owner {
                    return Err(Rejection::Invalid(
                        "this is the last operator token and no user is an organization owner; create an OrgOwner user (or another token) before revoking it".into(),
                    ));
                }
                self.operator_tokens.remove(&id);
                Ok(Output::Done)
            }
            C::RotateSigningKey(key) => {
                if self.signing_keys.iter().any(|k| k.id == key.id) {
                    return Err(exists(format!("signing key '{}' already exists", key.id)));
                }
                self.signing_keys.push(key);
                let excess = self.signing_keys.len().saturating_sub(SIGNING_KEYS_KEPT);
                self.signing_keys.drain(..excess);
                Ok(Output::Done)
            }
            C::SignIn { principal_id, kind } => {
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
        }
    }

    /// Users of an organization, by id order.
    pub fn users_of(&self, organization_id: &str) -> Vec<&User> {
        self.users
            .values()
            .filter(|u| u.organization_id == organization_id)
            .collect()
    }

    /// The service account a client certificate carrying `names` (its SANs and subject
    /// common name) authenticates as: the one account any of them is bound to. `Ok(None)`
    /// when none is bound; `Err` naming both when they name two accounts.
    pub fn certificate_account<'a>(
        &'a self,
        names: &[String],
    ) -> Result<Option<&'a ServiceAccount>, (String, String)> {
        let mut found: Option<&ServiceAccount> = None;
        for name in names {
            let Some(account) = self
                .certificate_names
                .get(name)
                .and_then(|id| self.service_accounts.get(id))
            else {
                continue;
            };
            match found {
                Some(other) if other.id != account.id => {
                    return Err((other.id.clone(), account.id.clone()))
                }
                _ => found = Some(account),
            }
        }
        Ok(found)
    }

    /// Makes `names` the certificate names of service account `id` in the index by name
    /// (replacing its earlier ones) and returns them sorted, for the account's own field;
    /// nothing changes if one is bound to another account or there are too many.
    fn bind_certificate_names(
        &mut self,
        id: &str,
        names: Vec<String>,
    ) -> Result<Vec<String>, Rejection> {
        let names: std::collections::BTreeSet<String> = names.into_iter().collect();
        if names.len() > MAX_CERTIFICATE_NAMES_PER_ACCOUNT {
            return Err(Rejection::LimitExceeded(format!(
                "service account '{id}' would have {} certificate names; the limit is \
                 {MAX_CERTIFICATE_NAMES_PER_ACCOUNT}",
                names.len()
            )));
        }
        for name in &names {
            match self.certificate_names.get(name) {
                Some(holder) if holder != id => {
                    return Err(exists(format!(
                        "certificate name '{name}' is bound to service account '{holder}'; \
                         unbind it there first"
                    )))
                }
                _ => {}
            }
        }
        self.certificate_names.retain(|_, account| account != id);
        for name in &names {
            self.certificate_names.insert(name.clone(), id.to_string());
        }
        Ok(names.into_iter().collect())
    }

    /// Service accounts of an organization, by id order.
    pub fn service_accounts_of(&self, organization_id: &str) -> Vec<&ServiceAccount> {
        self.service_accounts
            .values()
            .filter(|a| a.organization_id == organization_id)
            .collect()
    }

    /// Members of a project, by principal id order.
    pub fn members_of(&self, project_id: &str) -> Vec<&ProjectMember> {
        self.project_members
            .values()
            .filter(|m| m.project_id == project_id)
            .collect()
    }

    /// The project memberships of a user or service account, by project id order.
    pub fn memberships_of<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> impl Iterator<Item = &'a ProjectMember> + 'a {
        self.project_members
            .range((principal_id.to_string(), String::new())..)
            .take_while(move |((p, _), _)| p == principal_id)
            .map(|(_, m)| m)
    }

    fn remove_memberships_of(&mut self, principal_id: &str) {
        let projects: Vec<String> = self
            .memberships_of(principal_id)
            .map(|m| m.project_id.clone())
            .collect();
        for project in projects {
            self.project_members
                .remove(&(principal_id.to_string(), project));
        }
    }

    /// The user with this email (compared lower case).
    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        let email = email.to_lowercase();
        self.users.values().find(|u| u.email == email)
    }

    /// The key new tokens are signed with.
    pub fn current_signing_key(&self) -> Option<&SigningKey> {
        self.signing_keys.last()
    }
}

/// The audit description of an identity command (the state before it).
pub(super) fn describe(state: &ControlState, command: &IdentityCommand) -> Resource {
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
        C::UpdateServiceAccount {
            id,
            name,
            role,
            certificate_names,
        } => account_resource(state, V::Update, id).params(
            Params::default()
                .with_some("name", name.as_deref())
                .with_some("role", role.map(|r| r.as_str()))
                .with_some("certificate_names", certificate_names.as_deref()),
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
        C::SignIn { principal_id, kind } => {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::tests::bootstrapped;
    use crate::control::state::{
        Command, OperatorToken, OrganizationCommand, Project, ProjectCommand,
    };

    fn user(id: &str, email: &str, role: OrgRole) -> User {
        User {
            id: id.into(),
            organization_id: "o1".into(),
            email: email.into(),
            name: "n".into(),
            role,
            password_phc: "$argon2id$x".into(),
            credential_version: 0,
            created_at: "t".into(),
        }
    }

    fn account(id: &str) -> ServiceAccount {
        ServiceAccount {
            id: id.into(),
            organization_id: "o1".into(),
            name: "ci".into(),
            role: OrgRole::OrgMember,
            secret_sha256: "aa".into(),
            credential_version: 0,
            created_at: "t".into(),
            certificate_names: Vec::new(),
        }
    }

    fn member(project: &str, principal: &str, kind: MemberKind) -> ProjectMember {
        ProjectMember {
            project_id: project.into(),
            principal_id: principal.into(),
            kind,
            role: ProjectRole::ProjectMember,
            created_at: "t".into(),
        }
    }

    fn id(c: IdentityCommand) -> Command {
        Command::Identity(c)
    }

    #[test]
    fn certificate_names_bind_one_account_each_and_go_with_it() {
        let mut s = bootstrapped();
        let names = |v: &[&str]| Some(v.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let bind = |account: &str, v: &[&str]| {
            id(IdentityCommand::UpdateServiceAccount {
                id: account.into(),
                name: None,
                role: None,
                certificate_names: names(v),
            })
        };
        let mut second = account("sa2");
        second.certificate_names = vec!["b".into()];
        s.apply(id(IdentityCommand::CreateServiceAccount(account("sa1"))))
            .unwrap();
        s.apply(id(IdentityCommand::CreateServiceAccount(second)))
            .unwrap();
        s.apply(bind("sa1", &["z", "a", "a"])).unwrap();
        assert_eq!(s.service_accounts["sa1"].certificate_names, ["a", "z"]);
        let found = |s: &ControlState, v: &[&str]| {
            let v: Vec<String> = v.iter().map(|n| n.to_string()).collect();
            s.certificate_account(&v).map(|a| a.map(|a| a.id.clone()))
        };
        assert_eq!(found(&s, &["x", "z"]), Ok(Some("sa1".into())));
        assert_eq!(found(&s, &["b"]), Ok(Some("sa2".into())));
        assert_eq!(found(&s, &["x"]), Ok(None));
        assert_eq!(found(&s, &["a", "b"]), Err(("sa1".into(), "sa2".into())));
        // A name of another account, or too many names: refused, nothing changes.
        let before = s.clone();
        assert!(matches!(
            s.apply(bind("sa1", &["b"])),
            Err(Rejection::AlreadyExists(m)) if m.contains("sa2")
        ));
        let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        let too_many = id(IdentityCommand::UpdateServiceAccount {
            id: "sa1".into(),
            name: None,
            role: None,
            certificate_names: Some(eleven),
        });
        assert!(matches!(
            s.apply(too_many),
            Err(Rejection::LimitExceeded(_))
        ));
        let mut taken = account("sa3");
        taken.certificate_names = vec!["a".into()];
        assert!(s
            .apply(id(IdentityCommand::CreateServiceAccount(taken)))
            .is_err());
        assert_eq!(s, before);
        // Replacing drops the old names; deleting the account drops the rest.
        s.apply(bind("sa1", &["c"])).unwrap();
        assert_eq!(found(&s, &["a"]), Ok(None));
        s.apply(id(IdentityCommand::DeleteServiceAccount {
            id: "sa1".into(),
        }))
        .unwrap();
        assert_eq!(found(&s, &["c"]), Ok(None));
        assert_eq!(
            s.certificate_names.keys().collect::<Vec<_>>(),
            [&"b".to_string()]
        );
    }

    #[test]
    fn emails_are_unique_and_a_rejected_user_changes_nothing() {
        let mut s = bootstrapped();
        s.apply(id(IdentityCommand::CreateUser(user(
            "u1",
            "a@x.io",
            OrgRole::OrgOwner,
        ))))
        .unwrap();
        let before = s.clone();
        let dup = s.apply(id(IdentityCommand::CreateUser(user(
            "u2",
            "a@x.io",
            OrgRole::OrgMember,
        ))));
        assert!(matches!(dup, Err(Rejection::AlreadyExists(_))));
        assert_eq!(s, before);
        assert_eq!(s.user_by_email("A@X.IO").unwrap().id, "u1");
    }

    #[test]
    fn deleting_a_user_or_account_removes_its_project_memberships() {
        let mut s = bootstrapped();
        s.apply(id(IdentityCommand::CreateUser(user(
            "u1",
            "a@x.io",
            OrgRole::OrgMember,
        ))))
        .unwrap();
        s.apply(id(IdentityCommand::CreateServiceAccount(account("sa1"))))
            .unwrap();
        s.apply(id(IdentityCommand::AddProjectMember(member(
            "p0",
            "u1",
            MemberKind::User,
        ))))
        .unwrap();
        s.apply(id(IdentityCommand::AddProjectMember(member(
            "p0",
            "sa1",
            MemberKind::ServiceAccount,
        ))))
        .unwrap();
        assert_eq!(s.members_of("p0").len(), 2);
        s.apply(id(IdentityCommand::DeleteUser { id: "u1".into() }))
            .unwrap();
        s.apply(id(IdentityCommand::DeleteServiceAccount {
            id: "sa1".into(),
        }))
        .unwrap();
        assert!(s.members_of("p0").is_empty());
    }

    #[test]
    fn deleting_a_project_removes_its_memberships_only() {
        let mut s = bootstrapped();
        s.apply(Command::Project(ProjectCommand::Create {
            project: Project {
                id: "p1".into(),
                organization_id: "o1".into(),
                name: "other".into(),
                max_pods: 0,
                force_encryption_with_cmek: false,
                cmek_key_arn: None,
                require_client_certificate: false,
                created_at: "t".into(),
                key: crate::crypto::ProjectKey::placeholder(),
            },
            owner: None,
        }))
        .unwrap();
        s.apply(id(IdentityCommand::CreateUser(user(
            "u1",
            "a@x.io",
            OrgRole::OrgMember,
        ))))
        .unwrap();
        for project in ["p0", "p1"] {
            s.apply(id(IdentityCommand::AddProjectMember(member(
                project,
                "u1",
                MemberKind::User,
            ))))
            .unwrap();
        }
        s.apply(Command::Project(ProjectCommand::Delete { id: "p1".into() }))
            .unwrap();
        let left: Vec<&str> = s
            .memberships_of("u1")
            .map(|m| m.project_id.as_str())
            .collect();
        assert_eq!(left, ["p0"]);
        assert_eq!(s.members_of("p0").len(), 1);
        assert!(s.members_of("p1").is_empty());
    }

    #[test]
    fn a_member_must_exist_in_the_projects_organization() {
        let mut s = bootstrapped();
        s.apply(Command::Organization(OrganizationCommand::Create(
            crate::control::state::Organization {
                id: "o2".into(),
                name: "other".into(),
                created_at: "t".into(),
            },
        )))
        .unwrap();
        let mut stranger = user("u9", "s@x.io", OrgRole::OrgOwner);
        stranger.organization_id = "o2".into();
        s.apply(id(IdentityCommand::CreateUser(stranger))).unwrap();
        let before = s.clone();
        for principal in ["u9", "nobody"] {
            let r = s.apply(id(IdentityCommand::AddProjectMember(member(
                "p0",
                principal,
                MemberKind::User,
            ))));
            assert!(
                matches!(r, Err(Rejection::NotFound { .. })),
                "{principal}: {r:?}"
            );
        }
        assert_eq!(s, before);
    }

    #[test]
    fn password_change_and_secret_rotation_raise_the_credential_version() {
        let mut s = bootstrapped();
        s.apply(id(IdentityCommand::CreateUser(user(
            "u1",
            "a@x.io",
            OrgRole::OrgMember,
        ))))
        .unwrap();
        s.apply(id(IdentityCommand::CreateServiceAccount(account("sa1"))))
            .unwrap();
        s.apply(id(IdentityCommand::SetUserPassword {
            id: "u1".into(),
            password_phc: "$argon2id$y".into(),
        }))
        .unwrap();
        s.apply(id(IdentityCommand::RotateServiceAccountSecret {
            id: "sa1".into(),
            secret_sha256: "bb".into(),
        }))
        .unwrap();
        assert_eq!(s.users["u1"].credential_version, 1);
        assert_eq!(s.service_accounts["sa1"].credential_version, 1);
        assert_eq!(s.service_accounts["sa1"].secret_sha256, "bb");
    }

    #[test]
    fn the_last_operator_token_stays_until_an_owner_exists() {
        let mut s = bootstrapped();
        let only = s.operator_tokens.keys().next().unwrap().clone();
        let refused = s.apply(id(IdentityCommand::DeleteOperatorToken {
            id: only.clone(),
        }));
        assert!(matches!(refused, Err(Rejection::Invalid(_))));
        s.apply(id(IdentityCommand::CreateUser(user(
            "u1",
            "a@x.io",
            OrgRole::OrgOwner,
        ))))
        .unwrap();
        s.apply(id(IdentityCommand::DeleteOperatorToken { id: only }))
            .unwrap();
        assert!(s.operator_tokens.is_empty());
    }

    #[test]
    fn rotating_an_operator_token_replaces_it() {
        let mut s = bootstrapped();
        let old = s.operator_tokens.keys().next().unwrap().clone();
        let new = OperatorToken {
            id: "op-new".into(),
            secret_sha256: "cc".into(),
            created_at: "t".into(),
        };
        s.apply(id(IdentityCommand::RotateOperatorToken {
            old_id: old.clone(),
            new,
        }))
        .unwrap();
        assert!(!s.operator_tokens.contains_key(&old));
        assert!(s.operator_tokens.contains_key("op-new"));
    }

    #[test]
    fn rotation_keeps_the_current_and_the_previous_signing_key() {
        let mut s = bootstrapped();
        for i in 0..4 {
            s.apply(id(IdentityCommand::RotateSigningKey(SigningKey {
                id: format!("k{i}"),
                secret_hex: "00".into(),
                created_at: "t".into(),
            })))
            .unwrap();
        }
        let ids: Vec<&str> = s.signing_keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k2", "k3"]);
        assert_eq!(s.current_signing_key().unwrap().id, "k3");
    }

    #[test]
    fn project_member_limit_is_enforced_at_the_edge() {
        let mut s = bootstrapped();
        s.projects.insert(
            "p1".into(),
            Project {
                id: "p1".into(),
                organization_id: "o1".into(),
                name: "big".into(),
                max_pods: 0,
                force_encryption_with_cmek: false,
                cmek_key_arn: None,
                require_client_certificate: false,
                created_at: "t".into(),
                key: crate::crypto::ProjectKey::placeholder(),
            },
        );
        for i in 0..MAX_MEMBERS_PER_PROJECT {
            let uid = format!("u{i}");
            s.users.insert(
                uid.clone(),
                user(&uid, &format!("{uid}@x.io"), OrgRole::OrgMember),
            );
            s.apply(id(IdentityCommand::AddProjectMember(member(
                "p1",
                &uid,
                MemberKind::User,
            ))))
            .unwrap();
        }
        s.users
            .insert("late".into(), user("late", "late@x.io", OrgRole::OrgMember));
        let over = s.apply(id(IdentityCommand::AddProjectMember(member(
            "p1",
            "late",
            MemberKind::User,
        ))));
        assert!(matches!(over, Err(Rejection::LimitExceeded(_))));
    }
}
