//! The client side of every role, below the roles and beside no server: what an actor, a replay
//! node, a learner and an evaluator each need to talk to the coordinator and the shards.
//!
//! Layout:
//! - [`backoff`]: exponential backoff with jitter, for every retry (pure: it computes delays);
//! - [`connect`]: channels with the shared transport settings (connect timeout, TCP_NODELAY,
//!   keepalive, message limits) and the deadline every unary call carries;
//! - [`coordinator`]: [`coordinator::CoordinatorHandle`], the coordinator as a client sees it:
//!   register, keep the lease, fetch the experiment and the shard map, watch the checkpoint
//!   registry;
//! - [`sampling`]: the sampling client, batches of windows drawn from every shard in proportion
//!   to its valid window starts, through a bounded prefetch queue, with shard failover;
//! - [`shutdown`]: the one shutdown signal (SIGTERM or Ctrl-C) every binary hands its server or
//!   run loop.
//!
//! Wire messages become domain types here, once (through `proto::convert`): callers get an
//! [`common::experiment::ExperimentSpec`] or a [`common::shard::ShardAddresses`], never a prost
//! message. Server code lives in the roles' crates (`coordinator`), which depend on this one and
//! not the other way round.

pub mod backoff;
pub mod connect;
pub mod coordinator;
pub mod sampling;
pub mod shutdown;
