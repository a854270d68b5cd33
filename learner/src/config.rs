//! The typed `[model]` and `[train]` sections.
//!
//! Defaults are the thesis sizes (`Sruthi-sk/dsm-hippocampus` `dsm/configs.py::base()`: O 10,
//! I 5, Z 5, 32-wide networks, batch 32, 500k iterations); `configs/pendulum.toml` sets the
//! reference sizes (`JesseFarebro/distributional-sr` `base()`: O 51, I 32, Z 8, 256-wide, batch 64,
//! 2.5M iterations). Everything else (γ 0.95, H 6, Adam 6.25e-5 / 1.5e-4, Polyak 0.01, the
//! kernels) is shared by both.

use serde::{Deserialize, Serialize};

use common::config::{merge, to_table, typed, ConfigDoc, ConfigError};

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
    /// Shape parameters α of the inner rational-quadratic kernel mixture.
    pub inner_bandwidths: Vec<f64>,
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
            inner_bandwidths: vec![0.2, 0.5, 1.0, 2.0, 5.0],
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
    /// Iterations between log lines when stderr is not a terminal.
    pub log_every: u64,
    /// Batch rows per forward/backward pass (0: the whole batch at once). The loss is a mean of
    /// independent per-row terms, so accumulating the gradients of row chunks gives the same
    /// gradient with a fraction of the memory; the Pendulum sizes need it on a CPU.
    pub batch_chunk: usize,
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
            log_every: 1_000,
            batch_chunk: 0,
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
        if m.inner_bandwidths.is_empty() || m.inner_bandwidths.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
            return bad("model", "model.inner_bandwidths must list positive numbers".into());
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
        ] {
            let mut doc = ConfigDoc::empty();
            doc.apply_set(set).unwrap();
            let err = LearnerConfig::resolve(&doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{set}: {err}");
        }
    }
}
