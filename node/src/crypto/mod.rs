//! Encryption at rest: the key hierarchy and envelope encryption.
//!
//! ```text
//! root key  (provider: the local keyring file outside the data directory, or AWS KMS)
//!   ├─ node data key        wraps nothing; seals the node's own values and group 0
//!   └─ project key (KEK)    one per project, wrapped by the root, kept in the control plane
//!        └─ index data keys one per index and key version, wrapped by the project key,
//!                           kept in the control plane; seal everything of the index
//! ```
//!
//! - [`provider`]: [`KeyProvider`] (the root) and the local keyring;
//! - [`hierarchy`]: project and index keys as the control plane stores them (wrapped), the
//!   associated data binding each wrap to its owner, and [`KeySet`], an index's versioned
//!   data keys as one cipher;
//! - [`cache`]: [`KeyCache`], the unwrapped keys of the indexes this node hosts, held in
//!   memory for a bounded lifetime so that a revoked root or project key stops the index
//!   within that bound.
//!
//! Every key is a random 256-bit AES-GCM key; raw key bytes live only in
//! [`zeroize::Zeroizing`] buffers and key schedules that are zeroized on drop. Every
//! ciphertext carries associated data naming its place, so a value moved elsewhere fails to
//! decrypt.

pub mod cache;
pub mod hierarchy;
pub mod kms;
pub mod provider;
pub mod rotation;
mod schedule;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use conifer_raft::cipher::{CipherError, ValueCipher};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

pub use cache::{KeyCache, KeyStatus, DEFAULT_KEY_CACHE_TTL_MS};
pub use hierarchy::{IndexKeys, KeySet, ProjectKey};
use schedule::KeySchedule;

pub use provider::{
    check_value, KeyProvider, KeyringSummary, LocalKeyring, RootKeyVersion, WrappedKey,
    KEYRING_FILE,
};

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes of an AES-GCM nonce (random per value).
pub const NONCE_BYTES: usize = 12;
/// Bytes of an AES-GCM authentication tag.
const TAG_BYTES: usize = 16;
/// Format byte leading every value sealed by one [`DataKey`].
const SEALED_FORMAT_V1: u8 = 1;
/// Associated data of the node's storage data key when it is wrapped.
const NODE_DEK_CONTEXT: &str = "conifer/node-storage-dek/v1";
/// Name of the wrapped node data key file inside the data directory.
pub const DATA_KEY_FILE: &str = "data-key.json";

/// Raw bytes of a key; zeroized when dropped.
pub type Secret = Zeroizing<[u8; KEY_BYTES]>;

/// Why a key provider cannot give a key now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unavailability {
    /// The provider refused this node access to the key (AWS KMS `AccessDeniedException`).
    Denied,
    /// The key is disabled or pending deletion (AWS KMS `DisabledException`,
    /// `KMSInvalidStateException`).
    Disabled,
    /// The provider could not be reached or did not answer in time.
    Unreachable,
}

impl Unavailability {
    /// Lower-case name used in messages and `describe_index`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailability::Denied => "access denied",
            Unavailability::Disabled => "disabled",
            Unavailability::Unreachable => "unreachable",
        }
    }
}

/// Errors of key management and encryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file others may read or write.
    #[error(
        "{path} is open to other users (mode {mode:o}): a key file must be its owner's only (chmod 600)"
    )]
    Exposed {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is malformed.
    #[error("{path}: malformed key file: {reason}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Unwrapping or decryption failed: wrong key, or the data was altered.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The wrapped key names a key-encryption key version this provider does not have.
    #[error("key-encryption key version {0} is not in the keyring")]
    UnknownKeyVersion(u32),
    /// A root key rotation step does not apply to this node's keyring as it is.
    #[error("root key rotation: {0}")]
    Rotation(String),
    /// A key the hierarchy needs cannot be used now; nothing is lost, and it serves again
    /// once the key is available.
    #[error("key {key} is unavailable ({}): {reason}", kind.as_str())]
    Unavailable {
        /// The key: a KMS key ARN, or the local keyring.
        key: String,
        /// Why.
        kind: Unavailability,
        /// The provider's words.
        reason: String,
    },
}

impl CryptoError {
    /// Pinecone's error code of the failure (`api::error::CODES` gives its statuses): a key
    /// refused or disabled is `FAILED_PRECONDITION`, an unreachable provider `UNAVAILABLE`,
    /// anything else (a key file, a wrap that does not open) `INTERNAL`.
    pub fn error_code(&self) -> &'static str {
        match self {
            CryptoError::Unavailable {
                kind: Unavailability::Unreachable,
                ..
            } => "UNAVAILABLE",
            CryptoError::Unavailable { .. } => "FAILED_PRECONDITION",
            _ => "INTERNAL",
        }
    }
}

/// A fresh random 256-bit key from the operating system's generator.
pub fn random_key() -> Secret {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

/// Refuses a key file that its group or other users may access (any of mode `0o077`).
pub fn check_private_mode(path: &Path) -> Result<(), CryptoError> {
    let mode = fs::metadata(path)
        .map_err(|source| CryptoError::Io {
            path: path.into(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CryptoError::Exposed {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with mode 0600 (temp file, fsync, rename, fsync
/// of the directory): a crash leaves the old file or the new one, never a torn one.
/// Failpoints (feature `failpoints`): `conifer::crypto::write::before_rename` and
/// `conifer::crypto::write::after_rename` (the keyring and the wrapped data key are written
/// here).
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    let io = |source| CryptoError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    #[cfg(feature = "failpoints")]
    fail::fail_point!("conifer::crypto::write::before_rename");
    fs::rename(&tmp, path).map_err(io)?;
    #[cfg(feature = "failpoints")]
    fail::fail_point!("conifer::crypto::write::after_rename");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// An AES-256-GCM key (ring's implementation, the one rustls uses for TLS). Sealed layout:
/// format byte ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag — standard AES-GCM, so
/// values sealed by the earlier `aes-gcm` crate open unchanged. Its key schedule (AES round
/// keys and GHASH's powers of H) lives on the heap and is zeroized when the key is dropped.
pub struct DataKey {
    schedule: KeySchedule,
}

impl DataKey {
    /// A key from raw bytes.
    pub fn from_bytes(key: [u8; KEY_BYTES]) -> Self {
        let key = Zeroizing::new(key);
        Self::from_secret(&key)
    }

    /// A key from raw bytes held in a zeroizing buffer.
    pub fn from_secret(key: &Secret) -> Self {
        // ring refuses only a key of the wrong length, and a Secret is always 32 bytes.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("AES-256 key length");
        Self {
            schedule: KeySchedule::new(LessSafeKey::new(unbound)),
        }
    }

    fn key(&self) -> &LessSafeKey {
        self.schedule.get()
    }

    /// Appends `nonce ‖ ciphertext ‖ tag` of `plaintext` bound to `aad` to `out`. Never
    /// inlined, so that a profile attributes all of sealing (nonce, copy, AES-GCM) to it
    /// (`scripts/bench/encryption.py`).
    #[inline(never)]
    fn seal_into(&self, out: &mut Vec<u8>, aad: &[u8], plaintext: &[u8]) {
        // GCM needs nonces that never repeat under one key, not secret ones: the thread's
        // CSPRNG (ChaCha, seeded from the OS) draws them without a system call per value
        // (a `getrandom` call per value was a quarter of sealing's CPU time).
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.reserve(NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        // AES-GCM sealing only fails for inputs beyond 64 GiB, which no caller produces.
        let tag = self
            .key()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .expect("AES-GCM input within limits");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens `nonce ‖ ciphertext ‖ tag` bound to `aad`. Never inlined (see `seal_into`).
    #[inline(never)]
    fn open_body(&self, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, CipherError> {
        if body.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CipherError("sealed value is too short".into()));
        }
        let (nonce, sealed) = body.split_at(NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce length checked");
        let mut plaintext = sealed.to_vec();
        let len = self
            .key()
            .open_in_place(nonce, Aad::from(aad), &mut plaintext)
            .map_err(|_| CipherError("authentication tag mismatch".into()))?
            .len();
        plaintext.truncate(len);
        Ok(plaintext)
    }
}

impl ValueCipher for DataKey {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.push(SEALED_FORMAT_V1);
        self.seal_into(&mut out, aad, plaintext);
        out
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        match sealed.split_first() {
            Some((&SEALED_FORMAT_V1, body)) => self.open_body(aad, body),
            _ => Err(CipherError("not a sealed value".into())),
        }
    }
}

/// The node's storage data key: created on first start, kept on disk only wrapped by the
/// root key ([`DATA_KEY_FILE`], mode 0600).
pub async fn node_data_key(dir: &Path, root: &dyn KeyProvider) -> Result<DataKey, CryptoError> {
    let path = dir.join(DATA_KEY_FILE);
    if path.exists() {
        let wrapped = read_node_data_key(dir)?;
        return Ok(DataKey::from_secret(
            &root.unwrap(&wrapped, NODE_DEK_CONTEXT).await?,
        ));
    }
    let dek = random_key();
    let wrapped = root.wrap(&dek, NODE_DEK_CONTEXT).await?;
    write_node_data_key(dir, &wrapped)?;
    Ok(DataKey::from_secret(&dek))
}

/// The node data key of data directory `dir` as it is on disk (wrapped).
pub fn read_node_data_key(dir: &Path) -> Result<WrappedKey, CryptoError> {
    let path = dir.join(DATA_KEY_FILE);
    let text = fs::read(&path).map_err(|source| CryptoError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| CryptoError::Malformed {
        path,
        reason: e.to_string(),
    })
}

fn write_node_data_key(dir: &Path, wrapped: &WrappedKey) -> Result<(), CryptoError> {
    let path = dir.join(DATA_KEY_FILE);
    let text = serde_json::to_vec_pretty(wrapped).map_err(|e| CryptoError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_private_file(&path, &text)
}

/// Wraps the node data key of `dir` again with the root's current version (a root key
/// rotation), replacing the file atomically; returns the version it is now wrapped under.
/// A key already wrapped under the current version is left as it is.
pub async fn rewrap_node_data_key(dir: &Path, root: &LocalKeyring) -> Result<u32, CryptoError> {
    let wrapped = read_node_data_key(dir)?;
    let current = root.current_version();
    if wrapped.kek_version >= current {
        return Ok(wrapped.kek_version);
    }
    let dek = root.unwrap(&wrapped, NODE_DEK_CONTEXT).await?;
    let again = root.wrap(&dek, NODE_DEK_CONTEXT).await?;
    write_node_data_key(dir, &again)?;
    Ok(again.kek_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_only_with_its_associated_data() {
        let key = DataKey::from_secret(&random_key());
        let sealed = key.seal(b"place-a", b"secret marker");
        assert_eq!(key.open(b"place-a", &sealed).unwrap(), b"secret marker");
        assert!(key.open(b"place-b", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(b"place-a", &tampered).is_err());
        assert!(!sealed.windows(13).any(|w| w == b"secret marker"));
        assert!(key.open(b"place-a", &sealed[..10]).is_err());
    }

    /// Values sealed before ring, with the `aes-gcm` crate, open unchanged, and the other
    /// way round: both are standard AES-256-GCM in the same layout.
    #[test]
    fn values_sealed_with_the_aes_gcm_crate_still_open() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        use aes_gcm::Aes256Gcm;

        let secret = random_key();
        let key = DataKey::from_secret(&secret);
        let earlier = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(secret.as_ref()));
        let nonce = [9u8; NONCE_BYTES];
        for plaintext in [&b""[..], b"x", &[0xa5; 4099][..]] {
            let payload = Payload {
                msg: plaintext,
                aad: b"place",
            };
            let mut sealed = vec![SEALED_FORMAT_V1];
            sealed.extend_from_slice(&nonce);
            sealed.extend(earlier.encrypt(&nonce.into(), payload).unwrap());
            assert_eq!(key.open(b"place", &sealed).unwrap(), plaintext);
            assert!(key.open(b"elsewhere", &sealed).is_err());

            let ours = key.seal(b"place", plaintext);
            assert_eq!(ours.len(), 1 + NONCE_BYTES + plaintext.len() + TAG_BYTES);
            let (nonce, body) = ours[1..].split_at(NONCE_BYTES);
            let payload = Payload {
                msg: body,
                aad: b"place",
            };
            assert_eq!(
                earlier
                    .decrypt(aes_gcm::Nonce::from_slice(nonce), payload)
                    .unwrap(),
                plaintext
            );
        }
    }

    #[tokio::test]
    async fn keyring_is_private_and_data_key_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = LocalKeyring::open_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEYRING_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dek = node_data_key(dir.path(), &keyring).await.unwrap();
        let sealed = dek.seal(b"x", b"hello");
        let keyring = LocalKeyring::open_or_create(dir.path()).unwrap();
        let dek_again = node_data_key(dir.path(), &keyring).await.unwrap();
        assert_eq!(dek_again.open(b"x", &sealed).unwrap(), b"hello");
        let mode = fs::metadata(dir.path().join(DATA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
