//! The fused δ-model engine: the iteration of `train::trainer` (D step, G step, Polyak, Adam,
//! spectral-norm state) with hand-written forward and backward passes on flat, preallocated
//! buffers, blocks of batch rows spread across a fixed pool of threads.
//!
//! Per step, the calling thread draws the windows and runs the spectral-norm power iterations
//! (they depend on φ's weights only); then the threads take the blocks of [`BLOCK_ROWS`] rows, each
//! through the whole forward and backward pass — latents, target, generator, φ, the loss of each
//! row — into that block's gradient buffers; then the blocks are summed by a fixed tree and the
//! calling thread applies Adam. The loss is a mean of independent per-row terms (the median
//! bandwidth is per row), so the split is exact, and since neither a block's arithmetic nor the
//! tree depends on which thread ran what, the result is bit-identical for any thread count.
//! Every draw comes from the counter-based [`Draws`], so the inputs are those of the burn engine.

use std::ops::Range;
use std::sync::Mutex;

use anyhow::{bail, Result};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;

use common::config::ConfigDoc;
use common::rng;

use super::adam::{polyak, AdamConfig};
use super::kernel::FusedKernel;
use super::mmd::{delta_row, MmdScratch, Needs, Outer, RowShape};
use super::network::{
    gen_backward, gen_forward, phi_backward, phi_forward, GenActs, GenParams, GenShape, PhiActs, PhiParams, PhiShape,
    Spectral,
};
use super::pool::Pool;
use crate::config::LearnerConfig;
use crate::loss::mmd::Bandwidth;
use crate::loss::target::HorizonSampler;
use crate::model::discriminator::{Discriminator, DiscriminatorConfig};
use crate::model::generator::{Generator, GeneratorConfig};
use crate::train::checkpoint_v2::{Array, Checkpoint};
use crate::train::dataset::{WindowBatch, WindowSource, STEP_LAST};
use crate::train::draws::{Draws, Phase, Purpose};
use crate::train::trainer::{IterationLosses, TrainError};

/// Why a config cannot run on the fused engine (it then stays on burn).
pub fn unsupported(config: &LearnerConfig) -> Option<String> {
    let m = &config.model;
    if !m.distributional {
        return Some("model.distributional = false (the γ-model ensemble / SR)".into());
    }
    if m.inner_separate_discriminator {
        return Some("model.inner_separate_discriminator = true".into());
    }
    if config.train.discriminator_steps == 0 {
        return Some("train.discriminator_steps = 0 (the median variant)".into());
    }
    if m.inner_adaptive_bandwidth {
        return Some("model.inner_adaptive_bandwidth = true".into());
    }
    if FusedKernel::new(&m.inner()).is_none() || FusedKernel::new(&m.outer()).is_none() {
        return Some("an energy kernel".into());
    }
    if m.embedding_dim > 64 {
        return Some("model.embedding_dim > 64".into());
    }
    None
}

/// φ's Adam moments: per layer, for the kernel and the bias.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiMoments {
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
}

/// Adam's state of one network.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments<T> {
    pub m1: T,
    pub m2: T,
    /// Steps taken.
    pub time: u64,
}

/// Batch rows per gradient block: the unit of the engine's canonical gradient sum.
///
/// Each block's gradients are computed on their own (by whichever thread takes the block) and the
/// blocks are summed by a fixed pairwise tree ([`tree_sum`]) that depends only on their number. So
/// the result is bit-identical for any thread count, and for any split of the blocks across
/// replicas that keeps the tree. Smaller blocks balance threads better; larger ones make longer
/// matrix products (8 rows: 400-row products at the thesis sizes, within a few % of the speed of
/// one block per thread).
pub const BLOCK_ROWS: usize = 8;

/// One thread's scratch buffers, sized once for a block of rows.
struct Worker {
    z_rows: Vec<f32>,
    z: Vec<f32>,
    z_boot: Vec<f32>,
    horizons: Vec<u32>,
    s0: Vec<f32>,
    sh: Vec<f32>,
    online: GenActs,
    boot: GenActs,
    x: Vec<f32>,
    y: Vec<f32>,
    xe: Vec<f32>,
    ye: Vec<f32>,
    gxe: Vec<f32>,
    gye: Vec<f32>,
    gx_rows: Vec<f32>,
    gx_atoms: Vec<f32>,
    phi_x: PhiActs,
    phi_y: PhiActs,
    mmd: MmdScratch,
}

/// What one block of rows contributes: its gradients and its summed loss.
struct Block {
    rows: Range<usize>,
    grad_gen: GenParams,
    /// ∂L/∂W̄ of the lhs call and of the rhs call (they differ by σ in the D step), ∂L/∂b.
    grad_wbar: [Vec<Vec<f32>>; 2],
    grad_bias: Vec<Vec<f32>>,
    loss: f64,
}

impl Block {
    /// `self += other`, the gradients of the phase that ran.
    fn add(&mut self, other: &Block, phase: Phase) {
        let add = |a: &mut [f32], b: &[f32]| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        };
        match phase {
            Phase::Discriminator => {
                for c in 0..2 {
                    for (a, b) in self.grad_wbar[c].iter_mut().zip(&other.grad_wbar[c]) {
                        add(a, b);
                    }
                }
                for (a, b) in self.grad_bias.iter_mut().zip(&other.grad_bias) {
                    add(a, b);
                }
            }
            Phase::Generator => {
                for (a, b) in self.grad_gen.buffers_mut().zip(other.grad_gen.buffers()) {
                    add(a, b);
                }
            }
        }
        self.loss += other.loss;
    }
}

/// Sums `blocks` into `blocks[0]` by a pairwise tree fixed by their number alone: at stride 1,
/// 0 += 1, 2 += 3, …; at stride 2, 0 += 2, 4 += 6, …; and so on.
fn tree_sum(blocks: &[Mutex<Block>], phase: Phase) {
    let n = blocks.len();
    let mut stride = 1;
    while stride < n {
        let mut i = 0;
        while i + stride < n {
            let other = blocks[i + stride].lock().unwrap_or_else(|e| e.into_inner());
            blocks[i].lock().unwrap_or_else(|e| e.into_inner()).add(&other, phase);
            i += 2 * stride;
        }
        stride *= 2;
    }
}

/// The fused engine's state and buffers.
pub struct FusedEngine {
    pub config: LearnerConfig,
    pub doc: ConfigDoc,
    pub state_dim: usize,
    pub gen_shape: GenShape,
    pub phi_shape: PhiShape,
    pub generator: GenParams,
    pub target: GenParams,
    pub phi: PhiParams,
    pub adam_generator: Moments<GenParams>,
    pub adam_phi: Moments<PhiMoments>,
    /// Iterations completed.
    pub step: u64,
    draws: Draws,
    batch: WindowBatch,
    pool: Pool,
    workers: Vec<Mutex<Worker>>,
    blocks: Vec<Mutex<Block>>,
    spectral: [Vec<Spectral>; 2],
    inner: FusedKernel,
    outer: Outer,
    sampler: HorizonSampler,
    adam: AdamConfig,
    grad_gen: GenParams,
    grad_phi: PhiMoments,
}

fn to_vec<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 tensor data")
}

/// Generator parameters copied from a burn module (same layout).
pub fn gen_from_burn<B: Backend>(g: &Generator<B>) -> GenParams {
    GenParams {
        weights: g.weights.iter().map(|w| to_vec(w.val())).collect(),
        biases: g.biases.iter().map(|b| to_vec(b.val())).collect(),
    }
}

/// φ's parameters and spectral-norm vectors copied from a burn module.
pub fn phi_from_burn<B: Backend>(d: &Discriminator<B>) -> PhiParams {
    PhiParams {
        weights: d.layers().map(|l| to_vec(l.weight.val())).collect(),
        biases: d.layers().map(|l| to_vec(l.bias.val())).collect(),
        u: d.layers().map(|l| to_vec(l.u())).collect(),
    }
}

impl FusedEngine {
    /// A fresh model for states of `state_dim` floats, initialised exactly as the burn engine's
    /// (the same modules are built from the same seeds and copied), on `train.threads` threads.
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize) -> Result<FusedEngine> {
        if let Some(why) = unsupported(&config) {
            bail!("the fused engine does not cover {why}");
        }
        let m = &config.model;
        let device = Default::default();
        let generator = GeneratorConfig::new(m.num_outer, m.latent_dims, state_dim, m.generator_hidden)
            .with_layers(m.generator_layers)
            .init::<NdArray>(&device, rng::derive_seed(config.seed, &["learner".into(), "generator".into()]));
        let disc_config =
            DiscriminatorConfig::new(state_dim, m.discriminator_hidden).with_embedding_dim(m.embedding_dim);
        let discriminator = disc_config
            .init::<NdArray>(&device, rng::derive_seed(config.seed, &["learner".into(), "discriminator".into()]));
        let gen_shape = GenShape::new(m.num_outer, m.latent_dims, state_dim, m.generator_hidden, m.generator_layers);
        let phi_shape = PhiShape {
            state: state_dim,
            hidden: m.discriminator_hidden,
            blocks: disc_config.blocks,
            per_block: disc_config.layers_per_block + 1,
            embedding: m.embedding_dim,
        };
        let generator = gen_from_burn(&generator);
        let phi = phi_from_burn(&discriminator);
        let threads = match config.train.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            t => t,
        };
        Ok(Self::from_parts(config, doc, state_dim, gen_shape, phi_shape, generator, phi, threads))
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        config: LearnerConfig,
        doc: ConfigDoc,
        state_dim: usize,
        gen_shape: GenShape,
        phi_shape: PhiShape,
        generator: GenParams,
        phi: PhiParams,
        threads: usize,
    ) -> FusedEngine {
        let m = &config.model;
        let b = config.train.batch_size;
        let num_blocks = b.div_ceil(BLOCK_ROWS);
        let threads = threads.clamp(1, num_blocks);
        let (o, i, z, s, e) = (m.num_outer, m.num_inner, m.latent_dims, state_dim, m.embedding_dim);
        let layers = phi_shape.layers();
        let blocks = (0..num_blocks)
            .map(|k| {
                Mutex::new(Block {
                    rows: k * BLOCK_ROWS..((k + 1) * BLOCK_ROWS).min(b),
                    grad_gen: GenParams::zeros(&gen_shape),
                    grad_wbar: [0, 1]
                        .map(|_| (0..layers).map(|k| vec![0.0; phi_shape.dims(k).0 * phi_shape.dims(k).1]).collect()),
                    grad_bias: (0..layers).map(|k| vec![0.0; phi_shape.dims(k).1]).collect(),
                    loss: 0.0,
                })
            })
            .collect();
        let workers = (0..threads)
            .map(|_| {
                let nb = BLOCK_ROWS.min(b);
                let n = nb * o * i;
                Mutex::new(Worker {
                    z_rows: vec![0.0; n * z],
                    z: vec![0.0; n * z],
                    z_boot: vec![0.0; n * z],
                    horizons: vec![0; n],
                    s0: vec![0.0; nb * s],
                    sh: vec![0.0; nb * s],
                    online: GenActs::new(&gen_shape, nb, i),
                    boot: GenActs::new(&gen_shape, nb, i),
                    x: vec![0.0; n * s],
                    y: vec![0.0; n * s],
                    xe: vec![0.0; n * e],
                    ye: vec![0.0; n * e],
                    gxe: vec![0.0; n * e],
                    gye: vec![0.0; n * e],
                    gx_rows: vec![0.0; n * s],
                    gx_atoms: vec![0.0; n * s],
                    phi_x: PhiActs::new(&phi_shape, n),
                    phi_y: PhiActs::new(&phi_shape, n),
                    mmd: MmdScratch::new(o, i, e),
                })
            })
            .collect();
        let phi_zeros = || PhiMoments {
            weights: phi.weights.iter().map(|w| vec![0.0; w.len()]).collect(),
            biases: phi.biases.iter().map(|b| vec![0.0; b.len()]).collect(),
        };
        let outer = Outer {
            kernel: FusedKernel::new(&m.outer()).expect("checked by `unsupported`"),
            median: m.outer_bandwidth() == Bandwidth::Median,
            fixed_bandwidth: match m.outer_bandwidth() {
                Bandwidth::Fixed(h) => h as f32,
                Bandwidth::Median => 1.0,
            },
        };
        let layers = phi_shape.layers();
        FusedEngine {
            inner: FusedKernel::new(&m.inner()).expect("checked by `unsupported`"),
            outer,
            sampler: HorizonSampler::new(m.gamma, m.horizon, m.cumulant_is_source_state),
            adam: AdamConfig::new(config.train.learning_rate, config.train.adam_eps),
            draws: Draws::new(config.seed),
            batch: WindowBatch::default(),
            pool: Pool::new(threads),
            workers,
            blocks,
            spectral: [0, 1].map(|_| (0..layers).map(|_| Spectral::default()).collect()),
            adam_generator: Moments { m1: GenParams::zeros(&gen_shape), m2: GenParams::zeros(&gen_shape), time: 0 },
            adam_phi: Moments { m1: phi_zeros(), m2: phi_zeros(), time: 0 },
            grad_gen: GenParams::zeros(&gen_shape),
            grad_phi: phi_zeros(),
            target: generator.clone(),
            generator,
            phi,
            gen_shape,
            phi_shape,
            step: 0,
            state_dim,
            config,
            doc,
        }
    }

    /// Threads the engine runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// One iteration: D step, G step, Polyak; returns the loss of each step (before the D step's
    /// sign flip). A non-finite loss stops before any parameter changes in that step.
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        let iteration = self.step + 1;
        let d = self.phase(&mut data, Phase::Discriminator)?;
        let g = self.phase(&mut data, Phase::Generator)?;
        let tau = self.config.train.target_update;
        for (t, o) in self.target.buffers_mut().zip(self.generator.buffers()) {
            polyak(tau, t, o);
        }
        self.step = iteration;
        Ok(IterationLosses { discriminator: d, generator: g })
    }

    /// One step: windows, spectral norm, every thread's rows, the reduction, Adam.
    fn phase<S: WindowSource>(&mut self, data: &mut S, phase: Phase) -> Result<f64, TrainError> {
        let iteration = self.step + 1;
        let m = &self.config.model;
        let (b, h) = (self.config.train.batch_size, m.horizon);
        let mut window_rng = self.draws.windows(iteration, phase);
        data.next_batch(&mut window_rng, b, h, &mut self.batch)
            .map_err(|source| TrainError::Data { iteration, source })?;
        // Spectral norm: the D step chains lhs (u → u₁) and rhs (u₁ → u₂); the G step runs one
        // power iteration for both calls and keeps nothing.
        let ps = &self.phi_shape;
        for k in 0..ps.layers() {
            let (din, dout) = ps.dims(k);
            let [first, second] = &mut self.spectral;
            first[k].compute(&self.phi.weights[k], &self.phi.u[k], din, dout);
            if phase == Phase::Discriminator {
                second[k].compute(&self.phi.weights[k], &first[k].u_new, din, dout);
            }
        }
        {
            // Thread t takes blocks t, t + T, t + 2T, …; which thread computes a block changes nothing.
            let this = &*self;
            let threads = this.workers.len();
            this.pool.run(&|t| {
                let mut w = this.workers[t].lock().unwrap_or_else(|e| e.into_inner());
                for k in (t..this.blocks.len()).step_by(threads) {
                    let mut block = this.blocks[k].lock().unwrap_or_else(|e| e.into_inner());
                    this.rows(&mut w, &mut block, iteration, phase);
                }
            });
        }
        tree_sum(&self.blocks, phase);
        let loss = self.blocks[0].lock().unwrap_or_else(|e| e.into_inner()).loss / b as f64;
        if !loss.is_finite() {
            let name = if phase == Phase::Discriminator { "discriminator" } else { "generator" };
            return Err(TrainError::NonFinite { iteration, phase: name, value: loss });
        }
        match phase {
            Phase::Discriminator => self.apply_discriminator(),
            Phase::Generator => self.apply_generator(),
        }
        Ok(loss)
    }

    /// Takes the summed φ gradients (block 0 after [`tree_sum`]) through σ and steps Adam; then
    /// keeps the chained u₂.
    fn apply_discriminator(&mut self) {
        let ps = &self.phi_shape;
        let total = self.blocks[0].lock().unwrap_or_else(|e| e.into_inner());
        for k in 0..ps.layers() {
            let (din, dout) = ps.dims(k);
            let gw = &mut self.grad_phi.weights[k];
            gw.fill(0.0);
            for call in 0..2 {
                // ∂L/∂W̄ of this call, through this call's σ.
                self.spectral[call][k].backward(&total.grad_wbar[call][k], din, dout, gw);
            }
            self.grad_phi.biases[k].copy_from_slice(&total.grad_bias[k]);
        }
        drop(total);
        let mo = &mut self.adam_phi;
        mo.time += 1;
        for k in 0..ps.layers() {
            self.adam.step(
                mo.time,
                &mut self.phi.weights[k],
                &self.grad_phi.weights[k],
                &mut mo.m1.weights[k],
                &mut mo.m2.weights[k],
            );
            self.adam.step(
                mo.time,
                &mut self.phi.biases[k],
                &self.grad_phi.biases[k],
                &mut mo.m1.biases[k],
                &mut mo.m2.biases[k],
            );
            self.phi.u[k].copy_from_slice(&self.spectral[1][k].u_new);
        }
    }

    fn apply_generator(&mut self) {
        let total = self.blocks[0].lock().unwrap_or_else(|e| e.into_inner());
        for (a, g) in self.grad_gen.buffers_mut().zip(total.grad_gen.buffers()) {
            a.copy_from_slice(g);
        }
        drop(total);
        let mo = &mut self.adam_generator;
        mo.time += 1;
        let params = self.generator.buffers_mut().zip(self.grad_gen.buffers());
        for ((p, g), (m1, m2)) in params.zip(mo.m1.buffers_mut().zip(mo.m2.buffers_mut())) {
            self.adam.step(mo.time, p, g, m1, m2);
        }
    }

    /// The whole forward and backward pass of one block of rows, on one thread's buffers; the
    /// block's gradients and loss are overwritten.
    fn rows(&self, w: &mut Worker, blk: &mut Block, iteration: u64, phase: Phase) {
        let m = &self.config.model;
        let (o, i, zd, s, e, h) = (m.num_outer, m.num_inner, m.latent_dims, self.state_dim, m.embedding_dim, m.horizon);
        let rows = blk.rows.clone();
        let nb = rows.len();
        let (per_row, n) = (o * i, nb * o * i);
        let h1 = h + 1;
        let obs = &self.batch.observations[rows.start * h1 * s..rows.end * h1 * s];
        let types = &self.batch.step_types[rows.start * h1..rows.end * h1];
        for r in 0..nb {
            w.s0[r * s..(r + 1) * s].copy_from_slice(&obs[r * h1 * s..r * h1 * s + s]);
            w.sh[r * s..(r + 1) * s].copy_from_slice(&obs[(r * h1 + h) * s..(r * h1 + h + 1) * s]);
        }
        // Latents, drawn per row as [O, I, Z] and laid out atom-major for the generator.
        let to_atoms = |src: &[f32], dst: &mut [f32]| {
            for r in 0..nb {
                for a in 0..o {
                    let from = &src[((r * o + a) * i) * zd..((r * o + a + 1) * i) * zd];
                    dst[(a * nb + r) * i * zd..(a * nb + r + 1) * i * zd].copy_from_slice(from);
                }
            }
        };
        // The buffers are sized for a full block; the batch's last block may be shorter.
        let z_rows = &mut w.z_rows[..n * zd];
        self.draws.latents(iteration, phase, Purpose::Online, rows.clone(), per_row * zd, z_rows);
        to_atoms(z_rows, &mut w.z);
        self.draws.latents(iteration, phase, Purpose::Bootstrap, rows.clone(), per_row * zd, z_rows);
        to_atoms(z_rows, &mut w.z_boot);
        self.draws.horizons(iteration, phase, &self.sampler, rows.clone(), types, per_row, &mut w.horizons[..n]);

        // The Bellman target Y [rows, O, I, S].
        gen_forward(&self.gen_shape, &self.target, &w.z_boot, &w.sh, nb, i, &mut w.boot);
        for r in 0..nb {
            let window = &types[r * h1..(r + 1) * h1];
            let bootstraps = m.bootstrap && !window.contains(&STEP_LAST);
            for a in 0..o {
                for k in 0..i {
                    let j = w.horizons[(r * o + a) * i + k] as usize;
                    let dst = &mut w.y[((r * o + a) * i + k) * s..((r * o + a) * i + k + 1) * s];
                    if bootstraps && j == h {
                        let src = ((a * nb + r) * i + k) * s;
                        dst.copy_from_slice(&w.boot.out[src..src + s]);
                    } else {
                        dst.copy_from_slice(&obs[(r * h1 + j) * s..(r * h1 + j + 1) * s]);
                    }
                }
            }
        }
        // X [rows, O, I, S] from the online generator.
        gen_forward(&self.gen_shape, &self.generator, &w.z, &w.s0, nb, i, &mut w.online);
        for r in 0..nb {
            for a in 0..o {
                let src = &w.online.out[(a * nb + r) * i * s..(a * nb + r + 1) * i * s];
                w.x[(r * o + a) * i * s..(r * o + a + 1) * i * s].copy_from_slice(src);
            }
        }
        // φ on both sides.
        let layers = self.phi_shape.layers();
        let call = |c: usize| -> Vec<&[f32]> {
            let c = if phase == Phase::Discriminator { c } else { 0 };
            (0..layers).map(|k| self.spectral[c][k].w_bar.as_slice()).collect()
        };
        let (wx, wy) = (call(0), call(1));
        phi_forward(&self.phi_shape, &wx, &self.phi.biases, &w.x, n, &mut w.phi_x, &mut w.xe);
        phi_forward(&self.phi_shape, &wy, &self.phi.biases, &w.y, n, &mut w.phi_y, &mut w.ye);
        // The loss of each row and its gradient (the D step ascends: scale −1/B).
        let bsz = self.config.train.batch_size as f32;
        let (scale, needs) = match phase {
            Phase::Discriminator => (-1.0 / bsz, Needs { x: true, y: true }),
            Phase::Generator => (1.0 / bsz, Needs { x: true, y: false }),
        };
        let shape = RowShape { o, i, e };
        let pe = per_row * e;
        let mut loss = 0.0f64;
        for r in 0..nb {
            let (gx, gy) = (&mut w.gxe[r * pe..(r + 1) * pe], &mut w.gye[r * pe..(r + 1) * pe]);
            let l = delta_row(
                &w.xe[r * pe..(r + 1) * pe],
                &w.ye[r * pe..(r + 1) * pe],
                shape,
                &self.inner,
                &self.outer,
                scale,
                needs,
                gx,
                gy,
                &mut w.mmd,
            );
            loss += f64::from(l);
        }
        blk.loss = loss;
        match phase {
            Phase::Discriminator => {
                let [gx_w, gy_w] = &mut blk.grad_wbar;
                for g in gx_w.iter_mut().chain(gy_w.iter_mut()).chain(blk.grad_bias.iter_mut()) {
                    g.fill(0.0);
                }
                phi_backward(
                    &self.phi_shape,
                    &wx,
                    &w.x,
                    n,
                    &mut w.phi_x,
                    &w.gxe,
                    Some((gx_w, &mut blk.grad_bias)),
                    None,
                );
                phi_backward(
                    &self.phi_shape,
                    &wy,
                    &w.y,
                    n,
                    &mut w.phi_y,
                    &w.gye,
                    Some((gy_w, &mut blk.grad_bias)),
                    None,
                );
            }
            Phase::Generator => {
                phi_backward(&self.phi_shape, &wx, &w.x, n, &mut w.phi_x, &w.gxe, None, Some(&mut w.gx_rows));
                for r in 0..nb {
                    for a in 0..o {
                        let src = &w.gx_rows[(r * o + a) * i * s..(r * o + a + 1) * i * s];
                        w.gx_atoms[(a * nb + r) * i * s..(a * nb + r + 1) * i * s].copy_from_slice(src);
                    }
                }
                for g in blk.grad_gen.buffers_mut() {
                    g.fill(0.0);
                }
                gen_backward(
                    &self.gen_shape,
                    &self.generator,
                    &w.z,
                    &w.s0,
                    nb,
                    i,
                    &mut w.online,
                    &w.gx_atoms,
                    &mut blk.grad_gen,
                );
            }
        }
    }

    /// Every parameter, target parameter, Adam moment and spectral-norm vector as a named array
    /// (checkpoint format v2).
    pub fn to_arrays(&self) -> Vec<Array> {
        let gs = &self.gen_shape;
        let mut out = Vec::new();
        let gen = |out: &mut Vec<Array>, prefix: &str, p: &GenParams| {
            for l in 0..gs.layers() {
                let (i, o) = (gs.dims[l], gs.dims[l + 1]);
                out.push(Array::new(format!("{prefix}.{l}.weight"), vec![gs.atoms, i, o], p.weights[l].clone()));
                out.push(Array::new(format!("{prefix}.{l}.bias"), vec![gs.atoms, o], p.biases[l].clone()));
            }
        };
        gen(&mut out, "generator", &self.generator);
        gen(&mut out, "target", &self.target);
        gen(&mut out, "adam.generator.m1", &self.adam_generator.m1);
        gen(&mut out, "adam.generator.m2", &self.adam_generator.m2);
        let ps = &self.phi_shape;
        for k in 0..ps.layers() {
            let (i, o) = ps.dims(k);
            out.push(Array::new(format!("discriminator.{k}.weight"), vec![i, o], self.phi.weights[k].clone()));
            out.push(Array::new(format!("discriminator.{k}.bias"), vec![o], self.phi.biases[k].clone()));
            out.push(Array::new(format!("discriminator.{k}.u"), vec![o], self.phi.u[k].clone()));
            for (name, mo) in [("m1", &self.adam_phi.m1), ("m2", &self.adam_phi.m2)] {
                out.push(Array::new(
                    format!("adam.discriminator.{name}.{k}.weight"),
                    vec![i, o],
                    mo.weights[k].clone(),
                ));
                out.push(Array::new(format!("adam.discriminator.{name}.{k}.bias"), vec![o], mo.biases[k].clone()));
            }
        }
        out
    }

    /// The engine's part of `state.json`.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::json!({
            "engine": "fused",
            "step": self.step,
            "rng_counter": self.step,
            "state_dim": self.state_dim,
            "adam_generator_time": self.adam_generator.time,
            "adam_discriminator_time": self.adam_phi.time,
        })
    }

    /// Loads a verified v2 checkpoint into this engine (shapes must match this model).
    pub fn load(&mut self, mut c: Checkpoint) -> Result<()> {
        let state_dim = c.state_u64("state_dim")? as usize;
        if state_dim != self.state_dim {
            bail!("the checkpoint is for states of {state_dim} floats, this run's data has {}", self.state_dim);
        }
        let gs = self.gen_shape.clone();
        let mut gen = |prefix: &str, p: &mut GenParams| -> Result<()> {
            for l in 0..gs.layers() {
                let (w, b) = gs.layer_sizes(l);
                p.weights[l] = c.take(&format!("{prefix}.{l}.weight"), w)?;
                p.biases[l] = c.take(&format!("{prefix}.{l}.bias"), b)?;
            }
            Ok(())
        };
        gen("generator", &mut self.generator)?;
        gen("target", &mut self.target)?;
        gen("adam.generator.m1", &mut self.adam_generator.m1)?;
        gen("adam.generator.m2", &mut self.adam_generator.m2)?;
        for k in 0..self.phi_shape.layers() {
            let (i, o) = self.phi_shape.dims(k);
            self.phi.weights[k] = c.take(&format!("discriminator.{k}.weight"), i * o)?;
            self.phi.biases[k] = c.take(&format!("discriminator.{k}.bias"), o)?;
            self.phi.u[k] = c.take(&format!("discriminator.{k}.u"), o)?;
            self.adam_phi.m1.weights[k] = c.take(&format!("adam.discriminator.m1.{k}.weight"), i * o)?;
            self.adam_phi.m1.biases[k] = c.take(&format!("adam.discriminator.m1.{k}.bias"), o)?;
            self.adam_phi.m2.weights[k] = c.take(&format!("adam.discriminator.m2.{k}.weight"), i * o)?;
            self.adam_phi.m2.biases[k] = c.take(&format!("adam.discriminator.m2.{k}.bias"), o)?;
        }
        self.adam_generator.time = c.state_u64("adam_generator_time")?;
        self.adam_phi.time = c.state_u64("adam_discriminator_time")?;
        self.step = c.state_u64("step")?;
        Ok(())
    }
}
