//! Project and index keys as the control plane keeps them (wrapped), and the index data
//! keys as one cipher.
//!
//! A project key (key-encryption key) is wrapped by the root with the context
//! `conifer/project-key/v1/<project id>`; each version of an index data key is wrapped by
//! its project key with the associated data `conifer/index-key/v1/<project id>/<index
//! name>/<version>`, so a wrapped key copied to another project or index does not unwrap.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use conifer_raft::cipher::{CipherError, ValueCipher};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{random_key, CryptoError, DataKey, KeyProvider, Secret, WrappedKey, KEY_BYTES};

/// Provider name of an index data key wrapped by its project key.
const PROJECT_KEY_PROVIDER: &str = "project-key";
/// Format byte leading every value sealed by a [`KeySet`]: format ‖ key version (u32,
/// big-endian) ‖ nonce ‖ ciphertext ‖ tag; the version is also bound as associated data.
const SEALED_FORMAT_VERSIONED: u8 = 2;

/// A project's key-encryption key, as the control plane keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProjectKey {
    /// A key of the project's own, wrapped by the cluster's root key.
    Wrapped {
        /// The wrapped key.
        wrapped: WrappedKey,
    },
}

/// One version of an index's data key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexKeyVersion {
    /// The version (1 for an index's first key).
    pub version: u32,
    /// The key, wrapped by the project key.
    pub wrapped: WrappedKey,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

/// An index's data keys, as the control plane keeps them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexKeys {
    /// The version new values are sealed with.
    pub current: u32,
    /// Every version values may still be sealed with.
    pub versions: Vec<IndexKeyVersion>,
    /// While older versions are listed (a key rotation): the nodes whose replica holds no
    /// value sealed with them any more. Once every replica's node is here, the older
    /// versions are dropped.
    pub resealed: Vec<u64>,
}

impl ProjectKey {
    /// The root key version that wraps it.
    pub fn root_version(&self) -> u32 {
        match self {
            ProjectKey::Wrapped { wrapped } => wrapped.kek_version,
        }
    }

    /// A wrapped key that unwraps under no root (unit tests of the control plane).
    #[cfg(test)]
    pub fn placeholder() -> Self {
        ProjectKey::Wrapped {
            wrapped: WrappedKey {
                provider: "test".into(),
                kek_version: 1,
                ciphertext: String::new(),
                key_id: String::new(),
            },
        }
    }
}

impl IndexKeys {
    /// Wrapped keys that unwrap under no project key (unit tests of the control plane).
    #[cfg(test)]
    pub fn placeholder() -> Self {
        IndexKeys {
            current: 1,
            versions: vec![IndexKeyVersion {
                version: 1,
                wrapped: WrappedKey {
                    provider: "test".into(),
                    kek_version: 1,
                    ciphertext: String::new(),
                    key_id: String::new(),
                },
                created_at: "t".into(),
            }],
            resealed: Vec::new(),
        }
    }
}

fn project_context(project_id: &str) -> String {
    format!("conifer/project-key/v1/{project_id}")
}

/// The owner string of version `version` of an index's data key (its wrap's associated data
/// or KMS encryption context).
pub(super) fn index_context(project_id: &str, index: &str, version: u32) -> String {
    format!("conifer/index-key/v1/{project_id}/{index}/{version}")
}

/// Opens `wrapped` (base64 of a value sealed by `kek` with `context`) into a key.
pub(super) fn unwrap_with(
    kek: &DataKey,
    wrapped: &WrappedKey,
    context: &str,
) -> Result<Secret, CryptoError> {
    let sealed = B64
        .decode(&wrapped.ciphertext)
        .map_err(|e| CryptoError::Auth(e.to_string()))?;
    let plain = Zeroizing::new(
        kek.open(context.as_bytes(), &sealed)
            .map_err(|e| CryptoError::Auth(e.0))?,
    );
    if plain.len() != KEY_BYTES {
        return Err(CryptoError::Auth(
            "unwrapped key has the wrong length".into(),
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&plain);
    Ok(key)
}

/// A new project key, wrapped by `root`.
pub async fn new_project_key(
    root: &dyn KeyProvider,
    project_id: &str,
) -> Result<ProjectKey, CryptoError> {
    let key = random_key();
    let wrapped = root.wrap(&key, &project_context(project_id)).await?;
    Ok(ProjectKey::Wrapped { wrapped })
}

/// Unwraps a project key with `root`.
pub async fn unwrap_project_key(
    root: &dyn KeyProvider,
    project_id: &str,
    key: &ProjectKey,
) -> Result<DataKey, CryptoError> {
    match key {
        ProjectKey::Wrapped { wrapped } => {
            let secret = root.unwrap(wrapped, &project_context(project_id)).await?;
            Ok(DataKey::from_secret(&secret))
        }
    }
}

/// The same project key wrapped with the root's current version (a root key rotation).
pub async fn rewrap_project_key(
    root: &dyn KeyProvider,
    project_id: &str,
    key: &ProjectKey,
) -> Result<ProjectKey, CryptoError> {
    match key {
        ProjectKey::Wrapped { wrapped } => {
            let context = project_context(project_id);
            let secret = root.unwrap(wrapped, &context).await?;
            Ok(ProjectKey::Wrapped {
                wrapped: root.wrap(&secret, &context).await?,
            })
        }
    }
}

/// A new index's first data key (version 1), wrapped by its project key.
pub fn new_index_keys(project_key: &DataKey, project_id: &str, index: &str) -> IndexKeys {
    IndexKeys {
        current: 1,
        versions: vec![new_index_key_version(project_key, project_id, index, 1)],
        resealed: Vec::new(),
    }
}

/// Version `version` of an index's data key, new, wrapped by its project key.
pub fn new_index_key_version(
    project_key: &DataKey,
    project_id: &str,
    index: &str,
    version: u32,
) -> IndexKeyVersion {
    IndexKeyVersion {
        version,
        wrapped: new_wrapped_key(project_key, &index_context(project_id, index, version)),
        created_at: crate::now_rfc3339(),
    }
}

/// A new random data key wrapped by `project_key` with the owner string `context`.
pub fn new_wrapped_key(project_key: &DataKey, context: &str) -> WrappedKey {
    let key = random_key();
    let sealed = project_key.seal(context.as_bytes(), key.as_ref());
    WrappedKey {
        provider: PROJECT_KEY_PROVIDER.to_string(),
        kek_version: 1,
        ciphertext: B64.encode(sealed),
        key_id: String::new(),
    }
}

/// The owner string of a backup's data key (its wrap's associated data or KMS encryption
/// context), so a backup's key copied to another backup or project does not unwrap.
pub(super) fn backup_context(project_id: &str, backup_id: &str) -> String {
    format!("conifer/backup-key/v1/{project_id}/{backup_id}")
}

/// Unwraps every version of an index's data keys with its project key.
pub fn unwrap_index_keys(
    project_key: &DataKey,
    project_id: &str,
    index: &str,
    keys: &IndexKeys,
) -> Result<KeySet, CryptoError> {
    let mut set = BTreeMap::new();
    for version in &keys.versions {
        let context = index_context(project_id, index, version.version);
        let secret = unwrap_with(project_key, &version.wrapped, &context)?;
        set.insert(version.version, DataKey::from_secret(&secret));
    }
    KeySet::new(keys.current, set)
}

/// An index's data keys as one cipher: seals with the current version, opens any version
/// it holds (the version travels in the sealed value and is bound as associated data).
pub struct KeySet {
    current: u32,
    keys: BTreeMap<u32, DataKey>,
}

impl KeySet {
    /// The versions `keys`, sealing with `current` (which must be among them).
    pub(super) fn new(current: u32, keys: BTreeMap<u32, DataKey>) -> Result<Self, CryptoError> {
        if !keys.contains_key(&current) {
            return Err(CryptoError::UnknownKeyVersion(current));
        }
        Ok(Self { current, keys })
    }

    /// The version new values are sealed with.
    pub fn current(&self) -> u32 {
        self.current
    }

    fn versioned_aad(aad: &[u8], version: u32) -> Vec<u8> {
        let mut full = Vec::with_capacity(aad.len() + 5);
        full.extend_from_slice(aad);
        full.push(0);
        full.extend_from_slice(&version.to_be_bytes());
        full
    }
}

impl ValueCipher for KeySet {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[&self.current];
        let mut out = Vec::with_capacity(5 + super::NONCE_BYTES + plaintext.len() + 16);
        out.push(SEALED_FORMAT_VERSIONED);
        out.extend_from_slice(&self.current.to_be_bytes());
        key.seal_into(&mut out, &Self::versioned_aad(aad, self.current), plaintext);
        out
    }

    fn is_stale(&self, sealed: &[u8]) -> bool {
        match sealed {
            [SEALED_FORMAT_VERSIONED, v0, v1, v2, v3, ..] => {
                u32::from_be_bytes([*v0, *v1, *v2, *v3]) != self.current
            }
            _ => false,
        }
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        let (format, rest) = sealed
            .split_first()
            .ok_or_else(|| CipherError("empty sealed value".into()))?;
        if *format != SEALED_FORMAT_VERSIONED || rest.len() < 4 {
            return Err(CipherError(
                "not a value sealed by an index data key".into(),
            ));
        }
        let (version, body) = rest.split_at(4);
        let version = u32::from_be_bytes(version.try_into().expect("4 bytes"));
        let key = self.keys.get(&version).ok_or_else(|| {
            CipherError(format!(
                "sealed with index key version {version}, which this node does not hold"
            ))
        })?;
        key.open_body(&Self::versioned_aad(aad, version), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::LocalKeyring;

    #[tokio::test]
    async fn index_keys_unwrap_only_for_their_project_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = LocalKeyring::open_or_create(dir.path()).unwrap();
        let project = new_project_key(&root, "p1").await.unwrap();
        assert!(unwrap_project_key(&root, "p2", &project).await.is_err());
        let kek = unwrap_project_key(&root, "p1", &project).await.unwrap();
        let keys = new_index_keys(&kek, "p1", "docs");
        let set = unwrap_index_keys(&kek, "p1", "docs", &keys).unwrap();
        assert!(unwrap_index_keys(&kek, "p1", "other", &keys).is_err());
        assert!(unwrap_index_keys(&kek, "p2", "docs", &keys).is_err());
        let other_kek =
            unwrap_project_key(&root, "p9", &new_project_key(&root, "p9").await.unwrap())
                .await
                .unwrap();
        assert!(unwrap_index_keys(&other_kek, "p1", "docs", &keys).is_err());

        let sealed = set.seal(b"place", b"marker-value");
        assert_eq!(set.open(b"place", &sealed).unwrap(), b"marker-value");
        assert!(set.open(b"elsewhere", &sealed).is_err());
        // Another index's keys, or the project key itself, do not open it.
        let other =
            unwrap_index_keys(&kek, "p1", "docs2", &new_index_keys(&kek, "p1", "docs2")).unwrap();
        assert!(other.open(b"place", &sealed).is_err());
        assert!(kek.open(b"place", &sealed).is_err());
    }

    #[test]
    fn a_key_set_opens_every_version_it_holds_and_seals_with_the_current() {
        let v1 = random_key();
        let v2 = random_key();
        let old = KeySet {
            current: 1,
            keys: BTreeMap::from([(1, DataKey::from_secret(&v1))]),
        };
        let sealed_v1 = old.seal(b"a", b"one");
        let both = KeySet {
            current: 2,
            keys: BTreeMap::from([
                (1, DataKey::from_secret(&v1)),
                (2, DataKey::from_secret(&v2)),
            ]),
        };
        let sealed_v2 = both.seal(b"a", b"two");
        assert_eq!(&sealed_v2[1..5], &2u32.to_be_bytes());
        assert_eq!(both.open(b"a", &sealed_v1).unwrap(), b"one");
        assert_eq!(both.open(b"a", &sealed_v2).unwrap(), b"two");
        // The old set lacks version 2; relabelling a value's version breaks its tag.
        assert!(old.open(b"a", &sealed_v2).is_err());
        let mut relabelled = sealed_v1.clone();
        relabelled[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert!(both.open(b"a", &relabelled).is_err());
    }
}
