//! A backup's files: chunks of records and a manifest, each sealed (AES-256-GCM) with the
//! backup's data key and bound by associated data to its backup, attempt and position, and
//! checked on read against the SHA-256 the manifest (for chunks) or the control plane (for
//! the manifest) holds. So a changed, truncated, missing or swapped file — even a valid
//! chunk of another backup — is refused with an error naming it, before anything is
//! restored.
//!
//! Layout in the backup store: `<project>/<backup>/<attempt>/manifest` and
//! `.../chunk-<n>` (n from 0, six digits).

use std::collections::BTreeMap;

use conifer_raft::cipher::ValueCipher;
use conifer_raft::Format;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::control::backups::Backup;
use crate::crypto::DataKey;
use crate::shard::command::Record;
use crate::shard::namespace::{record_hash, records_digest};

/// Plaintext bytes of records gathered into one chunk before it is sealed and stored,
/// unless `serve --backup-chunk-bytes` says otherwise.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;
/// Bounds of `--backup-chunk-bytes`.
pub const CHUNK_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(64 << 20);
/// Format of a chunk's plaintext.
pub const CHUNK_FORMAT: Format = Format::new("backup chunk", 1);
/// Format of a manifest's plaintext.
pub const MANIFEST_FORMAT: Format = Format::new("backup manifest", 1);

/// Why a backup cannot be read; the message names the backup and the file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file is missing, changed, truncated or from elsewhere.
    #[error("{0}")]
    Corrupt(String),
    /// The backup store failed.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

/// One chunk's entry in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Records in it.
    pub records: u64,
    /// Its sealed size in bytes.
    pub sealed_bytes: u64,
    /// SHA-256 (hex) of its sealed bytes.
    pub sha256: String,
}

/// One namespace's entry in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceEntry {
    /// Name (canonical, as stored).
    pub name: String,
    /// Records.
    pub records: u64,
    /// [`records_digest`] of its records, as `Namespace::digest` computes it on a replica.
    pub digest: String,
}

/// What a backup holds, and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The backup.
    pub backup_id: String,
    /// Its project.
    pub project_id: String,
    /// The attempt that wrote it.
    pub attempt: String,
    /// The source index's name.
    pub source_index: String,
    /// Dimension.
    pub dimension: u32,
    /// Metric (Pinecone's name).
    pub metric: String,
    /// The source shard's Raft log index the copy is the state after.
    pub log_position: u64,
    /// Records.
    pub record_count: u64,
    /// Namespaces, by name.
    pub namespaces: Vec<NamespaceEntry>,
    /// SHA-256 over the namespaces' names and digests ([`set_digest`]).
    pub records_digest: String,
    /// Chunks in order.
    pub chunks: Vec<ChunkEntry>,
    /// When it was written, RFC 3339.
    pub created_at: String,
}

/// A chunk's plaintext: (namespace, id, record) triples.
#[derive(Serialize, Deserialize)]
struct Chunk {
    records: Vec<(String, String, Record)>,
}

/// The folder of an attempt's files.
pub fn attempt_prefix(project_id: &str, backup_id: &str, attempt: &str) -> String {
    format!("{project_id}/{backup_id}/{attempt}/")
}

/// The object name of chunk `n`.
pub fn chunk_key(prefix: &str, n: usize) -> String {
    format!("{prefix}chunk-{n:06}")
}

/// The object name of the manifest.
pub fn manifest_key(prefix: &str) -> String {
    format!("{prefix}manifest")
}

fn aad(backup_id: &str, attempt: &str, what: &str) -> Vec<u8> {
    format!("conifer/backup/v1/{backup_id}/{attempt}/{what}").into_bytes()
}

/// SHA-256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The digest of a record set: SHA-256 over each namespace's name and digest, by name.
pub fn set_digest(namespaces: &[NamespaceEntry]) -> String {
    let mut sorted: Vec<&NamespaceEntry> = namespaces.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = Sha256::new();
    for ns in sorted {
        hasher.update((ns.name.len() as u64).to_be_bytes());
        hasher.update(ns.name.as_bytes());
        hasher.update(ns.digest.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Gathers records into sealed chunks while a backup is written, and the namespaces'
/// digests.
pub struct ChunkWriter<'a> {
    key: &'a DataKey,
    backup_id: String,
    attempt: String,
    pending: Vec<(String, String, Record)>,
    pending_bytes: usize,
    chunk_bytes: usize,
    next: usize,
    hashes: BTreeMap<String, Vec<(String, [u8; 32])>>,
}

/// A sealed chunk ready for the store.
pub struct SealedChunk {
    /// Its position.
    pub n: usize,
    /// Its sealed bytes.
    pub bytes: Vec<u8>,
    /// Its manifest entry.
    pub entry: ChunkEntry,
}

impl<'a> ChunkWriter<'a> {
    /// A writer for attempt `attempt` of backup `backup_id`, sealing with `key` chunks of
    /// about `chunk_bytes` of records.
    pub fn new(key: &'a DataKey, backup_id: &str, attempt: &str, chunk_bytes: usize) -> Self {
        Self {
            key,
            backup_id: backup_id.to_string(),
            attempt: attempt.to_string(),
            pending: Vec::new(),
            pending_bytes: 0,
            chunk_bytes,
            next: 0,
            hashes: BTreeMap::new(),
        }
    }

    /// Adds a record; returns a chunk once the chunk size is reached.
    pub fn add(&mut self, namespace: &str, id: String, record: Record) -> Option<SealedChunk> {
        let hashes = self.hashes.entry(namespace.to_string()).or_default();
        hashes.push((id.clone(), record_hash(&id, &record)));
        self.pending_bytes += id.len()
            + namespace.len()
            + record.values.len() * 4
            + record.metadata.as_ref().map_or(0, String::len)
            + record
                .sparse
                .as_ref()
                .map_or(0, |(indices, _)| indices.len() * 8);
        self.pending.push((namespace.to_string(), id, record));
        (self.pending_bytes >= self.chunk_bytes).then(|| self.seal())
    }

    /// Notes a namespace (so an empty one is in the manifest too).
    pub fn namespace(&mut self, name: &str) {
        self.hashes.entry(name.to_string()).or_default();
    }

    fn seal(&mut self) -> SealedChunk {
        let records = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let count = records.len() as u64;
        let plain = CHUNK_FORMAT.encode(&Chunk { records });
        let n = self.next;
        self.next += 1;
        let bytes = self.key.seal(
            &aad(&self.backup_id, &self.attempt, &format!("chunk/{n}")),
            &plain,
        );
        SealedChunk {
            n,
            entry: ChunkEntry {
                records: count,
                sealed_bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            },
            bytes,
        }
    }

    /// The last chunk (if records are left) and the namespaces with their digests.
    pub fn finish(mut self) -> (Option<SealedChunk>, Vec<NamespaceEntry>) {
        let last = (!self.pending.is_empty()).then(|| self.seal());
        let namespaces = std::mem::take(&mut self.hashes)
            .into_iter()
            .map(|(name, mut hashes)| {
                hashes.sort_by(|a, b| a.0.cmp(&b.0));
                NamespaceEntry {
                    name,
                    records: hashes.len() as u64,
                    digest: records_digest(hashes.into_iter().map(|(_, h)| h)),
                }
            })
            .collect();
        (last, namespaces)
    }
}

/// Seals a manifest with the backup's key.
pub fn seal_manifest(key: &DataKey, manifest: &Manifest) -> Vec<u8> {
    key.seal(
        &aad(&manifest.backup_id, &manifest.attempt, "manifest"),
        &MANIFEST_FORMAT.encode(manifest),
    )
}

/// Reads and checks a ready backup's manifest: its SHA-256 must be the one the control
/// plane recorded, it must open with the backup's key, and say what the control plane
/// says of the backup.
pub async fn read_manifest(
    store: &super::store::ClusterStore<'_>,
    key: &DataKey,
    backup: &Backup,
) -> Result<Manifest, ArchiveError> {
    let contents = backup
        .contents
        .as_ref()
        .ok_or_else(|| ArchiveError::Corrupt(format!("backup '{}' is not ready", backup.id)))?;
    let prefix = attempt_prefix(&backup.project_id, &backup.id, &contents.attempt);
    let name = manifest_key(&prefix);
    let bytes = store.get(&name).await?.ok_or_else(|| {
        ArchiveError::Corrupt(format!(
            "backup '{}' is damaged: its manifest ({name}) is missing from the backup store{}",
            backup.id,
            if store.is_directory() {
                " (a directory store must be the same shared directory on every node)"
            } else {
                ""
            }
        ))
    })?;
    if sha256_hex(&bytes) != contents.manifest_sha256 {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{}' is damaged: its manifest ({name}, {} bytes) is not the one written \
             (SHA-256 mismatch)",
            backup.id,
            bytes.len()
        )));
    }
    let plain = key
        .open(&aad(&backup.id, &contents.attempt, "manifest"), &bytes)
        .map_err(|_| {
            ArchiveError::Corrupt(format!(
                "backup '{}': its manifest does not open with the backup's key",
                backup.id
            ))
        })?;
    let manifest: Manifest = MANIFEST_FORMAT
        .decode(&plain)
        .map_err(|e| ArchiveError::Corrupt(format!("backup '{}': manifest: {e}", backup.id)))?;
    let agrees = manifest.backup_id == backup.id
        && manifest.project_id == backup.project_id
        && manifest.attempt == contents.attempt
        && manifest.record_count == contents.record_count
        && manifest.chunks.len() == contents.chunks as usize
        && manifest.dimension == backup.dimension
        && manifest.records_digest == contents.records_digest
        && manifest.chunks.iter().map(|c| c.records).sum::<u64>() == manifest.record_count;
    if !agrees {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{}': its manifest does not describe this backup",
            backup.id
        )));
    }
    Ok(manifest)
}

/// Checks chunk `n`'s sealed `bytes` (present: `None` when missing) against the manifest.
fn check_chunk(
    backup: &Backup,
    manifest: &Manifest,
    n: usize,
    bytes: Option<&[u8]>,
    name: &str,
) -> Result<(), ArchiveError> {
    let entry = &manifest.chunks[n];
    let total = manifest.chunks.len();
    let id = &backup.id;
    let Some(bytes) = bytes else {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{id}' is damaged: chunk {n} of {total} ({name}) is missing"
        )));
    };
    if bytes.len() as u64 != entry.sealed_bytes {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{id}' is damaged: chunk {n} of {total} ({name}) is {} bytes, {} were \
             written ({})",
            bytes.len(),
            entry.sealed_bytes,
            if (bytes.len() as u64) < entry.sealed_bytes {
                "truncated"
            } else {
                "extended"
            }
        )));
    }
    if sha256_hex(bytes) != entry.sha256 {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{id}' is damaged: chunk {n} of {total} ({name}) is not the one written \
             (SHA-256 mismatch)"
        )));
    }
    Ok(())
}

/// Checks every chunk of a backup (present, its size and SHA-256 as the manifest says),
/// without opening them: the check before a restore creates anything.
pub async fn verify_chunks(
    store: &super::store::ClusterStore<'_>,
    backup: &Backup,
    manifest: &Manifest,
) -> Result<(), ArchiveError> {
    let prefix = attempt_prefix(&backup.project_id, &backup.id, &manifest.attempt);
    for n in 0..manifest.chunks.len() {
        let name = chunk_key(&prefix, n);
        let bytes = store.get(&name).await?;
        check_chunk(backup, manifest, n, bytes.as_deref(), &name)?;
    }
    Ok(())
}

/// Reads, checks and opens chunk `n`: its records as (namespace, id, record).
pub async fn read_chunk(
    store: &super::store::ClusterStore<'_>,
    key: &DataKey,
    backup: &Backup,
    manifest: &Manifest,
    n: usize,
) -> Result<Vec<(String, String, Record)>, ArchiveError> {
    let prefix = attempt_prefix(&backup.project_id, &backup.id, &manifest.attempt);
    let name = chunk_key(&prefix, n);
    let bytes = store.get(&name).await?;
    check_chunk(backup, manifest, n, bytes.as_deref(), &name)?;
    let bytes = bytes.unwrap_or_default();
    let plain = key
        .open(
            &aad(&backup.id, &manifest.attempt, &format!("chunk/{n}")),
            &bytes,
        )
        .map_err(|_| {
            ArchiveError::Corrupt(format!(
                "backup '{}': chunk {n} ({name}) does not open with the backup's key",
                backup.id
            ))
        })?;
    let chunk: Chunk = CHUNK_FORMAT
        .decode(&plain)
        .map_err(|e| ArchiveError::Corrupt(format!("backup '{}': chunk {n}: {e}", backup.id)))?;
    if chunk.records.len() as u64 != manifest.chunks[n].records {
        return Err(ArchiveError::Corrupt(format!(
            "backup '{}': chunk {n} holds {} records, the manifest says {}",
            backup.id,
            chunk.records.len(),
            manifest.chunks[n].records
        )));
    }
    Ok(chunk.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: f32) -> Record {
        Record {
            values: vec![v, -v],
            sparse: None,
            metadata: Some(format!("{{\"v\":{v}}}")),
        }
    }

    #[test]
    fn chunks_seal_per_position_and_digests_ignore_the_order_records_came_in() {
        let key = DataKey::from_bytes([3; 32]);
        let mut a = ChunkWriter::new(&key, "b1", "t1", DEFAULT_CHUNK_BYTES);
        let mut b = ChunkWriter::new(&key, "b1", "t1", DEFAULT_CHUNK_BYTES);
        a.namespace("empty");
        b.namespace("empty");
        for i in 0..10 {
            assert!(a.add("ns", format!("id{i}"), record(i as f32)).is_none());
            assert!(b
                .add("ns", format!("id{}", 9 - i), record((9 - i) as f32))
                .is_none());
        }
        let (ca, na) = a.finish();
        let (_, nb) = b.finish();
        assert_eq!(na, nb, "same records, same digests");
        assert_eq!(na.len(), 2);
        assert_eq!(na[0].name, "empty");
        assert_eq!(na[0].records, 0);
        let chunk = ca.unwrap();
        // Bound to its position: chunk 0 does not open as chunk 1, nor in another backup.
        assert!(key.open(&aad("b1", "t1", "chunk/0"), &chunk.bytes).is_ok());
        assert!(key.open(&aad("b1", "t1", "chunk/1"), &chunk.bytes).is_err());
        assert!(key.open(&aad("b2", "t1", "chunk/0"), &chunk.bytes).is_err());
        assert_eq!(chunk.entry.sha256, sha256_hex(&chunk.bytes));
    }
}
