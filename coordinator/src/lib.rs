//! The control plane and the replay store.
//!
//! Layout (domain first; nothing in the domain modules knows gRPC or tokio):
//! - [`rate_limiter`]: Reverb's rate-limiter algebra (pure state machine);
//! - [`table`]: one shard's storage: per-stream chunks, FIFO eviction, uniform windows;
//! - [`membership`], [`registry`]: nodes with leases, and the checkpoint registry;
//! - [`replay_config`], [`experiment`]: the `[replay]` section and the experiment a coordinator
//!   holds;
//!
//! and the service layer:
//! - [`shard`]: a table and a limiter behind one lock, with the waiting the limiter asks for;
//! - [`service`]: the `Coordinator` and `Replay` gRPC services and the edge validation;
//! - [`server`]: a coordinator process (control plane + K in-process shards on one port);
//! - [`sampling_client`]: what the learner uses to pull batches of windows from every shard.
//!
//! The `coordinator` binary (`src/bin/coordinator.rs`) is the command line.

pub mod experiment;
pub mod membership;
pub mod rate_limiter;
pub mod registry;
pub mod replay_config;
pub mod sampling_client;
pub mod server;
pub mod service;
pub mod shard;
pub mod table;
