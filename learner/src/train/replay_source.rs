//! Windows from the live replay store: the coordinator's experiment, checked against the model,
//! and its [`SamplingClient`] as a [`WindowSource`].
//!
//! The learner is synchronous (burn on the calling thread); the client is async. A small tokio
//! runtime (one worker thread, owned by the run) drives the client's prefetch task in the
//! background, and [`ReplaySource::next_batch`] blocks on its bounded queue of `prefetch`
//! batches: while the trainer computes, the next batches are already being fetched, and when it
//! falls behind the client stops asking. Shard failover is the client's (README "Faults").
//!
//! At start, [`fetch_experiment`] fetches the experiment (retrying while the coordinator is not
//! up, or has no experiment yet because no actor has registered) and [`check_experiment`] (pure)
//! refuses, naming both values, a model whose windows (H + 1) or state size differ from what the
//! experiment serves.

use std::time::Duration;

use actor::envs::{EnvConfig, EnvId, VecEnv};
use anyhow::{anyhow, bail, Context, Result};
use client::coordinator::{CoordinatorHandle, NoExperimentYet};
use client::sampling::{SamplingClient, SamplingOptions};
use common::config::ConfigDoc;
use common::experiment::ExperimentSpec;
use common::rng::StreamRng;
use tokio::runtime::Handle;

use crate::config::LearnerConfig;
use crate::train::dataset::{WindowBatch, WindowSource};

/// How the learner reaches the replay store.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The coordinator's `HOST:PORT`.
    pub coordinator: String,
    /// Batches the sampling client keeps ready ahead of the trainer (each iteration takes two).
    pub prefetch: usize,
    /// How long to keep retrying a coordinator that is not up or has no experiment yet.
    pub connect_timeout: Duration,
    /// Where the checkpoint store (evaluators fetch checkpoints from it) listens: HOST:PORT,
    /// port 0 for any free port.
    pub listen: String,
    /// The checkpoint store's address as published in the registry (default: the bound address).
    pub advertise: Option<String>,
}

impl ReplayOptions {
    /// The command line's defaults: prefetch 8 batches, 60 s to reach the coordinator, the
    /// checkpoint store on a free loopback port.
    pub fn new(coordinator: impl Into<String>) -> ReplayOptions {
        ReplayOptions {
            coordinator: coordinator.into(),
            prefetch: 8,
            connect_timeout: Duration::from_secs(60),
            listen: "127.0.0.1:0".into(),
            advertise: None,
        }
    }
}

/// What the coordinator's experiment serves, once checked against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedExperiment {
    pub env: EnvId,
    /// S, floats per state.
    pub obs_dim: usize,
    /// H + 1, steps per window.
    pub window_steps: usize,
    /// The experiment's env config, resolved (what an evaluator rebuilds the env from).
    pub env_config: EnvConfig,
    /// The experiment seed the actors' data derive from.
    pub seed: u64,
}

impl ServedExperiment {
    /// The checkpoints' `meta.json`: the env the data came from, as a simulated dataset's meta
    /// names it, so that an evaluator rebuilds the env of the coordinator's experiment even when
    /// the learner's own config has no `[env]`.
    pub fn meta(&self) -> Result<serde_json::Value> {
        let env_config = match &self.env_config {
            EnvConfig::Riab(c) => serde_json::to_value(c),
            EnvConfig::Pendulum(c) => serde_json::to_value(c),
        }
        .context("serialising the experiment's env config")?;
        Ok(serde_json::json!({
            "env": self.env.as_str(),
            "seed": self.seed,
            "obs_dim": self.obs_dim,
            "env_config": env_config,
            "producer": "the coordinator's experiment (actors streaming to the replay store)",
        }))
    }
}

/// Checks the coordinator's experiment against the learner's config. Refuses, naming both values:
/// windows of another length than `model.horizon + 1`, another env than the config's
/// `experiment.env`, and (when the config names an env) another state size than the config's
/// `[env]` gives.
pub fn check_experiment(config: &LearnerConfig, doc: &ConfigDoc, e: &ExperimentSpec) -> Result<ServedExperiment> {
    let h = config.model.horizon;
    if e.window_steps as usize != h + 1 {
        bail!(
            "model.horizon = {h} needs windows of {} steps, but the coordinator's experiment serves \
             replay.window_steps = {}",
            h + 1,
            e.window_steps
        );
    }
    let env: EnvId = e.env_id.parse().map_err(|m| anyhow!("the coordinator's experiment: {m}"))?;
    let served = EnvConfig::resolve(env, &e.config.section("env")).context("the coordinator's experiment")?;
    let obs_dim = VecEnv::shape_of(&served).obs_dim;
    if let Some(want) = config.env.as_deref() {
        let want: EnvId = want.parse().map_err(|m| anyhow!("experiment.env: {m}"))?;
        if want != env {
            bail!("the config's experiment.env is {want}, but the coordinator's experiment runs {env}");
        }
        let mine = EnvConfig::resolve(want, &doc.section("env")).context("the config's [env]")?;
        let mine = VecEnv::shape_of(&mine).obs_dim;
        if mine != obs_dim {
            bail!(
                "the config's [env] gives the model states of {mine} floats, but the coordinator's experiment \
                 ({env}) serves states of {obs_dim} floats"
            );
        }
    }
    Ok(ServedExperiment { env, obs_dim, window_steps: h + 1, env_config: served, seed: e.seed })
}

/// The coordinator and its experiment, retrying with backoff and jitter while the coordinator is
/// unreachable or has no experiment yet, for at most `timeout`.
pub async fn fetch_experiment(addr: &str, timeout: Duration) -> Result<(CoordinatorHandle, ExperimentSpec)> {
    CoordinatorHandle::connect_for_experiment(addr, timeout, NoExperimentYet::GiveUp)
        .await
        .with_context(|| format!("--coordinator {addr}"))
}

/// The replay store as a [`WindowSource`]: batches of B windows from every shard.
pub struct ReplaySource {
    runtime: Handle,
    client: SamplingClient,
    batch_size: usize,
    served: ServedExperiment,
}

impl ReplaySource {
    /// Starts the sampling client on `runtime` (its prefetch task runs there). `seed` fixes its
    /// shard-allocation draws.
    pub fn start(
        runtime: Handle,
        options: &ReplayOptions,
        served: ServedExperiment,
        batch_size: usize,
        seed: u64,
    ) -> Result<ReplaySource> {
        let sampling = SamplingOptions { batch_size, prefetch: options.prefetch, seed, ..SamplingOptions::default() };
        let client = runtime
            .block_on(SamplingClient::connect(&options.coordinator, sampling))
            .with_context(|| format!("--coordinator {}: the sampling client", options.coordinator))?;
        Ok(ReplaySource { runtime, client, batch_size, served })
    }

    pub fn served(&self) -> &ServedExperiment {
        &self.served
    }

    /// Windows received from each shard so far (index = shard id).
    pub fn windows_per_shard(&self) -> Vec<u64> {
        self.client.windows_per_shard()
    }
}

impl WindowSource for ReplaySource {
    /// Blocks until the client's next batch is ready (waiting while the store is still below its
    /// minimum size), then copies it into `out`. A batch of another shape than the experiment's
    /// is an error, not a panic in the trainer.
    fn next_batch(&mut self, _: &mut StreamRng, batch: usize, horizon: usize, out: &mut WindowBatch) -> Result<()> {
        if batch != self.batch_size || horizon + 1 != self.served.window_steps {
            bail!(
                "asked for {batch} windows of {} steps; the sampling client serves {} of {}",
                horizon + 1,
                self.batch_size,
                self.served.window_steps
            );
        }
        // A stop request is honoured at the next iteration boundary; but when no shard answers (the
        // store was stopped first, or died) that boundary never comes, so after a second of
        // waiting a stop request ends the run here, without a final checkpoint: the state may be
        // half an iteration, and the newest checkpoint on disk stands.
        let client = &mut self.client;
        let b = self.runtime.block_on(async {
            let next = client.next();
            tokio::pin!(next);
            let waiting = std::time::Instant::now();
            loop {
                match tokio::time::timeout(std::time::Duration::from_millis(200), &mut next).await {
                    Ok(b) => return b.map_err(anyhow::Error::from),
                    Err(_) if super::stop::requested() && waiting.elapsed() > std::time::Duration::from_secs(1) => {
                        bail!("stop requested while waiting for the replay store, which does not answer; exiting without a final checkpoint (the newest one on disk stands)")
                    }
                    Err(_) => {}
                }
            }
        })?;
        let (w, s) = (self.served.window_steps, self.served.obs_dim);
        if (b.windows, b.window_steps, b.obs_dim) != (batch, w, s) {
            bail!(
                "the replay store sent {} windows of {} steps × {} floats; expected {batch} × {w} × {s}",
                b.windows,
                b.window_steps,
                b.obs_dim
            );
        }
        out.batch = batch;
        out.steps = w;
        out.obs_dim = s;
        out.observations.clear();
        out.observations.extend_from_slice(&b.observations);
        out.step_types.clear();
        out.step_types.extend_from_slice(&b.step_types);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(toml: &str, window_steps: u32) -> ExperimentSpec {
        let doc = ConfigDoc::parse(toml, "test").unwrap();
        ExperimentSpec {
            env_id: doc.experiment().unwrap().env.unwrap(),
            seed: 0,
            config: doc,
            window_steps,
            chunk_steps: 64,
            max_in_flight_chunks: 16,
        }
    }

    fn learner(toml: &str) -> (LearnerConfig, ConfigDoc) {
        let doc = ConfigDoc::parse(toml, "test").unwrap();
        (LearnerConfig::resolve(&doc).unwrap(), doc)
    }

    const RIAB_12: &str = "[experiment]\nenv = \"riab-random\"\n[env.cells]\nn = 12\n";

    #[test]
    fn a_matching_experiment_gives_its_state_size() {
        let (config, doc) = learner("");
        let served = check_experiment(&config, &doc, &experiment(RIAB_12, 7)).unwrap();
        assert_eq!((served.env, served.obs_dim, served.window_steps), (EnvId::RiabRandom, 12, 7));
        assert_eq!(
            served.env_config,
            EnvConfig::resolve(EnvId::RiabRandom, &experiment(RIAB_12, 7).config.section("env")).unwrap()
        );
        let meta = served.meta().unwrap();
        assert_eq!(meta["env"], "riab-random");
        assert_eq!(meta["env_config"]["cells"]["n"], 12);
        let (config, doc) = learner(RIAB_12);
        assert_eq!(check_experiment(&config, &doc, &experiment(RIAB_12, 7)).unwrap().obs_dim, 12);
    }

    /// Both sides of the window check, and each refusal names both values.
    #[test]
    fn mismatches_are_refused_naming_both_values() {
        let (config, doc) = learner("[model]\nhorizon = 8\n");
        check_experiment(&config, &doc, &experiment(RIAB_12, 9)).unwrap();
        for steps in [8, 10] {
            let msg = check_experiment(&config, &doc, &experiment(RIAB_12, steps)).unwrap_err().to_string();
            assert!(msg.contains("model.horizon = 8"), "{msg}");
            assert!(msg.contains(&format!("replay.window_steps = {steps}")), "{msg}");
        }
        let (config, doc) = learner("[experiment]\nenv = \"riab-random\"\n[env.cells]\nn = 20\n");
        let msg = format!("{:#}", check_experiment(&config, &doc, &experiment(RIAB_12, 7)).unwrap_err());
        assert!(msg.contains("20 floats") && msg.contains("12 floats"), "{msg}");
        let (config, doc) = learner("[experiment]\nenv = \"pendulum\"\n");
        let msg = format!("{:#}", check_experiment(&config, &doc, &experiment(RIAB_12, 7)).unwrap_err());
        assert!(msg.contains("pendulum") && msg.contains("riab-random"), "{msg}");
    }
}
