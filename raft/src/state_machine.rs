//! The application state-machine trait and the adapter that runs it under openraft.
//!
//! An application state machine (the control plane, later each shard) keeps its state in
//! memory and is deterministic: the same commands in the same order give the same state on
//! every replica. Durability comes from the log plus snapshots: a snapshot is sealed and
//! written (synced) to RocksDB before openraft may purge the log it covers, and on restart
//! the latest snapshot is restored and openraft re-applies the committed log after it.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::storage::{NodeStorage, StorageFault, CF_SNAPSHOTS};
use crate::types::{GroupId, LogId, NodeId, NodeInfo, Response, StorageError, TypeConfig};

/// A deterministic application state machine replicated by one Raft group.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command found at `log_index`, returning the serialized response.
    /// Must not fail on bad input: a command it rejects yields an error *response*.
    fn apply(&mut self, log_index: u64, command: &[u8]) -> Vec<u8>;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
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
}

/// openraft's view of an application state machine of one group.
pub struct StateMachineStore<S> {
    group: GroupId,
    storage: NodeStorage,
    applied: Arc<RwLock<Applied<S>>>,
    snapshot_counter: u64,
    /// The snapshot read at open, handed to openraft's first `get_current_snapshot` (made
    /// at startup) instead of reading and decrypting it a second time; cleared whenever a
    /// newer snapshot is written. Shared with the snapshot builder.
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

impl<S: StateMachine> StateMachineStore<S> {
    /// Opens the state machine of `group`, restoring the latest stored snapshot into `app`.
    pub fn open(group: GroupId, storage: NodeStorage, mut app: S) -> Result<Self, StorageError> {
        let key = NodeStorage::group_key(group, b"current");
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        let opened = read_snapshot(&storage, &key)?;
        if let Some(stored) = &opened {
            app.restore(&stored.data)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
            last_applied = stored.meta.last_log_id;
            membership = stored.meta.last_membership.clone();
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
        let (data, last_applied, membership) = {
            let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
            (
                guard.app.snapshot(),
                guard.last_applied,
                guard.membership.clone(),
            )
        };
        self.snapshot_counter += 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_counter),
            None => format!("empty-{}", self.snapshot_counter),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
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
        let mut guard = self.write_lock();
        let mut responses = Vec::new();
        for entry in entries {
            guard.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(command) => {
                    Response(guard.app.apply(entry.log_id.index, &command.0))
                }
                EntryPayload::Membership(m) => {
                    guard.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            responses.push(response);
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
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        fail::fail_point!("raft::snapshot::install::before", |_| Err(snap_err(
            ErrorVerb::Write,
            "failpoint raft::snapshot::install::before"
        )));
        // Persist first: a crash after this point restarts from the new snapshot.
        self.write_snapshot(&stored)?;
        let mut guard = self.write_lock();
        guard
            .app
            .restore(&stored.data)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        guard.last_applied = meta.last_log_id;
        guard.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
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
