//! The experiment as every role receives it from the coordinator: env id, seed, the whole
//! resolved config, and the replay settings a client needs without parsing the config itself.
//!
//! A plain struct (no prost type, no TOML text): `proto` converts the wire message into it at the
//! edge, parsing and checking the config there (`TryFrom<pb::Experiment>`), so the roles' checks
//! — the learner's horizon and state size, the actor's env config, a replay node's `[replay]` —
//! are pure functions of this type and are tested without a server.

use crate::config::ConfigDoc;

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentSpec {
    /// The env every actor of the experiment runs (never empty: the coordinator serves no
    /// experiment before its env is fixed).
    pub env_id: String,
    /// The experiment seed every RNG stream derives from.
    pub seed: u64,
    /// The whole experiment file (all sections), after defaults and overrides.
    pub config: ConfigDoc,
    /// Steps per training window (H + 1).
    pub window_steps: u32,
    /// Steps per chunk an actor sends.
    pub chunk_steps: u32,
    /// Unacknowledged chunks an actor may have in flight per shard.
    pub max_in_flight_chunks: u32,
}
