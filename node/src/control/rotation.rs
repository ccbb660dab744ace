//! Root key rotation, driven by the control-plane leader (local keyring roots).
//!
//! A rotation is recorded first ([`RootKeysCommand::Begin`], audited as
//! `cluster.root_keys.rotate`), so whatever happens next, the leader of the moment finds it
//! in the state and carries it on ([`RootRotator::run`] checks every
//! [`ROTATION_CHECK_MS`]). Its steps, each safe to repeat:
//!
//! 1. every member holds the new version's key (the one a member already holds, else a new
//!    one), then wraps new keys with it — checked by key check value, so two leaders that
//!    overlap cannot leave members with different keys for one version;
//! 2. every project key is wrapped again under it, compare-and-set
//!    ([`RootKeysCommand::Rewrap`]);
//! 3. every member wraps its node data key under it;
//! 4. [`RootKeysCommand::Finish`] commits (refused while a project key is behind), audited
//!    as `cluster.root_keys.rotation_finished`, with one `index.shred` / `project.shred`
//!    event per deletion it shreds;
//! 5. every member deletes the older versions from its keyring. A member that misses the
//!    request does it on its own next check, seeing the finished rotation in the state.
//!
//! A crash at any point leaves nothing unreadable: until step 5 every member still holds
//! the old version, and step 5 starts only after the commit that no project key and no
//! node data key is wrapped under it. Every member must be reachable for steps 1 and 3; a
//! rotation waits (and says which member it waits for) until it is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conifer_proto::internal::root_key_step_request::Step;
use conifer_proto::internal::{
    RootKey, RootKeyMakeCurrent, RootKeyRetire, RootKeyRewrapNodeKey, RootKeyStatus,
    RootKeyStepRequest, RootKeysRequest,
};
use conifer_raft::NodeId;

use super::root_keys::{RootKeysCommand, RootRotation, RotationReason};
use super::state::{Command, ControlState};
use super::{ControlError, ControlPlane};
use crate::audit::{ActorRef, AuditContext};
use crate::crypto::rotation::{LocalRoot, NodeRootKeys, RootKeyStep};
use crate::crypto::{check_value, random_key, KeyringSummary, RootKeyVersion};

/// How often every node looks for a rotation to drive (the leader) or old versions to
/// retire (every node).
pub const ROTATION_CHECK_MS: u64 = 1_000;
/// Longest one step on one member may take before the rotation counts it unreachable.
pub const ROTATION_STEP_TIMEOUT_MS: u64 = 10_000;

/// Why a rotation step did not complete; the rotation stays recorded and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A member did not answer or refused a step.
    #[error("node {node}: {reason}")]
    Member {
        /// The member.
        node: NodeId,
        /// What it said.
        reason: String,
    },
    /// The control plane refused or could not take a step.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// This node's keyring or data key.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// Drives root key rotations (on the leader) and retires old versions (on every node).
pub struct RootRotator {
    control: ControlPlane,
    local: LocalRoot,
    /// The last failure of a rotation step and when, for `GET /admin/cluster/root-keys`.
    last_error: Mutex<Option<(String, Instant)>>,
}

impl RootRotator {
    /// A rotator for this node's local keyring.
    pub fn new(control: ControlPlane, local: LocalRoot) -> Arc<Self> {
        Arc::new(Self {
            control,
            local,
            last_error: Mutex::new(None),
        })
    }

    /// This node's keyring and data directory.
    pub fn local(&self) -> &LocalRoot {
        &self.local
    }

    /// The last failed rotation step (within the last minute), if any.
    pub fn last_error(&self) -> Option<String> {
        let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(60))
            .map(|(e, _)| e.clone())
    }

    /// Checks every [`ROTATION_CHECK_MS`], forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(ROTATION_CHECK_MS)).await;
            self.check_once().await;
        }
    }

    async fn check_once(&self) {
        let (rotation, pending, current) = self.control.read(|s| {
            (
                s.root_keys.rotation.clone(),
                !s.root_keys.pending_shreds.is_empty(),
                s.root_keys.current,
            )
        });
        let leads =
            self.control.raft().metrics().borrow().current_leader == Some(self.control.node_id());
        let result = match rotation {
            Some(rotation) if leads => self.drive(&rotation).await,
            None if leads && pending => {
                let context = AuditContext::internal(
                    "cluster.root_keys.rotate",
                    ActorRef::system(),
                    self.control.node_id(),
                );
                match begin(&self.control, context, RotationReason::Shredding).await {
                    Ok(rotation) => self.drive(&rotation).await,
                    Err(e) => Err(e.into()),
                }
            }
            None if current > 0 => self.retire_local(current).await,
            _ => Ok(()),
        };
        let result = match result {
            Ok(()) => self.catch_up().await,
            failed => failed,
        };
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => *last = None,
            Err(e) => {
                tracing::warn!("root key rotation: {e}; trying again");
                *last = Some((e.to_string(), Instant::now()));
            }
        }
    }

    /// Brings this node's keyring up to the version every project key is wrapped under when
    /// it is behind (it joined, or was out of the membership, while a rotation ran): the
    /// versions it lacks from the leader, the newest made current, its node data key
    /// wrapped again.
    async fn catch_up(&self) -> Result<(), RotationError> {
        let needed = self.control.read(|s| s.root_keys.version());
        if self.local.keyring.current_version() >= needed {
            return Ok(());
        }
        let leader = self
            .control
            .raft()
            .metrics()
            .borrow()
            .current_leader
            .filter(|l| *l != self.control.node_id())
            .ok_or_else(|| RotationError::Member {
                node: self.control.node_id(),
                reason: format!("behind root key version {needed} and no other leader to ask"),
            })?;
        let keys = self.fetch_keys(leader).await?;
        let mut check = None;
        for key in keys {
            if key.version <= self.local.keyring.current_version() {
                continue;
            }
            if key.version == needed {
                check = Some(check_value(&key.key));
            }
            self.local.apply(RootKeyStep::Add(key)).await?;
        }
        let check = check.ok_or_else(|| RotationError::Member {
            node: leader,
            reason: format!("does not hold root key version {needed}"),
        })?;
        self.local
            .apply(RootKeyStep::MakeCurrent {
                version: needed,
                check,
            })
            .await?;
        self.local.apply(RootKeyStep::RewrapNodeKey).await?;
        tracing::info!(
            version = needed,
            "caught up with the cluster's root key version"
        );
        Ok(())
    }

    /// Retires this node's versions older than `current` once the control plane says a
    /// rotation to it finished (a member that missed the leader's request).
    async fn retire_local(&self, current: u32) -> Result<(), RotationError> {
        let summary = self.local.keyring.summary();
        if summary.versions.first().is_some_and(|(v, _)| *v < current) {
            self.local
                .apply(RootKeyStep::Retire { below: current })
                .await?;
        }
        Ok(())
    }

    /// Carries `rotation` through its remaining steps.
    async fn drive(&self, rotation: &RootRotation) -> Result<(), RotationError> {
        let to = rotation.to;
        tracing::info!(
            from = rotation.from,
            to,
            reason = rotation.reason.as_str(),
            "root key rotation: driving"
        );
        // 1. Every member holds the new version and wraps with it.
        let status = self.each_member(|| RootKeyStep::Status).await?;
        let check = match chosen_key(&status, to) {
            Some(check) => check,
            None => {
                let key = random_key();
                let check = check_value(&key);
                self.local
                    .apply(RootKeyStep::Add(RootKeyVersion {
                        version: to,
                        created_at: crate::now_rfc3339(),
                        key,
                    }))
                    .await?;
                check
            }
        };
        let key = self.key_for(to, &check, &status).await?;
        for (node, summary) in &status {
            if !summary.keyring.versions.contains(&(to, check.clone())) {
                self.step(*node, step_add(&key)).await?;
            }
        }
        for (node, summary) in &status {
            if summary.keyring.current < to {
                self.step(
                    *node,
                    RootKeyStep::MakeCurrent {
                        version: to,
                        check: check.clone(),
                    },
                )
                .await?;
            }
        }
        // 2. Every project key under the new version.
        self.rewrap_projects(to).await?;
        // 3. Every node data key under it.
        let status = self.each_member(|| RootKeyStep::RewrapNodeKey).await?;
        if let Some((node, _)) = status
            .iter()
            .find(|(_, s)| s.keyring.current != to || s.node_key_version != to)
        {
            return Err(RotationError::Member {
                node: *node,
                reason: format!("not yet at root key version {to}"),
            });
        }
        #[cfg(feature = "failpoints")]
        fail::fail_point!("conifer::root_rotation::before_finish");
        // 4. Commit.
        let context = AuditContext::internal(
            "cluster.root_keys.rotation_finished",
            ActorRef::system(),
            self.control.node_id(),
        );
        let shreds_context =
            AuditContext::internal("index.shred", ActorRef::system(), self.control.node_id());
        self.control
            .propose_as(
                context,
                Command::RootKeys(RootKeysCommand::Finish { to, shreds_context }),
            )
            .await?;
        tracing::info!(
            from = rotation.from,
            to,
            shredded = rotation.shreds.len(),
            "root key rotation finished"
        );
        // 5. Retire the old versions everywhere (a member that misses it retires on its own).
        for node in self.members() {
            if let Err(e) = self.step(node, RootKeyStep::Retire { below: to }).await {
                tracing::warn!("root key rotation: retiring old versions: {e}");
            }
        }
        Ok(())
    }

    /// Wraps every project key under an older version again, one compare-and-set each.
    async fn rewrap_projects(&self, to: u32) -> Result<(), RotationError> {
        let behind: Vec<(String, crate::crypto::ProjectKey)> = self.control.read(|s| {
            s.projects
                .values()
                .filter(|p| p.key.root_version() < to)
                .map(|p| (p.id.clone(), p.key.clone()))
                .collect()
        });
        for (project_id, expected) in behind {
            let key = crate::crypto::hierarchy::rewrap_project_key(
                self.local.keyring.as_ref(),
                &project_id,
                &expected,
            )
            .await?;
            let command = Command::RootKeys(RootKeysCommand::Rewrap {
                project_id: project_id.clone(),
                expected,
                key,
            });
            match self.control.propose(command).await {
                Ok(_) => {}
                // Deleted, or changed by another leader's re-wrap: the next pass sees it.
                Err(ControlError::Rejected(r)) => {
                    tracing::info!(project = %project_id, "root key rotation: re-wrap skipped: {r}")
                }
                Err(e) => return Err(e.into()),
            }
            #[cfg(feature = "failpoints")]
            fail::fail_point!("conifer::root_rotation::after_rewrap");
        }
        Ok(())
    }

    /// The members of the cluster (voters and learners).
    fn members(&self) -> Vec<NodeId> {
        self.control
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Runs `step` on every member, at once; the first failure names its member.
    async fn each_member(
        &self,
        step: impl Fn() -> RootKeyStep,
    ) -> Result<BTreeMap<NodeId, NodeRootKeys>, RotationError> {
        let members = self.members();
        let answers =
            futures::future::join_all(members.iter().map(|node| self.step(*node, step()))).await;
        members
            .into_iter()
            .zip(answers)
            .map(|(node, answer)| answer.map(|status| (node, status)))
            .collect()
    }

    /// Where each member's root keys are (`GET /admin/cluster/root-keys`): a member that
    /// does not answer is reported with its error.
    pub async fn member_status(&self) -> Vec<(NodeId, Result<NodeRootKeys, String>)> {
        let members = self.members();
        let answers = futures::future::join_all(
            members
                .iter()
                .map(|node| self.step(*node, RootKeyStep::Status)),
        )
        .await;
        members
            .into_iter()
            .zip(answers.into_iter().map(|a| a.map_err(|e| e.to_string())))
            .collect()
    }

    /// Runs `step` on member `node`: this node's own keyring directly, another over the
    /// cluster port.
    async fn step(&self, node: NodeId, step: RootKeyStep) -> Result<NodeRootKeys, RotationError> {
        if node == self.control.node_id() {
            self.control
                .read(|s| step_allowed(s, &step))
                .map_err(|reason| RotationError::Member { node, reason })?;
            return Ok(self.local.apply(step).await?);
        }
        let member = |reason: String| RotationError::Member { node, reason };
        let mut client = self.member_client(node)?;
        let request = RootKeyStepRequest {
            from_node: self.control.node_id(),
            step: Some(step_to_proto(step)),
        };
        let reply = tokio::time::timeout(
            Duration::from_millis(ROTATION_STEP_TIMEOUT_MS),
            client.root_key_step(request),
        )
        .await
        .map_err(|_| member(format!("no answer in {ROTATION_STEP_TIMEOUT_MS} ms")))?
        .map_err(|status| member(status.message().to_string()))?;
        Ok(node_keys_from_proto(reply.into_inner()))
    }

    /// The key of version `to` whose check value is `check`: this node's, else fetched from
    /// a member that holds it.
    async fn key_for(
        &self,
        to: u32,
        check: &str,
        status: &BTreeMap<NodeId, NodeRootKeys>,
    ) -> Result<RootKeyVersion, RotationError> {
        if let Some(mine) = self
            .local
            .keyring
            .version(to)
            .filter(|v| check_value(&v.key) == check)
        {
            return Ok(mine);
        }
        let holder = status
            .iter()
            .find(|(_, s)| s.keyring.versions.contains(&(to, check.to_string())))
            .map(|(node, _)| *node)
            .ok_or_else(|| RotationError::Member {
                node: self.control.node_id(),
                reason: format!("no member holds the chosen key of root key version {to}"),
            })?;
        let member = |reason: String| RotationError::Member {
            node: holder,
            reason,
        };
        let key = self
            .fetch_keys(holder)
            .await?
            .into_iter()
            .find(|k| k.version == to)
            .ok_or_else(|| member(format!("does not hold root key version {to}")))?;
        if check_value(&key.key) != check {
            return Err(member(format!(
                "holds another key for root key version {to} than the rotation chose"
            )));
        }
        Ok(key)
    }
}

impl RootRotator {
    /// A client of member `node`'s cluster port.
    fn member_client(
        &self,
        node: NodeId,
    ) -> Result<
        conifer_proto::internal::internal_client::InternalClient<tonic::transport::Channel>,
        RotationError,
    > {
        let member = |reason: String| RotationError::Member { node, reason };
        let info = self
            .control
            .membership()
            .get_node(&node)
            .cloned()
            .ok_or_else(|| member("not a member".into()))?;
        self.control.peers().client(node, &info).map_err(member)
    }

    /// Every root key version member `node` holds (over `Internal/RootKeys`, which it
    /// records as a hand-over); the bytes of the reply are zeroized once copied.
    async fn fetch_keys(&self, node: NodeId) -> Result<Vec<RootKeyVersion>, RotationError> {
        let member = |reason: String| RotationError::Member { node, reason };
        let mut client = self.member_client(node)?;
        let reply = tokio::time::timeout(
            Duration::from_millis(ROTATION_STEP_TIMEOUT_MS),
            client.root_keys(RootKeysRequest {
                from_node: self.control.node_id(),
            }),
        )
        .await
        .map_err(|_| member(format!("no answer in {ROTATION_STEP_TIMEOUT_MS} ms")))?
        .map_err(|s| member(s.message().to_string()))?
        .into_inner();
        reply
            .keys
            .into_iter()
            .map(|root| root_key_from_proto(root).map_err(member))
            .collect()
    }
}

/// Whether this node may take `step` as its control-plane state stands: a version is added
/// or made current only for the rotation the state records (so a stale leader cannot push
/// one), and older versions retired only once this node has applied the rotation's
/// `Finish` (and with it every project key's re-wrap).
pub fn step_allowed(state: &ControlState, step: &RootKeyStep) -> Result<(), String> {
    let root = &state.root_keys;
    let rotating_to = root.rotation.as_ref().map(|r| r.to);
    match step {
        RootKeyStep::Add(RootKeyVersion { version, .. })
        | RootKeyStep::MakeCurrent { version, .. } => {
            if rotating_to == Some(*version) || root.version() >= *version {
                Ok(())
            } else {
                Err(format!(
                    "this node's control-plane state records no rotation to root key version \
                     {version} (it may not have applied it yet)"
                ))
            }
        }
        RootKeyStep::Retire { below } => {
            if root.rotation.is_none() && root.version() >= *below {
                Ok(())
            } else {
                Err(format!(
                    "this node has not applied the end of the rotation to root key version \
                     {below} yet"
                ))
            }
        }
        RootKeyStep::Status | RootKeyStep::RewrapNodeKey => Ok(()),
    }
}

/// The key check value the rotation to `to` uses, from what the members hold: the one a
/// member already wraps with, else the one most members hold (the lowest node id's on a
/// tie), else none (a new key is made).
fn chosen_key(status: &BTreeMap<NodeId, NodeRootKeys>, to: u32) -> Option<String> {
    let held = |s: &NodeRootKeys| {
        s.keyring
            .versions
            .iter()
            .find(|(v, _)| *v == to)
            .map(|(_, check)| check.clone())
    };
    if let Some(check) = status
        .values()
        .filter(|s| s.keyring.current >= to)
        .find_map(held)
    {
        return Some(check);
    }
    let mut counts: BTreeMap<String, (usize, NodeId)> = BTreeMap::new();
    for (node, s) in status {
        if let Some(check) = held(s) {
            let entry = counts.entry(check).or_insert((0, *node));
            entry.0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
        .map(|(check, _)| check)
}

/// Records a rotation (the operator's, or one for pending deletions) and returns it; the
/// leader's rotator carries it out.
pub async fn begin(
    control: &ControlPlane,
    context: AuditContext,
    reason: RotationReason,
) -> Result<RootRotation, ControlError> {
    let to = control.read(|s| s.root_keys.version()) + 1;
    control
        .propose_as(
            context,
            Command::RootKeys(RootKeysCommand::Begin {
                to,
                started_at: crate::now_rfc3339(),
                reason,
            }),
        )
        .await?;
    control
        .read(|s| s.root_keys.rotation.clone())
        .ok_or_else(|| ControlError::Internal("the rotation just begun is not recorded".into()))
}

/// A rotation's progress for answers: project keys under the new version out of all.
pub fn progress(state: &ControlState, rotation: &RootRotation) -> (usize, usize) {
    let done = state
        .projects
        .values()
        .filter(|p| p.key.root_version() >= rotation.to)
        .count();
    (done, state.projects.len())
}

fn step_add(key: &RootKeyVersion) -> RootKeyStep {
    RootKeyStep::Add(RootKeyVersion {
        version: key.version,
        created_at: key.created_at.clone(),
        key: key.key.clone(),
    })
}

fn step_to_proto(step: RootKeyStep) -> Step {
    match step {
        RootKeyStep::Status => Step::Status(RootKeyStatus {}),
        RootKeyStep::Add(root) => Step::Add(RootKey {
            version: root.version,
            key: root.key.to_vec(),
            created_at: root.created_at,
        }),
        RootKeyStep::MakeCurrent { version, check } => Step::MakeCurrent(RootKeyMakeCurrent {
            version,
            check_value: check,
        }),
        RootKeyStep::RewrapNodeKey => Step::RewrapNodeKey(RootKeyRewrapNodeKey {}),
        RootKeyStep::Retire { below } => Step::Retire(RootKeyRetire { below }),
    }
}

/// A step as the cluster port receives it.
pub fn step_from_proto(step: Step) -> Result<RootKeyStep, String> {
    Ok(match step {
        Step::Status(_) => RootKeyStep::Status,
        Step::Add(root) => RootKeyStep::Add(root_key_from_proto(root)?),
        Step::MakeCurrent(m) => RootKeyStep::MakeCurrent {
            version: m.version,
            check: m.check_value,
        },
        Step::RewrapNodeKey(_) => RootKeyStep::RewrapNodeKey,
        Step::Retire(r) => RootKeyStep::Retire { below: r.below },
    })
}

/// A root key version as it travels between nodes (the bytes are zeroized once copied).
pub fn root_key_from_proto(root: RootKey) -> Result<RootKeyVersion, String> {
    let bytes = zeroize::Zeroizing::new(root.key);
    let key: [u8; crate::crypto::KEY_BYTES] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("root key version {} is not 32 bytes", root.version))?;
    Ok(RootKeyVersion {
        version: root.version,
        created_at: root.created_at,
        key: zeroize::Zeroizing::new(key),
    })
}

/// A node's answer to a step, as the cluster port sends it.
pub fn node_keys_to_proto(keys: NodeRootKeys) -> conifer_proto::internal::RootKeyStepReply {
    conifer_proto::internal::RootKeyStepReply {
        current: keys.keyring.current,
        versions: keys
            .keyring
            .versions
            .into_iter()
            .map(
                |(version, check_value)| conifer_proto::internal::RootKeyCheck {
                    version,
                    check_value,
                },
            )
            .collect(),
        node_key_version: keys.node_key_version,
    }
}

fn node_keys_from_proto(reply: conifer_proto::internal::RootKeyStepReply) -> NodeRootKeys {
    NodeRootKeys {
        keyring: KeyringSummary {
            current: reply.current,
            versions: reply
                .versions
                .into_iter()
                .map(|v| (v.version, v.check_value))
                .collect(),
        },
        node_key_version: reply.node_key_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(current: u32, versions: &[(u32, &str)]) -> NodeRootKeys {
        NodeRootKeys {
            keyring: KeyringSummary {
                current,
                versions: versions.iter().map(|(v, c)| (*v, c.to_string())).collect(),
            },
            node_key_version: 1,
        }
    }

    #[test]
    fn the_key_a_member_wraps_with_wins_then_the_most_held() {
        let none = BTreeMap::from([(1, node(1, &[(1, "a")])), (2, node(1, &[(1, "a")]))]);
        assert_eq!(chosen_key(&none, 2), None);
        let split = BTreeMap::from([
            (1, node(1, &[(1, "a"), (2, "x")])),
            (2, node(1, &[(1, "a"), (2, "y")])),
            (3, node(1, &[(1, "a"), (2, "y")])),
        ]);
        assert_eq!(chosen_key(&split, 2).as_deref(), Some("y"));
        let tie = BTreeMap::from([(1, node(1, &[(2, "x")])), (2, node(1, &[(2, "y")]))]);
        assert_eq!(chosen_key(&tie, 2).as_deref(), Some("x"), "lowest node id");
        let current = BTreeMap::from([
            (1, node(1, &[(2, "y")])),
            (2, node(1, &[(2, "y")])),
            (3, node(2, &[(2, "z")])),
        ]);
        assert_eq!(chosen_key(&current, 2).as_deref(), Some("z"));
    }
}
