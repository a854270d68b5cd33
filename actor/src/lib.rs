//! The actor crate: simulators and, in later issues, the streaming actor.
//!
//! Layout:
//! - [`envs`]: the simulators (pure domain code; no gRPC, no tokio);
//! - [`goal_policy`]: the `riab-goal` policy of an experiment, trained once and cached under the
//!   workdir (file I/O, so outside `envs`);
//! - [`simulate`]: runs an env offline and writes a NumPy `.npz` dataset (`actor simulate`);
//! - [`stream`]: the streaming actor: chunking (pure), per-shard writers and the process loop
//!   (gRPC and tokio live only here).
//!
//! The `actor` binary (`src/main.rs`) is only the command line.

pub mod envs;
pub mod goal_policy;
pub mod simulate;
pub mod stream;
