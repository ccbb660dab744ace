//! openraft glue shared by every Raft group of a Conifer node.
//!
//! - [`types`]: the one openraft type configuration every group uses (opaque commands),
//! - [`cipher`]: the trait through which every value this crate writes is encrypted,
//! - [`storage`]: one RocksDB per node, column families shared by all groups,
//! - [`log_store`]: the durable Raft log, vote and committed index of one group,
//! - [`state_machine`]: the application state-machine trait and its openraft adapter,
//! - [`group_state`]: the durable state of a group kept in RocksDB (shard records),
//! - [`network`]: the gRPC transport (one lazily-connected mutual-TLS channel per peer),
//! - [`registry`]: the groups running on this node, and dispatch of incoming RPCs.
//! - [`format`]: versioned formats of what state machines put in logs and snapshots,
//! - [`client`]: propose, read index and linearizable barrier of one group ([`GroupClient`]).

// openraft's `StorageError` (224 bytes) is the error type its storage traits require; the
// helpers here return it as-is rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod cipher;
pub mod client;
pub mod format;
pub mod group_state;
pub mod log_store;
pub mod network;
pub mod registry;
pub mod state_machine;
pub mod storage;
pub mod types;

pub use cipher::ValueCipher;
pub use client::{GroupClient, GroupError};
pub use format::{Format, FormatError};
pub use registry::GroupRegistry;
/// The RocksDB binding the node storage uses, for tools that read a stopped node's database.
pub use rocksdb;
pub use state_machine::MachineError;
pub use state_machine::StateMachine;
pub use storage::NodeStorage;
pub use types::{GroupId, NodeId, NodeInfo, Raft, TypeConfig};
