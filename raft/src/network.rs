//! The Raft transport: openraft RPCs serialized into `conifer.internal.v1.Internal/Raft`.
//!
//! All groups share one lazily-connected channel per peer ([`PeerChannels`]); the node
//! supplies the function that builds a channel, so this crate never sees certificates
//! (the node's builder always configures mutual TLS and pins the peer's node name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use conifer_proto::internal::internal_client::InternalClient;
use conifer_proto::internal::{RaftKind, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::types::{GroupId, NodeId, NodeInfo, TypeConfig};

/// Builds a channel to a peer's cluster address (mutual TLS, peer name pinned).
pub type ChannelBuilder = Arc<dyn Fn(NodeId, &NodeInfo) -> Result<Channel, String> + Send + Sync>;

/// One lazily-connected channel per peer, shared by every group on this node.
#[derive(Clone)]
pub struct PeerChannels {
    node_id: NodeId,
    builder: ChannelBuilder,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl PeerChannels {
    /// Channels from node `node_id`, built with `builder`.
    pub fn new(node_id: NodeId, builder: ChannelBuilder) -> Self {
        Self {
            node_id,
            builder,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// This node's id, sent with every RPC.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The channel to `target`, created on first use or when its address changed.
    pub fn channel(&self, target: NodeId, node: &NodeInfo) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, channel)) = channels.get(&target) {
            if *addr == node.cluster_addr {
                return Ok(channel.clone());
            }
        }
        let channel = (self.builder)(target, node)?;
        channels.insert(target, (node.cluster_addr.clone(), channel.clone()));
        Ok(channel)
    }

    /// Drops every cached channel: the next call to each peer builds a new one (new
    /// connections, e.g. with certificates reloaded since). Calls in flight finish on the
    /// channels they hold.
    pub fn forget_all(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A gRPC client of the internal API on `target`.
    pub fn client(
        &self,
        target: NodeId,
        node: &NodeInfo,
    ) -> Result<InternalClient<Channel>, String> {
        Ok(InternalClient::new(self.channel(target, node)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }
}

/// Largest internal message accepted or sent: bounds append-entries batches and snapshot chunks.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Creates openraft network clients for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    group: GroupId,
    peers: PeerChannels,
}

impl NetworkFactory {
    /// The network of `group` over `peers`.
    pub fn new(group: GroupId, peers: PeerChannels) -> Self {
        Self { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            group: self.group,
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's client of one peer in one group.
pub struct PeerNetwork {
    group: GroupId,
    target: NodeId,
    node: NodeInfo,
    peers: PeerChannels,
}

/// Encodes a value for the internal wire format.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

/// Decodes a value of the internal wire format.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftKind,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .peers
            .client(self.target, &self.node)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let request = RaftRequest {
            group_id: self.group,
            from_node: self.peers.node_id(),
            kind: kind as i32,
            payload,
        };
        let reply = client
            .raft(request)
            .await
            .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?
            .into_inner();
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(RaftKind::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftKind::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(RaftKind::Vote, &rpc).await
    }
}
