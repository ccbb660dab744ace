//! The data plane over gRPC: Pinecone's package-less `VectorService`. Authentication from
//! the `api-key` metadata, the index from `service-name` metadata (sent by the v8 SDK) or
//! the request's authority; sequence numbers in the response metadata.

use conifer_proto::pinecone as pb;
use conifer_proto::pinecone::vector_service_server::VectorService;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::access::{Caller, PROJECT_HEADER};
use super::data::{read_headers, INDEX_HEADER};
use super::vectors::{self, Lsn};
use super::{ApiError, ApiState};
use crate::router::Resolved;

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
        let mut target =
            self.state
                .router
                .resolve(&project_id, explicit, get(AUTHORITY_METADATA))?;
        read_headers(&self.state.router, &mut target, get).await?;
        Ok(target)
    }
}

fn respond<T>(body: T, lsn: Lsn) -> Response<T> {
    let mut response = Response::new(body);
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

#[tonic::async_trait]
impl VectorService for GrpcDataPlane {
    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::upsert(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::delete(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) = vectors::fetch(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) = vectors::list(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) = vectors::query(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::update(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn describe_index_stats(
        &self,
        request: Request<pb::DescribeIndexStatsRequest>,
    ) -> Result<Response<pb::DescribeIndexStatsResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::describe_index_stats(&self.state.router, &target, request.into_inner())
                .await?;
        Ok(respond(body, lsn))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::list_namespaces(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn describe_namespace(
        &self,
        request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::describe_namespace(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::delete_namespace(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::create_namespace(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn fetch_by_metadata(
        &self,
        request: Request<pb::FetchByMetadataRequest>,
    ) -> Result<Response<pb::FetchByMetadataResponse>, Status> {
        let target = self.target(&request).await?;
        let (body, lsn) =
            vectors::fetch_by_metadata(&self.state.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }
}
