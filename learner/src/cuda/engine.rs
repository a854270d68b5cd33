//! The fused iteration on a device: the same D step, G step, Polyak and Adam as
//! `fused::engine::FusedEngine`, with the same draws, on device buffers through a [`Backend`].
//!
//! The whole batch goes through each launch at once (the generator's atoms as a strided batch of
//! products, φ on all B·O·I samples), so the gradient sums run in another order than the CPU
//! engine's blocks of rows and agree with it to f32 rounding, not bit for bit. The draws are the
//! CPU engine's: latents and horizons come from the counter-based `Draws` on the host, for the
//! whole batch, and are uploaded with the windows; a run can move between the engines.
//!
//! The training state lives on the device; [`DeviceEngine::from_fused`] uploads a
//! [`FusedEngine`]'s and [`DeviceEngine::store_into`] downloads it back, which is how checkpoints
//! (format v2, written from the fused engine's arrays) and resumption work on either side.
//!
//! Covered: the δ-model with one shared φ and one inner bandwidth (the thesis and Pendulum
//! configs); [`unsupported`] names what is not.

use anyhow::{Context, Result};

use std::ops::Range;

use super::backend::{f, u, Backend, BackendExt, DeviceCollective, DeviceSlice, Gemm, View};
use super::source::Kernel;
use crate::config::LearnerConfig;
use crate::fused::adam::AdamConfig;
use crate::fused::engine::{Embedding, FusedEngine, BLOCK_ROWS};
use crate::fused::network::{GenParams, GenShape, PhiShape};
use crate::loss::mmd::Bandwidth;
use crate::loss::target::HorizonSampler;
use crate::train::dataset::{WindowBatch, WindowSource};
use crate::train::draws::{Draws, Phase, Purpose};
use crate::train::trainer::{IterationLosses, TrainError};

/// Why a config cannot run on the device engine, or `None`.
pub fn unsupported(config: &LearnerConfig) -> Option<String> {
    if let Some(why) = crate::fused::engine::unsupported(config) {
        return Some(why);
    }
    let m = &config.model;
    match Embedding::of(config) {
        Embedding::Shared => {}
        Embedding::Raw => return Some("train.discriminator_steps = 0 (no φ)".into()),
        Embedding::Separate => return Some("model.inner_separate_discriminator".into()),
    }
    if !m.distributional {
        return Some("the γ-model (model.distributional = false)".into());
    }
    if m.inner_adaptive_bandwidth {
        return Some("per-pair inner bandwidths (model.inner_adaptive_bandwidth)".into());
    }
    None
}

/// A flat device buffer holding one network's parameters (or gradients, or Adam moments), with
/// each layer's kernel and bias as views: kernels first, then biases, in layer order (the order of
/// `GenParams::buffers`), so one launch updates a whole network.
#[derive(Debug, Clone)]
struct Flat {
    all: View<f32>,
    /// `all` and two floats after it, where a gradient buffer carries the step's loss (its value
    /// and the rest, as f32) through the replicas' all-reduce, as the CPU engine's does.
    packed: View<f32>,
    tail: View<f32>,
    weights: Vec<View<f32>>,
    biases: Vec<View<f32>>,
}

impl Flat {
    fn new<B: Backend>(dev: &mut B, sizes: &[(usize, usize)]) -> Result<Flat> {
        let total: usize = sizes.iter().map(|(w, b)| w + b).sum();
        let packed = dev.alloc_f32(total + 2)?;
        let (all, tail) = (packed.sub(0, total), packed.sub(total, 2));
        let mut at = 0;
        let mut weights = Vec::new();
        for (w, _) in sizes {
            weights.push(all.sub(at, *w));
            at += w;
        }
        let mut biases = Vec::new();
        for (_, b) in sizes {
            biases.push(all.sub(at, *b));
            at += b;
        }
        Ok(Flat { all, packed, tail, weights, biases })
    }

    fn upload<B: Backend>(&self, dev: &mut B, weights: &[Vec<f32>], biases: &[Vec<f32>]) -> Result<()> {
        for (v, w) in self.weights.iter().zip(weights) {
            dev.upload_f32(*v, w)?;
        }
        for (v, b) in self.biases.iter().zip(biases) {
            dev.upload_f32(*v, b)?;
        }
        Ok(())
    }

    fn download<B: Backend>(&self, dev: &mut B, weights: &mut [Vec<f32>], biases: &mut [Vec<f32>]) -> Result<()> {
        for (v, w) in self.weights.iter().zip(weights) {
            *w = dev.download_f32(*v)?;
        }
        for (v, b) in self.biases.iter().zip(biases) {
            *b = dev.download_f32(*v)?;
        }
        Ok(())
    }
}

/// One power iteration's results for one φ layer (see `fused::network::Spectral`).
#[derive(Debug, Clone)]
struct SpectralBufs {
    v: View<f32>,
    u_new: View<f32>,
    rows: View<f32>,
    sigma: View<f32>,
    w_bar: View<f32>,
}

/// The generator's activations for the whole batch, atom-major (see `fused::network::GenActs`).
#[derive(Debug, Clone)]
struct GenActs {
    acts: Vec<View<f32>>,
    out: View<f32>,
    srow: View<f32>,
    grad: View<f32>,
    grad_next: View<f32>,
    grad_rows: View<f32>,
}

/// φ's stored inputs and backward buffers for one call on n samples (see `fused::network::PhiActs`).
#[derive(Debug, Clone)]
struct PhiActs {
    inputs: Vec<View<f32>>,
    stream: View<f32>,
    g_stream: View<f32>,
    g: View<f32>,
    g_next: View<f32>,
}

/// The device engine: one model's training state and buffers on one device.
pub struct DeviceEngine<B: Backend> {
    pub config: LearnerConfig,
    pub state_dim: usize,
    pub step: u64,
    dev: B,
    /// The batch rows this engine computes (all of them unless it is one of several replicas).
    rows: Range<usize>,
    collective: Option<DeviceCollective>,
    gen_shape: GenShape,
    phi_shape: PhiShape,
    draws: Draws,
    sampler: HorizonSampler,
    adam: AdamConfig,
    median: bool,
    fixed_bandwidth: f32,
    adam_generator_time: u64,
    adam_phi_time: u64,
    batch: WindowBatch,
    host_z: Vec<f32>,
    host_horizons: Vec<u32>,
    // The training state.
    generator: Flat,
    target: Flat,
    gen_m1: Flat,
    gen_m2: Flat,
    gen_grad: Flat,
    phi: Flat,
    phi_u: Vec<View<f32>>,
    phi_m1: Flat,
    phi_m2: Flat,
    /// ∂L/∂W (through σ) and ∂L/∂b of the D step.
    phi_grad: Flat,
    /// ∂L/∂W̄ of the lhs and rhs calls; ∂L/∂b is `phi_grad`'s biases.
    phi_gwbar: [Vec<View<f32>>; 2],
    spectral: [Vec<SpectralBufs>; 2],
    dot_partial: View<f32>,
    dot: View<f32>,
    // One step's buffers.
    obs: View<f32>,
    types: View<u8>,
    z_rows: View<f32>,
    z: View<f32>,
    z_boot: View<f32>,
    horizons: View<u32>,
    s0: View<f32>,
    sh: View<f32>,
    online: GenActs,
    boot: GenActs,
    x: View<f32>,
    y: View<f32>,
    xe: View<f32>,
    ye: View<f32>,
    gxe: View<f32>,
    gye: View<f32>,
    gx_rows: View<f32>,
    gx_atoms: View<f32>,
    phi_x: PhiActs,
    phi_y: PhiActs,
    sums: View<f32>,
    dist: View<f32>,
    values: View<f32>,
    weights: View<f32>,
    row_loss: View<f32>,
    loss_partial: View<f64>,
    loss_total: View<f64>,
}

fn gen_acts<B: Backend>(dev: &mut B, shape: &GenShape, rows: usize, inner: usize) -> Result<GenActs> {
    let n = rows * inner;
    let o = shape.atoms;
    let widest = shape.dims.iter().copied().max().unwrap_or(0);
    let mut acts = Vec::new();
    for l in 1..shape.layers() {
        acts.push(dev.alloc_f32(o * n * shape.dims[l])?);
    }
    Ok(GenActs {
        acts,
        out: dev.alloc_f32(o * n * shape.state)?,
        srow: dev.alloc_f32(o * rows * shape.dims[1])?,
        grad: dev.alloc_f32(o * n * widest)?,
        grad_next: dev.alloc_f32(o * n * widest)?,
        grad_rows: dev.alloc_f32(o * rows * shape.dims[1])?,
    })
}

fn phi_acts<B: Backend>(dev: &mut B, shape: &PhiShape, n: usize) -> Result<PhiActs> {
    let w = shape.hidden;
    let mut inputs = Vec::new();
    for k in 0..shape.layers() {
        inputs.push(if k == 0 { dev.alloc_f32(0)? } else { dev.alloc_f32(n * w)? });
    }
    Ok(PhiActs {
        inputs,
        stream: dev.alloc_f32(n * w)?,
        g_stream: dev.alloc_f32(n * w)?,
        g: dev.alloc_f32(n * w.max(shape.embedding))?,
        g_next: dev.alloc_f32(n * w)?,
    })
}

impl<B: Backend> DeviceEngine<B> {
    /// An engine on `dev` holding `fused`'s training state (parameters, target, φ's u, Adam, step).
    pub fn from_fused(fused: &FusedEngine, dev: B) -> Result<DeviceEngine<B>> {
        Self::replica(fused, dev, 0..fused.config.train.batch_size, None)
    }

    /// One replica of a group: it computes batch rows `rows` and sums its gradients (and loss)
    /// with the others' through `collective` before every optimiser step.
    pub fn replica(
        fused: &FusedEngine,
        mut dev: B,
        rows: Range<usize>,
        collective: Option<DeviceCollective>,
    ) -> Result<DeviceEngine<B>> {
        let config = fused.config.clone();
        if let Some(why) = unsupported(&config) {
            anyhow::bail!("the GPU engine does not cover {why}; train this config on the CPU (omit --gpus)");
        }
        let m = &config.model;
        assert!(rows.end <= config.train.batch_size && !rows.is_empty(), "replica rows {rows:?}");
        let (b, o, i, zd, s, h) = (rows.len(), m.num_outer, m.num_inner, m.latent_dims, fused.state_dim, m.horizon);
        let gs = fused.gen_shape.clone();
        let ps = fused.phi_shape.clone();
        let e = ps.embedding;
        let gen_sizes: Vec<(usize, usize)> = (0..gs.layers()).map(|l| gs.layer_sizes(l)).collect();
        let phi_sizes: Vec<(usize, usize)> =
            (0..ps.layers()).map(|k| (ps.dims(k).0 * ps.dims(k).1, ps.dims(k).1)).collect();
        let d = &mut dev;
        let generator = Flat::new(d, &gen_sizes)?;
        let target = Flat::new(d, &gen_sizes)?;
        let gen_m1 = Flat::new(d, &gen_sizes)?;
        let gen_m2 = Flat::new(d, &gen_sizes)?;
        let gen_grad = Flat::new(d, &gen_sizes)?;
        let phi = Flat::new(d, &phi_sizes)?;
        let phi_m1 = Flat::new(d, &phi_sizes)?;
        let phi_m2 = Flat::new(d, &phi_sizes)?;
        let phi_grad = Flat::new(d, &phi_sizes)?;
        let mut phi_u = Vec::new();
        let mut phi_gwbar = [Vec::new(), Vec::new()];
        let mut spectral = [Vec::new(), Vec::new()];
        for k in 0..ps.layers() {
            let (din, dout) = ps.dims(k);
            phi_u.push(d.alloc_f32(dout)?);
            for call in 0..2 {
                phi_gwbar[call].push(d.alloc_f32(din * dout)?);
                spectral[call].push(SpectralBufs {
                    v: d.alloc_f32(din)?,
                    u_new: d.alloc_f32(dout)?,
                    rows: d.alloc_f32(din)?,
                    sigma: d.alloc_f32(1)?,
                    w_bar: d.alloc_f32(din * dout)?,
                });
            }
        }
        let widest_in = (0..ps.layers()).map(|k| ps.dims(k).0).max().unwrap_or(1);
        let n = b * o * i;
        let oo = o * o;
        let mut engine = DeviceEngine {
            state_dim: s,
            step: fused.step,
            gen_shape: gs.clone(),
            phi_shape: ps.clone(),
            draws: Draws::new(config.seed),
            sampler: HorizonSampler::new(m.gamma, h, m.cumulant_is_source_state),
            adam: AdamConfig::new(config.train.learning_rate, config.train.adam_eps),
            median: m.outer_bandwidth() == Bandwidth::Median,
            fixed_bandwidth: match m.outer_bandwidth() {
                Bandwidth::Fixed(h) => h as f32,
                Bandwidth::Median => 1.0,
            },
            adam_generator_time: 0,
            adam_phi_time: 0,
            batch: WindowBatch::default(),
            host_z: vec![0.0; n * zd],
            host_horizons: vec![0; n],
            generator,
            target,
            gen_m1,
            gen_m2,
            gen_grad,
            phi,
            phi_u,
            phi_m1,
            phi_m2,
            phi_grad,
            phi_gwbar,
            spectral,
            dot_partial: d.alloc_f32(widest_in)?,
            dot: d.alloc_f32(1)?,
            obs: d.alloc_f32(b * (h + 1) * s)?,
            types: d.alloc_u8(b * (h + 1))?,
            z_rows: d.alloc_f32(n * zd)?,
            z: d.alloc_f32(n * zd)?,
            z_boot: d.alloc_f32(n * zd)?,
            horizons: d.alloc_u32(n)?,
            s0: d.alloc_f32(b * s)?,
            sh: d.alloc_f32(b * s)?,
            online: gen_acts(d, &gs, b, i)?,
            boot: gen_acts(d, &gs, b, i)?,
            x: d.alloc_f32(n * s)?,
            y: d.alloc_f32(n * s)?,
            xe: d.alloc_f32(n * e)?,
            ye: d.alloc_f32(n * e)?,
            gxe: d.alloc_f32(n * e)?,
            gye: d.alloc_f32(n * e)?,
            gx_rows: d.alloc_f32(n * s)?,
            gx_atoms: d.alloc_f32(n * s)?,
            phi_x: phi_acts(d, &ps, n)?,
            phi_y: phi_acts(d, &ps, n)?,
            sums: d.alloc_f32(b * 3 * oo)?,
            dist: d.alloc_f32(b * 3 * oo)?,
            values: d.alloc_f32(b * (2 * o * (o - 1) + oo))?,
            weights: d.alloc_f32(b * 3 * oo)?,
            row_loss: d.alloc_f32(b)?,
            loss_partial: d.alloc_f64(b.div_ceil(BLOCK_ROWS))?,
            loss_total: d.alloc_f64(1)?,
            dev,
            rows,
            collective,
            config,
        };
        engine.load_from(fused)?;
        Ok(engine)
    }

    /// Uploads `fused`'s training state (same model) into this engine.
    pub fn load_from(&mut self, fused: &FusedEngine) -> Result<()> {
        let dev = &mut self.dev;
        self.generator.upload(dev, &fused.generator.weights, &fused.generator.biases)?;
        self.target.upload(dev, &fused.target.weights, &fused.target.biases)?;
        let ag = &fused.adam_generator;
        self.gen_m1.upload(dev, &ag.m1.weights, &ag.m1.biases)?;
        self.gen_m2.upload(dev, &ag.m2.weights, &ag.m2.biases)?;
        self.phi.upload(dev, &fused.phi.weights, &fused.phi.biases)?;
        for (v, u) in self.phi_u.iter().zip(&fused.phi.u) {
            dev.upload_f32(*v, u)?;
        }
        let ap = &fused.adam_phi;
        self.phi_m1.upload(dev, &ap.m1.weights, &ap.m1.biases)?;
        self.phi_m2.upload(dev, &ap.m2.weights, &ap.m2.biases)?;
        self.adam_generator_time = ag.time;
        self.adam_phi_time = ap.time;
        self.step = fused.step;
        Ok(())
    }

    /// Downloads the training state into `fused` (same model): for checkpoints, and to go on on
    /// the CPU.
    pub fn store_into(&mut self, fused: &mut FusedEngine) -> Result<()> {
        let dev = &mut self.dev;
        let g = &mut fused.generator;
        self.generator.download(dev, &mut g.weights, &mut g.biases)?;
        let t = &mut fused.target;
        self.target.download(dev, &mut t.weights, &mut t.biases)?;
        let ag = &mut fused.adam_generator;
        self.gen_m1.download(dev, &mut ag.m1.weights, &mut ag.m1.biases)?;
        self.gen_m2.download(dev, &mut ag.m2.weights, &mut ag.m2.biases)?;
        ag.time = self.adam_generator_time;
        let p = &mut fused.phi;
        self.phi.download(dev, &mut p.weights, &mut p.biases)?;
        for (v, u) in self.phi_u.iter().zip(p.u.iter_mut()) {
            *u = dev.download_f32(*v)?;
        }
        let ap = &mut fused.adam_phi;
        self.phi_m1.download(dev, &mut ap.m1.weights, &mut ap.m1.biases)?;
        self.phi_m2.download(dev, &mut ap.m2.weights, &mut ap.m2.biases)?;
        ap.time = self.adam_phi_time;
        fused.step = self.step;
        Ok(())
    }

    /// The last G step's generator gradients and the last D step's φ gradients (∂L/∂W through σ,
    /// ∂L/∂b), for comparing with the CPU engine.
    pub fn gradients(&mut self) -> Result<(GenParams, GenParams)> {
        let layers = self.gen_shape.layers();
        let mut gen = GenParams { weights: vec![Vec::new(); layers], biases: vec![Vec::new(); layers] };
        self.gen_grad.download(&mut self.dev, &mut gen.weights, &mut gen.biases)?;
        let k = self.phi_shape.layers();
        let mut phi = GenParams { weights: vec![Vec::new(); k], biases: vec![Vec::new(); k] };
        self.phi_grad.download(&mut self.dev, &mut phi.weights, &mut phi.biases)?;
        Ok((gen, phi))
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.dev
    }

    /// One iteration: D step, G step, Polyak, as `FusedEngine::iteration`. A non-finite loss
    /// stops before any parameter changes in that step.
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        let mut batch = std::mem::take(&mut self.batch);
        let result = (|| {
            self.draw(&mut data, Phase::Discriminator, &mut batch)?;
            let d = self.phase(&batch, Phase::Discriminator)?;
            self.draw(&mut data, Phase::Generator, &mut batch)?;
            let g = self.phase(&batch, Phase::Generator)?;
            self.finish_iteration()?;
            Ok(IterationLosses { discriminator: d, generator: g })
        })();
        self.batch = batch;
        result
    }

    /// Draws the windows of one step of the next iteration (the whole batch) into `batch`.
    pub fn draw<S: WindowSource>(&self, data: &mut S, phase: Phase, batch: &mut WindowBatch) -> Result<(), TrainError> {
        let (b, h) = (self.config.train.batch_size, self.config.model.horizon);
        self.draws.fill_windows(data, self.step + 1, phase, b, h, batch)
    }

    /// The end of an iteration: Polyak averaging of the target, the step count.
    pub fn finish_iteration(&mut self) -> Result<(), TrainError> {
        let iteration = self.step + 1;
        let tau = self.config.train.target_update;
        let (keep, take) = ((1.0 - tau) as f32, tau as f32);
        let (t, g_all) = (self.target.all, self.generator.all);
        self.dev
            .launch(Kernel::PolyakUpdate, t.len, &[u(t.len), f(keep), f(take), t.arg(), g_all.arg()])
            .map_err(|source| TrainError::Device { iteration, source })?;
        self.step += 1;
        Ok(())
    }

    /// One step on `batch` (the windows of the whole batch; this engine takes its rows): the
    /// forward and backward passes, the sum over replicas, Adam. Returns the step's loss.
    pub fn phase(&mut self, batch: &WindowBatch, phase: Phase) -> Result<f64, TrainError> {
        let iteration = self.step + 1;
        let loss = self.forward(batch, phase, iteration).map_err(|source| TrainError::Device { iteration, source })?;
        if !loss.is_finite() {
            let name = if phase == Phase::Discriminator { "discriminator" } else { "generator" };
            return Err(TrainError::NonFinite { iteration, phase: name, value: loss });
        }
        match phase {
            Phase::Discriminator => self.apply_discriminator(),
            Phase::Generator => self.apply_generator(),
        }
        .map_err(|source| TrainError::Device { iteration, source })?;
        Ok(loss)
    }

    /// The draws, the forward pass, the loss and its gradient with respect to the embeddings, and
    /// the backward pass into the step's gradients. Returns the step's loss.
    fn forward(&mut self, batch: &WindowBatch, phase: Phase, iteration: u64) -> Result<f64> {
        let m = &self.config.model;
        let rows = self.rows.clone();
        let batch_size = self.config.train.batch_size;
        let (b, o, i, zd, s, h) = (rows.len(), m.num_outer, m.num_inner, m.latent_dims, self.state_dim, m.horizon);
        let bootstrap = m.bootstrap;
        let n = b * o * i;
        self.spectral_norm(phase)?;
        let dev = &mut self.dev;
        // Inputs: the windows, the latents (drawn [B][O][I][Z], laid out atom-major) and horizons.
        let h1 = h + 1;
        let obs = &batch.observations[rows.start * h1 * s..rows.end * h1 * s];
        let types = &batch.step_types[rows.start * h1..rows.end * h1];
        dev.upload_f32(self.obs, obs).context("uploading the windows")?;
        dev.upload_u8(self.types, types)?;
        for (purpose, dst) in [(Purpose::Online, self.z), (Purpose::Bootstrap, self.z_boot)] {
            draw_latents(&self.draws, iteration, phase, purpose, rows.start, o * i * zd, &mut self.host_z);
            dev.upload_f32(self.z_rows, &self.host_z)?;
            dev.launch(Kernel::SwapAxes, n * zd, &[u(b), u(o), u(i * zd), self.z_rows.arg(), dst.arg()])?;
        }
        self.draws.horizons(iteration, phase, &self.sampler, rows, types, o * i, &mut self.host_horizons);
        dev.upload_u32(self.horizons, &self.host_horizons)?;
        dev.launch(Kernel::WindowEnds, b * s, &[u(b), u(h + 1), u(s), self.obs.arg(), self.s0.arg(), self.sh.arg()])?;
        // The Bellman target Y [B][O][I][S], and X from the online generator.
        gen_forward(dev, &self.gen_shape, &self.target, self.z_boot, self.sh, b, i, &self.boot)?;
        let args = [u(b), u(o), u(i), u(s), u(h), u(bootstrap as usize)];
        let bufs = [self.obs.arg(), self.types.arg(), self.horizons.arg(), self.boot.out.arg(), self.y.arg()];
        dev.launch(Kernel::BellmanTargets, n * s, &[&args[..], &bufs[..]].concat())?;
        gen_forward(dev, &self.gen_shape, &self.generator, self.z, self.s0, b, i, &self.online)?;
        dev.launch(Kernel::SwapAxes, n * s, &[u(o), u(b), u(i * s), self.online.out.arg(), self.x.arg()])?;
        // φ on both sides: the D step's lhs call uses W̄ from u → u₁, its rhs call W̄ from u₁ → u₂.
        let layers = self.phi_shape.layers();
        let call_y = if phase == Phase::Discriminator { 1 } else { 0 };
        let wx: Vec<View<f32>> = (0..layers).map(|k| self.spectral[0][k].w_bar).collect();
        let wy: Vec<View<f32>> = (0..layers).map(|k| self.spectral[call_y][k].w_bar).collect();
        phi_forward(dev, &self.phi_shape, &wx, &self.phi.biases, self.x, n, &self.phi_x, self.xe)?;
        phi_forward(dev, &self.phi_shape, &wy, &self.phi.biases, self.y, n, &self.phi_y, self.ye)?;
        // The loss of every row and its gradient (the D step ascends: scale −1/B).
        let scale = if phase == Phase::Discriminator { -1.0 / batch_size as f32 } else { 1.0 / batch_size as f32 };
        let sides = if phase == Phase::Discriminator { 2 } else { 1 };
        let (xe, ye) = (self.xe.arg(), self.ye.arg());
        dev.launch(Kernel::DeltaPairSums, b * 3 * o * o, &[u(b), u(o), u(i), xe, ye, self.sums.arg()])?;
        let outer = [u(b), u(o), u(i), f(scale), u(self.median as usize), f(self.fixed_bandwidth)];
        let outer_bufs = [self.sums.arg(), self.dist.arg(), self.values.arg(), self.weights.arg(), self.row_loss.arg()];
        dev.launch(Kernel::DeltaOuter, b, &[&outer[..], &outer_bufs[..]].concat())?;
        let pull = [u(b), u(o), u(i), u(sides), xe, ye, self.weights.arg(), self.gxe.arg(), self.gye.arg()];
        dev.launch(Kernel::DeltaPull, b * sides * o * i, &pull)?;
        let sum = [u(b), u(BLOCK_ROWS), self.row_loss.arg(), self.loss_partial.arg(), self.loss_total.arg()];
        dev.launch(Kernel::SumRowLosses, 1, &sum)?;
        let mut total = dev.download_f64(self.loss_total)?[0];
        // The backward pass runs whatever the loss: every replica must reach the all-reduce, and
        // a non-finite sum stops the step before Adam on all of them alike.
        match phase {
            Phase::Discriminator => {
                for call in 0..2 {
                    for v in &self.phi_gwbar[call] {
                        dev.zero_f32(*v)?;
                    }
                }
                dev.zero_f32(self.phi_grad.all)?;
                let gb = &self.phi_grad.biases;
                let [gx_w, gy_w] = &self.phi_gwbar;
                phi_backward(dev, &self.phi_shape, &wx, self.x, n, &self.phi_x, self.gxe, Some((gx_w, gb)), None)?;
                phi_backward(dev, &self.phi_shape, &wy, self.y, n, &self.phi_y, self.gye, Some((gy_w, gb)), None)?;
                // ∂L/∂W from the ∂L/∂W̄ of both calls, through each call's σ (linear in the
                // gradient, so replicas may sum after it).
                for k in 0..layers {
                    let (din, dout) = self.phi_shape.dims(k);
                    for call in 0..2 {
                        let sp = &self.spectral[call][k];
                        let g = self.phi_gwbar[call][k];
                        let dots = [u(din), u(dout), g.arg(), sp.w_bar.arg(), self.dot_partial.arg()];
                        dev.launch(Kernel::RowDots, din, &dots)?;
                        dev.launch(Kernel::SumVector, 1, &[u(din), self.dot_partial.arg(), self.dot.arg()])?;
                        let out = self.phi_grad.weights[k];
                        let (v, un, sg) = (sp.v.arg(), sp.u_new.arg(), sp.sigma.arg());
                        let args = [u(din), u(dout), g.arg(), v, un, sg, self.dot.arg(), out.arg()];
                        dev.launch(Kernel::SigmaBackward, din * dout, &args)?;
                    }
                }
            }
            Phase::Generator => {
                let gx = Some(self.gx_rows);
                phi_backward(dev, &self.phi_shape, &wx, self.x, n, &self.phi_x, self.gxe, None, gx)?;
                dev.launch(Kernel::SwapAxes, n * s, &[u(b), u(o), u(i * s), self.gx_rows.arg(), self.gx_atoms.arg()])?;
                dev.zero_f32(self.gen_grad.all)?;
                let gs = &self.gen_shape;
                gen_backward(
                    dev,
                    gs,
                    &self.generator,
                    self.z,
                    self.s0,
                    b,
                    i,
                    &self.online,
                    self.gx_atoms,
                    &self.gen_grad,
                )?;
            }
        }
        if let Some(c) = &self.collective {
            // Sum the gradients and the loss over the replicas (the loss as two f32, its value
            // and the rest, as the CPU engine's collective carries it).
            let grad = if phase == Phase::Discriminator { &self.phi_grad } else { &self.gen_grad };
            let hi = total as f32;
            dev.upload_f32(grad.tail, &[hi, (total - f64::from(hi)) as f32])?;
            dev.synchronize()?;
            let mut slice = DeviceSlice { ptr: dev.address(grad.packed.addr()), len: grad.packed.len };
            c.all_reduce_sum(&mut slice).context("summing gradients across replicas")?;
            let t = dev.download_f32(grad.tail)?;
            total = f64::from(t[0]) + f64::from(t[1]);
        }
        Ok(total / batch_size as f64)
    }

    /// The power iterations of this step: the D step chains lhs (u → u₁) and rhs (u₁ → u₂); the G
    /// step runs one for both calls.
    fn spectral_norm(&mut self, phase: Phase) -> Result<()> {
        for k in 0..self.phi_shape.layers() {
            let (din, dout) = self.phi_shape.dims(k);
            let w = self.phi.weights[k];
            spectral(&mut self.dev, w, self.phi_u[k], din, dout, &self.spectral[0][k])?;
            if phase == Phase::Discriminator {
                let u1 = self.spectral[0][k].u_new;
                spectral(&mut self.dev, w, u1, din, dout, &self.spectral[1][k])?;
            }
        }
        Ok(())
    }

    /// Adam on φ, and the chained u₂ kept.
    fn apply_discriminator(&mut self) -> Result<()> {
        let dev = &mut self.dev;
        self.adam_phi_time += 1;
        adam(dev, &self.adam, self.adam_phi_time, &self.phi, &self.phi_grad, &self.phi_m1, &self.phi_m2)?;
        for k in 0..self.phi_shape.layers() {
            dev.copy_f32(self.phi_u[k], self.spectral[1][k].u_new)?;
        }
        Ok(())
    }

    fn apply_generator(&mut self) -> Result<()> {
        self.adam_generator_time += 1;
        let t = self.adam_generator_time;
        adam(&mut self.dev, &self.adam, t, &self.generator, &self.gen_grad, &self.gen_m1, &self.gen_m2)
    }
}

/// The latents of every batch row (`out` holds `per_row` per row), the rows spread over the
/// machine's cores: a row's values depend only on its own counter-based stream, so this is
/// `Draws::latents` over the whole batch, at the Pendulum sizes millions of normals a step.
fn draw_latents(
    draws: &Draws,
    iteration: u64,
    phase: Phase,
    purpose: Purpose,
    first_row: usize,
    per_row: usize,
    out: &mut [f32],
) {
    let rows = out.len() / per_row.max(1);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(rows.max(1));
    let chunk = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (k, part) in out.chunks_mut(chunk * per_row.max(1)).enumerate() {
            let start = first_row + k * chunk;
            let n = part.len() / per_row.max(1);
            scope.spawn(move || draws.latents(iteration, phase, purpose, start..start + n, per_row, part));
        }
    });
}

fn adam<B: Backend>(dev: &mut B, cfg: &AdamConfig, t: u64, p: &Flat, g: &Flat, m1: &Flat, m2: &Flat) -> Result<()> {
    let [beta1, f1, beta2, f2, c, eps, lr] = cfg.constants(t);
    let n = p.all.len;
    let args = [
        u(n),
        p.all.arg(),
        g.all.arg(),
        m1.all.arg(),
        m2.all.arg(),
        f(beta1),
        f(f1),
        f(beta2),
        f(f2),
        f(c),
        f(eps),
        f(lr),
    ];
    dev.launch(Kernel::AdamUpdate, n, &args)
}

/// One power iteration of one kernel W `[d_in][d_out]` from `u` (see `Spectral::compute`).
fn spectral<B: Backend>(
    dev: &mut B,
    w: View<f32>,
    u0: View<f32>,
    d_in: usize,
    d_out: usize,
    sb: &SpectralBufs,
) -> Result<()> {
    dev.launch(Kernel::SpectralV, d_in, &[u(d_in), u(d_out), w.arg(), u0.arg(), sb.v.arg()])?;
    dev.launch(Kernel::L2Normalize, 1, &[u(d_in), sb.v.arg()])?;
    dev.launch(Kernel::SpectralU, d_out, &[u(d_in), u(d_out), w.arg(), sb.v.arg(), sb.u_new.arg()])?;
    dev.launch(Kernel::L2Normalize, 1, &[u(d_out), sb.u_new.arg()])?;
    dev.launch(Kernel::SpectralRows, d_in, &[u(d_in), u(d_out), w.arg(), sb.u_new.arg(), sb.rows.arg()])?;
    dev.launch(Kernel::SpectralSigma, 1, &[u(d_in), sb.v.arg(), sb.rows.arg(), sb.sigma.arg()])?;
    dev.launch(Kernel::SpectralWbar, d_in * d_out, &[u(d_in * d_out), w.arg(), sb.sigma.arg(), sb.w_bar.arg()])
}

/// `add_bias` over `groups` groups of `rows` rows.
fn add_bias<B: Backend>(
    dev: &mut B,
    groups: usize,
    rows: usize,
    width: usize,
    v: View<f32>,
    bias: View<f32>,
    act: bool,
) -> Result<()> {
    let args = [u(groups), u(rows), u(width), v.arg(), bias.arg(), u(act as usize)];
    dev.launch(Kernel::AddBias, groups * rows * width, &args)
}

fn column_sums<B: Backend>(
    dev: &mut B,
    groups: usize,
    rows: usize,
    width: usize,
    x: View<f32>,
    out: View<f32>,
    accumulate: bool,
) -> Result<()> {
    let args = [u(groups), u(rows), u(width), x.arg(), out.arg(), u(accumulate as usize)];
    dev.launch(Kernel::ColumnSums, groups * width, &args)
}

/// The generator's forward pass for `rows` source states `s` `[rows][S]` and latents `z`
/// `[O][rows·I][Z]`, every atom at once (see `fused::network::gen_forward`).
#[allow(clippy::too_many_arguments)]
fn gen_forward<B: Backend>(
    dev: &mut B,
    shape: &GenShape,
    p: &Flat,
    z: View<f32>,
    s: View<f32>,
    rows: usize,
    inner: usize,
    acts: &GenActs,
) -> Result<()> {
    let (o, zd, sd) = (shape.atoms, shape.latent, shape.state);
    let n = rows * inner;
    let last = shape.layers() - 1;
    let (d_in, w) = (shape.dims[0], shape.dims[1]);
    let w0 = p.weights[0];
    let ws = w0.sub(zd * w, w0.len - zd * w);
    // s·W_s + b₀ per (atom, row): s is shared by the atoms (stride 0).
    dev.gemm(&Gemm::one(rows, w, sd, s, ws, acts.srow).batched(o, 0, d_in * w, rows * w))?;
    add_bias(dev, o, rows, w, acts.srow, p.biases[0], false)?;
    let first = if last == 0 { acts.out } else { acts.acts[0] };
    dev.gemm(&Gemm::one(n, w, zd, z, w0, first).batched(o, n * zd, d_in * w, n * w))?;
    let args = [u(o * n), u(w), u(inner), first.arg(), acts.srow.arg(), u((last > 0) as usize)];
    dev.launch(Kernel::AddRowBlocks, o * n * w, &args)?;
    for l in 1..=last {
        let (d_in, d_out) = (shape.dims[l], shape.dims[l + 1]);
        let input = acts.acts[l - 1];
        let output = if l == last { acts.out } else { acts.acts[l] };
        dev.gemm(&Gemm::one(n, d_out, d_in, input, p.weights[l], output).batched(
            o,
            n * d_in,
            d_in * d_out,
            n * d_out,
        ))?;
        add_bias(dev, o, n, d_out, output, p.biases[l], l < last)?;
    }
    Ok(())
}

/// The backward pass of [`gen_forward`]: `gout` `[O][rows·I][S]` is ∂L/∂output; the parameter
/// gradients are added to `grads`.
#[allow(clippy::too_many_arguments)]
fn gen_backward<B: Backend>(
    dev: &mut B,
    shape: &GenShape,
    p: &Flat,
    z: View<f32>,
    s: View<f32>,
    rows: usize,
    inner: usize,
    acts: &GenActs,
    gout: View<f32>,
    grads: &Flat,
) -> Result<()> {
    let (o, zd, sd) = (shape.atoms, shape.latent, shape.state);
    let n = rows * inner;
    let last = shape.layers() - 1;
    let d_last = shape.dims[last + 1];
    let (mut grad, mut grad_next) = (acts.grad, acts.grad_next);
    dev.copy_f32(grad.sub(0, o * n * d_last), gout)?;
    for l in (1..=last).rev() {
        let (d_in, d_out) = (shape.dims[l], shape.dims[l + 1]);
        let input = acts.acts[l - 1];
        let g = grad.sub(0, o * n * d_out);
        let gw = Gemm::one(d_in, d_out, n, input, g, grads.weights[l]).t_a().add();
        dev.gemm(&gw.batched(o, n * d_in, n * d_out, d_in * d_out))?;
        column_sums(dev, o, n, d_out, g, grads.biases[l], true)?;
        let gn = grad_next.sub(0, o * n * d_in);
        dev.gemm(&Gemm::one(n, d_in, d_out, g, p.weights[l], gn).t_b().batched(o, n * d_out, d_in * d_out, n * d_in))?;
        dev.launch(Kernel::LreluBackward, o * n * d_in, &[u(o * n * d_in), gn.arg(), input.arg()])?;
        std::mem::swap(&mut grad, &mut grad_next);
    }
    let (d_in, w) = (shape.dims[0], shape.dims[1]);
    let g = grad.sub(0, o * n * w);
    let gw0 = grads.weights[0];
    dev.gemm(&Gemm::one(zd, w, n, z, g, gw0).t_a().add().batched(o, n * zd, n * w, d_in * w))?;
    column_sums(dev, o * rows, inner, w, g, acts.grad_rows, false)?;
    let gws = gw0.sub(zd * w, gw0.len - zd * w);
    dev.gemm(&Gemm::one(sd, w, rows, s, acts.grad_rows, gws).t_a().add().batched(o, 0, rows * w, d_in * w))?;
    column_sums(dev, o, rows, w, acts.grad_rows, grads.biases[0], true)
}

/// φ(x) for `n` samples `x` `[n][S]` with the normalised kernels `w_bar`, into `out` `[n][E]`
/// (see `fused::network::phi_forward`).
#[allow(clippy::too_many_arguments)]
fn phi_forward<B: Backend>(
    dev: &mut B,
    shape: &PhiShape,
    w_bar: &[View<f32>],
    biases: &[View<f32>],
    x: View<f32>,
    n: usize,
    acts: &PhiActs,
    out: View<f32>,
) -> Result<()> {
    let w = shape.hidden;
    let stream = acts.stream;
    dev.gemm(&Gemm::one(n, w, shape.state, x, w_bar[0], stream))?;
    add_bias(dev, 1, n, w, stream, biases[0], false)?;
    let mut k = 1;
    for _ in 0..shape.blocks {
        for j in 0..shape.per_block {
            let input = acts.inputs[k];
            if j == 0 {
                dev.launch(Kernel::CopyLrelu, n * w, &[u(n * w), stream.arg(), input.arg()])?;
            } else {
                dev.gemm(&Gemm::one(n, w, w, acts.inputs[k - 1], w_bar[k - 1], input))?;
                add_bias(dev, 1, n, w, input, biases[k - 1], true)?;
            }
            k += 1;
        }
        // The block's last layer adds onto the residual stream.
        dev.gemm(&Gemm::one(n, w, w, acts.inputs[k - 1], w_bar[k - 1], stream).add())?;
        add_bias(dev, 1, n, w, stream, biases[k - 1], false)?;
    }
    let input = acts.inputs[k];
    dev.launch(Kernel::CopyLrelu, n * w, &[u(n * w), stream.arg(), input.arg()])?;
    let e = shape.embedding;
    dev.gemm(&Gemm::one(n, e, w, input, w_bar[k], out))?;
    add_bias(dev, 1, n, e, out, biases[k], false)
}

/// Where φ's backward pass adds ∂L/∂W̄ and ∂L/∂b, per layer.
type PhiGradViews<'a> = (&'a [View<f32>], &'a [View<f32>]);

/// The backward pass of the last [`phi_forward`] on these `acts`: `gout` `[n][E]` is ∂L/∂φ(x).
/// Adds ∂L/∂W̄ and ∂L/∂b when `weights` is given, and writes ∂L/∂x `[n][S]` to `gx` when given.
#[allow(clippy::too_many_arguments)]
fn phi_backward<B: Backend>(
    dev: &mut B,
    shape: &PhiShape,
    w_bar: &[View<f32>],
    x: View<f32>,
    n: usize,
    acts: &PhiActs,
    gout: View<f32>,
    weights: Option<PhiGradViews<'_>>,
    gx: Option<View<f32>>,
) -> Result<()> {
    let (w, e) = (shape.hidden, shape.embedding);
    let last = shape.layers() - 1;
    if let Some((gw, gb)) = weights {
        dev.gemm(&Gemm::one(w, e, n, acts.inputs[last], gout, gw[last]).t_a().add())?;
        column_sums(dev, 1, n, e, gout, gb[last], true)?;
    }
    let gs = acts.g_stream;
    dev.gemm(&Gemm::one(n, w, e, gout, w_bar[last], gs).t_b())?;
    dev.launch(Kernel::LreluBackward, n * w, &[u(n * w), gs.arg(), acts.inputs[last].arg()])?;
    let mut k = last;
    let (mut g, mut g_next) = (acts.g.sub(0, n * w), acts.g_next);
    for _ in 0..shape.blocks {
        // Through the block MLP, last layer first; the skip passes g_stream unchanged.
        dev.copy_f32(g, gs)?;
        for _ in 0..shape.per_block {
            k -= 1;
            let input = acts.inputs[k];
            if let Some((gw, gb)) = weights {
                dev.gemm(&Gemm::one(w, w, n, input, g, gw[k]).t_a().add())?;
                column_sums(dev, 1, n, w, g, gb[k], true)?;
            }
            dev.gemm(&Gemm::one(n, w, w, g, w_bar[k], g_next).t_b())?;
            dev.launch(Kernel::LreluBackward, n * w, &[u(n * w), g_next.arg(), input.arg()])?;
            std::mem::swap(&mut g, &mut g_next);
        }
        dev.launch(Kernel::AddInto, n * w, &[u(n * w), gs.arg(), g.arg()])?;
    }
    debug_assert_eq!(k, 1);
    if let Some((gw, gb)) = weights {
        dev.gemm(&Gemm::one(shape.state, w, n, x, gs, gw[0]).t_a().add())?;
        column_sums(dev, 1, n, w, gs, gb[0], true)?;
    }
    if let Some(gx) = gx {
        dev.gemm(&Gemm::one(n, shape.state, w, gs, w_bar[0], gx).t_b())?;
    }
    Ok(())
}
