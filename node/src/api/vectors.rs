//! The data-plane operations, shared by gRPC and REST: validation against the limits,
//! then a shard write through Raft or a read from the local replica. Requests and
//! responses are the Pinecone protobuf types; REST converts its JSON to and from them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use conifer_proto::pinecone as pb;
use prost::Message;
use serde_json::{Map, Value};

use super::convert::{json_to_struct, struct_to_json};
use super::ApiError;
use crate::control::state::Metric;
use crate::router::{Resolved, Router, Target};
use crate::shard::filter::{self, Filter};
use crate::shard::machine::{
    canonical_namespace, check_metadata_size, merge_metadata, Namespace, Record, ShardCommand,
    ShardOutput, Sparse, DEFAULT_NAMESPACE,
};

pub use crate::shard::machine::{
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

/// Sequence numbers that travel with responses (Pinecone's `x-pinecone-*-lsn` headers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lsn {
    /// For writes: the sequence number of this request (`x-pinecone-request-lsn`).
    pub request: Option<u64>,
    /// For reads: the highest sequence number applied on the replica that answered
    /// (`x-pinecone-max-indexed-lsn`).
    pub max_indexed: Option<u64>,
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, with `...` when it was longer.
fn quoted(text: &str) -> String {
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
fn check_namespace(ns: &str) -> Result<String, ApiError> {
    if ns.len() > MAX_NAMESPACE_BYTES {
        return Err(ApiError::invalid(format!(
            "namespace is {} bytes; the limit is {MAX_NAMESPACE_BYTES}",
            ns.len()
        )));
    }
    if !ns.is_ascii() {
        return Err(ApiError::invalid(format!(
            "Namespace must be ASCII, but got '{}'",
            quoted(ns)
        )));
    }
    if ns.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "namespace must not contain control characters",
        ));
    }
    Ok(canonical_namespace(ns))
}

/// A record id as Pinecone accepts it (limits page; its SDK's integration tests): 1 to
/// [`MAX_ID_BYTES`] bytes of ASCII without NUL. Every id a request names — upserted,
/// updated, fetched, deleted or queried by — is checked alike, since no other id can exist.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if !id.is_ascii() {
        return Err(ApiError::invalid(format!(
            "Vector ID must be ASCII, but got '{}'",
            quoted(id)
        )));
    }
    if id.contains('\0') {
        return Err(ApiError::invalid(
            "Vector ID must not contain null character",
        ));
    }
    Ok(())
}

/// Dense values of record `id`: the index's dimension, finite, and — as Pinecone requires
/// of every dense vector — at least one value not zero.
fn check_values(target: &Target, id: &str, values: &[f32]) -> Result<(), ApiError> {
    let dimension = target.index.dimension as usize;
    if values.len() != dimension {
        return Err(ApiError::invalid(format!(
            "Vector dimension {} does not match the dimension of the index {dimension} \
             (vector ID '{}', index '{}')",
            values.len(),
            quoted(id),
            target.index.name
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(format!(
            "Vector ID '{}' contains a NaN or infinite value",
            quoted(id)
        )));
    }
    check_magnitude(&format!("vector ID '{}'", quoted(id)), values)?;
    if values.iter().all(|v| *v == 0.0) {
        return Err(ApiError::invalid(format!(
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
fn check_magnitude(what: &str, values: &[f32]) -> Result<(), ApiError> {
    let squared: f64 = values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
    if squared > MAX_SQUARED_NORM {
        return Err(ApiError::invalid(format!(
            "{what} is too long: its squared length is {squared:e}, the limit is \
             {MAX_SQUARED_NORM:e} (scores would overflow 32-bit floats)"
        )));
    }
    Ok(())
}

/// A query vector: the index's dimension and finite; on a cosine index not all zeros, since
/// a zero vector has no direction to compare (every score would be 0).
fn check_query_vector(target: &Target, values: &[f32]) -> Result<(), ApiError> {
    let dimension = target.index.dimension as usize;
    if values.len() != dimension {
        return Err(ApiError::invalid(format!(
            "Query vector dimension {} does not match the dimension of the index {dimension} \
             (index '{}')",
            values.len(),
            target.index.name
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(
            "query vector contains a NaN or infinite value",
        ));
    }
    check_magnitude("the query vector", values)?;
    if target.index.metric == Metric::Cosine && values.iter().all(|v| *v == 0.0) {
        return Err(ApiError::invalid(
            "Query vector must contain at least one non-zero value: cosine similarity is \
             undefined for a vector of zeros",
        ));
    }
    Ok(())
}

/// Sparse values of record `id`, when given: only on a `dotproduct` index (Pinecone's rule),
/// one value per index, 1 to [`MAX_SPARSE_NON_ZEROS`] entries, indices unique, values finite.
fn check_sparse(
    target: &Target,
    id: &str,
    sparse: &Option<pb::SparseValues>,
) -> Result<Option<Sparse>, ApiError> {
    let Some(s) = sparse else { return Ok(None) };
    if target.index.metric != Metric::DotProduct {
        return Err(sparse_unsupported(target));
    }
    if s.indices.len() != s.values.len() {
        return Err(ApiError::invalid(format!(
            "Sparse vector indices and values must have the same length: vector ID '{}' has {} indices and {} values",
            quoted(id),
            s.indices.len(),
            s.values.len()
        )));
    }
    if s.indices.is_empty() {
        return Err(ApiError::invalid(format!(
            "Sparse vector must contain at least one value (vector ID '{}')",
            quoted(id)
        )));
    }
    if s.indices.len() > MAX_SPARSE_NON_ZEROS {
        return Err(ApiError::invalid(format!(
            "sparse values of vector ID '{}' have {} non-zeros; the limit is {MAX_SPARSE_NON_ZEROS}",
            quoted(id),
            s.indices.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(s.indices.len());
    if let Some(dup) = s.indices.iter().find(|i| !seen.insert(**i)) {
        return Err(ApiError::invalid(format!(
            "Sparse vector indices must be unique: vector ID '{}' repeats index {dup}",
            quoted(id)
        )));
    }
    if s.values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(format!(
            "sparse values of vector ID '{}' contain a NaN or infinite value",
            quoted(id)
        )));
    }
    Ok(Some((s.indices.clone(), s.values.clone())))
}

/// Pinecone's refusal of sparse values on an index that is not `dotproduct`.
fn sparse_unsupported(target: &Target) -> ApiError {
    ApiError::invalid(format!(
        "Index configuration does not support sparse values - only indexes that are sparse or \
         using dotproduct are supported (index '{}' uses {})",
        target.index.name,
        target.index.metric.as_str()
    ))
}

/// Validates flat metadata as Pinecone does and returns it as JSON text: keys not starting
/// with `$` (reserved for filter operators, so such a field could never be filtered),
/// values strings, numbers, booleans or lists of strings, at most [`MAX_METADATA_BYTES`].
fn check_metadata(id: &str, metadata: &Map<String, Value>) -> Result<String, ApiError> {
    for (field, value) in metadata {
        if field.starts_with('$') {
            return Err(ApiError::invalid(format!(
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
            return Err(ApiError::invalid(format!(
                "Metadata value must be a string, number, boolean or list of strings, got '{}' for field '{}' (vector ID '{}')",
                quoted(&value.to_string()),
                quoted(field),
                quoted(id)
            )));
        }
    }
    let text = Value::Object(metadata.clone()).to_string();
    check_metadata_size(id, &text).map_err(ApiError::invalid)?;
    Ok(text)
}

fn parse_filter(
    filter: Option<&prost_types::Struct>,
) -> Result<Option<(Filter, String)>, ApiError> {
    let Some(f) = filter else { return Ok(None) };
    let json = Value::Object(struct_to_json(f));
    let parsed = filter::parse(&json).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Some((parsed, json.to_string())))
}

fn record_to_vector(id: &str, record: &Record, values: bool, metadata: bool) -> pb::Vector {
    pb::Vector {
        id: id.to_string(),
        values: if values {
            record.values.clone()
        } else {
            Vec::new()
        },
        sparse_values: if values {
            record.sparse.as_ref().map(|(i, v)| pb::SparseValues {
                indices: i.clone(),
                values: v.clone(),
            })
        } else {
            None
        },
        metadata: if metadata {
            record.metadata_map().map(|m| json_to_struct(&m))
        } else {
            None
        },
    }
}

fn read_lsn(target: &Target) -> Lsn {
    Lsn {
        request: None,
        max_indexed: Some(target.shard.state.applied_index()),
    }
}

/// `Upsert`: all records valid or none written.
pub async fn upsert_local(
    router: &Router,
    target: &Target,
    req: pb::UpsertRequest,
) -> Result<(pb::UpsertResponse, Lsn), ApiError> {
    if req.vectors.is_empty() {
        return Err(ApiError::invalid(
            "vectors must contain at least one vector",
        ));
    }
    if req.vectors.len() > MAX_UPSERT_RECORDS {
        return Err(ApiError::invalid(format!(
            "upsert has {} vectors; the limit is {MAX_UPSERT_RECORDS} per request",
            req.vectors.len()
        )));
    }
    let size = req.encoded_len();
    if size > MAX_UPSERT_BYTES {
        return Err(ApiError::invalid(format!(
            "upsert is {size} bytes; the limit is {MAX_UPSERT_BYTES} per request"
        )));
    }
    let namespace = check_namespace(&req.namespace)?;
    let mut records = Vec::with_capacity(req.vectors.len());
    let mut seen = std::collections::HashSet::new();
    for v in req.vectors {
        check_id("vector id", &v.id)?;
        check_values(target, &v.id, &v.values)?;
        let sparse = check_sparse(target, &v.id, &v.sparse_values)?;
        let metadata = match &v.metadata {
            Some(m) => Some(check_metadata(&v.id, &struct_to_json(m))?),
            None => None,
        };
        if !seen.insert(v.id.clone()) {
            // Pinecone keeps the last occurrence of a duplicated id.
            records.retain(|(id, _): &(String, Record)| id != &v.id);
        }
        records.push((
            v.id,
            Record {
                values: v.values,
                sparse,
                metadata,
            },
        ));
    }
    let command = match router.project_records_elsewhere(target).await? {
        None => ShardCommand::Upsert { namespace, records },
        Some(elsewhere) => ShardCommand::UpsertInProject {
            namespace,
            records,
            elsewhere,
            project_limit: router.max_records_per_project(),
        },
    };
    let (output, lsn) = router.write(target, command).await?;
    let count = match output {
        ShardOutput::Upserted(n) => n,
        _ => 0,
    };
    Ok((
        pb::UpsertResponse {
            upserted_count: count,
        },
        Lsn {
            request: Some(lsn),
            max_indexed: None,
        },
    ))
}

/// Refuses the query fields Conifer would otherwise ignore: until sparse-dense search
/// exists, a `sparse_vector` (on a non-`dotproduct` index with Pinecone's own refusal); the
/// deprecated batch `queries`; and `scan_factor` / `max_candidates`, which tune Pinecone's
/// dedicated read nodes. Nothing semantic is dropped silently.
#[allow(deprecated)] // `queries` is part of the wire format, refused here.
fn refuse_unhonoured_query_fields(target: &Target, req: &pb::QueryRequest) -> Result<(), ApiError> {
    if req.sparse_vector.is_some() {
        if target.index.metric != Metric::DotProduct {
            return Err(sparse_unsupported(target));
        }
        if !req.id.is_empty() {
            return Err(ApiError::invalid(
                "Cannot provide both 'ID' and 'sparse_vector' at the same time",
            ));
        }
        return Err(ApiError::invalid(
            "'sparseVector' is not supported: Conifer ranks by the dense 'vector' only and does \
             not serve sparse-dense (hybrid) queries yet; send the query without 'sparseVector'",
        ));
    }
    if !req.queries.is_empty() {
        return Err(ApiError::invalid(
            "the deprecated 'queries' field is not supported; send one 'vector' or 'id'",
        ));
    }
    if req.scan_factor.is_some() || req.max_candidates.is_some() {
        return Err(ApiError::invalid(
            "'scanFactor' and 'maxCandidates' tune dedicated read nodes, which Conifer does not \
             have; send the query without them",
        ));
    }
    Ok(())
}

/// `Query` by vector or by id.
#[allow(deprecated)] // `results` is part of the wire format; left empty.
pub async fn query_local(
    _router: &Router,
    target: &Target,
    req: pb::QueryRequest,
) -> Result<(pb::QueryResponse, Lsn), ApiError> {
    if req.top_k == 0 || req.top_k > MAX_TOP_K {
        return Err(ApiError::invalid(format!(
            "top_k is {}; it must be between 1 and {MAX_TOP_K}",
            req.top_k
        )));
    }
    if (req.include_values || req.include_metadata) && req.top_k > MAX_TOP_K_WITH_DATA {
        return Err(ApiError::invalid(format!(
            "top_k is {}; with includeValues or includeMetadata it must be at most \
             {MAX_TOP_K_WITH_DATA}",
            req.top_k
        )));
    }
    refuse_unhonoured_query_fields(target, &req)?;
    let namespace = check_namespace(&req.namespace)?;
    let filter = parse_filter(req.filter.as_ref())?;
    let by_id = !req.id.is_empty();
    match (by_id, !req.vector.is_empty()) {
        (true, true) => {
            return Err(ApiError::invalid(
                "Cannot provide both 'ID' and 'vector' at the same time",
            ))
        }
        (false, false) => {
            return Err(ApiError::invalid(
                "Either 'vector' or 'ID' must be provided",
            ))
        }
        (true, false) => check_id("id", &req.id)?,
        (false, true) => check_query_vector(target, &req.vector)?,
    }
    let guard = target.shard.state.read();
    let ns: Option<&Namespace> = guard.namespace(&namespace);
    // A query by an id the namespace does not hold matches nothing (Pinecone answers 200
    // with empty matches, as its SDKs' integration tests expect).
    let vector = if by_id {
        ns.and_then(|n| n.get(&req.id)).map(|r| r.values.as_slice())
    } else {
        Some(req.vector.as_slice())
    };
    let hits = match (ns, vector) {
        (Some(ns), Some(vector)) => ns
            .query(vector, req.top_k as usize, filter.as_ref().map(|f| &f.0))
            .map_err(ApiError::internal)?,
        _ => Vec::new(),
    };
    let mut size = ResponseSize::new(
        "query result",
        "lower topK, or leave out values or metadata",
    );
    let matches = hits
        .into_iter()
        .map(|h| {
            let v = record_to_vector(h.id, h.record, req.include_values, req.include_metadata);
            let scored = pb::ScoredVector {
                id: v.id,
                score: h.score,
                values: v.values,
                sparse_values: v.sparse_values,
                metadata: v.metadata,
            };
            size.add(&scored)?;
            Ok(scored)
        })
        .collect::<Result<_, ApiError>>()?;
    drop(guard);
    Ok((
        pb::QueryResponse {
            results: Vec::new(),
            matches,
            namespace: req.namespace,
            usage: Some(pb::Usage {
                read_units: Some(1),
            }),
        },
        read_lsn(target),
    ))
}

/// `Fetch` by ids.
pub async fn fetch_local(
    _router: &Router,
    target: &Target,
    req: pb::FetchRequest,
) -> Result<(pb::FetchResponse, Lsn), ApiError> {
    if req.ids.is_empty() {
        return Err(ApiError::invalid("ids must contain at least one id"));
    }
    if req.ids.len() > MAX_FETCH_IDS {
        return Err(ApiError::invalid(format!(
            "fetch has {} ids; the limit is {MAX_FETCH_IDS}",
            req.ids.len()
        )));
    }
    for id in &req.ids {
        check_id("id", id)?;
    }
    let namespace = check_namespace(&req.namespace)?;
    let guard = target.shard.state.read();
    let mut size = ResponseSize::new("fetch result", "fetch fewer ids at a time");
    let vectors = match guard.namespace(&namespace) {
        Some(ns) => req
            .ids
            .iter()
            .filter_map(|id| ns.get(id).map(|r| (id, r)))
            .map(|(id, r)| {
                let vector = record_to_vector(id, r, true, true);
                size.add(&vector)?;
                Ok((id.clone(), vector))
            })
            .collect::<Result<_, ApiError>>()?,
        None => Default::default(),
    };
    drop(guard);
    Ok((
        pb::FetchResponse {
            vectors,
            namespace: req.namespace,
            usage: Some(pb::Usage {
                read_units: Some(1),
            }),
        },
        read_lsn(target),
    ))
}

/// What a pagination token pages; a token is only good for the listing that issued it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Listing {
    /// `List`: record ids of a namespace, by prefix.
    Ids = 1,
    /// `FetchByMetadata`: records of a namespace matching a filter.
    ByMetadata = 2,
    /// `ListNamespaces`: namespaces by prefix.
    Namespaces = 3,
}

/// Format byte of pagination tokens.
const TOKEN_FORMAT: u8 = 1;
/// Bytes of each parameter digest in a token.
const TOKEN_DIGEST_BYTES: usize = 8;

/// The parameters a listing's pages must share: the index and namespace (`where_`: project,
/// index and namespace, the namespace empty for `ListNamespaces`) and the prefix or the
/// filter's canonical JSON. Tokens are not secret: one only positions a listing the caller
/// may read anyway.
struct PageScope<'a> {
    listing: Listing,
    where_: String,
    /// Name of the second parameter as the client sends it, for errors.
    narrowing_name: &'static str,
    narrowing: &'a str,
}

/// Where a listing pages: the index (by project and name) and the namespace.
fn page_place(target: &Target, namespace: &str) -> String {
    format!(
        "{}\0{}\0{namespace}",
        target.index.project_id, target.index.name
    )
}

fn digest(text: &str) -> [u8; TOKEN_DIGEST_BYTES] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(text.as_bytes());
    let mut out = [0u8; TOKEN_DIGEST_BYTES];
    out.copy_from_slice(&full[..TOKEN_DIGEST_BYTES]);
    out
}

impl PageScope<'_> {
    /// The token continuing this listing after `last`: format, listing, digests of the
    /// namespace and of the prefix or filter, then `last`, base64url.
    fn token(&self, last: &str) -> String {
        let mut bytes = vec![TOKEN_FORMAT, self.listing as u8];
        bytes.extend_from_slice(&digest(&self.where_));
        bytes.extend_from_slice(&digest(self.narrowing));
        bytes.extend_from_slice(last.as_bytes());
        B64.encode(bytes)
    }

    /// The key to continue after, from a token this listing issued; a token of another
    /// listing, namespace, prefix or filter is refused naming the parameter that differs.
    fn parse(&self, token: Option<&str>) -> Result<Option<String>, ApiError> {
        let token = match token {
            None | Some("") => return Ok(None),
            Some(t) => t,
        };
        let foreign = || ApiError::invalid("pagination_token is not a valid pagination token");
        let bytes = B64.decode(token).map_err(|_| foreign())?;
        let header = 2 + 2 * TOKEN_DIGEST_BYTES;
        if bytes.len() < header || bytes[0] != TOKEN_FORMAT {
            return Err(foreign());
        }
        if bytes[1] != self.listing as u8 {
            return Err(ApiError::invalid(
                "pagination_token was issued by another kind of listing",
            ));
        }
        let (ns, narrowing) = bytes[2..header].split_at(TOKEN_DIGEST_BYTES);
        if ns != digest(&self.where_) {
            return Err(ApiError::invalid(
                "pagination_token was issued for another index or namespace: send the namespace of the \
                 first page with every page",
            ));
        }
        if narrowing != digest(self.narrowing) {
            return Err(ApiError::invalid(format!(
                "pagination_token was issued for another {0}: send the {0} of the first page \
                 with every page",
                self.narrowing_name
            )));
        }
        String::from_utf8(bytes[header..].to_vec())
            .map(Some)
            .map_err(|_| foreign())
    }

    /// Cuts `items` (fetched with one extra) to `limit`; when there were more, the token of
    /// the last kept item continues the listing.
    fn paginate<T>(
        &self,
        items: &mut Vec<T>,
        limit: usize,
        key: impl Fn(&T) -> &str,
    ) -> Option<pb::Pagination> {
        if items.len() <= limit {
            return None;
        }
        items.truncate(limit);
        items.last().map(|last| pb::Pagination {
            next: self.token(key(last)),
        })
    }
}

/// A listing's `prefix` (empty when absent): ASCII, as the ids and namespace names it
/// matches, and at most `max_bytes` (theirs).
fn check_prefix(prefix: Option<String>, max_bytes: usize) -> Result<String, ApiError> {
    let prefix = prefix.unwrap_or_default();
    if prefix.len() > max_bytes {
        return Err(ApiError::invalid(format!(
            "prefix is {} bytes; the limit is {max_bytes}",
            prefix.len()
        )));
    }
    if !prefix.is_ascii() {
        return Err(ApiError::invalid(format!(
            "prefix must be ASCII, but got '{}'",
            quoted(&prefix)
        )));
    }
    Ok(prefix)
}

/// The size of a response as it is built, refused past [`MAX_RESPONSE_BYTES`].
struct ResponseSize {
    bytes: usize,
    items: usize,
    what: &'static str,
    advice: &'static str,
}

impl ResponseSize {
    fn new(what: &'static str, advice: &'static str) -> Self {
        Self {
            bytes: 0,
            items: 0,
            what,
            advice,
        }
    }

    /// Counts `item` (as it is encoded inside its response); refuses it when the response
    /// would pass [`MAX_RESPONSE_BYTES`].
    fn add(&mut self, item: &impl prost::Message) -> Result<(), ApiError> {
        let len = item.encoded_len();
        // The field tag and length prefix around each item.
        self.bytes += len + 1 + prost::encoding::encoded_len_varint(len as u64);
        self.items += 1;
        if self.bytes > MAX_RESPONSE_BYTES {
            return Err(ApiError::invalid(format!(
                "the {} passes the limit of {MAX_RESPONSE_BYTES} bytes (4 MiB) at item {}; {}",
                self.what, self.items, self.advice
            )));
        }
        Ok(())
    }
}

fn check_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(MAX_LIST_LIMIT as usize),
        Some(0) => Err(ApiError::invalid("limit must be at least 1")),
        Some(n) if n > MAX_LIST_LIMIT => Err(ApiError::invalid(format!(
            "limit is {n}; the limit is {MAX_LIST_LIMIT}"
        ))),
        Some(n) => Ok(n as usize),
    }
}

/// `List` ids by prefix, paginated.
pub async fn list_local(
    _router: &Router,
    target: &Target,
    req: pb::ListRequest,
) -> Result<(pb::ListResponse, Lsn), ApiError> {
    let namespace = check_namespace(&req.namespace)?;
    let limit = check_limit(req.limit)?;
    let prefix = check_prefix(req.prefix, MAX_ID_BYTES)?;
    let scope = PageScope {
        listing: Listing::Ids,
        where_: page_place(target, &namespace),
        narrowing_name: "prefix",
        narrowing: &prefix,
    };
    let after = scope.parse(req.pagination_token.as_deref())?;
    let guard = target.shard.state.read();
    let mut ids = match guard.namespace(&namespace) {
        Some(ns) => ns.list(&prefix, after.as_deref(), limit + 1),
        None => Vec::new(),
    };
    drop(guard);
    let pagination = scope.paginate(&mut ids, limit, |last| last.as_str());
    Ok((
        pb::ListResponse {
            vectors: ids.into_iter().map(|id| pb::ListItem { id }).collect(),
            pagination,
            namespace: req.namespace,
            usage: Some(pb::Usage {
                read_units: Some(1),
            }),
        },
        read_lsn(target),
    ))
}

/// `FetchByMetadata`: records matching a filter, paginated by id.
pub async fn fetch_by_metadata_local(
    _router: &Router,
    target: &Target,
    req: pb::FetchByMetadataRequest,
) -> Result<(pb::FetchByMetadataResponse, Lsn), ApiError> {
    let namespace = check_namespace(&req.namespace)?;
    let limit = check_limit(req.limit)?;
    if req.filter.as_ref().is_some_and(|f| f.fields.is_empty()) {
        return Err(ApiError::invalid(
            "Empty filter provided for fetch by metadata request",
        ));
    }
    let filter = parse_filter(req.filter.as_ref())?;
    let scope = PageScope {
        listing: Listing::ByMetadata,
        where_: page_place(target, &namespace),
        narrowing_name: "filter",
        narrowing: filter.as_ref().map_or("", |f| f.1.as_str()),
    };
    let after = scope.parse(req.pagination_token.as_deref())?;
    let guard = target.shard.state.read();
    let mut found: Vec<(String, pb::Vector)> = Vec::new();
    // A page ends at `limit` records or before MAX_RESPONSE_BYTES, whichever comes first;
    // the record that did not fit opens the next page.
    let mut size = ResponseSize::new("fetch by metadata page", "");
    let mut page_limit = limit;
    if let Some(ns) = guard.namespace(&namespace) {
        let all = Filter::And(Vec::new());
        for (id, record) in ns.matching(filter.as_ref().map_or(&all, |f| &f.0)) {
            if after.as_deref().is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            let vector = record_to_vector(id, record, true, true);
            if size.add(&vector).is_err() && !found.is_empty() {
                page_limit = found.len();
                found.push((id.clone(), vector));
                break;
            }
            found.push((id.clone(), vector));
            if found.len() > limit {
                break;
            }
        }
    }
    drop(guard);
    let pagination = scope.paginate(&mut found, page_limit, |(id, _)| id.as_str());
    Ok((
        pb::FetchByMetadataResponse {
            vectors: found.into_iter().collect(),
            namespace: req.namespace,
            usage: Some(pb::Usage {
                read_units: Some(1),
            }),
            pagination,
        },
        read_lsn(target),
    ))
}

/// `Delete` by ids, everything, or a filter.
pub async fn delete_local(
    router: &Router,
    target: &Target,
    req: pb::DeleteRequest,
) -> Result<(pb::DeleteResponse, Lsn), ApiError> {
    let namespace = check_namespace(&req.namespace)?;
    if req.delete_all && !req.ids.is_empty() {
        return Err(ApiError::invalid(
            "No explicit IDs allowed when delete_all=true",
        ));
    }
    if req.delete_all && req.filter.is_some() {
        return Err(ApiError::invalid("No filter allowed when delete_all=true"));
    }
    if !req.ids.is_empty() && req.filter.is_some() {
        return Err(ApiError::invalid("give either 'ids' or 'filter', not both"));
    }
    if req.filter.as_ref().is_some_and(|f| f.fields.is_empty()) {
        return Err(ApiError::invalid(
            "Delete with empty metadata filter is not allowed",
        ));
    }
    if req.ids.is_empty() && !req.delete_all && req.filter.is_none() {
        return Err(ApiError::invalid(
            "one of 'ids', 'deleteAll' and 'filter' must be given",
        ));
    }
    let command = if req.delete_all {
        ShardCommand::DeleteAll { namespace }
    } else if let Some((_, text)) = parse_filter(req.filter.as_ref())? {
        ShardCommand::DeleteByFilter {
            namespace,
            filter: text,
        }
    } else {
        if req.ids.len() > MAX_DELETE_IDS {
            return Err(ApiError::invalid(format!(
                "delete has {} ids; the limit is {MAX_DELETE_IDS}",
                req.ids.len()
            )));
        }
        for id in &req.ids {
            check_id("id", id)?;
        }
        ShardCommand::Delete {
            namespace,
            ids: req.ids,
        }
    };
    let (_, lsn) = router.write(target, command).await?;
    Ok((
        pb::DeleteResponse {},
        Lsn {
            request: Some(lsn),
            max_indexed: None,
        },
    ))
}

/// `Update` of one record by id, or metadata of all records matching a filter (`dry_run`
/// only counts them).
pub async fn update_local(
    router: &Router,
    target: &Target,
    req: pb::UpdateRequest,
) -> Result<(pb::UpdateResponse, Lsn), ApiError> {
    let namespace = check_namespace(&req.namespace)?;
    let set_metadata = match &req.set_metadata {
        Some(m) => Some(check_metadata(
            if req.id.is_empty() {
                "(filter)"
            } else {
                &req.id
            },
            &struct_to_json(m),
        )?),
        None => None,
    };
    if let Some(filter_struct) = req.filter.as_ref() {
        if !req.id.is_empty() {
            return Err(ApiError::invalid("give either 'id' or 'filter', not both"));
        }
        if !req.values.is_empty() || req.sparse_values.is_some() {
            return Err(ApiError::invalid(
                "Update by metadata request does not support updating vector values.",
            ));
        }
        if filter_struct.fields.is_empty() {
            return Err(ApiError::invalid(
                "Update with empty metadata filter is not allowed",
            ));
        }
        let (filter, text) =
            parse_filter(Some(filter_struct))?.unwrap_or((Filter::And(Vec::new()), "{}".into()));
        if req.dry_run.unwrap_or(false) {
            let guard = target.shard.state.read();
            let matched = match (guard.namespace(&namespace), &set_metadata) {
                (None, _) => 0,
                (Some(ns), None) => ns.count_matching(&filter) as usize,
                // A dry run answers as the update would: refused when a merge would put a
                // record over the metadata limit.
                (Some(ns), Some(set)) => {
                    let set: Map<String, Value> = serde_json::from_str(set)
                        .map_err(|e| ApiError::internal(format!("setMetadata: {e}")))?;
                    let hits = ns.matching(&filter);
                    for (id, record) in &hits {
                        merge_metadata(id, &mut (*record).clone(), &set)
                            .map_err(|e| ApiError::invalid(e.to_string()))?;
                    }
                    hits.len()
                }
            };
            return Ok((
                pb::UpdateResponse {
                    matched_records: Some(matched as i32),
                },
                read_lsn(target),
            ));
        }
        let set = set_metadata
            .ok_or_else(|| ApiError::invalid("an update by filter needs 'set_metadata'"))?;
        let (output, lsn) = router
            .write(
                target,
                ShardCommand::UpdateByFilter {
                    namespace,
                    filter: text,
                    set_metadata: set,
                },
            )
            .await?;
        let matched = if let ShardOutput::Updated(n) = output {
            n as i32
        } else {
            0
        };
        return Ok((
            pb::UpdateResponse {
                matched_records: Some(matched),
            },
            Lsn {
                request: Some(lsn),
                max_indexed: None,
            },
        ));
    }
    check_id("id", &req.id)?;
    if req.dry_run == Some(true) {
        return Err(ApiError::invalid(
            "'dryRun' applies to an update by filter only",
        ));
    }
    let values = if req.values.is_empty() {
        None
    } else {
        check_values(target, &req.id, &req.values)?;
        Some(req.values)
    };
    let sparse = check_sparse(target, &req.id, &req.sparse_values)?;
    let (output, lsn) = router
        .write(
            target,
            ShardCommand::Update {
                namespace,
                id: req.id.clone(),
                values,
                sparse,
                set_metadata,
            },
        )
        .await?;
    let matched = if let ShardOutput::Updated(n) = output {
        n as i32
    } else {
        0
    };
    Ok((
        pb::UpdateResponse {
            matched_records: Some(matched),
        },
        Lsn {
            request: Some(lsn),
            max_indexed: None,
        },
    ))
}

/// `DescribeIndexStats`, counting only records matching the filter when one is given.
pub async fn describe_index_stats_local(
    _router: &Router,
    target: &Target,
    req: pb::DescribeIndexStatsRequest,
) -> Result<(pb::DescribeIndexStatsResponse, Lsn), ApiError> {
    let filter = parse_filter(req.filter.as_ref())?;
    let guard = target.shard.state.read();
    let mut namespaces = std::collections::HashMap::new();
    let mut total = 0u32;
    for (name, _) in guard.namespace_counts() {
        let Some(ns) = guard.namespace(&name) else {
            continue;
        };
        let count = match &filter {
            Some((f, _)) => ns.count_matching(f) as usize,
            None => ns.len(),
        } as u32;
        total += count;
        namespaces.insert(
            name,
            pb::NamespaceSummary {
                vector_count: count,
            },
        );
    }
    drop(guard);
    Ok((
        pb::DescribeIndexStatsResponse {
            namespaces,
            dimension: Some(target.index.dimension),
            index_fullness: 0.0,
            total_vector_count: total,
            metric: Some(target.index.metric.as_str().to_string()),
            vector_type: Some(target.index.vector_type.clone()),
            memory_fullness: None,
            storage_fullness: None,
        },
        read_lsn(target),
    ))
}

/// `ListNamespaces`, by name, paginated.
pub async fn list_namespaces_local(
    _router: &Router,
    target: &Target,
    req: pb::ListNamespacesRequest,
) -> Result<(pb::ListNamespacesResponse, Lsn), ApiError> {
    let limit = check_limit(req.limit)?;
    let prefix = check_prefix(req.prefix, MAX_NAMESPACE_BYTES)?;
    let scope = PageScope {
        listing: Listing::Namespaces,
        where_: page_place(target, ""),
        narrowing_name: "prefix",
        narrowing: &prefix,
    };
    let after = scope.parse(req.pagination_token.as_deref())?;
    let guard = target.shard.state.read();
    let all: Vec<(String, u64)> = guard
        .namespace_counts()
        .into_iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .collect();
    drop(guard);
    let total = all.len() as i32;
    let mut page: Vec<(String, u64)> = all
        .into_iter()
        .filter(|(n, _)| after.as_deref().is_none_or(|a| n.as_str() > a))
        .take(limit + 1)
        .collect();
    let pagination = scope.paginate(&mut page, limit, |(n, _)| n.as_str());
    Ok((
        pb::ListNamespacesResponse {
            namespaces: page
                .into_iter()
                .map(|(name, count)| namespace_description(name, count))
                .collect(),
            pagination,
            total_count: total,
        },
        read_lsn(target),
    ))
}

fn namespace_description(name: String, record_count: u64) -> pb::NamespaceDescription {
    pb::NamespaceDescription {
        name,
        record_count,
        schema: None,
        indexed_fields: None,
    }
}

/// `DescribeNamespace`.
pub async fn describe_namespace_local(
    _router: &Router,
    target: &Target,
    req: pb::DescribeNamespaceRequest,
) -> Result<(pb::NamespaceDescription, Lsn), ApiError> {
    let name = check_namespace(&req.namespace)?;
    let guard = target.shard.state.read();
    let count = guard.namespace(&name).map(|ns| ns.len() as u64);
    drop(guard);
    let count =
        count.ok_or_else(|| ApiError::not_found(format!("namespace '{name}' not found")))?;
    Ok((namespace_description(name, count), read_lsn(target)))
}

/// `CreateNamespace`.
pub async fn create_namespace_local(
    router: &Router,
    target: &Target,
    req: pb::CreateNamespaceRequest,
) -> Result<(pb::NamespaceDescription, Lsn), ApiError> {
    if req.name.is_empty() || req.name == DEFAULT_NAMESPACE {
        return Err(ApiError::invalid(
            "name must be a non-empty namespace name other than __default__",
        ));
    }
    let name = check_namespace(&req.name)?;
    // A schema makes only the fields it lists filterable; Conifer indexes every field, so it
    // could not honour one.
    if req.schema.is_some() {
        return Err(ApiError::invalid(
            "'schema' is not supported: Conifer indexes every metadata field of a namespace, so \
             it cannot limit filtering to the fields a schema lists; create the namespace \
             without one",
        ));
    }
    let (_, lsn) = router
        .write(target, ShardCommand::CreateNamespace { name: name.clone() })
        .await?;
    Ok((
        namespace_description(name, 0),
        Lsn {
            request: Some(lsn),
            max_indexed: None,
        },
    ))
}

/// `DeleteNamespace`.
pub async fn delete_namespace_local(
    router: &Router,
    target: &Target,
    req: pb::DeleteNamespaceRequest,
) -> Result<(pb::DeleteResponse, Lsn), ApiError> {
    let name = check_namespace(&req.namespace)?;
    let (_, lsn) = router
        .write(target, ShardCommand::DeleteNamespace { name })
        .await?;
    Ok((
        pb::DeleteResponse {},
        Lsn {
            request: Some(lsn),
            max_indexed: None,
        },
    ))
}

/// Defines the public form of an operation: run on the local replica, or forward the
/// protobuf request to a replica when this node holds none.
macro_rules! routed {
    ($(#[$doc:meta])* $name:ident, $local:ident, $op:literal, $req:ty, $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(router: &Router, target: &Resolved, req: $req) -> Result<($resp, Lsn), ApiError> {
            match target {
                Resolved::Local(t) => $local(router, t, req).await,
                Resolved::Remote(r) => router.forward(r, $op, &req).await,
            }
        }
    };
}

routed!(
    /// `Upsert` (see [`upsert_local`]).
    upsert,
    upsert_local,
    "Upsert",
    pb::UpsertRequest,
    pb::UpsertResponse
);
routed!(
    /// `Query` (see [`query_local`]).
    query,
    query_local,
    "Query",
    pb::QueryRequest,
    pb::QueryResponse
);
routed!(
    /// `Fetch` (see [`fetch_local`]).
    fetch,
    fetch_local,
    "Fetch",
    pb::FetchRequest,
    pb::FetchResponse
);
routed!(
    /// `List` (see [`list_local`]).
    list,
    list_local,
    "List",
    pb::ListRequest,
    pb::ListResponse
);
routed!(
    /// `FetchByMetadata` (see [`fetch_by_metadata_local`]).
    fetch_by_metadata,
    fetch_by_metadata_local,
    "FetchByMetadata",
    pb::FetchByMetadataRequest,
    pb::FetchByMetadataResponse
);
routed!(
    /// `Delete` (see [`delete_local`]).
    delete,
    delete_local,
    "Delete",
    pb::DeleteRequest,
    pb::DeleteResponse
);
routed!(
    /// `Update` (see [`update_local`]).
    update,
    update_local,
    "Update",
    pb::UpdateRequest,
    pb::UpdateResponse
);
routed!(
    /// `DescribeIndexStats` (see [`describe_index_stats_local`]).
    describe_index_stats,
    describe_index_stats_local,
    "DescribeIndexStats",
    pb::DescribeIndexStatsRequest,
    pb::DescribeIndexStatsResponse
);
routed!(
    /// `ListNamespaces` (see [`list_namespaces_local`]).
    list_namespaces,
    list_namespaces_local,
    "ListNamespaces",
    pb::ListNamespacesRequest,
    pb::ListNamespacesResponse
);
routed!(
    /// `DescribeNamespace` (see [`describe_namespace_local`]).
    describe_namespace,
    describe_namespace_local,
    "DescribeNamespace",
    pb::DescribeNamespaceRequest,
    pb::NamespaceDescription
);
routed!(
    /// `CreateNamespace` (see [`create_namespace_local`]).
    create_namespace,
    create_namespace_local,
    "CreateNamespace",
    pb::CreateNamespaceRequest,
    pb::NamespaceDescription
);
routed!(
    /// `DeleteNamespace` (see [`delete_namespace_local`]).
    delete_namespace,
    delete_namespace_local,
    "DeleteNamespace",
    pb::DeleteNamespaceRequest,
    pb::DeleteResponse
);

/// Runs a forwarded operation on the local replica: decodes the request, encodes the reply.
pub async fn run_encoded(
    router: &Router,
    target: &Target,
    op: &str,
    request: &[u8],
) -> Result<(Vec<u8>, Lsn), ApiError> {
    fn decode<T: Message + Default>(bytes: &[u8]) -> Result<T, ApiError> {
        T::decode(bytes)
            .map_err(|e| ApiError::invalid(format!("undecodable forwarded request: {e}")))
    }
    fn encode<T: Message>((resp, lsn): (T, Lsn)) -> (Vec<u8>, Lsn) {
        (resp.encode_to_vec(), lsn)
    }
    Ok(match op {
        "Upsert" => encode(upsert_local(router, target, decode(request)?).await?),
        "Query" => encode(query_local(router, target, decode(request)?).await?),
        "Fetch" => encode(fetch_local(router, target, decode(request)?).await?),
        "List" => encode(list_local(router, target, decode(request)?).await?),
        "FetchByMetadata" => {
            encode(fetch_by_metadata_local(router, target, decode(request)?).await?)
        }
        "Delete" => encode(delete_local(router, target, decode(request)?).await?),
        "Update" => encode(update_local(router, target, decode(request)?).await?),
        "DescribeIndexStats" => {
            encode(describe_index_stats_local(router, target, decode(request)?).await?)
        }
        "ListNamespaces" => encode(list_namespaces_local(router, target, decode(request)?).await?),
        "DescribeNamespace" => {
            encode(describe_namespace_local(router, target, decode(request)?).await?)
        }
        "CreateNamespace" => {
            encode(create_namespace_local(router, target, decode(request)?).await?)
        }
        "DeleteNamespace" => {
            encode(delete_namespace_local(router, target, decode(request)?).await?)
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unknown data-plane operation '{other}'"
            )))
        }
    })
}
