//! The durable Raft log of one group: entries, vote, committed index, last purged id.
//!
//! Appends are one RocksDB `WriteBatch` written with `sync = true`; openraft's flush
//! callback is invoked only after that write returns, so no append is acknowledged before
//! it is on disk. Every value is sealed with the group's cipher, bound to group and index.
//!
//! The entries appended last are also kept decoded in memory ([`RECENT_ENTRIES_MAX_BYTES`]
//! per group, [`RECENT_ENTRIES_NODE_MAX_BYTES`] over all groups of the node), so that applying a committed entry, or sending it to a follower, does not
//! read it back and decrypt it: that read was a quarter of the at-rest encryption's CPU
//! time while ingesting (`scripts/bench/run.sh encryption`). Disk stays the truth: the
//! cache holds only what was synced, follows every truncation and purge, and a range it
//! does not hold whole is read from RocksDB.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::storage::{NodeStorage, StorageFault, CF_RAFT_LOG, CF_RAFT_META};
use crate::types::{GroupId, LogId, NodeId, StorageError, TypeConfig};

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_PURGED: &[u8] = b"purged";

type Entry = openraft::Entry<TypeConfig>;

/// Bytes (serialized) of the most recently appended entries each group keeps decoded in
/// memory; older ones are read back from RocksDB.
pub const RECENT_ENTRIES_MAX_BYTES: usize = 8 << 20;
/// Bytes of such entries over all the groups of a node: past it, a group that appends
/// keeps fewer (possibly none) of its own.
pub const RECENT_ENTRIES_NODE_MAX_BYTES: usize = 64 << 20;

/// The Raft log of one group inside the node's RocksDB.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    storage: NodeStorage,
    recent: Arc<Mutex<RecentEntries>>,
}

/// The last appended entries of a group, decoded: one contiguous run of indexes ending at
/// the last entry on disk (or empty).
struct RecentEntries {
    /// Index -> (entry, its serialized size).
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
    /// The node's total over all groups (`NodeStorage::recent_log_bytes`).
    node_bytes: Arc<AtomicUsize>,
}

impl Drop for RecentEntries {
    fn drop(&mut self) {
        self.node_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl RecentEntries {
    fn new(node_bytes: Arc<AtomicUsize>) -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            node_bytes,
        }
    }

    fn add(&mut self, index: u64, entry: Entry, size: usize) {
        self.bytes += size;
        self.node_bytes.fetch_add(size, Ordering::Relaxed);
        self.entries.insert(index, (entry, size));
    }

    fn forget(&mut self, size: usize) {
        self.bytes -= size;
        self.node_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// Records `appended` (consecutive indexes, just synced), evicting the oldest past
    /// [`RECENT_ENTRIES_MAX_BYTES`].
    fn appended(&mut self, appended: Vec<(Entry, usize)>) {
        let Some(first) = appended.first().map(|(e, _)| e.log_id.index) else {
            return;
        };
        // Keep the run contiguous: anything from `first` on is being replaced (openraft
        // truncates before it overwrites), and a gap before `first` breaks the run.
        self.remove_from(first);
        if self
            .entries
            .last_key_value()
            .is_some_and(|(&last, _)| last + 1 != first)
        {
            self.clear();
        }
        for (entry, size) in appended {
            self.add(entry.log_id.index, entry, size);
        }
        while self.bytes > RECENT_ENTRIES_MAX_BYTES
            || self.node_bytes.load(Ordering::Relaxed) > RECENT_ENTRIES_NODE_MAX_BYTES
        {
            let Some((_, (_, size))) = self.entries.pop_first() else {
                break;
            };
            self.forget(size);
        }
    }

    /// Forgets the entries at `index` and after (a truncation).
    fn remove_from(&mut self, index: u64) {
        for (_, (_, size)) in self.entries.split_off(&index) {
            self.forget(size);
        }
    }

    /// Forgets the entries up to `index` included (a purge).
    fn remove_through(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for (_, (_, size)) in std::mem::replace(&mut self.entries, kept) {
            self.forget(size);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.node_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }

    /// The entries `start..end`, if every one of them is held (the run is contiguous, so
    /// its ends say so).
    fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        if start < first || end > last.saturating_add(1) {
            return None;
        }
        let held = self.entries.range(start..end);
        Some(held.map(|(_, (entry, _))| entry.clone()).collect())
    }
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn fault(e: StorageFault) -> StorageError {
    io_err(ErrorSubject::Store, ErrorVerb::Read, e)
}

impl LogStore {
    /// The log of `group` stored in `storage`.
    pub fn new(group: GroupId, storage: NodeStorage) -> Self {
        let recent = RecentEntries::new(storage.recent_log_bytes());
        Self {
            group,
            storage,
            recent: Arc::new(Mutex::new(recent)),
        }
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        // Every update leaves the cache consistent before it can panic, so a poisoned lock
        // still guards a valid run.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_key(&self, index: u64) -> Vec<u8> {
        NodeStorage::group_key(self.group, &index.to_be_bytes())
    }

    fn meta_key(&self, name: &[u8]) -> Vec<u8> {
        NodeStorage::group_key(self.group, name)
    }

    /// First key past every log entry of this group.
    fn log_end_key(&self) -> Vec<u8> {
        NodeStorage::group_key(self.group, &u64::MAX.to_be_bytes())
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, StorageError> {
        let key = self.meta_key(name);
        match self.storage.get(CF_RAFT_META, &key).map_err(fault)? {
            None => Ok(None),
            Some(bytes) => bincode::deserialize(&bytes)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    fn write_meta<T: Serialize>(&self, name: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.storage
            .put_synced(CF_RAFT_META, &self.meta_key(name), &bytes)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    fn decode_entry(&self, key: &[u8], sealed: &[u8]) -> Result<Entry, StorageError> {
        let plain = self
            .storage
            .open_value(CF_RAFT_LOG, key, sealed)
            .map_err(fault)?;
        bincode::deserialize(&plain).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = self.storage.cf(CF_RAFT_LOG).map_err(fault)?;
        let end = self.log_end_key();
        let mut iter = self
            .storage
            .db()
            .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) =
                    item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                if !key.starts_with(&self.group.to_be_bytes()) {
                    return Ok(None);
                }
                Ok(Some(self.decode_entry(&key, &value)?.log_id))
            }
        }
    }

    fn delete_range(
        &self,
        from_index: u64,
        to_index_exclusive: Option<u64>,
    ) -> Result<(), StorageError> {
        let cf = self.storage.cf(CF_RAFT_LOG).map_err(fault)?;
        let from = self.log_key(from_index);
        let to = match to_index_exclusive {
            Some(i) => self.log_key(i),
            None => NodeStorage::group_key(self.group + 1, &[]),
        };
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, from, to);
        self.storage
            .write_synced(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end.filter(|&end| end > start) {
            if let Some(entries) = self.recent().range(start, end) {
                return Ok(entries);
            }
        }
        let cf = self.storage.cf(CF_RAFT_LOG).map_err(fault)?;
        let from = self.log_key(start);
        let mut out = Vec::new();
        for item in self
            .storage
            .db()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if key.len() != 16 || !key.starts_with(&self.group.to_be_bytes()) {
                break;
            }
            let mut index_bytes = [0u8; 8];
            index_bytes.copy_from_slice(&key[8..16]);
            let index = u64::from_be_bytes(index_bytes);
            if !range.contains(&index) {
                break;
            }
            out.push(self.decode_entry(&key, &value)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(META_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(META_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            self.storage
                .batch_put(
                    &mut batch,
                    CF_RAFT_LOG,
                    &self.log_key(entry.log_id.index),
                    &bytes,
                )
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            appended.push((entry, bytes.len()));
        }
        fail::fail_point!("raft::append::before_sync", |_| Err(io_err(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            std::io::Error::other("failpoint raft::append::before_sync")
        )));
        let result = self.storage.write_synced(batch);
        match result {
            Ok(()) => {
                self.recent().appended(appended);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg.clone())));
                Err(io_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    std::io::Error::other(msg),
                ))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Forgotten first: a failed delete leaves entries on disk that the next read
        // finds there, never a cached entry that is no longer on disk.
        self.recent().remove_from(log_id.index);
        self.delete_range(log_id.index, None)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().remove_through(log_id.index);
        self.write_meta(META_PURGED, &log_id)?;
        self.delete_range(0, Some(log_id.index + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> (Entry, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (entry, 1 << 20)
    }

    fn held(recent: &RecentEntries) -> Vec<u64> {
        recent.entries.keys().copied().collect()
    }

    #[test]
    fn recent_entries_stay_one_run_within_their_byte_bound() {
        let node = Arc::new(AtomicUsize::new(0));
        let mut recent = RecentEntries::new(node.clone());
        recent.appended((1..=5).map(entry).collect());
        assert_eq!(held(&recent), [1, 2, 3, 4, 5]);
        assert_eq!(recent.range(2, 5).map(|e| e.len()), Some(3));
        assert!(recent.range(0, 2).is_none(), "index 0 is not held");
        assert!(recent.range(5, 7).is_none(), "index 6 is not held");

        // A truncation, then an overwrite from index 4.
        recent.remove_from(4);
        assert_eq!(held(&recent), [1, 2, 3]);
        recent.appended((4..=6).map(entry).collect());
        assert_eq!(held(&recent), [1, 2, 3, 4, 5, 6]);
        // Overwriting without a truncation first replaces the tail too.
        recent.appended(vec![entry(3)]);
        assert_eq!(held(&recent), [1, 2, 3]);

        // A purge.
        recent.remove_through(2);
        assert_eq!(held(&recent), [3]);
        assert_eq!(recent.bytes, 1 << 20);

        // A gap (entries appended after a snapshot was installed) starts a new run.
        recent.appended(vec![entry(10), entry(11)]);
        assert_eq!(held(&recent), [10, 11]);

        // The byte bound evicts the oldest.
        recent.appended((12..=30).map(entry).collect());
        assert_eq!(recent.bytes, RECENT_ENTRIES_MAX_BYTES);
        assert_eq!(held(&recent), (23..=30).collect::<Vec<_>>());
        assert_eq!(node.load(Ordering::Relaxed), RECENT_ENTRIES_MAX_BYTES);

        // Over all groups, the node's bound: a group appending past it keeps less.
        let groups: Vec<RecentEntries> = (0..7)
            .map(|_| {
                let mut other = RecentEntries::new(node.clone());
                other.appended((1..=8).map(entry).collect());
                other
            })
            .collect();
        assert_eq!(node.load(Ordering::Relaxed), RECENT_ENTRIES_NODE_MAX_BYTES);
        recent.appended(vec![entry(31), entry(32)]);
        assert_eq!(held(&recent), (25..=32).collect::<Vec<_>>());
        let mut late = RecentEntries::new(node.clone());
        late.appended(vec![entry(1)]);
        assert!(
            held(&late).is_empty(),
            "nothing left for it under the node's bound"
        );
        assert_eq!(node.load(Ordering::Relaxed), RECENT_ENTRIES_NODE_MAX_BYTES);
        drop(groups);
        assert_eq!(node.load(Ordering::Relaxed), RECENT_ENTRIES_MAX_BYTES);
    }
}
