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
use crate::audit::{Params, Resource, ResourceType, Verb};
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
    /// version.
    Finish {
        /// The rotation's new version.
        to: u32,
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
            RootKeysCommand::Finish { to } => {
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
                self.root_keys.current = to;
                self.root_keys.rotation = None;
                self.root_keys.rotations += 1;
                Ok(Output::Done)
            }
        }
    }

    /// Records a deleted index or project for the next rotation to shred.
    pub(super) fn shred_later(&mut self, kind: &str, project_id: &str, name: &str) {
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

    /// Refuses a new project whose key is wrapped under a root version that a finished
    /// rotation retired (its proposer wrapped it before the rotation reached that node).
    pub(super) fn check_project_key_version(&self, key: &ProjectKey) -> Result<(), Rejection> {
        let current = self.root_keys.current;
        if current > 0 && key.root_version() < current && self.root_keys.rotation.is_none() {
            return Err(Rejection::Invalid(format!(
                "the project key was wrapped under root key version {}, which a rotation \
                 retired (the root is at version {current}): try again",
                key.root_version()
            )));
        }
        Ok(())
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
        RootKeysCommand::Finish { to } => resource(
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
        let finish = Command::RootKeys(RootKeysCommand::Finish { to: 2 });
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
    fn deletions_wait_for_the_next_rotation_which_takes_them() {
        let mut s = bootstrapped();
        s.apply(Command::Project(ProjectCommand::Create {
            project: {
                let mut p = s.projects["p0"].clone();
                p.id = "p1".into();
                p.name = "gone".into();
                p
            },
            owner: None,
        }))
        .unwrap();
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
    }
}
