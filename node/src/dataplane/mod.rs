//! The data plane: Pinecone's vector operations, typed, shared by REST, gRPC and
//! node-to-node forwarding. Knows no HTTP and no gRPC status: a failure is a [`DataError`],
//! which `api::error` turns into a status for the client.
//!
//! - [`DataOp`]: one variant per VectorService method carrying its request (the
//!   `operation` oneof of `conifer.internal.v1.DataRequest`, so the same type travels
//!   between nodes); [`DataResponse`] the matching responses. [`Operation`] ties each request
//!   type to its variant and response, so a transport calls [`run`] with the request it
//!   decoded and gets its response type back.
//! - [`router`]: which index a call addresses and where its shard replica is; the write
//!   path into the shard's Raft group; forwarding to a replica on another node.
//! - [`ops`]: the operations on a local replica, [`validate`] their checks and limits,
//!   [`page`] pagination tokens, [`convert`] protobuf `Struct` ↔ JSON.

pub mod convert;
pub mod ops;
pub mod page;
pub mod router;
pub mod validate;

use conifer_proto::internal::{
    data_reply, DataFailure, DataFailureKind, DataOutput, DataReply, DataRequest,
};
use conifer_proto::pinecone as pb;
use conifer_raft::GroupError;

use crate::crypto::{KeyStatus, Unavailability};

pub use conifer_proto::internal::data_output::Response as DataResponse;
pub use conifer_proto::internal::data_request::Operation as DataOp;
pub use router::{Resolved, Router, Target};

/// Why a data-plane operation was refused or could not run. The message names the field,
/// the value's problem and the limit; `api::error` gives each kind its HTTP status and gRPC
/// code (Pinecone's: 400 / `INVALID_ARGUMENT`, 404, 409, 503, 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The request breaks a rule or a limit; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The index, namespace or record does not exist (or belongs to another project).
    #[error("{0}")]
    NotFound(String),
    /// The namespace exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// No replica or leader could serve the call in time; a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// No answer came after the request may have taken effect (a write whose leader was
    /// cut off, a connection lost under the call): unavailable to the client, whose retry
    /// may succeed, but never sent to another replica here, which could apply it twice.
    #[error("{0}")]
    Indeterminate(String),
    /// The index's key was refused (access denied, disabled): nothing is lost, and the index
    /// serves again once the key's owner restores it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A fault of this node (encoding, an answer of the wrong kind).
    #[error("{0}")]
    Internal(String),
}

impl DataError {
    /// Pinecone's error code of the failure (`api::error::CODES` gives its statuses).
    pub fn error_code(&self) -> &'static str {
        match self {
            DataError::Invalid(_) => "INVALID_ARGUMENT",
            DataError::NotFound(_) => "NOT_FOUND",
            DataError::AlreadyExists(_) => "ALREADY_EXISTS",
            DataError::Unavailable(_) | DataError::Indeterminate(_) => "UNAVAILABLE",
            DataError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            DataError::Internal(_) => "INTERNAL",
        }
    }

    /// The refusal of a call to `index` whose keys are unavailable on this node (`status`
    /// is [`KeyStatus::Unavailable`]): FAILED_PRECONDITION when the key was refused or the
    /// wrapped key does not unwrap, UNAVAILABLE when the key provider could not be reached.
    /// `None` when the keys are not refused.
    pub fn key_refusal(index: &str, status: KeyStatus) -> Option<Self> {
        let KeyStatus::Unavailable { kind, reason, .. } = status else {
            return None;
        };
        let message = format!(
            "index '{index}' cannot be served: {reason}; its data is intact and it serves again \
             once the key is available"
        );
        Some(match kind {
            Some(Unavailability::Unreachable) => DataError::Unavailable(message),
            _ => DataError::FailedPrecondition(message),
        })
    }

    /// [`DataError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    /// [`DataError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// [`DataError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
    /// [`DataError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The failure as it travels back to a forwarding node.
    fn to_failure(&self) -> DataFailure {
        let (kind, message) = match self {
            DataError::Invalid(m) => (DataFailureKind::Invalid, m),
            DataError::NotFound(m) => (DataFailureKind::NotFound, m),
            DataError::AlreadyExists(m) => (DataFailureKind::AlreadyExists, m),
            DataError::Unavailable(m) => (DataFailureKind::Unavailable, m),
            DataError::Indeterminate(m) => (DataFailureKind::Indeterminate, m),
            DataError::FailedPrecondition(m) => (DataFailureKind::FailedPrecondition, m),
            DataError::Internal(m) => (DataFailureKind::Internal, m),
        };
        DataFailure {
            kind: kind as i32,
            message: message.clone(),
        }
    }

    /// The failure a serving replica reported.
    fn from_failure(failure: DataFailure) -> Self {
        let message = failure.message;
        match DataFailureKind::try_from(failure.kind).unwrap_or(DataFailureKind::Unspecified) {
            DataFailureKind::Invalid => DataError::Invalid(message),
            DataFailureKind::NotFound => DataError::NotFound(message),
            DataFailureKind::AlreadyExists => DataError::AlreadyExists(message),
            DataFailureKind::Unavailable => DataError::Unavailable(message),
            DataFailureKind::Indeterminate => DataError::Indeterminate(message),
            DataFailureKind::FailedPrecondition => DataError::FailedPrecondition(message),
            DataFailureKind::Internal | DataFailureKind::Unspecified => {
                DataError::Internal(message)
            }
        }
    }
}

impl From<GroupError> for DataError {
    /// A shard group's failure (its reason names the group), saying when a write may still
    /// have been applied.
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Unavailable {
                reason,
                outcome_unknown: true,
                ..
            } => DataError::Indeterminate(format!(
                "{reason}; the request may or may not have been applied"
            )),
            GroupError::Unavailable { reason, .. } => DataError::Unavailable(reason),
            GroupError::Internal { reason, .. } => DataError::Internal(reason),
        }
    }
}

/// Sequence numbers that travel with responses (Pinecone's `x-pinecone-*-lsn` headers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lsn {
    /// For writes: the sequence number of this request (`x-pinecone-request-lsn`).
    pub request: Option<u64>,
    /// For reads: the highest sequence number applied on the replica that answered
    /// (`x-pinecone-max-indexed-lsn`).
    pub max_indexed: Option<u64>,
}

/// A VectorService request type: its [`DataOp`] variant and its response type. Every
/// request type has one (the `operations!` list below): the gRPC service's methods — all of
/// VectorService's, which tonic requires — each run through [`run`], so a missing line does
/// not compile.
pub trait Operation: Sized {
    /// What the operation answers.
    type Response: Send + 'static;
    /// The request as an operation.
    fn into_op(self) -> DataOp;
    /// The response of this operation out of `response`; INTERNAL if it is another's.
    fn response(response: DataResponse) -> Result<Self::Response, DataError>;
}

macro_rules! operations {
    ($($request:ty => $variant:ident -> $response:ty;)*) => {$(
        impl Operation for $request {
            type Response = $response;
            fn into_op(self) -> DataOp {
                DataOp::$variant(self)
            }
            fn response(response: DataResponse) -> Result<$response, DataError> {
                match response {
                    DataResponse::$variant(r) => Ok(r),
                    _ => Err(DataError::internal(concat!(
                        "a ",
                        stringify!($variant),
                        " call was answered with another operation's response"
                    ))),
                }
            }
        }
    )*};
}

operations! {
    pb::UpsertRequest => Upsert -> pb::UpsertResponse;
    pb::QueryRequest => Query -> pb::QueryResponse;
    pb::FetchRequest => Fetch -> pb::FetchResponse;
    pb::ListRequest => List -> pb::ListResponse;
    pb::FetchByMetadataRequest => FetchByMetadata -> pb::FetchByMetadataResponse;
    pb::DeleteRequest => Delete -> pb::DeleteResponse;
    pb::UpdateRequest => Update -> pb::UpdateResponse;
    pb::DescribeIndexStatsRequest => DescribeIndexStats -> pb::DescribeIndexStatsResponse;
    pb::ListNamespacesRequest => ListNamespaces -> pb::ListNamespacesResponse;
    pb::DescribeNamespaceRequest => DescribeNamespace -> pb::NamespaceDescription;
    pb::CreateNamespaceRequest => CreateNamespace -> pb::NamespaceDescription;
    pb::DeleteNamespaceRequest => DeleteNamespace -> pb::DeleteResponse;
}

/// Runs `request` on the index `target` resolves to: on this node's replica, or forwarded
/// to a replica on another node when this node holds none. Returns the response and the
/// sequence numbers for its headers.
pub async fn run<O: Operation>(
    router: &Router,
    target: &Resolved,
    request: O,
) -> Result<(O::Response, Lsn), DataError> {
    let (response, lsn) = match target {
        Resolved::Local(t) => ops::run_local(router, t, request.into_op()).await?,
        Resolved::Remote(r) => {
            let started = std::time::Instant::now();
            let answer = router.forward(r, request.into_op()).await;
            crate::timing::record("forward", started.elapsed());
            answer?
        }
    };
    Ok((O::response(response)?, lsn))
}

/// Serves a call another node forwarded (`Internal/Data`; the sender has authenticated and
/// authorized the client): waits for the requested sequence number or read index, runs the
/// operation on this node's replica, and answers its response or its failure.
pub async fn serve_forwarded(router: &Router, request: DataRequest) -> DataReply {
    let (outcome, lsn) = match run_forwarded(router, request).await {
        Ok((response, lsn)) => (
            data_reply::Outcome::Response(DataOutput {
                response: Some(response),
            }),
            lsn,
        ),
        Err(e) => (data_reply::Outcome::Failure(e.to_failure()), Lsn::default()),
    };
    DataReply {
        request_lsn: lsn.request,
        max_indexed_lsn: lsn.max_indexed,
        outcome: Some(outcome),
    }
}

async fn run_forwarded(
    router: &Router,
    request: DataRequest,
) -> Result<(DataResponse, Lsn), DataError> {
    let group = request.group_id;
    let target = match router.local_target(group) {
        Some(target) => target,
        None => return Err(router.not_hosted(group)),
    };
    if let Some(refused) =
        DataError::key_refusal(&target.index.name, router.shards().keys().status(group))
    {
        return Err(refused);
    }
    if request.min_lsn > 0 {
        router.wait_applied(&target, request.min_lsn).await?;
    }
    if request.linearizable {
        target
            .shard
            .group_client(router.control().peers())
            .linearizable_barrier()
            .await?;
    }
    let op = request
        .operation
        .ok_or_else(|| DataError::invalid("forwarded data-plane call carries no operation"))?;
    ops::run_local(router, &target, op).await
}

/// The outcome a serving replica answered, as the forwarding node returns it.
fn reply_outcome(reply: DataReply) -> Result<(DataResponse, Lsn), DataError> {
    let lsn = Lsn {
        request: reply.request_lsn,
        max_indexed: reply.max_indexed_lsn,
    };
    match reply.outcome {
        Some(data_reply::Outcome::Response(DataOutput {
            response: Some(response),
        })) => Ok((response, lsn)),
        Some(data_reply::Outcome::Failure(failure)) => Err(DataError::from_failure(failure)),
        Some(data_reply::Outcome::Response(DataOutput { response: None })) | None => Err(
            DataError::internal("a forwarded data-plane call was answered with nothing"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_kind_survives_forwarding() {
        for e in [
            DataError::invalid("i"),
            DataError::not_found("n"),
            DataError::AlreadyExists("a".into()),
            DataError::unavailable("u"),
            DataError::FailedPrecondition("f".into()),
            DataError::Indeterminate("d".into()),
            DataError::internal("x"),
        ] {
            assert_eq!(DataError::from_failure(e.to_failure()), e);
        }
    }

    #[test]
    fn a_write_that_may_have_been_applied_stays_indeterminate_and_unavailable() {
        let unknown = DataError::from(GroupError::Unavailable {
            group: 7,
            reason: "leader node 1 of group 7 has heard from no quorum".into(),
            outcome_unknown: true,
        });
        assert!(
            matches!(unknown, DataError::Indeterminate(_)),
            "{unknown:?}"
        );
        assert_eq!(unknown.error_code(), "UNAVAILABLE");
        assert!(unknown
            .to_string()
            .contains("may or may not have been applied"));
        let no_leader = DataError::from(GroupError::Unavailable {
            group: 7,
            reason: "no leader".into(),
            outcome_unknown: false,
        });
        assert!(matches!(no_leader, DataError::Unavailable(_)));
    }

    #[test]
    fn a_response_of_another_operation_is_internal() {
        let wrong = DataResponse::Delete(pb::DeleteResponse {});
        assert!(matches!(
            <pb::UpsertRequest as Operation>::response(wrong),
            Err(DataError::Internal(_))
        ));
        let right = DataResponse::Upsert(pb::UpsertResponse { upserted_count: 3 });
        assert_eq!(
            <pb::UpsertRequest as Operation>::response(right)
                .unwrap()
                .upserted_count,
            3
        );
    }
}
