//! The control plane and the replay store.
//!
//! This crate will hold the `coordinator` and `replay` binaries: membership and leases, the
//! experiment config, the shard map, the checkpoint registry, and the replay table, sampler, rate
//! limiter and shard checkpoints (see `ARCHITECTURE.md`). It depends on `common` and `proto`, never
//! the other way round. Nothing is built here yet: the data path is the next milestone.
