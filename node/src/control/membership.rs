//! Cluster membership: admitting a node (learner, then voter), promoting a learner and
//! removing a node. Each change runs on the control-plane leader — other nodes forward it
//! over the cluster port — as an openraft membership change, and is then recorded in the
//! audit log by [`Command::Membership`], with its outcome (a refused change is recorded
//! as refused). An openraft membership entry cannot carry an application command, so the
//! change and its record are two log entries: a crash of the recording node between them
//! leaves a change unrecorded (never a record of a change that did not happen).

use std::collections::BTreeSet;
use std::time::Duration;

use conifer_proto::internal::internal_client::InternalClient;
use conifer_proto::internal::{ChangeMemberRequest, MemberAction};
use conifer_raft::{NodeId, NodeInfo};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::{ControlError, ControlPlane, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};

/// Longest a new learner may take to catch up before a join reports failure.
pub const JOIN_CATCH_UP_TIMEOUT_MS: u64 = 60_000;
/// Most index names a refused removal lists (the rest are counted).
const MAX_LISTED_INDEXES: usize = 10;

/// A change of the cluster's membership, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A node joined: added as a learner, promoted to voter when `voter`.
    Join {
        /// Address of its cluster port.
        cluster_addr: String,
        /// Address of its client port.
        api_addr: String,
        /// Whether it was (to be) promoted.
        voter: bool,
    },
    /// A learner became a voter.
    Promote,
    /// A node left the membership; `force` waived the check for indexes it strands.
    Remove {
        /// Whether the removal was forced.
        force: bool,
    },
}

impl MemberChange {
    /// Conifer's operation name of the change (`event.operation`).
    pub fn operation(&self) -> &'static str {
        match self {
            MemberChange::Join { .. } => "cluster.member.join",
            MemberChange::Promote => "cluster.member.promote",
            MemberChange::Remove { .. } => "cluster.member.remove",
        }
    }
}

/// The record of one membership change (the command [`Command::Membership`] carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// The node changed.
    pub node_id: NodeId,
    /// What changed.
    pub change: MemberChange,
    /// Why the change failed, when it did (the command is then rejected, and its event
    /// records this failure).
    pub failure: Option<MemberFailure>,
}

/// How a membership change failed, as its client was told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFailure {
    /// Pinecone's error code the client received ([`ControlError::error_code`]).
    pub error_code: String,
    /// The message.
    pub reason: String,
}

/// Runs `change` of node `node_id` on the leader, or forwards it there. A removal is
/// refused while it would leave an index with no reachable replica, unless `force`.
/// NOT_FOUND for a node outside the membership; `Rejection::Invalid` (412) for the last
/// voter and for stranded indexes; unavailable while leadership changes.
pub async fn change_member(
    control: &ControlPlane,
    node_id: NodeId,
    action: MemberAction,
    force: bool,
) -> Result<(), ControlError> {
    if let Some(mut leader) = leader_client(control)? {
        let reply = leader
            .change_member(ChangeMemberRequest {
                from_node: control.node_id(),
                node_id,
                action: action as i32,
                force,
            })
            .await
            .map_err(|status| leader_failure(&status))?
            .into_inner();
        return rejection_from_reply(&reply.rejection);
    }
    let raft = control.raft();
    let membership = control.membership();
    if membership.get_node(&node_id).is_none() {
        return Err(Rejection::NotFound {
            kind: "node".into(),
            id: node_id.to_string(),
        }
        .into());
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    match action {
        MemberAction::Promote => {
            if voters.contains(&node_id) {
                return Ok(());
            }
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| membership_error(e, format!("promoting node {node_id}")))?;
        }
        MemberAction::Remove => {
            if !force {
                refuse_stranding_indexes(control, node_id).await?;
            }
            if voters.contains(&node_id) {
                if voters.len() == 1 {
                    return Err(Rejection::Invalid("cannot remove the last voter".into()).into());
                }
                raft.change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                    false,
                )
                .await
                .map_err(|e| membership_error(e, format!("removing voter {node_id}")))?;
                // Not retained as a learner: the voter has left the membership. (A leader
                // that removed itself no longer leads, and openraft refuses a second change
                // from it.)
                return Ok(());
            }
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| membership_error(e, format!("removing node {node_id}")))?;
        }
        MemberAction::Unspecified => {
            return Err(Rejection::Invalid("membership action is unspecified".into()).into())
        }
    }
    Ok(())
}

/// Admits node `node_id` on the leader (a learner, caught up within
/// [`JOIN_CATCH_UP_TIMEOUT_MS`], then a voter when `promote`), or forwards the join there.
/// Returns the id of the leader that admitted it.
pub async fn admit(
    control: &ControlPlane,
    node_id: NodeId,
    info: NodeInfo,
    promote: bool,
) -> Result<NodeId, ControlError> {
    let membership = control.membership();
    let leader_id = current_leader(control)?;
    if let Some(mut leader) = leader_client(control)? {
        let reply = leader
            .join(conifer_proto::internal::JoinRequest {
                from_node: control.node_id(),
                node_id,
                cluster_addr: info.cluster_addr,
                api_addr: info.api_addr,
                promote,
            })
            .await
            .map_err(|status| leader_failure(&status))?
            .into_inner();
        return rejection_from_reply(&reply.rejection).map(|()| reply.leader_id);
    }
    let change = MemberChange::Join {
        cluster_addr: info.cluster_addr.clone(),
        api_addr: info.api_addr.clone(),
        voter: promote,
    };
    let result = async {
        if membership.get_node(&node_id) != Some(&info) {
            tokio::time::timeout(
                Duration::from_millis(JOIN_CATCH_UP_TIMEOUT_MS),
                control.raft().add_learner(node_id, info, true),
            )
            .await
            .map_err(|_| ControlError::Unavailable {
                reason: format!("node {node_id} did not catch up in time"),
                outcome_unknown: true,
            })?
            .map_err(|e| membership_error(e, format!("adding node {node_id} as learner")))?;
        }
        if promote {
            change_member(control, node_id, MemberAction::Promote, false).await?;
        }
        Ok(())
    }
    .await;
    // A join has no client behind it: Conifer records it, as the leader that admitted it.
    let context = crate::audit::AuditContext::internal(
        change.operation(),
        crate::audit::ActorRef::system(),
        control.node_id(),
    );
    record(control, context, node_id, change, &result).await;
    result.map(|()| leader_id)
}

/// Records a membership change that was attempted, with its outcome, in the audit log
/// (`context`: who asked). A failure to record is logged; the change's own result stands.
pub async fn record(
    control: &ControlPlane,
    context: crate::audit::AuditContext,
    node_id: NodeId,
    change: MemberChange,
    result: &Result<(), ControlError>,
) {
    let command = super::Command::Membership(MembershipRecord {
        node_id,
        change,
        failure: result.as_ref().err().map(|e| MemberFailure {
            error_code: e.error_code().to_string(),
            reason: e.to_string(),
        }),
    });
    match control.propose_as(context, command).await {
        Ok(_) | Err(ControlError::Rejected(_)) => {}
        Err(e) => tracing::warn!("membership change of node {node_id} not recorded: {e}"),
    }
}

/// A rejection as a leader answers a forwarded join or change (bincode of [`Rejection`]);
/// see [`rejection_from_reply`].
pub fn encode_rejection(rejection: &Rejection) -> Vec<u8> {
    bincode::serialize(rejection).expect("a Rejection (enum of strings) always serializes")
}

/// The rejection a leader reported for a forwarded join or change (bincode of
/// [`Rejection`]; empty: done).
pub fn rejection_from_reply(bytes: &[u8]) -> Result<(), ControlError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let rejection: Rejection = bincode::deserialize(bytes)
        .map_err(|e| ControlError::Internal(format!("undecodable membership rejection: {e}")))?;
    Err(rejection.into())
}

/// A forwarded join or change that failed at the transport: what the leader said when it
/// said it cannot serve now (unavailable, which callers retry; also when it could not be
/// reached or did not answer in time, then possibly applied); a refusal of this node as a
/// rejection (a joining node stops); any other fault as internal.
fn leader_failure(status: &tonic::Status) -> ControlError {
    use conifer_raft::client::PeerFailure;
    let message = status.message().to_string();
    match PeerFailure::of(status) {
        PeerFailure::NotSent | PeerFailure::Unavailable => ControlError::Unavailable {
            reason: message,
            outcome_unknown: false,
        },
        PeerFailure::Unanswered => ControlError::Unavailable {
            reason: message,
            outcome_unknown: true,
        },
        PeerFailure::Refused => Rejection::Invalid(message).into(),
        PeerFailure::Fault => ControlError::Internal(message),
    }
}

/// A membership-change failure: leader changes and a change in progress are unavailable
/// (callers retry), anything else is a rejection.
fn membership_error<E: std::fmt::Display>(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    what: E,
) -> ControlError {
    let unavailable = |reason: String| ControlError::Unavailable {
        reason,
        outcome_unknown: false,
    };
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            unavailable(format!("{what}: leadership changed, retry"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => unavailable(format!(
            "{what}: another membership change is in progress, retry"
        )),
        other => Rejection::Invalid(format!("{what}: {other}")).into(),
    }
}

/// The control-plane leader's id; unavailable while there is none.
fn current_leader(control: &ControlPlane) -> Result<NodeId, ControlError> {
    control
        .raft()
        .metrics()
        .borrow()
        .current_leader
        .ok_or_else(|| ControlError::Unavailable {
            reason: "no control-plane leader yet".into(),
            outcome_unknown: false,
        })
}

/// A client of the control-plane leader when it is another node (`None` when this node
/// leads).
fn leader_client(control: &ControlPlane) -> Result<Option<InternalClient<Channel>>, ControlError> {
    let leader = current_leader(control)?;
    if leader == control.node_id() {
        return Ok(None);
    }
    let unavailable = |reason: String| ControlError::Unavailable {
        reason,
        outcome_unknown: false,
    };
    let node = control
        .membership()
        .get_node(&leader)
        .cloned()
        .ok_or_else(|| unavailable("leader address unknown".into()))?;
    let client = control.peers().client(leader, &node).map_err(unavailable)?;
    Ok(Some(client))
}

/// Refuses to remove node `removed` while it would leave an index with no replica on a
/// member that answers: the indexes whose other replicas are all gone from the membership
/// or unreachable are named, with what to do. Runs on the control-plane leader.
async fn refuse_stranding_indexes(
    control: &ControlPlane,
    removed: NodeId,
) -> Result<(), ControlError> {
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
    Err(Rejection::Invalid(format!(
        "removing node {removed} would leave no reachable replica of index(es) {}{}: delete \
         them first, or bring a node holding another of their replicas back (or, to give \
         them up, remove the node with ?force=true)",
        stranded.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
    .into())
}

/// A membership change: the cluster, named by the node changed (as a refused promote or
/// remove names it), on the cluster chain.
pub(super) fn describe(record: &MembershipRecord) -> Resource {
    let node = record.node_id.to_string();
    let (verb, params) = match &record.change {
        MemberChange::Join {
            cluster_addr,
            api_addr,
            voter,
        } => (
            Verb::Create,
            Params::default()
                .with("cluster_addr", cluster_addr.as_str())
                .with("api_addr", api_addr.as_str())
                .with("voter", *voter),
        ),
        MemberChange::Promote => (Verb::Update, Params::default()),
        MemberChange::Remove { force } => (Verb::Delete, Params::default().with("force", *force)),
    };
    Resource::new(verb, ResourceType::Cluster, Some(&node))
        .id(Some(node.as_str()))
        .params(params.with("node_id", record.node_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_travels_to_the_forwarder_unchanged() {
        let rejection = Rejection::NotFound {
            kind: "node".into(),
            id: "7".into(),
        };
        match rejection_from_reply(&encode_rejection(&rejection)) {
            Err(ControlError::Rejected(back)) => assert_eq!(back, rejection),
            other => panic!("expected the rejection back, got {other:?}"),
        }
        assert!(rejection_from_reply(&[]).is_ok());
        assert!(matches!(
            rejection_from_reply(&[0xff; 3]),
            Err(ControlError::Internal(_))
        ));
    }
}
