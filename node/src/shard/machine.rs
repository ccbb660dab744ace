//! The shard state machine: the records of one index shard and their vector engines.
//!
//! Commands are applied deterministically (ids, values and metadata come in the command;
//! internal ids are assigned by a per-namespace counter), so every replica holds the same
//! record set. Each namespace keeps a FAISS index built from its records; it is derived
//! state, rebuilt from the records when a snapshot is restored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::engine::{better, exact_score, EngineConfig, EngineKind, EngineSnapshot, VectorIndex};
use super::filter::Filter;
use super::metadata_index::MetadataIndex;
use crate::control::state::Metric;

/// Name under which the default namespace (`""`) is stored and listed.
pub const DEFAULT_NAMESPACE: &str = "__default__";

/// Maps the empty namespace to [`DEFAULT_NAMESPACE`].
pub fn canonical_namespace(ns: &str) -> String {
    if ns.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        ns.to_string()
    }
}

fn parse_filter_text(text: &str) -> Result<Filter, ShardRejection> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ShardRejection::Invalid(format!("filter: {e}")))?;
    super::filter::parse(&value).map_err(|e| ShardRejection::Invalid(e.to_string()))
}

/// Sparse values: (indices, values).
pub type Sparse = (Vec<u32>, Vec<f32>);

/// One record as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Dense values.
    pub values: Vec<f32>,
    /// Sparse values (indices, values), stored and returned.
    pub sparse: Option<Sparse>,
    /// Metadata as JSON object text.
    pub metadata: Option<String>,
}

impl Record {
    /// Metadata parsed as an object.
    pub fn metadata_map(&self) -> Option<Map<String, Value>> {
        self.metadata
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
    }
}

/// A command to a shard group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Insert or overwrite records.
    Upsert {
        /// Namespace (canonical).
        namespace: String,
        /// (id, record) pairs, validated by the API.
        records: Vec<(String, Record)>,
    },
    /// Change values and/or merge metadata of one record.
    Update {
        /// Namespace.
        namespace: String,
        /// Record id.
        id: String,
        /// New dense values.
        values: Option<Vec<f32>>,
        /// New sparse values.
        sparse: Option<Sparse>,
        /// Fields to set (JSON object text).
        set_metadata: Option<String>,
    },
    /// Delete records by id (missing ids are ignored).
    Delete {
        /// Namespace.
        namespace: String,
        /// Ids.
        ids: Vec<String>,
    },
    /// Delete every record of a namespace.
    DeleteAll {
        /// Namespace.
        namespace: String,
    },
    /// Merge metadata into every record matching a filter.
    UpdateByFilter {
        /// Namespace.
        namespace: String,
        /// Filter (JSON text, validated by the API).
        filter: String,
        /// Fields to set (JSON object text).
        set_metadata: String,
    },
    /// Delete every record matching a filter.
    DeleteByFilter {
        /// Namespace.
        namespace: String,
        /// Filter (JSON text, validated by the API).
        filter: String,
    },
    /// Create an empty namespace.
    CreateNamespace {
        /// Name.
        name: String,
    },
    /// Delete a namespace and its records.
    DeleteNamespace {
        /// Name.
        name: String,
    },
}

/// What a shard command produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ShardOutput {
    /// Records written.
    Upserted(u32),
    /// Records matched by an update.
    Updated(u32),
    /// Done.
    Done,
    /// A namespace and its record count.
    Namespace(String, u64),
}

/// Why a shard command was refused; nothing changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum ShardRejection {
    /// Invalid input that the API should have caught.
    #[error("{0}")]
    Invalid(String),
    /// A namespace or record does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A namespace exists already.
    #[error("{0}")]
    AlreadyExists(String),
}

/// Outcome of one shard command.
pub type ShardOutcome = Result<ShardOutput, ShardRejection>;

struct Stored {
    internal: u64,
    record: Record,
    /// The metadata parsed once at write time, so filters never parse JSON per query.
    meta: Option<Map<String, Value>>,
}

impl Stored {
    fn new(internal: u64, record: Record) -> Self {
        let meta = record.metadata_map();
        Self {
            internal,
            record,
            meta,
        }
    }
}

/// Filtered queries on an HNSW namespace that allow at most this many records are answered
/// by an exact scan of those records (exact, and faster than a selective graph search).
pub const EXACT_SCAN_MAX_RECORDS: usize = 10_000;

/// One namespace: records by id and their vector index.
pub struct Namespace {
    records: BTreeMap<String, Stored>,
    by_internal: HashMap<u64, String>,
    next_internal: u64,
    /// Distinguishes this namespace object from a later one of the same name.
    epoch: u64,
    metric: Metric,
    engine: Mutex<VectorIndex>,
    /// Bitmaps of internal ids by metadata value, for filters.
    meta_index: MetadataIndex,
}

/// A background rebuild of one namespace's vector index: inputs copied under the read lock,
/// the build done without locks, the result installed by [`ShardMachine::install`].
pub struct RebuildJob {
    namespace: String,
    epoch: u64,
    kind: EngineKind,
    dimension: usize,
    metric: Metric,
    config: EngineConfig,
    next_internal: u64,
    ids: Vec<u64>,
    values: Vec<f32>,
}

/// A rebuilt index waiting to be installed.
pub struct Rebuilt {
    namespace: String,
    epoch: u64,
    next_internal: u64,
    ids: HashSet<u64>,
    index: VectorIndex,
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
    pub fn build(self) -> Result<Rebuilt, String> {
        let mut index = VectorIndex::new(self.dimension, self.metric, self.kind, self.config)
            .map_err(|e| e.to_string())?;
        index
            .add(&self.ids, &self.values)
            .map_err(|e| e.to_string())?;
        Ok(Rebuilt {
            namespace: self.namespace,
            epoch: self.epoch,
            next_internal: self.next_internal,
            ids: self.ids.into_iter().collect(),
            index,
        })
    }
}

/// A hit of a query.
pub struct Hit {
    /// Record id.
    pub id: String,
    /// Pinecone score.
    pub score: f32,
    /// The record.
    pub record: Record,
}

/// The replicated state of one shard.
pub struct ShardMachine {
    dimension: usize,
    metric: Metric,
    config: EngineConfig,
    namespaces: BTreeMap<String, Namespace>,
    next_epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotNamespace {
    name: String,
    next_internal: u64,
    records: Vec<(String, u64, Record)>,
    /// The vector index as it was, so a restore loads it instead of rebuilding it.
    engine: Option<EngineSnapshot>,
}

impl ShardMachine {
    /// An empty shard of an index with `dimension` and `metric`, tuned by `config`.
    pub fn new(dimension: usize, metric: Metric, config: EngineConfig) -> Self {
        Self {
            dimension,
            metric,
            config,
            namespaces: BTreeMap::new(),
            next_epoch: 1,
        }
    }

    /// Dimension of the index.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Metric of the index.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    fn new_namespace(&mut self) -> Namespace {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        Namespace {
            records: BTreeMap::new(),
            by_internal: HashMap::new(),
            next_internal: 1,
            epoch,
            metric: self.metric,
            engine: Mutex::new(self.engine_or_abort()),
            meta_index: MetadataIndex::default(),
        }
    }

    fn engine_or_abort(&self) -> VectorIndex {
        // A flat index of a validated dimension cannot fail to build; if FAISS cannot even
        // allocate it the replica cannot follow the log, so stop rather than diverge.
        match VectorIndex::new(self.dimension, self.metric, EngineKind::Flat, self.config) {
            Ok(index) => index,
            Err(e) => panic!(
                "cannot create vector index (dimension {}): {e}",
                self.dimension
            ),
        }
    }

    fn check_values(&self, id: &str, values: &[f32]) -> Result<(), ShardRejection> {
        if values.len() != self.dimension {
            return Err(ShardRejection::Invalid(format!(
                "vector '{id}' has {} values; the index has dimension {}",
                values.len(),
                self.dimension
            )));
        }
        Ok(())
    }

    fn apply_command(&mut self, command: ShardCommand) -> ShardOutcome {
        match command {
            ShardCommand::Upsert { namespace, records } => {
                for (id, record) in &records {
                    self.check_values(id, &record.values)?;
                }
                if !self.namespaces.contains_key(&namespace) {
                    let ns = self.new_namespace();
                    self.namespaces.insert(namespace.clone(), ns);
                }
                let Some(ns) = self.namespaces.get_mut(&namespace) else {
                    unreachable!("namespace inserted above")
                };
                let count = records.len() as u32;
                ns.upsert(records);
                Ok(ShardOutput::Upserted(count))
            }
            ShardCommand::Update {
                namespace,
                id,
                values,
                sparse,
                set_metadata,
            } => {
                if let Some(v) = &values {
                    self.check_values(&id, v)?;
                }
                let Some(ns) = self.namespaces.get_mut(&namespace) else {
                    return Ok(ShardOutput::Updated(0));
                };
                let Some(stored) = ns.records.get(&id) else {
                    return Ok(ShardOutput::Updated(0));
                };
                let mut record = stored.record.clone();
                if let Some(v) = values {
                    record.values = v;
                }
                if let Some(s) = sparse {
                    record.sparse = Some(s);
                }
                if let Some(set) = set_metadata {
                    let mut merged = record.metadata_map().unwrap_or_default();
                    let set: Map<String, Value> = serde_json::from_str(&set).map_err(|e| {
                        ShardRejection::Invalid(format!("setMetadata is not an object: {e}"))
                    })?;
                    merged.extend(set);
                    record.metadata = Some(Value::Object(merged).to_string());
                }
                ns.upsert(vec![(id, record)]);
                Ok(ShardOutput::Updated(1))
            }
            ShardCommand::Delete { namespace, ids } => {
                if let Some(ns) = self.namespaces.get_mut(&namespace) {
                    ns.delete(&ids);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::DeleteAll { namespace } => {
                if self.namespaces.contains_key(&namespace) {
                    let ns = self.new_namespace();
                    self.namespaces.insert(namespace, ns);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::UpdateByFilter {
                namespace,
                filter,
                set_metadata,
            } => {
                let filter = parse_filter_text(&filter)?;
                let set: Map<String, Value> = serde_json::from_str(&set_metadata).map_err(|e| {
                    ShardRejection::Invalid(format!("setMetadata is not an object: {e}"))
                })?;
                let Some(ns) = self.namespaces.get_mut(&namespace) else {
                    return Ok(ShardOutput::Updated(0));
                };
                let updated: Vec<(String, Record)> = ns
                    .matching(&filter)
                    .into_iter()
                    .map(|(id, record)| {
                        let mut record = record.clone();
                        let mut merged = record.metadata_map().unwrap_or_default();
                        merged.extend(set.clone());
                        record.metadata = Some(Value::Object(merged).to_string());
                        (id.clone(), record)
                    })
                    .collect();
                let count = updated.len() as u32;
                ns.upsert(updated);
                Ok(ShardOutput::Updated(count))
            }
            ShardCommand::DeleteByFilter { namespace, filter } => {
                let filter = parse_filter_text(&filter)?;
                if let Some(ns) = self.namespaces.get_mut(&namespace) {
                    let ids: Vec<String> = ns
                        .matching(&filter)
                        .into_iter()
                        .map(|(id, _)| id.clone())
                        .collect();
                    ns.delete(&ids);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::CreateNamespace { name } => {
                if self.namespaces.contains_key(&name) {
                    return Err(ShardRejection::AlreadyExists(format!(
                        "namespace '{name}' already exists"
                    )));
                }
                let ns = self.new_namespace();
                self.namespaces.insert(name.clone(), ns);
                Ok(ShardOutput::Namespace(name, 0))
            }
            ShardCommand::DeleteNamespace { name } => match self.namespaces.remove(&name) {
                Some(_) => Ok(ShardOutput::Done),
                None => Err(ShardRejection::NotFound(format!(
                    "namespace '{name}' not found"
                ))),
            },
        }
    }

    /// The namespace `name`, if it exists.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Rebuilds the maintenance loop should run now: namespaces that outgrew exact search,
    /// and HNSW indexes with too many tombstones.
    pub fn rebuild_jobs(&self) -> Vec<RebuildJob> {
        let mut jobs = Vec::new();
        for (name, ns) in &self.namespaces {
            let engine = ns.engine.lock().unwrap_or_else(|p| p.into_inner());
            let grow = engine.kind() == EngineKind::Flat
                && ns.records.len() >= self.config.hnsw_min_records;
            if !(grow || engine.needs_rebuild()) {
                continue;
            }
            drop(engine);
            let mut ids = Vec::with_capacity(ns.records.len());
            let mut values = Vec::with_capacity(ns.records.len() * self.dimension);
            for stored in ns.records.values() {
                ids.push(stored.internal);
                values.extend_from_slice(&stored.record.values);
            }
            jobs.push(RebuildJob {
                namespace: name.clone(),
                epoch: ns.epoch,
                kind: EngineKind::Hnsw,
                dimension: self.dimension,
                metric: self.metric,
                config: self.config,
                next_internal: ns.next_internal,
                ids,
                values,
            });
        }
        jobs
    }

    /// Swaps a rebuilt index in, catching it up with writes applied since its job was made.
    /// Returns false when the namespace was deleted or replaced meanwhile.
    pub fn install(&self, rebuilt: Rebuilt) -> Result<bool, String> {
        let Some(ns) = self.namespaces.get(&rebuilt.namespace) else {
            return Ok(false);
        };
        if ns.epoch != rebuilt.epoch {
            return Ok(false);
        }
        let mut index = rebuilt.index;
        let mut new_ids = Vec::new();
        let mut new_values = Vec::new();
        for stored in ns.records.values() {
            if stored.internal >= rebuilt.next_internal {
                new_ids.push(stored.internal);
                new_values.extend_from_slice(&stored.record.values);
            }
        }
        let gone: Vec<u64> = rebuilt
            .ids
            .iter()
            .copied()
            .filter(|id| !ns.by_internal.contains_key(id))
            .collect();
        index
            .add(&new_ids, &new_values)
            .map_err(|e| e.to_string())?;
        index.remove(&gone).map_err(|e| e.to_string())?;
        *ns.engine.lock().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(true)
    }

    /// Which structure serves each namespace, with its tombstone count.
    pub fn engine_kinds(&self) -> Vec<(String, EngineKind, usize)> {
        self.namespaces
            .iter()
            .map(|(name, ns)| {
                let engine = ns.engine.lock().unwrap_or_else(|p| p.into_inner());
                (name.clone(), engine.kind(), engine.tombstones())
            })
            .collect()
    }

    /// Every namespace with its record count, by name.
    pub fn namespace_counts(&self) -> Vec<(String, u64)> {
        self.namespaces
            .iter()
            .map(|(n, ns)| (n.clone(), ns.records.len() as u64))
            .collect()
    }
}

impl Namespace {
    fn upsert(&mut self, records: Vec<(String, Record)>) {
        let mut removed = Vec::new();
        let mut ids = Vec::with_capacity(records.len());
        let mut values = Vec::new();
        for (id, record) in records {
            let internal = self.next_internal;
            self.next_internal += 1;
            let stored = Stored::new(internal, record.clone());
            self.meta_index.insert(internal, stored.meta.as_ref());
            if let Some(old) = self.records.insert(id.clone(), stored) {
                self.by_internal.remove(&old.internal);
                self.meta_index.remove(old.internal, old.meta.as_ref());
                removed.push(old.internal);
            }
            self.by_internal.insert(internal, id);
            ids.push(internal);
            values.extend_from_slice(&record.values);
        }
        let engine = self.engine.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = engine
            .remove(&removed)
            .and_then(|_| engine.add(&ids, &values))
        {
            panic!("vector index update failed: {e}");
        }
    }

    fn delete(&mut self, ids: &[String]) {
        let mut removed = Vec::new();
        for id in ids {
            if let Some(old) = self.records.remove(id) {
                self.by_internal.remove(&old.internal);
                self.meta_index.remove(old.internal, old.meta.as_ref());
                removed.push(old.internal);
            }
        }
        let engine = self.engine.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = engine.remove(&removed) {
            panic!("vector index delete failed: {e}");
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the namespace holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record `id`.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.get(id).map(|s| &s.record)
    }

    /// Ids in order, starting after `after`, with `prefix`, at most `limit`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        self.records
            .range((start, std::ops::Bound::Unbounded))
            .map(|(id, _)| id)
            .take_while(|id| id.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Records satisfying `filter`, by id.
    pub fn matching(&self, filter: &Filter) -> Vec<(&String, &Record)> {
        let mut found: Vec<(&String, &Record)> = self
            .meta_index
            .evaluate(filter)
            .iter()
            .filter_map(|internal| {
                let id = self.by_internal.get(&internal)?;
                Some((id, &self.records.get(id)?.record))
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
    ) -> Result<Vec<Hit>, String> {
        let allowed: Option<Vec<u64>> =
            filter.map(|f| self.meta_index.evaluate(f).iter().collect());
        let hits = {
            let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            match &allowed {
                Some(ids)
                    if engine.kind() == EngineKind::Hnsw && ids.len() <= EXACT_SCAN_MAX_RECORDS =>
                {
                    drop(engine);
                    self.exact_scan(vector, top_k, ids)
                }
                _ => engine
                    .search(vector, top_k, allowed.as_deref())
                    .map_err(|e| e.to_string())?,
            }
        };
        Ok(hits
            .into_iter()
            .filter_map(|(internal, score)| {
                let id = self.by_internal.get(&internal)?;
                let record = self.records.get(id)?.record.clone();
                Some(Hit {
                    id: id.clone(),
                    score,
                    record,
                })
            })
            .collect())
    }

    /// Exact top-k over the given internal ids.
    fn exact_scan(&self, vector: &[f32], top_k: usize, ids: &[u64]) -> Vec<(u64, f32)> {
        let mut scored: Vec<(u64, f32)> = ids
            .iter()
            .filter_map(|internal| {
                let id = self.by_internal.get(internal)?;
                let record = &self.records.get(id)?.record;
                Some((*internal, exact_score(self.metric, vector, &record.values)))
            })
            .collect();
        scored.sort_by(|a, b| {
            if better(self.metric, a.1, b.1) {
                std::cmp::Ordering::Less
            } else if better(self.metric, b.1, a.1) {
                std::cmp::Ordering::Greater
            } else {
                a.0.cmp(&b.0)
            }
        });
        scored.truncate(top_k);
        scored
    }
}

impl conifer_raft::StateMachine for ShardMachine {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        let outcome: ShardOutcome = match bincode::deserialize::<ShardCommand>(command) {
            Ok(cmd) => self.apply_command(cmd),
            Err(e) => Err(ShardRejection::Invalid(format!(
                "undecodable shard command: {e}"
            ))),
        };
        bincode::serialize(&outcome).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let namespaces: Vec<SnapshotNamespace> = self
            .namespaces
            .iter()
            .map(|(name, ns)| SnapshotNamespace {
                name: name.clone(),
                next_internal: ns.next_internal,
                records: ns
                    .records
                    .iter()
                    .map(|(id, s)| (id.clone(), s.internal, s.record.clone()))
                    .collect(),
                engine: match ns
                    .engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .to_snapshot()
                {
                    Ok(engine) => Some(engine),
                    Err(e) => {
                        // The restore rebuilds the index from the records instead.
                        tracing::warn!(
                            "vector index of namespace '{name}' not saved in snapshot: {e}"
                        );
                        None
                    }
                },
            })
            .collect();
        bincode::serialize(&namespaces).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let namespaces: Vec<SnapshotNamespace> =
            bincode::deserialize(snapshot).map_err(|e| format!("shard snapshot: {e}"))?;
        self.namespaces.clear();
        for snap in namespaces {
            let mut ns = self.new_namespace();
            ns.next_internal = snap.next_internal;
            let mut ids = Vec::with_capacity(snap.records.len());
            let mut values = Vec::with_capacity(snap.records.len() * self.dimension);
            for (id, internal, record) in snap.records {
                ids.push(internal);
                values.extend_from_slice(&record.values);
                ns.by_internal.insert(internal, id.clone());
                let stored = Stored::new(internal, record);
                ns.meta_index.insert(internal, stored.meta.as_ref());
                ns.records.insert(id, stored);
            }
            let saved = snap.engine.and_then(|engine| {
                match VectorIndex::from_snapshot(engine, self.dimension, self.metric, self.config) {
                    Ok(index) => Some(index),
                    Err(e) => {
                        tracing::warn!(
                            "saved vector index of '{}' unusable, rebuilding: {e}",
                            snap.name
                        );
                        None
                    }
                }
            });
            let engine = ns.engine.get_mut().unwrap_or_else(|p| p.into_inner());
            match saved {
                // Loaded as saved: no rebuild on restart.
                Some(index) => *engine = index,
                // Rebuilt as an exact index; the maintenance loop moves large ones to HNSW.
                None => engine.add(&ids, &values).map_err(|e| e.to_string())?,
            }
            self.namespaces.insert(snap.name, ns);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use conifer_raft::StateMachine;

    use super::*;

    fn rec(values: Vec<f32>, meta: Option<Value>) -> Record {
        Record {
            values,
            sparse: None,
            metadata: meta.map(|m| m.to_string()),
        }
    }

    fn apply(sm: &mut ShardMachine, cmd: ShardCommand) -> ShardOutcome {
        bincode::deserialize(&sm.apply(0, &bincode::serialize(&cmd).unwrap())).unwrap()
    }

    #[test]
    fn a_bad_record_rejects_the_whole_batch() {
        let mut sm = ShardMachine::new(2, Metric::Cosine, EngineConfig::default());
        let out = apply(
            &mut sm,
            ShardCommand::Upsert {
                namespace: "n".into(),
                records: vec![
                    ("a".into(), rec(vec![1.0, 0.0], None)),
                    ("b".into(), rec(vec![1.0], None)),
                ],
            },
        );
        assert!(matches!(out, Err(ShardRejection::Invalid(m)) if m.contains("'b' has 1 values")));
        assert!(sm.namespace("n").is_none());
    }

    #[test]
    fn upsert_overwrite_update_delete_and_snapshot_round_trip() {
        let mut sm = ShardMachine::new(2, Metric::Euclidean, EngineConfig::default());
        let records = vec![
            (
                "a".into(),
                rec(vec![0.0, 0.0], Some(serde_json::json!({"k": 1}))),
            ),
            ("b".into(), rec(vec![1.0, 0.0], None)),
            ("c".into(), rec(vec![5.0, 5.0], None)),
        ];
        assert_eq!(
            apply(
                &mut sm,
                ShardCommand::Upsert {
                    namespace: "n".into(),
                    records
                }
            ),
            Ok(ShardOutput::Upserted(3))
        );
        let overwrite = vec![("c".into(), rec(vec![0.1, 0.0], None))];
        apply(
            &mut sm,
            ShardCommand::Upsert {
                namespace: "n".into(),
                records: overwrite,
            },
        )
        .unwrap();
        let set = Some(serde_json::json!({"j": "x"}).to_string());
        let upd = ShardCommand::Update {
            namespace: "n".into(),
            id: "a".into(),
            values: None,
            sparse: None,
            set_metadata: set,
        };
        assert_eq!(apply(&mut sm, upd), Ok(ShardOutput::Updated(1)));
        apply(
            &mut sm,
            ShardCommand::Delete {
                namespace: "n".into(),
                ids: vec!["b".into(), "zz".into()],
            },
        )
        .unwrap();

        let ns = sm.namespace("n").unwrap();
        assert_eq!(ns.len(), 2);
        let hits: Vec<String> = ns
            .query(&[0.2, 0.0], 3, None)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(hits, vec!["c", "a"]);
        assert_eq!(ns.get("a").unwrap().metadata_map().unwrap()["j"], "x");
        assert_eq!(ns.get("a").unwrap().metadata_map().unwrap()["k"], 1);

        let snap = sm.snapshot();
        let mut copy = ShardMachine::new(2, Metric::Euclidean, EngineConfig::default());
        copy.restore(&snap).unwrap();
        let hits2: Vec<String> = copy
            .namespace("n")
            .unwrap()
            .query(&[0.2, 0.0], 3, None)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(hits2, hits);
        assert_eq!(copy.snapshot(), snap);
    }

    #[test]
    fn background_rebuild_moves_to_hnsw_and_catches_up_with_later_writes() {
        let config = EngineConfig {
            hnsw_min_records: 50,
            ..EngineConfig::default()
        };
        let mut sm = ShardMachine::new(4, Metric::Euclidean, config);
        let point = |i: usize| vec![i as f32, 0.0, 0.0, 1.0];
        let records = |range: std::ops::Range<usize>| {
            range
                .map(|i| {
                    (
                        format!("r{i}"),
                        rec(point(i), Some(serde_json::json!({"even": i % 2 == 0}))),
                    )
                })
                .collect::<Vec<_>>()
        };
        apply(
            &mut sm,
            ShardCommand::Upsert {
                namespace: "n".into(),
                records: records(0..60),
            },
        )
        .unwrap();
        let jobs = sm.rebuild_jobs();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].kind(), jobs[0].len()), (EngineKind::Hnsw, 60));
        let built = jobs.into_iter().next().unwrap().build().unwrap();

        // Writes that land while the index is being built.
        apply(
            &mut sm,
            ShardCommand::Upsert {
                namespace: "n".into(),
                records: records(60..70),
            },
        )
        .unwrap();
        apply(
            &mut sm,
            ShardCommand::Delete {
                namespace: "n".into(),
                ids: vec!["r5".into(), "r65".into()],
            },
        )
        .unwrap();
        assert!(sm.install(built).unwrap());
        assert_eq!(
            sm.engine_kinds(),
            vec![("n".to_string(), EngineKind::Hnsw, 1)]
        );

        let ns = sm.namespace("n").unwrap();
        let near = |q: usize, k: usize| -> Vec<String> {
            ns.query(&point(q), k, None)
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect()
        };
        let nearest = near(5, 1);
        assert!(nearest == ["r4"] || nearest == ["r6"], "{nearest:?}");
        assert!(
            !near(5, 3).contains(&"r5".to_string()),
            "deleted record never returned"
        );
        assert_eq!(
            near(68, 1),
            vec!["r68"],
            "record added during the build is found"
        );
        assert!(!near(65, 3).contains(&"r65".to_string()));
        let even = super::super::filter::parse(&serde_json::json!({"even": true})).unwrap();
        let filtered: Vec<String> = ns
            .query(&point(7), 2, Some(&even))
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(
            filtered,
            vec!["r6", "r8"],
            "selective filter answered by an exact scan"
        );
        assert!(sm.rebuild_jobs().is_empty(), "nothing left to rebuild");

        // A restore loads the saved HNSW index (with its tombstone) instead of rebuilding.
        let mut copy = ShardMachine::new(4, Metric::Euclidean, config);
        copy.restore(&sm.snapshot()).unwrap();
        assert_eq!(copy.engine_kinds(), sm.engine_kinds());
        let ns_copy = copy.namespace("n").unwrap();
        let again: Vec<String> = ns_copy
            .query(&point(68), 3, None)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(again, near(68, 3));
    }

    #[test]
    fn list_pages_by_prefix() {
        let mut sm = ShardMachine::new(1, Metric::DotProduct, EngineConfig::default());
        let records = ["a1", "b1", "b2", "b3", "c1"]
            .iter()
            .map(|id| (id.to_string(), rec(vec![1.0], None)))
            .collect();
        apply(
            &mut sm,
            ShardCommand::Upsert {
                namespace: "n".into(),
                records,
            },
        )
        .unwrap();
        let ns = sm.namespace("n").unwrap();
        assert_eq!(ns.list("b", None, 2), vec!["b1", "b2"]);
        assert_eq!(ns.list("b", Some("b2"), 2), vec!["b3"]);
        assert_eq!(ns.list("", None, 10).len(), 5);
    }
}
