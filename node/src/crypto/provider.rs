//! The root of the key hierarchy: a [`KeyProvider`] wraps and unwraps keys with a key it
//! holds and never hands out. The local keyring keeps versioned root keys in a 0600 file
//! outside the data directory; every node of a cluster holds the same versions (a joining
//! node receives them from the cluster over mutual TLS), so a key wrapped on one node
//! unwraps on every other. AWS KMS plugs in behind the same trait.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use conifer_raft::cipher::ValueCipher;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{random_key, write_private_file, CryptoError, DataKey, Secret, KEY_BYTES};

/// A key wrapped by a key-encryption key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrappedKey {
    /// What wrapped it: `local-keyring`, `aws-kms`, or `project-key` (an index data key
    /// wrapped by its project's key).
    pub provider: String,
    /// Version of the key-encryption key that wrapped it.
    pub kek_version: u32,
    /// The wrapped key, base64.
    pub ciphertext: String,
    /// The AWS KMS key that wrapped it (its ARN); empty for other providers. (Always
    /// serialized: the control plane's formats are bincode, which cannot skip a field.)
    #[serde(default)]
    pub key_id: String,
}

/// Holds root keys and wraps / unwraps keys with them. `context` is associated data naming
/// the wrapped key's owner (an AWS KMS encryption context): a wrap unwraps only with the
/// same context.
pub trait KeyProvider: Send + Sync {
    /// What the root key is, for messages and `describe_index`: the keyring's path or the
    /// KMS key's ARN.
    fn describe(&self) -> String;
    /// Wraps `key` with the current root key version.
    fn wrap<'a>(
        &'a self,
        key: &'a Secret,
        context: &'a str,
    ) -> BoxFuture<'a, Result<WrappedKey, CryptoError>>;
    /// Unwraps a key wrapped by [`KeyProvider::wrap`] with the same `context`.
    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        context: &'a str,
    ) -> BoxFuture<'a, Result<Secret, CryptoError>>;
}

/// One version of a root key, as the keyring file keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringEntry {
    version: u32,
    created_at: String,
    key: Zeroizing<String>,
}

/// The keyring file's content.
#[derive(Clone, Serialize, Deserialize)]
struct KeyringFile {
    current: u32,
    keys: Vec<KeyringEntry>,
}

/// One root key version as it travels to a joining node.
pub struct RootKeyVersion {
    /// Its version.
    pub version: u32,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// The key.
    pub key: Secret,
}

struct Versions {
    current: u32,
    keys: BTreeMap<u32, (String, Secret)>,
}

/// The local keyring: versioned root keys in a 0600 JSON file.
pub struct LocalKeyring {
    path: PathBuf,
    versions: RwLock<Versions>,
    /// Held across a change and the save that follows it, so saves land in change order.
    changing: std::sync::Mutex<()>,
}

/// What a keyring holds, without the keys: for rotation's progress and `GET
/// /admin/cluster/root-keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringSummary {
    /// The version new wraps use.
    pub current: u32,
    /// Every version held, with its key check value ([`check_value`]), oldest first.
    pub versions: Vec<(u32, String)>,
}

/// The key check value of a root key version: the first 8 bytes of HMAC-SHA256 under the
/// key of a fixed label, hex. It tells whether two nodes hold the same key for a version
/// without either revealing the key.
pub fn check_value(key: &Secret) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_ref())
        .expect("HMAC takes a key of any length");
    mac.update(b"conifer/root-key-check-value/v1");
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// Name of the keyring file inside the data directory (the single-node default).
pub const KEYRING_FILE: &str = "keyring.json";
/// Provider name of the local keyring in [`WrappedKey::provider`].
pub const LOCAL_PROVIDER: &str = "local-keyring";

fn decode_key(text: &str, path: &Path) -> Result<Secret, CryptoError> {
    let bytes = Zeroizing::new(B64.decode(text).map_err(|e| CryptoError::Malformed {
        path: path.into(),
        reason: e.to_string(),
    })?);
    if bytes.len() != KEY_BYTES {
        return Err(CryptoError::Malformed {
            path: path.into(),
            reason: format!("key is not {KEY_BYTES} bytes"),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&bytes);
    Ok(key)
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
        if path.exists() {
            return Self::open(path);
        }
        let mut keys = BTreeMap::new();
        keys.insert(1, (crate::now_rfc3339(), random_key()));
        let keyring = Self {
            path: path.to_path_buf(),
            versions: RwLock::new(Versions { current: 1, keys }),
            changing: Default::default(),
        };
        keyring.save()?;
        Ok(keyring)
    }

    /// Opens an existing keyring file (mode 0600).
    pub fn open(path: &Path) -> Result<Self, CryptoError> {
        super::check_private_mode(path)?;
        let text = Zeroizing::new(fs::read(path).map_err(|source| CryptoError::Io {
            path: path.into(),
            source,
        })?);
        let file: KeyringFile =
            serde_json::from_slice(&text).map_err(|e| CryptoError::Malformed {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let mut keys = BTreeMap::new();
        for entry in &file.keys {
            keys.insert(
                entry.version,
                (entry.created_at.clone(), decode_key(&entry.key, path)?),
            );
        }
        if !keys.contains_key(&file.current) {
            return Err(CryptoError::Malformed {
                path: path.into(),
                reason: format!("current version {} has no key", file.current),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            versions: RwLock::new(Versions {
                current: file.current,
                keys,
            }),
            changing: Default::default(),
        })
    }

    /// Creates the keyring file `path` holding a cluster's root key versions (a node
    /// joining the cluster), or checks that an existing one agrees with them and adds the
    /// versions it lacks; refused when a version's key differs (a keyring of another
    /// cluster).
    pub fn adopt(
        path: &Path,
        cluster: Vec<RootKeyVersion>,
        current: u32,
    ) -> Result<Self, CryptoError> {
        let keyring = if path.exists() {
            Self::open(path)?
        } else {
            Self {
                path: path.to_path_buf(),
                versions: RwLock::new(Versions {
                    current,
                    keys: BTreeMap::new(),
                }),
                changing: Default::default(),
            }
        };
        {
            let mut versions = keyring.versions.write().unwrap_or_else(|p| p.into_inner());
            for root in cluster {
                match versions.keys.get(&root.version) {
                    Some((_, mine)) if mine.as_ref() != root.key.as_ref() => {
                        return Err(CryptoError::Malformed {
                            path: path.into(),
                            reason: format!(
                                "root key version {} differs from the cluster's: this keyring \
                                 belongs to another cluster",
                                root.version
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        versions
                            .keys
                            .insert(root.version, (root.created_at, root.key));
                    }
                }
            }
            if !versions.keys.contains_key(&current) {
                return Err(CryptoError::UnknownKeyVersion(current));
            }
            versions.current = versions.current.max(current);
        }
        keyring.save()?;
        Ok(keyring)
    }

    fn save(&self) -> Result<(), CryptoError> {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        let file = KeyringFile {
            current: versions.current,
            keys: versions
                .keys
                .iter()
                .map(|(version, (created_at, key))| KeyringEntry {
                    version: *version,
                    created_at: created_at.clone(),
                    key: Zeroizing::new(B64.encode(key.as_ref())),
                })
                .collect(),
        };
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| {
            CryptoError::Malformed {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })?);
        write_private_file(&self.path, &text)
    }

    /// The version new wraps use.
    pub fn current_version(&self) -> u32 {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
    }

    /// Every root key version, oldest first, for a node joining the cluster.
    pub fn export(&self) -> Vec<RootKeyVersion> {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        versions
            .keys
            .iter()
            .map(|(version, (created_at, key))| RootKeyVersion {
                version: *version,
                created_at: created_at.clone(),
                key: key.clone(),
            })
            .collect()
    }

    /// The versions held and the current one, without the keys.
    pub fn summary(&self) -> KeyringSummary {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        KeyringSummary {
            current: versions.current,
            versions: versions
                .keys
                .iter()
                .map(|(version, (_, key))| (*version, check_value(key)))
                .collect(),
        }
    }

    /// The key of root version `version`, for a rotation handing it to another node.
    pub fn version(&self, version: u32) -> Option<RootKeyVersion> {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        versions
            .keys
            .get(&version)
            .map(|(created_at, key)| RootKeyVersion {
                version,
                created_at: created_at.clone(),
                key: key.clone(),
            })
    }

    /// Applies `change` to the versions and saves the file; the versions are left as they
    /// were when the change is refused or the save fails.
    fn change(
        &self,
        change: impl FnOnce(&mut Versions) -> Result<bool, CryptoError>,
    ) -> Result<(), CryptoError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let before = {
            let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
            let before = Versions {
                current: versions.current,
                keys: versions.keys.clone(),
            };
            match change(&mut versions) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    *versions = before;
                    return Err(e);
                }
            }
            before
        };
        // A save that fails after its rename (the directory's sync) leaves the file
        // changed and the memory as before; every step is repeated until it succeeds, and
        // each is idempotent, so the two agree again at the next attempt.
        if let Err(e) = self.save() {
            *self.versions.write().unwrap_or_else(|p| p.into_inner()) = before;
            return Err(e);
        }
        Ok(())
    }

    /// Adds root version `root` without making it current (a rotation's first step on
    /// every node). Holding the same key already is a no-op; holding another key for that
    /// version is allowed only while the version is not current (a rotation attempt that
    /// never reached its second step left it), and the new key replaces it.
    pub fn add_version(&self, root: RootKeyVersion) -> Result<(), CryptoError> {
        self.change(|versions| {
            match versions.keys.get(&root.version) {
                Some((_, mine)) if mine.as_ref() == root.key.as_ref() => return Ok(false),
                Some(_) if versions.current >= root.version => {
                    return Err(CryptoError::Rotation(format!(
                        "root key version {} is already in use here with another key",
                        root.version
                    )))
                }
                // Not held and not after the current version: retired here, or never part
                // of this cluster's rotations.
                None if versions.current >= root.version => {
                    return Err(CryptoError::Rotation(format!(
                        "root key version {} is not after this keyring's current version {}",
                        root.version, versions.current
                    )))
                }
                _ => {}
            }
            versions
                .keys
                .insert(root.version, (root.created_at, root.key));
            Ok(true)
        })
    }

    /// Makes root version `version` current (new wraps use it) after checking that the key
    /// this keyring holds for it has the check value `check` the rotation chose. A keyring
    /// already at `version` or later is left as it is.
    pub fn make_current(&self, version: u32, check: &str) -> Result<(), CryptoError> {
        self.change(|versions| {
            let held = versions
                .keys
                .get(&version)
                .ok_or(CryptoError::UnknownKeyVersion(version))?;
            if check_value(&held.1) != check {
                return Err(CryptoError::Rotation(format!(
                    "this node holds another key for root key version {version} than the \
                     rotation chose"
                )));
            }
            if versions.current >= version {
                return Ok(false);
            }
            versions.current = version;
            Ok(true)
        })
    }

    /// Deletes every root version older than `below` (the rotation that made `below`
    /// current is committed and nothing is wrapped under them any more). Refused while
    /// `below` is not current here.
    pub fn retire_below(&self, below: u32) -> Result<Vec<u32>, CryptoError> {
        let mut retired = Vec::new();
        self.change(|versions| {
            if versions.current < below {
                return Err(CryptoError::Rotation(format!(
                    "root key version {below} is not current on this node (it is at {})",
                    versions.current
                )));
            }
            retired = versions.keys.range(..below).map(|(v, _)| *v).collect();
            versions.keys.retain(|version, _| *version >= below);
            Ok(!retired.is_empty())
        })?;
        Ok(retired)
    }

    fn key(&self, version: u32) -> Result<DataKey, CryptoError> {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        let (_, key) = versions
            .keys
            .get(&version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        Ok(DataKey::from_secret(key))
    }
}

impl KeyProvider for LocalKeyring {
    /// "the local keyring": its path stays in the node's own logs, out of client answers.
    fn describe(&self) -> String {
        "the local keyring".to_string()
    }

    fn wrap<'a>(
        &'a self,
        key: &'a Secret,
        context: &'a str,
    ) -> BoxFuture<'a, Result<WrappedKey, CryptoError>> {
        Box::pin(async move {
            let version = self.current_version();
            let kek = self.key(version)?;
            Ok(WrappedKey {
                provider: LOCAL_PROVIDER.to_string(),
                kek_version: version,
                ciphertext: B64.encode(kek.seal(context.as_bytes(), key.as_ref())),
                key_id: String::new(),
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        context: &'a str,
    ) -> BoxFuture<'a, Result<Secret, CryptoError>> {
        Box::pin(async move {
            if wrapped.provider != LOCAL_PROVIDER {
                return Err(CryptoError::Auth(format!(
                    "the key was wrapped by {}, not by the local keyring",
                    wrapped.provider
                )));
            }
            let kek = self.key(wrapped.kek_version)?;
            super::hierarchy::unwrap_with(&kek, wrapped, context)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wrap_does_not_unwrap_under_another_keyring_or_context() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = LocalKeyring::open_or_create(dir_a.path()).unwrap();
        let b = LocalKeyring::open_or_create(dir_b.path()).unwrap();
        let key = random_key();
        let wrapped = a.wrap(&key, "owner").await.unwrap();
        assert!(matches!(
            b.unwrap(&wrapped, "owner").await,
            Err(CryptoError::Auth(_))
        ));
        assert!(a.unwrap(&wrapped, "other").await.is_err());
        assert_eq!(
            a.unwrap(&wrapped, "owner").await.unwrap().as_ref(),
            key.as_ref()
        );
    }

    #[tokio::test]
    async fn an_adopted_keyring_unwraps_the_clusters_wraps_and_refuses_a_foreign_one() {
        let cluster_dir = tempfile::tempdir().unwrap();
        let cluster = LocalKeyring::open_or_create(cluster_dir.path()).unwrap();
        let key = random_key();
        let wrapped = cluster.wrap(&key, "owner").await.unwrap();

        let joiner_dir = tempfile::tempdir().unwrap();
        let path = joiner_dir.path().join("keyring.json");
        let joiner =
            LocalKeyring::adopt(&path, cluster.export(), cluster.current_version()).unwrap();
        assert_eq!(
            joiner.unwrap(&wrapped, "owner").await.unwrap().as_ref(),
            key.as_ref()
        );
        // Reopened from its file, it still does.
        let reopened = LocalKeyring::open(&path).unwrap();
        assert!(reopened.unwrap(&wrapped, "owner").await.is_ok());
        // Adopting again is a no-op; a keyring of another cluster is refused.
        LocalKeyring::adopt(&path, cluster.export(), 1).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = LocalKeyring::open_or_create(other_dir.path()).unwrap();
        let refused = LocalKeyring::adopt(&path, other.export(), 1);
        assert!(
            matches!(&refused, Err(CryptoError::Malformed { reason, .. }) if reason.contains("another cluster")),
            "{:?}",
            refused.err()
        );
    }
}
