//! The shard's durable state in RocksDB: its key layout (see `machine`), the versioned
//! format of its values, reading it back (at open, and for a follower's export) and staging
//! saved HNSW graphs in chunks.

use std::collections::BTreeMap;

use conifer_raft::group_state::{StateView, StateWrites};
use conifer_raft::{Format, MachineError};
use serde::{Deserialize, Serialize};

use super::command::Record;
use super::engine::{EngineKind, EngineSnapshot};

/// Size of the pieces a saved index is stored in.
pub const ENGINE_CHUNK_BYTES: usize = 4 << 20;

/// Keys of the shard's durable state (see the module documentation).
pub(super) mod keys {
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
pub(super) fn stage(result: Result<(), conifer_raft::storage::StorageFault>) {
    if let Err(e) = result {
        panic!("cannot stage shard state change: {e}");
    }
}

/// Format of a shard's export (the data of its Raft snapshot for a follower).
pub const EXPORT_FORMAT: Format = Format::new("shard export", 1);
/// Format of each value of a shard's durable state in RocksDB (namespace headers, records,
/// saved index headers, the namespace counter).
pub const STATE_FORMAT: Format = Format::new("shard state value", 1);

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    STATE_FORMAT.encode(value)
}

/// A namespace header as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) name: String,
    pub(super) next_internal: u64,
}

/// A saved HNSW index and what it covers: the records it was saved with (internal ids below
/// `next_internal`, of which `live` were not deleted).
#[derive(Serialize, Deserialize)]
pub(super) struct SavedEngine {
    pub(super) next_internal: u64,
    pub(super) live: Vec<u64>,
    pub(super) engine: EngineSnapshot,
}

/// How a saved index is stored: its header, then its FAISS bytes in chunks.
#[derive(Serialize, Deserialize)]
pub(super) struct SavedEngineHeader {
    pub(super) next_internal: u64,
    pub(super) live: Vec<u64>,
    pub(super) kind: EngineKind,
    pub(super) tombstones: Vec<u64>,
    pub(super) chunks: u32,
}

/// A namespace as exported for a follower.
#[derive(Serialize, Deserialize)]
pub(super) struct ExportNamespace {
    pub(super) seq: u64,
    pub(super) header: Header,
    /// (internal id, record id, record).
    pub(super) records: Vec<(u64, String, Record)>,
    /// The saved HNSW index, so the follower loads it instead of rebuilding it.
    pub(super) engine: Option<SavedEngine>,
}

/// A shard as exported for a follower (the Raft snapshot's data).
#[derive(Serialize, Deserialize)]
pub(super) struct ShardExport {
    pub(super) next_seq: u64,
    pub(super) namespaces: Vec<ExportNamespace>,
}

/// Everything of one namespace read back from durable state.
pub(super) struct NamespaceState {
    pub(super) header: Header,
    pub(super) records: Vec<(u64, String, Record)>,
    pub(super) engine: Option<SavedEngine>,
}

/// Reads every namespace of the shard from `view`, with the next namespace number.
pub(super) fn read_state(
    view: &StateView<'_>,
) -> Result<(u64, BTreeMap<u64, NamespaceState>), MachineError> {
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

pub(super) fn read_saved_engine(
    view: &StateView<'_>,
    seq: u64,
) -> Result<Option<SavedEngine>, MachineError> {
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

pub(super) fn stage_saved_engine(writes: &mut StateWrites<'_>, seq: u64, saved: &SavedEngine) {
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

/// Calls `visit(namespace, id, record)` for every record of the shard state `view` reads,
/// namespace by namespace (by number), each in internal-id order — a copy for a backup,
/// streamed without holding the shard's records twice in memory. Returns the namespaces'
/// names (every namespace, the empty ones included).
pub fn scan_records(
    view: &StateView<'_>,
    mut visit: impl FnMut(&str, String, Record) -> Result<(), MachineError>,
) -> Result<Vec<String>, MachineError> {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    view.scan(&[keys::HEADER], |key, value| {
        let (seq, _) = keys::numbers(key)?;
        let header: Header = STATE_FORMAT.decode(&value)?;
        names.insert(seq, header.name);
        Ok(())
    })?;
    view.scan(&[keys::RECORD], |key, value| {
        let (seq, _) = keys::numbers(key)?;
        let (id, record): (String, Record) = STATE_FORMAT.decode(&value)?;
        let namespace = names.get(&seq).ok_or_else(|| {
            MachineError::Inconsistent(format!("record of unknown namespace {seq}"))
        })?;
        visit(namespace, id, record)
    })?;
    Ok(names.into_values().collect())
}
