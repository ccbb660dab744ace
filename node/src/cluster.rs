//! The cluster port: the node-to-node gRPC service, served only over mutual TLS.
//!
//! Every request names its sender; the handler refuses it unless the client certificate
//! (already verified to chain to the cluster CA, and unexpired, by the TLS layer) carries
//! the SAN `node-<sender>`. Each RPC is a shim over the room that serves it: Raft RPCs to
//! the group registry, proposals and read indexes to the group's [`GroupClient`], joins and
//! membership changes to [`membership`], data-plane calls to [`dataplane`].

use conifer_proto::internal::internal_server::Internal;
use conifer_proto::internal::{
    ChangeMemberReply, ChangeMemberRequest, DataReply, DataRequest, JoinReply, JoinRequest,
    MemberAction, PingReply, PingRequest, ProposeReply, ProposeRequest, RaftReply, RaftRequest,
    ReadIndexReply, ReadIndexRequest, RootKey, RootKeyStepReply, RootKeyStepRequest, RootKeysReply,
    RootKeysRequest,
};
use conifer_raft::{GroupClient, GroupError, GroupRegistry, NodeId, NodeInfo};
use openraft::error::{CheckIsLeaderError, RaftError};
use tonic::{Request, Response, Status};

use crate::control::rotation;
use crate::control::{membership, ControlError, ControlPlane};
use crate::crypto::rotation::LocalRoot;
use crate::crypto::CryptoError;
use crate::dataplane::{self, Router};
use crate::tls::peer_node_ids;

/// Refuses a request whose client certificate does not name the node it claims to be.
pub fn authenticate_peer<T>(request: &Request<T>, claimed: NodeId) -> Result<(), Status> {
    let certs = request
        .extensions()
        .get::<crate::tls::peer::PeerConnectInfo>()
        .map(|info| info.certs.clone())
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
    root: Option<LocalRoot>,
}

impl InternalService {
    /// Serves the groups in `registry`, the control plane `control`, data-plane calls
    /// forwarded to this node's shard replicas through `router`, and — when the root is a
    /// local keyring — its root key versions to joining nodes and root key rotation steps.
    pub fn new(
        registry: GroupRegistry,
        control: ControlPlane,
        router: Router,
        root: Option<LocalRoot>,
    ) -> Self {
        Self {
            registry,
            control,
            router,
            root,
        }
    }
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
        let group = GroupClient::new(raft, self.registry.peers().clone(), req.group_id);
        match group.propose(req.command).await {
            Ok((response, log_index)) => Ok(Response::new(ProposeReply {
                response,
                log_index,
            })),
            Err(GroupError::Unavailable { reason, .. }) => Err(Status::unavailable(reason)),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let from = request.get_ref().from_node;
        authenticate_peer(&request, from)?;
        let req = request.into_inner();
        if req.node_id != from && self.control.membership().get_node(&from).is_none() {
            return Err(Status::permission_denied(format!(
                "node {from} may not request a join for node {}: only the node itself or a member may",
                req.node_id
            )));
        }
        let info = NodeInfo {
            cluster_addr: req.cluster_addr,
            api_addr: req.api_addr,
        };
        let result = membership::admit(&self.control, req.node_id, info, req.promote).await;
        let (leader_id, rejection) = reply_parts(result)?;
        Ok(Response::new(JoinReply {
            leader_id: leader_id.unwrap_or_default(),
            rejection,
        }))
    }

    async fn data(&self, request: Request<DataRequest>) -> Result<Response<DataReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        Ok(Response::new(
            dataplane::serve_forwarded(&self.router, request.into_inner()).await,
        ))
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

    async fn root_keys(
        &self,
        request: Request<RootKeysRequest>,
    ) -> Result<Response<RootKeysReply>, Status> {
        let from = request.get_ref().from_node;
        authenticate_peer(&request, from)?;
        let keyring = &self
            .root
            .as_ref()
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this cluster's root key is not a local keyring: give the joining node the \
                     same root as the others",
                )
            })?
            .keyring;
        tracing::info!(
            node = from,
            "giving the cluster's root key versions to a node"
        );
        let draft = crate::control::audit::root_keys_event(self.control.node_id(), from);
        let command = crate::control::Command::RecordObserved(vec![draft]);
        if let Err(e) = self.control.propose(command).await {
            // Recorded or not, the node holds a certificate of the cluster CA; its join is
            // recorded as cluster.member.join.
            tracing::warn!(node = from, "root key hand-over not recorded: {e}");
        }
        Ok(Response::new(RootKeysReply {
            current: keyring.current_version(),
            keys: keyring
                .export()
                .into_iter()
                .map(|root| RootKey {
                    version: root.version,
                    key: root.key.to_vec(),
                    created_at: root.created_at,
                })
                .collect(),
        }))
    }

    async fn root_key_step(
        &self,
        request: Request<RootKeyStepRequest>,
    ) -> Result<Response<RootKeyStepReply>, Status> {
        let from = request.get_ref().from_node;
        authenticate_peer(&request, from)?;
        if self.control.membership().get_node(&from).is_none() {
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of the cluster"
            )));
        }
        let root = self.root.as_ref().ok_or_else(|| {
            Status::failed_precondition("this node's root key is not a local keyring")
        })?;
        let step = request
            .into_inner()
            .step
            .ok_or_else(|| Status::invalid_argument("no step given"))
            .and_then(|step| rotation::step_from_proto(step).map_err(Status::invalid_argument))?;
        self.control
            .read(|s| rotation::step_allowed(s, &step))
            .map_err(Status::failed_precondition)?;
        match root.apply(step).await {
            Ok(keys) => Ok(Response::new(rotation::node_keys_to_proto(keys))),
            Err(e @ (CryptoError::Rotation(_) | CryptoError::UnknownKeyVersion(_))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn change_member(
        &self,
        request: Request<ChangeMemberRequest>,
    ) -> Result<Response<ChangeMemberReply>, Status> {
        authenticate_peer(&request, request.get_ref().from_node)?;
        let req = request.into_inner();
        let action = MemberAction::try_from(req.action).unwrap_or(MemberAction::Unspecified);
        let result = membership::change_member(&self.control, req.node_id, action, req.force).await;
        let (_, rejection) = reply_parts(result)?;
        Ok(Response::new(ChangeMemberReply { rejection }))
    }
}

/// A membership result as a reply carries it: a rejection travels in the reply
/// ([`membership::encode_rejection`]) for the forwarder to report as the control plane's;
/// unavailability (which joining nodes and forwarders retry) and internal faults are
/// statuses.
fn reply_parts<T>(result: Result<T, ControlError>) -> Result<(Option<T>, Vec<u8>), Status> {
    match result {
        Ok(value) => Ok((Some(value), Vec::new())),
        Err(ControlError::Rejected(r)) => Ok((None, membership::encode_rejection(&r))),
        Err(ControlError::Unavailable { reason, .. }) => Err(Status::unavailable(reason)),
        Err(ControlError::Internal(reason)) => Err(Status::internal(reason)),
    }
}

/// Pause between join attempts while the cluster has no leader.
pub const JOIN_RETRY_MS: u64 = 500;
