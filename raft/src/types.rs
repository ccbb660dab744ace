//! The openraft type configuration shared by every group.
//!
//! Commands and responses are opaque bytes: each group's owner (the control plane, a
//! shard) serializes its own command type, so one network and one log store serve all.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Identifies a node in the cluster; never reused.
pub type NodeId = u64;

/// Identifies a Raft group on the node; group 0 is the control plane.
pub type GroupId = u64;

/// The control plane's group id.
pub const CONTROL_GROUP: GroupId = 0;

/// An application command: serialized by the group's owner, opaque to Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

/// An application response to one applied command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What the cluster knows about a node: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the node's cluster (mutual-TLS gRPC) port.
    pub cluster_addr: String,
    /// `host:port` of the node's client (REST + gRPC) port.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster={} api={}", self.cluster_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft configuration of every Conifer Raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft group.
pub type Raft = openraft::Raft<TypeConfig>;

/// A log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;

/// A storage error of this configuration.
pub type StorageError = openraft::StorageError<NodeId>;
