//! The control plane and the replay store.
//!
//! Layout (domain first; nothing in the domain modules knows gRPC or tokio):
//! - [`rate_limiter`]: Reverb's rate-limiter algebra (pure state machine);
//! - [`table`]: one shard's storage: per-stream chunks, FIFO eviction, uniform windows;
//! - [`shard_checkpoint`]: a shard's durable state and its checkpoint directories on disk;
//! - [`membership`], [`registry`]: nodes with leases, and the checkpoint registry;
//! - [`shard_map`]: which node serves each of the K shard slots;
//! - [`replay_config`], [`experiment`]: the `[replay]` section and the experiment a coordinator
//!   holds;
//!
//! and the service layer:
//! - [`shard`]: a table and a limiter behind one lock, with the waiting the limiter asks for;
//! - [`checkpointer`]: shard checkpoints in a running process (restore, periodic, on request,
//!   at shutdown);
//! - [`service`]: the `Coordinator` and `Replay` gRPC services and the edge validation;
//! - [`server`]: a coordinator process (control plane + K in-process shards on one port);
//! - [`replay_node`]: a standalone replay shard that registers with a coordinator.
//!
//! No client code lives here: the replay node talks to the coordinator, and the learner samples
//! the shards, through the `client` crate. The `coordinator` binary (`src/bin/coordinator.rs`)
//! is the command line.

pub mod checkpointer;
pub mod experiment;
pub mod membership;
pub mod metrics;
pub mod rate_limiter;
pub mod registry;
pub mod replay_config;
pub mod replay_node;
pub mod server;
pub mod service;
pub mod shard;
pub mod shard_checkpoint;
pub mod shard_map;
pub mod table;
