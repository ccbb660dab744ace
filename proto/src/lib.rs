//! Generated protocol buffer code for Conifer's gRPC APIs.

pub mod codec;

/// `conifer.internal.v1`: the node-to-node API (Raft RPCs per group, forwarding, joins,
/// data-plane calls carrying [`pinecone`] requests).
pub use packages::conifer::internal::v1 as internal;

/// Modules nested as the proto packages are, so that prost's relative paths from
/// `conifer.internal.v1` to the package-less Pinecone types (`super::super::super::X`)
/// land here, where [`pinecone`]'s types are re-exported.
mod packages {
    pub use super::pinecone::*;

    pub mod conifer {
        pub mod internal {
            pub mod v1 {
                #![allow(missing_docs, clippy::all)]
                tonic::include_proto!("conifer.internal.v1");
            }
        }
    }
}

/// The Pinecone-compatible data plane (`VectorService`, no package): Pinecone's 2025-10
/// field numbers and names, so the official SDKs' stubs work unchanged.
pub mod pinecone {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}
