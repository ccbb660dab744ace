//! The client side of one Raft group, as every user of a group needs it: propose a command
//! (on the leader, or forwarded to it over the cluster port), obtain the group's read index,
//! and wait for a linearizable barrier. The control plane (group 0) and the data-plane
//! router (shard groups) both go through [`GroupClient`], so both fail with one
//! [`GroupError`] that names the group.

use std::time::{Duration, Instant};

use conifer_proto::internal::{ProposeRequest, ReadIndexRequest};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::network::PeerChannels;
use crate::types::{Command, GroupId, NodeId, NodeInfo, Raft};

/// Longest a write waits for a leader (elections, forwarding) before it reports unavailable.
pub const PROPOSE_TIMEOUT_MS: u64 = 10_000;
/// Longest a linearizable read waits for its read index (leader confirmation and local apply).
pub const READ_INDEX_TIMEOUT_MS: u64 = 2_000;
/// Pause between attempts while no leader is known.
const NO_LEADER_RETRY_MS: u64 = 100;

/// Why a call on a group produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// No leader could be reached in time, or the leader lost its quorum. The command may
    /// have been applied only when `outcome_unknown` is set.
    #[error("{reason}")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// What went wrong.
        reason: String,
        /// Whether a proposed command may still commit.
        outcome_unknown: bool,
    },
    /// A local failure the group cannot recover from by retrying (a membership change in
    /// the way of a proposal).
    #[error("{reason}")]
    Internal {
        /// The group.
        group: GroupId,
        /// What went wrong.
        reason: String,
    },
}

impl GroupError {
    /// What went wrong (naming the group).
    pub fn reason(&self) -> &str {
        match self {
            GroupError::Unavailable { reason, .. } | GroupError::Internal { reason, .. } => reason,
        }
    }
}

/// Proposes to, and reads linearizably from, one group through this node's replica of it.
#[derive(Clone)]
pub struct GroupClient {
    raft: Raft,
    peers: PeerChannels,
    group: GroupId,
}

impl GroupClient {
    /// The client of group `group`, whose local replica is `raft`.
    pub fn new(raft: Raft, peers: PeerChannels, group: GroupId) -> Self {
        Self { raft, peers, group }
    }

    fn unavailable(&self, reason: String, outcome_unknown: bool) -> GroupError {
        GroupError::Unavailable {
            group: self.group,
            reason,
            outcome_unknown,
        }
    }

    /// Proposes `bytes` (a command serialized by the state machine's owner): directly on the
    /// leader, otherwise forwarded to the leader over the cluster port, after which this
    /// replica waits until it has applied the entry (so reads through this node see the
    /// write). A leader that cannot be connected to (nothing sent) is retried until the
    /// group elects another, within [`PROPOSE_TIMEOUT_MS`]. Returns the serialized response
    /// and the log index the command committed at.
    pub async fn propose(&self, bytes: Vec<u8>) -> Result<(Vec<u8>, u64), GroupError> {
        let group = self.group;
        let deadline = Instant::now() + Duration::from_millis(PROPOSE_TIMEOUT_MS);
        loop {
            match self.raft.client_write(Command(bytes.clone())).await {
                Ok(resp) => return Ok((resp.data.0, resp.log_id.index)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                    if let (Some(leader), Some(node)) = (fwd.leader_id, fwd.leader_node) {
                        if leader != self.peers.node_id() {
                            match self.forward(leader, &node, bytes.clone()).await {
                                // The leader this node knows of is unreachable and nothing
                                // was sent: wait for the group to elect another, try again.
                                Err(GroupError::Unavailable {
                                    outcome_unknown: false,
                                    reason,
                                    ..
                                }) if Instant::now() < deadline => {
                                    tracing::debug!("group {group}: {reason}; retrying");
                                }
                                done => return done,
                            }
                        }
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(GroupError::Internal {
                        group,
                        reason: e.to_string(),
                    })
                }
                Err(RaftError::Fatal(e)) => return Err(self.unavailable(e.to_string(), true)),
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable(
                    format!("no leader for group {group} within {PROPOSE_TIMEOUT_MS} ms"),
                    false,
                ));
            }
            tokio::time::sleep(Duration::from_millis(NO_LEADER_RETRY_MS)).await;
        }
    }

    /// Sends the proposal to `leader` (the `Propose` RPC) and waits until this replica has
    /// applied its entry.
    async fn forward(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        bytes: Vec<u8>,
    ) -> Result<(Vec<u8>, u64), GroupError> {
        let mut client = self
            .peers
            .client(leader, node)
            .map_err(|e| self.unavailable(e, false))?;
        let request = ProposeRequest {
            group_id: self.group,
            from_node: self.peers.node_id(),
            command: bytes,
        };
        let reply = client
            .propose(request)
            .await
            .map_err(|status| {
                self.unavailable(
                    format!(
                        "forwarding to leader node {leader} of group {}: {}",
                        self.group,
                        status.message()
                    ),
                    !never_sent(&status),
                )
            })?
            .into_inner();
        let _ = self
            .raft
            .wait(Some(Duration::from_millis(PROPOSE_TIMEOUT_MS)))
            .applied_index_at_least(Some(reply.log_index), "forwarded write applied locally")
            .await;
        Ok((reply.response, reply.log_index))
    }

    /// The group's read index: the log index a linearizable read must have applied. Asked of
    /// the local replica when it leads the group, otherwise of the leader (`ReadIndex` RPC).
    pub async fn read_index(&self) -> Result<u64, GroupError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(fwd))) => {
                let (Some(leader), Some(node)) = (fwd.leader_id, fwd.leader_node) else {
                    return Err(self
                        .unavailable(format!("group {} has no known leader", self.group), false));
                };
                if leader == self.peers.node_id() {
                    return Err(self.unavailable(
                        format!("group {}: leadership is changing", self.group),
                        false,
                    ));
                }
                let mut client = self
                    .peers
                    .client(leader, &node)
                    .map_err(|e| self.unavailable(e, false))?;
                let reply = client
                    .read_index(ReadIndexRequest {
                        group_id: self.group,
                        from_node: self.peers.node_id(),
                    })
                    .await
                    .map_err(|s| {
                        self.unavailable(
                            format!(
                                "read index of group {} from leader node {leader}: {}",
                                self.group,
                                s.message()
                            ),
                            false,
                        )
                    })?;
                Ok(reply.into_inner().read_index)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(self.unavailable(format!("group {}: {e}", self.group), false))
            }
            Err(RaftError::Fatal(e)) => {
                Err(self.unavailable(format!("group {}: {e}", self.group), false))
            }
        }
    }

    /// Waits until the local replica has applied the group's read index, so a read that
    /// follows sees every write acknowledged before the call (bounded by
    /// [`READ_INDEX_TIMEOUT_MS`]; a leader that cannot be asked is asked again, so that a
    /// read survives an election).
    pub async fn linearizable_barrier(&self) -> Result<(), GroupError> {
        let timeout = Duration::from_millis(READ_INDEX_TIMEOUT_MS);
        let group = self.group;
        let asked = async {
            loop {
                match self.read_index().await {
                    Ok(index) => return index,
                    Err(e) => tracing::debug!("read index of group {group}: {e}; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(NO_LEADER_RETRY_MS)).await;
            }
        };
        let index = tokio::time::timeout(timeout, asked).await.map_err(|_| {
            self.unavailable(
                format!("group {group}: no read index within {READ_INDEX_TIMEOUT_MS} ms"),
                false,
            )
        })?;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| {
                self.unavailable(
                    format!(
                        "group {group}: read index {index} not applied here within {READ_INDEX_TIMEOUT_MS} ms"
                    ),
                    false,
                )
            })
    }

    /// Waits until the local replica has applied log index `index`, up to `timeout_ms`;
    /// `false` when it did not in time.
    pub async fn wait_applied(&self, index: u64, timeout_ms: u64) -> bool {
        self.raft
            .wait(Some(Duration::from_millis(timeout_ms)))
            .applied_index_at_least(Some(index), "read-your-writes")
            .await
            .is_ok()
    }
}

/// How a call to a peer failed at the transport (a status, not an answer of the peer's
/// application), as a caller decides what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// No connection could be made: the request had no effect there.
    NotSent,
    /// The peer said it cannot serve the call now (`UNAVAILABLE`): another may.
    Unavailable,
    /// No answer in time: the request may or may not have had its effect.
    TimedOut,
    /// The peer refused this node (its certificate or its standing): a node fault, which a
    /// client sees as unavailability, never as its own lack of permission.
    Refused,
    /// Anything else: a fault of the peer or of the call.
    Fault,
}

impl PeerFailure {
    /// The kind of `status`, a failed call to a peer.
    pub fn of(status: &tonic::Status) -> Self {
        if never_sent(status) {
            return PeerFailure::NotSent;
        }
        match status.code() {
            tonic::Code::Unavailable => PeerFailure::Unavailable,
            tonic::Code::DeadlineExceeded => PeerFailure::TimedOut,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PeerFailure::Refused,
            _ => PeerFailure::Fault,
        }
    }
}

/// Whether a failed internal call certainly never reached the peer (no connection could be
/// made), so the request had no effect there.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}
