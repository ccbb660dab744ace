//! The data plane over gRPC: Pinecone's package-less `VectorService`. Authentication from
//! the `api-key` metadata, the index from `service-name` metadata (sent by the v8 SDK) or
//! the request's authority; sequence numbers in the response metadata.

use std::time::Instant;

use conifer_proto::pinecone as pb;
use conifer_proto::pinecone::vector_service_server::VectorService;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::access::{Caller, PROJECT_HEADER};
use super::data::{read_headers, INDEX_HEADER};
use super::{ApiError, ApiState};
use crate::dataplane::{self, Lsn, Operation, Resolved};
use crate::timing::{self, Spans};

/// Metadata key the front door sets to the HTTP/2 `:authority` before gRPC dispatch
/// (overwriting any client-sent value).
pub const AUTHORITY_METADATA: &str = "x-conifer-authority";

/// The gRPC data-plane service.
#[derive(Clone)]
pub struct GrpcDataPlane {
    state: ApiState,
}

impl GrpcDataPlane {
    /// The service over the node's API state.
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }

    /// Authorizes the call (the front door's middleware authenticated it and put the
    /// [`Caller`], with the method's operation, into the request) and resolves its index.
    async fn target<T>(&self, request: &Request<T>) -> Result<Resolved, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::from(ApiError::internal("no authenticated caller")))?;
        let md = request.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let project_id = caller
            .authorize_data_project(&self.state, get(PROJECT_HEADER))
            .await?;
        let explicit = get(INDEX_HEADER).or_else(|| get("service-name"));
        let mut target = self
            .state
            .router
            .resolve(
                &project_id,
                caller.served_index,
                explicit,
                get(AUTHORITY_METADATA),
            )
            .map_err(ApiError::from)?;
        read_headers(&self.state.router, &mut target, get).await?;
        Ok(target)
    }

    /// Runs one call: authorize and resolve its index, run the operation, respond.
    async fn run<O: Operation + Send + 'static>(
        &self,
        request: Request<O>,
    ) -> Result<Response<O::Response>, Status> {
        let started = Instant::now();
        let arrived = request
            .extensions()
            .get::<Caller>()
            .map_or(started, |c| c.request.arrived);
        let (answer, mut spans) = timing::collect(async {
            timing::record("receive", started.saturating_duration_since(arrived));
            let routing = Instant::now();
            let target = self.target(&request).await?;
            timing::record("route", routing.elapsed());
            dataplane::run(&self.state.router, &target, request.into_inner())
                .await
                .map_err(|e| Status::from(ApiError::from(e)))
        })
        .await;
        let (body, lsn) = answer?;
        spans.push("total", arrived.elapsed());
        Ok(respond(body, lsn, &spans))
    }
}

/// The response with Pinecone's sequence-number headers and Conifer's `server-timing`
/// ([`timing`]; tonic encodes the body after these headers, so no `encode` span).
fn respond<T>(body: T, lsn: Lsn, spans: &Spans) -> Response<T> {
    let mut response = Response::new(body);
    if let Ok(value) = MetadataValue::try_from(spans.header_value()) {
        response.metadata_mut().insert("server-timing", value);
    }
    if let Some(n) = lsn.request {
        response
            .metadata_mut()
            .insert("x-pinecone-request-lsn", MetadataValue::from(n));
    }
    if let Some(n) = lsn.max_indexed {
        response
            .metadata_mut()
            .insert("x-pinecone-max-indexed-lsn", MetadataValue::from(n));
    }
    response
}

/// Every method is the same: authorize and resolve, run the operation, answer with the
/// sequence numbers in the metadata.
#[tonic::async_trait]
impl VectorService for GrpcDataPlane {
    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        self.run(request).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.run(request).await
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        self.run(request).await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.run(request).await
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        self.run(request).await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        self.run(request).await
    }

    async fn describe_index_stats(
        &self,
        request: Request<pb::DescribeIndexStatsRequest>,
    ) -> Result<Response<pb::DescribeIndexStatsResponse>, Status> {
        self.run(request).await
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        self.run(request).await
    }

    async fn describe_namespace(
        &self,
        request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        self.run(request).await
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.run(request).await
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        self.run(request).await
    }

    async fn fetch_by_metadata(
        &self,
        request: Request<pb::FetchByMetadataRequest>,
    ) -> Result<Response<pb::FetchByMetadataResponse>, Status> {
        self.run(request).await
    }
}

/// Bytes of a gRPC message frame's header: the compression flag and the length.
const FRAME_HEADER_BYTES: usize = 5;

/// The layer in front of the gRPC service: reads the request (bounded by
/// [`super::MAX_DATA_BODY_BYTES`]) and checks it is exactly one well-formed message frame,
/// as a unary call must be. A request with no message, a truncated frame, trailing bytes or
/// an invalid compression flag is `INVALID_ARGUMENT` here, where tonic would answer
/// `INTERNAL` for the client's mistake; one over the limit is `OUT_OF_RANGE`.
pub async fn check_frame(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let limit = super::MAX_DATA_BODY_BYTES + FRAME_HEADER_BYTES;
    let refused = match super::body::read_bounded(body, limit).await {
        Ok(bytes) => match frame_problem(&bytes) {
            Ok(()) => {
                return next
                    .run(axum::extract::Request::from_parts(
                        parts,
                        axum::body::Body::from(bytes),
                    ))
                    .await
            }
            Err(message) => ApiError::invalid(message),
        },
        Err(super::body::BodyError::TooLarge) => ApiError::out_of_range(format!(
            "request exceeds the limit of {} bytes (4 MiB)",
            super::MAX_DATA_BODY_BYTES
        )),
        Err(super::body::BodyError::Broken(e)) => {
            ApiError::invalid(format!("the request could not be read: {e}"))
        }
        Err(super::body::BodyError::TimedOut) => ApiError::body_timed_out(),
        Err(super::body::BodyError::Busy) => ApiError::bodies_busy(),
    };
    Status::from(refused).into_http()
}

/// What is wrong with the framing of a unary request body, if anything.
fn frame_problem(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the request carries no message".into());
    }
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(format!(
            "truncated gRPC frame: {} of the {FRAME_HEADER_BYTES} header bytes arrived",
            bytes.len()
        ));
    }
    if bytes[0] > 1 {
        return Err(format!(
            "invalid gRPC compression flag {} (valid flags are 0 and 1)",
            bytes[0]
        ));
    }
    let announced = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let arrived = bytes.len() - FRAME_HEADER_BYTES;
    if arrived < announced {
        return Err(format!(
            "truncated gRPC frame: its header announces {announced} bytes, {arrived} arrived"
        ));
    }
    if arrived > announced {
        return Err(format!(
            "a unary call carries one message; {} bytes follow it",
            arrived - announced
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::frame_problem;

    #[test]
    fn frames_must_be_exactly_one_whole_message() {
        assert!(frame_problem(&[0, 0, 0, 0, 2, 8, 1]).is_ok());
        assert!(frame_problem(&[0, 0, 0, 0, 0]).is_ok(), "an empty message");
        assert!(frame_problem(&[]).unwrap_err().contains("no message"));
        assert!(frame_problem(&[0, 0, 0])
            .unwrap_err()
            .contains("3 of the 5 header bytes"));
        assert!(frame_problem(&[0, 0, 0, 0, 9, 8, 1])
            .unwrap_err()
            .contains("announces 9 bytes, 2 arrived"));
        assert!(frame_problem(&[0, 0, 0, 0, 1, 8, 1])
            .unwrap_err()
            .contains("1 bytes follow"));
        assert!(frame_problem(&[7, 0, 0, 0, 0])
            .unwrap_err()
            .contains("compression flag 7"));
    }
}
