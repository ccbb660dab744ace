//! Encryption of everything this crate writes to disk.
//!
//! The crate does not know about keys: the node passes in a [`ValueCipher`] (AES-256-GCM
//! under the node's data key). The associated data passed with each value binds the
//! ciphertext to its place (group, kind of record, index), so a value copied to another
//! key fails to decrypt instead of being silently accepted.

use std::fmt;

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
}
