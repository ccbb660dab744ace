//! The node's single RocksDB instance, shared by every Raft group.
//!
//! One database per node keeps one WAL and one fsync per batch for all groups. Keys start
//! with the group id (8 bytes, big-endian) so each group's records sort together. Every
//! value is sealed: node-local settings and group 0 with the node's [`ValueCipher`], every
//! other group with the cipher its [`GroupCiphers`] give (the group is read off the key's
//! first 8 bytes); keys carry only ids and indexes.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::cipher::{GroupCiphers, SameCipher, ValueCipher};
use crate::types::GroupId;

/// Column family of Raft log entries: key = group ‖ index.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Column family of per-group Raft metadata (vote, committed, last purged).
pub const CF_RAFT_META: &str = "raft_meta";
/// Column family of the latest state-machine snapshot of each group.
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Column family of node-local settings (wrapped data keys, node identity).
pub const CF_NODE: &str = "node";
/// Column family of durable state machines' state (shard records, saved vector indexes,
/// applied log ids): key = group ‖ app key.
pub const CF_STATE: &str = "state";

/// Every column family of the node database.
pub const COLUMN_FAMILIES: [&str; 5] = [CF_RAFT_LOG, CF_RAFT_META, CF_SNAPSHOTS, CF_NODE, CF_STATE];

/// Errors of the node storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value failed to decrypt: wrong key, or the value was moved or tampered with.
    #[error("stored value under {key} failed to decrypt: {reason}")]
    Decrypt {
        /// Printable form of the key.
        key: String,
        /// Why decryption failed.
        reason: String,
    },
    /// The key of a group's values is not available now (see [`GroupCiphers::cipher`]).
    #[error("the key of group {group} is not available: {reason}")]
    KeyUnavailable {
        /// The group.
        group: GroupId,
        /// Why not.
        reason: String,
    },
    /// A stored value decrypted but did not decode.
    #[error("stored value under {key} is corrupt: {reason}")]
    Corrupt {
        /// Printable form of the key.
        key: String,
        /// Why decoding failed.
        reason: String,
    },
}

/// The node's RocksDB and the ciphers that seal every value in it.
#[derive(Clone)]
pub struct NodeStorage {
    db: Arc<DB>,
    cipher: Arc<dyn ValueCipher>,
    groups: Arc<dyn GroupCiphers>,
    /// Bytes of Raft entries all groups' log stores keep decoded in memory
    /// ([`crate::log_store::RECENT_ENTRIES_NODE_MAX_BYTES`]).
    recent_log_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl NodeStorage {
    /// Opens (or creates) the database under `path` with all column families; every value
    /// is sealed with `cipher` until [`NodeStorage::with_group_ciphers`] gives the groups
    /// other than 0 their own.
    pub fn open(path: &Path, cipher: Arc<dyn ValueCipher>) -> Result<Self, StorageFault> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self {
            db: Arc::new(db),
            groups: Arc::new(SameCipher(cipher.clone())),
            cipher,
            recent_log_bytes: Arc::default(),
        })
    }

    /// The node's count of decoded Raft entry bytes held by log stores.
    pub(crate) fn recent_log_bytes(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.recent_log_bytes.clone()
    }

    /// The same storage, sealing the values of every group other than 0 with the cipher
    /// `groups` give for it.
    pub fn with_group_ciphers(mut self, groups: Arc<dyn GroupCiphers>) -> Self {
        self.groups = groups;
        self
    }

    /// The underlying database, for modules that keep their own column families' layout.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The cipher of the value under `cf`/`key`: the node's for node-local settings, Raft
    /// metadata (votes, commit and purge marks: terms, indexes and node ids only) and group
    /// 0, else the group's (its id is the key's first 8 bytes).
    fn cipher_for(&self, cf: &str, key: &[u8]) -> Result<Arc<dyn ValueCipher>, StorageFault> {
        let group = match key.first_chunk::<8>() {
            Some(prefix) if cf != CF_NODE && cf != CF_RAFT_META => GroupId::from_be_bytes(*prefix),
            _ => return Ok(self.cipher.clone()),
        };
        if group == crate::types::CONTROL_GROUP {
            return Ok(self.cipher.clone());
        }
        self.groups
            .cipher(group)
            .map_err(|e| StorageFault::KeyUnavailable { group, reason: e.0 })
    }

    /// Builds the key `group ‖ suffix`.
    pub fn group_key(group: GroupId, suffix: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(8 + suffix.len());
        key.extend_from_slice(&group.to_be_bytes());
        key.extend_from_slice(suffix);
        key
    }

    /// Associated data binding a value to its column family and key.
    pub fn aad(cf: &str, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(cf.len() + 1 + key.len());
        aad.extend_from_slice(cf.as_bytes());
        aad.push(0);
        aad.extend_from_slice(key);
        aad
    }

    /// Seals `value` for `cf`/`key` and adds the put to `batch`.
    pub fn batch_put(
        &self,
        batch: &mut WriteBatch,
        cf: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StorageFault> {
        let handle = self.cf(cf)?;
        let cipher = self.cipher_for(cf, key)?;
        batch.put_cf(handle, key, cipher.seal(&Self::aad(cf, key), value));
        Ok(())
    }

    /// Writes `batch` and syncs the WAL before returning: the write is durable when this returns.
    pub fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageFault> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Writes `batch` without waiting for the disk; a crash may lose it (but never half of it).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageFault> {
        self.db.write(batch)?;
        Ok(())
    }

    /// Syncs the WAL: every write made before this call is durable when it returns.
    pub fn sync_wal(&self) -> Result<(), StorageFault> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Seals and writes one value durably.
    pub fn put_synced(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StorageFault> {
        let mut batch = WriteBatch::default();
        self.batch_put(&mut batch, cf, key, value)?;
        self.write_synced(batch)
    }

    /// Reads and opens one value.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        let handle = self.cf(cf)?;
        match self.db.get_cf(handle, key)? {
            None => Ok(None),
            Some(sealed) => self.open_value(cf, key, &sealed).map(Some),
        }
    }

    /// Opens a sealed value read from `cf`/`key`.
    pub fn open_value(&self, cf: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StorageFault> {
        self.cipher_for(cf, key)?
            .open(&Self::aad(cf, key), sealed)
            .map_err(|e| StorageFault::Decrypt {
                key: format!("{cf}/{}", printable(key)),
                reason: e.0,
            })
    }

    /// The handle of a column family this module created.
    pub fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageFault> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageFault::Corrupt {
                key: name.to_string(),
                reason: "column family missing".to_string(),
            })
    }
}

/// Hex form of a key for error messages (keys hold only ids and indexes, never secrets).
pub fn printable(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

impl NodeStorage {
    /// Re-seals with `group`'s current cipher the values under `cf` that were sealed with a
    /// key it no longer seals with, from key `from` on (the group's first key when `None`),
    /// stopping after `limit` keys looked at or `max_bytes` of values rewritten; returns how
    /// many it rewrote and the key to go on from (`None` once the group's last key was
    /// passed). The caller keeps every other writer of those keys out meanwhile (see
    /// `StateHandle::exclusive`), so each call is bounded to keep that pause short.
    pub fn reseal(
        &self,
        cf: &str,
        group: GroupId,
        from: Option<Vec<u8>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StorageFault> {
        let cipher = self
            .groups
            .cipher(group)
            .map_err(|e| StorageFault::KeyUnavailable { group, reason: e.0 })?;
        let start = from.unwrap_or_else(|| Self::group_key(group, &[]));
        let end = Self::group_key(group + 1, &[]);
        let handle = self.cf(cf)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let iter = self.db.iterator_cf_opt(
            handle,
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut batch = WriteBatch::default();
        let (mut rewritten, mut looked_at, mut bytes) = (0, 0, 0);
        for item in iter {
            let (key, sealed) = item?;
            if looked_at == limit || bytes >= max_bytes {
                self.write_synced(batch)?;
                return Ok((rewritten, Some(key.to_vec())));
            }
            looked_at += 1;
            if !cipher.is_stale(&sealed) {
                continue;
            }
            bytes += sealed.len();
            let aad = Self::aad(cf, &key);
            let plain = cipher
                .open(&aad, &sealed)
                .map_err(|e| StorageFault::Decrypt {
                    key: format!("{cf}/{}", printable(&key)),
                    reason: e.0,
                })?;
            batch.put_cf(handle, &key, cipher.seal(&aad, &plain));
            rewritten += 1;
        }
        self.write_synced(batch)?;
        Ok((rewritten, None))
    }

    /// How many of `group`'s values under `cf` were sealed with a key its cipher no longer
    /// seals with.
    pub fn stale_values(&self, cf: &str, group: GroupId) -> Result<usize, StorageFault> {
        let cipher = self
            .groups
            .cipher(group)
            .map_err(|e| StorageFault::KeyUnavailable { group, reason: e.0 })?;
        let handle = self.cf(cf)?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(Self::group_key(group + 1, &[]));
        let start = Self::group_key(group, &[]);
        let mut stale = 0;
        for item in self.db.iterator_cf_opt(
            handle,
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (_, sealed) = item?;
            stale += usize::from(cipher.is_stale(&sealed));
        }
        Ok(stale)
    }

    /// Deletes every key of `group` in every column family (a shard replica that left this node).
    pub fn delete_group(&self, group: GroupId) -> Result<(), StorageFault> {
        let from = Self::group_key(group, &[]);
        let to = Self::group_key(group + 1, &[]);
        let mut batch = WriteBatch::default();
        for name in COLUMN_FAMILIES {
            batch.delete_range_cf(self.cf(name)?, &from, &to);
        }
        self.write_synced(batch)
    }

    /// Group ids that have Raft metadata on this node.
    pub fn groups_with_state(&self) -> Result<Vec<GroupId>, StorageFault> {
        let cf = self.cf(CF_RAFT_META)?;
        let mut groups = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, _) = item?;
            if key.len() >= 8 {
                let mut id = [0u8; 8];
                id.copy_from_slice(&key[..8]);
                let group = GroupId::from_be_bytes(id);
                if groups.last() != Some(&group) {
                    groups.push(group);
                }
            }
        }
        Ok(groups)
    }
}
