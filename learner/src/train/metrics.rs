//! The learner's Prometheus metrics, recorded by the run loop and served with `--metrics-addr`
//! (`common::telemetry`). Without an exporter the `metrics` macros record nothing, so a run pays
//! for them only when they are scraped.
//!
//! The replay source's sampling client adds its own `dsm_learner_*` series (windows sampled per
//! shard, live shards, shard failures) to the same endpoint.

use std::time::Duration;

use common::telemetry::Metric;

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

/// The newest evaluation the learner read back from the registry: its version, and its headline
/// numbers with the number's name as the `key` label (a fixed set per env).
pub const EVALUATED_VERSION: &str = "dsm_learner_evaluated_version";
pub const EVALUATION_HEADLINE: &str = "dsm_learner_evaluation_headline";

/// Every series the learner serves from its start (the info gauge is set with its labels by
/// [`started`], the evaluation headline once there is one; the sampling client registers its own).
pub const ALL: [Metric; 9] = [
    Metric::counter(ITERATIONS, "iterations completed by this process"),
    Metric::gauge(STEP, "the model's step, counting the run it resumed from"),
    Metric::gauge(DISCRIMINATOR_LOSS, "the last iteration's discriminator loss"),
    Metric::gauge(GENERATOR_LOSS, "the last iteration's generator loss"),
    Metric::histogram(ITERATION_SECONDS, "wall time of one iteration, data included"),
    Metric::gauge(CHECKPOINT_STEP, "step of the newest checkpoint written"),
    Metric::counter("dsm_learner_checkpoint_fetches_total", "checkpoint fetches served to evaluators"),
    Metric::counter("dsm_learner_checkpoints_skipped_total", "checkpoints deleted before any evaluator took them"),
    Metric::gauge(EVALUATED_VERSION, "the newest version with an evaluation in the registry"),
];

/// Once, when the exporter is installed.
pub fn register() {
    common::telemetry::register(&ALL, &[]);
    // No loss before the first iteration: NaN, not a 0 that reads as a perfect fit.
    metrics::gauge!(DISCRIMINATOR_LOSS).set(f64::NAN);
    metrics::gauge!(GENERATOR_LOSS).set(f64::NAN);
}

/// Once at the start of a run.
pub fn started(engine: &'static str, threads: usize, replicas: usize, gpus: usize, step: u64) {
    let (threads, replicas, gpus) = (threads.to_string(), replicas.to_string(), gpus.to_string());
    metrics::gauge!(INFO, "engine" => engine, "threads" => threads, "replicas" => replicas, "gpus" => gpus).set(1.0);
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
        for m in ALL {
            common::telemetry::check_metric_name(m.name, m.kind == common::telemetry::Kind::Counter).unwrap();
        }
        common::telemetry::check_metric_name(INFO, false).unwrap();
        common::telemetry::check_metric_name(EVALUATION_HEADLINE, false).unwrap();
    }
}
