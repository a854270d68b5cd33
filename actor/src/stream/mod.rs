//! Streaming an actor's envs into the replay shards.
//!
//! - [`chunker`]: cuts each env's stream into chunks (pure);
//! - [`resolver`]: the shard map as the actor sees it, and one channel per shard address;
//! - [`writer`]: one `Insert` stream per shard with bounded in-flight chunks, reconnecting and
//!   resending unacknowledged chunks after a failure (its bookkeeping is pure and unit-tested);
//! - [`run`]: the actor process: register, fetch the experiment and shard map, simulate, stream,
//!   keep the lease, drain on shutdown.
//!
//! Backoff, connections and the coordinator's calls are the `client` crate's.

pub mod chunker;
pub mod metrics;
pub mod resolver;
pub mod run;
pub mod writer;
