//! Pieces every role shares, and nothing role-specific.
//!
//! Layout:
//! - [`config`]: the one TOML experiment schema's outer layer: sections, file loading, `--set
//!   section.key=value` overrides and the merging of per-id defaults. Each crate deserialises the
//!   sections it owns into its own typed structs.
//! - [`experiment`]: the experiment as the coordinator serves it to every role (a plain struct;
//!   `proto` converts the wire message into it);
//! - [`incarnation`]: the random per-process identity of streams and claims;
//! - [`rng`]: derivation of every RNG stream from (experiment seed, role, ids, purpose), so runs are
//!   reproducible and no two actors replay the same trajectory.
//! - [`npz`]: NumPy `.npy`/`.npz` writing and reading, the offline dataset format;
//! - [`shard`]: a stream's id, which replay shard it goes to (FNV-1a-64 of the id mod K), and the
//!   clients' view of where each shard is served;
//! - [`telemetry`]: the Prometheus exporter every service starts, and the metric naming rule.
//!
//! Nothing here knows gRPC; only the exporter's listener runs on tokio.

pub mod config;
pub mod experiment;
pub mod incarnation;
pub mod npz;
pub mod rng;
pub mod shard;
pub mod telemetry;
