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

/// Always 1, labelled with what this actor simulates, so that a dashboard can group the
/// unlabelled counters above by env (`* on (instance) group_left (env) dsm_actor_info`).
pub const INFO: &str = "dsm_actor_info";

/// At the actor's start, once the exporter is installed.
pub fn register(env: &str, actor_id: u64, envs: usize) {
    register_all(&ACTOR, &[]);
    metrics::gauge!(INFO, "env" => env.to_string(), "actor_id" => actor_id.to_string(), "envs" => envs.to_string())
        .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for m in ACTOR {
            common::telemetry::check_metric_name(m.name, true).unwrap();
        }
        common::telemetry::check_metric_name(INFO, false).unwrap();
    }
}
