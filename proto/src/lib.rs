//! Generated protocol buffer code for Conifer's gRPC APIs.

pub mod codec;

/// `conifer.internal.v1`: the node-to-node API (Raft RPCs per group, forwarding, joins).
pub mod internal {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("conifer.internal.v1");
}

/// The Pinecone-compatible data plane (`VectorService`, no package): Pinecone's 2025-10
/// field numbers and names, so the official SDKs' stubs work unchanged.
pub mod pinecone {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}
