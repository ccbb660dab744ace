//! A Conifer node. See `ARCHITECTURE.md` at the repository root for the map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod crypto;
pub mod dataplane;
pub mod node;
pub mod policy;
pub mod shard;
pub mod timing;
pub mod tls;

/// The current time as RFC 3339 text, as stored in `created_at` fields.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
