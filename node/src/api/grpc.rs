//! The data plane over gRPC: Pinecone's package-less `VectorService`. Authentication from
//! the `api-key` metadata, the index from `service-name` metadata (sent by the v8 SDK) or
//! the request's authority; sequence numbers in the response metadata.

use conifer_proto::pinecone as pb;
use conifer_proto::pinecone::vector_service_server::VectorService;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::data::{read_headers, INDEX_HEADER};
use super::vectors::{self, Lsn};
use crate::auth::Access;
use crate::router::{Resolved, Router};

/// Metadata key the front door sets to the HTTP/2 `:authority` before gRPC dispatch
/// (overwriting any client-sent value).
pub const AUTHORITY_METADATA: &str = "x-conifer-authority";

/// The gRPC data-plane service.
#[derive(Clone)]
pub struct GrpcDataPlane {
    router: Router,
}

impl GrpcDataPlane {
    /// A service routing through `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    async fn target<T>(&self, request: &Request<T>, access: Access) -> Result<Resolved, Status> {
        let md = request.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let key = self.router.authenticate(get("api-key"), access).await?;
        let explicit = get(INDEX_HEADER).or_else(|| get("service-name"));
        let mut target = self
            .router
            .resolve(&key, explicit, get(AUTHORITY_METADATA))?;
        read_headers(&self.router, &mut target, get).await?;
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
        let target = self.target(&request, Access::DataWrite).await?;
        let (body, lsn) = vectors::upsert(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let target = self.target(&request, Access::DataWrite).await?;
        let (body, lsn) = vectors::delete(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) = vectors::fetch(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) = vectors::list(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) = vectors::query(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let target = self.target(&request, Access::DataWrite).await?;
        let (body, lsn) = vectors::update(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn describe_index_stats(
        &self,
        request: Request<pb::DescribeIndexStatsRequest>,
    ) -> Result<Response<pb::DescribeIndexStatsResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) =
            vectors::describe_index_stats(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) =
            vectors::list_namespaces(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn describe_namespace(
        &self,
        request: Request<pb::DescribeNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) =
            vectors::describe_namespace(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let target = self.target(&request, Access::DataWrite).await?;
        let (body, lsn) =
            vectors::delete_namespace(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceDescription>, Status> {
        let target = self.target(&request, Access::DataWrite).await?;
        let (body, lsn) =
            vectors::create_namespace(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }

    async fn fetch_by_metadata(
        &self,
        request: Request<pb::FetchByMetadataRequest>,
    ) -> Result<Response<pb::FetchByMetadataResponse>, Status> {
        let target = self.target(&request, Access::DataRead).await?;
        let (body, lsn) =
            vectors::fetch_by_metadata(&self.router, &target, request.into_inner()).await?;
        Ok(respond(body, lsn))
    }
}
