//! The cluster port: the node-to-node gRPC service, served only over mutual TLS.
//!
//! Every request names its sender; the handler refuses it unless the client certificate
//! (already verified to chain to the cluster CA, and unexpired, by the TLS layer) carries
//! the SAN `node-<sender>`. Membership changes are executed on the control-plane leader;
//! other nodes forward them there.

use std::collections::BTreeSet;
use std::time::Duration;

use conifer_proto::internal::internal_client::InternalClient;
use conifer_proto::internal::internal_server::Internal;
use conifer_proto::internal::{
    ChangeMemberReply, ChangeMemberRequest, DataReply, DataRequest, JoinReply, JoinRequest,
    MemberAction, PingReply, PingRequest, ProposeReply, ProposeRequest, RaftReply, RaftRequest,
    ReadIndexReply, ReadIndexRequest,
};
use conifer_raft::{GroupRegistry, NodeId, NodeInfo};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::vectors;
use crate::control::{linearizable_barrier, propose_to_group, ControlError, ControlPlane};
use crate::router::Router;
use crate::tls::peer_node_ids;

/// Longest a new learner may take to catch up before a join reports failure.
pub const JOIN_CATCH_UP_TIMEOUT_MS: u64 = 60_000;
/// Most index names a refused removal lists (the rest are counted).
const MAX_LISTED_INDEXES: usize = 10;

/// Refuses a request whose client certificate does not name the node it claims to be.
pub fn authenticate_peer<T>(request: &Request<T>, claimed: NodeId) -> Result<(), Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    let named = peer_node_ids(&certs);
    if named.contains(&claimed) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "client certificate names node(s) {named:?} but the request claims to come from node {claimed}"
        )))
    }
}

/// The node-to-node service.
pub struct InternalService {
    registry: GroupRegistry,
    control: ControlPlane,
    router: Router,
}

impl InternalService {
    /// Serves the groups in `registry`, the control plane `control`, and data-plane calls
    /// forwarded to this node's shard replicas through `router`.
    pub fn new(registry: GroupRegistry, control: ControlPlane, router: Router) -> Self {
        Self {
            registry,
            control,
            router,
        }
    }
}

/// Maps a membership-change failure to a status (leader changes become `UNAVAILABLE` so callers retry).
fn membership_status<E: std::fmt::Display>(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    what: E,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable(format!("{what}: leadership changed, retry"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => Status::unavailable(format!(
            "{what}: another membership change is in progress, retry"
        )),
        other => Status::failed_precondition(format!("{what}: {other}")),
    }
}

/// The control-plane leader, with a client of it when it is another node (`None` when
/// this node leads).
fn leader(control: &ControlPlane) -> Result<(NodeId, Option<InternalClient<Channel>>), Status> {
    let metrics = control.raft().metrics().borrow().clone();
    let leader = metrics
        .current_leader
        .ok_or_else(|| Status::unavailable("no control-plane leader yet"))?;
    if leader == control.node_id() {
        return Ok((leader, None));
    }
    let node = metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .cloned()
        .ok_or_else(|| Status::unavailable("leader address unknown"))?;
    let client = control
        .peers()
        .client(leader, &node)
        .map_err(Status::unavailable)?;
    Ok((leader, Some(client)))
}

/// Runs a membership change on the leader, or forwards it to the leader. A removal is
/// refused while it would leave an index with no reachable replica, unless `force`.
pub async fn change_member(
    control: &ControlPlane,
    node_id: NodeId,
    action: MemberAction,
    force: bool,
) -> Result<(), Status> {
    if let (_, Some(mut client)) = leader(control)? {
        client
            .change_member(ChangeMemberRequest {
                from_node: control.node_id(),
                node_id,
                action: action as i32,
                force,
            })
            .await?;
        return Ok(());
    }
    let raft = control.raft();
    let membership = control.membership();
    if membership.get_node(&node_id).is_none() {
        return Err(Status::not_found(format!(
            "node {node_id} is not a member of the cluster"
        )));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    match action {
        MemberAction::Promote => {
            if voters.contains(&node_id) {
                return Ok(());
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| membership_status(e, format!("promoting node {node_id}")))?;
        }
        MemberAction::Remove => {
            if !force {
                refuse_stranding_indexes(control, node_id).await?;
            }
            if voters.contains(&node_id) {
                if voters.len() == 1 {
                    return Err(Status::failed_precondition("cannot remove the last voter"));
                }
                raft.change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                    false,
                )
                .await
                .map_err(|e| membership_status(e, format!("removing voter {node_id}")))?;
                // Not retained as a learner: the voter has left the membership. (A leader
                // that removed itself no longer leads, and openraft refuses a second change
                // from it.)
                return Ok(());
            }
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| membership_status(e, format!("removing node {node_id}")))?;
        }
        MemberAction::Unspecified => {
            return Err(Status::invalid_argument("membership action is unspecified"))
        }
    }
    Ok(())
}

/// Refuses to remove node `removed` while it would leave an index with no replica on a
/// member that answers: the indexes whose other replicas are all gone from the membership
/// or unreachable are named, with what to do. Runs on the control-plane leader.
async fn refuse_stranding_indexes(control: &ControlPlane, removed: NodeId) -> Result<(), Status> {
    let at_risk: Vec<(String, String, Vec<NodeId>)> = control.read(|s| {
        s.indexes
            .values()
            .filter(|i| i.replicas.contains(&removed))
            .map(|i| {
                // A replica on a node outside the membership never answers a ping.
                let others = i
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| *r != removed)
                    .collect();
                (i.name.clone(), i.project_id.clone(), others)
            })
            .collect()
    });
    let up = control
        .reachable_of(
            at_risk
                .iter()
                .flat_map(|(_, _, others)| others.iter().copied()),
        )
        .await;
    let mut stranded: Vec<String> = at_risk
        .into_iter()
        .filter(|(_, _, others)| !others.iter().any(|n| up.contains(n)))
        .map(|(name, project, _)| format!("'{name}' (project {project})"))
        .collect();
    if stranded.is_empty() {
        return Ok(());
    }
    let more = stranded.len().saturating_sub(MAX_LISTED_INDEXES);
    stranded.truncate(MAX_LISTED_INDEXES);
    Err(Status::failed_precondition(format!(
        "removing node {removed} would leave no reachable replica of index(es) {}{}: delete \
         them first, or bring a node holding another of their replicas back (or, to give \
         them up, remove the node with ?force=true)",
        stranded.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let from = request.get_ref().from_node;
        authenticate_peer(&request, from)?;
        Ok(Response::new(
            self.registry.dispatch(request.into_inner()).await?,
        ))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        let req = request.into_inner();
        let raft = self.registry.get(req.group_id).ok_or_else(|| {
            Status::not_found(format!(
                "raft group {} is not hosted on this node",
                req.group_id
            ))
        })?;
        match propose_to_group(&raft, self.registry.peers(), req.group_id, req.command).await {
            Ok((response, log_index)) => Ok(Response::new(ProposeReply {
                response,
                log_index,
            })),
            Err(ControlError::Unavailable { reason, .. }) => Err(Status::unavailable(reason)),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let from = request.get_ref().from_node;
        authenticate_peer(&request, from)?;
        let req = request.into_inner();
        let raft = self.control.raft();
        let membership = self.control.membership();
        if req.node_id != from && membership.get_node(&from).is_none() {
            return Err(Status::permission_denied(format!(
                "node {from} may not request a join for node {}: only the node itself or a member may",
                req.node_id
            )));
        }
        let (leader, client) = leader(&self.control)?;
        if let Some(mut client) = client {
            return client
                .join(JoinRequest {
                    from_node: self.control.node_id(),
                    ..req
                })
                .await;
        }
        let info = NodeInfo {
            cluster_addr: req.cluster_addr.clone(),
            api_addr: req.api_addr.clone(),
        };
        if membership.get_node(&req.node_id) != Some(&info) {
            tokio::time::timeout(
                Duration::from_millis(JOIN_CATCH_UP_TIMEOUT_MS),
                raft.add_learner(req.node_id, info, true),
            )
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("node {} did not catch up in time", req.node_id))
            })?
            .map_err(|e| membership_status(e, format!("adding node {} as learner", req.node_id)))?;
        }
        if req.promote {
            change_member(&self.control, req.node_id, MemberAction::Promote, false).await?;
        }
        Ok(Response::new(JoinReply { leader_id: leader }))
    }

    async fn data(&self, request: Request<DataRequest>) -> Result<Response<DataReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        let req = request.into_inner();
        let target = self.router.local_target(req.group_id).ok_or_else(|| {
            Status::unavailable(format!(
                "shard group {} has no replica on this node",
                req.group_id
            ))
        })?;
        if req.min_lsn > 0 {
            self.router.wait_applied(&target, req.min_lsn).await?;
        }
        if req.linearizable {
            linearizable_barrier(&target.shard.raft, self.registry.peers(), req.group_id)
                .await
                .map_err(crate::api::ApiError::from)?;
        }
        let (response, lsn) =
            vectors::run_encoded(&self.router, &target, &req.op, &req.request).await?;
        Ok(Response::new(DataReply {
            response,
            request_lsn: lsn.request,
            max_indexed_lsn: lsn.max_indexed,
        }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        let group = request.get_ref().group_id;
        let raft = self.registry.get(group).ok_or_else(|| {
            Status::not_found(format!("raft group {group} is not hosted on this node"))
        })?;
        match raft.get_read_log_id().await {
            Ok((read, _)) => Ok(Response::new(ReadIndexReply {
                read_index: read.map_or(0, |l| l.index),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(
                Status::unavailable(format!("this node does not lead group {group}")),
            ),
            Err(e) => Err(Status::unavailable(format!("group {group}: {e}"))),
        }
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        Ok(Response::new(PingReply {
            node_id: self.control.node_id(),
        }))
    }

    async fn change_member(
        &self,
        request: Request<ChangeMemberRequest>,
    ) -> Result<Response<ChangeMemberReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        let req = request.into_inner();
        let action = MemberAction::try_from(req.action).unwrap_or(MemberAction::Unspecified);
        change_member(&self.control, req.node_id, action, req.force).await?;
        Ok(Response::new(ChangeMemberReply {}))
    }
}

/// Pause between join attempts while the cluster has no leader.
pub const JOIN_RETRY_MS: u64 = 500;
