//! The coordinator's and the replay shards' metrics, declared in one place and registered at
//! start (`common::telemetry::register`), so that every series is served from the first scrape.
//! The README's list is checked against what the roles serve (`dsm/tests/metrics.rs`).

use common::telemetry::{register, Metric};

/// The control plane (the `coordinator` process).
pub const COORDINATOR: [Metric; 10] = [
    Metric::gauge("dsm_coordinator_nodes", "nodes holding a live lease"),
    Metric::counter("dsm_coordinator_registrations_total", "Register calls answered"),
    Metric::counter("dsm_coordinator_expired_leases_total", "nodes dropped for a lease that ran out"),
    Metric::gauge("dsm_coordinator_shard_map_version", "version of the shard map (rises on every slot change)"),
    Metric::gauge("dsm_coordinator_unserved_shards", "shard slots no live node serves"),
    Metric::counter("dsm_coordinator_evaluations_claimed_total", "evaluation claims granted"),
    Metric::counter("dsm_coordinator_evaluation_leases_expired_total", "claims taken over after their lease ran out"),
    Metric::counter("dsm_coordinator_evaluations_completed_total", "evaluations published"),
    Metric::gauge("dsm_coordinator_evaluated_version", "the newest version with a published evaluation"),
    Metric::counter("dsm_coordinator_evaluations_skipped_total", "versions recorded as skipped"),
];

/// Per registry kind (`kind` label: model, policy).
pub const REGISTRY: [Metric; 2] = [
    Metric::counter("dsm_coordinator_checkpoints_published_total", "checkpoint versions published to the registry"),
    Metric::gauge("dsm_coordinator_published_version", "the newest version published to the registry"),
];

/// Per shard (`shard` label: the slot id, at most K values), in a `replay` process or a
/// coordinator hosting shards.
pub const SHARD: [Metric; 19] = [
    Metric::gauge("dsm_replay_size_steps", "steps stored"),
    Metric::counter("dsm_replay_inserted_steps_total", "steps inserted"),
    Metric::counter("dsm_replay_evicted_steps_total", "steps evicted (FIFO, at max_size)"),
    Metric::counter("dsm_replay_sampled_windows_total", "windows served"),
    Metric::counter("dsm_replay_refused_chunks_total", "chunks refused before storage (bad shape, NaN, gap, …)"),
    Metric::gauge("dsm_replay_stored_bytes", "bytes of stored payload"),
    Metric::gauge("dsm_replay_valid_window_starts", "window starts a sample may draw"),
    Metric::histogram("dsm_replay_insert_blocked_seconds", "time an insert waited on the rate limiter"),
    Metric::histogram("dsm_replay_sample_blocked_seconds", "time a sample waited on the rate limiter"),
    Metric::counter("dsm_replay_lost_steps_total", "acknowledged steps missing after a crash restore"),
    Metric::counter(
        "dsm_replay_duplicate_chunks_total",
        "resent chunks already stored (acknowledged, not stored again)",
    ),
    Metric::counter("dsm_replay_checkpoints_total", "shard checkpoints completed"),
    Metric::histogram(
        "dsm_replay_checkpoint_snapshot_seconds",
        "time the table was locked for a checkpoint's snapshot",
    ),
    Metric::histogram("dsm_replay_checkpoint_duration_seconds", "time to write a checkpoint"),
    Metric::gauge("dsm_replay_blocked_inserts", "inserts waiting on the rate limiter now"),
    Metric::gauge("dsm_replay_blocked_samples", "samples waiting on the rate limiter now"),
    Metric::histogram("dsm_replay_insert_seconds", "time to answer an insert (limiter wait included)"),
    Metric::histogram("dsm_replay_sample_seconds", "time to answer a sample (limiter wait included)"),
    Metric::gauge(
        "dsm_replay_samples_per_insert_target",
        "the limiter's windows sampled per step inserted (0: not ratio-limited)",
    ),
];

/// At the coordinator's start.
pub fn register_coordinator() {
    register(&COORDINATOR, &[]);
    for kind in ["model", "policy"] {
        register(&REGISTRY, &[("kind", kind.to_string())]);
    }
}

/// When a shard is created.
pub fn register_shard(id: u32) {
    register(&SHARD, &[("shard", id.to_string())]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::telemetry::{check_metric_name, Kind};

    #[test]
    fn names_follow_the_convention() {
        for m in COORDINATOR.iter().chain(&REGISTRY).chain(&SHARD) {
            check_metric_name(m.name, m.kind == Kind::Counter).unwrap();
        }
    }
}
