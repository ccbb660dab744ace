//! One node's side of a root key rotation (local keyring): the steps the rotation's
//! coordinator asks every node for, in order, each idempotent so a coordinator that
//! crashed and a new one that resumes may ask again.
//!
//! 1. [`RootKeyStep::Add`] — hold the new version's key, not yet current;
//! 2. [`RootKeyStep::MakeCurrent`] — wrap new keys with it (the key check value must be
//!    the rotation's, so two coordinators cannot leave nodes with different keys);
//! 3. [`RootKeyStep::RewrapNodeKey`] — wrap this node's data key ([`super::DATA_KEY_FILE`])
//!    with it;
//! 4. [`RootKeyStep::Retire`] — delete every older version, once the control plane has
//!    committed that no project key is wrapped under them.
//!
//! [`RootKeyStep::Status`] changes nothing and reports where the node is.

use std::path::PathBuf;
use std::sync::Arc;

use super::provider::{KeyringSummary, LocalKeyring, RootKeyVersion};
use super::CryptoError;

/// A step of a root key rotation on one node.
pub enum RootKeyStep {
    /// Report the keyring and node data key versions.
    Status,
    /// Hold this version (not current).
    Add(RootKeyVersion),
    /// Make `version` current, its key's check value being `check`.
    MakeCurrent {
        /// The version.
        version: u32,
        /// Its key check value.
        check: String,
    },
    /// Wrap the node data key with the current version.
    RewrapNodeKey,
    /// Delete the versions older than this one.
    Retire {
        /// The oldest version kept.
        below: u32,
    },
}

/// Where one node's root keys are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRootKeys {
    /// The keyring's versions and current version.
    pub keyring: KeyringSummary,
    /// The root version the node data key is wrapped under.
    pub node_key_version: u32,
}

/// A node's local keyring and the data directory whose node data key it wraps.
#[derive(Clone)]
pub struct LocalRoot {
    /// The keyring.
    pub keyring: Arc<LocalKeyring>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// One step at a time (two leaders' requests, or a retry overlapping its first try,
    /// would otherwise re-wrap the node data key through the same temporary file).
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl LocalRoot {
    /// The root of the node whose keyring is `keyring` and data directory `data_dir`.
    pub fn new(keyring: Arc<LocalKeyring>, data_dir: PathBuf) -> Self {
        Self {
            keyring,
            data_dir,
            one_at_a_time: Default::default(),
        }
    }

    /// Runs `step` and reports where the node is after it.
    pub async fn apply(&self, step: RootKeyStep) -> Result<NodeRootKeys, CryptoError> {
        let _alone = self.one_at_a_time.lock().await;
        match step {
            RootKeyStep::Status => {}
            RootKeyStep::Add(root) => {
                let version = root.version;
                self.keyring.add_version(root)?;
                tracing::info!(
                    version,
                    "root key rotation: holding the new root key version"
                );
            }
            RootKeyStep::MakeCurrent { version, check } => {
                self.keyring.make_current(version, &check)?;
                tracing::info!(
                    version,
                    "root key rotation: new keys are wrapped with version {version}"
                );
            }
            RootKeyStep::RewrapNodeKey => {
                let version = super::rewrap_node_data_key(&self.data_dir, &self.keyring).await?;
                tracing::info!(
                    version,
                    "root key rotation: node data key wrapped with version {version}"
                );
            }
            RootKeyStep::Retire { below } => {
                let node_key = super::read_node_data_key(&self.data_dir)?.kek_version;
                if node_key < below {
                    return Err(CryptoError::Rotation(format!(
                        "the node data key is still wrapped under root key version {node_key}"
                    )));
                }
                let retired = self.keyring.retire_below(below)?;
                if !retired.is_empty() {
                    tracing::info!(?retired, "root key rotation: retired root key versions");
                }
            }
        }
        Ok(NodeRootKeys {
            keyring: self.keyring.summary(),
            node_key_version: super::read_node_data_key(&self.data_dir)?.kek_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{check_value, random_key, KeyProvider};

    #[tokio::test]
    async fn a_rotation_on_one_node_rewraps_its_data_key_and_retires_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Arc::new(LocalKeyring::open_or_create(dir.path()).unwrap());
        let node_key = crate::crypto::node_data_key(dir.path(), keyring.as_ref())
            .await
            .unwrap();
        let sealed = conifer_raft::cipher::ValueCipher::seal(&node_key, b"a", b"value");
        let project = keyring.wrap(&random_key(), "project").await.unwrap();
        let root = LocalRoot::new(keyring.clone(), dir.path().to_path_buf());
        let new = random_key();
        let check = check_value(&new);
        let add = |key: &crate::crypto::Secret| {
            RootKeyStep::Add(RootKeyVersion {
                version: 2,
                created_at: "t".into(),
                key: key.clone(),
            })
        };
        // Another key for version 2 may be replaced while 2 is not current.
        root.apply(add(&random_key())).await.unwrap();
        let status = root.apply(add(&new)).await.unwrap();
        assert_eq!(status.keyring.current, 1);
        assert_eq!(status.keyring.versions[1], (2, check.clone()));
        // Retiring before the new version is current is refused.
        assert!(root.apply(RootKeyStep::Retire { below: 2 }).await.is_err());
        let wrong = root
            .apply(RootKeyStep::MakeCurrent {
                version: 2,
                check: check_value(&random_key()),
            })
            .await;
        assert!(matches!(wrong, Err(CryptoError::Rotation(_))), "{wrong:?}");
        root.apply(RootKeyStep::MakeCurrent {
            version: 2,
            check: check.clone(),
        })
        .await
        .unwrap();
        // Once current, another key for version 2 is refused.
        assert!(root.apply(add(&random_key())).await.is_err());
        // The node data key is still under version 1: retiring is refused until re-wrapped.
        assert!(root.apply(RootKeyStep::Retire { below: 2 }).await.is_err());
        let status = root.apply(RootKeyStep::RewrapNodeKey).await.unwrap();
        assert_eq!(status.node_key_version, 2);
        let status = root.apply(RootKeyStep::Retire { below: 2 }).await.unwrap();
        assert_eq!(status.keyring.versions, vec![(2, check)]);
        // The re-wrapped node data key is the same key; what version 1 wrapped is gone.
        let reopened = LocalKeyring::open(&dir.path().join(crate::crypto::KEYRING_FILE)).unwrap();
        let again = crate::crypto::node_data_key(dir.path(), &reopened)
            .await
            .unwrap();
        assert_eq!(
            conifer_raft::cipher::ValueCipher::open(&again, b"a", &sealed).unwrap(),
            b"value"
        );
        assert!(matches!(
            reopened.unwrap(&project, "project").await,
            Err(CryptoError::UnknownKeyVersion(1))
        ));
    }
}
