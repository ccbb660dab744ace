//! Where backups are kept: a directory (`serve --backup-dir`, the default) or an
//! S3-compatible bucket (`serve --backup-s3-bucket`). Objects are named
//! `<project id>/<backup id>/<attempt>/<file>`; their content is sealed before it gets
//! here, so the store is trusted with availability only, never with secrecy or integrity
//! (a changed object is refused by its checksum, see `archive`).
//!
//! Every node of a cluster must see the same store: for the directory store, a directory
//! shared by every node (a network file system), since the node that writes a backup and
//! the one that restores it may differ.

use std::path::{Path, PathBuf};

/// A failure of the backup store, in words that name the store.
#[derive(Debug, thiserror::Error)]
#[error("backup store {store}: {message}")]
pub struct StoreError {
    /// The store ([`BackupStore::describe`]).
    pub store: String,
    /// What failed.
    pub message: String,
}

/// The backup store of this node.
pub enum BackupStore {
    /// A directory.
    Local(LocalDir),
    /// An S3-compatible bucket.
    S3(super::s3::S3Store),
}

impl BackupStore {
    /// The store in words: `directory /srv/backups`, `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            BackupStore::Local(d) => format!("directory {}", d.root.display()),
            BackupStore::S3(s) => s.describe(),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            store: self.describe(),
            message: message.to_string(),
        }
    }

    /// Stores `bytes` as `key`, whole or not at all (a reader never sees part of it).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        check_key(key).map_err(|m| self.error(m))?;
        match self {
            BackupStore::Local(d) => d.put(key, bytes).await.map_err(|e| e.to_string()),
            BackupStore::S3(s) => s.put(key, bytes).await,
        }
        .map_err(|e| self.error(format!("writing {key}: {e}")))
    }

    /// The object `key`, `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key).map_err(|m| self.error(m))?;
        match self {
            BackupStore::Local(d) => d.get(key).await.map_err(|e| e.to_string()),
            BackupStore::S3(s) => s.get(key).await,
        }
        .map_err(|e| self.error(format!("reading {key}: {e}")))
    }

    /// The names directly under `prefix` (a `/`-terminated folder, or `""`): objects and
    /// folders (folder names without their trailing `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            BackupStore::Local(d) => d.list(prefix).await.map_err(|e| e.to_string()),
            BackupStore::S3(s) => s.list(prefix).await,
        }
        .map_err(|e| self.error(format!("listing {prefix}: {e}")))
    }

    /// Removes every object under `prefix` (a `/`-terminated folder).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        check_key(prefix.trim_end_matches('/')).map_err(|m| self.error(m))?;
        match self {
            BackupStore::Local(d) => d.delete_prefix(prefix).await.map_err(|e| e.to_string()),
            BackupStore::S3(s) => s.delete_prefix(prefix).await,
        }
        .map_err(|e| self.error(format!("deleting {prefix}: {e}")))
    }
}

/// The backup store as one cluster sees it: every object under `<cluster id>/`, so that
/// clusters (or other data) sharing a bucket, prefix or directory never touch each other's
/// objects.
pub struct ClusterStore<'a> {
    store: &'a BackupStore,
    root: String,
}

impl<'a> ClusterStore<'a> {
    /// The objects of cluster `cluster_id` in `store`.
    pub fn new(store: &'a BackupStore, cluster_id: &str) -> Self {
        Self {
            store,
            root: format!("{cluster_id}/"),
        }
    }

    /// The store in words (for the node's log; tenants are not told where it is).
    pub fn describe(&self) -> String {
        format!("{} (cluster folder {})", self.store.describe(), self.root)
    }

    /// [`BackupStore::put`] under the cluster's folder.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store.put(&format!("{}{key}", self.root), bytes).await
    }

    /// [`BackupStore::get`] under the cluster's folder.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(&format!("{}{key}", self.root)).await
    }

    /// [`BackupStore::list`] under the cluster's folder (`""`: its top level).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.store.list(&format!("{}{prefix}", self.root)).await
    }

    /// [`BackupStore::delete_prefix`] under the cluster's folder.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.store
            .delete_prefix(&format!("{}{prefix}", self.root))
            .await
    }

    /// Whether this is a directory store.
    pub fn is_directory(&self) -> bool {
        matches!(self.store, BackupStore::Local(_))
    }
}

/// Refuses a key that could leave the store's root: empty segments, `.`, `..`, or
/// characters outside `[A-Za-z0-9._-]`. Keys are made of ids Conifer generated.
fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid object name"))
    }
}

/// A backup store in a directory.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store in `root`, created (mode 0700) when missing.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().expect("object keys have a folder");
            // The folders this creates are synced into their parents too, so a written
            // backup survives a power loss whole.
            let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            for created in missing.iter().rev() {
                if let Some(parent) = created.parent() {
                    std::fs::File::open(parent)?.sync_all()?;
                }
            }
            // Written beside, synced, then renamed over: a reader sees all of it or none.
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.root.join(key)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let mut names = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            if let Some(name) = entry.file_name().to_str() {
                if !name.contains(".tmp-") {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(self.root.join(prefix.trim_end_matches('/'))).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_store_keeps_lists_and_deletes_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackupStore::Local(LocalDir::open(dir.path()).unwrap());
        store.put("p/b/a/chunk-000000", vec![1, 2]).await.unwrap();
        store.put("p/b/a/manifest", vec![3]).await.unwrap();
        assert_eq!(
            store.get("p/b/a/chunk-000000").await.unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(store.get("p/b/a/none").await.unwrap(), None);
        assert_eq!(store.list("p/").await.unwrap(), vec!["b".to_string()]);
        assert_eq!(
            store.list("p/b/a/").await.unwrap(),
            vec!["chunk-000000".to_string(), "manifest".to_string()]
        );
        store.delete_prefix("p/b/").await.unwrap();
        assert!(store.list("p/").await.unwrap().is_empty());
        for bad in ["../x", "p//b", "p/./b", "/abs", "p/b c"] {
            assert!(store.put(bad, vec![]).await.is_err(), "{bad}");
        }
    }
}
