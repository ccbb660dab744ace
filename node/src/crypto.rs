//! Envelope encryption at rest.
//!
//! A random 256-bit data key (DEK) encrypts values with AES-256-GCM; the DEK is stored only
//! wrapped by a key-encryption key (KEK) held by a [`KeyProvider`]. The default provider is
//! a local keyring file in the data directory (mode 0600, versioned so it can rotate);
//! customer-managed keys in AWS KMS plug in behind the same trait. Every ciphertext carries
//! associated data naming its place, so a value moved elsewhere fails to decrypt.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use conifer_raft::cipher::{CipherError, ValueCipher};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes of an AES-GCM nonce (random per value).
pub const NONCE_BYTES: usize = 12;
/// Format byte leading every sealed value, so the layout can change later.
const SEALED_FORMAT_V1: u8 = 1;
/// Associated data of the node's storage data key when it is wrapped.
const NODE_DEK_AAD: &[u8] = b"conifer/node-storage-dek/v1";

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
    /// The wrapped key names a key-encryption key this provider does not have.
    #[error("key-encryption key version {0} is not in the keyring")]
    UnknownKeyVersion(u32),
}

/// A data key wrapped by a key-encryption key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which provider wrapped it (`local-keyring`, later `aws-kms`).
    pub provider: String,
    /// Version of the key-encryption key that wrapped it.
    pub kek_version: u32,
    /// The wrapped key, base64.
    pub ciphertext: String,
}

/// Holds key-encryption keys and wraps / unwraps data keys with them.
pub trait KeyProvider: Send + Sync {
    /// Wraps `dek`, binding it to `aad`, with the current key-encryption key.
    fn wrap(&self, dek: &[u8; KEY_BYTES], aad: &[u8]) -> Result<WrappedKey, CryptoError>;
    /// Unwraps a data key wrapped by [`KeyProvider::wrap`] with the same `aad`.
    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<[u8; KEY_BYTES], CryptoError>;
}

/// One version of a key in the keyring file.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringEntry {
    version: u32,
    created_at: String,
    key: String,
}

/// The keyring file's content.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringFile {
    current: u32,
    keys: Vec<KeyringEntry>,
}

/// The local keyring: versioned key-encryption keys in a 0600 JSON file.
pub struct LocalKeyring {
    path: PathBuf,
    file: KeyringFile,
}

/// Name of the keyring file inside the data directory.
pub const KEYRING_FILE: &str = "keyring.json";
/// Name of the wrapped node data key file inside the data directory.
pub const DATA_KEY_FILE: &str = "data-key.json";

fn random_key() -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

fn decode_key(text: &str, path: &Path) -> Result<[u8; KEY_BYTES], CryptoError> {
    let bytes = B64.decode(text).map_err(|e| CryptoError::Malformed {
        path: path.into(),
        reason: e.to_string(),
    })?;
    bytes.try_into().map_err(|_| CryptoError::Malformed {
        path: path.into(),
        reason: format!("key is not {KEY_BYTES} bytes"),
    })
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

impl LocalKeyring {
    /// Opens the keyring in `dir` ([`KEYRING_FILE`]), creating it with one fresh key on
    /// first use.
    pub fn open_or_create(dir: &Path) -> Result<Self, CryptoError> {
        Self::open_or_create_file(&dir.join(KEYRING_FILE))
    }

    /// Opens the keyring file `path` (mode 0600), creating it with one fresh key on first
    /// use; refused when its group or other users may read or write it.
    pub fn open_or_create_file(path: &Path) -> Result<Self, CryptoError> {
        let path = path.to_path_buf();
        if path.exists() {
            check_private_mode(&path)?;
            let text = fs::read(&path).map_err(|source| CryptoError::Io {
                path: path.clone(),
                source,
            })?;
            let file: KeyringFile =
                serde_json::from_slice(&text).map_err(|e| CryptoError::Malformed {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if !file.keys.iter().any(|k| k.version == file.current) {
                return Err(CryptoError::Malformed {
                    path,
                    reason: format!("current version {} has no key", file.current),
                });
            }
            return Ok(Self { path, file });
        }
        let file = KeyringFile {
            current: 1,
            keys: vec![KeyringEntry {
                version: 1,
                created_at: crate::now_rfc3339(),
                key: B64.encode(random_key()),
            }],
        };
        let keyring = Self { path, file };
        keyring.save()?;
        Ok(keyring)
    }

    fn save(&self) -> Result<(), CryptoError> {
        let text = serde_json::to_vec_pretty(&self.file).map_err(|e| CryptoError::Malformed {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_private_file(&self.path, &text)
    }

    /// The version new wraps use.
    pub fn current_version(&self) -> u32 {
        self.file.current
    }

    fn key(&self, version: u32) -> Result<[u8; KEY_BYTES], CryptoError> {
        let entry = self
            .file
            .keys
            .iter()
            .find(|k| k.version == version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        decode_key(&entry.key, &self.path)
    }
}

impl KeyProvider for LocalKeyring {
    fn wrap(&self, dek: &[u8; KEY_BYTES], aad: &[u8]) -> Result<WrappedKey, CryptoError> {
        let kek = DataKey::from_bytes(self.key(self.file.current)?);
        Ok(WrappedKey {
            provider: "local-keyring".to_string(),
            kek_version: self.file.current,
            ciphertext: B64.encode(kek.seal(aad, dek)),
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<[u8; KEY_BYTES], CryptoError> {
        let kek = DataKey::from_bytes(self.key(wrapped.kek_version)?);
        let sealed = B64
            .decode(&wrapped.ciphertext)
            .map_err(|e| CryptoError::Auth(e.to_string()))?;
        let plain = kek.open(aad, &sealed).map_err(|e| CryptoError::Auth(e.0))?;
        plain
            .try_into()
            .map_err(|_| CryptoError::Auth("unwrapped key has the wrong length".into()))
    }
}

/// An AES-256-GCM data key. Sealed layout: format byte ‖ 12-byte random nonce ‖ ciphertext ‖ tag.
pub struct DataKey {
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A data key from raw bytes.
    pub fn from_bytes(key: [u8; KEY_BYTES]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }
}

impl ValueCipher for DataKey {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // AES-GCM encryption only fails for inputs beyond 64 GiB, which no caller produces.
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM input within limits");
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        out.push(SEALED_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < 1 + NONCE_BYTES + 16 || sealed[0] != SEALED_FORMAT_V1 {
            return Err(CipherError("not a sealed value".into()));
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CipherError("authentication tag mismatch".into()))
    }
}

/// The node's storage data key: created on first start, kept only wrapped on disk.
pub fn node_data_key(dir: &Path, provider: &dyn KeyProvider) -> Result<DataKey, CryptoError> {
    let path = dir.join(DATA_KEY_FILE);
    if path.exists() {
        let text = fs::read(&path).map_err(|source| CryptoError::Io {
            path: path.clone(),
            source,
        })?;
        let wrapped: WrappedKey =
            serde_json::from_slice(&text).map_err(|e| CryptoError::Malformed {
                path,
                reason: e.to_string(),
            })?;
        return Ok(DataKey::from_bytes(
            provider.unwrap(&wrapped, NODE_DEK_AAD)?,
        ));
    }
    let dek = random_key();
    let wrapped = provider.wrap(&dek, NODE_DEK_AAD)?;
    let text = serde_json::to_vec_pretty(&wrapped).map_err(|e| CryptoError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_private_file(&path, &text)?;
    Ok(DataKey::from_bytes(dek))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_only_with_its_associated_data() {
        let key = DataKey::from_bytes(random_key());
        let sealed = key.seal(b"place-a", b"secret marker");
        assert_eq!(key.open(b"place-a", &sealed).unwrap(), b"secret marker");
        assert!(key.open(b"place-b", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(b"place-a", &tampered).is_err());
        assert!(!sealed.windows(13).any(|w| w == b"secret marker"));
    }

    #[test]
    fn keyring_is_private_and_data_key_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = LocalKeyring::open_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEYRING_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dek = node_data_key(dir.path(), &keyring).unwrap();
        let sealed = dek.seal(b"x", b"hello");
        let keyring = LocalKeyring::open_or_create(dir.path()).unwrap();
        let dek_again = node_data_key(dir.path(), &keyring).unwrap();
        assert_eq!(dek_again.open(b"x", &sealed).unwrap(), b"hello");
        let mode = fs::metadata(dir.path().join(DATA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn data_key_does_not_unwrap_under_another_keyring() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = LocalKeyring::open_or_create(dir_a.path()).unwrap();
        let b = LocalKeyring::open_or_create(dir_b.path()).unwrap();
        let wrapped = a.wrap(&random_key(), b"aad").unwrap();
        assert!(matches!(
            b.unwrap(&wrapped, b"aad"),
            Err(CryptoError::Auth(_))
        ));
        assert!(a.unwrap(&wrapped, b"other").is_err());
    }
}
