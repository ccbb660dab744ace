//! One namespace of a shard: its records by internal id (with their ids in order), its
//! vector engine and its metadata index, the read path (get, list, filters, query),
//! background rebuilds of its engine, and the pair assertions that keep the three in step.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use conifer_raft::group_state::StateWrites;
use conifer_raft::MachineError;
use serde_json::{Map, Value};

use super::command::Record;
use super::engine::{EngineConfig, EngineKind, VectorIndex};
use super::filter::Filter;
use super::metadata_index::MetadataIndex;
use super::store::{encode, keys, stage, stage_saved_engine, Header, SavedEngine};
use crate::shard::engine::Metric;
use crate::timing;

/// A record as a namespace holds it, under its internal id.
pub(super) struct Stored {
    /// The record's id, shared with the namespace's map of ids.
    pub(super) id: Arc<str>,
    pub(super) record: Record,
    /// The metadata parsed once at write time, so filters never parse JSON per query.
    pub(super) meta: Option<Map<String, Value>>,
}

impl Stored {
    pub(super) fn new(id: Arc<str>, record: Record) -> Self {
        let meta = record.metadata_map();
        Self { id, record, meta }
    }
}

/// Filtered queries on an HNSW namespace that allow at most this many records are answered
/// by an exact scan of those records (exact, and faster than a selective graph search).
pub const EXACT_SCAN_MAX_RECORDS: usize = 10_000;

/// A saved HNSW index is saved again at the next snapshot once this many records of its
/// namespace changed since (each of them costs a graph insertion at the next open).
pub const ENGINE_SAVE_MIN_CHANGES: u64 = 2_000;

/// A vector-engine failure while building or saving derived state.
pub(super) fn derived(e: impl std::fmt::Display) -> MachineError {
    MachineError::Derived(e.to_string())
}

/// One namespace: records by internal id, their ids in order, and their vector index.
///
/// Records are keyed by the internal id the vector index and the metadata index use, so a
/// query's hits and a filter's matches reach their records by integer, never by string
/// comparison; `ids` maps each record id to its internal id, in id order (get, list, the
/// digest).
pub struct Namespace {
    pub(super) name: String,
    pub(super) records: BTreeMap<u64, Stored>,
    pub(super) ids: BTreeMap<Arc<str>, u64>,
    pub(super) next_internal: u64,
    /// The namespace's number in the shard's keys; a namespace deleted and created again
    /// gets a new one.
    pub(super) seq: u64,
    /// Read by every query at once; written only by a swap ([`ShardMachine::install`]) or
    /// through `&mut self` (applying writes).
    pub(super) engine: RwLock<VectorIndex>,
    /// Bitmaps of internal ids by metadata value, for filters.
    pub(super) meta_index: MetadataIndex,
    /// Records written or deleted since the HNSW index was last saved.
    pub(super) unsaved_changes: AtomicU64,
    /// Whether the current HNSW index was ever saved.
    pub(super) engine_saved: AtomicBool,
}

/// A background rebuild of one namespace's vector index: inputs copied under the read lock,
/// the build done without locks, the result installed by [`ShardMachine::install`].
pub struct RebuildJob {
    pub(super) namespace: String,
    pub(super) seq: u64,
    pub(super) kind: EngineKind,
    pub(super) dimension: usize,
    pub(super) metric: Metric,
    pub(super) config: EngineConfig,
    pub(super) next_internal: u64,
    pub(super) ids: Vec<u64>,
    pub(super) values: Vec<f32>,
}

/// A rebuilt index waiting to be installed.
pub struct Rebuilt {
    pub(super) namespace: String,
    pub(super) seq: u64,
    pub(super) next_internal: u64,
    pub(super) ids: HashSet<u64>,
    pub(super) index: VectorIndex,
}

impl RebuildJob {
    /// Which structure is being built.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Number of vectors being indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the job indexes no vector.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Builds the index (CPU-heavy: run it off the async runtime).
    pub fn build(self) -> Result<Rebuilt, MachineError> {
        let mut index = VectorIndex::new(self.dimension, self.metric, self.kind, self.config)
            .map_err(derived)?;
        index.add(&self.ids, self.values).map_err(derived)?;
        Ok(Rebuilt {
            namespace: self.namespace,
            seq: self.seq,
            next_internal: self.next_internal,
            ids: self.ids.into_iter().collect(),
            index,
        })
    }
}

/// A hit of a query, borrowed from the namespace (nothing is copied until the response is
/// built, and then only what it includes).
pub struct Hit<'a> {
    /// Record id.
    pub id: &'a str,
    /// Pinecone score.
    pub score: f32,
    /// The record.
    pub record: &'a Record,
}

impl Namespace {
    /// Brings `index`, built from this namespace's records below internal id
    /// `covered_below` with `previously_live` in it, up to the records now: adds the records
    /// written since and removes those deleted since. Returns how many it changed. The one
    /// catch-up of a loaded graph (at open) and of a background rebuild (at install).
    pub(super) fn catch_up(
        &self,
        index: &mut VectorIndex,
        covered_below: u64,
        previously_live: impl IntoIterator<Item = u64>,
    ) -> Result<u64, MachineError> {
        let mut ids = Vec::new();
        let mut values = Vec::new();
        for (internal, stored) in self.records.range(covered_below..) {
            ids.push(*internal);
            values.extend_from_slice(&stored.record.values);
        }
        let gone: Vec<u64> = previously_live
            .into_iter()
            .filter(|id| !self.records.contains_key(id))
            .collect();
        index.add(&ids, values).map_err(derived)?;
        index.remove(&gone).map_err(derived)?;
        Ok((ids.len() + gone.len()) as u64)
    }

    pub(super) fn stage_header(&self, writes: &mut StateWrites<'_>) {
        let header = Header {
            name: self.name.clone(),
            next_internal: self.next_internal,
        };
        stage(writes.put(&keys::of(keys::HEADER, self.seq), &encode(&header)));
    }

    /// Whether the vector index has nothing waiting to be saved (an exact index never has:
    /// it is rebuilt from the records at open).
    pub fn index_saved(&self) -> bool {
        !self.index_needs_saving()
    }

    pub(super) fn index_needs_saving(&self) -> bool {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
        engine.kind() == EngineKind::Hnsw
            && (!self.engine_saved.load(Ordering::Relaxed)
                || self.unsaved_changes.load(Ordering::Relaxed) >= ENGINE_SAVE_MIN_CHANGES)
    }

    /// Pair assertions after an apply: the namespace's records, its map of ids and its
    /// metadata index hold the same records. A difference would serve a deleted
    /// record, or lose a live one from filters, from here on — so the replica stops
    /// rather than diverge (the log is intact; a restart rebuilds memory from RocksDB).
    pub(super) fn assert_consistent(&self) {
        assert_eq!(
            self.records.len(),
            self.ids.len(),
            "namespace '{}': records and ids disagree",
            self.name
        );
        assert_eq!(
            self.records.len() as u64,
            self.meta_index.len(),
            "namespace '{}': records and metadata index disagree",
            self.name
        );
    }

    /// Stages the HNSW index for saving if it is new or changed enough.
    pub(super) fn checkpoint(&self, writes: &mut StateWrites<'_>) -> Result<(), MachineError> {
        if !self.index_needs_saving() {
            return Ok(());
        }
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .to_snapshot()
            .map_err(derived)?;
        // A crash while the graph is being saved: the records are on disk, the graph is
        // rebuilt from them at the next start.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("conifer::shard::checkpoint::before_stage");
        let live: Vec<u64> = self.records.keys().copied().collect();
        let saved = SavedEngine {
            next_internal: self.next_internal,
            live,
            engine,
        };
        stage_saved_engine(writes, self.seq, &saved);
        self.engine_saved.store(true, Ordering::Relaxed);
        self.unsaved_changes.store(0, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn upsert(&mut self, records: Vec<(String, Record)>, writes: &mut StateWrites<'_>) {
        let mut removed = Vec::new();
        let mut ids = Vec::with_capacity(records.len());
        let mut values = Vec::new();
        for (id, record) in records {
            let internal = self.next_internal;
            self.next_internal += 1;
            stage(writes.put(&keys::record(self.seq, internal), &encode(&(&id, &record))));
            values.extend_from_slice(&record.values);
            if let Some(old) = self.hold_record(internal, id, record) {
                self.forget(old, writes);
                removed.push(old);
            }
            ids.push(internal);
        }
        self.stage_header(writes);
        self.unsaved_changes
            .fetch_add((ids.len() + removed.len()) as u64, Ordering::Relaxed);
        let engine = self.engine.get_mut().unwrap_or_else(|p| p.into_inner());
        // Added before removing: an id written twice in one batch has its first internal
        // id in both lists, and an exact index removes only what it holds.
        if let Err(e) = engine
            .add(&ids, values)
            .and_then(|_| engine.remove(&removed))
        {
            panic!("vector index update failed: {e}");
        }
    }

    pub(super) fn delete(&mut self, ids: &[String], writes: &mut StateWrites<'_>) {
        let mut removed = Vec::new();
        for id in ids {
            if let Some(old) = self.ids.remove(id.as_str()) {
                self.forget(old, writes);
                removed.push(old);
            }
        }
        self.unsaved_changes
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        let engine = self.engine.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = engine.remove(&removed) {
            panic!("vector index delete failed: {e}");
        }
    }

    /// Drops the record at internal id `internal` (its id already unmapped or remapped)
    /// from memory, the metadata index and durable state.
    fn forget(&mut self, internal: u64, writes: &mut StateWrites<'_>) {
        if let Some(old) = self.records.remove(&internal) {
            self.meta_index.remove(internal, old.meta.as_ref());
        }
        stage(writes.delete(&keys::record(self.seq, internal)));
    }

    /// Holds `record` in memory under `internal` (records, ids, metadata index), written
    /// now or read back from durable state. Returns the internal id `id` had before, whose
    /// record the caller forgets.
    pub(super) fn hold_record(&mut self, internal: u64, id: String, record: Record) -> Option<u64> {
        let id: Arc<str> = id.into();
        let stored = Stored::new(id.clone(), record);
        self.meta_index.insert(internal, stored.meta.as_ref());
        self.records.insert(internal, stored);
        self.ids.insert(id, internal)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the namespace holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The namespace's [`records_digest`]: equal on every replica that applied the same log
    /// prefix, whatever its vector index, and to a backup's of the same records.
    pub fn digest(&self) -> String {
        records_digest(self.ids.iter().filter_map(|(id, internal)| {
            Some(record_hash(id, &self.records.get(internal)?.record))
        }))
    }

    /// Whether a record `id` exists.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// The record `id`.
    pub fn get(&self, id: &str) -> Option<&Record> {
        let internal = self.ids.get(id)?;
        self.records.get(internal).map(|s| &s.record)
    }

    /// Ids in order, starting after `after`, with `prefix`, at most `limit`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Included(prefix),
        };
        self.ids
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .map(|(id, _)| id)
            .take_while(|id| id.starts_with(prefix))
            .take(limit)
            .map(|id| id.to_string())
            .collect()
    }

    /// Records satisfying `filter`, by id.
    pub fn matching(&self, filter: &Filter) -> Vec<(&str, &Record)> {
        let mut found: Vec<(&str, &Record)> = self
            .meta_index
            .evaluate(filter)
            .iter()
            .filter_map(|internal| {
                let stored = self.records.get(&internal)?;
                Some((&*stored.id, &stored.record))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        found
    }

    /// Number of records satisfying `filter`.
    pub fn count_matching(&self, filter: &Filter) -> u64 {
        self.meta_index.evaluate(filter).len()
    }

    /// The `top_k` best records for `vector`, restricted to `filter` when given.
    pub fn query(
        &self,
        vector: &[f32],
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit<'_>>, String> {
        let started = Instant::now();
        let allowed: Option<Vec<u64>> =
            filter.map(|f| self.meta_index.evaluate(f).iter().collect());
        if allowed.is_some() {
            timing::record("filter", started.elapsed());
        }
        let searching = Instant::now();
        let hits = {
            let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
            match &allowed {
                Some(ids)
                    if engine.kind() == EngineKind::Hnsw && ids.len() <= EXACT_SCAN_MAX_RECORDS =>
                {
                    engine.scan(vector, top_k, ids).map_err(|e| e.to_string())?
                }
                _ => engine
                    .search(vector, top_k, allowed.as_deref())
                    .map_err(|e| e.to_string())?,
            }
        };
        timing::record("search", searching.elapsed());
        let looking_up = Instant::now();
        let hits = hits
            .into_iter()
            .filter_map(|(internal, score)| {
                let stored = self.records.get(&internal)?;
                Some(Hit {
                    id: &stored.id,
                    score,
                    record: &stored.record,
                })
            })
            .collect();
        timing::record("lookup", looking_up.elapsed());
        Ok(hits)
    }
}

/// SHA-256 of one record (id, values, sparse values, metadata), a term of
/// [`records_digest`].
pub fn record_hash(id: &str, record: &Record) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let encoded = bincode::serialize(&(id, record)).expect("a record always serializes");
    Sha256::digest(&encoded).into()
}

/// SHA-256 (hex) over the [`record_hash`]es of a namespace's records in id order.
pub fn records_digest(hashes_in_id_order: impl Iterator<Item = [u8; 32]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for hash in hashes_in_id_order {
        hasher.update(hash);
    }
    hex::encode(hasher.finalize())
}
