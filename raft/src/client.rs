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
/// Longest a waiting write goes without looking at its leader's quorum contact.
const QUORUM_CHECK_INTERVAL: Duration = Duration::from_millis(100);

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
            let write = self.raft.client_write(Command(bytes.clone()));
            let written = tokio::select! {
                written = write => written,
                lost = self.quorum_lost() => return Err(self.unavailable(lost, true)),
            };
            match written {
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

    /// Resolves once this replica leads the group but has heard from no quorum of it for
    /// longer than the longest election timeout (its `millis_since_quorum_ack`, or the time
    /// since the wait began while it has never heard from one): a partition has cut it off,
    /// and the followers have elected, or are electing, another leader. A write waiting on
    /// such a leader is abandoned with its outcome unknown instead of waiting out the
    /// partition — the bound a client sees is the election timeout, not its own deadline
    /// (etcd's and the Raft thesis's "check quorum"). Never resolves while this replica is
    /// a follower: openraft answers the write itself there (`ForwardToLeader`).
    async fn quorum_lost(&self) -> String {
        // The chaos harness's unsafe mode: a cut-off leader that waits out the partition,
        // which its failover checker must catch.
        #[cfg(feature = "failpoints")]
        if fail::eval("raft::propose::no_quorum_check", |_| ()).is_some() {
            return std::future::pending().await;
        }
        let limit = self.raft.config().election_timeout_max;
        let waiting = Instant::now();
        let mut metrics = self.raft.metrics();
        loop {
            let silent_ms = {
                let m = metrics.borrow_and_update();
                (m.state == openraft::ServerState::Leader).then(|| {
                    m.millis_since_quorum_ack
                        .unwrap_or_else(|| waiting.elapsed().as_millis() as u64)
                })
            };
            if let Some(silent_ms) = silent_ms.filter(|ms| *ms > limit) {
                return format!(
                    "leader node {} of group {} has heard from no quorum for {silent_ms} ms \
                     (cut off by a partition?); the write may or may not have been applied",
                    self.peers.node_id(),
                    self.group
                );
            }
            // The metrics are republished on every tick of the replica, so a silent
            // leader's growing silence is seen here; a closed channel (shutdown) is polled.
            if tokio::time::timeout(QUORUM_CHECK_INTERVAL, metrics.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                tokio::time::sleep(QUORUM_CHECK_INTERVAL).await;
            }
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

/// How a call to a peer failed, as a caller decides what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// No connection could be made: the request had no effect there.
    NotSent,
    /// The peer answered that it cannot serve the call now (`UNAVAILABLE`): another may.
    Unavailable,
    /// No answer came: the deadline passed, or the connection failed (an HTTP/2 keepalive
    /// ping went unanswered, the connection was reset) after the request may have been
    /// sent. The request may or may not have had its effect, so it must not be sent to
    /// another replica.
    Unanswered,
    /// The peer refused this node (its certificate or its standing): a node fault, which a
    /// client sees as unavailability, never as its own lack of permission.
    Refused,
    /// Anything else: a fault of the peer or of the call.
    Fault,
}

impl PeerFailure {
    /// The kind of `status`, a failed call to a peer. A status the peer sent carries no
    /// source error; one this node's transport made up (a lost connection, its own
    /// deadline) carries the error that ended the call, so it is unanswered whatever code
    /// tonic gave it (`UNAVAILABLE` for a keepalive timeout, `CANCELLED` for a deadline).
    pub fn of(status: &tonic::Status) -> Self {
        if never_sent(status) || refused_stream(status) {
            return PeerFailure::NotSent;
        }
        if std::error::Error::source(status).is_some() {
            return PeerFailure::Unanswered;
        }
        match status.code() {
            tonic::Code::Unavailable => PeerFailure::Unavailable,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => PeerFailure::Unanswered,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PeerFailure::Refused,
            _ => PeerFailure::Fault,
        }
    }
}

/// Whether the peer refused the call's HTTP/2 stream before processing it (REFUSED_STREAM,
/// RFC 9113 §8.7: a server going away or at its stream limit), so it had no effect there.
fn refused_stream(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_the_peer_sent_is_judged_by_its_code() {
        let of = |status: tonic::Status| PeerFailure::of(&status);
        assert_eq!(
            of(tonic::Status::unavailable("not the leader")),
            PeerFailure::Unavailable
        );
        assert_eq!(
            of(tonic::Status::deadline_exceeded("slow")),
            PeerFailure::Unanswered
        );
        assert_eq!(
            of(tonic::Status::permission_denied("who?")),
            PeerFailure::Refused
        );
        assert_eq!(of(tonic::Status::internal("bug")), PeerFailure::Fault);
    }

    #[test]
    fn a_call_this_node_lost_after_connecting_is_unanswered_whatever_its_code() {
        // What tonic makes of a connection that failed under a call (a keepalive PING
        // unanswered, a reset): a status carrying the error, here with UNAVAILABLE.
        let lost = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert!(std::error::Error::source(&lost).is_some());
        assert_eq!(PeerFailure::of(&lost), PeerFailure::Unanswered);
        let deadline = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(deadline.code(), tonic::Code::Cancelled);
        assert_eq!(PeerFailure::of(&deadline), PeerFailure::Unanswered);
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        ))));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(PeerFailure::of(&refused), PeerFailure::NotSent);
        // A stream the peer refused before processing it (it was going away).
        let going_away =
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert_eq!(PeerFailure::of(&going_away), PeerFailure::NotSent);
        let reset = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert_eq!(PeerFailure::of(&reset), PeerFailure::Unanswered);
    }
}
