//! The streaming actor's metrics, declared in one place and registered at start
//! (`common::telemetry::register`), so that the recovery counters are served at 0 before the first
//! failure. The lease keeper adds `dsm_actor_heartbeat_failures_total` and
//! `dsm_actor_reregistrations_total` (`client::coordinator`).

use common::telemetry::{register as register_all, Metric};

pub const ACTOR: [Metric; 6] = [
    Metric::counter("dsm_actor_env_steps_total", "env steps simulated, over all envs"),
    Metric::counter("dsm_actor_chunks_sent_total", "chunks sent to the shards (resends included)"),
    Metric::counter("dsm_actor_acked_steps_total", "steps the shards acknowledged as stored"),
    Metric::counter("dsm_actor_resent_chunks_total", "unacknowledged chunks sent again after a reconnect"),
    Metric::counter("dsm_actor_reconnects_total", "reconnections to a shard"),
    Metric::counter("dsm_actor_refused_chunks_total", "chunks a shard refused (and the actor dropped)"),
];

/// At the actor's start, once the exporter is installed.
pub fn register() {
    register_all(&ACTOR, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for m in ACTOR {
            common::telemetry::check_metric_name(m.name, true).unwrap();
        }
    }
}
