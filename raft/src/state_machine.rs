//! The application state-machine trait and the adapter that runs it under openraft.
//!
//! An application state machine is deterministic: the same commands in the same order give
//! the same state on every replica. It keeps its state in one of two ways:
//!
//! - **in memory** (the control plane): durability comes from the log plus snapshots. A
//!   snapshot is sealed and written (synced) to RocksDB before openraft may purge the log it
//!   covers; on restart the latest snapshot is restored and openraft re-applies the
//!   committed log after it.
//! - **durable** (shards): every apply writes the machine's changes and the applied log id
//!   in one RocksDB write batch ([`StateWrites`]), so the state on disk is always the state
//!   after some prefix of the log. Applies are not synced; building a snapshot syncs the WAL
//!   first, so the log is only purged behind state that is on disk. A Raft snapshot for a
//!   follower is exported from a point-in-time view of RocksDB ([`StateView`]), without
//!   stopping applies, and nothing is stored twice.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::group_state::{StateView, StateWrites, RESERVED_KEY_PREFIX};
use crate::storage::{NodeStorage, StorageFault, CF_SNAPSHOTS};
use crate::types::{GroupId, LogId, NodeId, NodeInfo, Response, StorageError, TypeConfig};

/// Why a state machine could not restore, load, export or checkpoint its state.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A snapshot, export or stored value is not in a format this node reads.
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// Storage failed (RocksDB, or a value that does not decrypt).
    #[error(transparent)]
    Storage(#[from] StorageFault),
    /// Derived state (a vector index) could not be built or saved.
    #[error("derived state: {0}")]
    Derived(String),
    /// The stored state contradicts itself (a record of a namespace that does not exist,
    /// a saved index missing chunks).
    #[error("inconsistent stored state: {0}")]
    Inconsistent(String),
    /// A durable-only operation was asked of an in-memory machine.
    #[error("in-memory state machines are not exported from RocksDB")]
    NotDurable,
}

/// A deterministic application state machine replicated by one Raft group.
pub trait StateMachine: Send + Sync + 'static {
    /// Whether the machine keeps its state in RocksDB through [`StateWrites`] (true) or in
    /// memory, made durable by whole-state snapshots (false).
    const DURABLE: bool;

    /// Applies one committed command found at `log_index`, returning the serialized response.
    /// Must not fail on bad input: a command it rejects yields an error *response*. A durable
    /// machine stages its changes in `writes`; an in-memory one leaves it empty.
    fn apply(&mut self, log_index: u64, command: &[u8], writes: &mut StateWrites<'_>) -> Vec<u8>;

    /// In-memory machines: serializes the whole state. Durable machines are exported with
    /// [`StateMachine::export`] instead and may return an empty vector.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`] (in
    /// memory) or [`StateMachine::export`] (durable; the old durable state is already staged
    /// for deletion in `writes`, and the machine stages the new one).
    fn restore(
        &mut self,
        snapshot: &[u8],
        writes: &mut StateWrites<'_>,
    ) -> Result<(), MachineError>;

    /// Durable machines: rebuilds the in-memory structures from the durable state at open.
    fn load(&mut self, _view: &StateView<'_>) -> Result<(), MachineError> {
        Ok(())
    }

    /// Durable machines: serializes the state seen by `view` for a follower, in the format
    /// [`StateMachine::restore`] reads.
    fn export(_view: &StateView<'_>) -> Result<Vec<u8>, MachineError>
    where
        Self: Sized,
    {
        Err(MachineError::NotDurable)
    }

    /// Durable machines: stages derived state worth saving (a vector index), called while
    /// a snapshot is built. The default saves nothing.
    fn checkpoint(&self, _writes: &mut StateWrites<'_>) -> Result<(), MachineError> {
        Ok(())
    }
}

/// Reserved key of a durable machine's applied log id and membership.
const APPLIED_KEY: [u8; 2] = [RESERVED_KEY_PREFIX, 1];
/// Reserved key present once a snapshot of a durable machine has been built or installed.
const SNAPSHOT_BUILT_KEY: [u8; 2] = [RESERVED_KEY_PREFIX, 2];

/// What a durable machine records with every apply.
#[derive(Serialize, Deserialize)]
struct AppliedMarker {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

/// The state machine plus what openraft needs to know about it.
struct Applied<S> {
    app: S,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

/// A snapshot as stored (sealed) in RocksDB.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// Read access to an application state machine, for serving local reads.
pub struct StateHandle<S> {
    applied: Arc<RwLock<Applied<S>>>,
}

impl<S> Clone for StateHandle<S> {
    fn clone(&self) -> Self {
        Self {
            applied: self.applied.clone(),
        }
    }
}

/// A read guard on the application state.
pub struct StateGuard<'a, S> {
    guard: RwLockReadGuard<'a, Applied<S>>,
}

impl<S> StateGuard<'_, S> {
    /// Index of the last entry applied to the state this guard reads (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.guard.last_applied.map(|l| l.index).unwrap_or(0)
    }
}

impl<S> std::ops::Deref for StateGuard<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard.app
    }
}

impl<S: StateMachine> StateHandle<S> {
    /// Locks the state for reading. Holders must not await while holding it.
    pub fn read(&self) -> StateGuard<'_, S> {
        StateGuard {
            guard: self.applied.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        guard.last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Runs `f` while applies, snapshot checkpoints and readers of the state are held off
    /// (re-sealing the state's values in place). `f` must be short: reads wait for it.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let _alone = self.applied.write().unwrap_or_else(|p| p.into_inner());
        f()
    }
}

/// openraft's view of an application state machine of one group.
pub struct StateMachineStore<S> {
    group: GroupId,
    storage: NodeStorage,
    applied: Arc<RwLock<Applied<S>>>,
    snapshot_counter: u64,
    /// In-memory machines: the snapshot read at open, handed to openraft's first
    /// `get_current_snapshot` (made at startup) instead of reading and decrypting it a
    /// second time; cleared whenever a newer snapshot is written. Shared with the builder.
    opened_snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn snapshot_id(last_applied: Option<LogId>, suffix: &str) -> String {
    match last_applied {
        Some(l) => format!("{}-{}{suffix}", l.leader_id, l.index),
        None => format!("empty{suffix}"),
    }
}

impl<S: StateMachine> StateMachineStore<S> {
    /// Opens the state machine of `group`: a durable machine loads its state from RocksDB,
    /// an in-memory one restores the latest stored snapshot into `app`.
    pub fn open(group: GroupId, storage: NodeStorage, mut app: S) -> Result<Self, StorageError> {
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        let mut opened = None;
        if S::DURABLE {
            // What is read now must be on disk before openraft bases any purge on it.
            storage.sync_wal().map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let view = StateView::latest(&storage, group);
            if let Some(marker) = read_marker(&view)? {
                last_applied = marker.last_applied;
                membership = marker.membership;
            }
            app.load(&view).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        } else {
            let key = NodeStorage::group_key(group, b"current");
            opened = read_snapshot(&storage, &key)?;
            if let Some(stored) = &opened {
                let mut unused = StateWrites::new(&storage, group);
                app.restore(&stored.data, &mut unused)
                    .map_err(|e| snap_err(ErrorVerb::Read, e))?;
                last_applied = stored.meta.last_log_id;
                membership = stored.meta.last_membership.clone();
            }
        }
        Ok(Self {
            group,
            storage,
            applied: Arc::new(RwLock::new(Applied {
                app,
                last_applied,
                membership,
            })),
            snapshot_counter: 0,
            opened_snapshot: Arc::new(Mutex::new(opened)),
        })
    }

    /// A handle for reading the application state.
    pub fn handle(&self) -> StateHandle<S> {
        StateHandle {
            applied: self.applied.clone(),
        }
    }

    fn snapshot_key(&self) -> Vec<u8> {
        NodeStorage::group_key(self.group, b"current")
    }

    fn write_snapshot(&self, stored: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = bincode::serialize(stored).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        fail::fail_point!("raft::snapshot::before_persist", |_| Err(snap_err(
            ErrorVerb::Write,
            "failpoint raft::snapshot::before_persist"
        )));
        self.storage
            .put_synced(CF_SNAPSHOTS, &self.snapshot_key(), &bytes)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        *self
            .opened_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied<S>> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Durable machines: the snapshot of the state seen by `view`.
    fn export(&self, view: &StateView<'_>) -> Result<Snapshot<TypeConfig>, StorageError> {
        let marker = read_marker(view)?.unwrap_or(AppliedMarker {
            last_applied: None,
            membership: StoredMembership::default(),
        });
        let data = S::export(view).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta: snapshot_meta(marker),
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// Durable machines: checkpoints derived state and syncs everything applied so far;
    /// returns the snapshot's meta (the applied marker of exactly that state) with no data.
    ///
    /// openraft 0.9 keeps only the meta of a snapshot it asked to build (the state machine
    /// worker maps the result to `snap.meta`, and so does its storage suite); a snapshot it
    /// sends to a follower comes from [`RaftStateMachine::get_current_snapshot`], which
    /// exports the state as it is then. So building one exports nothing: an export holds
    /// the whole group's state in memory twice (decoded and encoded), and was the peak of a
    /// node's memory after every large write.
    fn build_durable_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let view = {
            let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
            let mut writes = StateWrites::new(&self.storage, self.group);
            guard
                .app
                .checkpoint(&mut writes)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            writes
                .put_any(&SNAPSHOT_BUILT_KEY, &[1])
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            fail::fail_point!("raft::snapshot::before_persist", |_| Err(snap_err(
                ErrorVerb::Write,
                "failpoint raft::snapshot::before_persist"
            )));
            // A synced write syncs the whole WAL, so every apply before it is on disk too.
            self.storage
                .write_synced(writes.into_batch())
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            // Frozen while applies are held off: the view holds synced state only.
            StateView::frozen(&self.storage, self.group)
        };
        let marker = read_marker(&view)?.unwrap_or(AppliedMarker {
            last_applied: None,
            membership: StoredMembership::default(),
        });
        Ok(Snapshot {
            meta: snapshot_meta(marker),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

/// The meta of a durable machine's snapshot of the state whose applied marker is `marker`.
fn snapshot_meta(marker: AppliedMarker) -> SnapshotMeta<NodeId, NodeInfo> {
    SnapshotMeta {
        last_log_id: marker.last_applied,
        last_membership: marker.membership,
        snapshot_id: snapshot_id(marker.last_applied, ""),
    }
}

fn read_marker(view: &StateView<'_>) -> Result<Option<AppliedMarker>, StorageError> {
    match view
        .get(&APPLIED_KEY)
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
    {
        None => Ok(None),
        Some(bytes) => bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|e| sm_err(ErrorVerb::Read, e)),
    }
}

/// The log index of the last entry applied to the durable state `view` reads (0 before
/// any): a frozen view is the state after exactly that prefix of the log, since every
/// batch of applies is written in one write with its marker.
pub fn applied_index_of(view: &StateView<'_>) -> Result<u64, StorageError> {
    Ok(read_marker(view)?
        .and_then(|m| m.last_applied)
        .map(|l| l.index)
        .unwrap_or(0))
}

fn stage_marker(writes: &mut StateWrites<'_>, marker: &AppliedMarker) -> Result<(), StorageError> {
    let bytes = bincode::serialize(marker).map_err(|e| sm_err(ErrorVerb::Write, e))?;
    writes
        .put_any(&APPLIED_KEY, &bytes)
        .map_err(|e| sm_err(ErrorVerb::Write, e))
}

fn read_snapshot(
    storage: &NodeStorage,
    key: &[u8],
) -> Result<Option<StoredSnapshot>, StorageError> {
    let bytes = storage
        .get(CF_SNAPSHOTS, key)
        .map_err(|e: StorageFault| snap_err(ErrorVerb::Read, e))?;
    match bytes {
        None => Ok(None),
        Some(b) => bincode::deserialize(&b)
            .map(Some)
            .map_err(|e| snap_err(ErrorVerb::Read, e)),
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        if S::DURABLE {
            return self.build_durable_snapshot();
        }
        let (data, last_applied, membership) = {
            let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
            (
                guard.app.snapshot(),
                guard.last_applied,
                guard.membership.clone(),
            )
        };
        self.snapshot_counter += 1;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied, &format!("-{}", self.snapshot_counter)),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.write_snapshot(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, NodeInfo>), StorageError> {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((guard.last_applied, guard.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        fail::fail_point!("raft::apply::before", |_| Err(sm_err(
            ErrorVerb::Write,
            "failpoint raft::apply::before"
        )));
        let storage = self.storage.clone();
        let mut writes = StateWrites::new(&storage, self.group);
        let mut guard = self.write_lock();
        let mut responses = Vec::new();
        for entry in entries {
            guard.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(command) => {
                    Response(guard.app.apply(entry.log_id.index, &command.0, &mut writes))
                }
                EntryPayload::Membership(m) => {
                    guard.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            responses.push(response);
        }
        if S::DURABLE {
            let marker = AppliedMarker {
                last_applied: guard.last_applied,
                membership: guard.membership.clone(),
            };
            stage_marker(&mut writes, &marker)?;
            // Not synced: a crash may lose this batch as a whole, and openraft re-applies
            // the (synced) log after the applied id that survived.
            storage
                .write(writes.into_batch())
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        } else {
            debug_assert!(writes.is_empty(), "an in-memory machine staged writes");
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            group: self.group,
            storage: self.storage.clone(),
            applied: self.applied.clone(),
            snapshot_counter: self.snapshot_counter + 1000,
            opened_snapshot: self.opened_snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        fail::fail_point!("raft::snapshot::install::before", |_| Err(snap_err(
            ErrorVerb::Write,
            "failpoint raft::snapshot::install::before"
        )));
        let data = snapshot.into_inner();
        if S::DURABLE {
            let storage = self.storage.clone();
            let mut guard = self.write_lock();
            let mut writes = StateWrites::new(&storage, self.group);
            // Everything of the group's old state goes, except the adapter's own keys,
            // which are rewritten below.
            writes
                .delete_app_keys()
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            guard
                .app
                .restore(&data, &mut writes)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let marker = AppliedMarker {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            stage_marker(&mut writes, &marker)?;
            writes
                .put_any(&SNAPSHOT_BUILT_KEY, &[1])
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            // Durable before openraft may purge the log this snapshot replaces.
            storage
                .write_synced(writes.into_batch())
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            guard.last_applied = meta.last_log_id;
            guard.membership = meta.last_membership.clone();
            return Ok(());
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Persist first: a crash after this point restarts from the new snapshot.
        self.write_snapshot(&stored)?;
        let mut guard = self.write_lock();
        let mut unused = StateWrites::new(&self.storage, self.group);
        guard
            .app
            .restore(&stored.data, &mut unused)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        guard.last_applied = meta.last_log_id;
        guard.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if S::DURABLE {
            let built = StateView::latest(&self.storage, self.group)
                .get(&SNAPSHOT_BUILT_KEY)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            if built.is_none() {
                return Ok(None);
            }
            // The snapshot is made now, of the state as it is now, on disk: applies are held
            // off between the sync and the freeze.
            let view = {
                let _guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
                self.storage
                    .sync_wal()
                    .map_err(|e| snap_err(ErrorVerb::Read, e))?;
                StateView::frozen(&self.storage, self.group)
            };
            return self.export(&view).map(Some);
        }
        let opened = self
            .opened_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let current = match opened {
            Some(stored) => Some(stored),
            None => read_snapshot(&self.storage, &self.snapshot_key())?,
        };
        Ok(current.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
