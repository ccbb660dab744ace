//! The control plane (Raft group 0): state, commands, and the handle the API uses.
//!
//! Writes go through [`ControlPlane::propose`]: on the leader straight into Raft, on a
//! follower forwarded to the leader over the cluster port, after which the follower waits
//! until it has applied the entry itself, so a client reads its own write from the node it
//! wrote through. Reads are served from the local replica.
//!
//! Credentials are checked against that local replica only while the node holds a
//! [`Lease`]: every [`LEASE_RENEW_MS`] the node obtains group 0's read index from the leader
//! (Raft's ReadIndex: the leader confirms its leadership with a quorum) and applies up to it.
//! A lease renewal that started at `t0` is good until `t0 + LEASE_MS`. A node that cannot
//! renew (partitioned, paused, no leader) refuses authenticated calls once its lease runs
//! out, so a credential whose deletion was acknowledged at `t` is refused on every node from
//! `t + LEASE_MS` on.

pub mod audit;
pub mod audit_sink;
pub mod backups;
pub mod barrier;
pub mod identity;
pub mod indexes;
pub mod keys;
pub mod membership;
pub mod organizations;
pub mod private_endpoints;
pub mod projects;
pub mod root_keys;
pub mod rotation;
pub mod state;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conifer_proto::internal::PingRequest;
use conifer_raft::network::PeerChannels;
use conifer_raft::state_machine::StateHandle;
use conifer_raft::types::CONTROL_GROUP;
use conifer_raft::{GroupClient, GroupError, NodeId, Raft};

pub use conifer_raft::client::{PROPOSE_TIMEOUT_MS, READ_INDEX_TIMEOUT_MS};
pub use state::{Command, ControlMachine, ControlState, Output, Rejection};

/// Longest a node waits for a peer's `Ping` before counting it unreachable.
pub const PING_TIMEOUT_MS: u64 = 1_000;
/// How long a lease renewal lets this node check credentials locally: the bound on how late
/// a revoked credential can still be accepted anywhere after its revocation was acknowledged.
pub const LEASE_MS: u64 = 1_000;
/// Interval between lease renewals.
pub const LEASE_RENEW_MS: u64 = 200;

/// Why a control-plane write did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The state machine rejected the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// No leader could be reached in time; the write may or may not have happened only when
    /// `outcome_unknown` is set.
    #[error("control plane unavailable: {reason}")]
    Unavailable {
        /// What went wrong.
        reason: String,
        /// Whether the command may still commit.
        outcome_unknown: bool,
    },
    /// A local failure (storage, encoding).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ControlError {
    /// Pinecone's error code of the failure: the rejection's, `UNAVAILABLE` or `INTERNAL`.
    pub fn error_code(&self) -> &'static str {
        match self {
            ControlError::Rejected(r) => r.error_code(),
            ControlError::Unavailable { .. } => "UNAVAILABLE",
            ControlError::Internal(_) => "INTERNAL",
        }
    }
}

impl From<GroupError> for ControlError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Unavailable {
                reason,
                outcome_unknown,
                ..
            } => ControlError::Unavailable {
                reason,
                outcome_unknown,
            },
            GroupError::Internal { reason, .. } => ControlError::Internal(reason),
        }
    }
}

/// Until when this node may answer credential checks from its local replica.
#[derive(Clone, Default)]
pub struct Lease {
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Lease {
    /// Whether the lease is valid now.
    pub fn is_valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether the lease was ever granted (to tell "starting" from "out of contact").
    pub fn was_ever_valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records a renewal that started at `started` (its read index is applied locally).
    fn renew(&self, started: Instant) {
        let until = started + Duration::from_millis(LEASE_MS);
        let mut guard = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}

/// The control plane as seen by one node.
#[derive(Clone)]
pub struct ControlPlane {
    raft: Raft,
    group: GroupClient,
    state: StateHandle<ControlMachine>,
    peers: PeerChannels,
    lease: Lease,
    barrier: barrier::Coalesced,
}

impl ControlPlane {
    /// A handle on the local group-0 replica.
    pub fn new(raft: Raft, state: StateHandle<ControlMachine>, peers: PeerChannels) -> Self {
        let group = GroupClient::new(raft.clone(), peers.clone(), CONTROL_GROUP);
        let barrier_group = group.clone();
        let barrier = barrier::Coalesced::new(Arc::new(move || {
            let group = barrier_group.clone();
            Box::pin(async move {
                group
                    .linearizable_barrier()
                    .await
                    .map_err(|e| e.reason().to_string())
            })
        }));
        Self {
            raft,
            group,
            state,
            peers,
            lease: Lease::default(),
            barrier,
        }
    }

    /// The lease under which this node checks credentials locally.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Renews the lease forever: obtains group 0's read index, waits until it is applied
    /// here, and extends the lease from the moment the renewal started.
    pub async fn keep_lease(self) {
        loop {
            let started = Instant::now();
            match self.linearizable_barrier().await {
                Ok(()) => self.lease.renew(started),
                Err(e) => tracing::debug!("control-plane lease not renewed: {e}"),
            }
            let next = started + Duration::from_millis(LEASE_RENEW_MS);
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Waits until this replica has applied everything acknowledged before the call, as
    /// confirmed by group 0's leader (read index). Concurrent calls on this node share one
    /// read index at a time ([`barrier::Coalesced`]).
    pub async fn linearizable_barrier(&self) -> Result<(), ControlError> {
        self.barrier
            .wait()
            .await
            .map_err(|reason| ControlError::Unavailable {
                reason,
                outcome_unknown: false,
            })
    }

    /// Read-index rounds this node ran for group 0 since it started.
    pub fn barrier_rounds(&self) -> u64 {
        self.barrier.rounds()
    }

    /// Runs `f` on the local replica's state to check a credential. Without a valid
    /// [`Lease`] (this node may not have seen a revocation) it renews the lease first, waiting
    /// up to [`READ_INDEX_TIMEOUT_MS`], and refuses when that fails.
    pub async fn read_authenticated<R>(
        &self,
        f: impl FnOnce(&ControlState) -> R,
    ) -> Result<R, ControlError> {
        // The chaos harness's unsafe mode: check credentials without a lease, which its
        // revocation checker must catch.
        #[cfg(feature = "failpoints")]
        if fail::eval("conifer::auth::ignore_lease", |_| ()).is_some() {
            return Ok(self.read(f));
        }
        if !self.lease.is_valid() {
            // A lapse under load is bridged by renewing now; a node cut off from the leader
            // still refuses.
            let started = Instant::now();
            if self.linearizable_barrier().await.is_ok() {
                self.lease.renew(started);
            }
        }
        if !self.lease.is_valid() {
            return Err(ControlError::Unavailable {
                reason: format!(
                    "this node has not confirmed its control-plane state with the leader in the last {LEASE_MS} ms, so it cannot check credentials; retry or use another node"
                ),
                outcome_unknown: false,
            });
        }
        Ok(self.read(f))
    }

    /// The Raft instance of group 0.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The cluster membership as this node's group 0 replica knows it.
    pub fn membership(&self) -> openraft::Membership<NodeId, conifer_raft::NodeInfo> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// The channels to peers (for forwarding).
    pub fn peers(&self) -> &PeerChannels {
        &self.peers
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.peers.node_id()
    }

    /// Whether node `id` of the membership answers a `Ping` within [`PING_TIMEOUT_MS`]
    /// (a node outside the membership never, asked or not; this node, when a member,
    /// always).
    pub async fn reachable(&self, id: NodeId) -> bool {
        let Some(node) = self.membership().get_node(&id).cloned() else {
            return false;
        };
        if id == self.node_id() {
            return true;
        }
        let Ok(mut client) = self.peers.client(id, &node) else {
            return false;
        };
        let ping = client.ping(PingRequest {
            from_node: self.node_id(),
        });
        matches!(
            tokio::time::timeout(Duration::from_millis(PING_TIMEOUT_MS), ping).await,
            Ok(Ok(reply)) if reply.get_ref().node_id == id
        )
    }

    /// Which of `nodes` are [`reachable`](Self::reachable), asked at once.
    pub async fn reachable_of(
        &self,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> std::collections::BTreeSet<NodeId> {
        let nodes: std::collections::BTreeSet<NodeId> = nodes.into_iter().collect();
        let answers = futures::future::join_all(
            nodes
                .iter()
                .map(|id| async move { (*id, self.reachable(*id).await) }),
        )
        .await;
        answers
            .into_iter()
            .filter_map(|(id, up)| up.then_some(id))
            .collect()
    }

    /// Looks something up in the local replica; when it is missing there, first catches up
    /// with the leader (read index) and looks again, so an object created through another
    /// node a moment ago is found. `Ok(None)` means it does not exist; a node that cannot
    /// reach the leader to tell answers unavailable rather than "missing".
    pub async fn read_fresh<R>(
        &self,
        f: impl Fn(&ControlState) -> Option<R>,
    ) -> Result<Option<R>, ControlError> {
        if let Some(found) = self.read(&f) {
            return Ok(Some(found));
        }
        self.linearizable_barrier().await?;
        Ok(self.read(f))
    }

    /// Runs `f` on the local replica's state.
    pub fn read<R>(&self, f: impl FnOnce(&ControlState) -> R) -> R {
        let guard = self.state.read();
        f(&guard.state)
    }

    /// Replicates `command` together with its audit event (one log entry) and returns what
    /// applying it produced. Every change a client asks for goes through here.
    pub async fn propose_as(
        &self,
        context: crate::audit::AuditContext,
        command: Command,
    ) -> Result<Output, ControlError> {
        self.propose(Command::Audited {
            context,
            command: Box::new(command),
        })
        .await
    }

    /// Replicates `command` and returns what applying it produced. Used directly only for
    /// what Conifer does on its own (marking an index ready, audit batches and purges).
    pub async fn propose(&self, command: Command) -> Result<Output, ControlError> {
        let bytes = state::COMMAND_FORMAT.encode(&command);
        let (response, _index) = self.propose_bytes(bytes).await?;
        let outcome: state::Outcome = state::OUTCOME_FORMAT
            .decode(&response)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        Ok(outcome?)
    }

    /// Proposes a serialized command, forwarding to the leader when this node is not it.
    /// Returns the serialized outcome and the log index it committed at.
    pub async fn propose_bytes(&self, bytes: Vec<u8>) -> Result<(Vec<u8>, u64), ControlError> {
        Ok(self.group.propose(bytes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_valid_for_lease_ms_from_when_its_renewal_started() {
        let lease = Lease::default();
        assert!(!lease.is_valid() && !lease.was_ever_valid());
        lease.renew(Instant::now());
        assert!(lease.is_valid());
        let stale = Instant::now() - Duration::from_millis(LEASE_MS + 1);
        let expired = Lease::default();
        expired.renew(stale);
        assert!(!expired.is_valid() && expired.was_ever_valid());
    }

    #[test]
    fn an_older_renewal_never_shortens_a_lease() {
        let lease = Lease::default();
        lease.renew(Instant::now());
        lease.renew(Instant::now() - Duration::from_millis(LEASE_MS + 1));
        assert!(lease.is_valid());
    }
}
