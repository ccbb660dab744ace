//! The one permission matrix: every operation the client port serves, the route(s) that
//! reach it, the scope it acts in, and the roles that may perform it. The API layer looks
//! the operation up by route ([`operation_for`]), authenticates the caller, and asks
//! [`decide`] before it does anything; nothing else grants access.
//!
//! `docs/security/permissions.md` holds [`permissions_markdown`]'s output (a unit test keeps
//! them equal), and `conifer policy` prints it.
//!
//! How a principal's roles are found in a scope:
//! - the operator token holds `Operator` everywhere, which the matrix grants for cluster and
//!   administration operations only (never index or vector operations: create an API key);
//! - a user or service account holds its organization role in its organization, and in each
//!   project of that organization its project role; `OrgOwner` also holds `ProjectOwner` in
//!   every project of its organization;
//! - an API key holds its key roles in its own project, and nothing anywhere else.
//!
//! A principal with no role at all in a project or organization gets 404, as if it (and
//! anything in it) did not exist; one with some role but not an allowed one gets 403, and so
//! does an API key on an operation no key role may perform (the administration API).

use crate::audit::{ResourceType, Verb};
use crate::auth::Principal;
use crate::control::state::{ApiKeyRole, OrgRole, ProjectRole};

/// Where an operation acts, which decides whose roles count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// No credential needed.
    Public,
    /// The cluster itself (membership, snapshots, operator tokens, signing keys).
    Cluster,
    /// One organization.
    Organization,
    /// One project (including its indexes and their data).
    Project,
}

/// A role as the matrix knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The break-glass operator token.
    Operator,
    /// An organization role of a user or service account.
    Org(OrgRole),
    /// A project role of a user or service account.
    Project(ProjectRole),
    /// A role of an API key.
    Key(ApiKeyRole),
}

impl Role {
    /// Every role, in the matrix's column order.
    pub fn all() -> Vec<Role> {
        let mut all = vec![Role::Operator];
        all.extend(OrgRole::ALL.map(Role::Org));
        all.extend(ProjectRole::ALL.map(Role::Project));
        all.extend(ApiKeyRole::ALL.map(Role::Key));
        all
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "Operator",
            Role::Org(r) => r.as_str(),
            Role::Project(r) => r.as_str(),
            Role::Key(r) => r.as_str(),
        }
    }
}

macro_rules! operations {
    ($($op:ident => $name:literal, $scope:ident, [$($role:expr),*];)*) => {
        /// Every operation of the client port.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Operation {
            $(
                #[doc = $name]
                $op,
            )*
        }

        impl Operation {
            /// Every operation, in the matrix's row order.
            pub const ALL: &'static [Operation] = &[$(Operation::$op),*];

            /// The operation's name in the matrix and in messages.
            pub fn name(self) -> &'static str {
                match self { $(Operation::$op => $name,)* }
            }

            /// Where it acts.
            pub fn scope(self) -> Scope {
                match self { $(Operation::$op => Scope::$scope,)* }
            }

            /// Whether it reads or writes vectors or namespaces (the data plane), whose
            /// refusals are not audited.
            pub fn is_data_plane(self) -> bool {
                let name = self.name();
                name.starts_with("vector.") || name.starts_with("namespace.")
            }

            /// The roles that may perform it.
            pub fn allowed(self) -> &'static [Role] {
                match self { $(Operation::$op => &[$($role),*],)* }
            }
        }
    };
}

const OPERATOR: Role = Role::Operator;
const ORG_OWNER: Role = Role::Org(OrgRole::OrgOwner);
const ORG_MANAGER: Role = Role::Org(OrgRole::OrgManager);
const ORG_BILLING: Role = Role::Org(OrgRole::OrgBillingAdmin);
const ORG_MEMBER: Role = Role::Org(OrgRole::OrgMember);
const P_OWNER: Role = Role::Project(ProjectRole::ProjectOwner);
const P_MANAGER: Role = Role::Project(ProjectRole::ProjectManager);
const P_MEMBER: Role = Role::Project(ProjectRole::ProjectMember);
const K_PROJECT_EDITOR: Role = Role::Key(ApiKeyRole::ProjectEditor);
const K_PROJECT_VIEWER: Role = Role::Key(ApiKeyRole::ProjectViewer);
const K_CONTROL_EDITOR: Role = Role::Key(ApiKeyRole::ControlPlaneEditor);
const K_CONTROL_VIEWER: Role = Role::Key(ApiKeyRole::ControlPlaneViewer);
const K_DATA_EDITOR: Role = Role::Key(ApiKeyRole::DataPlaneEditor);
const K_DATA_VIEWER: Role = Role::Key(ApiKeyRole::DataPlaneViewer);

operations! {
    Health => "health", Public, [];
    Login => "auth.login", Public, [];
    IssueToken => "auth.token", Public, [];
    ChangePassword => "auth.password", Public, [];

    ClusterDescribe => "cluster.describe", Cluster, [OPERATOR];
    ClusterPromoteMember => "cluster.member.promote", Cluster, [OPERATOR];
    ClusterRemoveMember => "cluster.member.remove", Cluster, [OPERATOR];
    ClusterSnapshot => "cluster.snapshot", Cluster, [OPERATOR];
    RootKeysDescribe => "cluster.root_keys.describe", Cluster, [OPERATOR];
    RootKeysRotate => "cluster.root_keys.rotate", Cluster, [OPERATOR];
    OperatorTokenList => "operator_token.list", Cluster, [OPERATOR];
    OperatorTokenCreate => "operator_token.create", Cluster, [OPERATOR];
    OperatorTokenRotate => "operator_token.rotate", Cluster, [OPERATOR];
    OperatorTokenDelete => "operator_token.delete", Cluster, [OPERATOR];
    SigningKeyRotate => "signing_key.rotate", Cluster, [OPERATOR];
    OrgCreate => "organization.create", Cluster, [OPERATOR];
    ClusterAuditLogRead => "audit_log.read_cluster", Cluster, [OPERATOR];

    OrgList => "organization.list", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER, ORG_BILLING, ORG_MEMBER];
    OrgGet => "organization.get", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER, ORG_BILLING, ORG_MEMBER];
    OrgUpdate => "organization.update", Organization, [OPERATOR, ORG_OWNER];
    OrgDelete => "organization.delete", Organization, [OPERATOR, ORG_OWNER];
    AuditLogRead => "audit_log.read", Organization, [OPERATOR, ORG_OWNER];
    OrgMemberList => "organization.member.list", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    OrgMemberCreate => "organization.member.create", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    OrgMemberUpdate => "organization.member.update", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    OrgMemberRemove => "organization.member.remove", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    ServiceAccountList => "service_account.list", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    ServiceAccountCreate => "service_account.create", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    ServiceAccountUpdate => "service_account.update", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    ServiceAccountRotateSecret => "service_account.rotate_secret", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    // The names come from the cluster's client CA, which the operator runs, and are one
    // namespace for the cluster: binding them is the operator's.
    ServiceAccountSetCertificateNames => "service_account.set_certificate_names", Organization,
        [OPERATOR];
    ServiceAccountDelete => "service_account.delete", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER];
    ProjectCreate => "project.create", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER, ORG_MEMBER];
    ProjectList => "project.list", Organization,
        [OPERATOR, ORG_OWNER, ORG_MANAGER, ORG_BILLING, ORG_MEMBER];

    ProjectGet => "project.get", Project, [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    ProjectUpdate => "project.update", Project, [OPERATOR, P_OWNER];
    ProjectDelete => "project.delete", Project, [OPERATOR, P_OWNER];
    ProjectMemberList => "project.member.list", Project,
        [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    ProjectMemberAdd => "project.member.add", Project, [OPERATOR, P_OWNER];
    ProjectMemberUpdate => "project.member.update", Project, [OPERATOR, P_OWNER];
    ProjectMemberRemove => "project.member.remove", Project, [OPERATOR, P_OWNER];
    ApiKeyList => "api_key.list", Project, [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    ApiKeyGet => "api_key.get", Project, [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    ApiKeyCreate => "api_key.create", Project, [OPERATOR, P_OWNER];
    ApiKeyUpdate => "api_key.update", Project, [OPERATOR, P_OWNER];
    ApiKeyDelete => "api_key.delete", Project, [OPERATOR, P_OWNER];
    PrivateEndpointList => "private_endpoint.list", Project,
        [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    PrivateEndpointGet => "private_endpoint.get", Project,
        [OPERATOR, P_OWNER, P_MANAGER, P_MEMBER];
    PrivateEndpointCreate => "private_endpoint.create", Project, [OPERATOR, P_OWNER];
    PrivateEndpointDelete => "private_endpoint.delete", Project, [OPERATOR, P_OWNER];

    IndexCreate => "index.create", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    IndexList => "index.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    IndexDescribe => "index.describe", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    IndexConfigure => "index.configure", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    IndexDelete => "index.delete", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    IndexRotateKey => "index.rotate_key", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    // Backups and collections are control-plane objects (the seed's ReadWrite / ReadOnly
    // control-plane roles), like indexes.
    BackupCreate => "backup.create", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    BackupList => "backup.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    BackupDescribe => "backup.describe", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    BackupDelete => "backup.delete", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    BackupRestore => "backup.restore", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    RestoreJobList => "restore_job.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    RestoreJobDescribe => "restore_job.describe", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    CollectionCreate => "collection.create", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];
    CollectionList => "collection.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    CollectionDescribe => "collection.describe", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_CONTROL_EDITOR,
         K_CONTROL_VIEWER];
    CollectionDelete => "collection.delete", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_CONTROL_EDITOR];

    VectorUpsert => "vector.upsert", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_DATA_EDITOR];
    VectorUpdate => "vector.update", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_DATA_EDITOR];
    VectorDelete => "vector.delete", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_DATA_EDITOR];
    VectorQuery => "vector.query", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    VectorFetch => "vector.fetch", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    VectorFetchByMetadata => "vector.fetch_by_metadata", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    VectorList => "vector.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    IndexStats => "vector.describe_index_stats", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    NamespaceList => "namespace.list", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    NamespaceDescribe => "namespace.describe", Project,
        [P_OWNER, P_MANAGER, P_MEMBER, K_PROJECT_EDITOR, K_PROJECT_VIEWER, K_DATA_EDITOR,
         K_DATA_VIEWER];
    NamespaceCreate => "namespace.create", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_DATA_EDITOR];
    NamespaceDelete => "namespace.delete", Project,
        [P_OWNER, P_MANAGER, K_PROJECT_EDITOR, K_DATA_EDITOR];
}

impl Operation {
    /// How an attempt at this operation is named in the audit log, in the seed's vocabulary:
    /// its `event.action` and `event.resource_type`. Used for refused attempts, which carry
    /// no command (an audited command names itself: [`crate::control::audit::describe`]).
    pub fn audit_terms(self) -> (Verb, ResourceType) {
        use Operation as O;
        use ResourceType as T;
        use Verb as V;
        match self {
            O::Health | O::ClusterDescribe | O::RootKeysDescribe => (V::Read, T::Cluster),
            O::Login => (V::Login, T::User),
            O::IssueToken => (V::Login, T::ServiceAccount),
            O::ChangePassword => (V::Update, T::User),
            O::ClusterPromoteMember | O::ClusterSnapshot | O::RootKeysRotate => {
                (V::Update, T::Cluster)
            }
            O::ClusterRemoveMember => (V::Delete, T::Cluster),
            O::OperatorTokenList => (V::Read, T::OperatorToken),
            O::OperatorTokenCreate => (V::Create, T::OperatorToken),
            O::OperatorTokenRotate => (V::Update, T::OperatorToken),
            O::OperatorTokenDelete => (V::Delete, T::OperatorToken),
            O::SigningKeyRotate => (V::Create, T::SigningKey),
            O::ClusterAuditLogRead | O::AuditLogRead => (V::Read, T::AuditLog),
            O::OrgCreate => (V::Create, T::Organization),
            O::OrgList | O::OrgGet => (V::Read, T::Organization),
            O::OrgUpdate => (V::Update, T::Organization),
            O::OrgDelete => (V::Delete, T::Organization),
            O::OrgMemberList | O::ProjectMemberList => (V::Read, T::User),
            O::OrgMemberCreate | O::ProjectMemberAdd => (V::Create, T::User),
            O::OrgMemberUpdate | O::ProjectMemberUpdate => (V::Update, T::User),
            O::OrgMemberRemove | O::ProjectMemberRemove => (V::Delete, T::User),
            O::ServiceAccountList => (V::Read, T::ServiceAccount),
            O::ServiceAccountCreate => (V::Create, T::ServiceAccount),
            O::ServiceAccountUpdate
            | O::ServiceAccountRotateSecret
            | O::ServiceAccountSetCertificateNames => (V::Update, T::ServiceAccount),
            O::ServiceAccountDelete => (V::Delete, T::ServiceAccount),
            O::ProjectCreate => (V::Create, T::Project),
            O::ProjectList | O::ProjectGet => (V::Read, T::Project),
            O::ProjectUpdate => (V::Update, T::Project),
            O::ProjectDelete => (V::Delete, T::Project),
            O::ApiKeyList | O::ApiKeyGet => (V::Read, T::ApiKey),
            O::ApiKeyCreate => (V::Create, T::ApiKey),
            O::ApiKeyUpdate => (V::Update, T::ApiKey),
            O::ApiKeyDelete => (V::Delete, T::ApiKey),
            O::PrivateEndpointList | O::PrivateEndpointGet => (V::Read, T::PrivateEndpoints),
            O::PrivateEndpointCreate => (V::Create, T::PrivateEndpoints),
            O::PrivateEndpointDelete => (V::Delete, T::PrivateEndpoints),
            O::IndexCreate | O::NamespaceCreate => (V::Create, T::Index),
            O::IndexList
            | O::IndexDescribe
            | O::IndexStats
            | O::VectorQuery
            | O::VectorFetch
            | O::VectorFetchByMetadata
            | O::VectorList
            | O::NamespaceList
            | O::NamespaceDescribe => (V::Read, T::Index),
            O::IndexConfigure
            | O::IndexRotateKey
            | O::VectorUpsert
            | O::VectorUpdate
            | O::VectorDelete => (V::Update, T::Index),
            O::IndexDelete | O::NamespaceDelete => (V::Delete, T::Index),
            O::BackupCreate => (V::Create, T::Backup),
            O::BackupList | O::BackupDescribe => (V::Read, T::Backup),
            O::BackupDelete => (V::Delete, T::Backup),
            O::BackupRestore => (V::Create, T::Index),
            O::RestoreJobList | O::RestoreJobDescribe => (V::Read, T::Index),
            O::CollectionCreate => (V::Create, T::Collection),
            O::CollectionList | O::CollectionDescribe => (V::Read, T::Collection),
            O::CollectionDelete => (V::Delete, T::Collection),
        }
    }
}

/// Every route of the client port and the one operation it performs: REST as
/// (method, path pattern), gRPC as (`POST`, `/VectorService/<Method>`).
pub const ROUTES: &[(&str, &str, Operation)] = &[
    ("GET", "/health", Operation::Health),
    ("POST", "/auth/login", Operation::Login),
    ("POST", "/oauth/token", Operation::IssueToken),
    ("POST", "/auth/password", Operation::ChangePassword),
    ("GET", "/admin/cluster", Operation::ClusterDescribe),
    (
        "POST",
        "/admin/cluster/members/{id}/promote",
        Operation::ClusterPromoteMember,
    ),
    (
        "DELETE",
        "/admin/cluster/members/{id}",
        Operation::ClusterRemoveMember,
    ),
    (
        "POST",
        "/admin/cluster/snapshot",
        Operation::ClusterSnapshot,
    ),
    (
        "GET",
        "/admin/cluster/root-keys",
        Operation::RootKeysDescribe,
    ),
    (
        "POST",
        "/admin/cluster/root-keys/rotate",
        Operation::RootKeysRotate,
    ),
    (
        "GET",
        "/admin/operator-tokens",
        Operation::OperatorTokenList,
    ),
    (
        "POST",
        "/admin/operator-tokens",
        Operation::OperatorTokenCreate,
    ),
    (
        "POST",
        "/admin/operator-tokens/{id}/rotate",
        Operation::OperatorTokenRotate,
    ),
    (
        "DELETE",
        "/admin/operator-tokens/{id}",
        Operation::OperatorTokenDelete,
    ),
    (
        "POST",
        "/admin/signing-keys/rotate",
        Operation::SigningKeyRotate,
    ),
    ("POST", "/admin/organizations", Operation::OrgCreate),
    (
        "GET",
        "/admin/cluster/audit-logs",
        Operation::ClusterAuditLogRead,
    ),
    ("GET", "/admin/audit-logs", Operation::AuditLogRead),
    ("GET", "/admin/organizations", Operation::OrgList),
    ("GET", "/admin/organizations/{id}", Operation::OrgGet),
    ("PATCH", "/admin/organizations/{id}", Operation::OrgUpdate),
    ("DELETE", "/admin/organizations/{id}", Operation::OrgDelete),
    (
        "GET",
        "/admin/organizations/{id}/members",
        Operation::OrgMemberList,
    ),
    (
        "POST",
        "/admin/organizations/{id}/members",
        Operation::OrgMemberCreate,
    ),
    (
        "PATCH",
        "/admin/organizations/{id}/members/{user_id}",
        Operation::OrgMemberUpdate,
    ),
    (
        "DELETE",
        "/admin/organizations/{id}/members/{user_id}",
        Operation::OrgMemberRemove,
    ),
    (
        "GET",
        "/admin/organizations/{id}/service-accounts",
        Operation::ServiceAccountList,
    ),
    (
        "POST",
        "/admin/organizations/{id}/service-accounts",
        Operation::ServiceAccountCreate,
    ),
    (
        "PATCH",
        "/admin/service-accounts/{id}",
        Operation::ServiceAccountUpdate,
    ),
    (
        "POST",
        "/admin/service-accounts/{id}/rotate-secret",
        Operation::ServiceAccountRotateSecret,
    ),
    (
        "PUT",
        "/admin/service-accounts/{id}/certificate-names",
        Operation::ServiceAccountSetCertificateNames,
    ),
    (
        "DELETE",
        "/admin/service-accounts/{id}",
        Operation::ServiceAccountDelete,
    ),
    ("POST", "/admin/projects", Operation::ProjectCreate),
    ("GET", "/admin/projects", Operation::ProjectList),
    ("GET", "/admin/projects/{id}", Operation::ProjectGet),
    ("PATCH", "/admin/projects/{id}", Operation::ProjectUpdate),
    ("DELETE", "/admin/projects/{id}", Operation::ProjectDelete),
    (
        "GET",
        "/admin/projects/{id}/members",
        Operation::ProjectMemberList,
    ),
    (
        "POST",
        "/admin/projects/{id}/members",
        Operation::ProjectMemberAdd,
    ),
    (
        "PATCH",
        "/admin/projects/{id}/members/{principal_id}",
        Operation::ProjectMemberUpdate,
    ),
    (
        "DELETE",
        "/admin/projects/{id}/members/{principal_id}",
        Operation::ProjectMemberRemove,
    ),
    (
        "GET",
        "/admin/projects/{id}/api-keys",
        Operation::ApiKeyList,
    ),
    (
        "POST",
        "/admin/projects/{id}/api-keys",
        Operation::ApiKeyCreate,
    ),
    ("GET", "/admin/api-keys/{id}", Operation::ApiKeyGet),
    ("PATCH", "/admin/api-keys/{id}", Operation::ApiKeyUpdate),
    ("DELETE", "/admin/api-keys/{id}", Operation::ApiKeyDelete),
    (
        "GET",
        "/admin/projects/{id}/private-endpoints",
        Operation::PrivateEndpointList,
    ),
    (
        "POST",
        "/admin/projects/{id}/private-endpoints",
        Operation::PrivateEndpointCreate,
    ),
    (
        "GET",
        "/admin/private-endpoints/{id}",
        Operation::PrivateEndpointGet,
    ),
    (
        "DELETE",
        "/admin/private-endpoints/{id}",
        Operation::PrivateEndpointDelete,
    ),
    ("POST", "/indexes", Operation::IndexCreate),
    ("GET", "/indexes", Operation::IndexList),
    ("GET", "/indexes/{name}", Operation::IndexDescribe),
    ("PATCH", "/indexes/{name}", Operation::IndexConfigure),
    (
        "POST",
        "/indexes/{name}/rotate-key",
        Operation::IndexRotateKey,
    ),
    ("DELETE", "/indexes/{name}", Operation::IndexDelete),
    ("POST", "/indexes/{name}/backups", Operation::BackupCreate),
    ("GET", "/indexes/{name}/backups", Operation::BackupList),
    ("GET", "/backups", Operation::BackupList),
    ("GET", "/backups/{id}", Operation::BackupDescribe),
    ("DELETE", "/backups/{id}", Operation::BackupDelete),
    (
        "POST",
        "/backups/{id}/create-index",
        Operation::BackupRestore,
    ),
    ("GET", "/restore-jobs", Operation::RestoreJobList),
    ("GET", "/restore-jobs/{id}", Operation::RestoreJobDescribe),
    ("POST", "/collections", Operation::CollectionCreate),
    ("GET", "/collections", Operation::CollectionList),
    ("GET", "/collections/{name}", Operation::CollectionDescribe),
    ("DELETE", "/collections/{name}", Operation::CollectionDelete),
    ("POST", "/vectors/upsert", Operation::VectorUpsert),
    ("POST", "/vectors/update", Operation::VectorUpdate),
    ("POST", "/vectors/delete", Operation::VectorDelete),
    ("DELETE", "/vectors/delete", Operation::VectorDelete),
    ("POST", "/query", Operation::VectorQuery),
    ("GET", "/vectors/fetch", Operation::VectorFetch),
    (
        "POST",
        "/vectors/fetch_by_metadata",
        Operation::VectorFetchByMetadata,
    ),
    ("GET", "/vectors/list", Operation::VectorList),
    ("POST", "/describe_index_stats", Operation::IndexStats),
    ("GET", "/describe_index_stats", Operation::IndexStats),
    ("GET", "/namespaces", Operation::NamespaceList),
    ("POST", "/namespaces", Operation::NamespaceCreate),
    (
        "GET",
        "/namespaces/{namespace}",
        Operation::NamespaceDescribe,
    ),
    (
        "DELETE",
        "/namespaces/{namespace}",
        Operation::NamespaceDelete,
    ),
    ("POST", "/VectorService/Upsert", Operation::VectorUpsert),
    ("POST", "/VectorService/Update", Operation::VectorUpdate),
    ("POST", "/VectorService/Delete", Operation::VectorDelete),
    ("POST", "/VectorService/Query", Operation::VectorQuery),
    ("POST", "/VectorService/Fetch", Operation::VectorFetch),
    (
        "POST",
        "/VectorService/FetchByMetadata",
        Operation::VectorFetchByMetadata,
    ),
    ("POST", "/VectorService/List", Operation::VectorList),
    (
        "POST",
        "/VectorService/DescribeIndexStats",
        Operation::IndexStats,
    ),
    (
        "POST",
        "/VectorService/ListNamespaces",
        Operation::NamespaceList,
    ),
    (
        "POST",
        "/VectorService/DescribeNamespace",
        Operation::NamespaceDescribe,
    ),
    (
        "POST",
        "/VectorService/CreateNamespace",
        Operation::NamespaceCreate,
    ),
    (
        "POST",
        "/VectorService/DeleteNamespace",
        Operation::NamespaceDelete,
    ),
];

/// Path prefix of the gRPC data plane.
pub const GRPC_PREFIX: &str = "/VectorService/";

/// The operation of a gRPC call by its request path, if the path is a known method.
pub fn grpc_operation(path: &str) -> Option<Operation> {
    ROUTES
        .iter()
        .find(|(method, p, _)| *method == "POST" && p.starts_with(GRPC_PREFIX) && *p == path)
        .map(|(_, _, op)| *op)
}

/// What an operation acts on, as the handler found it.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The cluster.
    Cluster,
    /// An organization, by id.
    Organization(&'a str),
    /// A project, by id, with its organization.
    Project {
        /// The project.
        id: &'a str,
        /// Its organization.
        organization_id: &'a str,
    },
}

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The caller holds no role in the project: it is reported missing.
    NotFound,
    /// The caller's roles here do not allow the operation; the message names them.
    Forbidden(String),
}

/// The roles `principal` holds at `target`.
pub fn roles_at(principal: &Principal, target: Target<'_>) -> Vec<Role> {
    match (principal, target) {
        (Principal::Operator { .. }, _) => vec![Role::Operator],
        (Principal::Member(m), Target::Organization(org)) if m.organization_id == org => {
            vec![Role::Org(m.org_role)]
        }
        (
            Principal::Member(m),
            Target::Project {
                id,
                organization_id,
            },
        ) if m.organization_id == organization_id => {
            let mut roles: Vec<Role> = m
                .project_roles
                .get(id)
                .map(|r| Role::Project(*r))
                .into_iter()
                .collect();
            if m.org_role == OrgRole::OrgOwner && !roles.contains(&P_OWNER) {
                roles.push(P_OWNER);
            }
            roles
        }
        (Principal::ApiKey(k), Target::Project { id, .. }) if k.project_id == id => {
            k.roles.iter().map(|r| Role::Key(*r)).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether `principal` may perform `operation` on `target`.
pub fn decide(
    principal: &Principal,
    operation: Operation,
    target: Target<'_>,
) -> Result<(), Denied> {
    debug_assert!(
        matches!(
            (operation.scope(), target),
            (Scope::Cluster, Target::Cluster)
                | (Scope::Organization, Target::Organization(_))
                | (Scope::Project, Target::Project { .. })
        ),
        "{} checked against the wrong kind of target {target:?}",
        operation.name()
    );
    let held = roles_at(principal, target);
    if held.iter().any(|r| operation.allowed().contains(r)) {
        return Ok(());
    }
    if matches!(principal, Principal::ApiKey(_))
        && !operation
            .allowed()
            .iter()
            .any(|r| matches!(r, Role::Key(_)))
    {
        return Err(Denied::Forbidden(format!(
            "API keys cannot perform {}: use a bearer token of a user or service account",
            operation.name()
        )));
    }
    if held.is_empty() && !matches!(target, Target::Cluster) {
        return Err(Denied::NotFound);
    }
    let names: Vec<&str> = held.iter().map(|r| r.as_str()).collect();
    Err(Denied::Forbidden(format!(
        "{} ({}) may not perform {}",
        principal.describe(),
        if names.is_empty() {
            "no role here".to_string()
        } else {
            format!("roles {}", names.join(", "))
        },
        operation.name()
    )))
}

/// Whether `principal` may give, change or take away organization role `role` in
/// `organization_id`: only the operator and the organization's owners touch `OrgOwner`.
pub fn may_manage_org_role(principal: &Principal, organization_id: &str, role: OrgRole) -> bool {
    role != OrgRole::OrgOwner
        || roles_at(principal, Target::Organization(organization_id))
            .iter()
            .any(|r| matches!(r, Role::Operator | Role::Org(OrgRole::OrgOwner)))
}

/// The matrix as a Markdown table: one row per operation with its routes, one column per role.
pub fn permissions_markdown() -> String {
    let roles = Role::all();
    let mut out = String::from("| operation | scope | routes |");
    for role in &roles {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n|---|---|---|");
    for _ in &roles {
        out.push_str("---|");
    }
    out.push('\n');
    for op in Operation::ALL {
        let routes: Vec<String> = ROUTES
            .iter()
            .filter(|(_, _, o)| o == op)
            .map(|(method, path, _)| format!("`{method} {path}`"))
            .collect();
        out.push_str(&format!(
            "| {} | {:?} | {} |",
            op.name(),
            op.scope(),
            routes.join("<br>")
        ));
        for role in &roles {
            let mark = if op.scope() == Scope::Public {
                "any"
            } else if op.allowed().contains(role) {
                "✓"
            } else {
                ""
            };
            out.push_str(&format!(" {mark} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::auth::Member;
    use crate::control::state::{ApiKey, MemberKind};

    #[test]
    fn every_operation_has_a_route_and_every_route_one_operation() {
        for op in Operation::ALL {
            assert!(
                ROUTES.iter().any(|(_, _, o)| o == op),
                "{} has no route",
                op.name()
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (method, path, _) in ROUTES {
            assert!(
                seen.insert((method, path)),
                "{method} {path} is mapped twice"
            );
        }
    }

    #[test]
    fn every_grpc_method_of_the_proto_is_mapped() {
        let proto = include_str!("../../proto/proto/vector_service.proto");
        let methods: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap_or_default().trim())
            .collect();
        assert_eq!(methods.len(), 12, "{methods:?}");
        for method in &methods {
            assert!(
                grpc_operation(&format!("{GRPC_PREFIX}{method}")).is_some(),
                "gRPC method {method} has no operation"
            );
        }
        let grpc_routes = ROUTES
            .iter()
            .filter(|(_, p, _)| p.starts_with(GRPC_PREFIX))
            .count();
        assert_eq!(grpc_routes, methods.len());
    }

    #[test]
    fn public_operations_grant_no_roles_and_others_grant_some() {
        for op in Operation::ALL {
            assert_eq!(
                op.scope() == Scope::Public,
                op.allowed().is_empty(),
                "{}",
                op.name()
            );
        }
    }

    #[test]
    fn the_documented_table_is_the_matrix() {
        let doc = include_str!("../../docs/security/permissions.md");
        assert!(
            doc.contains(&permissions_markdown()),
            "docs/security/permissions.md is out of date: run `conifer policy` and paste its table"
        );
    }

    fn member(org_role: OrgRole, project: Option<(&str, ProjectRole)>) -> Principal {
        Principal::Member(Member {
            id: "u1".into(),
            kind: MemberKind::User,
            organization_id: "o1".into(),
            org_role,
            project_roles: project
                .map(|(p, r)| (p.to_string(), r))
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        })
    }

    fn key(project: &str, roles: &[ApiKeyRole]) -> Principal {
        Principal::ApiKey(ApiKey {
            id: "k".into(),
            project_id: project.into(),
            name: "k".into(),
            roles: roles.to_vec(),
            secret_sha256: String::new(),
            created_at: String::new(),
        })
    }

    const P1: Target<'static> = Target::Project {
        id: "p1",
        organization_id: "o1",
    };

    #[test]
    fn org_owners_own_every_project_of_their_organization_only() {
        let owner = member(OrgRole::OrgOwner, None);
        assert_eq!(decide(&owner, Operation::ProjectDelete, P1), Ok(()));
        let elsewhere = Target::Project {
            id: "p9",
            organization_id: "o2",
        };
        assert_eq!(
            decide(&owner, Operation::ProjectGet, elsewhere),
            Err(Denied::NotFound)
        );
        let plain = member(OrgRole::OrgMember, None);
        assert_eq!(
            decide(&plain, Operation::ProjectGet, P1),
            Err(Denied::NotFound)
        );
    }

    #[test]
    fn project_roles_grant_their_column_and_deny_the_rest_with_403() {
        let viewer = member(OrgRole::OrgMember, Some(("p1", ProjectRole::ProjectMember)));
        assert_eq!(decide(&viewer, Operation::VectorQuery, P1), Ok(()));
        assert!(matches!(
            decide(&viewer, Operation::VectorUpsert, P1),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            decide(
                &viewer,
                Operation::OrgMemberList,
                Target::Organization("o1")
            ),
            Err(Denied::Forbidden(_))
        ));
        assert_eq!(
            decide(&viewer, Operation::OrgGet, Target::Organization("o2")),
            Err(Denied::NotFound)
        );
    }

    #[test]
    fn keys_act_only_in_their_project_and_never_administer() {
        let editor = key("p1", &[ApiKeyRole::ProjectEditor]);
        assert_eq!(decide(&editor, Operation::IndexCreate, P1), Ok(()));
        assert_eq!(decide(&editor, Operation::VectorUpsert, P1), Ok(()));
        assert!(matches!(
            decide(&editor, Operation::ApiKeyCreate, P1),
            Err(Denied::Forbidden(_))
        ));
        let other = Target::Project {
            id: "p2",
            organization_id: "o1",
        };
        assert_eq!(
            decide(&editor, Operation::VectorQuery, other),
            Err(Denied::NotFound)
        );
        assert!(matches!(
            decide(
                &editor,
                Operation::ProjectCreate,
                Target::Organization("o1")
            ),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn the_operator_administers_but_reads_no_data() {
        let op = Principal::Operator {
            token_id: "t".into(),
        };
        assert_eq!(
            decide(&op, Operation::ClusterDescribe, Target::Cluster),
            Ok(())
        );
        assert_eq!(decide(&op, Operation::ApiKeyCreate, P1), Ok(()));
        assert!(matches!(
            decide(&op, Operation::VectorQuery, P1),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            decide(
                &member(OrgRole::OrgOwner, None),
                Operation::ClusterDescribe,
                Target::Cluster
            ),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn only_owners_and_the_operator_manage_the_owner_role() {
        let manager = member(OrgRole::OrgManager, None);
        assert!(may_manage_org_role(&manager, "o1", OrgRole::OrgMember));
        assert!(!may_manage_org_role(&manager, "o1", OrgRole::OrgOwner));
        assert!(may_manage_org_role(
            &member(OrgRole::OrgOwner, None),
            "o1",
            OrgRole::OrgOwner
        ));
        let op = Principal::Operator {
            token_id: "t".into(),
        };
        assert!(may_manage_org_role(&op, "o1", OrgRole::OrgOwner));
    }
}
