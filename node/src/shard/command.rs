//! The shard's command contract, which the data plane imports: records and their limits,
//! the commands a shard group's log carries (filters typed, already validated), what they
//! produce, and the versioned formats of commands and outcomes.

use conifer_raft::Format;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::filter::Filter;

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
        /// Filter, parsed and validated by the data plane.
        filter: Filter,
        /// Fields to set (JSON object text).
        set_metadata: String,
    },
    /// Delete every record matching a filter.
    DeleteByFilter {
        /// Namespace.
        namespace: String,
        /// Filter, parsed and validated by the data plane.
        filter: Filter,
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

/// Format of shard commands in a shard group's log.
pub const COMMAND_FORMAT: Format = Format::new("shard command", 1);
/// Format of a shard command's [`ShardOutcome`], as the response of its proposal.
pub const OUTCOME_FORMAT: Format = Format::new("shard outcome", 1);
