//! openraft's storage test suite against the RocksDB log store and the state-machine
//! adapter, with every value sealed by the node's AES-256-GCM data key.

use std::sync::Arc;

use conifer_node::crypto::DataKey;
use conifer_raft::group_state::{StateView, StateWrites};
use conifer_raft::log_store::LogStore;
use conifer_raft::state_machine::{StateMachine, StateMachineStore};
use conifer_raft::{Format, MachineError, NodeStorage, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

/// The recorders' snapshot and export format.
const RECORDS: Format = Format::new("recorded commands", 1);

/// A trivial deterministic machine kept in memory: remembers every command it applied.
#[derive(Default)]
struct Recorder {
    applied: Vec<Vec<u8>>,
}

impl StateMachine for Recorder {
    const DURABLE: bool = false;

    fn apply(&mut self, _log_index: u64, command: &[u8], _: &mut StateWrites<'_>) -> Vec<u8> {
        self.applied.push(command.to_vec());
        command.to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        RECORDS.encode(&self.applied)
    }
    fn restore(&mut self, snapshot: &[u8], _: &mut StateWrites<'_>) -> Result<(), MachineError> {
        self.applied = RECORDS.decode(snapshot)?;
        Ok(())
    }
}

/// The same machine kept in RocksDB: each command under `0x01 ‖ log index`.
#[derive(Default)]
struct DurableRecorder {
    applied: Vec<(u64, Vec<u8>)>,
}

const RECORD_PREFIX: u8 = 0x01;

fn record_key(index: u64) -> Vec<u8> {
    let mut key = vec![RECORD_PREFIX];
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn scan_records(view: &StateView<'_>) -> Result<Vec<(u64, Vec<u8>)>, MachineError> {
    let mut records = Vec::new();
    view.scan(&[RECORD_PREFIX], |key, value| {
        let index = u64::from_be_bytes(
            key[1..9]
                .try_into()
                .map_err(|_| MachineError::Inconsistent("short key".into()))?,
        );
        records.push((index, value));
        Ok(())
    })?;
    Ok(records)
}

impl StateMachine for DurableRecorder {
    const DURABLE: bool = true;

    fn apply(&mut self, log_index: u64, command: &[u8], writes: &mut StateWrites<'_>) -> Vec<u8> {
        writes.put(&record_key(log_index), command).unwrap();
        self.applied.push((log_index, command.to_vec()));
        command.to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(
        &mut self,
        snapshot: &[u8],
        writes: &mut StateWrites<'_>,
    ) -> Result<(), MachineError> {
        self.applied = RECORDS.decode(snapshot)?;
        for (index, command) in &self.applied {
            writes.put(&record_key(*index), command)?;
        }
        Ok(())
    }
    fn load(&mut self, view: &StateView<'_>) -> Result<(), MachineError> {
        self.applied = scan_records(view)?;
        Ok(())
    }
    fn export(view: &StateView<'_>) -> Result<Vec<u8>, MachineError> {
        Ok(RECORDS.encode(&scan_records(view)?))
    }
}

struct Builder;

impl<S: StateMachine + Default>
    StoreBuilder<TypeConfig, LogStore, StateMachineStore<S>, tempfile::TempDir> for Builder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<S>), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::from_bytes(rand_key());
        let storage = NodeStorage::open(&dir.path().join("db"), Arc::new(key)).unwrap();
        let log = LogStore::new(7, storage.clone());
        let sm = StateMachineStore::open(7, storage, S::default())?;
        Ok((dir, log, sm))
    }
}

fn rand_key() -> [u8; 32] {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

#[test]
fn rocksdb_store_passes_openraft_suite_with_an_in_memory_machine() {
    if let Err(e) = Suite::<_, _, StateMachineStore<Recorder>, _, _>::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}

#[test]
fn rocksdb_store_passes_openraft_suite_with_a_durable_machine() {
    if let Err(e) = Suite::<_, _, StateMachineStore<DurableRecorder>, _, _>::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}

/// A durable machine reopened after applies (and no snapshot) has exactly the applied
/// state and log id, read back from RocksDB.
#[tokio::test]
async fn durable_machine_reopens_with_its_applied_state() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let dir = tempfile::tempdir().unwrap();
    let key = rand_key();
    let open = || {
        let storage =
            NodeStorage::open(&dir.path().join("db"), Arc::new(DataKey::from_bytes(key))).unwrap();
        StateMachineStore::open(9, storage, DurableRecorder::default()).unwrap()
    };
    let entry = |index: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(conifer_raft::types::Command(vec![index as u8; 3])),
    };
    {
        let mut sm = open();
        sm.apply((1..=5).map(entry)).await.unwrap();
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }
    let mut sm = open();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(5));
    let handle = sm.handle();
    let state = handle.read();
    assert_eq!(state.applied.len(), 5);
    assert_eq!(state.applied[4], (5, vec![5u8; 3]));
}
