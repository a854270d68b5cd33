//! One δ-model training run: the iteration of `dsm/train.py` and its checkpoints.
//!
//! Each iteration (`train_loop._loop_step`):
//! 1. **D step** on its own batch: the discriminator φ *ascends* the loss L (its gradient is that
//!    of −L). φ is applied to the online samples X, then to the targets Y, each time running one
//!    power iteration and persisting the spectral-norm state, chained lhs → rhs.
//! 2. **G step** on another batch: the generator descends L, through X only; φ runs its power
//!    iteration but does not persist it (the thesis fork's `update_stats=True` fix of Q1 computes
//!    it and discards the result, which is the same thing).
//! 3. **Polyak**: θ⁻ ← τ·θ + (1 − τ)·θ⁻ after every G step, θ⁻ starting as a copy of θ.
//!
//! X = samples of the online generator at s₀; Y = the geometric-horizon Bellman target built from
//! the window and the *target* generator at s_H (`loss/target.rs`). Both networks use Adam
//! (6.25e-5, ε 1.5e-4, no clipping). The target network and everything that needs no gradient
//! run on the inner (non-autodiff) backend.
//!
//! Variants (`[model]`, `[train]`; dsm-algorithm.md §1.1): the loss is [`LossSpec`] (δ-model, γ-model
//! ensemble, `median` kernels); with `model.inner_separate_discriminator` φ is a
//! [`SeparateDiscriminator`], one per (batch slot, atom), trained and checkpointed in place of the shared
//! one; with `train.discriminator_steps = 0` there is no D step and the kernels act on raw states.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use common::config::ConfigDoc;
use common::rng;

use crate::config::LearnerConfig;
use crate::loss::outer::LossSpec;
use crate::loss::target::{build_target, HorizonSampler};
use crate::model::discriminator::{Discriminator, DiscriminatorConfig};
use crate::model::generator::{Generator, GeneratorConfig};
use crate::model::separate_discriminator::SeparateDiscriminator;
use crate::train::dataset::{WindowBatch, WindowSource};
use crate::train::draws::{Draws, Phase, Purpose};

type Recorder_ = NamedMpkFileRecorder<FullPrecisionSettings>;

/// A batch's source states s₀ `[B, S]` and its Bellman target Y `[B, O, I, S]`, on the inner backend.
type SourcesAndTarget<B> =
    (Tensor<<B as AutodiffBackend>::InnerBackend, 2>, Tensor<<B as AutodiffBackend>::InnerBackend, 4>);

/// The loss values of one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationLosses {
    /// L on the D step's batch (before the sign flip); NaN when there is no discriminator
    /// (`train.discriminator_steps = 0`).
    pub discriminator: f64,
    /// L on the G step's batch.
    pub generator: f64,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("non-finite loss ({value}) at iteration {iteration}, {phase} step; the last good checkpoint is kept")]
    NonFinite { iteration: u64, phase: &'static str, value: f64 },
    #[error("summing gradients across replicas at iteration {iteration}")]
    Collective {
        iteration: u64,
        #[source]
        source: anyhow::Error,
    },
    #[error("the GPU failed at iteration {iteration}")]
    Device {
        iteration: u64,
        #[source]
        source: anyhow::Error,
    },
    #[error("drawing windows for iteration {iteration}")]
    Data {
        iteration: u64,
        #[source]
        source: anyhow::Error,
    },
}

pub struct Trainer<B: AutodiffBackend> {
    pub config: LearnerConfig,
    /// The whole experiment document, saved with every checkpoint.
    pub doc: ConfigDoc,
    pub state_dim: usize,
    pub(crate) device: B::Device,
    pub(crate) generator: Generator<B>,
    pub(crate) target: Generator<B::InnerBackend>,
    pub(crate) discriminator: Discriminator<B>,
    pub(crate) optim_g: OptimizerAdaptor<Adam, Generator<B>, B>,
    pub(crate) optim_d: OptimizerAdaptor<Adam, Discriminator<B>, B>,
    loss_spec: LossSpec,
    /// φ_{(b,o)}, one per (batch slot, atom), when `model.inner_separate_discriminator`; it replaces
    /// `discriminator` in both steps (which then stays at its initial values).
    separate: Option<SeparateDiscriminator<B>>,
    optim_sd: OptimizerAdaptor<Adam, SeparateDiscriminator<B>, B>,
    /// Iterations completed.
    pub step: u64,
    draws: Draws,
    batch: WindowBatch,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A fresh model for states of `state_dim` floats, seeded from the experiment seed.
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize, device: B::Device) -> Trainer<B> {
        let m = &config.model;
        let seed = rng::derive_seed(config.seed, &["learner".into(), "init".into()]);
        B::seed(&device, seed);
        let generator = GeneratorConfig::new(m.num_outer, m.latent_dims, state_dim, m.generator_hidden)
            .with_layers(m.generator_layers)
            .init::<B>(&device, rng::derive_seed(config.seed, &["learner".into(), "generator".into()]));
        let discriminator = DiscriminatorConfig::new(state_dim, m.discriminator_hidden)
            .with_embedding_dim(m.embedding_dim)
            .init::<B>(&device, rng::derive_seed(config.seed, &["learner".into(), "discriminator".into()]));
        let target = generator.valid();
        let adam = || AdamConfig::new().with_beta_1(0.9).with_beta_2(0.999).with_epsilon(config.train.adam_eps as f32);
        Trainer {
            loss_spec: LossSpec::from_model(m),
            separate: m.inner_separate_discriminator.then(|| {
                DiscriminatorConfig::new(state_dim, m.discriminator_hidden)
                    .with_embedding_dim(m.embedding_dim)
                    .init_separate(
                        config.train.batch_size,
                        m.num_outer,
                        &device,
                        rng::derive_seed(config.seed, &["learner".into(), "separate-discriminator".into()]),
                    )
            }),
            optim_sd: adam().init(),
            state_dim,
            device,
            generator,
            target,
            discriminator,
            optim_g: adam().init(),
            optim_d: adam().init(),
            step: 0,
            draws: Draws::new(config.seed),
            batch: WindowBatch::default(),
            config,
            doc,
        }
    }

    fn loss<BB: burn::tensor::backend::Backend>(&self, xe: Tensor<BB, 4>, ye: Tensor<BB, 4>) -> Tensor<BB, 1> {
        self.loss_spec.loss(xe, ye)
    }

    /// The kernel features of the samples of batch rows `first_row..`: the shared φ, the separate
    /// φ_{(b,o)} of those rows' slots, or the raw states when there is no discriminator.
    fn embed(&self, x: Tensor<B, 4>, first_row: usize, update_stats: bool) -> Tensor<B, 4> {
        match (&self.separate, self.config.train.discriminator_steps) {
            (_, 0) => x,
            (Some(separate), _) => separate.embed(x, first_row, update_stats),
            (None, _) => self.discriminator.embed(x, update_stats),
        }
    }

    /// The separate discriminators φ_{(b,o)}, when `model.inner_separate_discriminator`.
    pub fn separate_discriminator(&self) -> Option<&SeparateDiscriminator<B>> {
        self.separate.as_ref()
    }

    /// Samples the batch of step `phase` and returns, on the inner backend, its source states s₀
    /// and the Bellman target Y built from the window and the target generator at s_H. The windows,
    /// the bootstrap latents and the horizons come from the counter-based [`Draws`].
    fn batch_and_target<S: WindowSource>(
        &mut self,
        data: &mut S,
        phase: Phase,
    ) -> Result<SourcesAndTarget<B>, TrainError> {
        let m = &self.config.model;
        let (b, h, s) = (self.config.train.batch_size, m.horizon, self.state_dim);
        let iteration = self.step + 1;
        let mut window_rng = self.draws.windows(iteration, phase);
        data.next_batch(&mut window_rng, b, h, &mut self.batch)
            .map_err(|source| TrainError::Data { iteration, source })?;
        let device = self.device.clone();
        let obs = Tensor::<B::InnerBackend, 3>::from_data(
            TensorData::new(self.batch.observations.clone(), [b, h + 1, s]),
            &device,
        );
        let s0 = obs.clone().slice([0..b, 0..1, 0..s]).reshape([b, s]);
        let sh = obs.clone().slice([0..b, h..h + 1, 0..s]).reshape([b, s]);
        let (o, i, z) = (m.num_outer, m.num_inner, m.latent_dims);
        let mut latents = vec![0.0f32; b * o * i * z];
        self.draws.latents(iteration, phase, Purpose::Bootstrap, 0..b, o * i * z, &mut latents);
        let latents = Tensor::from_data(TensorData::new(latents, [b, o, i, z]), &device);
        let bootstrap = self.target.forward(latents, sh);
        let sampler = HorizonSampler::new(m.gamma, h, m.cumulant_is_source_state);
        let mut horizons = vec![0u32; b * o * i];
        self.draws.horizons(iteration, phase, &sampler, 0..b, &self.batch.step_types, o * i, &mut horizons);
        let indices: Vec<i64> = horizons.iter().map(|&j| i64::from(j)).collect();
        let y = build_target(obs, &self.batch.step_types, bootstrap, &indices, m.bootstrap);
        Ok((s0, y))
    }

    /// The online latents of batch rows `rows` for step `phase`, `[rows, O, I, Z]`.
    fn online_latents(&self, phase: Phase, rows: std::ops::Range<usize>) -> Tensor<B::InnerBackend, 4> {
        let m = &self.config.model;
        let (n, o, i, z) = (rows.len(), m.num_outer, m.num_inner, m.latent_dims);
        let mut latents = vec![0.0f32; n * o * i * z];
        self.draws.latents(self.step + 1, phase, Purpose::Online, rows, o * i * z, &mut latents);
        Tensor::from_data(TensorData::new(latents, [n, o, i, z]), &self.device)
    }

    pub fn generator(&self) -> &Generator<B> {
        &self.generator
    }

    pub fn target(&self) -> &Generator<B::InnerBackend> {
        &self.target
    }

    pub fn discriminator(&self) -> &Discriminator<B> {
        &self.discriminator
    }

    /// The row ranges of one batch, `train.batch_chunk` rows each.
    fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        let b = self.config.train.batch_size;
        let c = match self.config.train.batch_chunk {
            0 => b,
            c => c.min(b),
        };
        (0..b).step_by(c).map(|r| r..(r + c).min(b)).collect()
    }

    /// One iteration: D step, G step, Polyak.
    ///
    /// With `train.batch_chunk` set, each step runs one forward/backward pass per chunk of rows,
    /// each loss weighted by its share of the batch, and applies the accumulated gradient once:
    /// the same gradient, since the loss is a mean over independent rows. The spectral-norm state
    /// is advanced by the first chunk only (lhs then rhs, as without chunks); later chunks read
    /// the advanced `u` without persisting, a deviation only in which `u` the power iteration
    /// starts from. (Separate discriminators φ_{(b,o)} belong to one chunk each, so every chunk
    /// advances its own.) With `train.discriminator_steps = 0` there is no D step and no D batch.
    ///
    /// `data` is any [`WindowSource`]: `&dataset` for an offline dataset, `&mut source` for one
    /// that keeps state (the replay store's client).
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        let iteration = self.step + 1;
        let (lr, tau) = (self.config.train.learning_rate, self.config.train.target_update);
        let (b, s) = (self.config.train.batch_size, self.state_dim);
        let chunks = self.chunks();

        // D step (none with train.discriminator_steps = 0).
        let d_value = if self.config.train.discriminator_steps == 0 {
            f64::NAN
        } else {
            self.discriminator_step(&mut data, &chunks, iteration)?
        };

        // G step: gradients through X only.
        let (s0, y) = self.batch_and_target(&mut data, Phase::Generator)?;
        let mut accumulator = GradientsAccumulator::<Generator<B>>::new();
        let mut g_value = 0.0;
        for rows in &chunks {
            let weight = rows.len() as f64 / b as f64;
            let s0c = Tensor::from_inner(s0.clone().slice([rows.clone(), 0..s]));
            let x =
                self.generator.forward(Tensor::from_inner(self.online_latents(Phase::Generator, rows.clone())), s0c);
            let xe = self.embed(x, rows.start, false);
            let ye = self.embed(Tensor::from_inner(y.clone().slice(rows.clone())), rows.start, false);
            let loss = self.loss(xe, ye).mul_scalar(weight);
            g_value += loss.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(loss.backward(), &self.generator);
            accumulator.accumulate(&self.generator, grads);
        }
        if !g_value.is_finite() {
            return Err(TrainError::NonFinite { iteration, phase: "generator", value: g_value });
        }
        self.generator = self.optim_g.step(lr, self.generator.clone(), accumulator.grads());

        // Polyak average of the target generator.
        self.target = self.target.clone().polyak_update(&self.generator.valid(), tau);
        self.step = iteration;
        Ok(IterationLosses { discriminator: d_value, generator: g_value })
    }

    /// The D step on its own batch: φ ascends L (X and Y are constants for it). Returns L.
    ///
    /// The shared φ's spectral-norm state is advanced by the first chunk only; each separate
    /// φ_{(b,o)} is used by one chunk only, so every chunk advances its own members'.
    fn discriminator_step<S: WindowSource>(
        &mut self,
        data: &mut S,
        chunks: &[std::ops::Range<usize>],
        iteration: u64,
    ) -> Result<f64, TrainError> {
        let (lr, b) = (self.config.train.learning_rate, self.config.train.batch_size);
        let online = self.generator.valid();
        let (s0, y) = self.batch_and_target(data, Phase::Discriminator)?;
        let x = online.forward(self.online_latents(Phase::Discriminator, 0..b), s0);
        let mut accumulator = GradientsAccumulator::<Discriminator<B>>::new();
        let mut separate_accumulator = GradientsAccumulator::<SeparateDiscriminator<B>>::new();
        let mut d_value = 0.0;
        for (k, rows) in chunks.iter().enumerate() {
            let weight = rows.len() as f64 / b as f64;
            let update_stats = k == 0 || self.separate.is_some();
            let (xc, yc) = (x.clone().slice(rows.clone()), y.clone().slice(rows.clone()));
            let xe = self.embed(Tensor::from_inner(xc), rows.start, update_stats);
            let ye = self.embed(Tensor::from_inner(yc), rows.start, update_stats);
            let loss = self.loss(xe, ye).mul_scalar(weight);
            d_value += loss.clone().into_scalar().elem::<f64>();
            let grads = loss.neg().backward();
            match &self.separate {
                Some(separate) => {
                    separate_accumulator.accumulate(separate, GradientsParams::from_grads(grads, separate))
                }
                None => {
                    accumulator.accumulate(&self.discriminator, GradientsParams::from_grads(grads, &self.discriminator))
                }
            }
        }
        if !d_value.is_finite() {
            return Err(TrainError::NonFinite { iteration, phase: "discriminator", value: d_value });
        }
        match self.separate.take() {
            Some(separate) => self.separate = Some(self.optim_sd.step(lr, separate, separate_accumulator.grads())),
            None => self.discriminator = self.optim_d.step(lr, self.discriminator.clone(), accumulator.grads()),
        }
        Ok(d_value)
    }

    /// Writes checkpoint `self.step` under `dir` (the caller commits it with a DONE marker).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let recorder = Recorder_::new();
        self.generator.clone().save_file(dir.join("generator"), &recorder).context("saving the generator")?;
        self.target.clone().save_file(dir.join("target"), &recorder).context("saving the target generator")?;
        self.discriminator
            .clone()
            .save_file(dir.join("discriminator"), &recorder)
            .context("saving the discriminator")?;
        Recorder::<B>::record(&recorder, self.optim_g.to_record(), dir.join("optim_generator"))
            .context("saving the generator's optimiser")?;
        Recorder::<B>::record(&recorder, self.optim_d.to_record(), dir.join("optim_discriminator"))
            .context("saving the discriminator's optimiser")?;
        if let Some(separate) = &self.separate {
            separate
                .clone()
                .save_file(dir.join("separate_discriminator"), &recorder)
                .context("saving the separate discriminators")?;
            Recorder::<B>::record(&recorder, self.optim_sd.to_record(), dir.join("optim_separate_discriminator"))
                .context("saving the separate discriminators' optimiser")?;
        }
        std::fs::write(dir.join("config.toml"), self.doc.to_toml())?;
        let state = serde_json::json!({ "format_version": 1, "step": self.step, "state_dim": self.state_dim });
        std::fs::write(dir.join("state.json"), state.to_string())?;
        Ok(())
    }

    /// Loads every part of a checkpoint written by [`Trainer::save`] into this trainer.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let recorder = Recorder_::new();
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).context("reading state.json")?)?;
        let step = state["step"].as_u64().context("state.json: step")?;
        let state_dim = state["state_dim"].as_u64().context("state.json: state_dim")? as usize;
        if state_dim != self.state_dim {
            bail!(
                "checkpoint {} is for states of {state_dim} floats, this run's data has {}",
                dir.display(),
                self.state_dim
            );
        }
        let device = self.device.clone();
        self.generator = self.generator.clone().load_file(dir.join("generator"), &recorder, &device)?;
        self.target = self.target.clone().load_file(dir.join("target"), &recorder, &device)?;
        self.discriminator = self.discriminator.clone().load_file(dir.join("discriminator"), &recorder, &device)?;
        let g = Recorder::<B>::load(&recorder, dir.join("optim_generator"), &device)?;
        self.optim_g = self.optim_g.clone().load_record(g);
        let d = Recorder::<B>::load(&recorder, dir.join("optim_discriminator"), &device)?;
        self.optim_d = self.optim_d.clone().load_record(d);
        if let Some(separate) = self.separate.take() {
            self.separate = Some(separate.load_file(dir.join("separate_discriminator"), &recorder, &device)?);
            let sd = Recorder::<B>::load(&recorder, dir.join("optim_separate_discriminator"), &device)?;
            self.optim_sd = self.optim_sd.clone().load_record(sd);
        }
        // The draws are counter-based: iteration step + 1 draws what the unstopped run would have.
        self.step = step;
        Ok(())
    }
}
