//! A Conifer node. See `ARCHITECTURE.md` at the repository root for the map.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod crypto;
pub mod node;
pub mod router;
pub mod shard;
pub mod tls;
