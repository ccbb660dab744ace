//! Exit codes of the `conifer` command: a script can tell a refusal from an outage.

use conifer_client::ClientError;

/// Anything else: an I/O error, an unreadable file, a bug.
pub const FAILURE: u8 = 1;
/// Bad flags or arguments (clap's own code).
pub const USAGE: u8 = 2;
/// The server refused the request (4xx: invalid, unauthenticated, forbidden, not found,
/// conflict, over a limit).
pub const REFUSED: u8 = 3;
/// No node answered (connection refused, TLS verification, timeout).
pub const UNREACHABLE: u8 = 4;
/// The server failed or is unavailable (5xx).
pub const SERVER_ERROR: u8 = 5;
/// Some records of `vectors upsert` were not upserted; they are in the failed file.
pub const PARTIAL: u8 = 6;

/// The `--help` text listing the codes.
pub const HELP: &str =
    "Exit codes: 0 done, 1 other failure, 2 bad usage, 3 refused by the server (4xx), \
4 no node reachable (connection, TLS, timeout), 5 server error (5xx), 6 upsert partly failed.";

/// A mistake in the command line or configuration found after parsing (a flag's value,
/// a missing setting, a configuration file): exit code [`USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code of a command that failed with `error`.
pub fn code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Transport(_) => UNREACHABLE,
                ClientError::Certificate(_) => FAILURE,
                ClientError::Request(_) => USAGE,
                ClientError::Api { status, .. } if *status >= 500 => SERVER_ERROR,
                ClientError::Api { .. } => REFUSED,
            };
        }
        if cause.is::<super::data::PartialUpsert>() {
            return PARTIAL;
        }
        if cause.is::<Usage>() {
            return USAGE;
        }
    }
    FAILURE
}
