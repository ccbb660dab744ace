//! The shard state machine: the records of one index shard and their vector engines.
//!
//! Commands are applied deterministically (ids, values and metadata come in the command;
//! internal ids are assigned by a per-namespace counter), so every replica holds the same
//! record set. Each namespace keeps a FAISS index built from its records; it is derived
//! state.
//!
//! The records live in RocksDB (the `state` column family, sealed like every value), written
//! in the same batch as the applied log id, and are also held in memory for serving. Keys
//! hold only numbers, never ids or metadata:
//!
//! | key | value |
//! |---|---|
//! | `01 ‖ ns` | namespace header: name, next internal id |
//! | `02` | next namespace number |
//! | `03 ‖ ns ‖ internal id` | record id and record |
//! | `04 ‖ ns` | saved HNSW index: what it covers, chunk count |
//! | `05 ‖ ns ‖ chunk` | saved HNSW index bytes (FAISS serialization, in chunks) |
//!
//! Exact (flat) indexes are rebuilt from the records at open, which costs little. HNSW
//! indexes are saved when a Raft snapshot is built, once they are new or have changed by
//! [`ENGINE_SAVE_MIN_CHANGES`] records; at open the saved graph is loaded and caught up with
//! the records written after it, so a restart never rebuilds a graph.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use serde_json::{Map, Value};

use conifer_raft::group_state::{StateView, StateWrites};
use conifer_raft::MachineError;

use super::engine::{EngineConfig, EngineKind, VectorIndex};
use super::metadata_index::MetadataIndex;
use super::store::{
    encode, keys, read_state, stage, stage_saved_engine, ExportNamespace, NamespaceState,
    ShardExport, EXPORT_FORMAT,
};
use crate::shard::engine::Metric;

pub use super::command::*;
pub use super::namespace::{
    Hit, Namespace, RebuildJob, Rebuilt, ENGINE_SAVE_MIN_CHANGES, EXACT_SCAN_MAX_RECORDS,
};
pub use super::store::{ENGINE_CHUNK_BYTES, STATE_FORMAT};

/// The replicated state of one shard.
pub struct ShardMachine {
    dimension: usize,
    metric: Metric,
    config: EngineConfig,
    namespaces: BTreeMap<String, Namespace>,
    next_seq: u64,
    limits: ShardLimits,
}

impl ShardMachine {
    /// An empty shard of an index with `dimension` and `metric`, tuned by `config`.
    pub fn new(dimension: usize, metric: Metric, config: EngineConfig) -> Self {
        Self {
            dimension,
            metric,
            config,
            namespaces: BTreeMap::new(),
            next_seq: 1,
            limits: ShardLimits::default(),
        }
    }

    /// The same shard with other totals (tests reach the edges with small ones).
    #[cfg(test)]
    pub fn with_limits(mut self, limits: ShardLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Refuses a namespace beyond [`ShardLimits::namespaces`].
    fn check_new_namespace(&self, name: &str) -> Result<(), ShardRejection> {
        let count = self.namespaces.len();
        if count >= self.limits.namespaces {
            return Err(ShardRejection::Invalid(format!(
                "index has {count} namespaces; the limit is {}, so namespace '{name}' cannot \
                 be created",
                self.limits.namespaces
            )));
        }
        Ok(())
    }

    /// Refuses an upsert of `records` into `namespace` that would pass the record totals.
    fn check_record_totals(
        &self,
        namespace: &str,
        records: &[(String, Record)],
    ) -> Result<(), ShardRejection> {
        let ns = self.namespaces.get(namespace);
        let new = self.records_added(namespace, records);
        let in_namespace = ns.map_or(0, Namespace::len) + new;
        if in_namespace > self.limits.records_per_namespace {
            return Err(ShardRejection::Invalid(format!(
                "namespace '{namespace}' would hold {in_namespace} records; the limit is {} \
                 per namespace",
                self.limits.records_per_namespace
            )));
        }
        let in_index = self.record_count() + new;
        if in_index > self.limits.records {
            return Err(ShardRejection::Invalid(format!(
                "the index would hold {in_index} records; the limit is {} per index",
                self.limits.records
            )));
        }
        Ok(())
    }

    /// How many records an upsert of `records` into `namespace` would add: the distinct ids
    /// not already there.
    fn records_added(&self, namespace: &str, records: &[(String, Record)]) -> usize {
        let ns = self.namespaces.get(namespace);
        records
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| ns.is_none_or(|ns| !ns.contains(id)))
            .collect::<std::collections::HashSet<&str>>()
            .len()
    }

    /// Records over all namespaces.
    pub fn record_count(&self) -> usize {
        self.namespaces.values().map(Namespace::len).sum()
    }

    /// Dimension of the index.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Metric of the index.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// A new empty namespace `name`, staged in `writes` (it replaces none: the caller
    /// removes any namespace of that name first).
    fn new_namespace(&mut self, name: &str, writes: &mut StateWrites<'_>) -> Namespace {
        let seq = self.next_seq;
        self.next_seq += 1;
        stage(writes.put(&keys::NEXT_NAMESPACE, &encode(&self.next_seq)));
        let ns = self.empty_namespace(name, seq, 1);
        ns.stage_header(writes);
        ns
    }

    fn empty_namespace(&self, name: &str, seq: u64, next_internal: u64) -> Namespace {
        Namespace {
            name: name.to_string(),
            records: BTreeMap::new(),
            ids: BTreeMap::new(),
            next_internal,
            seq,
            engine: RwLock::new(self.engine_or_abort()),
            meta_index: MetadataIndex::default(),
            unsaved_changes: AtomicU64::new(0),
            engine_saved: AtomicBool::new(false),
        }
    }

    /// Builds a namespace from its durable state: loads the saved HNSW index and catches it
    /// up with the records written after it was saved, or builds an exact index.
    fn build_namespace(&self, seq: u64, state: NamespaceState) -> Result<Namespace, MachineError> {
        let mut ns = self.empty_namespace(&state.header.name, seq, state.header.next_internal);
        for (internal, id, record) in state.records {
            // Ids are unique on disk: nothing is replaced.
            ns.hold_record(internal, id, record);
        }
        let saved = state.engine.and_then(|saved| {
            match VectorIndex::from_snapshot(saved.engine, self.dimension, self.metric, self.config)
            {
                Ok(index) => Some((saved.next_internal, saved.live, index)),
                Err(e) => {
                    tracing::warn!(
                        "saved vector index of '{}' unusable, rebuilding: {e}",
                        ns.name
                    );
                    None
                }
            }
        });
        let (covered_below, live, mut index) = match saved {
            Some(saved) => saved,
            None => (1, Vec::new(), self.engine_or_abort()),
        };
        let changed = ns.catch_up(&mut index, covered_below, live)?;
        // At open or while a snapshot is installed (the shard serves no read then).
        index.advise_huge_pages();
        ns.engine_saved
            .store(index.kind() == EngineKind::Hnsw, Ordering::Relaxed);
        ns.unsaved_changes.store(changed, Ordering::Relaxed);
        *ns.engine.get_mut().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(ns)
    }

    /// Removes namespace `name` from memory and stages the deletion of its durable state.
    fn drop_namespace(&mut self, name: &str, writes: &mut StateWrites<'_>) -> bool {
        let Some(ns) = self.namespaces.remove(name) else {
            return false;
        };
        for tag in [keys::HEADER, keys::RECORD, keys::ENGINE, keys::ENGINE_CHUNK] {
            stage(writes.delete_prefix(&keys::of(tag, ns.seq)));
        }
        true
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

    /// Upserts `records` into `namespace` after every check on the state it would produce;
    /// `project`: (records of the project's other indexes, the project's total).
    fn apply_upsert(
        &mut self,
        namespace: String,
        records: Vec<(String, Record)>,
        project: Option<(u64, u64)>,
        writes: &mut StateWrites<'_>,
    ) -> ShardOutcome {
        for (id, record) in &records {
            self.check_values(id, &record.values)?;
        }
        if !self.namespaces.contains_key(&namespace) {
            self.check_new_namespace(&namespace)?;
        }
        self.check_record_totals(&namespace, &records)?;
        if let Some((elsewhere, limit)) = project {
            let added = self.records_added(&namespace, &records) as u64;
            let after = self.record_count() as u64 + added + elsewhere;
            // Rewriting records never is refused, also in a project already past its total.
            if added > 0 && after > limit {
                return Err(ShardRejection::Invalid(format!(
                    "the project would hold {after} records over its indexes; the limit is \
                     {limit} per project"
                )));
            }
        }
        if !self.namespaces.contains_key(&namespace) {
            let ns = self.new_namespace(&namespace, writes);
            self.namespaces.insert(namespace.clone(), ns);
        }
        let Some(ns) = self.namespaces.get_mut(&namespace) else {
            unreachable!("namespace inserted above")
        };
        let count = records.len() as u32;
        ns.upsert(records, writes);
        Ok(ShardOutput::Upserted(count))
    }

    fn apply_command(
        &mut self,
        command: ShardCommand,
        writes: &mut StateWrites<'_>,
    ) -> ShardOutcome {
        match command {
            ShardCommand::Upsert { namespace, records } => {
                self.apply_upsert(namespace, records, None, writes)
            }
            ShardCommand::UpsertInProject {
                namespace,
                records,
                elsewhere,
                project_limit,
            } => self.apply_upsert(namespace, records, Some((elsewhere, project_limit)), writes),
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
                let Some(stored) = ns.get(&id) else {
                    return Ok(ShardOutput::Updated(0));
                };
                let mut record = stored.clone();
                if let Some(v) = values {
                    record.values = v;
                }
                if let Some(s) = sparse {
                    record.sparse = Some(s);
                }
                if let Some(set) = set_metadata {
                    let set: Map<String, Value> = serde_json::from_str(&set).map_err(|e| {
                        ShardRejection::Invalid(format!("setMetadata is not an object: {e}"))
                    })?;
                    merge_metadata(&id, &mut record, &set)?;
                }
                ns.upsert(vec![(id, record)], writes);
                Ok(ShardOutput::Updated(1))
            }
            ShardCommand::Delete { namespace, ids } => {
                if let Some(ns) = self.namespaces.get_mut(&namespace) {
                    ns.delete(&ids, writes);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::DeleteAll { namespace } => {
                if self.drop_namespace(&namespace, writes) {
                    let ns = self.new_namespace(&namespace, writes);
                    self.namespaces.insert(namespace, ns);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::UpdateByFilter {
                namespace,
                filter,
                set_metadata,
            } => {
                let set: Map<String, Value> = serde_json::from_str(&set_metadata).map_err(|e| {
                    ShardRejection::Invalid(format!("setMetadata is not an object: {e}"))
                })?;
                let Some(ns) = self.namespaces.get_mut(&namespace) else {
                    return Ok(ShardOutput::Updated(0));
                };
                // Every merged record is checked before any is written: one over the limit
                // refuses the whole update.
                let updated: Vec<(String, Record)> = ns
                    .matching(&filter)
                    .into_iter()
                    .map(|(id, record)| {
                        let mut record = record.clone();
                        merge_metadata(id, &mut record, &set)?;
                        Ok((id.to_string(), record))
                    })
                    .collect::<Result<_, ShardRejection>>()?;
                let count = updated.len() as u32;
                ns.upsert(updated, writes);
                Ok(ShardOutput::Updated(count))
            }
            ShardCommand::DeleteByFilter { namespace, filter } => {
                if let Some(ns) = self.namespaces.get_mut(&namespace) {
                    let ids: Vec<String> = ns
                        .matching(&filter)
                        .into_iter()
                        .map(|(id, _)| id.to_string())
                        .collect();
                    ns.delete(&ids, writes);
                }
                Ok(ShardOutput::Done)
            }
            ShardCommand::CreateNamespace { name } => {
                if self.namespaces.contains_key(&name) {
                    return Err(ShardRejection::AlreadyExists(format!(
                        "namespace '{name}' already exists"
                    )));
                }
                self.check_new_namespace(&name)?;
                let ns = self.new_namespace(&name, writes);
                self.namespaces.insert(name.clone(), ns);
                Ok(ShardOutput::Namespace(name, 0))
            }
            ShardCommand::DeleteNamespace { name } => {
                if self.drop_namespace(&name, writes) {
                    Ok(ShardOutput::Done)
                } else {
                    Err(ShardRejection::NotFound(format!(
                        "namespace '{name}' not found"
                    )))
                }
            }
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
            let engine = ns.engine.read().unwrap_or_else(|p| p.into_inner());
            let grow = engine.kind() == EngineKind::Flat
                && ns.records.len() >= self.config.hnsw_min_records;
            if !(grow || engine.needs_rebuild()) {
                continue;
            }
            drop(engine);
            let mut ids = Vec::with_capacity(ns.records.len());
            let mut values = Vec::with_capacity(ns.records.len() * self.dimension);
            for (internal, stored) in &ns.records {
                ids.push(*internal);
                values.extend_from_slice(&stored.record.values);
            }
            jobs.push(RebuildJob {
                namespace: name.clone(),
                seq: ns.seq,
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
    pub fn install(&self, rebuilt: Rebuilt) -> Result<bool, MachineError> {
        let Some(ns) = self.namespaces.get(&rebuilt.namespace) else {
            return Ok(false);
        };
        if ns.seq != rebuilt.seq {
            return Ok(false);
        }
        let mut index = rebuilt.index;
        ns.catch_up(
            &mut index,
            rebuilt.next_internal,
            rebuilt.ids.iter().copied(),
        )?;
        // Before the swap: queries go on with the old index meanwhile.
        index.advise_huge_pages();
        *ns.engine.write().unwrap_or_else(|p| p.into_inner()) = index;
        ns.engine_saved.store(false, Ordering::Relaxed);
        ns.unsaved_changes.store(0, Ordering::Relaxed);
        Ok(true)
    }

    /// Whether a namespace's HNSW index is new or changed enough to be saved now.
    pub fn has_unsaved_index(&self) -> bool {
        self.namespaces.values().any(Namespace::index_needs_saving)
    }

    /// Which structure serves each namespace, with its tombstone count.
    pub fn engine_kinds(&self) -> Vec<(String, EngineKind, usize)> {
        self.namespaces
            .iter()
            .map(|(name, ns)| {
                let engine = ns.engine.read().unwrap_or_else(|p| p.into_inner());
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

impl conifer_raft::StateMachine for ShardMachine {
    const DURABLE: bool = true;

    fn apply(&mut self, _log_index: u64, command: &[u8], writes: &mut StateWrites<'_>) -> Vec<u8> {
        let outcome: ShardOutcome = match COMMAND_FORMAT.decode::<ShardCommand>(command) {
            Ok(cmd) => {
                let touched = cmd.namespace().to_string();
                let outcome = self.apply_command(cmd, writes);
                if let Some(ns) = self.namespaces.get(&touched) {
                    ns.assert_consistent();
                }
                outcome
            }
            Err(e) => Err(ShardRejection::Invalid(e.to_string())),
        };
        OUTCOME_FORMAT.encode(&outcome)
    }

    /// Unused: a shard is exported from RocksDB ([`ShardMachine::export`]).
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(
        &mut self,
        snapshot: &[u8],
        writes: &mut StateWrites<'_>,
    ) -> Result<(), MachineError> {
        let export: ShardExport = EXPORT_FORMAT.decode(snapshot)?;
        // An export holds ordered collections only, so it encodes to the bytes it came
        // from; a difference means a decoder that loses or invents something.
        debug_assert!(
            EXPORT_FORMAT.encode(&export) == snapshot,
            "a shard export does not re-encode to the same bytes"
        );
        self.namespaces.clear();
        self.next_seq = export.next_seq;
        stage(writes.put(&keys::NEXT_NAMESPACE, &encode(&self.next_seq)));
        for ns in export.namespaces {
            stage(writes.put(&keys::of(keys::HEADER, ns.seq), &encode(&ns.header)));
            for (internal, id, record) in &ns.records {
                stage(writes.put(&keys::record(ns.seq, *internal), &encode(&(id, record))));
            }
            if let Some(saved) = &ns.engine {
                stage_saved_engine(writes, ns.seq, saved);
            }
            let state = NamespaceState {
                header: ns.header,
                records: ns.records,
                engine: ns.engine,
            };
            let built = self.build_namespace(ns.seq, state)?;
            self.namespaces.insert(built.name.clone(), built);
        }
        Ok(())
    }

    fn load(&mut self, view: &StateView<'_>) -> Result<(), MachineError> {
        let (next_seq, namespaces) = read_state(view)?;
        self.next_seq = next_seq;
        self.namespaces.clear();
        for (seq, state) in namespaces {
            let built = self.build_namespace(seq, state)?;
            self.namespaces.insert(built.name.clone(), built);
        }
        Ok(())
    }

    fn export(view: &StateView<'_>) -> Result<Vec<u8>, MachineError> {
        let (next_seq, namespaces) = read_state(view)?;
        let export = ShardExport {
            next_seq,
            namespaces: namespaces
                .into_iter()
                .map(|(seq, state)| ExportNamespace {
                    seq,
                    header: state.header,
                    records: state.records,
                    engine: state.engine,
                })
                .collect(),
        };
        Ok(EXPORT_FORMAT.encode(&export))
    }

    fn checkpoint(&self, writes: &mut StateWrites<'_>) -> Result<(), MachineError> {
        for ns in self.namespaces.values() {
            ns.checkpoint(writes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use conifer_raft::{NodeStorage, StateMachine};

    use super::*;
    use crate::crypto::DataKey;
    use crate::shard::filter::{self, Filter};

    const GROUP: u64 = 1;

    /// A shard machine over its own RocksDB, applying commands as the Raft adapter does.
    struct TestShard {
        sm: ShardMachine,
        storage: NodeStorage,
        _dir: tempfile::TempDir,
    }

    impl TestShard {
        fn new(dimension: usize, metric: Metric, config: EngineConfig) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let key = Arc::new(DataKey::from_bytes([7; 32]));
            let storage = NodeStorage::open(&dir.path().join("db"), key).unwrap();
            Self {
                sm: ShardMachine::new(dimension, metric, config),
                storage,
                _dir: dir,
            }
        }

        fn apply(&mut self, cmd: ShardCommand) -> ShardOutcome {
            let mut writes = StateWrites::new(&self.storage, GROUP);
            let out = self.sm.apply(0, &COMMAND_FORMAT.encode(&cmd), &mut writes);
            self.storage.write(writes.into_batch()).unwrap();
            OUTCOME_FORMAT.decode(&out).unwrap()
        }

        fn checkpoint(&self) {
            let mut writes = StateWrites::new(&self.storage, GROUP);
            self.sm.checkpoint(&mut writes).unwrap();
            self.storage.write(writes.into_batch()).unwrap();
        }

        /// A fresh machine loaded from this one's RocksDB, as at a restart.
        fn reopened(&self) -> ShardMachine {
            let mut sm = ShardMachine::new(self.sm.dimension, self.sm.metric, self.sm.config);
            sm.load(&StateView::latest(&self.storage, GROUP)).unwrap();
            sm
        }

        /// A new replica restored from this one's exported snapshot.
        fn exported_to_new_replica(&self) -> TestShard {
            let data = ShardMachine::export(&StateView::frozen(&self.storage, GROUP)).unwrap();
            let mut copy = TestShard::new(self.sm.dimension, self.sm.metric, self.sm.config);
            let mut writes = StateWrites::new(&copy.storage, GROUP);
            copy.sm.restore(&data, &mut writes).unwrap();
            copy.storage.write(writes.into_batch()).unwrap();
            copy
        }

        /// Every record of the shard as stored, by namespace and id.
        fn stored(&self) -> Vec<(String, String, Record)> {
            let (_, namespaces) = read_state(&StateView::latest(&self.storage, GROUP)).unwrap();
            let mut all: Vec<_> = namespaces
                .into_values()
                .flat_map(|ns| {
                    let name = ns.header.name;
                    ns.records
                        .into_iter()
                        .map(move |(_, id, r)| (name.clone(), id, r))
                })
                .collect();
            all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            all
        }
    }

    fn rec(values: Vec<f32>, meta: Option<Value>) -> Record {
        Record {
            values,
            sparse: None,
            metadata: meta.map(|m| m.to_string()),
        }
    }

    #[test]
    fn a_bad_record_rejects_the_whole_batch() {
        let mut shard = TestShard::new(2, Metric::Cosine, EngineConfig::default());
        let out = shard.apply(ShardCommand::Upsert {
            namespace: "n".into(),
            records: vec![
                ("a".into(), rec(vec![1.0, 0.0], None)),
                ("b".into(), rec(vec![1.0], None)),
            ],
        });
        assert!(matches!(out, Err(ShardRejection::Invalid(m)) if m.contains("'b' has 1 values")));
        assert!(shard.sm.namespace("n").is_none());
        assert!(shard.stored().is_empty(), "nothing written");
    }

    #[test]
    fn the_project_total_is_checked_on_apply_and_rewrites_always_pass() {
        let mut shard = TestShard::new(1, Metric::Euclidean, EngineConfig::default());
        let upsert = |ids: &[&str], elsewhere: u64| ShardCommand::UpsertInProject {
            namespace: "n".into(),
            records: ids
                .iter()
                .map(|id| (id.to_string(), rec(vec![1.0], None)))
                .collect(),
            elsewhere,
            project_limit: 10,
        };
        assert!(shard.apply(upsert(&["1", "2", "3"], 5)).is_ok());
        // 3 here + 2 new + 5 elsewhere = 10: at the total, allowed.
        assert_eq!(
            shard.apply(upsert(&["4", "5", "5"], 5)),
            Ok(ShardOutput::Upserted(3))
        );
        let out = shard.apply(upsert(&["1", "6"], 5));
        assert!(
            matches!(&out, Err(ShardRejection::Invalid(m)) if m.contains("the project would hold 11 records over its indexes; the limit is 10 per project")),
            "{out:?}"
        );
        assert!(shard.sm.namespace("n").unwrap().get("6").is_none());
        // A project already past its total (the other indexes grew) may still rewrite.
        assert!(shard.apply(upsert(&["1", "2"], 50)).is_ok());
        assert!(shard.apply(upsert(&["7"], 50)).is_err());
        assert_eq!(shard.sm.record_count(), 5);
    }

    #[test]
    fn totals_are_checked_on_the_state_a_write_produces() {
        let mut shard = TestShard::new(1, Metric::Euclidean, EngineConfig::default());
        shard.sm = ShardMachine::new(1, Metric::Euclidean, EngineConfig::default()).with_limits(
            ShardLimits {
                namespaces: 2,
                records_per_namespace: 3,
                records: 5,
            },
        );
        let upsert = |ns: &str, ids: &[&str]| ShardCommand::Upsert {
            namespace: ns.into(),
            records: ids
                .iter()
                .map(|id| (id.to_string(), rec(vec![1.0], None)))
                .collect(),
        };
        // A namespace at its limit; overwriting (and repeating an id) adds nothing.
        assert_eq!(
            shard.apply(upsert("a", &["1", "2", "3"])),
            Ok(ShardOutput::Upserted(3))
        );
        assert!(shard.apply(upsert("a", &["1", "3", "3"])).is_ok());
        let out = shard.apply(upsert("a", &["2", "4"]));
        assert!(
            matches!(&out, Err(ShardRejection::Invalid(m)) if m.contains("would hold 4 records; the limit is 3 per namespace")),
            "{out:?}"
        );
        // The index total counts every namespace.
        assert!(shard.apply(upsert("b", &["1", "2"])).is_ok());
        let out = shard.apply(upsert("b", &["3"]));
        assert!(
            matches!(&out, Err(ShardRejection::Invalid(m)) if m.contains("would hold 6 records; the limit is 5 per index")),
            "{out:?}"
        );
        // A first upsert into a new namespace counts as creating it, as does CreateNamespace.
        shard
            .apply(ShardCommand::Delete {
                namespace: "b".into(),
                ids: vec!["2".into()],
            })
            .unwrap();
        let out = shard.apply(upsert("c", &["1"]));
        assert!(
            matches!(&out, Err(ShardRejection::Invalid(m)) if m.contains("index has 2 namespaces; the limit is 2")),
            "{out:?}"
        );
        let out = shard.apply(ShardCommand::CreateNamespace { name: "c".into() });
        assert!(matches!(out, Err(ShardRejection::Invalid(_))), "{out:?}");
        assert!(shard.sm.namespace("c").is_none());
        // Nothing refused was written.
        let stored: Vec<(String, String)> = shard
            .stored()
            .into_iter()
            .map(|(ns, id, _)| (ns, id))
            .collect();
        let expected: Vec<(String, String)> = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1")]
            .iter()
            .map(|(ns, id)| (ns.to_string(), id.to_string()))
            .collect();
        assert_eq!(stored, expected);
    }

    #[test]
    fn upsert_overwrite_update_delete_survive_restart_and_export() {
        let mut shard = TestShard::new(2, Metric::Euclidean, EngineConfig::default());
        let records = vec![
            (
                "a".into(),
                rec(vec![0.0, 0.0], Some(serde_json::json!({"k": 1}))),
            ),
            ("b".into(), rec(vec![1.0, 0.0], None)),
            ("c".into(), rec(vec![5.0, 5.0], None)),
        ];
        assert_eq!(
            shard.apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records
            }),
            Ok(ShardOutput::Upserted(3))
        );
        let overwrite = vec![("c".into(), rec(vec![0.1, 0.0], None))];
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: overwrite,
            })
            .unwrap();
        let set = Some(serde_json::json!({"j": "x"}).to_string());
        let upd = ShardCommand::Update {
            namespace: "n".into(),
            id: "a".into(),
            values: None,
            sparse: None,
            set_metadata: set,
        };
        assert_eq!(shard.apply(upd), Ok(ShardOutput::Updated(1)));
        shard
            .apply(ShardCommand::Delete {
                namespace: "n".into(),
                ids: vec!["b".into(), "zz".into()],
            })
            .unwrap();

        let ns = shard.sm.namespace("n").unwrap();
        assert_eq!(ns.len(), 2);
        let query = |sm: &ShardMachine| -> Vec<String> {
            sm.namespace("n")
                .unwrap()
                .query(&[0.2, 0.0], 3, None)
                .unwrap()
                .into_iter()
                .map(|h| h.id.to_string())
                .collect()
        };
        let hits = query(&shard.sm);
        assert_eq!(hits, vec!["c", "a"]);
        assert_eq!(ns.get("a").unwrap().metadata_map().unwrap()["j"], "x");
        assert_eq!(ns.get("a").unwrap().metadata_map().unwrap()["k"], 1);

        // RocksDB holds exactly the live records, as last written.
        let stored = shard.stored();
        let ids: Vec<&str> = stored.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(stored[1].2.values, vec![0.1, 0.0]);

        // A restart reads the same state back; so does a replica restored from an export.
        let reopened = shard.reopened();
        assert_eq!(query(&reopened), hits);
        assert_eq!(reopened.namespace("n").unwrap().get("a"), ns.get("a"));
        let copy = shard.exported_to_new_replica();
        assert_eq!(query(&copy.sm), hits);
        assert_eq!(copy.stored(), stored);
        assert_eq!(query(&copy.reopened()), hits);

        // Records written after the restart keep their own internal ids.
        let mut copy = copy;
        copy.apply(ShardCommand::Upsert {
            namespace: "n".into(),
            records: vec![("d".into(), rec(vec![0.2, 0.0], None))],
        })
        .unwrap();
        assert_eq!(query(&copy.reopened())[0], "d");
        assert_eq!(copy.stored().len(), 3);
    }

    #[test]
    fn deleted_namespaces_leave_nothing_on_disk() {
        let mut shard = TestShard::new(1, Metric::DotProduct, EngineConfig::default());
        for ns in ["x", "y"] {
            shard
                .apply(ShardCommand::Upsert {
                    namespace: ns.into(),
                    records: vec![("r".into(), rec(vec![1.0], None))],
                })
                .unwrap();
        }
        shard
            .apply(ShardCommand::DeleteNamespace { name: "x".into() })
            .unwrap();
        shard
            .apply(ShardCommand::DeleteAll {
                namespace: "y".into(),
            })
            .unwrap();
        assert!(shard.stored().is_empty());
        let reopened = shard.reopened();
        assert!(reopened.namespace("x").is_none());
        assert_eq!(reopened.namespace("y").map(Namespace::len), Some(0));
    }

    #[test]
    fn background_rebuild_moves_to_hnsw_and_catches_up_with_later_writes() {
        let config = EngineConfig {
            hnsw_min_records: 50,
            ..EngineConfig::default()
        };
        let mut shard = TestShard::new(4, Metric::Euclidean, config);
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
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: records(0..60),
            })
            .unwrap();
        let jobs = shard.sm.rebuild_jobs();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].kind(), jobs[0].len()), (EngineKind::Hnsw, 60));
        let built = jobs.into_iter().next().unwrap().build().unwrap();

        // Writes that land while the index is being built.
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: records(60..70),
            })
            .unwrap();
        shard
            .apply(ShardCommand::Delete {
                namespace: "n".into(),
                ids: vec!["r5".into(), "r65".into()],
            })
            .unwrap();
        assert!(shard.sm.install(built).unwrap());
        assert_eq!(
            shard.sm.engine_kinds(),
            vec![("n".to_string(), EngineKind::Hnsw, 1)]
        );

        let ns = shard.sm.namespace("n").unwrap();
        let near = |q: usize, k: usize| -> Vec<String> {
            ns.query(&point(q), k, None)
                .unwrap()
                .into_iter()
                .map(|h| h.id.to_string())
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
            .map(|h| h.id.to_string())
            .collect();
        assert_eq!(
            filtered,
            vec!["r6", "r8"],
            "selective filter answered by an exact scan"
        );
        assert!(
            shard.sm.rebuild_jobs().is_empty(),
            "nothing left to rebuild"
        );

        // The new graph is saved at the next checkpoint, and only then.
        assert!(shard.sm.has_unsaved_index());
        shard.checkpoint();
        assert!(!shard.sm.has_unsaved_index());

        // Written after the save: a restart loads the saved graph and catches it up.
        let late = vec![("late".to_string(), rec(point(500), None))];
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: late,
            })
            .unwrap();
        shard
            .apply(ShardCommand::Delete {
                namespace: "n".into(),
                ids: vec!["r68".into()],
            })
            .unwrap();
        let expect = |sm: &ShardMachine, q: usize| -> Vec<String> {
            sm.namespace("n")
                .unwrap()
                .query(&point(q), 3, None)
                .unwrap()
                .into_iter()
                .map(|h| h.id.to_string())
                .collect()
        };
        let reopened = shard.reopened();
        assert_eq!(
            reopened.engine_kinds()[0].1,
            EngineKind::Hnsw,
            "graph loaded"
        );
        assert_eq!(expect(&reopened, 68), expect(&shard.sm, 68));
        assert_eq!(expect(&reopened, 500)[0], "late");
        assert!(!expect(&reopened, 68).contains(&"r68".to_string()));

        // A replica restored from an export loads the saved graph too.
        let copy = shard.exported_to_new_replica();
        assert_eq!(copy.sm.engine_kinds()[0].1, EngineKind::Hnsw);
        assert_eq!(expect(&copy.sm, 68), expect(&shard.sm, 68));
    }

    #[test]
    fn list_pages_by_prefix() {
        let mut shard = TestShard::new(1, Metric::DotProduct, EngineConfig::default());
        let records = ["a1", "b1", "b2", "b3", "c1"]
            .iter()
            .map(|id| (id.to_string(), rec(vec![1.0], None)))
            .collect();
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records,
            })
            .unwrap();
        let ns = shard.sm.namespace("n").unwrap();
        assert_eq!(ns.list("b", None, 2), vec!["b1", "b2"]);
        assert_eq!(ns.list("b", Some("b2"), 2), vec!["b3"]);
        assert_eq!(ns.list("", None, 10).len(), 5);
    }

    #[test]
    fn records_kept_by_internal_id_are_read_in_id_order() {
        // One batch writes "b" twice: the second write wins and the first leaves nothing,
        // in memory, in the metadata index or on disk.
        let mut shard = TestShard::new(2, Metric::Euclidean, EngineConfig::default());
        let tagged = |n: i64| Some(serde_json::json!({ "n": n }));
        shard
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: vec![
                    ("b".into(), rec(vec![9.0, 9.0], tagged(1))),
                    ("a".into(), rec(vec![0.0, 1.0], tagged(2))),
                    ("b".into(), rec(vec![1.0, 0.0], tagged(3))),
                ],
            })
            .unwrap();
        let ns = shard.sm.namespace("n").unwrap();
        assert_eq!(ns.len(), 2);
        assert!(ns.contains("b") && !ns.contains("c"));
        assert_eq!(ns.get("b").unwrap().values, vec![1.0, 0.0]);
        assert_eq!(ns.list("", None, 10), vec!["a", "b"]);
        let all = Filter::And(Vec::new());
        let matched: Vec<&str> = ns.matching(&all).into_iter().map(|(id, _)| id).collect();
        assert_eq!(matched, vec!["a", "b"]);
        let first_write = filter::parse(&serde_json::json!({ "n": 1 })).unwrap();
        assert_eq!(ns.count_matching(&first_write), 0);
        let last_write = filter::parse(&serde_json::json!({ "n": 3 })).unwrap();
        assert_eq!(ns.count_matching(&last_write), 1);
        let hits = ns.query(&[1.0, 0.0], 2, None).unwrap();
        assert_eq!((hits[0].id, &hits[0].record.values), ("b", &vec![1.0, 0.0]));
        // Nor in the vector index: the first write's vector takes no result slot.
        assert_eq!(ns.query(&[9.0, 9.0], 2, None).unwrap().len(), 2);
        assert_eq!(shard.stored().len(), 2);

        // The digest reads records in id order, whatever order their internal ids have.
        let mut other = TestShard::new(2, Metric::Euclidean, EngineConfig::default());
        other
            .apply(ShardCommand::Upsert {
                namespace: "n".into(),
                records: vec![
                    ("a".into(), rec(vec![0.0, 1.0], tagged(2))),
                    ("b".into(), rec(vec![1.0, 0.0], tagged(3))),
                ],
            })
            .unwrap();
        assert_eq!(other.sm.namespace("n").unwrap().digest(), ns.digest());
        assert_eq!(
            shard.reopened().namespace("n").unwrap().digest(),
            ns.digest()
        );
    }
}
