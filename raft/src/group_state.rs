//! The durable application state of one group, in the `state` column family.
//!
//! A durable state machine (a shard) keeps its records in RocksDB rather than in snapshots.
//! It stages its changes for one batch of applied entries in a [`StateWrites`]; the adapter
//! adds the applied log id to the same write batch, so records and the applied index never
//! disagree after a crash. It reads its state back through a [`StateView`], either the
//! latest state or a point-in-time RocksDB snapshot (for building a Raft snapshot while
//! applies continue).
//!
//! Keys are `group ‖ app key`; app keys must not start with [`RESERVED_KEY_PREFIX`], which
//! the adapter uses for its own markers. Every value is sealed with the node's cipher, with
//! the column family and full key as associated data.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::state_machine::MachineError;
use crate::storage::{NodeStorage, StorageFault, CF_STATE};
use crate::types::GroupId;

/// First byte of the keys the adapter keeps for itself (applied log id, snapshot marker).
pub const RESERVED_KEY_PREFIX: u8 = 0x00;

/// The smallest key greater than every key starting with `prefix` (None: no such key).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The key range `[group ‖ prefix, successor)` of one group.
fn group_range(group: GroupId, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let from = NodeStorage::group_key(group, prefix);
    let to = successor(&from).unwrap_or_else(|| NodeStorage::group_key(group + 1, &[]));
    (from, to)
}

/// Changes to a group's durable state, written atomically with the applied log id.
pub struct StateWrites<'a> {
    storage: &'a NodeStorage,
    group: GroupId,
    batch: WriteBatch,
}

impl<'a> StateWrites<'a> {
    /// Empty changes to the state of `group`.
    pub fn new(storage: &'a NodeStorage, group: GroupId) -> Self {
        Self {
            storage,
            group,
            batch: WriteBatch::default(),
        }
    }

    /// Seals `value` and stages it under the app key `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageFault> {
        debug_assert!(key.first() != Some(&RESERVED_KEY_PREFIX), "reserved key");
        self.put_any(key, value)
    }

    pub(crate) fn put_any(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageFault> {
        let full = NodeStorage::group_key(self.group, key);
        self.storage
            .batch_put(&mut self.batch, CF_STATE, &full, value)
    }

    /// Stages the deletion of the app key `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), StorageFault> {
        let full = NodeStorage::group_key(self.group, key);
        self.batch.delete_cf(self.storage.cf(CF_STATE)?, full);
        Ok(())
    }

    /// Stages the deletion of every app key starting with `prefix`. Puts staged after it in
    /// the same batch survive.
    pub fn delete_prefix(&mut self, prefix: &[u8]) -> Result<(), StorageFault> {
        let (from, to) = group_range(self.group, prefix);
        self.batch
            .delete_range_cf(self.storage.cf(CF_STATE)?, from, to);
        Ok(())
    }

    /// Stages the deletion of every app key of the group (the adapter's own keys stay).
    pub(crate) fn delete_app_keys(&mut self) -> Result<(), StorageFault> {
        let from = NodeStorage::group_key(self.group, &[RESERVED_KEY_PREFIX + 1]);
        let to = NodeStorage::group_key(self.group + 1, &[]);
        self.batch
            .delete_range_cf(self.storage.cf(CF_STATE)?, from, to);
        Ok(())
    }

    /// Number of staged operations.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The staged changes, for writing.
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

/// Read access to a group's durable state: the latest, or a point-in-time snapshot.
pub struct StateView<'a> {
    storage: &'a NodeStorage,
    group: GroupId,
    snapshot: Option<rocksdb::Snapshot<'a>>,
}

impl<'a> StateView<'a> {
    /// The latest state.
    pub fn latest(storage: &'a NodeStorage, group: GroupId) -> Self {
        Self {
            storage,
            group,
            snapshot: None,
        }
    }

    /// The state as it is now, unaffected by later writes.
    pub fn frozen(storage: &'a NodeStorage, group: GroupId) -> Self {
        Self {
            storage,
            group,
            snapshot: Some(storage.db().snapshot()),
        }
    }

    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(snapshot) = &self.snapshot {
            opts.set_snapshot(snapshot);
        }
        opts
    }

    /// The opened value under the app key `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        let full = NodeStorage::group_key(self.group, key);
        let cf = self.storage.cf(CF_STATE)?;
        match self
            .storage
            .db()
            .get_cf_opt(cf, &full, &self.read_options())?
        {
            None => Ok(None),
            Some(sealed) => self.storage.open_value(CF_STATE, &full, &sealed).map(Some),
        }
    }

    /// Calls `visit(app key, opened value)` for every app key starting with `prefix`, in
    /// key order. Stops at the first error of `visit`.
    pub fn scan(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], Vec<u8>) -> Result<(), MachineError>,
    ) -> Result<(), MachineError> {
        let (from, to) = group_range(self.group, prefix);
        let mut opts = self.read_options();
        opts.set_iterate_upper_bound(to);
        let cf = self.storage.cf(CF_STATE)?;
        let iter = self.storage.db().iterator_cf_opt(
            cf,
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (key, sealed) = item.map_err(StorageFault::from)?;
            let value = self.storage.open_value(CF_STATE, &key, &sealed)?;
            visit(&key[8..], value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_skips_trailing_max_bytes() {
        assert_eq!(successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
    }
}
