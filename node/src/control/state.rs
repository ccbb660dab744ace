//! The control-plane state and its deterministic transition function.
//!
//! Every id and timestamp is chosen by the proposer and carried in the command, so applying
//! the same log gives byte-identical state on every node. Secrets never enter the state:
//! API keys and operator tokens are stored as SHA-256 digests of high-entropy secrets.

use std::collections::BTreeMap;

use conifer_raft::group_state::StateWrites;
use conifer_raft::{Format, MachineError};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditContext, AuditDraft, AuditLog};

pub use super::identity::{
    IdentityCommand, MemberKind, OrgRole, ProjectMember, ProjectRole, ServiceAccount, SigningKey,
    User,
};

pub use super::indexes::{Index, IndexCommand, IndexState, Metric, MAX_INDEXES_PER_PROJECT};
pub use super::keys::{ApiKey, ApiKeyCommand, ApiKeyRole, MAX_API_KEYS_PER_PROJECT};
pub use super::organizations::{Organization, OrganizationCommand, MAX_ORGANIZATIONS};
pub use super::projects::{Project, ProjectCommand, MAX_PROJECTS_PER_ORG};

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
        /// The cluster's id ([`ControlState::cluster_id`]).
        cluster_id: String,
    },
    /// Organizations ([`super::organizations`]).
    Organization(OrganizationCommand),
    /// Projects ([`super::projects`]).
    Project(ProjectCommand),
    /// API keys ([`super::keys`]).
    ApiKey(ApiKeyCommand),
    /// Private endpoints ([`super::private_endpoints`]).
    PrivateEndpoint(super::private_endpoints::PrivateEndpointCommand),
    /// Indexes ([`super::indexes`]).
    Index(IndexCommand),
    /// Backups, collections and restore jobs ([`super::backups`]).
    Backup(super::backups::BackupCommand),
    /// Users, service accounts, memberships, sign-ins, operator tokens and signing keys
    /// ([`super::identity`]).
    Identity(IdentityCommand),
    /// Apply `command` and append its audit event, with the outcome, in the same step.
    Audited {
        /// Who asked, when, from where.
        context: AuditContext,
        /// What they asked for.
        command: Box<Command>,
    },
    /// Append events of attempts that changed nothing (denials, failed sign-ins).
    RecordAudit(Vec<AuditDraft>),
    /// Append events of what a node observed (an index's keys stopping or starting to
    /// unwrap there), kept for the whole retention like changes.
    RecordObserved(Vec<AuditDraft>),
    /// Remove audit events older than `before`, recording the purge in each chain touched.
    PurgeAudit {
        /// The purge's own context (actor: the system).
        context: AuditContext,
        /// Cut-off time ([`crate::audit::timestamp`] text).
        before: String,
    },
    /// The root key: rotation steps ([`super::root_keys`]).
    RootKeys(super::root_keys::RootKeysCommand),
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
    /// The private endpoint as stored.
    PrivateEndpoint(super::private_endpoints::PrivateEndpoint),
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
    /// The backup or collection as stored.
    Backup(super::backups::Backup),
    /// The restore job as stored.
    RestoreJob(super::backups::RestoreJob),
    /// A restore started: the new index and its job.
    Restore(Box<Index>, super::backups::RestoreJob),
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
    /// The root key's version, rotation and deletions waiting to be shredded.
    pub root_keys: super::root_keys::RootKeyState,
    /// Private endpoints of every project, by (project id, endpoint id).
    pub private_endpoints: BTreeMap<(String, String), super::private_endpoints::PrivateEndpoint>,
    /// Names a client certificate may carry (a SAN or its subject's common name), each bound
    /// to the service account it authenticates, by name: a name is bound to one account.
    pub certificate_names: BTreeMap<String, String>,
    /// Backups and collections by id ([`super::backups`]).
    pub backups: BTreeMap<String, super::backups::Backup>,
    /// Restore jobs by id.
    pub restore_jobs: BTreeMap<String, super::backups::RestoreJob>,
    /// The next [`super::backups::Backup::seq`] / [`super::backups::RestoreJob::seq`].
    pub next_backup_seq: u64,
    /// The cluster's id, chosen at bootstrap: the folder of its backups in a backup store
    /// that other clusters (or other data) may share.
    pub cluster_id: String,
}

/// The checks of a creation after its parent was found: `taken` (why the id or a unique
/// name is in use) is `ALREADY_EXISTS`, and a `holder` that already has `count` of the
/// `plural` kind, at or past `limit`, is `RESOURCE_EXHAUSTED` naming both.
pub(super) fn check_new(
    taken: Option<String>,
    count: usize,
    limit: usize,
    holder: &str,
    plural: &str,
) -> Result<(), Rejection> {
    if let Some(message) = taken {
        return Err(Rejection::AlreadyExists(message));
    }
    if count >= limit {
        return Err(Rejection::LimitExceeded(format!(
            "{holder} already has {count} {plural}; the limit is {limit}"
        )));
    }
    Ok(())
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
                cluster_id,
            } => {
                if !self.organizations.is_empty() || !self.operator_tokens.is_empty() {
                    return Err(Rejection::Invalid("cluster is already bootstrapped".into()));
                }
                self.cluster_id = cluster_id;
                self.signing_keys.push(signing_key);
                self.organizations
                    .insert(organization.id.clone(), organization);
                self.projects.insert(project.id.clone(), project);
                self.api_keys.insert(api_key.id.clone(), api_key);
                self.operator_tokens
                    .insert(operator_token.id.clone(), operator_token);
                Ok(Output::Done)
            }
            Command::Organization(command) => self.apply_organization(command),
            Command::Project(command) => self.apply_project(command),
            Command::ApiKey(command) => self.apply_api_key(command),
            Command::PrivateEndpoint(command) => self.apply_private_endpoint(command),
            Command::Backup(command) => self.apply_backup(command),
            Command::Index(command) => self.apply_index(command),
            Command::Identity(command) => self.apply_identity(command),
            Command::RootKeys(command) => self.apply_root_keys(command),
            Command::Audited { context, command } => self.apply_audited(context, *command),
            Command::RecordAudit(drafts) => {
                self.apply_record_audit(drafts, crate::audit::EventClass::Refusal)
            }
            Command::RecordObserved(drafts) => {
                self.apply_record_audit(drafts, crate::audit::EventClass::Change)
            }
            Command::PurgeAudit { context, before } => self.apply_purge_audit(context, &before),
            Command::Membership(record) => match record.failure {
                None => {
                    if matches!(
                        record.change,
                        super::membership::MemberChange::Remove { .. }
                    ) {
                        self.drop_node_from_key_rotations(record.node_id);
                    }
                    Ok(Output::Done)
                }
                Some(failure) => Err(Rejection::Invalid(failure.reason)),
            },
        }
    }
}
/// Format of control-plane commands in group 0's log (and in forwarded proposals).
pub const COMMAND_FORMAT: Format = Format::new("control-plane command", 6);
/// Format of group 0's snapshots: the whole [`ControlState`].
pub const SNAPSHOT_FORMAT: Format = Format::new("control-plane snapshot", 6);
/// Format of a command's [`Outcome`], as the response of its proposal.
pub const OUTCOME_FORMAT: Format = Format::new("control-plane outcome", 6);

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
    use crate::audit::{self, EventOutcome, Resource, ResourceType, Verb};
    use crate::crypto::{IndexKeys, ProjectKey};

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
            cmek_key_arn: None,
            require_client_certificate: false,
            created_at: "t".into(),
            key: ProjectKey::placeholder(),
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
            cluster_id: "c0".into(),
        })
        .unwrap();
        s
    }

    pub(crate) fn index(name: &str) -> Index {
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
            keys: IndexKeys::placeholder(),
            restore: None,
            hnsw: None,
        }
    }

    #[test]
    fn customer_managed_encryption_once_set_stays_on_with_its_key() {
        let mut s = bootstrapped();
        let update = |force: Option<bool>, arn: Option<&str>| {
            Command::Project(ProjectCommand::Update {
                id: "p0".into(),
                name: None,
                max_pods: None,
                force_encryption_with_cmek: force,
                cmek_key_arn: arn.map(Into::into),
                require_client_certificate: None,
            })
        };
        let refused = |outcome: Outcome, needle: &str| match outcome {
            Err(Rejection::Invalid(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected a refusal naming '{needle}', got {other:?}"),
        };
        refused(s.apply(update(Some(true), None)), "cmek_key_arn");
        refused(s.apply(update(Some(false), Some("arn:a"))), "cmek_key_arn");
        assert!(!s.projects["p0"].force_encryption_with_cmek);
        s.apply(update(None, Some("arn:a"))).unwrap();
        assert!(s.projects["p0"].force_encryption_with_cmek);
        refused(s.apply(update(Some(false), None)), "cannot be turned off");
        refused(s.apply(update(None, Some("arn:b"))), "cannot be changed");
        s.apply(update(Some(true), Some("arn:a"))).unwrap();
        assert_eq!(s.projects["p0"].cmek_key_arn.as_deref(), Some("arn:a"));
        // An index whose keys were made without the project's KMS key (a proposer that had
        // not yet seen the setting) is refused; one made by it is created.
        refused(
            s.apply(Command::Index(IndexCommand::Create {
                index: index("under-project-key"),
                ports: None,
            })),
            "customer-managed key",
        );
        let mut cmek_index = index("under-cmek");
        cmek_index.keys.versions[0].wrapped.provider = crate::crypto::kms::KMS_PROVIDER.into();
        cmek_index.keys.versions[0].wrapped.key_id = "arn:a".into();
        s.apply(Command::Index(IndexCommand::Create {
            index: cmek_index.clone(),
            ports: None,
        }))
        .unwrap();
        cmek_index.name = "under-another-kms-key".into();
        cmek_index.keys.versions[0].wrapped.key_id = "arn:b".into();
        refused(
            s.apply(Command::Index(IndexCommand::Create {
                index: cmek_index,
                ports: None,
            })),
            "customer-managed key",
        );
        // A project created with the requirement but no key, or the reverse, is refused.
        let mut half = project("p9", "half");
        half.force_encryption_with_cmek = true;
        refused(
            s.apply(Command::Project(ProjectCommand::Create {
                project: half,
                owner: None,
            })),
            "cmek_key_arn",
        );
    }

    #[test]
    fn an_index_key_rotation_drops_the_old_version_only_when_every_replica_resealed() {
        let mut s = bootstrapped();
        let mut rotated = index("rotated");
        rotated.replicas = vec![1, 2, 3];
        s.apply(Command::Index(IndexCommand::Create {
            index: rotated,
            ports: None,
        }))
        .unwrap();
        let version = |v: u32| {
            let mut next = IndexKeys::placeholder().versions[0].clone();
            next.version = v;
            next
        };
        let rotate = |v: u32| {
            Command::Index(IndexCommand::RotateKey {
                project_id: "p0".into(),
                name: "rotated".into(),
                version: version(v),
            })
        };
        let resealed = |node: u64, v: u32| {
            Command::Index(IndexCommand::KeyResealed {
                project_id: "p0".into(),
                name: "rotated".into(),
                node,
                version: v,
            })
        };
        let keys = |s: &ControlState| s.indexes[&("p0".into(), "rotated".into())].keys.clone();
        assert!(s.apply(rotate(3)).is_err(), "not the next version");
        assert!(s.apply(resealed(1, 1)).is_err(), "no rotation runs");
        s.apply(rotate(2)).unwrap();
        assert_eq!(keys(&s).current, 2);
        assert_eq!(keys(&s).versions.len(), 2);
        assert!(s.apply(rotate(3)).is_err(), "one rotation at a time");
        s.apply(resealed(1, 2)).unwrap();
        s.apply(resealed(1, 2)).unwrap();
        s.apply(resealed(2, 2)).unwrap();
        assert_eq!(keys(&s).versions.len(), 2, "node 3 has not re-sealed");
        // Node 3 leaves the cluster: nothing waits for it any more.
        s.apply(Command::Membership(
            crate::control::membership::MembershipRecord {
                node_id: 3,
                change: crate::control::membership::MemberChange::Remove { force: true },
                failure: None,
            },
        ))
        .unwrap();
        let done = keys(&s);
        assert_eq!(done.current, 2);
        assert_eq!(
            done.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![2]
        );
        assert!(done.resealed.is_empty());
        s.apply(rotate(3)).unwrap();
    }

    #[test]
    fn index_ports_are_given_after_the_last_wrapping_and_a_full_range_refuses() {
        let mut s = bootstrapped();
        let create = |s: &mut ControlState, name: &str| {
            s.apply(Command::Index(IndexCommand::Create {
                index: index(name),
                ports: Some((7500, 7502)),
            }))
            .map(|out| match out {
                Output::Index(i) => i.port,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(create(&mut s, "a"), Ok(Some(7500)));
        assert_eq!(create(&mut s, "b"), Ok(Some(7501)));
        s.apply(Command::Index(IndexCommand::Delete {
            project_id: "p0".into(),
            name: "a".into(),
        }))
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
        let plain = s.apply(Command::Index(IndexCommand::Create {
            index: index("f"),
            ports: None,
        }));
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
            cluster_id: "c0".into(),
        });
        assert!(matches!(again, Err(Rejection::Invalid(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn duplicate_project_name_is_rejected_without_change() {
        let mut s = bootstrapped();
        s.apply(Command::Project(ProjectCommand::Create {
            project: project("p1", "alpha"),
            owner: None,
        }))
        .unwrap();
        let before = s.clone();
        let dup = s.apply(Command::Project(ProjectCommand::Create {
            project: project("p2", "alpha"),
            owner: None,
        }));
        assert!(matches!(dup, Err(Rejection::AlreadyExists(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn deleting_a_project_deletes_its_keys() {
        let mut s = bootstrapped();
        s.apply(Command::Project(ProjectCommand::Create {
            project: project("p1", "alpha"),
            owner: None,
        }))
        .unwrap();
        s.apply(Command::ApiKey(ApiKeyCommand::Create(key("k1", "p1"))))
            .unwrap();
        s.apply(Command::Project(ProjectCommand::Delete { id: "p1".into() }))
            .unwrap();
        assert!(!s.api_keys.contains_key("k1"));
        assert!(s.api_keys.contains_key("k0"));
        assert!(matches!(
            s.apply(Command::Project(ProjectCommand::Delete { id: "p1".into() })),
            Err(Rejection::NotFound { .. })
        ));
    }

    #[test]
    fn key_limit_per_project_is_enforced_at_the_edge() {
        let mut s = bootstrapped();
        for i in 1..MAX_API_KEYS_PER_PROJECT {
            s.apply(Command::ApiKey(ApiKeyCommand::Create(key(
                &format!("k{i}"),
                "p0",
            ))))
            .unwrap();
        }
        assert_eq!(s.keys_of("p0").len(), MAX_API_KEYS_PER_PROJECT);
        let over = s.apply(Command::ApiKey(ApiKeyCommand::Create(key(
            "one-too-many",
            "p0",
        ))));
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
        let create = |id: &str| {
            Command::Project(ProjectCommand::Create {
                project: project(id, "alpha"),
                owner: None,
            })
        };
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
            audited(
                "inner",
                Command::Project(ProjectCommand::Delete { id: "p0".into() }),
            ),
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
            s.apply(Command::ApiKey(ApiKeyCommand::Create(key("k1", "nope")))),
            Err(Rejection::NotFound { .. })
        ));
    }
}
