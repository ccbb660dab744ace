//! The shard reconciler: converges the shard groups running on this node to what the
//! control plane says this node should host.
//!
//! Every [`RECONCILE_INTERVAL_MS`] it loads the data keys of each index whose replica set
//! names this node ([`KeyCache::load`]) and starts its Raft group once they unwrap (the
//! lowest-numbered replica initializes the group), proposes `MarkIndexReady` once a group
//! it leads serves, stops (without erasing) a group whose keys expired without a successful
//! unwrap, and stops and erases groups whose index is gone. A restarted or lagging node
//! heals itself through the same loop, and a group stopped for its keys starts again once
//! they unwrap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use conifer_raft::log_store::LogStore;
use conifer_raft::network::NetworkFactory;
use conifer_raft::state_machine::{StateHandle, StateMachineStore};
use conifer_raft::{GroupClient, GroupRegistry, NodeId, NodeStorage, Raft};

use super::engine::EngineConfig;
use super::machine::ShardMachine;
use crate::control::audit::key_state_event;
use crate::control::state::IndexCommand;
use crate::control::state::{Command, Index, IndexState};
use crate::control::ControlPlane;
use crate::crypto::{KeyCache, KeyStatus};

/// Period of the reconciler (and of the check that stops replicas whose keys expired).
pub const RECONCILE_INTERVAL_MS: u64 = 250;
/// How often a node looks for replicas to re-seal after an index key rotation.
pub const RESEAL_CHECK_MS: u64 = 1_000;
/// Keys looked at per re-seal step while the replica's applies and reads wait.
pub const RESEAL_BATCH_KEYS: usize = 256;
/// Most bytes of values rewritten per re-seal step (a saved graph chunk is 4 MiB).
pub const RESEAL_BATCH_BYTES: usize = 8 << 20;
/// Pause between two re-seal steps, so the rewrite leaves the disk and the lock to others.
pub const RESEAL_PAUSE_MS: u64 = 5;
/// Longest wait for a replica's snapshot before its older log entries are purged.
pub const RESEAL_SNAPSHOT_WAIT_MS: u64 = 30_000;
/// Longest a reconciler pass waits for the first unwrap of the keys of indexes it has not
/// loaded yet (all at once); slower ones finish in the background and their groups start
/// on a later pass, so a key provider that does not answer holds up no other index.
pub const FIRST_KEY_LOAD_WAIT_MS: u64 = 2_000;

/// A shard replica running on this node.
#[derive(Clone)]
pub struct HostedShard {
    /// Its Raft group id.
    pub group: u64,
    /// The Raft instance.
    pub raft: Raft,
    /// Read access to its records.
    pub state: StateHandle<ShardMachine>,
}

impl HostedShard {
    /// The client of its group (propose, read index), through this replica and `peers`.
    pub fn group_client(&self, peers: &conifer_raft::network::PeerChannels) -> GroupClient {
        GroupClient::new(self.raft.clone(), peers.clone(), self.group)
    }
}

struct Inner {
    engine: EngineConfig,
    storage: NodeStorage,
    registry: GroupRegistry,
    control: ControlPlane,
    raft_config: Arc<openraft::Config>,
    keys: Arc<KeyCache>,
    shards: RwLock<HashMap<u64, HostedShard>>,
    /// Groups whose keys failed to unwrap, so the failure is logged once, not every pass.
    key_failures: std::sync::Mutex<HashSet<u64>>,
}

/// The shard replicas of this node and their reconciler.
#[derive(Clone)]
pub struct ShardManager {
    inner: Arc<Inner>,
}

impl ShardManager {
    /// A manager hosting shards in `storage` (whose group ciphers are `keys`), registered in
    /// `registry`.
    pub fn new(
        engine: EngineConfig,
        storage: NodeStorage,
        registry: GroupRegistry,
        control: ControlPlane,
        raft_config: Arc<openraft::Config>,
        keys: Arc<KeyCache>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                storage,
                registry,
                control,
                raft_config,
                keys,
                shards: RwLock::new(HashMap::new()),
                key_failures: std::sync::Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The node's engine configuration (`serve --hnsw-*`), which an index's own HNSW
    /// parameters override.
    pub fn engine_defaults(&self) -> EngineConfig {
        self.inner.engine
    }

    /// The node's storage (every shard group's state).
    pub fn storage(&self) -> &NodeStorage {
        &self.inner.storage
    }

    /// The unwrapped keys of the indexes this node hosts.
    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.inner.keys
    }

    /// Unwraps `index`'s keys in the background when they are due
    /// ([`KeyCache::needs_refresh`]; a key provider that does not answer holds up no other
    /// index); stops its group here when they expired without a successful unwrap. Returns
    /// whether they are available (the group may run).
    async fn keep_keys(&self, index: &Index) -> anyhow::Result<bool> {
        let group = index.group_id;
        let keys = &self.inner.keys;
        if keys.needs_refresh(group, &index.keys) {
            let manager = self.clone();
            let index = index.clone();
            tokio::spawn(async move { manager.refresh_keys(index).await });
        }
        if keys.expired(group) {
            self.expire_keys(group, Some(index)).await;
        }
        Ok(keys.available(group))
    }

    /// `group`'s keys expired without a successful unwrap: stops its replica here (keeping
    /// its data), evicts the keys and, when its index still exists, records the transition.
    async fn expire_keys(&self, group: u64, index: Option<&Index>) {
        if self.get(group).is_some() {
            tracing::warn!(
                group,
                "stopping the shard replica: its keys expired without a successful unwrap"
            );
            self.stop(group).await;
        }
        self.inner.keys.evict(group);
        if let Some(index) = index {
            let status = self.inner.keys.status(group);
            self.note_key_state(index, Some(status)).await;
        }
    }

    /// Unwraps `index`'s keys into the cache, logging and auditing
    /// ([`key_state_event`]) when they become unavailable or available again on this node.
    async fn refresh_keys(&self, index: Index) {
        let group = index.group_id;
        let project_key = self
            .inner
            .control
            .read(|s| s.projects.get(&index.project_id).map(|p| p.key.clone()));
        let Some(project_key) = project_key else {
            return;
        };
        let cold = self.inner.keys.status(group) == KeyStatus::NotLoaded;
        let started = std::time::Instant::now();
        let loaded = self
            .inner
            .keys
            .load(
                group,
                &index.project_id,
                &project_key,
                &index.name,
                &index.keys,
            )
            .await;
        match loaded {
            // Recorded once the index is refused, not while its cached keys still serve (a
            // failed refresh at half-life).
            Err(status @ KeyStatus::Unavailable { .. }) if !self.inner.keys.available(group) => {
                self.note_key_state(&index, Some(status)).await
            }
            Ok(()) => {
                if cold {
                    tracing::info!(
                        group,
                        index = %index.name,
                        unwrap_us = started.elapsed().as_micros() as u64,
                        "index keys unwrapped into a cold key cache"
                    );
                }
                self.note_key_state(&index, None).await
            }
            _ => {}
        }
    }

    /// Logs and audits ([`key_state_event`]) `index`'s keys becoming unusable on this node
    /// (`unavailable`: why) or usable again (`None`), once per transition.
    async fn note_key_state(&self, index: &Index, unavailable: Option<KeyStatus>) {
        let group = index.group_id;
        let changed = {
            let mut failures = self
                .inner
                .key_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match unavailable {
                Some(_) => failures.insert(group),
                None => failures.remove(&group),
            }
        };
        if !changed {
            return;
        }
        let key = match &unavailable {
            Some(KeyStatus::Unavailable { key, reason, .. }) => {
                tracing::warn!(group, index = %index.name, "index keys unavailable: {reason}");
                key.clone()
            }
            _ => {
                tracing::info!(group, index = %index.name, "index keys available again");
                self.inner.keys.wrapping_key(&index.keys)
            }
        };
        let draft = self
            .inner
            .control
            .read(|s| key_state_event(s, self.node_id(), index, &key, unavailable.as_ref()));
        let command = Command::RecordObserved(vec![draft]);
        if let Err(e) = self.inner.control.propose(command).await {
            tracing::warn!(group, index = %index.name, "key state event not recorded: {e}");
        }
    }

    /// Re-seals, one after the other, the replicas here of indexes whose data key is being
    /// rotated ([`IndexCommand::RotateKey`]) and that this node has not reported done,
    /// once this node seals with the new version.
    pub async fn reseal_pass(&self) {
        let me = self.node_id();
        let rotating: Vec<Index> = self.inner.control.read(|s| {
            s.indexes
                .values()
                .filter(|i| {
                    i.replicas.contains(&me)
                        && i.keys.versions.len() > 1
                        && !i.keys.resealed.contains(&me)
                })
                .cloned()
                .collect()
        });
        for index in rotating {
            let ready = matches!(
                self.inner.keys.status(index.group_id),
                KeyStatus::Available { version } if version == index.keys.current
            );
            let Some(shard) = self.get(index.group_id).filter(|_| ready) else {
                continue;
            };
            match self.reseal(&shard, &index).await {
                Ok(true) => {
                    let context = crate::audit::AuditContext::internal(
                        "index.key_resealed",
                        crate::audit::ActorRef::system(),
                        me,
                    );
                    let command = Command::Index(IndexCommand::KeyResealed {
                        project_id: index.project_id.clone(),
                        name: index.name.clone(),
                        node: me,
                        version: index.keys.current,
                    });
                    match self.inner.control.propose_as(context, command).await {
                        Ok(_) => tracing::info!(
                            group = index.group_id,
                            index = %index.name,
                            version = index.keys.current,
                            "replica re-sealed under the new data key"
                        ),
                        Err(e) => {
                            tracing::warn!(group = index.group_id, "re-seal not recorded: {e}")
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(group = index.group_id, index = %index.name, "re-seal: {e}")
                }
            }
        }
    }

    /// Re-seals `shard`'s state under its current data key in batches (its applies and reads
    /// wait for each batch, a few ms), then snapshots it and purges its log up to the
    /// snapshot, so no entry sealed with an older version stays. Returns whether nothing of
    /// the replica is sealed with an older version any more (else the next pass goes on).
    async fn reseal(&self, shard: &HostedShard, index: &Index) -> anyhow::Result<bool> {
        use conifer_raft::storage::{CF_RAFT_LOG, CF_STATE};
        let storage = &self.inner.storage;
        let group = shard.group;
        let mut from = None;
        let mut rewritten = 0;
        loop {
            let (state, batch_storage, start) = (shard.state.clone(), storage.clone(), from.take());
            let (n, next) = tokio::task::spawn_blocking(move || {
                state.exclusive(|| {
                    batch_storage.reseal(
                        CF_STATE,
                        group,
                        start,
                        RESEAL_BATCH_KEYS,
                        RESEAL_BATCH_BYTES,
                    )
                })
            })
            .await??;
            rewritten += n;
            #[cfg(feature = "failpoints")]
            if n > 0 {
                fail::fail_point!("conifer::index_rotation::after_batch");
            }
            match next {
                Some(key) => from = Some(key),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(RESEAL_PAUSE_MS)).await;
        }
        if rewritten > 0 {
            tracing::info!(
                group,
                index = %index.name,
                values = rewritten,
                version = index.keys.current,
                "re-sealed the replica's stored values under the new data key"
            );
        }
        if storage.stale_values(CF_RAFT_LOG, group)? > 0 {
            // Log entries are not rewritten in place (a truncation may replace one at the
            // same index meanwhile): a snapshot, then a purge up to it, removes them.
            // A new snapshot only when entries were applied since the last one (stale
            // entries not applied yet wait for a later pass).
            let applied = shard.state.applied_index();
            let snapshot_at = || {
                shard
                    .raft
                    .metrics()
                    .borrow()
                    .snapshot
                    .map_or(0, |s| s.index)
            };
            if snapshot_at() < applied {
                shard.raft.trigger().snapshot().await?;
                let deadline =
                    std::time::Instant::now() + Duration::from_millis(RESEAL_SNAPSHOT_WAIT_MS);
                while snapshot_at() < applied {
                    if std::time::Instant::now() >= deadline {
                        anyhow::bail!("no snapshot of group {group} at {applied} yet");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            shard.raft.trigger().purge_log(snapshot_at()).await?;
            return Ok(false);
        }
        Ok(storage.stale_values(CF_STATE, group)? == 0)
    }

    /// The replica of shard group `group`, if hosted here.
    pub fn get(&self, group: u64) -> Option<HostedShard> {
        self.inner
            .shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Every shard replica on this node, by group id.
    pub fn hosted(&self) -> Vec<HostedShard> {
        let shards = self.inner.shards.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<HostedShard> = shards.values().cloned().collect();
        all.sort_by_key(|s| s.group);
        all
    }

    fn node_id(&self) -> NodeId {
        self.inner.control.node_id()
    }

    /// Stops (keeping their data) the replicas whose keys expired without a successful
    /// unwrap, and evicts the keys.
    pub async fn enforce_key_expiry(&self) {
        for shard in self.hosted() {
            if self.inner.keys.expired(shard.group) {
                let index = self
                    .inner
                    .control
                    .read(|s| s.index_of_group(shard.group).cloned());
                self.expire_keys(shard.group, index.as_ref()).await;
            }
        }
    }

    /// Runs the reconciler forever, and beside it the check that stops replicas whose keys
    /// expired (on its own timer, so a long vector-index rebuild does not delay it).
    pub fn spawn(&self) {
        let expiry = self.clone();
        tokio::spawn(async move {
            loop {
                expiry.enforce_key_expiry().await;
                tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS)).await;
            }
        });
        let resealer = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(RESEAL_CHECK_MS)).await;
                resealer.reseal_pass().await;
            }
        });
        let manager = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = manager.reconcile_once().await {
                    tracing::warn!("shard reconcile: {e}");
                }
                manager.maintain().await;
                tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS)).await;
            }
        });
    }

    /// One pass of the reconciler.
    pub async fn reconcile_once(&self) -> anyhow::Result<()> {
        let me = self.node_id();
        let (wanted, next_group_id): (Vec<Index>, u64) = self.inner.control.read(|s| {
            (
                s.indexes
                    .values()
                    .filter(|i| i.replicas.contains(&me))
                    .cloned()
                    .collect(),
                s.next_group_id,
            )
        });
        let wanted_groups: BTreeMap<u64, &Index> = wanted.iter().map(|i| (i.group_id, i)).collect();

        // First unwraps (a start, a new index), all at once and for a bounded time.
        let keys = &self.inner.keys;
        let first: Vec<_> = wanted
            .iter()
            .filter(|i| {
                keys.status(i.group_id) == KeyStatus::NotLoaded
                    && keys.needs_refresh(i.group_id, &i.keys)
            })
            .map(|index| {
                let manager = self.clone();
                let index = index.clone();
                tokio::spawn(async move { manager.refresh_keys(index).await })
            })
            .collect();
        if !first.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_millis(FIRST_KEY_LOAD_WAIT_MS),
                futures::future::join_all(first),
            )
            .await;
        }

        for index in &wanted {
            if !self.keep_keys(index).await? {
                continue;
            }
            let shard = match self.get(index.group_id) {
                Some(shard) => shard,
                None => self.start(index).await?,
            };
            if !shard.raft.is_initialized().await? && index.replicas.iter().min() == Some(&me) {
                let membership = self.inner.control.membership();
                let nodes: Option<BTreeMap<_, _>> = index
                    .replicas
                    .iter()
                    .map(|id| membership.get_node(id).map(|n| (*id, n.clone())))
                    .collect();
                if let Some(nodes) = nodes {
                    tracing::info!(group = index.group_id, index = %index.name, "initializing shard group");
                    if let Err(e) = shard.raft.initialize(nodes).await {
                        tracing::warn!(group = index.group_id, "initialize: {e}");
                    }
                }
            }
            let leader = shard.raft.metrics().borrow().current_leader;
            // A restored index turns ready when its restore job finishes.
            if index.state == IndexState::Initializing
                && index.restore.is_none()
                && leader == Some(me)
            {
                let command = Command::Index(IndexCommand::MarkReady {
                    group_id: index.group_id,
                });
                if let Err(e) = self.inner.control.propose(command).await {
                    tracing::debug!(group = index.group_id, "mark ready: {e}");
                }
            }
        }

        let hosted: Vec<u64> = self
            .inner
            .shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for group in hosted {
            if !wanted_groups.contains_key(&group) && group < next_group_id {
                self.stop_and_erase(group).await?;
            }
        }
        // Groups left on disk by an index deleted while this node was down.
        for group in self.inner.storage.groups_with_state()? {
            if group != 0
                && group < next_group_id
                && !wanted_groups.contains_key(&group)
                && self.get(group).is_none()
            {
                tracing::info!(
                    group,
                    "erasing data of a shard group this node no longer hosts"
                );
                self.inner.storage.delete_group(group)?;
            }
        }
        Ok(())
    }

    /// Runs the vector-index rebuilds the hosted shards ask for, one at a time, each built
    /// on a blocking thread and swapped in under the shard's read lock; then asks for a Raft
    /// snapshot of every shard whose HNSW index is new or changed enough, which saves it.
    pub async fn maintain(&self) {
        for shard in self.hosted() {
            if shard.state.read().has_unsaved_index() {
                if let Err(e) = shard.raft.trigger().snapshot().await {
                    tracing::debug!(group = shard.group, "snapshot to save vector index: {e}");
                }
            }
            let jobs = shard.state.read().rebuild_jobs();
            for job in jobs {
                let (group, kind, vectors) = (shard.group, job.kind(), job.len());
                let started = std::time::Instant::now();
                let built = match tokio::task::spawn_blocking(move || job.build()).await {
                    Ok(Ok(built)) => built,
                    Ok(Err(e)) => {
                        tracing::warn!(group, "vector index rebuild failed: {e}");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(group, "vector index rebuild panicked: {e}");
                        continue;
                    }
                };
                match shard.state.read().install(built) {
                    Ok(true) => tracing::info!(
                        group,
                        ?kind,
                        vectors,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "vector index rebuilt"
                    ),
                    Ok(false) => tracing::debug!(group, "rebuilt namespace was replaced meanwhile"),
                    Err(e) => tracing::warn!(group, "installing rebuilt vector index: {e}"),
                }
            }
        }
    }

    async fn start(&self, index: &Index) -> anyhow::Result<HostedShard> {
        let group = index.group_id;
        let storage = self.inner.storage.clone();
        let engine = match &index.hnsw {
            Some(params) => params.apply_to(self.inner.engine),
            None => self.inner.engine,
        };
        let machine = ShardMachine::new(index.dimension as usize, index.metric, engine);
        let sm = StateMachineStore::open(group, storage.clone(), machine)?;
        let state = sm.handle();
        let log = LogStore::new(group, storage);
        let network = NetworkFactory::new(group, self.inner.registry.peers().clone());
        let raft = Raft::new(
            self.node_id(),
            self.inner.raft_config.clone(),
            network,
            log,
            sm,
        )
        .await?;
        self.inner.registry.insert(group, raft.clone());
        conifer_raft::registry::elect_if_sole_voter(&raft, self.node_id()).await;
        let shard = HostedShard { group, raft, state };
        self.inner
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, shard.clone());
        tracing::info!(group, index = %index.name, "shard replica started");
        Ok(shard)
    }

    /// Stops the replica of `group` on this node, keeping its data.
    async fn stop(&self, group: u64) {
        let shard = self
            .inner
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        self.inner.registry.remove(group);
        if let Some(shard) = shard {
            let _ = shard.raft.shutdown().await;
        }
    }

    async fn stop_and_erase(&self, group: u64) -> anyhow::Result<()> {
        self.stop(group).await;
        self.inner.storage.delete_group(group)?;
        self.inner.keys.forget(group);
        tracing::info!(group, "shard replica stopped and erased");
        Ok(())
    }
}
