//! Encryption of everything this crate writes to disk.
//!
//! The crate does not know about keys: the node passes in a [`ValueCipher`] (AES-256-GCM
//! under the node's data key) for its own values and group 0, and [`GroupCiphers`] that
//! give every other group its own cipher (a shard group's index data key). The associated
//! data passed with each value binds the ciphertext to its place (group, kind of record,
//! index), so a value copied to another key fails to decrypt instead of being silently
//! accepted.

use std::fmt;
use std::sync::Arc;

use crate::types::GroupId;

/// Error returned when a value cannot be decrypted (wrong key, moved or tampered value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherError(pub String);

impl fmt::Display for CipherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decryption failed: {}", self.0)
    }
}

impl std::error::Error for CipherError {}

/// Authenticated encryption of values at rest.
pub trait ValueCipher: Send + Sync + 'static {
    /// Encrypts `plaintext`, binding it to `aad`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8>;
    /// Decrypts a value sealed with the same `aad`.
    fn open(&self, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CipherError>;
    /// Whether `ciphertext` was sealed with a key this cipher no longer seals with (a key
    /// rotation re-seals such values). A cipher with one key never has any.
    fn is_stale(&self, _ciphertext: &[u8]) -> bool {
        false
    }
}

/// The cipher of each Raft group other than group 0 (whose values, like the node's own,
/// stay under the node's cipher).
pub trait GroupCiphers: Send + Sync + 'static {
    /// The cipher sealing `group`'s values; an error when its key is not available now (not
    /// yet unwrapped, expired from the cache, or refused by the key provider).
    fn cipher(&self, group: GroupId) -> Result<Arc<dyn ValueCipher>, CipherError>;
}

/// [`GroupCiphers`] that give every group the same cipher (one key for the whole node).
pub struct SameCipher(pub Arc<dyn ValueCipher>);

impl GroupCiphers for SameCipher {
    fn cipher(&self, _group: GroupId) -> Result<Arc<dyn ValueCipher>, CipherError> {
        Ok(self.0.clone())
    }
}
