//! The Raft groups running on this node and the dispatch of incoming Raft RPCs to them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use conifer_proto::internal::{RaftKind, RaftReply, RaftRequest};
use tonic::Status;

use crate::network::{decode, encode, PeerChannels};
use crate::types::{GroupId, Raft};

/// Every Raft group hosted on this node, by group id.
#[derive(Clone)]
pub struct GroupRegistry {
    peers: PeerChannels,
    groups: Arc<RwLock<HashMap<GroupId, Raft>>>,
}

impl GroupRegistry {
    /// An empty registry whose groups talk to peers over `peers`.
    pub fn new(peers: PeerChannels) -> Self {
        Self {
            peers,
            groups: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The shared peer channels.
    pub fn peers(&self) -> &PeerChannels {
        &self.peers
    }

    /// Registers a running group.
    pub fn insert(&self, group: GroupId, raft: Raft) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, raft);
    }

    /// Removes a group (it must be shut down by the caller).
    pub fn remove(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group)
    }

    /// The running group `group`, if hosted here.
    pub fn get(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Hands an incoming Raft RPC to its group and serializes the group's answer.
    pub async fn dispatch(&self, request: RaftRequest) -> Result<RaftReply, Status> {
        let raft = self.get(request.group_id).ok_or_else(|| {
            Status::not_found(format!(
                "raft group {} is not hosted on this node",
                request.group_id
            ))
        })?;
        let bad =
            |e: bincode::Error| Status::invalid_argument(format!("undecodable raft payload: {e}"));
        let payload = match RaftKind::try_from(request.kind) {
            Ok(RaftKind::AppendEntries) => encode(
                &raft
                    .append_entries(decode(&request.payload).map_err(bad)?)
                    .await,
            ),
            Ok(RaftKind::Vote) => encode(&raft.vote(decode(&request.payload).map_err(bad)?).await),
            Ok(RaftKind::InstallSnapshot) => encode(
                &raft
                    .install_snapshot(decode(&request.payload).map_err(bad)?)
                    .await,
            ),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown raft message kind {}",
                    request.kind
                )))
            }
        }
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
        Ok(RaftReply { payload })
    }
}

/// Starts an election at once when this node is the group's only voter (a restarted
/// single-node cluster or single-replica shard), instead of waiting out the election timeout.
pub async fn elect_if_sole_voter(raft: &Raft, me: crate::types::NodeId) {
    let metrics = raft.metrics().borrow().clone();
    let voters: Vec<_> = metrics.membership_config.membership().voter_ids().collect();
    if voters == [me] && metrics.current_leader.is_none() {
        if let Err(e) = raft.trigger().elect().await {
            tracing::debug!("immediate election not started: {e}");
        }
    }
}
