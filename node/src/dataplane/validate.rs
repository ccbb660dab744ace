//! Validation of data-plane requests against Pinecone's limits, before anything is
//! proposed or read: ids, namespaces, dense and sparse values, metadata, filters, listing
//! parameters and response sizes. Every limit is a named constant here (or in the shard
//! machine, which checks the state it produces); a refusal names the field, the value's
//! problem and the limit.

use conifer_proto::pinecone as pb;
use serde_json::{Map, Value};

use super::convert::struct_to_json;
use super::router::Target;
use super::DataError;
use crate::shard::command::{canonical_namespace, check_metadata_size, Sparse};
use crate::shard::engine::Metric;
use crate::shard::filter::{self, Filter};

pub use crate::shard::command::{
    MAX_METADATA_BYTES, MAX_NAMESPACES_PER_INDEX, MAX_RECORDS_PER_INDEX, MAX_RECORDS_PER_NAMESPACE,
};

/// Longest record id, in bytes (Pinecone's limits page).
pub const MAX_ID_BYTES: usize = 512;
/// Most records in one upsert.
pub const MAX_UPSERT_RECORDS: usize = 1000;
/// Largest upsert request, protobuf-encoded.
pub const MAX_UPSERT_BYTES: usize = 2 * 1024 * 1024;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 10_000;
/// Most ids in one fetch.
pub const MAX_FETCH_IDS: usize = 1000;
/// Largest `top_k` of a query that includes values or metadata (Pinecone's limit).
pub const MAX_TOP_K_WITH_DATA: u32 = 1_000;
/// Largest response of a query, fetch or fetch-by-metadata page, in bytes of its protobuf
/// encoding (Pinecone's 4 MB query result size; JSON runs larger). A query or fetch over it
/// is refused, naming the limit; a fetch-by-metadata page ends before it.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Most ids in one delete.
pub const MAX_DELETE_IDS: usize = 1000;
/// Most non-zero entries of a sparse vector.
pub const MAX_SPARSE_NON_ZEROS: usize = 2048;
/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 512;
/// Default and largest page of `list` and `fetch_by_metadata`.
pub const MAX_LIST_LIMIT: u32 = 100;
/// Longest excerpt of a refused value quoted back in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 40;

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, with `...` when it was longer.
pub(super) fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}...")
    } else {
        head
    }
}

/// A namespace name as Pinecone accepts it: at most 512 bytes of printable ASCII (the
/// empty name is the default namespace). Returns its canonical form.
pub(super) fn check_namespace(ns: &str) -> Result<String, DataError> {
    if ns.len() > MAX_NAMESPACE_BYTES {
        return Err(DataError::invalid(format!(
            "namespace is {} bytes; the limit is {MAX_NAMESPACE_BYTES}",
            ns.len()
        )));
    }
    if !ns.is_ascii() {
        return Err(DataError::invalid(format!(
            "Namespace must be ASCII, but got '{}'",
            quoted(ns)
        )));
    }
    if ns.chars().any(char::is_control) {
        return Err(DataError::invalid(
            "namespace must not contain control characters",
        ));
    }
    Ok(canonical_namespace(ns))
}

/// A record id as Pinecone accepts it (limits page; its SDK's integration tests): 1 to
/// [`MAX_ID_BYTES`] bytes of ASCII without NUL. Every id a request names — upserted,
/// updated, fetched, deleted or queried by — is checked alike, since no other id can exist.
pub(super) fn check_id(field: &str, id: &str) -> Result<(), DataError> {
    if id.is_empty() {
        return Err(DataError::invalid(format!("{field} must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(DataError::invalid(format!(
            "{field} is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if !id.is_ascii() {
        return Err(DataError::invalid(format!(
            "Vector ID must be ASCII, but got '{}'",
            quoted(id)
        )));
    }
    if id.contains('\0') {
        return Err(DataError::invalid(
            "Vector ID must not contain null character",
        ));
    }
    Ok(())
}

/// Dense values of record `id`: the index's dimension, finite, and — as Pinecone requires
/// of every dense vector — at least one value not zero.
pub(super) fn check_values(target: &Target, id: &str, values: &[f32]) -> Result<(), DataError> {
    let dimension = target.index.dimension as usize;
    if values.len() != dimension {
        return Err(DataError::invalid(format!(
            "Vector dimension {} does not match the dimension of the index {dimension} \
             (vector ID '{}', index '{}')",
            values.len(),
            quoted(id),
            target.index.name
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(DataError::invalid(format!(
            "Vector ID '{}' contains a NaN or infinite value",
            quoted(id)
        )));
    }
    check_magnitude(&format!("vector ID '{}'", quoted(id)), values)?;
    if values.iter().all(|v| *v == 0.0) {
        return Err(DataError::invalid(format!(
            "Dense vectors must contain at least one non-zero value. Vector ID '{}' contains only zeros",
            quoted(id)
        )));
    }
    Ok(())
}

/// Largest squared length of a dense vector: a quarter of `f32::MAX`, so that every score
/// stays a finite 32-bit float — a dot product is at most the product of the lengths and a
/// squared distance at most the square of their sum (beyond it scores overflowed to
/// infinity, answered as `null`, and cosine normalized to 0).
pub const MAX_SQUARED_NORM: f64 = f32::MAX as f64 / 4.0;

/// Refuses dense `values` (of `what`) longer than [`MAX_SQUARED_NORM`] allows.
pub(super) fn check_magnitude(what: &str, values: &[f32]) -> Result<(), DataError> {
    let squared: f64 = values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
    if squared > MAX_SQUARED_NORM {
        return Err(DataError::invalid(format!(
            "{what} is too long: its squared length is {squared:e}, the limit is \
             {MAX_SQUARED_NORM:e} (scores would overflow 32-bit floats)"
        )));
    }
    Ok(())
}

/// A query vector: the index's dimension and finite; on a cosine index not all zeros, since
/// a zero vector has no direction to compare (every score would be 0).
pub(super) fn check_query_vector(target: &Target, values: &[f32]) -> Result<(), DataError> {
    let dimension = target.index.dimension as usize;
    if values.len() != dimension {
        return Err(DataError::invalid(format!(
            "Query vector dimension {} does not match the dimension of the index {dimension} \
             (index '{}')",
            values.len(),
            target.index.name
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(DataError::invalid(
            "query vector contains a NaN or infinite value",
        ));
    }
    check_magnitude("the query vector", values)?;
    if target.index.metric == Metric::Cosine && values.iter().all(|v| *v == 0.0) {
        return Err(DataError::invalid(
            "Query vector must contain at least one non-zero value: cosine similarity is \
             undefined for a vector of zeros",
        ));
    }
    Ok(())
}

/// Sparse values of record `id`, when given: only on a `dotproduct` index (Pinecone's rule),
/// one value per index, 1 to [`MAX_SPARSE_NON_ZEROS`] entries, indices unique, values finite.
pub(super) fn check_sparse(
    target: &Target,
    id: &str,
    sparse: &Option<pb::SparseValues>,
) -> Result<Option<Sparse>, DataError> {
    let Some(s) = sparse else { return Ok(None) };
    if target.index.metric != Metric::DotProduct {
        return Err(sparse_unsupported(target));
    }
    if s.indices.len() != s.values.len() {
        return Err(DataError::invalid(format!(
            "Sparse vector indices and values must have the same length: vector ID '{}' has {} indices and {} values",
            quoted(id),
            s.indices.len(),
            s.values.len()
        )));
    }
    if s.indices.is_empty() {
        return Err(DataError::invalid(format!(
            "Sparse vector must contain at least one value (vector ID '{}')",
            quoted(id)
        )));
    }
    if s.indices.len() > MAX_SPARSE_NON_ZEROS {
        return Err(DataError::invalid(format!(
            "sparse values of vector ID '{}' have {} non-zeros; the limit is {MAX_SPARSE_NON_ZEROS}",
            quoted(id),
            s.indices.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(s.indices.len());
    if let Some(dup) = s.indices.iter().find(|i| !seen.insert(**i)) {
        return Err(DataError::invalid(format!(
            "Sparse vector indices must be unique: vector ID '{}' repeats index {dup}",
            quoted(id)
        )));
    }
    if s.values.iter().any(|v| !v.is_finite()) {
        return Err(DataError::invalid(format!(
            "sparse values of vector ID '{}' contain a NaN or infinite value",
            quoted(id)
        )));
    }
    Ok(Some((s.indices.clone(), s.values.clone())))
}

/// Pinecone's refusal of sparse values on an index that is not `dotproduct`.
pub(super) fn sparse_unsupported(target: &Target) -> DataError {
    DataError::invalid(format!(
        "Index configuration does not support sparse values - only indexes that are sparse or \
         using dotproduct are supported (index '{}' uses {})",
        target.index.name,
        target.index.metric.as_str()
    ))
}

/// Validates flat metadata as Pinecone does and returns it as JSON text: keys not starting
/// with `$` (reserved for filter operators, so such a field could never be filtered),
/// values strings, numbers, booleans or lists of strings, at most [`MAX_METADATA_BYTES`].
pub(super) fn check_metadata(id: &str, metadata: &Map<String, Value>) -> Result<String, DataError> {
    for (field, value) in metadata {
        if field.starts_with('$') {
            return Err(DataError::invalid(format!(
                "Metadata field '{}' cannot start with '$' (vector ID '{}')",
                quoted(field),
                quoted(id)
            )));
        }
        let ok = match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !ok {
            return Err(DataError::invalid(format!(
                "Metadata value must be a string, number, boolean or list of strings, got '{}' for field '{}' (vector ID '{}')",
                quoted(&value.to_string()),
                quoted(field),
                quoted(id)
            )));
        }
    }
    let text = Value::Object(metadata.clone()).to_string();
    check_metadata_size(id, &text).map_err(DataError::invalid)?;
    Ok(text)
}

pub(super) fn parse_filter(
    filter: Option<&prost_types::Struct>,
) -> Result<Option<(Filter, String)>, DataError> {
    let Some(f) = filter else { return Ok(None) };
    let json = Value::Object(struct_to_json(f));
    let parsed = filter::parse(&json).map_err(|e| DataError::invalid(e.to_string()))?;
    Ok(Some((parsed, json.to_string())))
}

/// A listing's `prefix` (empty when absent): ASCII, as the ids and namespace names it
/// matches, and at most `max_bytes` (theirs).
pub(super) fn check_prefix(prefix: Option<String>, max_bytes: usize) -> Result<String, DataError> {
    let prefix = prefix.unwrap_or_default();
    if prefix.len() > max_bytes {
        return Err(DataError::invalid(format!(
            "prefix is {} bytes; the limit is {max_bytes}",
            prefix.len()
        )));
    }
    if !prefix.is_ascii() {
        return Err(DataError::invalid(format!(
            "prefix must be ASCII, but got '{}'",
            quoted(&prefix)
        )));
    }
    Ok(prefix)
}

/// The size of a response as it is built, refused past [`MAX_RESPONSE_BYTES`].
pub(super) struct ResponseSize {
    bytes: usize,
    items: usize,
    what: &'static str,
    advice: &'static str,
}

impl ResponseSize {
    pub(super) fn new(what: &'static str, advice: &'static str) -> Self {
        Self {
            bytes: 0,
            items: 0,
            what,
            advice,
        }
    }

    /// Counts `item` (as it is encoded inside its response); refuses it when the response
    /// would pass [`MAX_RESPONSE_BYTES`].
    pub(super) fn add(&mut self, item: &impl prost::Message) -> Result<(), DataError> {
        let len = item.encoded_len();
        // The field tag and length prefix around each item.
        self.bytes += len + 1 + prost::encoding::encoded_len_varint(len as u64);
        self.items += 1;
        if self.bytes > MAX_RESPONSE_BYTES {
            return Err(DataError::invalid(format!(
                "the {} passes the limit of {MAX_RESPONSE_BYTES} bytes (4 MiB) at item {}; {}",
                self.what, self.items, self.advice
            )));
        }
        Ok(())
    }
}

pub(super) fn check_limit(limit: Option<u32>) -> Result<usize, DataError> {
    match limit {
        None => Ok(MAX_LIST_LIMIT as usize),
        Some(0) => Err(DataError::invalid("limit must be at least 1")),
        Some(n) if n > MAX_LIST_LIMIT => Err(DataError::invalid(format!(
            "limit is {n}; the limit is {MAX_LIST_LIMIT}"
        ))),
        Some(n) => Ok(n as usize),
    }
}
