//! Indexes of a project: create (the state machine assigns the shard group and, with index
//! ports, the port), configure, mark ready, delete (refused under deletion protection), and
//! how each is audited.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::audit::index_resource;
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};
use crate::crypto::hierarchy::IndexKeyVersion;
use crate::crypto::IndexKeys;
pub use crate::shard::engine::Metric;

/// Most indexes one project may hold.
pub const MAX_INDEXES_PER_PROJECT: usize = 100;

/// Lifecycle state of an index, as Pinecone reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    /// The shard group is being created.
    Initializing,
    /// The shard group has elected a leader and serves.
    Ready,
}

/// An index of a project: configuration plus where its (single, for now) shard lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Name, unique within the project.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Vector dimension.
    pub dimension: u32,
    /// Similarity metric.
    pub metric: Metric,
    /// `dense` (sparse indexes come later).
    pub vector_type: String,
    /// Pinecone `spec` (serverless or pod) as given, JSON text.
    pub spec_json: String,
    /// Pinecone `tags` as given, JSON text (`null` when none).
    pub tags_json: String,
    /// Whether deletion is refused.
    pub deletion_protection: bool,
    /// Raft group of the shard (assigned at apply).
    pub group_id: u64,
    /// Nodes holding a replica of the shard.
    pub replicas: Vec<u64>,
    /// Lifecycle state.
    pub state: IndexState,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Its own client port on every node, from the index port range (`None`: addressed by
    /// host name or header only). Assigned at apply.
    pub port: Option<u16>,
    /// Its data keys, wrapped by the project's key; they seal everything of the index
    /// (records, Raft log entries, snapshots, saved vector indexes).
    pub keys: IndexKeys,
    /// The restore job writing its records (`None` once it serves): the data plane refuses
    /// it and it stays `Initializing` meanwhile ([`super::backups`]).
    pub restore: Option<String>,
    /// Its HNSW parameters, when they differ from the nodes' defaults (`serve --hnsw-*`).
    pub hnsw: Option<HnswParams>,
}

/// An index's own HNSW parameters (Conifer's extension of Pinecone's index spec:
/// `spec.<kind>.hnsw`), each between its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Graph degree (`M`), [`HNSW_M_RANGE`].
    pub m: u32,
    /// Construction beam width (`efConstruction`), [`HNSW_EF_RANGE`].
    pub ef_construction: u32,
    /// Search beam width (`efSearch`, raised to 2 × top_k), [`HNSW_EF_RANGE`].
    pub ef_search: u32,
}

/// Bounds of an HNSW graph degree.
pub const HNSW_M_RANGE: std::ops::RangeInclusive<u32> = 4..=128;
/// Bounds of HNSW beam widths.
pub const HNSW_EF_RANGE: std::ops::RangeInclusive<u32> = 8..=4096;

impl HnswParams {
    /// The engine configuration `base` (a node's) with these parameters.
    pub fn apply_to(
        &self,
        base: crate::shard::engine::EngineConfig,
    ) -> crate::shard::engine::EngineConfig {
        crate::shard::engine::EngineConfig {
            hnsw_m: self.m as usize,
            hnsw_ef_construction: self.ef_construction as usize,
            hnsw_ef_search: self.ef_search as usize,
            ..base
        }
    }
}

/// A change of an index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum IndexCommand {
    /// Create an index; the state machine assigns its shard group id and, given `ports`
    /// (the first and last of the proposing node's index port range), the lowest port of
    /// the range no other index holds.
    Create {
        /// The index.
        index: Index,
        /// Index port range, inclusive.
        ports: Option<(u16, u16)>,
    },
    /// Change an index's deletion protection and/or tags.
    Configure {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
        /// New deletion protection, if changing.
        deletion_protection: Option<bool>,
        /// New tags (JSON text), if changing.
        tags_json: Option<String>,
    },
    /// Mark an index ready (proposed by its shard leader once the group serves).
    MarkReady {
        /// Shard group of the index.
        group_id: u64,
    },
    /// Delete an index (refused while deletion protection is on).
    Delete {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
    },
    /// Start a rotation of an index's data key: `version` (the next version, made by the
    /// proposer) becomes current — new values are sealed with it — and the older versions
    /// stay until every replica re-sealed its values ([`IndexCommand::KeyResealed`]).
    /// Refused while a rotation runs.
    RotateKey {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
        /// The new version.
        version: IndexKeyVersion,
    },
    /// Node `node`'s replica holds no value sealed with a version older than `version`;
    /// when every replica's node has said so, the older versions are dropped.
    KeyResealed {
        /// Owning project.
        project_id: String,
        /// Index name.
        name: String,
        /// The node.
        node: u64,
        /// The version its replica is sealed with.
        version: u32,
    },
}

impl ControlState {
    /// Applies an index command; on rejection nothing changes.
    pub(super) fn apply_index(&mut self, command: IndexCommand) -> Outcome {
        match command {
            IndexCommand::Create { mut index, ports } => {
                let Some(project) = self.projects.get(&index.project_id) else {
                    return Err(not_found("project", &index.project_id));
                };
                // The proposer read the project's CMEK setting from its own (possibly older)
                // state: an index whose keys are not the project's KMS key's is refused.
                if let Some(arn) = &project.cmek_key_arn {
                    let made_by_cmek = index.keys.versions.iter().all(|v| {
                        v.wrapped.provider == crate::crypto::kms::KMS_PROVIDER
                            && v.wrapped.key_id == *arn
                    });
                    if !made_by_cmek || index.keys.versions.is_empty() {
                        return Err(Rejection::Invalid(format!(
                            "project '{}' encrypts its indexes with the customer-managed key \
                             {arn}, and this index's keys were made without it (its CMEK \
                             setting changed meanwhile): create the index again",
                            index.project_id
                        )));
                    }
                }
                let key = (index.project_id.clone(), index.name.clone());
                check_new(
                    self.indexes
                        .contains_key(&key)
                        .then(|| format!("index '{}' already exists", index.name)),
                    self.indexes_of(&index.project_id).len(),
                    MAX_INDEXES_PER_PROJECT,
                    "project",
                    "indexes",
                )?;
                index.port = match ports {
                    None => None,
                    Some(range) => Some(self.next_index_port(range)?),
                };
                self.last_index_port = index.port.or(self.last_index_port);
                self.next_group_id = self.next_group_id.max(1);
                index.group_id = self.next_group_id;
                index.state = IndexState::Initializing;
                self.next_group_id += 1;
                self.indexes.insert(key, index.clone());
                Ok(Output::Index(index))
            }
            IndexCommand::Configure {
                project_id,
                name,
                deletion_protection,
                tags_json,
            } => {
                let index = self.index_mut(&project_id, &name)?;
                if let Some(protect) = deletion_protection {
                    index.deletion_protection = protect;
                }
                if let Some(tags) = tags_json {
                    index.tags_json = tags;
                }
                Ok(Output::Index(index.clone()))
            }
            IndexCommand::RotateKey {
                project_id,
                name,
                version,
            } => {
                let cmek = self
                    .projects
                    .get(&project_id)
                    .and_then(|p| p.cmek_key_arn.clone());
                let index = self.index_mut(&project_id, &name)?;
                let keys = &mut index.keys;
                if keys.versions.len() > 1 {
                    return Err(Rejection::Invalid(format!(
                        "index '{name}' is still re-encrypting under data key version {}; \
                         rotate again once it finished",
                        keys.current
                    )));
                }
                if version.version != keys.current + 1 {
                    return Err(Rejection::Invalid(format!(
                        "index '{name}''s next data key version is {}, not {}",
                        keys.current + 1,
                        version.version
                    )));
                }
                if let Some(cmek) = cmek {
                    let by_cmek = version.wrapped.provider == crate::crypto::kms::KMS_PROVIDER
                        && version.wrapped.key_id == cmek;
                    if !by_cmek {
                        return Err(Rejection::Invalid(format!(
                            "index '{name}''s project encrypts with the customer-managed key \
                             {cmek}, and the new data key was made without it"
                        )));
                    }
                }
                keys.current = version.version;
                keys.versions.push(version);
                keys.resealed.clear();
                Ok(Output::Index(index.clone()))
            }
            IndexCommand::KeyResealed {
                project_id,
                name,
                node,
                version,
            } => {
                let index = self.index_mut(&project_id, &name)?;
                let keys = &mut index.keys;
                if version != keys.current || keys.versions.len() < 2 {
                    return Err(Rejection::Invalid(format!(
                        "index '{name}' is not re-encrypting under data key version {version}"
                    )));
                }
                if !keys.resealed.contains(&node) {
                    keys.resealed.push(node);
                    keys.resealed.sort_unstable();
                }
                finish_rotation_if_done(index);
                Ok(Output::Index(index.clone()))
            }
            IndexCommand::MarkReady { group_id } => {
                match self.indexes.values_mut().find(|i| i.group_id == group_id) {
                    // A restore's index turns ready when its job finishes.
                    Some(index) if index.restore.is_some() => Err(Rejection::Invalid(format!(
                        "index '{}' is being restored",
                        index.name
                    ))),
                    Some(index) => {
                        index.state = IndexState::Ready;
                        Ok(Output::Done)
                    }
                    None => Err(not_found("index with shard group", &group_id.to_string())),
                }
            }
            IndexCommand::Delete { project_id, name } => {
                let key = (project_id, name.clone());
                match self.indexes.get(&key) {
                    None => Err(not_found("index", &name)),
                    Some(index) if index.deletion_protection => Err(Rejection::Invalid(format!(
                        "index '{name}' has deletion protection enabled; disable it before deleting"
                    ))),
                    Some(_) => {
                        self.indexes.remove(&key);
                        self.shred_later("index", &key.0, &name);
                        Ok(Output::Done)
                    }
                }
            }
        }
    }

    /// The index `name` of project `project_id`, to change it.
    fn index_mut(&mut self, project_id: &str, name: &str) -> Result<&mut Index, Rejection> {
        self.indexes
            .get_mut(&(project_id.to_string(), name.to_string()))
            .ok_or_else(|| not_found("index", name))
    }

    /// A node left the cluster: its replicas hold nothing any more, so no rotation of an
    /// index's data key waits for it.
    pub(super) fn drop_node_from_key_rotations(&mut self, node: u64) {
        for index in self.indexes.values_mut() {
            let keys = &mut index.keys;
            if keys.versions.len() > 1 && index.replicas.contains(&node) {
                if !keys.resealed.contains(&node) {
                    keys.resealed.push(node);
                    keys.resealed.sort_unstable();
                }
                finish_rotation_if_done(index);
            }
        }
    }

    /// The port for a new index from `(first, last)`: the first one after the port given
    /// out last that no index holds, wrapping within the range.
    fn next_index_port(&self, (first, last): (u16, u16)) -> Result<u16, Rejection> {
        let taken: std::collections::BTreeSet<u16> =
            self.indexes.values().filter_map(|i| i.port).collect();
        let start = match self.last_index_port {
            Some(p) if (first..last).contains(&p) => p + 1,
            _ => first,
        };
        (start..=last)
            .chain(first..start)
            .find(|p| !taken.contains(p))
            .ok_or_else(|| {
                Rejection::LimitExceeded(format!(
                    "every port of the index port range {first}-{last} is taken; delete an \
                     index or widen --index-port-range"
                ))
            })
    }

    /// The index whose shard is Raft group `group`.
    pub fn index_of_group(&self, group: u64) -> Option<&Index> {
        self.indexes.values().find(|i| i.group_id == group)
    }

    /// Indexes of a project, by name order.
    pub fn indexes_of(&self, project_id: &str) -> Vec<&Index> {
        self.indexes
            .values()
            .filter(|i| i.project_id == project_id)
            .collect()
    }
}

/// Whether every replica's node of `index` has re-sealed under its current data key
/// (counting `also` as having done so: a report about to apply).
fn resealed_everywhere(index: &Index, also: Option<u64>) -> bool {
    index
        .replicas
        .iter()
        .all(|r| Some(*r) == also || index.keys.resealed.contains(r))
}

/// Drops the older data key versions of `index` once every replica's node re-sealed (or
/// left): nothing is sealed with them any more.
fn finish_rotation_if_done(index: &mut Index) {
    if index.keys.versions.len() > 1 && resealed_everywhere(index, None) {
        let keys = &mut index.keys;
        let current = keys.current;
        keys.versions.retain(|v| v.version >= current);
        keys.resealed.clear();
    }
}

/// The audit description of an index command (the state before it).
pub(super) fn describe(state: &ControlState, command: &IndexCommand) -> Resource {
    match command {
        IndexCommand::Create { index, .. } => {
            index_resource(state, Verb::Create, &index.project_id, &index.name).params(
                Params::default()
                    .with("project_id", index.project_id.as_str())
                    .with("dimension", index.dimension)
                    .with("metric", index.metric.as_str())
                    .with("vector_type", index.vector_type.as_str())
                    .with("deletion_protection", index.deletion_protection),
            )
        }
        IndexCommand::Configure {
            project_id,
            name,
            deletion_protection,
            tags_json,
        } => index_resource(state, Verb::Update, project_id, name).params(
            Params::default()
                .with("project_id", project_id.as_str())
                .with_some("deletion_protection", *deletion_protection)
                .with_some(
                    "tags",
                    tags_json
                        .as_deref()
                        .and_then(|t| serde_json::from_str::<Value>(t).ok()),
                ),
        ),
        IndexCommand::MarkReady { group_id } => {
            let resource = match state.index_of_group(*group_id) {
                Some(i) => index_resource(state, Verb::Update, &i.project_id, &i.name),
                None => Resource::new(Verb::Update, ResourceType::Index, None),
            };
            resource.params(Params::default().with("group_id", *group_id))
        }
        IndexCommand::Delete { project_id, name } => {
            index_resource(state, Verb::Delete, project_id, name)
                .params(Params::default().with("project_id", project_id.as_str()))
        }
        IndexCommand::RotateKey {
            project_id,
            name,
            version,
        } => index_resource(state, Verb::Update, project_id, name).params(
            Params::default()
                .with("project_id", project_id.as_str())
                .with("data_key_version", version.version),
        ),
        IndexCommand::KeyResealed {
            project_id,
            name,
            node,
            version,
        } => {
            // Whether this report is the last one, after which the older versions go.
            let finishes = state
                .indexes
                .get(&(project_id.clone(), name.clone()))
                .is_some_and(|i| resealed_everywhere(i, Some(*node)));
            index_resource(state, Verb::Update, project_id, name).params(
                Params::default()
                    .with("project_id", project_id.as_str())
                    .with("node", *node)
                    .with("data_key_version", *version)
                    .with("older_versions_retired", finishes),
            )
        }
    }
}
