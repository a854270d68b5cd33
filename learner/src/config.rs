//! The typed `[model]` and `[train]` sections.
//!
//! Defaults are the thesis sizes (`Sruthi-sk/dsm-hippocampus` `dsm/configs.py::base()`: O 10,
//! I 5, Z 5, 32-wide networks, batch 32, 500k iterations); `configs/pendulum.toml` sets the
//! reference sizes (`JesseFarebro/distributional-sr` `base()`: O 51, I 32, Z 8, 256-wide, batch 64,
//! 2.5M iterations). Everything else (γ 0.95, H 6, Adam 6.25e-5 / 1.5e-4, Polyak 0.01, the
//! kernels) is shared by both.
//!
//! The reference's variant configs (dsm-algorithm.md §1.1) are keys whose defaults are the δ-model:
//! `model.distributional`, `model.inner_separate_discriminator`, `model.cumulant_is_source_state`, the
//! kernels (`model.{inner,outer}_kernel`, `_bandwidths`, `_adaptive_bandwidth`) and
//! `train.discriminator_steps`. [`LearnerConfig::resolve`] checks their combinations as the reference's
//! `Config.__post_init__` does, naming the key.

use serde::{Deserialize, Serialize};

use common::config::{merge, to_table, typed, ConfigDoc, ConfigError};

use crate::loss::kernels::Kernel;
use crate::loss::mmd::Bandwidth;

/// The kernel names `model.inner_kernel` and `model.outer_kernel` accept (the reference's kernel classes in
/// `dsm/kernels.py`; each sums over its bandwidth list).
pub const KERNEL_NAMES: [&str; 4] = ["rational_quadratic", "inverse_multi_quadric", "rbf", "cauchy"];

/// The values `train.engine` accepts.
pub const ENGINE_NAMES: [&str; 2] = ["fused", "burn"];

/// The kernel a config name stands for, with the given bandwidths; `None` for an unknown name.
pub fn kernel_from_name(name: &str, bandwidths: &[f64]) -> Option<Kernel> {
    let b = bandwidths.to_vec();
    match name {
        "rational_quadratic" => Some(Kernel::RationalQuadratic(b)),
        "inverse_multi_quadric" => Some(Kernel::InverseMultiQuadric(b)),
        "rbf" => Some(Kernel::Rbf(b)),
        "cauchy" => Some(Kernel::Cauchy(b)),
        _ => None,
    }
}

/// `[model]`: shapes of the δ-model and of its Bellman target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// O: model atoms (`num_outer`).
    pub num_outer: usize,
    /// I: state samples per atom per source state during training (`num_inner`).
    pub num_inner: usize,
    /// Z: latent dimensions of each atom's generator.
    pub latent_dims: usize,
    /// Width of the generator's hidden layers.
    pub generator_hidden: usize,
    /// Hidden layers of each atom's MLP.
    pub generator_layers: usize,
    /// Width of the discriminator φ.
    pub discriminator_hidden: usize,
    /// E: φ's output (embedding) dimension.
    pub embedding_dim: usize,
    /// Discount γ of the successor measure.
    pub gamma: f64,
    /// H: steps of the n-step target (windows are H + 1 steps).
    pub horizon: usize,
    /// Bootstrap from the target network at s_H (false: use s_H itself).
    pub bootstrap: bool,
    /// true: the δ-model (outer MMD over atoms); false: an ensemble of γ-models (the SR baseline
    /// with `num_outer = 1`).
    pub distributional: bool,
    /// The inner kernel, on (embedded) state samples: one of [`KERNEL_NAMES`] (`inner_kernel`; the reference's
    /// `RationalQuadraticKernel`).
    pub inner_kernel: String,
    /// The inner kernel's bandwidths (for the rational quadratic kernel its shape parameters α).
    pub inner_bandwidths: Vec<f64>,
    /// Scale the inner squared distances by the median heuristic of each inner MMD (dsm-algorithm.md §3.4;
    /// `inner_kernel_adaptive_bandwidth`); needs exactly one inner bandwidth. false: h = 1.
    pub inner_adaptive_bandwidth: bool,
    /// The outer kernel, on the inner MMD² distances between atoms: one of [`KERNEL_NAMES`] (`outer_kernel`;
    /// the reference's `InverseMultiQuadricKernel`). Unused when `distributional = false`.
    pub outer_kernel: String,
    /// The outer kernel's bandwidths.
    pub outer_bandwidths: Vec<f64>,
    /// Scale the outer distances by the median heuristic of each batch row (§3.5;
    /// `outer_kernel_adaptive_bandwidth`). false: h = 1.
    pub outer_adaptive_bandwidth: bool,
    /// One discriminator φ per (batch slot, atom) instead of one shared φ (`inner_separate_discriminator`,
    /// §2.2, quirk Q2): the reference's γ-model ensemble and SR baseline.
    pub inner_separate_discriminator: bool,
    /// The successor measure counts the source state: horizon index j = K − 1 ≥ 0 (true, the δ-model), or
    /// j = K ≥ 1 (false, the single-step model); §3.2.
    pub cumulant_is_source_state: bool,
}

impl ModelConfig {
    /// What this config trains, for logs and reports: "a δ-model", "a γ-model (the SR baseline)"
    /// or "a γ-model ensemble of O".
    pub fn name(&self) -> String {
        match (self.distributional, self.num_outer) {
            (true, _) => "a δ-model".to_string(),
            (false, 1) => "a γ-model (the SR baseline)".to_string(),
            (false, o) => format!("a γ-model ensemble of {o}"),
        }
    }

    /// The inner kernel named by `inner_kernel` with `inner_bandwidths`.
    ///
    /// # Panics
    /// On an unknown name (a resolved [`LearnerConfig`] has none).
    pub fn inner(&self) -> Kernel {
        kernel_from_name(&self.inner_kernel, &self.inner_bandwidths).expect("model.inner_kernel was validated")
    }

    /// The outer kernel named by `outer_kernel` with `outer_bandwidths`.
    ///
    /// # Panics
    /// On an unknown name (a resolved [`LearnerConfig`] has none).
    pub fn outer(&self) -> Kernel {
        kernel_from_name(&self.outer_kernel, &self.outer_bandwidths).expect("model.outer_kernel was validated")
    }

    /// The inner MMDs' bandwidth: the median heuristic, or h = 1.
    pub fn inner_bandwidth(&self) -> Bandwidth {
        if self.inner_adaptive_bandwidth {
            Bandwidth::Median
        } else {
            Bandwidth::Fixed(1.0)
        }
    }

    /// The outer MMD's bandwidth: the median heuristic, or h = 1.
    pub fn outer_bandwidth(&self) -> Bandwidth {
        if self.outer_adaptive_bandwidth {
            Bandwidth::Median
        } else {
            Bandwidth::Fixed(1.0)
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            num_outer: 10,
            num_inner: 5,
            latent_dims: 5,
            generator_hidden: 32,
            generator_layers: 3,
            discriminator_hidden: 32,
            embedding_dim: 8,
            gamma: 0.95,
            horizon: 6,
            bootstrap: true,
            distributional: true,
            inner_kernel: "rational_quadratic".into(),
            inner_bandwidths: vec![0.2, 0.5, 1.0, 2.0, 5.0],
            inner_adaptive_bandwidth: false,
            outer_kernel: "inverse_multi_quadric".into(),
            outer_bandwidths: vec![1.0],
            outer_adaptive_bandwidth: true,
            inner_separate_discriminator: false,
            cumulant_is_source_state: true,
        }
    }
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// B: windows per step (each of the D and G steps draws its own batch).
    pub batch_size: usize,
    /// Total iterations (one D step + one G step each).
    pub steps: u64,
    /// Adam learning rate, both networks.
    pub learning_rate: f64,
    /// Adam ε, both networks.
    pub adam_eps: f64,
    /// Polyak step size of the target generator.
    pub target_update: f64,
    /// Iterations between checkpoints (and one at the end).
    pub checkpoint_every: u64,
    /// Complete checkpoints kept.
    pub keep_checkpoints: usize,
    /// With a coordinator: versions no evaluator has finished yet, kept on top of
    /// `keep_checkpoints` so that lagging evaluators still find them (older ones are recorded in the
    /// registry as skipped and deleted).
    pub keep_unevaluated: usize,
    /// Iterations between log lines when stderr is not a terminal.
    pub log_every: u64,
    /// Batch rows per forward/backward pass (0: the whole batch at once). The loss is a mean of
    /// independent per-row terms, so accumulating the gradients of row chunks gives the same
    /// gradient with a fraction of the memory; the Pendulum sizes need it on a CPU.
    pub batch_chunk: usize,
    /// Discriminator steps per iteration (`num_discriminator_steps`): 1, or 0 for no discriminator at all
    /// (the `median` variant: the kernels act on raw states, φ is never applied or trained).
    pub discriminator_steps: usize,
    /// The engine that computes the iteration: `"fused"` (hand-written forward and backward passes
    /// on flat buffers, threads over batch rows; the default) or `"burn"` (the reference engine). A
    /// variant the fused engine does not cover runs on burn, and the run says so at start.
    pub engine: String,
    /// Threads of the fused engine in all (0: every core available to the process).
    pub threads: usize,
    /// Data-parallel replicas of the fused engine (`learner --replicas`): each computes the
    /// gradients of its share of the batch rows on `threads / replicas` threads, and they sum them
    /// and apply one update. The trained model does not depend on it (bit for bit for powers of
    /// two, see `fused::replicas`).
    pub replicas: usize,
    /// The GPUs to train on (`learner --gpus`): `""` for the CPU (the default), indices such as
    /// `"0"` or `"0,1"`, or `"all"`. The GPU engine is the fused engine's iteration on each device
    /// (`cuda::engine`), one replica per GPU (`cuda::replicas`). Exclusive with `replicas > 1`.
    pub gpus: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 32,
            steps: 500_000,
            learning_rate: 6.25e-5,
            adam_eps: 1.5e-4,
            target_update: 0.01,
            checkpoint_every: 10_000,
            keep_checkpoints: 3,
            keep_unevaluated: 10,
            log_every: 1_000,
            batch_chunk: 0,
            discriminator_steps: 1,
            engine: "fused".into(),
            threads: 0,
            replicas: 1,
            gpus: String::new(),
        }
    }
}

/// What a learner reads from an experiment file.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerConfig {
    pub seed: u64,
    pub env: Option<String>,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl LearnerConfig {
    pub fn resolve(doc: &ConfigDoc) -> Result<LearnerConfig, ConfigError> {
        let experiment = doc.experiment()?;
        let mut model = to_table(&ModelConfig::default());
        merge(&mut model, &doc.section("model"));
        let mut train = to_table(&TrainConfig::default());
        merge(&mut train, &doc.section("train"));
        let config = LearnerConfig {
            seed: experiment.seed,
            env: experiment.env,
            model: typed("model", model)?,
            train: typed("train", train)?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |section: &str, message: String| Err(ConfigError::Invalid { section: section.into(), message });
        let m = &self.model;
        for (key, v) in [
            ("num_outer", m.num_outer),
            ("num_inner", m.num_inner),
            ("latent_dims", m.latent_dims),
            ("generator_hidden", m.generator_hidden),
            ("generator_layers", m.generator_layers),
            ("discriminator_hidden", m.discriminator_hidden),
            ("embedding_dim", m.embedding_dim),
            ("horizon", m.horizon),
        ] {
            if v == 0 {
                return bad("model", format!("model.{key} must be at least 1"));
            }
        }
        if m.num_inner < 2 {
            return bad("model", "model.num_inner must be at least 2 (the inner MMD is a U-statistic)".into());
        }
        if !(0.0..1.0).contains(&m.gamma) {
            return bad("model", format!("model.gamma must be in [0, 1), got {}", m.gamma));
        }
        for (key, name, bandwidths) in
            [("inner", &m.inner_kernel, &m.inner_bandwidths), ("outer", &m.outer_kernel, &m.outer_bandwidths)]
        {
            if kernel_from_name(name, bandwidths).is_none() {
                return bad("model", format!("model.{key}_kernel must be one of {KERNEL_NAMES:?}, got {name:?}"));
            }
            if bandwidths.is_empty() || bandwidths.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
                return bad("model", format!("model.{key}_bandwidths must list positive numbers"));
            }
        }
        // `Config.__post_init__`: an adaptive inner bandwidth has exactly one bandwidth.
        if m.inner_adaptive_bandwidth && m.inner_bandwidths.len() != 1 {
            return bad(
                "model",
                format!(
                    "model.inner_adaptive_bandwidth = true needs exactly one model.inner_bandwidths entry, got {}",
                    m.inner_bandwidths.len()
                ),
            );
        }
        let t = &self.train;
        if t.batch_size == 0 || t.checkpoint_every == 0 || t.keep_checkpoints == 0 || t.log_every == 0 {
            return bad(
                "train",
                "train.batch_size, checkpoint_every, keep_checkpoints and log_every must be at least 1".into(),
            );
        }
        for (key, v) in [("learning_rate", t.learning_rate), ("adam_eps", t.adam_eps)] {
            if !(v.is_finite() && v > 0.0) {
                return bad("train", format!("train.{key} must be a positive number, got {v}"));
            }
        }
        if !(t.target_update > 0.0 && t.target_update <= 1.0) {
            return bad("train", format!("train.target_update must be in (0, 1], got {}", t.target_update));
        }
        if t.discriminator_steps > 1 {
            return bad(
                "train",
                format!("train.discriminator_steps must be 0 (no discriminator) or 1, got {}", t.discriminator_steps),
            );
        }
        if t.replicas == 0 {
            return bad("train", "train.replicas must be at least 1".to_string());
        }
        if t.replicas > 1 && t.engine != "fused" {
            return bad("train", format!("train.replicas = {} needs train.engine = \"fused\"", t.replicas));
        }
        if !t.gpus.is_empty() {
            if let Err(e) = crate::cuda::gpus::parse(&t.gpus) {
                return bad("train", format!("train.gpus: {e}"));
            }
            if t.replicas > 1 {
                return bad(
                    "train",
                    format!("train.gpus = {:?} and train.replicas = {} are exclusive", t.gpus, t.replicas),
                );
            }
            if t.engine != "fused" {
                return bad("train", format!("train.gpus = {:?} needs train.engine = \"fused\"", t.gpus));
            }
        }
        if !ENGINE_NAMES.contains(&t.engine.as_str()) {
            return bad("train", format!("train.engine must be one of {ENGINE_NAMES:?}, got {:?}", t.engine));
        }
        if t.discriminator_steps == 0 && m.inner_separate_discriminator {
            return bad(
                "model",
                "model.inner_separate_discriminator = true needs a discriminator (train.discriminator_steps = 1)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_thesis_sizes_and_overrides_apply() {
        let mut doc = ConfigDoc::empty();
        let c = LearnerConfig::resolve(&doc).unwrap();
        assert_eq!(
            (c.model.num_outer, c.model.num_inner, c.model.latent_dims, c.model.generator_hidden),
            (10, 5, 5, 32)
        );
        assert_eq!((c.train.batch_size, c.train.steps), (32, 500_000));
        doc.apply_sets(&["model.num_outer=1", "model.distributional=false", "train.steps=10"]).unwrap();
        let c = LearnerConfig::resolve(&doc).unwrap();
        assert_eq!((c.model.num_outer, c.model.distributional, c.train.steps), (1, false, 10));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (set, needle) in [
            ("model.gamma=1.0", "model.gamma"),
            ("model.num_inner=1", "model.num_inner"),
            ("model.num_outr=3", "num_outr"),
            ("train.learning_rate=0", "train.learning_rate"),
            ("train.target_update=2", "train.target_update"),
            ("model.inner_kernel=gaussian", "model.inner_kernel"),
            ("model.outer_kernel=energy", "model.outer_kernel"),
            ("model.outer_bandwidths=[]", "model.outer_bandwidths"),
            ("model.inner_adaptive_bandwidth=true", "model.inner_adaptive_bandwidth"),
            ("train.discriminator_steps=2", "train.discriminator_steps"),
            ("train.engine=jax", "train.engine"),
        ] {
            let mut doc = ConfigDoc::empty();
            doc.apply_set(set).unwrap();
            let err = LearnerConfig::resolve(&doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{set}: {err}");
        }
    }

    /// The variant keys default to the thesis δ-model, and the variants of dsm-algorithm.md §1.1 resolve.
    #[test]
    fn variant_keys_default_to_the_delta_model() {
        let c = LearnerConfig::resolve(&ConfigDoc::empty()).unwrap();
        let m = &c.model;
        assert_eq!((m.inner(), m.inner_bandwidth()), (Kernel::rq_default(), Bandwidth::Fixed(1.0)));
        assert_eq!((m.outer(), m.outer_bandwidth()), (Kernel::imq(1.0), Bandwidth::Median));
        assert!(m.distributional && m.cumulant_is_source_state && !m.inner_separate_discriminator);
        assert_eq!(c.train.discriminator_steps, 1);

        let mut doc = ConfigDoc::empty();
        doc.apply_sets(&[
            "model.inner_kernel=rbf",
            "model.inner_bandwidths=[1.0]",
            "model.inner_adaptive_bandwidth=true",
            "model.outer_kernel=rbf",
            "train.discriminator_steps=0",
        ])
        .unwrap();
        let m = LearnerConfig::resolve(&doc).unwrap().model;
        assert_eq!((m.inner(), m.inner_bandwidth()), (Kernel::rbf(1.0), Bandwidth::Median));
        assert_eq!((m.outer(), m.outer_bandwidth()), (Kernel::rbf(1.0), Bandwidth::Median));

        // A separate discriminator needs a discriminator.
        doc.apply_set("model.inner_separate_discriminator=true").unwrap();
        let err = LearnerConfig::resolve(&doc).unwrap_err().to_string();
        assert!(err.contains("model.inner_separate_discriminator"), "{err}");
    }
}
