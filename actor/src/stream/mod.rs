//! Streaming an actor's envs into the replay shards.
//!
//! - [`chunker`]: cuts each env's stream into chunks (pure);
//! - [`writer`]: one `Insert` stream per shard with bounded in-flight chunks (gRPC);
//! - [`run`]: the actor process: register, fetch the experiment and shard map, simulate, stream,
//!   drain on shutdown.

pub mod chunker;
pub mod run;
pub mod writer;
