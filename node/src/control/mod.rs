//! The control plane (Raft group 0): state, commands, and the handle the API uses.
//!
//! Writes go through [`ControlPlane::propose`]: on the leader straight into Raft, on a
//! follower forwarded to the leader over the cluster port, after which the follower waits
//! until it has applied the entry itself, so a client reads its own write from the node it
//! wrote through. Reads are served from the local replica.

pub mod state;

use std::time::{Duration, Instant};

use conifer_proto::internal::ProposeRequest;
use conifer_raft::network::PeerChannels;
use conifer_raft::state_machine::StateHandle;
use conifer_raft::types::{Command as RaftCommand, CONTROL_GROUP};
use conifer_raft::{NodeId, Raft};
use openraft::error::{ClientWriteError, RaftError};

pub use state::{Command, ControlMachine, ControlState, Output, Rejection};

/// Longest a write waits for a leader (elections, forwarding) before it reports unavailable.
pub const PROPOSE_TIMEOUT_MS: u64 = 10_000;
/// Pause between attempts while no leader is known.
const NO_LEADER_RETRY_MS: u64 = 100;

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

/// The control plane as seen by one node.
#[derive(Clone)]
pub struct ControlPlane {
    raft: Raft,
    state: StateHandle<ControlMachine>,
    peers: PeerChannels,
}

impl ControlPlane {
    /// A handle on the local group-0 replica.
    pub fn new(raft: Raft, state: StateHandle<ControlMachine>, peers: PeerChannels) -> Self {
        Self { raft, state, peers }
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

    /// Runs `f` on the local replica's state.
    pub fn read<R>(&self, f: impl FnOnce(&ControlState) -> R) -> R {
        let guard = self.state.read();
        f(&guard.state)
    }

    /// Replicates `command` and returns what applying it produced.
    pub async fn propose(&self, command: Command) -> Result<Output, ControlError> {
        let bytes =
            bincode::serialize(&command).map_err(|e| ControlError::Internal(e.to_string()))?;
        let (response, _index) = self.propose_bytes(bytes).await?;
        let outcome: state::Outcome = bincode::deserialize(&response)
            .map_err(|e| ControlError::Internal(format!("undecodable outcome: {e}")))?;
        Ok(outcome?)
    }

    /// Proposes a serialized command, forwarding to the leader when this node is not it.
    /// Returns the serialized outcome and the log index it committed at.
    pub async fn propose_bytes(&self, bytes: Vec<u8>) -> Result<(Vec<u8>, u64), ControlError> {
        propose_to_group(&self.raft, &self.peers, CONTROL_GROUP, bytes).await
    }
}

/// Proposes `bytes` to `group` through its local replica `raft`: directly on the leader,
/// otherwise forwarded to the leader over the cluster port, after which this replica waits
/// until it has applied the entry (so reads through this node see the write).
pub async fn propose_to_group(
    raft: &Raft,
    peers: &PeerChannels,
    group: u64,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, u64), ControlError> {
    let deadline = Instant::now() + Duration::from_millis(PROPOSE_TIMEOUT_MS);
    loop {
        match raft.client_write(RaftCommand(bytes.clone())).await {
            Ok(resp) => return Ok((resp.data.0, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                if let (Some(leader), Some(node)) = (fwd.leader_id, fwd.leader_node) {
                    if leader != peers.node_id() {
                        return forward(raft, peers, group, leader, &node, bytes).await;
                    }
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                return Err(ControlError::Internal(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                return Err(ControlError::Unavailable {
                    reason: e.to_string(),
                    outcome_unknown: true,
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Unavailable {
                reason: format!("no leader for group {group} within {PROPOSE_TIMEOUT_MS} ms"),
                outcome_unknown: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(NO_LEADER_RETRY_MS)).await;
    }
}

async fn forward(
    raft: &Raft,
    peers: &PeerChannels,
    group: u64,
    leader: NodeId,
    node: &conifer_raft::NodeInfo,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, u64), ControlError> {
    let mut client = peers
        .client(leader, node)
        .map_err(|e| ControlError::Unavailable {
            reason: e,
            outcome_unknown: false,
        })?;
    let request = ProposeRequest {
        group_id: group,
        from_node: peers.node_id(),
        command: bytes,
    };
    let reply = client
        .propose(request)
        .await
        .map_err(|status| ControlError::Unavailable {
            reason: format!(
                "forwarding to leader node {leader} of group {group}: {}",
                status.message()
            ),
            outcome_unknown: true,
        })?
        .into_inner();
    let _ = raft
        .wait(Some(Duration::from_millis(PROPOSE_TIMEOUT_MS)))
        .applied_index_at_least(Some(reply.log_index), "forwarded write applied locally")
        .await;
    Ok((reply.response, reply.log_index))
}
