//! The cluster's root key as the control plane tracks it, for root key rotation and
//! crypto-shredding (local keyring roots; an AWS KMS root rotates its own key material).
//!
//! A rotation is recorded before anything is wrapped under the new version
//! ([`RootKeysCommand::Begin`]); each project key is then wrapped again, compare-and-set
//! ([`RootKeysCommand::Rewrap`]); [`RootKeysCommand::Finish`] commits only when every
//! project key is wrapped under the new version, and only then do nodes delete the old
//! versions from their keyrings ([`super::rotation`] drives the steps).
//!
//! Crypto-shredding: deleting an index or a project records it as pending
//! ([`RootKeyState::pending_shreds`]); the next rotation starts on its own and, when it
//! finishes, the root version that a copy of the data taken before the deletion needs is
//! gone from every keyring.

use serde::{Deserialize, Serialize};

use super::audit::project_org;
use super::state::{not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{
    AuditContext, AuditDraft, EventClass, EventOutcome, Params, Resource, ResourceType, Verb,
};
use crate::crypto::provider::LOCAL_PROVIDER as LOCAL_KEYRING_PROVIDER;
use crate::crypto::ProjectKey;

/// Most deletions kept pending for the next rotation; beyond it the oldest are dropped from
/// the list (the rotation that follows shreds them all the same: it retires every older
/// root version).
pub const MAX_PENDING_SHREDS: usize = 1_000;

/// A deleted index or project whose data a root rotation has yet to shred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shred {
    /// `index` or `project`.
    pub kind: String,
    /// The organization it belonged to.
    pub organization_id: Option<String>,
    /// The project (the project itself for a project).
    pub project_id: String,
    /// The index's name, or the project's.
    pub name: String,
}

/// Why a rotation started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationReason {
    /// The operator asked (`conifer keys rotate-root`).
    Requested,
    /// Deleted indexes or projects are to be shredded.
    Shredding,
}

impl RotationReason {
    /// Lower-case name for answers and audit parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationReason::Requested => "requested",
            RotationReason::Shredding => "shredding",
        }
    }
}

/// A root key rotation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// The version being retired.
    pub from: u32,
    /// The new version.
    pub to: u32,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Why.
    pub reason: RotationReason,
    /// The deletions it shreds (taken from the pending list when it began).
    pub shreds: Vec<Shred>,
}

/// The root key's state in the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootKeyState {
    /// The root version every project key is wrapped under once no rotation is in
    /// progress; 0 until the first rotation (a keyring starts at version 1).
    pub current: u32,
    /// The rotation in progress.
    pub rotation: Option<RootRotation>,
    /// Deletions waiting for the next rotation.
    pub pending_shreds: Vec<Shred>,
    /// Rotations finished since the cluster began.
    pub rotations: u64,
}

impl RootKeyState {
    /// The version project keys are wrapped under when no rotation is running (the
    /// keyring's first version before any rotation).
    pub fn version(&self) -> u32 {
        self.current.max(1)
    }
}

/// A step of a root key rotation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RootKeysCommand {
    /// Record a rotation from the current version to `to` (refused while one runs or when
    /// `to` is not after the current version).
    Begin {
        /// The new version.
        to: u32,
        /// When, RFC 3339.
        started_at: String,
        /// Why.
        reason: RotationReason,
    },
    /// Replace project `project_id`'s key, still `expected`, with `key` (the same key
    /// wrapped under the rotation's new version).
    Rewrap {
        /// The project.
        project_id: String,
        /// Its wrapped key as the proposer read it.
        expected: ProjectKey,
        /// The key wrapped again.
        key: ProjectKey,
    },
    /// Commit the rotation to `to`: refused while a project key is wrapped under an older
    /// version. The deletions it shreds are recorded in the same step, one `index.shred` /
    /// `project.shred` event each, from `shreds_context` (actor, time, node; the event ids
    /// are its id with `-<n>`).
    Finish {
        /// The rotation's new version.
        to: u32,
        /// The context of the shredding events.
        shreds_context: AuditContext,
    },
}

impl ControlState {
    /// Applies a root key command; on rejection nothing changes.
    pub(super) fn apply_root_keys(&mut self, command: RootKeysCommand) -> Outcome {
        match command {
            RootKeysCommand::Begin {
                to,
                started_at,
                reason,
            } => {
                let root = &mut self.root_keys;
                if let Some(running) = &root.rotation {
                    return Err(Rejection::Invalid(format!(
                        "a root key rotation to version {} is in progress",
                        running.to
                    )));
                }
                if to <= root.version() {
                    return Err(Rejection::Invalid(format!(
                        "root key version {to} is not after the current version {}",
                        root.version()
                    )));
                }
                root.rotation = Some(RootRotation {
                    from: root.version(),
                    to,
                    started_at,
                    reason,
                    shreds: std::mem::take(&mut root.pending_shreds),
                });
                Ok(Output::Done)
            }
            RootKeysCommand::Rewrap {
                project_id,
                expected,
                key,
            } => {
                let Some(rotation) = &self.root_keys.rotation else {
                    return Err(Rejection::Invalid(
                        "no root key rotation is in progress".into(),
                    ));
                };
                if key.root_version() != rotation.to {
                    return Err(Rejection::Invalid(format!(
                        "project '{project_id}''s key is wrapped under root key version {}, \
                         not the rotation's {}",
                        key.root_version(),
                        rotation.to
                    )));
                }
                let project = self
                    .projects
                    .get_mut(&project_id)
                    .ok_or_else(|| not_found("project", &project_id))?;
                if project.key != expected {
                    return Err(Rejection::Invalid(format!(
                        "project '{project_id}''s key changed since it was read"
                    )));
                }
                project.key = key;
                Ok(Output::Done)
            }
            RootKeysCommand::Finish { to, shreds_context } => {
                let Some(rotation) = &self.root_keys.rotation else {
                    return Err(Rejection::Invalid(
                        "no root key rotation is in progress".into(),
                    ));
                };
                if rotation.to != to {
                    return Err(Rejection::Invalid(format!(
                        "the rotation in progress is to version {}, not {to}",
                        rotation.to
                    )));
                }
                let behind = self
                    .projects
                    .values()
                    .filter(|p| p.key.root_version() < to)
                    .count();
                if behind > 0 {
                    return Err(Rejection::Invalid(format!(
                        "{behind} project key(s) are still wrapped under an older root key \
                         version"
                    )));
                }
                let finished = self.root_keys.rotation.take().expect("checked above");
                self.root_keys.current = to;
                self.root_keys.rotations += 1;
                for (n, shred) in finished.shreds.iter().enumerate() {
                    let draft = shred_event(shred, &finished, &shreds_context, n);
                    let event =
                        super::audit::event(self, &draft.context, draft.resource, draft.outcome);
                    self.audit.append(event, EventClass::Change);
                }
                Ok(Output::Done)
            }
        }
    }

    /// Records a deleted index or project for the next rotation to shred (call it while the
    /// project still exists). Nothing is recorded under an AWS KMS root, which has no
    /// versions to retire.
    pub(super) fn shred_later(&mut self, kind: &str, project_id: &str, name: &str) {
        let local_root = self.projects.get(project_id).is_some_and(|p| match &p.key {
            ProjectKey::Wrapped { wrapped } => wrapped.provider == LOCAL_KEYRING_PROVIDER,
        });
        if !local_root {
            return;
        }
        let shred = Shred {
            kind: kind.into(),
            organization_id: project_org(self, project_id),
            project_id: project_id.into(),
            name: name.into(),
        };
        let pending = &mut self.root_keys.pending_shreds;
        if pending.len() >= MAX_PENDING_SHREDS {
            pending.remove(0);
        }
        pending.push(shred);
    }

    /// Refuses a new project whose key the local keyring wrapped under a version older than
    /// the one every project key is (or, during a rotation, was) wrapped under: a finished
    /// rotation retired it (its proposer wrapped it before the rotation reached that node).
    pub(super) fn check_project_key_version(&self, key: &ProjectKey) -> Result<(), Rejection> {
        let ProjectKey::Wrapped { wrapped } = key;
        let oldest = self.root_keys.version();
        if wrapped.provider == LOCAL_KEYRING_PROVIDER && wrapped.kek_version < oldest {
            return Err(Rejection::Invalid(format!(
                "the project key was wrapped under root key version {}, which a rotation \
                 retired (the root is at version {oldest}): try again",
                wrapped.kek_version
            )));
        }
        Ok(())
    }
}

/// The event of a deletion shredded by `rotation` (`index.shred` / `project.shred`, on the
/// organization's chain), the `n`th of the rotation's, from `context`.
fn shred_event(
    shred: &Shred,
    rotation: &RootRotation,
    context: &AuditContext,
    n: usize,
) -> AuditDraft {
    let (operation, kind) = match shred.kind.as_str() {
        "project" => ("project.shred", ResourceType::Project),
        _ => ("index.shred", ResourceType::Index),
    };
    let uid = (kind == ResourceType::Project).then_some(shred.project_id.as_str());
    let mut context = context.clone();
    context.id = format!("{}-{n}", context.id);
    context.operation = operation.into();
    AuditDraft {
        context,
        resource: Resource::new(Verb::Delete, kind, uid)
            .id(Some(shred.name.as_str()))
            .named(Some(shred.name.as_str()))
            .in_org(shred.organization_id.as_deref())
            .params(
                Params::default()
                    .with("project_id", shred.project_id.as_str())
                    .with("retired_root_key_version", rotation.from)
                    .with("root_key_version", rotation.to),
            ),
        outcome: EventOutcome::success(),
    }
}

/// What a root key command does, for the audit log: an update of the cluster's root key on
/// the cluster chain (`parameters` give the versions; no key material).
pub fn describe(state: &ControlState, command: &RootKeysCommand) -> Resource {
    let resource = |params: Params| {
        Resource::new(Verb::Update, ResourceType::Cluster, Some("root-key"))
            .id(Some("root-key"))
            .params(params)
    };
    match command {
        RootKeysCommand::Begin { to, reason, .. } => resource(
            Params::default()
                .with("from_version", state.root_keys.version())
                .with("to_version", *to)
                .with("reason", reason.as_str())
                .with("shreds", state.root_keys.pending_shreds.len()),
        ),
        RootKeysCommand::Rewrap {
            project_id, key, ..
        } => resource(
            Params::default()
                .with("project_id", project_id.as_str())
                .with("to_version", key.root_version()),
        ),
        RootKeysCommand::Finish { to, .. } => resource(
            Params::default()
                .with(
                    "from_version",
                    state.root_keys.rotation.as_ref().map_or(0, |r| r.from),
                )
                .with("to_version", *to),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::tests::bootstrapped;
    use crate::control::state::{Command, IndexCommand, ProjectCommand};
    use crate::crypto::WrappedKey;

    fn context() -> AuditContext {
        AuditContext::internal("index.shred", crate::audit::ActorRef::system(), 1)
    }

    fn key_under(version: u32, text: &str) -> ProjectKey {
        ProjectKey::Wrapped {
            wrapped: WrappedKey {
                provider: "local-keyring".into(),
                kek_version: version,
                ciphertext: text.into(),
                key_id: String::new(),
            },
        }
    }

    #[test]
    fn a_rotation_finishes_only_when_every_project_key_is_rewrapped() {
        let mut s = bootstrapped();
        let begin = |to| {
            Command::RootKeys(RootKeysCommand::Begin {
                to,
                started_at: "t".into(),
                reason: RotationReason::Requested,
            })
        };
        assert!(s.apply(begin(1)).is_err(), "not after the current version");
        s.apply(begin(2)).unwrap();
        assert!(s.apply(begin(3)).is_err(), "one rotation at a time");
        let finish = Command::RootKeys(RootKeysCommand::Finish {
            to: 2,
            shreds_context: context(),
        });
        let refused = s.apply(finish.clone());
        assert!(
            matches!(&refused, Err(Rejection::Invalid(m)) if m.contains("1 project key")),
            "{refused:?}"
        );
        let old = s.projects["p0"].key.clone();
        // A re-wrap that read an older key, or that is not under the new version, is refused.
        let rewrap = |expected: ProjectKey, key: ProjectKey| {
            Command::RootKeys(RootKeysCommand::Rewrap {
                project_id: "p0".into(),
                expected,
                key,
            })
        };
        assert!(s
            .apply(rewrap(key_under(1, "stale"), key_under(2, "new")))
            .is_err());
        assert!(s.apply(rewrap(old.clone(), key_under(3, "new"))).is_err());
        s.apply(rewrap(old, key_under(2, "new"))).unwrap();
        s.apply(finish).unwrap();
        assert_eq!(s.root_keys.current, 2);
        assert!(s.root_keys.rotation.is_none());
        // A project whose key a node wrapped under the retired version is refused now.
        let mut late = s.projects["p0"].clone();
        late.id = "p1".into();
        late.name = "late".into();
        late.key = key_under(1, "late");
        let refused = s.apply(Command::Project(ProjectCommand::Create {
            project: late.clone(),
            owner: None,
        }));
        assert!(
            matches!(&refused, Err(Rejection::Invalid(m)) if m.contains("retired")),
            "{refused:?}"
        );
        late.key = key_under(2, "late");
        s.apply(Command::Project(ProjectCommand::Create {
            project: late,
            owner: None,
        }))
        .unwrap();
    }

    #[test]
    fn deletions_wait_for_the_next_rotation_which_records_them_when_it_finishes() {
        let mut s = bootstrapped();
        s.apply(Command::Project(ProjectCommand::Create {
            project: {
                let mut p = s.projects["p0"].clone();
                p.id = "p1".into();
                p.name = "gone".into();
                p.key = key_under(1, "gone");
                p
            },
            owner: None,
        }))
        .unwrap();
        // Under an AWS KMS root (the default project's placeholder key is not the local
        // keyring's) a deletion has no version to retire and is not recorded.
        s.shred_later("index", "p0", "kms-rooted");
        assert!(s.root_keys.pending_shreds.is_empty());
        s.apply(Command::Project(ProjectCommand::Delete { id: "p1".into() }))
            .unwrap();
        assert!(s
            .apply(Command::Index(IndexCommand::Delete {
                project_id: "p0".into(),
                name: "missing".into(),
            }))
            .is_err());
        assert_eq!(
            s.root_keys.pending_shreds,
            vec![Shred {
                kind: "project".into(),
                organization_id: Some("o1".into()),
                project_id: "p1".into(),
                name: "gone".into(),
            }],
            "a refused deletion shreds nothing"
        );
        s.apply(Command::RootKeys(RootKeysCommand::Begin {
            to: 2,
            started_at: "t".into(),
            reason: RotationReason::Shredding,
        }))
        .unwrap();
        assert!(s.root_keys.pending_shreds.is_empty());
        assert_eq!(s.root_keys.rotation.as_ref().unwrap().shreds.len(), 1);
        let project = s.projects["p0"].clone();
        s.apply(Command::RootKeys(RootKeysCommand::Rewrap {
            project_id: "p0".into(),
            expected: project.key,
            key: key_under(2, "p0"),
        }))
        .unwrap();
        s.apply(Command::RootKeys(RootKeysCommand::Finish {
            to: 2,
            shreds_context: context(),
        }))
        .unwrap();
        let chain = &s.audit.chains["o1"];
        let shred = chain.events.values().last().unwrap();
        assert_eq!(shred.event.operation, "project.shred");
        assert_eq!(shred.event.resource_name.as_deref(), Some("gone"));
        assert_eq!(shred.event.resource_uid.as_deref(), Some("p1"));
    }
}
