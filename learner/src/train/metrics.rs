//! The learner's Prometheus metrics, recorded by the run loop and served with `--metrics-addr`
//! (`common::telemetry`). Without an exporter the `metrics` macros record nothing, so a run pays
//! for them only when they are scraped.
//!
//! The replay source's sampling client adds its own `dsm_learner_*` series (windows sampled per
//! shard, live shards, shard failures) to the same endpoint.

use std::time::Duration;

/// Iterations (one D step and one G step) completed by this process.
pub const ITERATIONS: &str = "dsm_learner_iterations_total";
/// The model's step: the iteration count including the run it resumed from.
pub const STEP: &str = "dsm_learner_step";
/// The losses of the last iteration.
pub const DISCRIMINATOR_LOSS: &str = "dsm_learner_discriminator_loss";
pub const GENERATOR_LOSS: &str = "dsm_learner_generator_loss";
/// Wall time of one iteration, data included.
pub const ITERATION_SECONDS: &str = "dsm_learner_iteration_seconds";
/// The step of the newest checkpoint written (and committed) by this process.
pub const CHECKPOINT_STEP: &str = "dsm_learner_checkpoint_step";
/// Always 1, with the engine and its thread count as labels.
pub const INFO: &str = "dsm_learner_info";

/// Every metric this module records, with whether it is a counter.
pub const ALL: [(&str, bool); 7] = [
    (ITERATIONS, true),
    (STEP, false),
    (DISCRIMINATOR_LOSS, false),
    (GENERATOR_LOSS, false),
    (ITERATION_SECONDS, false),
    (CHECKPOINT_STEP, false),
    (INFO, false),
];

/// Once at the start of a run.
pub fn started(engine: &'static str, threads: usize, replicas: usize, step: u64) {
    let (threads, replicas) = (threads.to_string(), replicas.to_string());
    metrics::gauge!(INFO, "engine" => engine, "threads" => threads, "replicas" => replicas).set(1.0);
    metrics::gauge!(STEP).set(step as f64);
}

/// After every iteration.
pub fn iteration(step: u64, discriminator: f64, generator: f64, took: Duration) {
    metrics::counter!(ITERATIONS).increment(1);
    metrics::gauge!(STEP).set(step as f64);
    metrics::gauge!(DISCRIMINATOR_LOSS).set(discriminator);
    metrics::gauge!(GENERATOR_LOSS).set(generator);
    metrics::histogram!(ITERATION_SECONDS).record(took.as_secs_f64());
}

/// After a checkpoint is committed.
pub fn checkpoint(step: u64) {
    metrics::gauge!(CHECKPOINT_STEP).set(step as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        for (name, counter) in ALL {
            common::telemetry::check_metric_name(name, counter).unwrap();
        }
    }
}
