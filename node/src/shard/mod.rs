//! Shards: the vector engine ([`engine`]), metadata filters ([`filter`]), the replicated
//! shard state machine ([`machine`]) and the reconciler that runs the shard groups this
//! node should host ([`manager`]).

pub mod engine;
pub mod faiss_io;
pub mod filter;
pub mod machine;
pub mod manager;
pub mod metadata_index;
