//! The data-plane operations on this node's replica of a shard, one function per
//! VectorService method: validation ([`super::validate`]), then a shard write through Raft
//! ([`Router::write`]) or a read of the local replica. Requests and responses are the
//! Pinecone protobuf types; [`run_local`] dispatches a [`DataOp`] to them.

use std::time::Instant;

use conifer_proto::pinecone as pb;
use prost::Message;
use serde_json::{Map, Value};

use super::convert::{json_to_struct, struct_to_json};
use super::page::{page_place, Listing, PageScope};
use super::router::{Router, Target};
use super::validate::*;
use super::{DataError, DataOp, DataResponse, Lsn};
use crate::shard::command::{merge_metadata, Record, ShardCommand, ShardOutput, DEFAULT_NAMESPACE};
use crate::shard::engine::Metric;
use crate::shard::filter::Filter;
use crate::shard::namespace::Namespace;
use crate::timing;

/// Runs `op` on the local replica `target`: the one dispatch from an operation to its
/// function, so an operation without an arm here does not compile.
pub async fn run_local(
    router: &Router,
    target: &Target,
    op: DataOp,
) -> Result<(DataResponse, Lsn), DataError> {
    use DataResponse as R;
    Ok(match op {
        DataOp::Upsert(r) => with(upsert(router, target, r).await?, R::Upsert),
        DataOp::Query(r) => with(query(router, target, r).await?, R::Query),
        DataOp::Fetch(r) => with(fetch(router, target, r).await?, R::Fetch),
        DataOp::List(r) => with(list(router, target, r).await?, R::List),
        DataOp::FetchByMetadata(r) => with(
            fetch_by_metadata(router, target, r).await?,
            R::FetchByMetadata,
        ),
        DataOp::Delete(r) => with(delete(router, target, r).await?, R::Delete),
        DataOp::Update(r) => with(update(router, target, r).await?, R::Update),
        DataOp::DescribeIndexStats(r) => with(
            describe_index_stats(router, target, r).await?,
            R::DescribeIndexStats,
        ),
        DataOp::ListNamespaces(r) => {
            with(list_namespaces(router, target, r).await?, R::ListNamespaces)
        }
        DataOp::DescribeNamespace(r) => with(
            describe_namespace(router, target, r).await?,
            R::DescribeNamespace,
        ),
        DataOp::CreateNamespace(r) => with(
            create_namespace(router, target, r).await?,
            R::CreateNamespace,
        ),
        DataOp::DeleteNamespace(r) => with(
            delete_namespace(router, target, r).await?,
            R::DeleteNamespace,
        ),
    })
}

fn with<T>((response, lsn): (T, Lsn), wrap: impl FnOnce(T) -> DataResponse) -> (DataResponse, Lsn) {
    (wrap(response), lsn)
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
pub async fn upsert(
    router: &Router,
    target: &Target,
    req: pb::UpsertRequest,
) -> Result<(pb::UpsertResponse, Lsn), DataError> {
    if req.vectors.is_empty() {
        return Err(DataError::invalid(
            "vectors must contain at least one vector",
        ));
    }
    if req.vectors.len() > MAX_UPSERT_RECORDS {
        return Err(DataError::invalid(format!(
            "upsert has {} vectors; the limit is {MAX_UPSERT_RECORDS} per request",
            req.vectors.len()
        )));
    }
    let size = req.encoded_len();
    if size > MAX_UPSERT_BYTES {
        return Err(DataError::invalid(format!(
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
fn refuse_unhonoured_query_fields(
    target: &Target,
    req: &pb::QueryRequest,
) -> Result<(), DataError> {
    if req.sparse_vector.is_some() {
        if target.index.metric != Metric::DotProduct {
            return Err(sparse_unsupported(target));
        }
        if !req.id.is_empty() {
            return Err(DataError::invalid(
                "Cannot provide both 'ID' and 'sparse_vector' at the same time",
            ));
        }
        return Err(DataError::invalid(
            "'sparseVector' is not supported: Conifer ranks by the dense 'vector' only and does \
             not serve sparse-dense (hybrid) queries yet; send the query without 'sparseVector'",
        ));
    }
    if !req.queries.is_empty() {
        return Err(DataError::invalid(
            "the deprecated 'queries' field is not supported; send one 'vector' or 'id'",
        ));
    }
    if req.scan_factor.is_some() || req.max_candidates.is_some() {
        return Err(DataError::invalid(
            "'scanFactor' and 'maxCandidates' tune dedicated read nodes, which Conifer does not \
             have; send the query without them",
        ));
    }
    Ok(())
}

/// `Query` by vector or by id.
#[allow(deprecated)] // `results` is part of the wire format; left empty.
pub async fn query(
    _router: &Router,
    target: &Target,
    req: pb::QueryRequest,
) -> Result<(pb::QueryResponse, Lsn), DataError> {
    if req.top_k == 0 || req.top_k > MAX_TOP_K {
        return Err(DataError::invalid(format!(
            "top_k is {}; it must be between 1 and {MAX_TOP_K}",
            req.top_k
        )));
    }
    if (req.include_values || req.include_metadata) && req.top_k > MAX_TOP_K_WITH_DATA {
        return Err(DataError::invalid(format!(
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
            return Err(DataError::invalid(
                "Cannot provide both 'ID' and 'vector' at the same time",
            ))
        }
        (false, false) => {
            return Err(DataError::invalid(
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
            .map_err(DataError::internal)?,
        _ => Vec::new(),
    };
    let assembling = Instant::now();
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
        .collect::<Result<_, DataError>>()?;
    drop(guard);
    timing::record("assemble", assembling.elapsed());
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
pub async fn fetch(
    _router: &Router,
    target: &Target,
    req: pb::FetchRequest,
) -> Result<(pb::FetchResponse, Lsn), DataError> {
    if req.ids.is_empty() {
        return Err(DataError::invalid("ids must contain at least one id"));
    }
    if req.ids.len() > MAX_FETCH_IDS {
        return Err(DataError::invalid(format!(
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
            .collect::<Result<_, DataError>>()?,
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

/// `List` ids by prefix, paginated.
pub async fn list(
    _router: &Router,
    target: &Target,
    req: pb::ListRequest,
) -> Result<(pb::ListResponse, Lsn), DataError> {
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
pub async fn fetch_by_metadata(
    _router: &Router,
    target: &Target,
    req: pb::FetchByMetadataRequest,
) -> Result<(pb::FetchByMetadataResponse, Lsn), DataError> {
    let namespace = check_namespace(&req.namespace)?;
    let limit = check_limit(req.limit)?;
    if req.filter.as_ref().is_some_and(|f| f.fields.is_empty()) {
        return Err(DataError::invalid(
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
            if after.as_deref().is_some_and(|a| id <= a) {
                continue;
            }
            let vector = record_to_vector(id, record, true, true);
            if size.add(&vector).is_err() && !found.is_empty() {
                page_limit = found.len();
                found.push((id.to_string(), vector));
                break;
            }
            found.push((id.to_string(), vector));
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
pub async fn delete(
    router: &Router,
    target: &Target,
    req: pb::DeleteRequest,
) -> Result<(pb::DeleteResponse, Lsn), DataError> {
    let namespace = check_namespace(&req.namespace)?;
    if req.delete_all && !req.ids.is_empty() {
        return Err(DataError::invalid(
            "No explicit IDs allowed when delete_all=true",
        ));
    }
    if req.delete_all && req.filter.is_some() {
        return Err(DataError::invalid("No filter allowed when delete_all=true"));
    }
    if !req.ids.is_empty() && req.filter.is_some() {
        return Err(DataError::invalid(
            "give either 'ids' or 'filter', not both",
        ));
    }
    if req.filter.as_ref().is_some_and(|f| f.fields.is_empty()) {
        return Err(DataError::invalid(
            "Delete with empty metadata filter is not allowed",
        ));
    }
    if req.ids.is_empty() && !req.delete_all && req.filter.is_none() {
        return Err(DataError::invalid(
            "one of 'ids', 'deleteAll' and 'filter' must be given",
        ));
    }
    let command = if req.delete_all {
        ShardCommand::DeleteAll { namespace }
    } else if let Some((filter, _)) = parse_filter(req.filter.as_ref())? {
        ShardCommand::DeleteByFilter { namespace, filter }
    } else {
        if req.ids.len() > MAX_DELETE_IDS {
            return Err(DataError::invalid(format!(
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
pub async fn update(
    router: &Router,
    target: &Target,
    req: pb::UpdateRequest,
) -> Result<(pb::UpdateResponse, Lsn), DataError> {
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
            return Err(DataError::invalid("give either 'id' or 'filter', not both"));
        }
        if !req.values.is_empty() || req.sparse_values.is_some() {
            return Err(DataError::invalid(
                "Update by metadata request does not support updating vector values.",
            ));
        }
        if filter_struct.fields.is_empty() {
            return Err(DataError::invalid(
                "Update with empty metadata filter is not allowed",
            ));
        }
        let (filter, _) =
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
                        .map_err(|e| DataError::internal(format!("setMetadata: {e}")))?;
                    let hits = ns.matching(&filter);
                    for (id, record) in &hits {
                        merge_metadata(id, &mut (*record).clone(), &set)
                            .map_err(|e| DataError::invalid(e.to_string()))?;
                    }
                    hits.len()
                }
            };
            // The applied index of the state just read, from its own guard: a second read
            // lock on this thread could wait behind a queued writer that waits on the first.
            let lsn = Lsn {
                request: None,
                max_indexed: Some(guard.applied_index()),
            };
            return Ok((
                pb::UpdateResponse {
                    matched_records: Some(matched as i32),
                },
                lsn,
            ));
        }
        let set = set_metadata
            .ok_or_else(|| DataError::invalid("an update by filter needs 'set_metadata'"))?;
        let (output, lsn) = router
            .write(
                target,
                ShardCommand::UpdateByFilter {
                    namespace,
                    filter,
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
        return Err(DataError::invalid(
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
pub async fn describe_index_stats(
    _router: &Router,
    target: &Target,
    req: pb::DescribeIndexStatsRequest,
) -> Result<(pb::DescribeIndexStatsResponse, Lsn), DataError> {
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
pub async fn list_namespaces(
    _router: &Router,
    target: &Target,
    req: pb::ListNamespacesRequest,
) -> Result<(pb::ListNamespacesResponse, Lsn), DataError> {
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
pub async fn describe_namespace(
    _router: &Router,
    target: &Target,
    req: pb::DescribeNamespaceRequest,
) -> Result<(pb::NamespaceDescription, Lsn), DataError> {
    let name = check_namespace(&req.namespace)?;
    let guard = target.shard.state.read();
    let count = guard.namespace(&name).map(|ns| ns.len() as u64);
    drop(guard);
    let count =
        count.ok_or_else(|| DataError::not_found(format!("namespace '{name}' not found")))?;
    Ok((namespace_description(name, count), read_lsn(target)))
}

/// `CreateNamespace`.
pub async fn create_namespace(
    router: &Router,
    target: &Target,
    req: pb::CreateNamespaceRequest,
) -> Result<(pb::NamespaceDescription, Lsn), DataError> {
    if req.name.is_empty() || req.name == DEFAULT_NAMESPACE {
        return Err(DataError::invalid(
            "name must be a non-empty namespace name other than __default__",
        ));
    }
    let name = check_namespace(&req.name)?;
    // A schema makes only the fields it lists filterable; Conifer indexes every field, so it
    // could not honour one.
    if req.schema.is_some() {
        return Err(DataError::invalid(
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
pub async fn delete_namespace(
    router: &Router,
    target: &Target,
    req: pb::DeleteNamespaceRequest,
) -> Result<(pb::DeleteResponse, Lsn), DataError> {
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
