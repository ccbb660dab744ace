//! Versioned formats of what a state machine puts in Raft logs and snapshots. Every such
//! value starts with [`MAGIC`] and its format's version, then its bincode: a node that
//! meets a version it does not read (a newer node's log entry) stops with an error naming
//! the value and both versions. Values written before formats were versioned are refused
//! as unversioned (their bincode would have to begin with the two magic bytes — a length
//! or counter of 61,903 — to be taken for a versioned value, and would then fail to decode).
//!
//! These formats are boundaries, like the `.proto` files: a change to a type they carry
//! (a field, a variant anywhere but at the end of an enum) needs a new version and a
//! decoder for the old one.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every versioned value.
pub const MAGIC: [u8; 2] = [0xCF, 0xF1];

/// Why bytes did not decode as a value of a [`Format`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes carry no format header: written before formats were versioned, or not
    /// such a value at all.
    #[error("{what} carries no format version (written by an older Conifer, whose data directories must be recreated, or not a {what})")]
    Unversioned {
        /// The value's name.
        what: &'static str,
    },
    /// A version this node does not read.
    #[error("{what} is in format version {found}; this node reads version {reads}")]
    UnknownVersion {
        /// The value's name.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this node reads.
        reads: u8,
    },
    /// The header is right but the rest does not decode.
    #[error("{what} (format version {version}) does not decode: {reason}")]
    Corrupt {
        /// The value's name.
        what: &'static str,
        /// Its version.
        version: u8,
        /// The decoder's complaint.
        reason: String,
    },
}

/// The format of one kind of persisted value: its name (for errors) and current version.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// What the value is ("control-plane command", "shard export", …).
    pub what: &'static str,
    /// The version written, and the only one read.
    pub version: u8,
}

impl Format {
    /// A format named `what` at `version`.
    pub const fn new(what: &'static str, version: u8) -> Self {
        Self { what, version }
    }

    /// `value` with its header. Encoding a value in memory cannot fail for the types
    /// carried (no maps with non-string keys that bincode refuses, no I/O), so a failure is
    /// a bug and panics naming the format.
    pub fn encode<T: Serialize>(&self, value: &T) -> Vec<u8> {
        let mut bytes = vec![MAGIC[0], MAGIC[1], self.version];
        bincode::serialize_into(&mut bytes, value).unwrap_or_else(|e| {
            panic!(
                "encoding a {} cannot fail for its types, but did: {e}",
                self.what
            )
        });
        bytes
    }

    /// The value in `bytes`, written by [`Format::encode`] in this version.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, FormatError> {
        match bytes {
            [m0, m1, version, body @ ..] if [*m0, *m1] == MAGIC && *version == self.version => {
                bincode::deserialize(body).map_err(|e| FormatError::Corrupt {
                    what: self.what,
                    version: *version,
                    reason: e.to_string(),
                })
            }
            [m0, m1, found, ..] if [*m0, *m1] == MAGIC => Err(FormatError::UnknownVersion {
                what: self.what,
                found: *found,
                reads: self.version,
            }),
            _ => Err(FormatError::Unversioned { what: self.what }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THING: Format = Format::new("thing", 3);

    #[test]
    fn a_value_round_trips_and_other_versions_are_named() {
        let bytes = THING.encode(&(7u64, "seven".to_string()));
        assert_eq!(&bytes[..3], &[MAGIC[0], MAGIC[1], 3]);
        assert_eq!(
            THING.decode::<(u64, String)>(&bytes),
            Ok((7, "seven".to_string()))
        );
        let newer = Format::new("thing", 4).encode(&1u8);
        let err = THING.decode::<u8>(&newer).unwrap_err();
        assert_eq!(
            err,
            FormatError::UnknownVersion {
                what: "thing",
                found: 4,
                reads: 3
            }
        );
        assert!(err.to_string().contains("format version 4"), "{err}");
        let old = bincode::serialize(&(7u64, "seven")).unwrap();
        assert_eq!(
            THING.decode::<(u64, String)>(&old),
            Err(FormatError::Unversioned { what: "thing" })
        );
        assert!(matches!(
            THING.decode::<(u64, String)>(&bytes[..6]),
            Err(FormatError::Corrupt { version: 3, .. })
        ));
    }
}
