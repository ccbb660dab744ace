//! openraft's storage test suite against the RocksDB log store and the state-machine
//! adapter, with every value sealed by the node's AES-256-GCM data key.

use std::sync::Arc;

use conifer_node::crypto::DataKey;
use conifer_raft::log_store::LogStore;
use conifer_raft::state_machine::{StateMachine, StateMachineStore};
use conifer_raft::{NodeStorage, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

/// A trivial deterministic machine: remembers every command it applied.
#[derive(Default)]
struct Recorder {
    applied: Vec<Vec<u8>>,
}

impl StateMachine for Recorder {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        self.applied.push(command.to_vec());
        command.to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        bincode::serialize(&self.applied).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.applied = bincode::deserialize(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Recorder>, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<Recorder>), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::from_bytes(rand_key());
        let storage = NodeStorage::open(&dir.path().join("db"), Arc::new(key)).unwrap();
        let log = LogStore::new(7, storage.clone());
        let sm = StateMachineStore::open(7, storage, Recorder::default())?;
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
fn rocksdb_store_passes_openraft_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
