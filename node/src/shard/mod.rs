//! Shards: the vector engine ([`engine`], its search path [`native`], [`faiss_io`]), metadata filters ([`filter`],
//! [`metadata_index`]), the replicated shard state machine — its command contract
//! ([`command`]), durable state ([`store`]), namespaces ([`namespace`]) and the machine
//! itself ([`machine`]) — and the reconciler that runs the shard groups this node should
//! host ([`manager`]).

pub mod command;
pub mod engine;
pub mod faiss_io;
pub mod filter;
pub mod machine;
pub mod manager;
pub mod metadata_index;
pub mod namespace;
pub mod native;
pub mod store;
