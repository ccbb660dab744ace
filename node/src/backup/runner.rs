//! The jobs of backups and restores, run on every node for the indexes it holds replicas
//! of (see `control::backups` for the claims that keep one runner per job), and the
//! collector that removes from the backup store what the control plane no longer lists.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conifer_raft::group_state::StateView;
use conifer_raft::MachineError;

use super::archive::{
    self, attempt_prefix, chunk_key, manifest_key, ArchiveError, ChunkWriter, Manifest, SealedChunk,
};
use super::store::{BackupStore, ClusterStore};
use crate::control::backups::{
    Backup, BackupCommand, BackupContents, BackupStatus, JobClaim, RestoreJob, CLAIM_TIMEOUT_MS,
    HEARTBEAT_MS,
};
use crate::control::state::{Command, Output};
use crate::control::{ControlError, ControlPlane};
use crate::crypto::DataKey;
use crate::dataplane::router::{Router, Target};
use crate::dataplane::DataError;
use crate::shard::command::{Record, ShardCommand};

/// How often a node looks for jobs to claim.
pub const JOB_POLL_MS: u64 = 1_000;
/// How often the group-0 leader removes from the store what no backup lists.
pub const COLLECT_INTERVAL_MS: u64 = 60_000;
/// Most records of one restore write (one Raft entry of the target shard).
pub const RESTORE_BATCH_RECORDS: usize = 1_000;
/// Most plaintext bytes of one restore write.
pub const RESTORE_BATCH_BYTES: usize = 2 << 20;
/// Attempts of one restore write that found the target shard unavailable.
pub const RESTORE_WRITE_ATTEMPTS: u32 = 10;
/// Longest a restore waits for its target index's shard group to have a leader here.
pub const TARGET_WAIT_MS: u64 = 60_000;
/// Most backup and restore jobs one node runs at once; the others wait for a later pass
/// (or another node).
pub const MAX_CONCURRENT_JOBS_PER_NODE: usize = 2;

/// Why a job stopped.
#[derive(Debug)]
enum JobError {
    /// Another runner holds the job now: this one stops without a word.
    ClaimLost,
    /// Something that may pass (the control plane or the new shard unavailable, the store
    /// unreachable): this runner stops without recording a failure; its claim goes stale
    /// and the job is resumed (here or elsewhere).
    Abandoned(String),
    /// The job cannot be done; recorded as its failure.
    Failed(String),
}

impl From<ArchiveError> for JobError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Corrupt(m) => JobError::Failed(m),
            ArchiveError::Store(e) => JobError::Abandoned(e.to_string()),
        }
    }
}

impl From<DataError> for JobError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Unavailable(m) | DataError::Indeterminate(m) => JobError::Abandoned(m),
            other => JobError::Failed(other.to_string()),
        }
    }
}

/// A failure of the backup store while writing a backup: logged whole on this node, told to
/// the tenant without where the store is.
fn store_failed(e: impl std::fmt::Display) -> JobError {
    tracing::warn!("backup store: {e}");
    JobError::Failed("the backup store failed; the node's log has the details".into())
}

/// A job's heartbeat: proposed every [`HEARTBEAT_MS`] while the job runs, whatever step it
/// is in; `lost` once the control plane refused it (another runner holds the job) or has
/// not taken one for [`CLAIM_TIMEOUT_MS`]. Stops when dropped.
struct Beat {
    lost: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Beat {
    fn start(control: ControlPlane, id: String, attempt: String) -> Self {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                let command = Command::Backup(BackupCommand::Heartbeat {
                    id: id.clone(),
                    attempt: attempt.clone(),
                    at_ms: now_ms(),
                });
                match control.propose(command).await {
                    Ok(_) => last_ok = Instant::now(),
                    Err(ControlError::Rejected(_)) => break,
                    Err(e) => {
                        tracing::debug!(job = %id, "heartbeat: {e}");
                        if last_ok.elapsed() >= Duration::from_millis(CLAIM_TIMEOUT_MS) {
                            break;
                        }
                    }
                }
            }
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        Self { lost, task }
    }

    /// Whether the job must stop: another runner may hold it now.
    fn check(&self) -> Result<(), JobError> {
        if self.lost.load(std::sync::atomic::Ordering::Acquire) {
            Err(JobError::ClaimLost)
        } else {
            Ok(())
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since the epoch, by this node's clock.
fn now_ms() -> u64 {
    crate::audit::now_ms()
}

/// The backup and restore jobs of this node, and the store they use.
#[derive(Clone)]
pub struct Backups {
    inner: Arc<Inner>,
}

struct Inner {
    router: Router,
    store: BackupStore,
    max_project_bytes: u64,
    chunk_bytes: usize,
    running: Mutex<HashSet<String>>,
}

/// Marks a job as running here for as long as it lives.
struct Running(Arc<Inner>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Backups {
    /// The jobs of a node routing through `router`, keeping backups in `store` in chunks of
    /// about `chunk_bytes`, holding each project to `max_project_bytes` of them.
    pub fn new(
        router: Router,
        store: BackupStore,
        max_project_bytes: u64,
        chunk_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                router,
                store,
                max_project_bytes,
                chunk_bytes,
                running: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The backup store, as this cluster's folder of it.
    pub fn store(&self) -> ClusterStore<'_> {
        let cluster = self.control().read(|s| s.cluster_id.clone());
        ClusterStore::new(&self.inner.store, &cluster)
    }

    /// The backup store as configured (`--backup-dir` or the bucket), for the node's log.
    pub fn store_location(&self) -> String {
        self.inner.store.describe()
    }

    /// The project's limit of backup bytes (`--max-backup-bytes-per-project`).
    pub fn max_project_bytes(&self) -> u64 {
        self.inner.max_project_bytes
    }

    fn control(&self) -> &ControlPlane {
        self.inner.router.control()
    }

    /// Starts the job loop and, apart from it, the collector.
    pub fn spawn(&self) {
        let jobs = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(JOB_POLL_MS)).await;
                jobs.claim_pass().await;
            }
        });
        let collector = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(COLLECT_INTERVAL_MS)).await;
                if let Err(e) = collector.collect().await {
                    tracing::warn!("backup store collection: {e}");
                }
            }
        });
    }

    fn running_count(&self) -> usize {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Marks `id` as running here; `None` when it already is.
    fn start_running(&self, id: &str) -> Option<Running> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
            .then(|| Running(self.inner.clone(), id.to_string()))
    }

    /// On the control-plane leader: fails the jobs whose index is gone — a pending backup
    /// of a deleted index, a restore whose new index was deleted — which no node would
    /// ever claim again.
    async fn fail_orphans(&self) {
        let me = self.control().node_id();
        if self.control().raft().metrics().borrow().current_leader != Some(me) {
            return;
        }
        let commands: Vec<BackupCommand> = self.control().read(|s| {
            let gone = |group: u64| s.index_of_group(group).is_none();
            let backups = s
                .backups
                .values()
                .filter(|b| b.status == BackupStatus::Pending && gone(b.source_group))
                .map(|b| BackupCommand::Fail {
                    id: b.id.clone(),
                    attempt: None,
                    reason: format!(
                        "index '{}' was deleted before the backup was written",
                        b.source_index
                    ),
                });
            let restores = s
                .restore_jobs
                .values()
                .filter(|j| j.running())
                .filter(|j| gone(j.target_group))
                .map(|j| BackupCommand::FailRestore {
                    id: j.id.clone(),
                    attempt: None,
                    reason: format!("index '{}' was deleted during the restore", j.target_index),
                    at: crate::now_rfc3339(),
                });
            backups.chain(restores).collect()
        });
        for command in commands {
            if let Err(e) = self.control().propose(Command::Backup(command)).await {
                tracing::debug!("failing a job whose index is gone: {e}");
            }
        }
    }

    /// Claims the pending jobs this node can run (it holds a replica of the index) and
    /// whose runner is silent, and runs each in the background.
    pub async fn claim_pass(&self) {
        self.fail_orphans().await;
        let me = self.control().node_id();
        let now = now_ms();
        let free = |claim: &Option<JobClaim>| {
            claim.as_ref().is_none_or(|c| {
                c.node == me || now.saturating_sub(c.heartbeat_ms) >= CLAIM_TIMEOUT_MS
            })
        };
        let (backups, restores): (Vec<Backup>, Vec<RestoreJob>) = self.control().read(|s| {
            let hosts = |group: u64| {
                s.index_of_group(group)
                    .is_some_and(|i| i.replicas.contains(&me))
            };
            (
                s.backups
                    .values()
                    .filter(|b| b.status == BackupStatus::Pending)
                    .filter(|b| hosts(b.source_group) && free(&b.claim))
                    .cloned()
                    .collect(),
                s.restore_jobs
                    .values()
                    .filter(|j| j.running())
                    .filter(|j| hosts(j.target_group) && free(&j.claim))
                    .cloned()
                    .collect(),
            )
        });
        for backup in backups {
            // A shard group without a leader yet (a new index) is backed up once it has one.
            let led = self
                .inner
                .router
                .shards()
                .get(backup.source_group)
                .is_some_and(|s| s.raft.metrics().borrow().current_leader.is_some());
            if !led || self.running_count() >= MAX_CONCURRENT_JOBS_PER_NODE {
                continue;
            }
            let Some(running) = self.start_running(&backup.id) else {
                continue;
            };
            let claim = new_claim(me);
            let command = Command::Backup(BackupCommand::Claim {
                id: backup.id.clone(),
                claim: claim.clone(),
            });
            if let Err(e) = self.control().propose(command).await {
                tracing::debug!(backup = %backup.id, "claim: {e}");
                continue;
            }
            let jobs = self.clone();
            tokio::spawn(async move {
                let _running = running;
                jobs.backup_job(backup, claim.attempt).await;
            });
        }
        for job in restores {
            if self.inner.router.shards().get(job.target_group).is_none()
                || self.running_count() >= MAX_CONCURRENT_JOBS_PER_NODE
            {
                continue;
            }
            let Some(running) = self.start_running(&job.id) else {
                continue;
            };
            let claim = new_claim(me);
            let command = Command::Backup(BackupCommand::ClaimRestore {
                id: job.id.clone(),
                claim: claim.clone(),
            });
            let job = match self.control().propose(command).await {
                Ok(Output::RestoreJob(job)) => job,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(job = %job.id, "claim: {e}");
                    continue;
                }
            };
            let jobs = self.clone();
            tokio::spawn(async move {
                let _running = running;
                jobs.restore_job(job, claim.attempt).await;
            });
        }
    }

    /// The data key of `backup`, unwrapped through its project's key (or KMS key).
    pub async fn key_of(&self, backup: &Backup) -> Result<DataKey, JobFailure> {
        let project_key = self
            .control()
            .read(|s| s.projects.get(&backup.project_id).map(|p| p.key.clone()))
            .ok_or_else(|| {
                JobFailure::Refused(format!("project {} no longer exists", backup.project_id))
            })?;
        self.inner
            .router
            .shards()
            .keys()
            .backup_key(&backup.project_id, &project_key, &backup.id, &backup.key)
            .await
            .map_err(JobFailure::Key)
    }

    /// Checks that `backup` can be restored before anything is created: its key unwraps,
    /// its manifest is the one written, and every chunk is present, whole and unchanged.
    pub async fn check_restorable(&self, backup: &Backup) -> Result<Manifest, JobFailure> {
        let key = self.key_of(backup).await?;
        let store = self.store();
        let manifest = archive::read_manifest(&store, &key, backup)
            .await
            .map_err(JobFailure::from)?;
        archive::verify_chunks(&store, backup, &manifest)
            .await
            .map_err(JobFailure::from)?;
        Ok(manifest)
    }

    /// Writes `backup` under `attempt` and records the outcome.
    async fn backup_job(&self, backup: Backup, attempt: String) {
        tracing::info!(backup = %backup.id, index = %backup.source_index, "writing backup");
        let started = Instant::now();
        let beat = Beat::start(self.control().clone(), backup.id.clone(), attempt.clone());
        let written = self.write_backup(&backup, &attempt, &beat).await;
        drop(beat);
        let command = match written {
            Ok(contents) => {
                tracing::info!(
                    backup = %backup.id,
                    records = contents.record_count,
                    bytes = contents.size_bytes,
                    log_position = contents.log_position,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "backup written"
                );
                BackupCommand::Complete {
                    id: backup.id.clone(),
                    contents,
                }
            }
            Err(JobError::ClaimLost) => return,
            Err(JobError::Abandoned(why)) => {
                tracing::warn!(backup = %backup.id, "backup stopped, to be resumed: {why}");
                return;
            }
            Err(JobError::Failed(reason)) => {
                tracing::warn!(backup = %backup.id, "backup failed: {reason}");
                BackupCommand::Fail {
                    id: backup.id.clone(),
                    attempt: Some(attempt.clone()),
                    reason,
                }
            }
        };
        if let Err(e) = self.control().propose(Command::Backup(command)).await {
            tracing::warn!(backup = %backup.id, "recording the backup's outcome: {e}");
        }
    }

    /// A consistent copy of the source shard: the state after one log position, read from
    /// a frozen RocksDB view of this node's replica (taken once it applied every write
    /// acknowledged before, without holding up writes), sealed in chunks into the store,
    /// then the manifest.
    async fn write_backup(
        &self,
        backup: &Backup,
        attempt: &str,
        beat: &Beat,
    ) -> Result<BackupContents, JobError> {
        // What the project may still hold: the backup stops once it would pass that.
        let budget = backup.max_project_bytes.saturating_sub(
            self.control()
                .read(|s| s.backup_bytes_of(&backup.project_id)),
        );
        let store = self.store();
        let shard = self
            .inner
            .router
            .shards()
            .get(backup.source_group)
            .ok_or_else(|| JobError::Failed("the source shard has no replica here".into()))?;
        shard
            .group_client(self.control().peers())
            .linearizable_barrier()
            .await
            .map_err(|e| JobError::Abandoned(format!("source shard: {e}")))?;
        let key = Arc::new(
            self.key_of(backup)
                .await
                .map_err(|e| JobError::Failed(e.to_string()))?,
        );
        let prefix = attempt_prefix(&backup.project_id, &backup.id, attempt);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SealedChunk>(2);
        let storage = self.inner.router.shards().storage().clone();
        let group = backup.source_group;
        let (id, at) = (backup.id.clone(), attempt.to_string());
        let chunk_bytes = self.inner.chunk_bytes;
        let producer_key = key.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let view = StateView::frozen(&storage, group);
            let position = conifer_raft::state_machine::applied_index_of(&view)
                .map_err(|e| MachineError::Inconsistent(e.to_string()))?;
            let mut writer = ChunkWriter::new(&producer_key, &id, &at, chunk_bytes);
            let send = |chunk: SealedChunk| {
                tx.blocking_send(chunk)
                    .map_err(|_| MachineError::Inconsistent("the backup writer stopped".into()))
            };
            let names = crate::shard::store::scan_records(&view, |namespace, id, record| {
                match writer.add(namespace, id, record) {
                    Some(chunk) => send(chunk),
                    None => Ok(()),
                }
            })?;
            for name in &names {
                writer.namespace(name);
            }
            let (last, namespaces) = writer.finish();
            if let Some(chunk) = last {
                send(chunk)?;
            }
            Ok::<_, MachineError>((position, namespaces))
        });
        let mut chunks = Vec::new();
        let mut size_bytes = 0u64;
        while let Some(chunk) = rx.recv().await {
            beat.check()?;
            if chunk.n != chunks.len() {
                return Err(JobError::Failed("chunks out of order".into()));
            }
            size_bytes += chunk.entry.sealed_bytes;
            if size_bytes > budget {
                return Err(JobError::Failed(format!(
                    "the backup passed {budget} bytes, all its project may still hold \
                     (--max-backup-bytes-per-project {}); delete backups or collections and \
                     back up again",
                    backup.max_project_bytes
                )));
            }
            store
                .put(&chunk_key(&prefix, chunk.n), chunk.bytes)
                .await
                .map_err(store_failed)?;
            chunks.push(chunk.entry);
        }
        beat.check()?;
        let (log_position, namespaces) = producer
            .await
            .map_err(|e| JobError::Failed(format!("reading the shard: {e}")))?
            .map_err(|e| JobError::Failed(format!("reading the shard: {e}")))?;
        let record_count = chunks.iter().map(|c| c.records).sum();
        let records_digest = archive::set_digest(&namespaces);
        let manifest = Manifest {
            backup_id: backup.id.clone(),
            project_id: backup.project_id.clone(),
            attempt: attempt.to_string(),
            source_index: backup.source_index.clone(),
            dimension: backup.dimension,
            metric: backup.metric.as_str().to_string(),
            log_position,
            record_count,
            namespaces,
            records_digest: records_digest.clone(),
            chunks: chunks.clone(),
            created_at: crate::now_rfc3339(),
        };
        let sealed = archive::seal_manifest(&key, &manifest);
        let manifest_sha256 = archive::sha256_hex(&sealed);
        size_bytes += sealed.len() as u64;
        store
            .put(&manifest_key(&prefix), sealed)
            .await
            .map_err(store_failed)?;
        Ok(BackupContents {
            attempt: attempt.to_string(),
            log_position,
            record_count,
            namespace_count: manifest.namespaces.len() as u64,
            chunks: chunks.len() as u32,
            size_bytes,
            records_digest,
            manifest_sha256,
        })
    }

    /// Runs restore `job` under `attempt` and records the outcome; a failure removes the
    /// target index.
    async fn restore_job(&self, job: RestoreJob, attempt: String) {
        tracing::info!(job = %job.id, index = %job.target_index, from_chunk = job.chunks_done, "restoring");
        let started = Instant::now();
        let beat = Beat::start(self.control().clone(), job.id.clone(), attempt.clone());
        let restored = self.restore(&job, &attempt, &beat).await;
        drop(beat);
        let command = match restored {
            Ok(()) => {
                tracing::info!(
                    job = %job.id,
                    index = %job.target_index,
                    records = job.records_total,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restore complete"
                );
                BackupCommand::FinishRestore {
                    id: job.id.clone(),
                    attempt,
                    at: crate::now_rfc3339(),
                }
            }
            Err(JobError::ClaimLost) => return,
            Err(JobError::Abandoned(why)) => {
                tracing::warn!(job = %job.id, "restore stopped, to be resumed: {why}");
                return;
            }
            Err(JobError::Failed(reason)) => {
                tracing::warn!(job = %job.id, "restore failed: {reason}");
                BackupCommand::FailRestore {
                    id: job.id.clone(),
                    attempt: Some(attempt),
                    reason,
                    at: crate::now_rfc3339(),
                }
            }
        };
        if let Err(e) = self.control().propose(Command::Backup(command)).await {
            tracing::warn!(job = %job.id, "recording the restore's outcome: {e}");
        }
    }

    /// The local replica of `group` once its group has a leader.
    async fn target(&self, group: u64) -> Result<Target, JobError> {
        let deadline = Instant::now() + Duration::from_millis(TARGET_WAIT_MS);
        loop {
            if let Some(target) = self.inner.router.local_target(group) {
                if target
                    .shard
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .is_some()
                {
                    return Ok(target);
                }
            }
            if Instant::now() >= deadline {
                return Err(JobError::Abandoned(format!(
                    "the new index's shard group {group} has no leader after {TARGET_WAIT_MS} ms"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes one batch into the target shard, again while the shard is unavailable (an
    /// upsert of the same records is idempotent, so a write whose outcome is unknown is
    /// simply sent again).
    async fn write_batch(
        &self,
        target: &Target,
        namespace: &str,
        records: Vec<(String, Record)>,
    ) -> Result<(), JobError> {
        let router = &self.inner.router;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let command = match router.project_records_elsewhere(target).await? {
                None => ShardCommand::Upsert {
                    namespace: namespace.to_string(),
                    records: records.clone(),
                },
                Some(elsewhere) => ShardCommand::UpsertInProject {
                    namespace: namespace.to_string(),
                    records: records.clone(),
                    elsewhere,
                    project_limit: router.max_records_per_project(),
                },
            };
            match router.write(target, command).await {
                Ok(_) => return Ok(()),
                Err(DataError::Unavailable(m) | DataError::Indeterminate(m))
                    if attempt < RESTORE_WRITE_ATTEMPTS =>
                {
                    tracing::debug!("restore write: {m}; again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn restore(&self, job: &RestoreJob, attempt: &str, beat: &Beat) -> Result<(), JobError> {
        let backup = self
            .control()
            .read(|s| s.backups.get(&job.backup_id).cloned())
            .ok_or_else(|| JobError::Failed(format!("backup '{}' is gone", job.backup_id)))?;
        let key = self
            .key_of(&backup)
            .await
            .map_err(|e| match e.error_code() {
                "UNAVAILABLE" => JobError::Abandoned(e.to_string()),
                _ => JobError::Failed(e.to_string()),
            })?;
        let store = &self.store();
        let manifest = archive::read_manifest(store, &key, &backup).await?;
        let target = self.target(job.target_group).await?;
        if job.chunks_done == 0 {
            for ns in &manifest.namespaces {
                let command = ShardCommand::CreateNamespace {
                    name: ns.name.clone(),
                };
                match self.inner.router.write(&target, command).await {
                    Ok(_) | Err(DataError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut restored = job.records_restored;
        for n in job.chunks_done as usize..manifest.chunks.len() {
            beat.check()?;
            let records = archive::read_chunk(store, &key, &backup, &manifest, n).await?;
            for (namespace, batch) in batches(records) {
                self.write_batch(&target, &namespace, batch).await?;
            }
            restored += manifest.chunks[n].records;
            // Tests slow a restore down here to stop its node mid-job.
            #[cfg(feature = "failpoints")]
            if let Some(ms) = fail::eval("conifer::restore::after_chunk", |arg| {
                arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(1_000)
            }) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let progress = Command::Backup(BackupCommand::RestoreProgress {
                id: job.id.clone(),
                attempt: attempt.to_string(),
                chunks_done: n as u32 + 1,
                records_restored: restored,
                at_ms: now_ms(),
            });
            match self.control().propose(progress).await {
                Ok(_) => {}
                Err(ControlError::Rejected(_)) => return Err(JobError::ClaimLost),
                Err(e) => return Err(JobError::Abandoned(format!("control plane: {e}"))),
            }
        }
        self.check_restored(&target, &manifest).await
    }

    /// Compares the target replica, once it applied every write of the restore, with the
    /// manifest: each namespace's record count and digest.
    async fn check_restored(&self, target: &Target, manifest: &Manifest) -> Result<(), JobError> {
        target
            .shard
            .group_client(self.control().peers())
            .linearizable_barrier()
            .await
            .map_err(|e| JobError::Abandoned(format!("new index: {e}")))?;
        let machine = target.shard.state.read();
        for ns in &manifest.namespaces {
            let (count, digest) = machine
                .namespace(&ns.name)
                .map(|n| (n.len() as u64, n.digest()))
                .unwrap_or((0, String::new()));
            if count != ns.records || digest != ns.digest {
                return Err(JobError::Failed(format!(
                    "the restored namespace '{}' holds {count} records (digest {digest}); the \
                     backup holds {} (digest {})",
                    ns.name, ns.records, ns.digest
                )));
            }
        }
        let total = machine.record_count() as u64;
        if total != manifest.record_count {
            return Err(JobError::Failed(format!(
                "the new index holds {total} records; the backup holds {}",
                manifest.record_count
            )));
        }
        Ok(())
    }

    /// Removes from this cluster's folder of the store what the control plane lists no
    /// more: deleted projects and backups, failed backups, and attempts other than the one
    /// a backup is or was written by. Runs on the control-plane leader. Only names shaped
    /// like Conifer's ids are looked at (anything else is left alone), and an entry that
    /// cannot be listed or removed is logged and skipped. The store is listed before the
    /// state is read (after a barrier), so a folder a runner has just begun is always known.
    pub async fn collect(&self) -> Result<(), String> {
        let me = Some(self.control().node_id());
        if self.control().raft().metrics().borrow().current_leader != me {
            return Ok(());
        }
        let store = self.store();
        let is_uuid = |name: &str| uuid::Uuid::parse_str(name).is_ok();
        let is_attempt =
            |name: &str| name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
        let mut listed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let projects: Vec<String> = store
            .list("")
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|p| is_uuid(p))
            .collect();
        for project in &projects {
            let backups = match store.list(&format!("{project}/")).await {
                Ok(backups) => backups,
                Err(e) => {
                    tracing::warn!("backup store collection: {e}");
                    continue;
                }
            };
            for backup in backups.into_iter().filter(|b| is_uuid(b)) {
                match store.list(&format!("{project}/{backup}/")).await {
                    Ok(attempts) => {
                        let attempts = attempts.into_iter().filter(|a| is_attempt(a)).collect();
                        listed.insert((project.clone(), backup), attempts);
                    }
                    Err(e) => tracing::warn!("backup store collection: {e}"),
                }
            }
        }
        self.control()
            .linearizable_barrier()
            .await
            .map_err(|e| e.to_string())?;
        let (live_projects, backups) = self.control().read(|s| {
            (
                s.projects.keys().cloned().collect::<HashSet<_>>(),
                s.backups.clone(),
            )
        });
        let mut doomed: Vec<String> = Vec::new();
        for project in &projects {
            if !live_projects.contains(project) {
                tracing::info!(project, "removing the backups of a deleted project");
                doomed.push(format!("{project}/"));
            }
        }
        for ((project, id), attempts) in listed {
            if !live_projects.contains(&project) {
                continue;
            }
            let backup = backups.get(&id).filter(|b| b.project_id == project);
            // A pending backup nobody has claimed yet owns nothing: its files, if any, are
            // an earlier attempt's.
            let keep: Option<String> = backup.and_then(|b| match b.status {
                BackupStatus::Ready => b.contents.as_ref().map(|c| c.attempt.clone()),
                BackupStatus::Pending => b.claim.as_ref().map(|c| c.attempt.clone()),
                BackupStatus::Failed => None,
            });
            if backup.is_none() || backup.is_some_and(|b| b.status == BackupStatus::Failed) {
                tracing::info!(backup = %id, "removing the files of a deleted or failed backup");
                doomed.push(format!("{project}/{id}/"));
                continue;
            }
            for attempt in attempts {
                if Some(&attempt) != keep.as_ref() {
                    tracing::info!(backup = %id, attempt, "removing an abandoned attempt's files");
                    doomed.push(format!("{project}/{id}/{attempt}/"));
                }
            }
        }
        for prefix in doomed {
            if let Err(e) = store.delete_prefix(&prefix).await {
                tracing::warn!("backup store collection: {e}");
            }
        }
        Ok(())
    }
}

/// Why a backup cannot be read or restored, as the API answers it.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    /// Its key does not unwrap (a denied or disabled KMS key: 412; unreachable: 503).
    #[error(transparent)]
    Key(crate::crypto::CryptoError),
    /// Its files are damaged, missing or from elsewhere.
    #[error("{0}")]
    Corrupt(String),
    /// The backup store failed.
    #[error("{0}")]
    Store(String),
    /// It cannot be restored in this state.
    #[error("{0}")]
    Refused(String),
}

impl JobFailure {
    /// Pinecone's error code of the failure (`api::error::CODES` gives its statuses): the
    /// key's own, `FAILED_PRECONDITION` for a damaged backup or a refused state,
    /// `UNAVAILABLE` when the store cannot be reached.
    pub fn error_code(&self) -> &'static str {
        match self {
            JobFailure::Key(e) => e.error_code(),
            JobFailure::Corrupt(_) | JobFailure::Refused(_) => "FAILED_PRECONDITION",
            JobFailure::Store(_) => "UNAVAILABLE",
        }
    }
}

impl From<ArchiveError> for JobFailure {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Corrupt(m) => JobFailure::Corrupt(m),
            ArchiveError::Store(e) => JobFailure::Store(e.to_string()),
        }
    }
}

fn new_claim(node: u64) -> JobClaim {
    JobClaim {
        node,
        attempt: uuid::Uuid::new_v4().simple().to_string(),
        heartbeat_ms: now_ms(),
    }
}

/// A chunk's records as upsert batches: by namespace, each at most
/// [`RESTORE_BATCH_RECORDS`] records and about [`RESTORE_BATCH_BYTES`].
fn batches(records: Vec<(String, String, Record)>) -> Vec<(String, Vec<(String, Record)>)> {
    let mut by_namespace: BTreeMap<String, Vec<(String, Record)>> = BTreeMap::new();
    for (namespace, id, record) in records {
        by_namespace
            .entry(namespace)
            .or_default()
            .push((id, record));
    }
    let mut out = Vec::new();
    for (namespace, records) in by_namespace {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (id, record) in records {
            let size = id.len()
                + record.values.len() * 4
                + record.metadata.as_ref().map_or(0, String::len)
                + record.sparse.as_ref().map_or(0, |(i, _)| i.len() * 8);
            if !batch.is_empty()
                && (batch.len() >= RESTORE_BATCH_RECORDS || bytes + size > RESTORE_BATCH_BYTES)
            {
                out.push((namespace.clone(), std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += size;
            batch.push((id, record));
        }
        if !batch.is_empty() {
            out.push((namespace, batch));
        }
    }
    out
}
