//! Routing of data-plane calls: from a request's credential and host name (or explicit
//! index header) to the index and the local replica of its shard; and the write path into
//! the shard's Raft group.
//!
//! Index hosts are `<index>-<project tag>.<domain>:<port>`, the tag being the first
//! [`PROJECT_TAG_CHARS`] hex digits of the project id. A key of another project never
//! reaches an index: it gets the same 404 as a missing index, so names do not leak.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conifer_proto::pinecone as pb;
use conifer_raft::client::PeerFailure;

use super::{DataError, DataOp, DataResponse, Lsn};
use crate::control::state::{Index, IndexState};
use crate::control::ControlPlane;
use crate::shard::command::{
    ShardCommand, ShardOutcome, ShardOutput, ShardRejection, COMMAND_FORMAT, OUTCOME_FORMAT,
};
use crate::shard::manager::{HostedShard, ShardManager};

/// Hex digits of the project id in index host names.
pub const PROJECT_TAG_CHARS: usize = 7;
/// Longest a read waits for a requested sequence number to be applied locally.
pub const MAX_READ_WAIT_MS: u64 = 10_000;
/// Most records one project holds over all its indexes, unless `--max-records-per-project`
/// says otherwise.
pub const DEFAULT_MAX_RECORDS_PER_PROJECT: u64 = 100_000_000;
/// Oldest a record count of another index of the project may be when an upsert is checked
/// against the project's total (see [`Router::project_records_elsewhere`]).
pub const PROJECT_COUNT_MAX_AGE_MS: u64 = 1_000;

/// How clients address indexes on this node.
#[derive(Clone, Debug)]
pub struct Addressing {
    /// Domain of index host names: `<index>-<project tag>.<domain>`.
    pub domain: String,
    /// The client port's address (its port is the one of host-name index hosts).
    pub api_addr: std::net::SocketAddr,
    /// The private listener's address (`serve --private-api-addr`), if any: indexes'
    /// `private_host`.
    pub private_api_addr: Option<std::net::SocketAddr>,
    /// The host index hosts advertise: `serve --advertise-addr`, else the client port's IP
    /// (IPv6 in brackets).
    pub advertised_host: String,
    /// Index port range (first, last), inclusive: each index created through this node gets
    /// its own port from it and is reported as `<api IP>:<port>`, which needs no DNS.
    /// `None`: host names only.
    pub index_ports: Option<(u16, u16)>,
    /// The client port speaks plain HTTP (`serve --dev-http`): index hosts then carry the
    /// scheme (`http://127.0.0.1:7500`), since SDKs take a bare host for https.
    pub plain_http: bool,
}

/// Whether `op` changes the shard (so a call of it that got no answer may have taken
/// effect); reads, which change nothing, may be asked of another replica.
fn writes(op: &DataOp) -> bool {
    matches!(
        op,
        DataOp::Upsert(_)
            | DataOp::Delete(_)
            | DataOp::Update(_)
            | DataOp::CreateNamespace(_)
            | DataOp::DeleteNamespace(_)
    )
}

/// The label under the index domain of host names on the private listener:
/// `<index>-<project tag>.private.<domain>`.
pub const PRIVATE_SUBDOMAIN: &str = "private";

/// Resolves data-plane calls and runs shard writes.
#[derive(Clone)]
pub struct Router {
    control: ControlPlane,
    shards: ShardManager,
    addressing: Addressing,
    max_records_per_project: u64,
    /// Record counts of indexes with no replica here, by shard group, and when counted.
    remote_counts: Arc<Mutex<HashMap<u64, (Instant, u64)>>>,
}

/// Where a data-plane call runs: on this node's replica, or forwarded to a replica.
pub enum Resolved {
    /// This node holds a replica.
    Local(Target),
    /// This node holds none: the call is forwarded over the cluster port.
    Remote(Remote),
}

/// An index whose shard has no replica on this node.
pub struct Remote {
    /// The index.
    pub index: Index,
    /// Nodes holding its replicas.
    pub replicas: Vec<u64>,
    /// Sequence number the replica must have applied before a read (0: none).
    pub min_lsn: u64,
    /// Whether the replica must serve the read linearizably.
    pub linearizable: bool,
}

impl Resolved {
    /// The index addressed.
    pub fn index(&self) -> &Index {
        match self {
            Resolved::Local(t) => &t.index,
            Resolved::Remote(r) => &r.index,
        }
    }
}

/// A resolved data-plane target.
pub struct Target {
    /// The index.
    pub index: Index,
    /// The local replica of its shard.
    pub shard: HostedShard,
}

/// The project tag used in host names.
pub fn project_tag(project_id: &str) -> String {
    project_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(PROJECT_TAG_CHARS)
        .collect()
}

impl Router {
    /// A router for indexes addressed as `addressing` says, holding each project to
    /// `max_records_per_project` records.
    pub fn new(
        control: ControlPlane,
        shards: ShardManager,
        addressing: Addressing,
        max_records_per_project: u64,
    ) -> Self {
        Self {
            control,
            shards,
            addressing,
            max_records_per_project,
            remote_counts: Arc::default(),
        }
    }

    /// The project's record total (`--max-records-per-project`).
    pub fn max_records_per_project(&self) -> u64 {
        self.max_records_per_project
    }

    /// Records held by the other indexes of `target`'s project, for an upsert into it to be
    /// checked against the project's total when it is applied
    /// ([`ShardCommand::UpsertInProject`]); `None` when the project's indexes cannot pass
    /// the total together (each is held to
    /// [`MAX_RECORDS_PER_INDEX`](crate::shard::command::MAX_RECORDS_PER_INDEX)). Each other
    /// index is counted by a linearizable read (of its replica here after the group's read
    /// index, or of a replica elsewhere) at most [`PROJECT_COUNT_MAX_AGE_MS`] earlier; an
    /// index still initializing holds none. UNAVAILABLE when an index was never counted here
    /// and cannot be now.
    pub async fn project_records_elsewhere(
        &self,
        target: &Target,
    ) -> Result<Option<u64>, DataError> {
        let project = &target.index.project_id;
        let others: Vec<Index> = self.control.read(|s| {
            s.indexes
                .values()
                .filter(|i| &i.project_id == project && i.group_id != target.index.group_id)
                .cloned()
                .collect()
        });
        let most = crate::shard::command::MAX_RECORDS_PER_INDEX as u64;
        if (others.len() as u64 + 1).saturating_mul(most) <= self.max_records_per_project {
            return Ok(None);
        }
        let mut elsewhere = 0u64;
        for index in others {
            elsewhere += self.record_count(index).await?;
        }
        Ok(Some(elsewhere))
    }

    /// Records of `index`: from its replica here, else as last reported by a replica
    /// elsewhere (asked again when that is older than [`PROJECT_COUNT_MAX_AGE_MS`]; after a
    /// failed ask the last count serves for as long).
    async fn record_count(&self, index: Index) -> Result<u64, DataError> {
        if index.state == IndexState::Initializing {
            return Ok(0);
        }
        let group = index.group_id;
        let known = self.lock_counts().get(&group).copied();
        let max_age = Duration::from_millis(PROJECT_COUNT_MAX_AGE_MS);
        if let Some((_, count)) = known.filter(|(at, _)| at.elapsed() < max_age) {
            return Ok(count);
        }
        let name = index.name.clone();
        let asked = match self.shards.get(group) {
            // A replica here may lag its leader: read it after the group's read index.
            Some(shard) => shard
                .group_client(self.control.peers())
                .linearizable_barrier()
                .await
                .map_err(DataError::from)
                .map(|()| shard.state.read().record_count() as u64),
            None => {
                let remote = Remote {
                    replicas: index.replicas.clone(),
                    index,
                    min_lsn: 0,
                    linearizable: true,
                };
                let stats = DataOp::DescribeIndexStats(pb::DescribeIndexStatsRequest::default());
                self.forward(&remote, stats)
                    .await
                    .and_then(|(response, _)| {
                        <pb::DescribeIndexStatsRequest as super::Operation>::response(response)
                    })
                    .map(|stats| u64::from(stats.total_vector_count))
            }
        };
        let count = match (asked, known) {
            (Ok(count), _) => count,
            (Err(e), Some((_, count))) => {
                tracing::warn!(
                    "counting index '{name}' for its project's total: {e}; using its last count"
                );
                count
            }
            (Err(e), None) => {
                return Err(DataError::unavailable(format!(
                    "cannot count the records of index '{name}' for the project's total: {e}"
                )))
            }
        };
        let mut counts = self.lock_counts();
        counts.insert(group, (Instant::now(), count));
        // Forget the groups of deleted indexes.
        if counts.len() > 64 {
            let live: std::collections::HashSet<u64> = self
                .control
                .read(|s| s.indexes.values().map(|i| i.group_id).collect());
            counts.retain(|group, _| live.contains(group));
        }
        Ok(count)
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, u64)>> {
        self.remote_counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control plane.
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The shard replicas of this node.
    pub fn shards(&self) -> &ShardManager {
        &self.shards
    }

    /// The index port range of this node, if it has one.
    pub fn index_ports(&self) -> Option<(u16, u16)> {
        self.addressing.index_ports
    }

    /// The `host` reported for an index: `<advertised IP>:<its port>` when it has a port and
    /// this node serves index ports, else `<index>-<project tag>.<domain>:<client port>`.
    pub fn host_of(&self, index: &Index) -> String {
        let scheme = if self.addressing.plain_http {
            "http://"
        } else {
            ""
        };
        match (index.port, self.addressing.index_ports) {
            (Some(port), Some(_)) => {
                format!("{scheme}{}:{port}", self.addressing.advertised_host)
            }
            _ => format!(
                "{scheme}{}-{}.{}:{}",
                index.name,
                project_tag(&index.project_id),
                self.addressing.domain,
                self.addressing.api_addr.port()
            ),
        }
    }

    /// The host of `index` on this node's private listener: `<private IP>:<index port>`
    /// with index ports, else `<index>-<project tag>.private.<domain>:<private port>`;
    /// `None` without a private listener.
    pub fn private_host_of(&self, index: &Index) -> Option<String> {
        let private = self.addressing.private_api_addr?;
        let scheme = if self.addressing.plain_http {
            "http://"
        } else {
            ""
        };
        Some(match (index.port, self.addressing.index_ports) {
            (Some(port), Some(_)) => {
                format!("{scheme}{}", std::net::SocketAddr::new(private.ip(), port))
            }
            _ => format!(
                "{scheme}{}-{}.{PRIVATE_SUBDOMAIN}.{}:{}",
                index.name,
                project_tag(&index.project_id),
                self.addressing.domain,
                private.port()
            ),
        })
    }

    /// Splits a host name under our domain (or its private subdomain) into (index name,
    /// project tag).
    pub fn parse_host(&self, host: &str) -> Option<(String, String)> {
        let name = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let domain = &self.addressing.domain;
        let label = name
            .strip_suffix(&format!(".{PRIVATE_SUBDOMAIN}.{domain}"))
            .or_else(|| name.strip_suffix(&format!(".{domain}")))?;
        let (index, tag) = label.rsplit_once('-')?;
        Some((index.to_string(), tag.to_string()))
    }

    /// Finds the index a data-plane call addresses: on an index's own port, that index
    /// (`served_index`, its shard group; the port decides, whatever header or host name
    /// the call carries); else the explicit index name if given, else the host name. The
    /// index must belong to `project_id` (already authorized): another project's index, or
    /// a deleted one whose port a connection still holds, gets 404 like a missing one.
    pub fn resolve(
        &self,
        project_id: &str,
        served_index: Option<u64>,
        explicit: Option<&str>,
        host: Option<&str>,
    ) -> Result<Resolved, DataError> {
        let index = match served_index {
            Some(group) => self
                .control
                .read(|s| s.index_of_group(group).cloned())
                .filter(|index| index.project_id == project_id)
                .ok_or_else(|| DataError::not_found("index not found"))?,
            None => self.resolve_by_name(project_id, explicit, host)?,
        };
        if let Some(job) = &index.restore {
            return Err(DataError::unavailable(format!(
                "index '{}' is being restored from a backup (restore job {job}); it serves \
                 once the job completes (GET /restore-jobs/{job})",
                index.name
            )));
        }
        if let Some(refused) =
            DataError::key_refusal(&index.name, self.shards.keys().status(index.group_id))
        {
            return Err(refused);
        }
        match self.shards.get(index.group_id) {
            Some(shard) => Ok(Resolved::Local(Target { index, shard })),
            None => {
                let replicas = index.replicas.clone();
                Ok(Resolved::Remote(Remote {
                    index,
                    replicas,
                    min_lsn: 0,
                    linearizable: false,
                }))
            }
        }
    }

    /// The index named by `explicit`, else by `host`, in `project_id`.
    fn resolve_by_name(
        &self,
        project_id: &str,
        explicit: Option<&str>,
        host: Option<&str>,
    ) -> Result<Index, DataError> {
        let explicit = explicit.filter(|name| !name.is_empty());
        let (name, tag) = match (explicit, host.and_then(|h| self.parse_host(h))) {
            (Some(name), _) => (name.to_string(), None),
            (None, Some((name, tag))) => (name, Some(tag)),
            (None, None) => {
                return Err(DataError::not_found(
                    "no index addressed: use the index host from describe_index, or the X-Conifer-Index header",
                ))
            }
        };
        let not_found = || DataError::not_found(format!("index '{name}' not found"));
        if tag.as_deref().is_some_and(|t| t != project_tag(project_id)) {
            return Err(not_found());
        }
        self.control
            .read(|s| {
                s.indexes
                    .get(&(project_id.to_string(), name.clone()))
                    .cloned()
            })
            .ok_or_else(not_found)
    }

    /// Why this node cannot serve a forwarded call to shard group `group`, which it does not
    /// run: its keys are unavailable here, or it hosts no replica of it (yet).
    pub fn not_hosted(&self, group: u64) -> DataError {
        let name = self
            .control
            .read(|s| s.index_of_group(group).map(|i| i.name.clone()))
            .unwrap_or_else(|| format!("of shard group {group}"));
        DataError::key_refusal(&name, self.shards.keys().status(group)).unwrap_or_else(|| {
            DataError::unavailable(format!("shard group {group} has no replica on this node"))
        })
    }

    /// The local replica of shard group `group`, as a target (on a node serving a forward).
    pub fn local_target(&self, group: u64) -> Option<Target> {
        let shard = self.shards.get(group)?;
        let index = self.control.read(|s| s.index_of_group(group).cloned())?;
        Some(Target { index, shard })
    }

    /// Runs `op` on a replica of a remote index (`Internal/Data`), trying its replicas in
    /// turn. A replica that cannot be reached, or that answers it cannot serve the call now
    /// (unavailable), is passed over; any other answer — the operation's response or its
    /// refusal — is the call's. A write that got no answer (the deadline passed, or the
    /// connection failed after it may have been sent: a partition is noticed by the
    /// channel's HTTP/2 keepalive), or whose replica answered that it may have been applied
    /// ([`DataError::Indeterminate`]), ends here indeterminate — never sent to another
    /// replica, which could apply it twice; a read in that case goes on to the next
    /// replica. A peer that refuses this node is unavailable (a cluster fault, never the
    /// client's 403), any other transport failure internal.
    pub async fn forward(
        &self,
        remote: &Remote,
        op: DataOp,
    ) -> Result<(DataResponse, Lsn), DataError> {
        let membership = self.control.membership();
        let mut last = DataError::unavailable(format!(
            "index '{}' has no reachable replica",
            remote.index.name
        ));
        for replica in &remote.replicas {
            let Some(node) = membership.get_node(replica) else {
                continue;
            };
            let mut client = match self.control.peers().client(*replica, node) {
                Ok(client) => client,
                Err(e) => {
                    last = DataError::unavailable(e);
                    continue;
                }
            };
            let call = conifer_proto::internal::DataRequest {
                from_node: self.control.node_id(),
                group_id: remote.index.group_id,
                min_lsn: remote.min_lsn,
                linearizable: remote.linearizable,
                operation: Some(op.clone()),
            };
            match client.data(call).await {
                Ok(reply) => match super::reply_outcome(reply.into_inner()) {
                    Err(DataError::Unavailable(m)) => last = DataError::Unavailable(m),
                    // A read changed nothing, wherever it got: another replica may answer.
                    Err(DataError::Indeterminate(m)) if !writes(&op) => {
                        last = DataError::Unavailable(m)
                    }
                    answered => return answered,
                },
                Err(status) => {
                    let what = format!(
                        "the replica of index '{}' on node {replica}: {}",
                        remote.index.name,
                        status.message()
                    );
                    match PeerFailure::of(&status) {
                        // Nothing happened there, or the peer says another may serve it.
                        PeerFailure::NotSent | PeerFailure::Unavailable => {
                            last = DataError::unavailable(what)
                        }
                        PeerFailure::Unanswered if !writes(&op) => {
                            last = DataError::unavailable(what)
                        }
                        PeerFailure::Unanswered => {
                            return Err(DataError::Indeterminate(format!(
                                "{what}; the request may or may not have been applied"
                            )))
                        }
                        // A peer refusing this node is a fault of the cluster, not the
                        // client's lack of permission.
                        PeerFailure::Refused => return Err(DataError::unavailable(what)),
                        PeerFailure::Fault => return Err(DataError::internal(what)),
                    }
                }
            }
        }
        Err(last)
    }

    /// Replicates a shard command; returns its output and the sequence number (log index).
    pub async fn write(
        &self,
        target: &Target,
        command: ShardCommand,
    ) -> Result<(ShardOutput, u64), DataError> {
        let bytes = COMMAND_FORMAT.encode(&command);
        // The chaos harness's deliberately unsafe mode: acknowledge an upsert before it is
        // committed (the proposal carries on in the background), which its checkers must catch.
        #[cfg(feature = "failpoints")]
        if let ShardCommand::Upsert { records, .. }
        | ShardCommand::UpsertInProject { records, .. } = &command
        {
            if fail::eval("conifer::write::ack_before_commit", |_| ()).is_some() {
                let group = target.shard.group_client(self.control.peers());
                let upserted = records.len() as u32;
                tokio::spawn(async move { group.propose(bytes).await });
                return Ok((ShardOutput::Upserted(upserted), 0));
            }
        }
        let (response, lsn) = target
            .shard
            .group_client(self.control.peers())
            .propose(bytes)
            .await?;
        let outcome: ShardOutcome = OUTCOME_FORMAT
            .decode(&response)
            .map_err(|e| DataError::internal(e.to_string()))?;
        match outcome {
            Ok(output) => Ok((output, lsn)),
            Err(ShardRejection::Invalid(m)) => Err(DataError::Invalid(m)),
            Err(ShardRejection::NotFound(m)) => Err(DataError::NotFound(m)),
            Err(ShardRejection::AlreadyExists(m)) => Err(DataError::AlreadyExists(m)),
        }
    }

    /// Read-your-writes for `lsn`: waits here for a local replica, or asks the replica that
    /// serves a forwarded call to wait.
    pub async fn wait_for(&self, target: &mut Resolved, lsn: u64) -> Result<(), DataError> {
        match target {
            Resolved::Local(t) => self.wait_applied(t, lsn).await,
            Resolved::Remote(r) => {
                r.min_lsn = lsn;
                Ok(())
            }
        }
    }

    /// Makes the read that follows linearizable: a local replica waits here until it has
    /// applied the shard's read index; a forwarded call asks the serving replica to.
    pub async fn linearizable(&self, target: &mut Resolved) -> Result<(), DataError> {
        match target {
            Resolved::Local(t) => Ok(t
                .shard
                .group_client(self.control.peers())
                .linearizable_barrier()
                .await?),
            Resolved::Remote(r) => {
                r.linearizable = true;
                Ok(())
            }
        }
    }

    /// Waits until the local replica has applied sequence number `lsn`.
    pub async fn wait_applied(&self, target: &Target, lsn: u64) -> Result<(), DataError> {
        if target.shard.state.applied_index() >= lsn
            || target
                .shard
                .group_client(self.control.peers())
                .wait_applied(lsn, MAX_READ_WAIT_MS)
                .await
        {
            return Ok(());
        }
        Err(DataError::unavailable(format!(
            "sequence number {lsn} not applied on this replica within {MAX_READ_WAIT_MS} ms"
        )))
    }
}
