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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use conifer_raft::group_state::{StateView, StateWrites};
use conifer_raft::{Format, MachineError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::engine::{better, exact_score, EngineConfig, EngineKind, EngineSnapshot, VectorIndex};
use super::filter::Filter;
use super::metadata_index::MetadataIndex;
use crate::shard::engine::Metric;

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

/// Largest metadata of one record, serialized as JSON, in bytes (Pinecone's 40 KB).
/// Checked on what a write produces: the request's metadata, and the merged metadata of an
/// update, so no write can leave a record over the limit.
pub const MAX_METADATA_BYTES: usize = 40 * 1024;

/// Most namespaces one index holds, whether created explicitly or by a first upsert into
/// them.
pub const MAX_NAMESPACES_PER_INDEX: usize = 10_000;
/// Most records one namespace holds.
pub const MAX_RECORDS_PER_NAMESPACE: usize = 10_000_000;
/// Most records one index holds over all its namespaces (an index is one shard today).
pub const MAX_RECORDS_PER_INDEX: usize = 20_000_000;

/// The totals a shard's state may reach, checked when a command is applied, on the state it
/// would produce: a write that would pass one is refused whole and changes nothing. Every
/// replica uses the same ([`ShardLimits::default`], the constants above), so applying stays
/// deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLimits {
    /// [`MAX_NAMESPACES_PER_INDEX`].
    pub namespaces: usize,
    /// [`MAX_RECORDS_PER_NAMESPACE`].
    pub records_per_namespace: usize,
    /// [`MAX_RECORDS_PER_INDEX`].
    pub records: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        Self {
            namespaces: MAX_NAMESPACES_PER_INDEX,
            records_per_namespace: MAX_RECORDS_PER_NAMESPACE,
            records: MAX_RECORDS_PER_INDEX,
        }
    }
}

/// Refuses metadata (as JSON text) of record `id` over [`MAX_METADATA_BYTES`], in Pinecone's
/// words.
pub fn check_metadata_size(id: &str, metadata_json: &str) -> Result<(), String> {
    if metadata_json.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "Metadata size is {} bytes, which exceeds the limit of {MAX_METADATA_BYTES} bytes per vector (vector ID '{id}')",
            metadata_json.len()
        ));
    }
    Ok(())
}

/// `record`'s metadata with `set` merged in (Pinecone's update: fields in `set` replace
/// those of the same name, others stay), refused when the result is over
/// [`MAX_METADATA_BYTES`].
pub fn merge_metadata(
    id: &str,
    record: &mut Record,
    set: &Map<String, Value>,
) -> Result<(), ShardRejection> {
    let mut merged = record.metadata_map().unwrap_or_default();
    merged.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    let text = Value::Object(merged).to_string();
    check_metadata_size(id, &text).map_err(ShardRejection::Invalid)?;
    record.metadata = Some(text);
    Ok(())
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
    /// An [`Upsert`](ShardCommand::Upsert) into an index whose project is held to a record
    /// total: refused when it adds records and this index would then hold more than
    /// `project_limit` − `elsewhere`.
    UpsertInProject {
        /// Namespace (canonical).
        namespace: String,
        /// (id, record) pairs, validated by the API.
        records: Vec<(String, Record)>,
        /// Records the project's other indexes held when the upsert was accepted.
        elsewhere: u64,
        /// The project's total (`--max-records-per-project`).
        project_limit: u64,
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

impl ShardCommand {
    /// The namespace the command acts on.
    pub fn namespace(&self) -> &str {
        match self {
            ShardCommand::Upsert { namespace, .. }
            | ShardCommand::UpsertInProject { namespace, .. }
            | ShardCommand::Update { namespace, .. }
            | ShardCommand::Delete { namespace, .. }
            | ShardCommand::DeleteAll { namespace }
            | ShardCommand::UpdateByFilter { namespace, .. }
            | ShardCommand::DeleteByFilter { namespace, .. } => namespace,
            ShardCommand::CreateNamespace { name } | ShardCommand::DeleteNamespace { name } => name,
        }
    }
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

/// A saved HNSW index is saved again at the next snapshot once this many records of its
/// namespace changed since (each of them costs a graph insertion at the next open).
pub const ENGINE_SAVE_MIN_CHANGES: u64 = 2_000;

/// Size of the pieces a saved index is stored in.
pub const ENGINE_CHUNK_BYTES: usize = 4 << 20;

/// Keys of the shard's durable state (see the module documentation).
mod keys {
    pub const HEADER: u8 = 0x01;
    pub const NEXT_NAMESPACE: [u8; 1] = [0x02];
    pub const RECORD: u8 = 0x03;
    pub const ENGINE: u8 = 0x04;
    pub const ENGINE_CHUNK: u8 = 0x05;

    pub fn of(tag: u8, ns: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(17);
        key.push(tag);
        key.extend_from_slice(&ns.to_be_bytes());
        key
    }

    pub fn record(ns: u64, internal: u64) -> Vec<u8> {
        let mut key = of(RECORD, ns);
        key.extend_from_slice(&internal.to_be_bytes());
        key
    }

    pub fn chunk(ns: u64, chunk: u32) -> Vec<u8> {
        let mut key = of(ENGINE_CHUNK, ns);
        key.extend_from_slice(&chunk.to_be_bytes());
        key
    }

    /// The numbers after the tag byte of a key.
    pub fn numbers(key: &[u8]) -> Result<(u64, u64), conifer_raft::MachineError> {
        let ns = key
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| {
                conifer_raft::MachineError::Inconsistent("shard state key too short".into())
            })?;
        let rest = key
            .get(9..17)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok((ns, rest))
    }
}

/// Stages a change of the shard's durable state. Staging fails only when the column family
/// is missing; such a replica cannot follow the log, so it stops rather than diverge.
fn stage(result: Result<(), conifer_raft::storage::StorageFault>) {
    if let Err(e) = result {
        panic!("cannot stage shard state change: {e}");
    }
}

/// Format of shard commands in a shard group's log.
pub const COMMAND_FORMAT: Format = Format::new("shard command", 1);
/// Format of a shard command's [`ShardOutcome`], as the response of its proposal.
pub const OUTCOME_FORMAT: Format = Format::new("shard outcome", 1);
/// Format of a shard's export (the data of its Raft snapshot for a follower).
pub const EXPORT_FORMAT: Format = Format::new("shard export", 1);
/// Format of each value of a shard's durable state in RocksDB (namespace headers, records,
/// saved index headers, the namespace counter).
pub const STATE_FORMAT: Format = Format::new("shard state value", 1);

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    STATE_FORMAT.encode(value)
}

/// A vector-engine failure while building or saving derived state.
fn derived(e: impl std::fmt::Display) -> MachineError {
    MachineError::Derived(e.to_string())
}

/// A namespace header as stored.
#[derive(Serialize, Deserialize)]
struct Header {
    name: String,
    next_internal: u64,
}

/// A saved HNSW index and what it covers: the records it was saved with (internal ids below
/// `next_internal`, of which `live` were not deleted).
#[derive(Serialize, Deserialize)]
struct SavedEngine {
    next_internal: u64,
    live: Vec<u64>,
    engine: EngineSnapshot,
}

/// How a saved index is stored: its header, then its FAISS bytes in chunks.
#[derive(Serialize, Deserialize)]
struct SavedEngineHeader {
    next_internal: u64,
    live: Vec<u64>,
    kind: EngineKind,
    tombstones: Vec<u64>,
    chunks: u32,
}

/// One namespace: records by id and their vector index.
pub struct Namespace {
    name: String,
    records: BTreeMap<String, Stored>,
    by_internal: HashMap<u64, String>,
    next_internal: u64,
    /// The namespace's number in the shard's keys; a namespace deleted and created again
    /// gets a new one.
    seq: u64,
    metric: Metric,
    engine: Mutex<VectorIndex>,
    /// Bitmaps of internal ids by metadata value, for filters.
    meta_index: MetadataIndex,
    /// Records written or deleted since the HNSW index was last saved.
    unsaved_changes: AtomicU64,
    /// Whether the current HNSW index was ever saved.
    engine_saved: AtomicBool,
}

/// A background rebuild of one namespace's vector index: inputs copied under the read lock,
/// the build done without locks, the result installed by [`ShardMachine::install`].
pub struct RebuildJob {
    namespace: String,
    seq: u64,
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
    seq: u64,
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
    pub fn build(self) -> Result<Rebuilt, MachineError> {
        let mut index = VectorIndex::new(self.dimension, self.metric, self.kind, self.config)
            .map_err(derived)?;
        index.add(&self.ids, &self.values).map_err(derived)?;
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

/// The replicated state of one shard.
pub struct ShardMachine {
    dimension: usize,
    metric: Metric,
    config: EngineConfig,
    namespaces: BTreeMap<String, Namespace>,
    next_seq: u64,
    limits: ShardLimits,
}

/// A namespace as exported for a follower.
#[derive(Serialize, Deserialize)]
struct ExportNamespace {
    seq: u64,
    header: Header,
    /// (internal id, record id, record).
    records: Vec<(u64, String, Record)>,
    /// The saved HNSW index, so the follower loads it instead of rebuilding it.
    engine: Option<SavedEngine>,
}

/// A shard as exported for a follower (the Raft snapshot's data).
#[derive(Serialize, Deserialize)]
struct ShardExport {
    next_seq: u64,
    namespaces: Vec<ExportNamespace>,
}

/// Everything of one namespace read back from durable state.
struct NamespaceState {
    header: Header,
    records: Vec<(u64, String, Record)>,
    engine: Option<SavedEngine>,
}

/// Reads every namespace of the shard from `view`, with the next namespace number.
fn read_state(view: &StateView<'_>) -> Result<(u64, BTreeMap<u64, NamespaceState>), MachineError> {
    let next_seq = match view.get(&keys::NEXT_NAMESPACE)? {
        Some(bytes) => STATE_FORMAT.decode(&bytes)?,
        None => 1,
    };
    let mut namespaces = BTreeMap::new();
    view.scan(&[keys::HEADER], |key, value| {
        let (seq, _) = keys::numbers(key)?;
        let header: Header = STATE_FORMAT.decode(&value)?;
        namespaces.insert(
            seq,
            NamespaceState {
                header,
                records: Vec::new(),
                engine: None,
            },
        );
        Ok(())
    })?;
    view.scan(&[keys::RECORD], |key, value| {
        let (seq, internal) = keys::numbers(key)?;
        let (id, record): (String, Record) = STATE_FORMAT.decode(&value)?;
        let ns = namespaces.get_mut(&seq).ok_or_else(|| {
            MachineError::Inconsistent(format!("record of unknown namespace {seq}"))
        })?;
        ns.records.push((internal, id, record));
        Ok(())
    })?;
    for (seq, ns) in namespaces.iter_mut() {
        ns.engine = read_saved_engine(view, *seq)?;
    }
    Ok((next_seq, namespaces))
}

fn read_saved_engine(view: &StateView<'_>, seq: u64) -> Result<Option<SavedEngine>, MachineError> {
    let Some(bytes) = view.get(&keys::of(keys::ENGINE, seq))? else {
        return Ok(None);
    };
    let header: SavedEngineHeader = STATE_FORMAT.decode(&bytes)?;
    let mut faiss = Vec::new();
    let mut chunks = 0u32;
    view.scan(&keys::of(keys::ENGINE_CHUNK, seq), |_, value| {
        faiss.extend_from_slice(&value);
        chunks += 1;
        Ok(())
    })?;
    if chunks != header.chunks {
        return Err(MachineError::Inconsistent(format!(
            "saved index of namespace {seq} has {chunks} of {} chunks",
            header.chunks
        )));
    }
    Ok(Some(SavedEngine {
        next_internal: header.next_internal,
        live: header.live,
        engine: EngineSnapshot {
            kind: header.kind,
            tombstones: header.tombstones,
            faiss,
        },
    }))
}

fn stage_saved_engine(writes: &mut StateWrites<'_>, seq: u64, saved: &SavedEngine) {
    let chunks: Vec<&[u8]> = saved.engine.faiss.chunks(ENGINE_CHUNK_BYTES).collect();
    let header = SavedEngineHeader {
        next_internal: saved.next_internal,
        live: saved.live.clone(),
        kind: saved.engine.kind,
        tombstones: saved.engine.tombstones.clone(),
        chunks: chunks.len() as u32,
    };
    stage(writes.delete_prefix(&keys::of(keys::ENGINE_CHUNK, seq)));
    for (n, chunk) in chunks.iter().enumerate() {
        stage(writes.put(&keys::chunk(seq, n as u32), chunk));
    }
    stage(writes.put(&keys::of(keys::ENGINE, seq), &encode(&header)));
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
            .filter(|id| ns.is_none_or(|ns| !ns.records.contains_key(*id)))
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
            by_internal: HashMap::new(),
            next_internal,
            seq,
            metric: self.metric,
            engine: Mutex::new(self.engine_or_abort()),
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
            ns.by_internal.insert(internal, id.clone());
            let stored = Stored::new(internal, record);
            ns.meta_index.insert(internal, stored.meta.as_ref());
            ns.records.insert(id, stored);
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
        let mut ids = Vec::new();
        let mut values = Vec::new();
        for stored in ns.records.values() {
            if stored.internal >= covered_below {
                ids.push(stored.internal);
                values.extend_from_slice(&stored.record.values);
            }
        }
        let gone: Vec<u64> = live
            .into_iter()
            .filter(|id| !ns.by_internal.contains_key(id))
            .collect();
        let changed = (ids.len() + gone.len()) as u64;
        index.add(&ids, &values).map_err(derived)?;
        index.remove(&gone).map_err(derived)?;
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
                let filter = parse_filter_text(&filter)?;
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
                        Ok((id.clone(), record))
                    })
                    .collect::<Result<_, ShardRejection>>()?;
                let count = updated.len() as u32;
                ns.upsert(updated, writes);
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
        index.add(&new_ids, &new_values).map_err(derived)?;
        index.remove(&gone).map_err(derived)?;
        *ns.engine.lock().unwrap_or_else(|p| p.into_inner()) = index;
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
    fn stage_header(&self, writes: &mut StateWrites<'_>) {
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

    fn index_needs_saving(&self) -> bool {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.kind() == EngineKind::Hnsw
            && (!self.engine_saved.load(Ordering::Relaxed)
                || self.unsaved_changes.load(Ordering::Relaxed) >= ENGINE_SAVE_MIN_CHANGES)
    }

    /// Pair assertions after an apply: the namespace's records, its map from internal ids
    /// and its metadata index hold the same records. A difference would serve a deleted
    /// record, or lose a live one from filters, from here on — so the replica stops
    /// rather than diverge (the log is intact; a restart rebuilds memory from RocksDB).
    fn assert_consistent(&self) {
        assert_eq!(
            self.records.len(),
            self.by_internal.len(),
            "namespace '{}': records and internal ids disagree",
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
    fn checkpoint(&self, writes: &mut StateWrites<'_>) -> Result<(), MachineError> {
        if !self.index_needs_saving() {
            return Ok(());
        }
        let engine = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_snapshot()
            .map_err(derived)?;
        // A crash while the graph is being saved: the records are on disk, the graph is
        // rebuilt from them at the next start.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("conifer::shard::checkpoint::before_stage");
        let mut live: Vec<u64> = self.by_internal.keys().copied().collect();
        live.sort_unstable();
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

    fn upsert(&mut self, records: Vec<(String, Record)>, writes: &mut StateWrites<'_>) {
        let mut removed = Vec::new();
        let mut ids = Vec::with_capacity(records.len());
        let mut values = Vec::new();
        for (id, record) in records {
            let internal = self.next_internal;
            self.next_internal += 1;
            stage(writes.put(&keys::record(self.seq, internal), &encode(&(&id, &record))));
            values.extend_from_slice(&record.values);
            let stored = Stored::new(internal, record);
            self.meta_index.insert(internal, stored.meta.as_ref());
            if let Some(old) = self.records.insert(id.clone(), stored) {
                self.by_internal.remove(&old.internal);
                self.meta_index.remove(old.internal, old.meta.as_ref());
                stage(writes.delete(&keys::record(self.seq, old.internal)));
                removed.push(old.internal);
            }
            self.by_internal.insert(internal, id);
            ids.push(internal);
        }
        self.stage_header(writes);
        self.unsaved_changes
            .fetch_add((ids.len() + removed.len()) as u64, Ordering::Relaxed);
        let engine = self.engine.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = engine
            .remove(&removed)
            .and_then(|_| engine.add(&ids, &values))
        {
            panic!("vector index update failed: {e}");
        }
    }

    fn delete(&mut self, ids: &[String], writes: &mut StateWrites<'_>) {
        let mut removed = Vec::new();
        for id in ids {
            if let Some(old) = self.records.remove(id) {
                self.by_internal.remove(&old.internal);
                self.meta_index.remove(old.internal, old.meta.as_ref());
                stage(writes.delete(&keys::record(self.seq, old.internal)));
                removed.push(old.internal);
            }
        }
        self.unsaved_changes
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
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

    /// SHA-256 (hex) over the records in id order (id, values, sparse values, metadata):
    /// equal on every replica that applied the same log prefix, whatever its vector index.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (id, stored) in &self.records {
            let encoded =
                bincode::serialize(&(id, &stored.record)).expect("a record always serializes");
            hasher.update((encoded.len() as u64).to_be_bytes());
            hasher.update(&encoded);
        }
        hex::encode(hasher.finalize())
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
    ) -> Result<Vec<Hit<'_>>, String> {
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
                let record = &self.records.get(id)?.record;
                Some(Hit { id, score, record })
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
}
