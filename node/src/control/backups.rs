//! Backups and collections of a project's indexes, and the restore jobs that create new
//! indexes from them (Pinecone's "backups and collections", self-hosted).
//!
//! A backup (or a collection: the same thing addressed by a unique name, Pinecone's older
//! form) is made in the background by a node holding a replica of the source index: it
//! claims the backup ([`BackupCommand::Claim`]), writes sealed chunks and a manifest to the
//! backup store under its own attempt id (`backup::archive`), and reports the result
//! ([`BackupCommand::Complete`]); only the attempt holding the claim can complete it, so
//! the chunks of two runners never mix. A claim whose runner has sent no heartbeat for
//! [`CLAIM_TIMEOUT_MS`] (by the proposers' clocks, carried in the commands) passes to
//! another node: a killed runner's job is resumed elsewhere.
//!
//! A restore job creates its target index in the same command
//! ([`BackupCommand::StartRestore`]), marked [`Index::restore`], which the data plane
//! refuses and which stays `Initializing` until the job finishes
//! ([`BackupCommand::FinishRestore`]); a job that fails removes the half-written index
//! ([`BackupCommand::FailRestore`]), so a half index is never queryable.
//!
//! Each backup's content is sealed with a data key of its own, wrapped like an index data
//! key (by the project key, or made by the project's customer-managed KMS key) and kept
//! here in [`Backup::key`]: a backup outlives its index and the index's key rotations, and
//! deleting the project (whose key wraps it) makes every backup of it unreadable.

use serde::{Deserialize, Serialize};

use super::audit::{index_resource, project_org};
use super::indexes::{Index, IndexState};
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};
use crate::crypto::hierarchy::IndexKeyVersion;
use crate::shard::engine::Metric;

/// Most backups (collections included) of one source index.
pub const MAX_BACKUPS_PER_INDEX: usize = 50;
/// Most backups and collections one project holds.
pub const MAX_BACKUPS_PER_PROJECT: usize = 500;
/// Bytes of backups one project may hold in the backup store, unless
/// `serve --max-backup-bytes-per-project` says otherwise (the proposer carries the limit in
/// its command, so every replica applies the same one).
pub const DEFAULT_MAX_BACKUP_BYTES_PER_PROJECT: u64 = 1 << 40;
/// Restore jobs kept per project; past it the oldest finished ones are forgotten.
pub const MAX_RESTORE_JOBS_PER_PROJECT: usize = 200;
/// A job's runner that sent no heartbeat for this long (by the proposers' clocks) loses it:
/// another node may claim it.
pub const CLAIM_TIMEOUT_MS: u64 = 15_000;
/// How often a runner reports that it still works on a job (and its progress).
pub const HEARTBEAT_MS: u64 = 2_000;
/// Longest backup or collection name.
pub const MAX_BACKUP_NAME_CHARS: usize = 45;
/// Longest backup description.
pub const MAX_BACKUP_DESCRIPTION_CHARS: usize = 1_000;

/// Whether a copy is a backup (addressed by id) or a collection (by its unique name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupKind {
    /// `POST /indexes/{name}/backups`.
    Backup,
    /// `POST /collections`.
    Collection,
}

/// Where a backup is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupStatus {
    /// Being written.
    Pending,
    /// Complete: restorable.
    Ready,
    /// Writing failed; nothing of it is restorable.
    Failed,
}

/// The node working on a job, the attempt it writes under, and its last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClaim {
    /// The node.
    pub node: u64,
    /// Its attempt (a fresh id per claim): a backup's files live under it.
    pub attempt: String,
    /// Milliseconds since the epoch of the last claim or heartbeat, by its proposer's clock.
    pub heartbeat_ms: u64,
}

/// What a finished backup holds, as its manifest says (the manifest itself is in the
/// backup store, sealed; its SHA-256 is kept here so a manifest swapped in the store is
/// refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupContents {
    /// The attempt whose files are the backup.
    pub attempt: String,
    /// The source shard's log position (Raft log index) the copy was taken at.
    pub log_position: u64,
    /// Records.
    pub record_count: u64,
    /// Namespaces.
    pub namespace_count: u64,
    /// Chunks.
    pub chunks: u32,
    /// Bytes in the backup store (chunks and manifest, sealed).
    pub size_bytes: u64,
    /// SHA-256 over the namespaces' record digests (the record set).
    pub records_digest: String,
    /// SHA-256 of the sealed manifest.
    pub manifest_sha256: String,
}

/// A backup or collection of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Id (a UUID), the backup store's directory.
    pub id: String,
    /// Position among the cluster's backups and restore jobs (assigned at apply): the order
    /// of listings and their pages.
    pub seq: u64,
    /// The project's limit of backup bytes when it was created
    /// (`serve --max-backup-bytes-per-project` of the node that accepted it).
    pub max_project_bytes: u64,
    /// Backup or collection.
    pub kind: BackupKind,
    /// Owning project.
    pub project_id: String,
    /// Name: optional for a backup (empty when none), unique within the project for a
    /// collection.
    pub name: String,
    /// Description (backups).
    pub description: String,
    /// The index it copies, by name (the index may be deleted since).
    pub source_index: String,
    /// The source index's shard group.
    pub source_group: u64,
    /// The source index's `spec` (JSON text), shown as the backup's cloud and region.
    pub source_spec_json: String,
    /// Vector dimension.
    pub dimension: u32,
    /// Similarity metric.
    pub metric: Metric,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// The data key sealing its content, wrapped as an index data key version is.
    pub key: IndexKeyVersion,
    /// Where it is in its life.
    pub status: BackupStatus,
    /// The runner working on it (while pending).
    pub claim: Option<JobClaim>,
    /// What it holds (once ready).
    pub contents: Option<BackupContents>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// Where a restore job is in its life (Pinecone's restore job `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreStatus {
    /// Waiting for a runner.
    Pending,
    /// A runner writes records into the target index.
    InProgress,
    /// The target index holds every record of the backup and serves.
    Completed,
    /// Stopped; the target index was removed.
    Failed,
}

/// A restore of a backup into a new index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    /// Id (a UUID).
    pub id: String,
    /// Position among the cluster's backups and restore jobs (assigned at apply).
    pub seq: u64,
    /// Owning project.
    pub project_id: String,
    /// The backup restored.
    pub backup_id: String,
    /// The new index, by name.
    pub target_index: String,
    /// The new index's shard group (assigned at apply).
    pub target_group: u64,
    /// Where it is in its life.
    pub status: RestoreStatus,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Completion (or failure) time, RFC 3339.
    pub completed_at: Option<String>,
    /// Chunks of the backup.
    pub chunks_total: u32,
    /// Chunks written into the target index (in order; a resumed job starts after them).
    pub chunks_done: u32,
    /// Records of the backup.
    pub records_total: u64,
    /// Records written into the target index.
    pub records_restored: u64,
    /// The runner working on it.
    pub claim: Option<JobClaim>,
    /// Why it failed.
    pub failure: Option<String>,
}

impl RestoreJob {
    /// Whether it has not ended: waiting for a runner or being run.
    pub fn running(&self) -> bool {
        matches!(
            self.status,
            RestoreStatus::Pending | RestoreStatus::InProgress
        )
    }

    /// Progress in percent (chunks written of the backup's).
    pub fn percent_complete(&self) -> f64 {
        match self.status {
            RestoreStatus::Completed => 100.0,
            _ if self.chunks_total == 0 => 0.0,
            _ => 100.0 * f64::from(self.chunks_done) / f64::from(self.chunks_total),
        }
    }
}

/// A change of a backup, a collection or a restore job.
// Commands live only between decode and apply; boxing the larger ones buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum BackupCommand {
    /// Create a backup or collection of `backup.source_index` (which must exist and be
    /// ready), pending until a runner completes it.
    Create {
        /// The backup, its key made by the proposer.
        backup: Backup,
        /// The project's limit of backup bytes (`serve --max-backup-bytes-per-project`).
        max_project_bytes: u64,
    },
    /// Node `node` takes the pending backup `id` (refused while another runner's claim is
    /// fresh).
    Claim {
        /// The backup.
        id: String,
        /// The claim.
        claim: JobClaim,
    },
    /// The runner of backup or restore job `id` still works on it.
    Heartbeat {
        /// The backup or restore job.
        id: String,
        /// The claim's attempt.
        attempt: String,
        /// Now, by the proposer's clock (ms since the epoch).
        at_ms: u64,
    },
    /// The runner of backup `id` wrote it whole (refused unless `contents.attempt` holds
    /// the claim; a backup that would take the project past its byte limit fails instead).
    Complete {
        /// The backup.
        id: String,
        /// What it holds.
        contents: BackupContents,
    },
    /// Backup `id` cannot be made (by the runner holding `attempt`, or — `None` — because
    /// its source index is gone, which apply checks).
    Fail {
        /// The backup.
        id: String,
        /// The claim's attempt.
        attempt: Option<String>,
        /// Why.
        reason: String,
    },
    /// Delete backup or collection `id` of `project_id` (its files are removed from the
    /// store by each node's collector once it is gone from the state).
    Delete {
        /// Owning project.
        project_id: String,
        /// The backup.
        id: String,
    },
    /// Create `index` (marked as being restored) and the job restoring backup
    /// `job.backup_id` into it.
    StartRestore {
        /// The job.
        job: RestoreJob,
        /// The new index, `restore` set to the job's id.
        index: Box<Index>,
        /// Index port range of the proposing node, inclusive.
        ports: Option<(u16, u16)>,
    },
    /// Node `claim.node` takes restore job `id`.
    ClaimRestore {
        /// The job.
        id: String,
        /// The claim.
        claim: JobClaim,
    },
    /// The runner of restore job `id` wrote chunks up to `chunks_done`.
    RestoreProgress {
        /// The job.
        id: String,
        /// The claim's attempt.
        attempt: String,
        /// Chunks written so far.
        chunks_done: u32,
        /// Records written so far.
        records_restored: u64,
        /// Now, by the proposer's clock (ms since the epoch).
        at_ms: u64,
    },
    /// Restore job `id` wrote every record and checked them: the index serves.
    FinishRestore {
        /// The job.
        id: String,
        /// The claim's attempt.
        attempt: String,
        /// When, RFC 3339.
        at: String,
    },
    /// Restore job `id` failed: its index is removed.
    FailRestore {
        /// The job.
        id: String,
        /// The claim's attempt (`None`: its index is gone, which apply checks).
        attempt: Option<String>,
        /// Why.
        reason: String,
        /// When, RFC 3339.
        at: String,
    },
}

/// Whether `claim` has been silent past [`CLAIM_TIMEOUT_MS`] at `now_ms`.
fn stale(claim: &JobClaim, now_ms: u64) -> bool {
    now_ms.saturating_sub(claim.heartbeat_ms) >= CLAIM_TIMEOUT_MS
}

/// Gives job `what` to `claim`: refused unless the claiming node holds a replica of the
/// job's index (`hosts`) and the job's current claim is its own (a restarted node) or has
/// had no heartbeat for [`CLAIM_TIMEOUT_MS`] by the new claim's clock.
fn take_claim(
    current: &mut Option<JobClaim>,
    claim: JobClaim,
    hosts: bool,
    what: &str,
) -> Result<(), Rejection> {
    if !hosts {
        return Err(Rejection::Invalid(format!(
            "node {} holds no replica of the index of {what}",
            claim.node
        )));
    }
    if let Some(held) = current {
        if held.node != claim.node && !stale(held, claim.heartbeat_ms) {
            return Err(Rejection::Invalid(format!(
                "{what} is being run by node {}",
                held.node
            )));
        }
    }
    *current = Some(claim);
    Ok(())
}

/// Refuses a failure of job `what` unless it comes from the attempt holding the claim, or —
/// without an attempt — the job's index is gone (the leader's report of an orphan).
fn check_failure(
    claim: &Option<JobClaim>,
    attempt: Option<&str>,
    index_gone: bool,
    what: &str,
) -> Result<(), Rejection> {
    match attempt {
        Some(attempt) => check_attempt(claim, attempt, what),
        None if index_gone => Ok(()),
        None => Err(Rejection::Invalid(format!("{what}'s index still exists"))),
    }
}

/// Refuses a report from an attempt that does not hold the claim.
fn check_attempt(claim: &Option<JobClaim>, attempt: &str, what: &str) -> Result<(), Rejection> {
    match claim {
        Some(c) if c.attempt == attempt => Ok(()),
        _ => Err(Rejection::Invalid(format!(
            "{what} is no longer claimed by attempt {attempt}"
        ))),
    }
}

impl ControlState {
    /// Applies a backup command; on rejection nothing changes.
    pub(super) fn apply_backup(&mut self, command: BackupCommand) -> Outcome {
        match command {
            BackupCommand::Create {
                mut backup,
                max_project_bytes,
            } => {
                let source = self
                    .indexes
                    .get(&(backup.project_id.clone(), backup.source_index.clone()))
                    .ok_or_else(|| not_found("index", &backup.source_index))?;
                if source.restore.is_some() {
                    return Err(Rejection::Invalid(format!(
                        "index '{}' is being restored; back it up once it serves",
                        backup.source_index
                    )));
                }
                backup.source_group = source.group_id;
                backup.dimension = source.dimension;
                backup.metric = source.metric;
                backup.source_spec_json = source.spec_json.clone();
                let of_project = self.backups_of(&backup.project_id);
                let taken = if self.backups.contains_key(&backup.id) {
                    Some(format!("backup id '{}' already exists", backup.id))
                } else {
                    (backup.kind == BackupKind::Collection
                        && of_project
                            .iter()
                            .any(|b| b.kind == BackupKind::Collection && b.name == backup.name))
                    .then(|| format!("collection '{}' already exists", backup.name))
                };
                check_new(
                    taken,
                    of_project.len(),
                    MAX_BACKUPS_PER_PROJECT,
                    "project",
                    "backups and collections",
                )?;
                let of_index = of_project
                    .iter()
                    .filter(|b| b.source_group == backup.source_group)
                    .count();
                if of_index >= MAX_BACKUPS_PER_INDEX {
                    return Err(Rejection::LimitExceeded(format!(
                        "index '{}' has {of_index} backups and collections, the limit \
                         ({MAX_BACKUPS_PER_INDEX}); delete some first",
                        backup.source_index
                    )));
                }
                let used = self.backup_bytes_of(&backup.project_id);
                if used >= max_project_bytes {
                    return Err(Rejection::LimitExceeded(format!(
                        "the project's backups and collections hold {used} bytes, its limit \
                         ({max_project_bytes} bytes, --max-backup-bytes-per-project); delete \
                         some first"
                    )));
                }
                backup.status = BackupStatus::Pending;
                backup.claim = None;
                backup.contents = None;
                backup.failure = None;
                backup.max_project_bytes = max_project_bytes;
                backup.seq = self.next_backup_seq;
                self.next_backup_seq += 1;
                self.backups.insert(backup.id.clone(), backup.clone());
                Ok(Output::Backup(backup))
            }
            BackupCommand::Claim { id, claim } => {
                let sources: Option<(u64, String)> = self
                    .backups
                    .get(&id)
                    .map(|b| (b.source_group, b.project_id.clone()));
                let Some((group, _)) = sources else {
                    return Err(not_found("backup", &id));
                };
                let hosts = self
                    .index_of_group(group)
                    .is_some_and(|i| i.replicas.contains(&claim.node));
                let backup = self
                    .backups
                    .get_mut(&id)
                    .ok_or_else(|| not_found("backup", &id))?;
                if backup.status != BackupStatus::Pending {
                    return Err(Rejection::Invalid(format!("backup '{id}' is not pending")));
                }
                take_claim(&mut backup.claim, claim, hosts, &format!("backup '{id}'"))?;
                Ok(Output::Backup(backup.clone()))
            }
            BackupCommand::Heartbeat { id, attempt, at_ms } => {
                let claim = match (self.backups.get_mut(&id), self.restore_jobs.get_mut(&id)) {
                    (Some(b), _) if b.status == BackupStatus::Pending => &mut b.claim,
                    (_, Some(j)) if j.running() => &mut j.claim,
                    _ => return Err(not_found("running backup or restore job", &id)),
                };
                check_attempt(claim, &attempt, &format!("job '{id}'"))?;
                if let Some(claim) = claim {
                    claim.heartbeat_ms = claim.heartbeat_ms.max(at_ms);
                }
                Ok(Output::Done)
            }
            BackupCommand::Complete { id, contents } => {
                let project = match self.backups.get(&id) {
                    Some(b) => b.project_id.clone(),
                    None => return Err(not_found("backup", &id)),
                };
                let used = self.backup_bytes_of(&project);
                let backup = self
                    .backups
                    .get_mut(&id)
                    .ok_or_else(|| not_found("backup", &id))?;
                if backup.status != BackupStatus::Pending {
                    return Err(Rejection::Invalid(format!("backup '{id}' is not pending")));
                }
                check_attempt(&backup.claim, &contents.attempt, &format!("backup '{id}'"))?;
                backup.claim = None;
                let max_project_bytes = backup.max_project_bytes;
                if used.saturating_add(contents.size_bytes) > max_project_bytes {
                    backup.status = BackupStatus::Failed;
                    backup.failure = Some(format!(
                        "the backup is {} bytes, which would take the project's backups and \
                         collections past their limit ({max_project_bytes} bytes, \
                         --max-backup-bytes-per-project; {used} bytes held)",
                        contents.size_bytes
                    ));
                } else {
                    backup.status = BackupStatus::Ready;
                    backup.contents = Some(contents);
                }
                Ok(Output::Backup(backup.clone()))
            }
            BackupCommand::Fail {
                id,
                attempt,
                reason,
            } => {
                let source_gone = self
                    .backups
                    .get(&id)
                    .is_some_and(|b| self.index_of_group(b.source_group).is_none());
                let backup = self
                    .backups
                    .get_mut(&id)
                    .ok_or_else(|| not_found("backup", &id))?;
                if backup.status != BackupStatus::Pending {
                    return Err(Rejection::Invalid(format!("backup '{id}' is not pending")));
                }
                check_failure(
                    &backup.claim,
                    attempt.as_deref(),
                    source_gone,
                    &format!("backup '{id}'"),
                )?;
                backup.claim = None;
                backup.status = BackupStatus::Failed;
                backup.failure = Some(reason);
                Ok(Output::Backup(backup.clone()))
            }
            BackupCommand::Delete { project_id, id } => {
                match self.backups.get(&id) {
                    Some(b) if b.project_id == project_id => {}
                    _ => return Err(not_found("backup", &id)),
                }
                if let Some(job) = self
                    .restore_jobs
                    .values()
                    .find(|j| j.backup_id == id && j.running())
                {
                    return Err(Rejection::Invalid(format!(
                        "backup '{id}' is being restored into index '{}' (restore job {}); \
                         delete it once the job finished",
                        job.target_index, job.id
                    )));
                }
                self.backups.remove(&id);
                Ok(Output::Done)
            }
            BackupCommand::StartRestore {
                mut job,
                index,
                ports,
            } => {
                let backup = match self.backups.get(&job.backup_id) {
                    Some(b) if b.project_id == job.project_id => b.clone(),
                    _ => return Err(not_found("backup", &job.backup_id)),
                };
                let contents = match (&backup.status, &backup.contents) {
                    (BackupStatus::Ready, Some(c)) => c.clone(),
                    _ => {
                        return Err(Rejection::Invalid(format!(
                            "backup '{}' is not ready; restore it once it is",
                            backup.id
                        )))
                    }
                };
                if index.dimension != backup.dimension || index.metric != backup.metric {
                    return Err(Rejection::Invalid(format!(
                        "backup '{}' holds {}-dimensional {} vectors; the new index must \
                         have the same dimension and metric",
                        backup.id,
                        backup.dimension,
                        backup.metric.as_str()
                    )));
                }
                if self.restore_jobs.contains_key(&job.id) {
                    return Err(Rejection::AlreadyExists(format!(
                        "restore job id '{}' already exists",
                        job.id
                    )));
                }
                let mut index = *index;
                index.restore = Some(job.id.clone());
                let created = match self
                    .apply_index(super::indexes::IndexCommand::Create { index, ports })?
                {
                    Output::Index(index) => index,
                    _ => unreachable!("an index creation outputs the index"),
                };
                job.target_index = created.name.clone();
                job.target_group = created.group_id;
                job.seq = self.next_backup_seq;
                self.next_backup_seq += 1;
                job.status = RestoreStatus::Pending;
                job.chunks_total = contents.chunks;
                job.records_total = contents.record_count;
                job.chunks_done = 0;
                job.records_restored = 0;
                job.claim = None;
                job.failure = None;
                job.completed_at = None;
                self.forget_old_restore_jobs(&job.project_id);
                self.restore_jobs.insert(job.id.clone(), job.clone());
                Ok(Output::Restore(Box::new(created), job))
            }
            BackupCommand::ClaimRestore { id, claim } => {
                let group = self
                    .restore_jobs
                    .get(&id)
                    .map(|j| j.target_group)
                    .ok_or_else(|| not_found("restore job", &id))?;
                let hosts = self
                    .index_of_group(group)
                    .is_some_and(|i| i.replicas.contains(&claim.node));
                let job = self.restore_job_mut(&id)?;
                if !job.running() {
                    return Err(Rejection::Invalid(format!("restore job '{id}' has ended")));
                }
                take_claim(&mut job.claim, claim, hosts, &format!("restore job '{id}'"))?;
                job.status = RestoreStatus::InProgress;
                Ok(Output::RestoreJob(job.clone()))
            }
            BackupCommand::RestoreProgress {
                id,
                attempt,
                chunks_done,
                records_restored,
                at_ms,
            } => {
                let job = self.restore_job_mut(&id)?;
                check_attempt(&job.claim, &attempt, &format!("restore job '{id}'"))?;
                job.chunks_done = chunks_done.min(job.chunks_total);
                job.records_restored = records_restored;
                if let Some(claim) = &mut job.claim {
                    claim.heartbeat_ms = claim.heartbeat_ms.max(at_ms);
                }
                Ok(Output::RestoreJob(job.clone()))
            }
            BackupCommand::FinishRestore { id, attempt, at } => {
                let target_restoring = self.restore_jobs.get(&id).is_some_and(|j| {
                    self.indexes
                        .get(&(j.project_id.clone(), j.target_index.clone()))
                        .is_some_and(|i| i.restore.as_deref() == Some(id.as_str()))
                });
                let job = self.restore_job_mut(&id)?;
                check_attempt(&job.claim, &attempt, &format!("restore job '{id}'"))?;
                if !target_restoring || job.chunks_done != job.chunks_total {
                    return Err(Rejection::Invalid(format!(
                        "restore job '{id}' cannot finish: its index is gone or {} of {} chunks \
                         were written",
                        job.chunks_done, job.chunks_total
                    )));
                }
                job.status = RestoreStatus::Completed;
                job.chunks_done = job.chunks_total;
                job.claim = None;
                job.completed_at = Some(at);
                let (project, name, job) = (
                    job.project_id.clone(),
                    job.target_index.clone(),
                    job.clone(),
                );
                if let Some(index) = self.indexes.get_mut(&(project, name)) {
                    if index.restore.as_deref() == Some(id.as_str()) {
                        index.restore = None;
                        index.state = IndexState::Ready;
                    }
                }
                Ok(Output::RestoreJob(job))
            }
            BackupCommand::FailRestore {
                id,
                attempt,
                reason,
                at,
            } => {
                let target_gone = self
                    .restore_jobs
                    .get(&id)
                    .is_some_and(|j| self.index_of_group(j.target_group).is_none());
                let job = self.restore_job_mut(&id)?;
                if !job.running() {
                    return Err(Rejection::Invalid(format!("restore job '{id}' has ended")));
                }
                check_failure(
                    &job.claim,
                    attempt.as_deref(),
                    target_gone,
                    &format!("restore job '{id}'"),
                )?;
                job.status = RestoreStatus::Failed;
                job.claim = None;
                job.failure = Some(reason);
                job.completed_at = Some(at);
                let (project, name, job) = (
                    job.project_id.clone(),
                    job.target_index.clone(),
                    job.clone(),
                );
                let key = (project.clone(), name.clone());
                if self
                    .indexes
                    .get(&key)
                    .is_some_and(|i| i.restore.as_deref() == Some(id.as_str()))
                {
                    self.indexes.remove(&key);
                    self.shred_later("index", &project, &name);
                }
                Ok(Output::RestoreJob(job))
            }
        }
    }

    fn restore_job_mut(&mut self, id: &str) -> Result<&mut RestoreJob, Rejection> {
        self.restore_jobs
            .get_mut(id)
            .ok_or_else(|| not_found("restore job", id))
    }

    /// Past [`MAX_RESTORE_JOBS_PER_PROJECT`] - 1 jobs, the oldest finished ones of the
    /// project are forgotten (to make room for one more).
    fn forget_old_restore_jobs(&mut self, project_id: &str) {
        let mut finished: Vec<(String, String)> = self
            .restore_jobs
            .values()
            .filter(|j| j.project_id == project_id)
            .filter(|j| matches!(j.status, RestoreStatus::Completed | RestoreStatus::Failed))
            .map(|j| (j.created_at.clone(), j.id.clone()))
            .collect();
        let held = self
            .restore_jobs
            .values()
            .filter(|j| j.project_id == project_id)
            .count();
        finished.sort();
        let excess = (held + 1).saturating_sub(MAX_RESTORE_JOBS_PER_PROJECT);
        for (_, id) in finished.into_iter().take(excess) {
            self.restore_jobs.remove(&id);
        }
    }

    /// The backups and collections of a project, by id.
    pub fn backups_of(&self, project_id: &str) -> Vec<&Backup> {
        self.backups
            .values()
            .filter(|b| b.project_id == project_id)
            .collect()
    }

    /// Bytes the project's ready backups and collections hold in the backup store.
    pub fn backup_bytes_of(&self, project_id: &str) -> u64 {
        self.backups_of(project_id)
            .iter()
            .filter_map(|b| b.contents.as_ref())
            .map(|c| c.size_bytes)
            .sum()
    }

    /// The collection `name` of a project.
    pub fn collection(&self, project_id: &str, name: &str) -> Option<&Backup> {
        self.backups.values().find(|b| {
            b.project_id == project_id && b.kind == BackupKind::Collection && b.name == name
        })
    }

    /// Drops a deleted project's backups and restore jobs (their key was wrapped by the
    /// project's, which is shredded).
    pub(super) fn drop_backups_of_project(&mut self, project_id: &str) {
        self.backups.retain(|_, b| b.project_id != project_id);
        self.restore_jobs.retain(|_, j| j.project_id != project_id);
    }
}

/// The audit description of a backup command (the state before it): the seed's `backup`
/// events for a client's create and delete (a collection is a `collection`), and for a
/// restore the `index` create it is. The runner's steps are not client actions: they are
/// proposed unaudited.
pub(super) fn describe(state: &ControlState, command: &BackupCommand) -> Resource {
    let backup_resource = |verb: Verb, b: &Backup| {
        let kind = match b.kind {
            BackupKind::Backup => ResourceType::Backup,
            BackupKind::Collection => ResourceType::Collection,
        };
        let shown = if b.name.is_empty() { &b.id } else { &b.name };
        Resource::new(verb, kind, Some(&b.id))
            .id(Some(shown.as_str()))
            .named(Some(shown))
            .in_org(project_org(state, &b.project_id).as_deref())
            .params(
                Params::default()
                    .with("project_id", b.project_id.as_str())
                    .with("source_index", b.source_index.as_str())
                    .with("backup_id", b.id.as_str()),
            )
    };
    match command {
        BackupCommand::Create { backup, .. } => backup_resource(Verb::Create, backup),
        BackupCommand::Delete { id, .. } => match state.backups.get(id) {
            Some(b) => backup_resource(Verb::Delete, b),
            None => {
                Resource::new(Verb::Delete, ResourceType::Backup, Some(id)).id(Some(id.as_str()))
            }
        },
        BackupCommand::StartRestore { job, index, .. } => {
            index_resource(state, Verb::Create, &index.project_id, &index.name).params(
                Params::default()
                    .with("project_id", index.project_id.as_str())
                    .with("dimension", index.dimension)
                    .with("metric", index.metric.as_str())
                    .with("deletion_protection", index.deletion_protection)
                    .with("source_backup_id", job.backup_id.as_str())
                    .with("restore_job_id", job.id.as_str()),
            )
        }
        BackupCommand::Claim { id, .. }
        | BackupCommand::Heartbeat { id, .. }
        | BackupCommand::Complete { id, .. }
        | BackupCommand::Fail { id, .. } => match state.backups.get(id) {
            Some(b) => backup_resource(Verb::Update, b),
            None => Resource::new(Verb::Update, ResourceType::Backup, Some(id)),
        },
        BackupCommand::ClaimRestore { id, .. }
        | BackupCommand::RestoreProgress { id, .. }
        | BackupCommand::FinishRestore { id, .. }
        | BackupCommand::FailRestore { id, .. } => match state.restore_jobs.get(id) {
            Some(j) => index_resource(state, Verb::Update, &j.project_id, &j.target_index)
                .params(Params::default().with("restore_job_id", id.as_str())),
            None => Resource::new(Verb::Update, ResourceType::Index, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::indexes::IndexCommand;
    use crate::control::state::tests::{bootstrapped, index};
    use crate::control::state::Command;
    use crate::crypto::hierarchy::IndexKeys;

    fn backup(id: &str) -> Backup {
        Backup {
            id: id.into(),
            seq: 0,
            max_project_bytes: 0,
            kind: BackupKind::Backup,
            project_id: "p0".into(),
            name: String::new(),
            description: String::new(),
            source_index: "src".into(),
            source_group: 0,
            source_spec_json: "{}".into(),
            dimension: 0,
            metric: Metric::Cosine,
            created_at: "t".into(),
            key: IndexKeys::placeholder().versions.remove(0),
            status: BackupStatus::Pending,
            claim: None,
            contents: None,
            failure: None,
        }
    }

    fn claim(node: u64, attempt: &str, at: u64) -> JobClaim {
        JobClaim {
            node,
            attempt: attempt.into(),
            heartbeat_ms: at,
        }
    }

    fn contents(attempt: &str, size: u64) -> BackupContents {
        BackupContents {
            attempt: attempt.into(),
            log_position: 7,
            record_count: 3,
            namespace_count: 1,
            chunks: 1,
            size_bytes: size,
            records_digest: "d".into(),
            manifest_sha256: "m".into(),
        }
    }

    #[test]
    fn one_runner_holds_a_backup_until_its_heartbeats_stop_and_only_it_completes_it() {
        let mut s = bootstrapped();
        let mut src = index("src");
        src.replicas = vec![1, 2];
        s.apply(Command::Index(IndexCommand::Create {
            index: src,
            ports: None,
        }))
        .unwrap();
        let run = |s: &mut ControlState, c: BackupCommand| s.apply(Command::Backup(c));
        run(
            &mut s,
            BackupCommand::Create {
                backup: backup("b1"),
                max_project_bytes: 100,
            },
        )
        .unwrap();
        assert_eq!(s.backups["b1"].max_project_bytes, 100);
        let claim_of = |node, attempt: &str, at| BackupCommand::Claim {
            id: "b1".into(),
            claim: claim(node, attempt, at),
        };
        // Only a node holding a replica of the source may claim it.
        assert!(run(&mut s, claim_of(3, "a0", 1_000)).is_err());
        run(&mut s, claim_of(1, "a1", 1_000)).unwrap();
        // Another node waits until node 1's claim has been silent for the timeout; node 1
        // itself (restarted) takes it again at once.
        assert!(run(&mut s, claim_of(2, "a2", 1_000 + CLAIM_TIMEOUT_MS - 1)).is_err());
        run(&mut s, claim_of(1, "a1b", 2_000)).unwrap();
        run(&mut s, claim_of(2, "a2", 2_000 + CLAIM_TIMEOUT_MS)).unwrap();
        // The attempt that lost the claim can neither beat nor complete.
        let beat = |attempt: &str| BackupCommand::Heartbeat {
            id: "b1".into(),
            attempt: attempt.into(),
            at_ms: 50_000,
        };
        assert!(run(&mut s, beat("a1b")).is_err());
        run(&mut s, beat("a2")).unwrap();
        let complete = |attempt: &str, size| BackupCommand::Complete {
            id: "b1".into(),
            contents: contents(attempt, size),
        };
        assert!(run(&mut s, complete("a1b", 10)).is_err());
        // Past the project's bytes it fails, naming the limit.
        run(&mut s, complete("a2", 101)).unwrap();
        assert_eq!(s.backups["b1"].status, BackupStatus::Failed);
        assert!(s.backups["b1"]
            .failure
            .as_ref()
            .unwrap()
            .contains("100 bytes"));
        // A failure without an attempt is the leader's for a deleted index only.
        run(
            &mut s,
            BackupCommand::Create {
                backup: backup("b2"),
                max_project_bytes: 100,
            },
        )
        .unwrap();
        let orphan = || BackupCommand::Fail {
            id: "b2".into(),
            attempt: None,
            reason: "gone".into(),
        };
        assert!(run(&mut s, orphan()).is_err());
        s.apply(Command::Index(IndexCommand::Delete {
            project_id: "p0".into(),
            name: "src".into(),
        }))
        .unwrap();
        run(&mut s, orphan()).unwrap();
        assert_eq!(s.backups["b2"].status, BackupStatus::Failed);
    }
}
