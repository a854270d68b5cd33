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
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Result};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;

use common::config::ConfigDoc;
use common::rng;

use super::adam::{polyak, AdamConfig};
use super::collective::Collective;
use super::kernel::FusedKernel;
use super::mmd::{delta_row, MmdScratch, Needs, Outer, RowShape};
use super::network::{
    gen_backward, gen_forward, phi_backward, phi_forward, GenActs, GenParams, GenShape, PhiActs, PhiParams, PhiShape,
    Spectral,
};
use super::pair_mmd::{pair_row, PairLoss, PairScratch};
use super::pool::Pool;
use crate::config::LearnerConfig;
use crate::loss::mmd::Bandwidth;
use crate::loss::target::HorizonSampler;
use crate::model::discriminator::{Discriminator, DiscriminatorConfig};
use crate::model::generator::{Generator, GeneratorConfig};
use crate::model::separate_discriminator::SeparateDiscriminator;
use crate::train::dataset::{WindowBatch, WindowSource, STEP_LAST};
use crate::train::draws::{Draws, Phase, Purpose};
use crate::train::trainer::{IterationLosses, TrainError};

/// Why a config cannot run on the fused engine (it then stays on burn). Every variant of
/// dsm-algorithm.md §1.1 runs on it; what is left out is the energy kernel and embeddings wider
/// than 64 floats.
pub fn unsupported(config: &LearnerConfig) -> Option<String> {
    let m = &config.model;
    if FusedKernel::new(&m.inner()).is_none() || (m.distributional && FusedKernel::new(&m.outer()).is_none()) {
        return Some("an energy kernel".into());
    }
    if config.train.discriminator_steps > 0 && m.embedding_dim > 64 {
        return Some("model.embedding_dim > 64".into());
    }
    None
}

/// What the kernels compare: the raw states (no discriminator, `train.discriminator_steps = 0`),
/// φ's embeddings, or the embeddings of one φ per (batch slot, atom)
/// (`model.inner_separate_discriminator`; see `model::separate_discriminator` for the reference
/// quirk this reproduces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    Raw,
    Shared,
    Separate,
}

impl Embedding {
    pub fn of(config: &LearnerConfig) -> Embedding {
        if config.train.discriminator_steps == 0 {
            Embedding::Raw
        } else if config.model.inner_separate_discriminator {
            Embedding::Separate
        } else {
            Embedding::Shared
        }
    }
}

/// How a row's loss is computed: the δ-model with one inner bandwidth (the self-term reuse of
/// [`delta_row`]), or pair by pair ([`pair_row`]: the γ-model, or per-pair median bandwidths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowLoss {
    Delta,
    Pairs { gamma: bool, median: bool },
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
/// replicas that keeps the tree ([`replica_blocks`]). Smaller blocks balance threads better;
/// larger ones make longer matrix products (8 rows: 400-row products at the thesis sizes, within a
/// few % of the speed of one block per thread).
pub const BLOCK_ROWS: usize = 8;

/// The blocks replica `rank` of `size` computes, out of `num_blocks`.
///
/// The blocks are padded to a power of two, P, and each replica takes P/size consecutive ones
/// (none past the end). For a power-of-two `size` that is a whole subtree of [`tree_sum`]'s tree,
/// and the replicas' sums combined by the collective's tree over ranks (a missing block or replica
/// adds exact zeros) are the one-replica sum bit for bit. Other sizes are exact up to the order of
/// the additions.
pub fn replica_blocks(num_blocks: usize, rank: usize, size: usize) -> Range<usize> {
    let padded = num_blocks.next_power_of_two().max(size);
    let per = padded.div_ceil(size);
    (rank * per).min(num_blocks)..((rank + 1) * per).min(num_blocks)
}

/// Matrix-product FLOPs of one iteration (forward and backward, both steps); the kernel
/// evaluations of the inner MMD come on top.
pub fn matmul_flops(cfg: &LearnerConfig, s: usize) -> f64 {
    let m = &cfg.model;
    let (b, o, i, z, w, l, dw, e) = (
        cfg.train.batch_size,
        m.num_outer,
        m.num_inner,
        m.latent_dims,
        m.generator_hidden,
        m.generator_layers,
        m.discriminator_hidden,
        m.embedding_dim,
    );
    let n = (b * o * i) as f64;
    let gen_fwd = 2.0 * n * (z * w + (l - 1) * w * w + w * s) as f64 + 2.0 * (b * o * s * w) as f64;
    let phi_fwd = 2.0 * n * (s * dw + 6 * dw * dw + dw * e) as f64;
    // D: target + online forward, φ forward on both sides, φ backward (weights and inputs) on both.
    let d = 2.0 * gen_fwd + 2.0 * phi_fwd + 4.0 * phi_fwd;
    // G: target + online forward, φ forward on both sides, φ input backward on X, generator backward.
    let g = 2.0 * gen_fwd + 2.0 * phi_fwd + phi_fwd + 2.0 * gen_fwd;
    d + g
}

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
    /// The separate discriminators' activations, one per (row of the block, atom), x and y calls.
    member_acts: [Vec<PhiActs>; 2],
    mmd: MmdScratch,
    pair: PairScratch,
}

/// ∂L/∂W̄ of the lhs and rhs calls and ∂L/∂b of one φ (the calls differ by σ in the D step).
#[derive(Debug, Clone, PartialEq)]
pub struct PhiGrad {
    pub wbar: [Vec<Vec<f32>>; 2],
    pub bias: Vec<Vec<f32>>,
}

impl PhiGrad {
    fn zeros(shape: &PhiShape) -> PhiGrad {
        let layers = shape.layers();
        PhiGrad {
            wbar: [0, 1].map(|_| (0..layers).map(|k| vec![0.0; shape.dims(k).0 * shape.dims(k).1]).collect()),
            bias: (0..layers).map(|k| vec![0.0; shape.dims(k).1]).collect(),
        }
    }

    fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        let [a, b] = &mut self.wbar;
        a.iter_mut().chain(b.iter_mut()).chain(self.bias.iter_mut())
    }

    fn buffers(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.wbar[0].iter().chain(self.wbar[1].iter()).chain(self.bias.iter())
    }
}

/// Gradients of one step and its summed loss: of a block of rows, or the total.
struct Grads {
    gen: GenParams,
    phi: PhiGrad,
    /// The separate discriminators': a block holds its rows' members, the total every member.
    members: Vec<PhiGrad>,
    loss: f64,
}

impl Grads {
    /// Every buffer the step of `phase` sums over rows (and a collective over replicas), in a
    /// fixed order. The separate discriminators' are not among them: each has the gradient of its
    /// one batch row, on the replica that owns the row.
    fn phase_buffers_mut(&mut self, phase: Phase, embedding: Embedding) -> Vec<&mut Vec<f32>> {
        match phase {
            Phase::Generator => self.gen.buffers_mut().collect(),
            Phase::Discriminator if embedding == Embedding::Shared => self.phi.buffers_mut().collect(),
            Phase::Discriminator => Vec::new(),
        }
    }
}

/// What one block of rows contributes.
struct Block {
    rows: Range<usize>,
    grads: Grads,
}

impl Block {
    /// `self += other` for the summed gradients of the phase that ran (the separate
    /// discriminators' are per row, never summed).
    fn add(&mut self, other: &Block, phase: Phase) {
        let add = |a: &mut [f32], b: &[f32]| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        };
        match phase {
            Phase::Discriminator => {
                for (a, b) in self.grads.phi.buffers_mut().zip(other.grads.phi.buffers()) {
                    add(a, b);
                }
            }
            Phase::Generator => {
                for (a, b) in self.grads.gen.buffers_mut().zip(other.grads.gen.buffers()) {
                    add(a, b);
                }
            }
        }
        self.grads.loss += other.grads.loss;
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
            let other = lock(&blocks[i + stride]);
            lock(&blocks[i]).add(&other, phase);
            i += 2 * stride;
        }
        stride *= 2;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A collective over host buffers, as the CPU replicas use.
pub type HostCollective = Box<dyn Collective<Buffer = Vec<f32>> + Send + Sync>;

/// The fused engine's state and buffers: one replica (the whole batch when it is the only one).
pub struct FusedEngine {
    pub config: LearnerConfig,
    pub doc: ConfigDoc,
    pub state_dim: usize,
    pub gen_shape: GenShape,
    pub phi_shape: PhiShape,
    pub embedding: Embedding,
    pub generator: GenParams,
    pub target: GenParams,
    /// The shared φ (trained when `embedding` is `Shared`; kept, untrained, otherwise, as the
    /// burn engine keeps it).
    pub phi: PhiParams,
    /// The separate discriminators, member `b·O + o` for batch slot b and atom o (empty unless
    /// `embedding` is `Separate`). A replica trains only the members of its own rows
    /// ([`FusedEngine::own_members`]); its copies of the others are as they were last gathered
    /// (`Replicas::gather_members`), as the spec's "sharded along with their batch slot" asks.
    pub members: Vec<PhiParams>,
    pub adam_generator: Moments<GenParams>,
    pub adam_phi: Moments<PhiMoments>,
    pub adam_members: Moments<Vec<PhiMoments>>,
    /// Iterations completed.
    pub step: u64,
    draws: Draws,
    batch: WindowBatch,
    pool: Pool,
    workers: Vec<Mutex<Worker>>,
    /// This replica's blocks of rows.
    blocks: Vec<Mutex<Block>>,
    /// The separate discriminators of this replica's rows.
    own_members: Range<usize>,
    spectral: [Vec<Spectral>; 2],
    member_spectral: Vec<Mutex<[Vec<Spectral>; 2]>>,
    inner: FusedKernel,
    outer: Outer,
    row_loss: RowLoss,
    sampler: HorizonSampler,
    adam: AdamConfig,
    /// The step's summed gradients (over every replica after the collective).
    total: Grads,
    pub(crate) grad_gen: GenParams,
    pub(crate) grad_phi: PhiMoments,
    collective: Option<HostCollective>,
    flat: Vec<f32>,
}

/// The normalised kernels of call `c` (0: lhs, 1: rhs): the D step's lhs call uses W̄ from
/// u → u₁ and its rhs call W̄ from u₁ → u₂; the G step uses one W̄ for both.
fn w_bars(spectral: &[Vec<Spectral>; 2], c: usize, phase: Phase, layers: usize) -> Vec<&[f32]> {
    let c = if phase == Phase::Discriminator { c } else { 0 };
    (0..layers).map(|k| spectral[c][k].w_bar.as_slice()).collect()
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

/// The members of a separate discriminator copied from a burn module, member by member.
pub fn members_from_burn<B: Backend>(d: &SeparateDiscriminator<B>) -> Vec<PhiParams> {
    let m = d.members();
    let split = |v: Vec<f32>| -> Vec<Vec<f32>> {
        let per = v.len() / m;
        v.chunks_exact(per).map(<[f32]>::to_vec).collect()
    };
    let layers: Vec<_> = d
        .layers()
        .map(|l| (split(to_vec(l.weight.val())), split(to_vec(l.bias.val())), split(to_vec(l.u()))))
        .collect();
    (0..m)
        .map(|j| PhiParams {
            weights: layers.iter().map(|l| l.0[j].clone()).collect(),
            biases: layers.iter().map(|l| l.1[j].clone()).collect(),
            u: layers.iter().map(|l| l.2[j].clone()).collect(),
        })
        .collect()
}

impl FusedEngine {
    /// A fresh model for states of `state_dim` floats, initialised exactly as the burn engine's
    /// (the same modules are built from the same seeds and copied), on `train.threads` threads.
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize) -> Result<FusedEngine> {
        let threads = match config.train.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            t => t,
        };
        Self::replica(config, doc, state_dim, threads, None)
    }

    /// One replica of a group: it computes the blocks of rows [`replica_blocks`] gives its rank,
    /// on `threads` threads, and sums gradients with the others through `collective` (`None`: the
    /// only replica).
    pub fn replica(
        config: LearnerConfig,
        doc: ConfigDoc,
        state_dim: usize,
        threads: usize,
        collective: Option<HostCollective>,
    ) -> Result<FusedEngine> {
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
        let embedding = Embedding::of(&config);
        let members = if embedding == Embedding::Separate {
            let separate = disc_config.init_separate::<NdArray>(
                config.train.batch_size,
                m.num_outer,
                &device,
                rng::derive_seed(config.seed, &["learner".into(), "separate-discriminator".into()]),
            );
            members_from_burn(&separate)
        } else {
            Vec::new()
        };
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
        Ok(Self::from_parts(config, doc, state_dim, gen_shape, phi_shape, generator, phi, members, threads, collective))
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
        members: Vec<PhiParams>,
        threads: usize,
        collective: Option<HostCollective>,
    ) -> FusedEngine {
        let m = &config.model;
        let embedding = Embedding::of(&config);
        let b = config.train.batch_size;
        let num_blocks = b.div_ceil(BLOCK_ROWS);
        let (rank, size) = collective.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
        let mine = replica_blocks(num_blocks, rank, size);
        let threads = threads.clamp(1, mine.len().max(1));
        let (o, i, z, s) = (m.num_outer, m.num_inner, m.latent_dims, state_dim);
        let emb = if embedding == Embedding::Raw { s } else { m.embedding_dim };
        let grads = |members: usize| Grads {
            gen: GenParams::zeros(&gen_shape),
            phi: PhiGrad::zeros(&phi_shape),
            members: (0..members).map(|_| PhiGrad::zeros(&phi_shape)).collect(),
            loss: 0.0,
        };
        let separate = embedding == Embedding::Separate;
        let own_members =
            if separate { (mine.start * BLOCK_ROWS).min(b) * o..(mine.end * BLOCK_ROWS).min(b) * o } else { 0..0 };
        let blocks = mine
            .map(|k| {
                let rows = k * BLOCK_ROWS..((k + 1) * BLOCK_ROWS).min(b);
                let n_members = if separate { rows.len() * o } else { 0 };
                Mutex::new(Block { rows, grads: grads(n_members) })
            })
            .collect();
        let row_loss = if m.distributional && !m.inner_adaptive_bandwidth {
            RowLoss::Delta
        } else {
            RowLoss::Pairs { gamma: !m.distributional, median: m.inner_adaptive_bandwidth }
        };
        let workers = (0..threads)
            .map(|_| {
                let nb = BLOCK_ROWS.min(b);
                let n = nb * o * i;
                let member_acts = [0, 1].map(|_| {
                    if separate {
                        (0..nb * o).map(|_| PhiActs::new(&phi_shape, i)).collect()
                    } else {
                        Vec::new()
                    }
                });
                let shared = embedding == Embedding::Shared;
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
                    xe: vec![0.0; n * emb],
                    ye: vec![0.0; n * emb],
                    gxe: vec![0.0; n * emb],
                    gye: vec![0.0; n * emb],
                    gx_rows: vec![0.0; n * s],
                    gx_atoms: vec![0.0; n * s],
                    phi_x: if shared { PhiActs::new(&phi_shape, n) } else { PhiActs::default() },
                    phi_y: if shared { PhiActs::new(&phi_shape, n) } else { PhiActs::default() },
                    member_acts,
                    mmd: if row_loss == RowLoss::Delta { MmdScratch::new(o, i, emb) } else { MmdScratch::default() },
                    pair: if row_loss == RowLoss::Delta { PairScratch::default() } else { PairScratch::new(o, i) },
                })
            })
            .collect();
        let phi_zeros = || PhiMoments {
            weights: phi.weights.iter().map(|w| vec![0.0; w.len()]).collect(),
            biases: phi.biases.iter().map(|b| vec![0.0; b.len()]).collect(),
        };
        let outer = Outer {
            kernel: FusedKernel::new(&m.outer()).unwrap_or_else(|| FusedKernel::new(&m.inner()).expect("checked")),
            median: m.outer_bandwidth() == Bandwidth::Median,
            fixed_bandwidth: match m.outer_bandwidth() {
                Bandwidth::Fixed(h) => h as f32,
                Bandwidth::Median => 1.0,
            },
        };
        let layers = phi_shape.layers();
        let n_members = members.len();
        FusedEngine {
            inner: FusedKernel::new(&m.inner()).expect("checked by `unsupported`"),
            outer,
            row_loss,
            sampler: HorizonSampler::new(m.gamma, m.horizon, m.cumulant_is_source_state),
            adam: AdamConfig::new(config.train.learning_rate, config.train.adam_eps),
            draws: Draws::new(config.seed),
            batch: WindowBatch::default(),
            pool: Pool::new(threads),
            workers,
            blocks,
            own_members,
            spectral: [0, 1].map(|_| (0..layers).map(|_| Spectral::default()).collect()),
            member_spectral: (0..n_members)
                .map(|_| Mutex::new([0, 1].map(|_| (0..layers).map(|_| Spectral::default()).collect())))
                .collect(),
            adam_generator: Moments { m1: GenParams::zeros(&gen_shape), m2: GenParams::zeros(&gen_shape), time: 0 },
            adam_phi: Moments { m1: phi_zeros(), m2: phi_zeros(), time: 0 },
            adam_members: Moments {
                m1: (0..n_members).map(|_| phi_zeros()).collect(),
                m2: (0..n_members).map(|_| phi_zeros()).collect(),
                time: 0,
            },
            total: grads(n_members),
            grad_gen: GenParams::zeros(&gen_shape),
            grad_phi: phi_zeros(),
            collective,
            flat: Vec::new(),
            target: generator.clone(),
            generator,
            phi,
            members,
            embedding,
            gen_shape,
            phi_shape,
            step: 0,
            state_dim,
            config,
            doc,
        }
    }

    /// The separate discriminators this replica trains (those of its batch rows).
    pub fn own_members(&self) -> Range<usize> {
        self.own_members.clone()
    }

    /// Threads this replica runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Whether an iteration has a discriminator step (not in the `median` variant).
    pub fn has_discriminator_step(&self) -> bool {
        self.embedding != Embedding::Raw
    }

    /// One iteration: D step (unless there is no discriminator: its loss is then NaN, as the burn
    /// engine reports it), G step, Polyak; returns the loss of each step (before the D step's sign
    /// flip). A non-finite loss stops before any parameter changes in that step.
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        let mut batch = std::mem::take(&mut self.batch);
        let result = (|| {
            let d = if self.has_discriminator_step() {
                self.draw(&mut data, Phase::Discriminator, &mut batch)?;
                self.phase(&batch, Phase::Discriminator)?
            } else {
                f64::NAN
            };
            self.draw(&mut data, Phase::Generator, &mut batch)?;
            let g = self.phase(&batch, Phase::Generator)?;
            self.finish_iteration();
            Ok(IterationLosses { discriminator: d, generator: g })
        })();
        self.batch = batch;
        result
    }

    /// Draws the windows of one step of the next iteration into `batch`.
    pub fn draw<S: WindowSource>(&self, data: &mut S, phase: Phase, batch: &mut WindowBatch) -> Result<(), TrainError> {
        let (b, h) = (self.config.train.batch_size, self.config.model.horizon);
        self.draws.fill_windows(data, self.step + 1, phase, b, h, batch)
    }

    /// The end of an iteration: Polyak averaging of the target, the step count.
    pub fn finish_iteration(&mut self) {
        let tau = self.config.train.target_update;
        for (t, o) in self.target.buffers_mut().zip(self.generator.buffers()) {
            polyak(tau, t, o);
        }
        self.step += 1;
    }

    /// One step on `batch` (the windows of the whole batch): spectral norm, this replica's blocks
    /// on its threads, the reduction (over replicas too), Adam. Returns the step's loss.
    pub fn phase(&mut self, batch: &WindowBatch, phase: Phase) -> Result<f64, TrainError> {
        let iteration = self.step + 1;
        self.spectral_norm(phase);
        {
            // Thread t takes blocks t, t + T, t + 2T, …; which thread computes a block changes nothing.
            let this = &*self;
            let threads = this.workers.len();
            this.pool.run(&|t| {
                let mut w = lock(&this.workers[t]);
                for k in (t..this.blocks.len()).step_by(threads) {
                    let mut block = lock(&this.blocks[k]);
                    this.rows(batch, &mut w, &mut block, iteration, phase);
                }
            });
        }
        self.reduce(phase).map_err(|source| TrainError::Collective { iteration, source })?;
        let loss = self.total.loss / self.config.train.batch_size as f64;
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

    /// The power iterations of this step (they depend on φ's weights only): the D step chains lhs
    /// (u → u₁) and rhs (u₁ → u₂); the G step runs one for both calls and keeps nothing. Those of
    /// the separate discriminators (this replica's own) are spread over the threads.
    fn spectral_norm(&mut self, phase: Phase) {
        let ps = &self.phi_shape;
        match self.embedding {
            Embedding::Raw => {}
            Embedding::Shared => {
                for k in 0..ps.layers() {
                    let (din, dout) = ps.dims(k);
                    let [first, second] = &mut self.spectral;
                    first[k].compute(&self.phi.weights[k], &self.phi.u[k], din, dout);
                    if phase == Phase::Discriminator {
                        second[k].compute(&self.phi.weights[k], &first[k].u_new, din, dout);
                    }
                }
            }
            Embedding::Separate => {
                let this = &*self;
                let threads = this.pool.threads();
                this.pool.run(&|t| {
                    for j in this.own_members.clone().skip(t).step_by(threads) {
                        let mut sp = lock(&this.member_spectral[j]);
                        let [first, second] = &mut *sp;
                        let member = &this.members[j];
                        for k in 0..ps.layers() {
                            let (din, dout) = ps.dims(k);
                            first[k].compute(&member.weights[k], &member.u[k], din, dout);
                            if phase == Phase::Discriminator {
                                second[k].compute(&member.weights[k], &first[k].u_new, din, dout);
                            }
                        }
                    }
                });
            }
        }
    }

    /// Sums this replica's blocks into `total` by the tree, then across replicas.
    fn reduce(&mut self, phase: Phase) -> Result<()> {
        tree_sum(&self.blocks, phase);
        let embedding = self.embedding;
        let total = &mut self.total;
        for buf in total.phase_buffers_mut(phase, embedding) {
            buf.fill(0.0);
        }
        total.loss = 0.0;
        if let Some(first) = self.blocks.first() {
            let first = lock(first);
            let summed: Vec<&Vec<f32>> = match phase {
                Phase::Generator => first.grads.gen.buffers().collect(),
                Phase::Discriminator if embedding == Embedding::Shared => first.grads.phi.buffers().collect(),
                Phase::Discriminator => Vec::new(),
            };
            let targets: Vec<&mut Vec<f32>> = match phase {
                Phase::Generator => total.gen.buffers_mut().collect(),
                Phase::Discriminator if embedding == Embedding::Shared => total.phi.buffers_mut().collect(),
                Phase::Discriminator => Vec::new(),
            };
            for (t, s) in targets.into_iter().zip(summed) {
                t.copy_from_slice(s);
            }
            total.loss = first.grads.loss;
        }
        if phase == Phase::Discriminator && embedding == Embedding::Separate {
            let o = self.config.model.num_outer;
            for block in &self.blocks {
                let block = lock(block);
                for (j, g) in block.grads.members.iter().enumerate() {
                    total.members[block.rows.start * o + j].clone_from(g);
                }
            }
        }
        let Some(collective) = &self.collective else { return Ok(()) };
        // Pack, sum over replicas, unpack; the loss travels as two f32 (its value and the rest).
        let flat = &mut self.flat;
        flat.clear();
        let local_loss = total.loss;
        let mut buffers = total.phase_buffers_mut(phase, embedding);
        for b in &buffers {
            flat.extend_from_slice(b);
        }
        let hi = local_loss as f32;
        flat.push(hi);
        flat.push((local_loss - f64::from(hi)) as f32);
        collective.all_reduce_sum(flat)?;
        let mut at = 0;
        for b in &mut buffers {
            let n = b.len();
            b.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
        drop(buffers);
        total.loss = f64::from(flat[at]) + f64::from(flat[at + 1]);
        Ok(())
    }

    /// Takes the summed φ gradients through σ and steps Adam; then keeps the chained u₂.
    fn apply_discriminator(&mut self) {
        let ps = &self.phi_shape;
        let layers = ps.layers();
        let adam = self.adam;
        // ∂L/∂W of one φ from its ∂L/∂W̄ of both calls, through each call's σ.
        #[allow(clippy::needless_range_loop)]
        let through_sigma = |spectral: &[Vec<Spectral>; 2], g: &PhiGrad, out: &mut PhiMoments| {
            for k in 0..layers {
                let (din, dout) = ps.dims(k);
                out.weights[k].fill(0.0);
                for call in 0..2 {
                    spectral[call][k].backward(&g.wbar[call][k], din, dout, &mut out.weights[k]);
                }
                out.biases[k].copy_from_slice(&g.bias[k]);
            }
        };
        let step = |time: u64, phi: &mut PhiParams, grad: &PhiMoments, m1: &mut PhiMoments, m2: &mut PhiMoments| {
            for k in 0..layers {
                adam.step(time, &mut phi.weights[k], &grad.weights[k], &mut m1.weights[k], &mut m2.weights[k]);
                adam.step(time, &mut phi.biases[k], &grad.biases[k], &mut m1.biases[k], &mut m2.biases[k]);
            }
        };
        match self.embedding {
            Embedding::Raw => {}
            Embedding::Shared => {
                through_sigma(&self.spectral, &self.total.phi, &mut self.grad_phi);
                let mo = &mut self.adam_phi;
                mo.time += 1;
                step(mo.time, &mut self.phi, &self.grad_phi, &mut mo.m1, &mut mo.m2);
                for k in 0..layers {
                    self.phi.u[k].copy_from_slice(&self.spectral[1][k].u_new);
                }
            }
            Embedding::Separate => {
                let mo = &mut self.adam_members;
                mo.time += 1;
                for j in self.own_members.clone() {
                    let sp = lock(&self.member_spectral[j]);
                    through_sigma(&sp, &self.total.members[j], &mut self.grad_phi);
                    let member = &mut self.members[j];
                    step(mo.time, member, &self.grad_phi, &mut mo.m1[j], &mut mo.m2[j]);
                    for k in 0..layers {
                        member.u[k].copy_from_slice(&sp[1][k].u_new);
                    }
                }
            }
        }
    }

    fn apply_generator(&mut self) {
        for (a, g) in self.grad_gen.buffers_mut().zip(self.total.gen.buffers()) {
            a.copy_from_slice(g);
        }
        let mo = &mut self.adam_generator;
        mo.time += 1;
        let params = self.generator.buffers_mut().zip(self.grad_gen.buffers());
        for ((p, g), (m1, m2)) in params.zip(mo.m1.buffers_mut().zip(mo.m2.buffers_mut())) {
            self.adam.step(mo.time, p, g, m1, m2);
        }
    }

    /// The whole forward and backward pass of one block of rows, on one thread's buffers; the
    /// block's gradients and loss are overwritten.
    fn rows(&self, batch: &WindowBatch, w: &mut Worker, blk: &mut Block, iteration: u64, phase: Phase) {
        let m = &self.config.model;
        let (o, i, zd, s, h) = (m.num_outer, m.num_inner, m.latent_dims, self.state_dim, m.horizon);
        let e = if self.embedding == Embedding::Raw { s } else { m.embedding_dim };
        let rows = blk.rows.clone();
        let nb = rows.len();
        let (per_row, n) = (o * i, nb * o * i);
        let h1 = h + 1;
        let obs = &batch.observations[rows.start * h1 * s..rows.end * h1 * s];
        let types = &batch.step_types[rows.start * h1..rows.end * h1];
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
        // The embeddings: φ's (shared or per member) on both sides, or the states themselves.
        let layers = self.phi_shape.layers();
        let (wx, wy) = (w_bars(&self.spectral, 0, phase, layers), w_bars(&self.spectral, 1, phase, layers));
        let pi = i * s;
        match self.embedding {
            Embedding::Raw => {}
            Embedding::Shared => {
                phi_forward(&self.phi_shape, &wx, &self.phi.biases, &w.x, n, &mut w.phi_x, &mut w.xe);
                phi_forward(&self.phi_shape, &wy, &self.phi.biases, &w.y, n, &mut w.phi_y, &mut w.ye);
            }
            Embedding::Separate => {
                for lm in 0..nb * o {
                    let member = rows.start * o + lm;
                    let sp = lock(&self.member_spectral[member]);
                    let (mx, my) = (w_bars(&sp, 0, phase, layers), w_bars(&sp, 1, phase, layers));
                    let biases = &self.members[member].biases;
                    let [ax, ay] = &mut w.member_acts;
                    let (xs, ys) = (&w.x[lm * pi..(lm + 1) * pi], &w.y[lm * pi..(lm + 1) * pi]);
                    phi_forward(&self.phi_shape, &mx, biases, xs, i, &mut ax[lm], &mut w.xe[lm * i * e..]);
                    phi_forward(&self.phi_shape, &my, biases, ys, i, &mut ay[lm], &mut w.ye[lm * i * e..]);
                }
            }
        }
        // The loss of each row and its gradient (the D step ascends: scale −1/B).
        let bsz = self.config.train.batch_size as f32;
        let (scale, needs) = match phase {
            Phase::Discriminator => (-1.0 / bsz, Needs { x: true, y: true }),
            Phase::Generator => (1.0 / bsz, Needs { x: true, y: false }),
        };
        let shape = RowShape { o, i, e };
        let pe = per_row * e;
        let (xe_all, ye_all): (&[f32], &[f32]) =
            if self.embedding == Embedding::Raw { (&w.x, &w.y) } else { (&w.xe, &w.ye) };
        let mut loss = 0.0f64;
        for r in 0..nb {
            let (xe, ye) = (&xe_all[r * pe..(r + 1) * pe], &ye_all[r * pe..(r + 1) * pe]);
            let (gx, gy) = (&mut w.gxe[r * pe..(r + 1) * pe], &mut w.gye[r * pe..(r + 1) * pe]);
            let l = match self.row_loss {
                RowLoss::Delta => delta_row(xe, ye, shape, &self.inner, &self.outer, scale, needs, gx, gy, &mut w.mmd),
                RowLoss::Pairs { gamma, median } => {
                    let loss = if gamma { PairLoss::Gamma } else { PairLoss::Delta(&self.outer) };
                    pair_row(xe, ye, shape, &self.inner, median, loss, scale, needs, gx, gy, &mut w.pair)
                }
            };
            loss += f64::from(l);
        }
        blk.grads.loss = loss;
        match phase {
            Phase::Discriminator => match self.embedding {
                Embedding::Raw => unreachable!("no discriminator step without a discriminator"),
                Embedding::Shared => {
                    let g = &mut blk.grads.phi;
                    for b in g.buffers_mut() {
                        b.fill(0.0);
                    }
                    let [gx_w, gy_w] = &mut g.wbar;
                    let (phi_x, phi_y) = (&mut w.phi_x, &mut w.phi_y);
                    phi_backward(&self.phi_shape, &wx, &w.x, n, phi_x, &w.gxe, Some((gx_w, &mut g.bias)), None);
                    phi_backward(&self.phi_shape, &wy, &w.y, n, phi_y, &w.gye, Some((gy_w, &mut g.bias)), None);
                }
                Embedding::Separate => {
                    for lm in 0..nb * o {
                        let member = rows.start * o + lm;
                        let sp = lock(&self.member_spectral[member]);
                        let (mx, my) = (w_bars(&sp, 0, phase, layers), w_bars(&sp, 1, phase, layers));
                        let g = &mut blk.grads.members[lm];
                        for b in g.buffers_mut() {
                            b.fill(0.0);
                        }
                        let [gx_w, gy_w] = &mut g.wbar;
                        let [ax, ay] = &mut w.member_acts;
                        let (xs, ys) = (&w.x[lm * pi..(lm + 1) * pi], &w.y[lm * pi..(lm + 1) * pi]);
                        let (gxs, gys) = (&w.gxe[lm * i * e..(lm + 1) * i * e], &w.gye[lm * i * e..(lm + 1) * i * e]);
                        phi_backward(&self.phi_shape, &mx, xs, i, &mut ax[lm], gxs, Some((gx_w, &mut g.bias)), None);
                        phi_backward(&self.phi_shape, &my, ys, i, &mut ay[lm], gys, Some((gy_w, &mut g.bias)), None);
                    }
                }
            },
            Phase::Generator => {
                // ∂L/∂X [rows, O, I, S], then atom-major for the generator.
                match self.embedding {
                    Embedding::Raw => w.gx_rows[..n * s].copy_from_slice(&w.gxe[..n * s]),
                    Embedding::Shared => {
                        let gx = Some(&mut w.gx_rows[..]);
                        phi_backward(&self.phi_shape, &wx, &w.x, n, &mut w.phi_x, &w.gxe, None, gx);
                    }
                    Embedding::Separate => {
                        for lm in 0..nb * o {
                            let member = rows.start * o + lm;
                            let sp = lock(&self.member_spectral[member]);
                            let mx = w_bars(&sp, 0, phase, layers);
                            let xs = &w.x[lm * pi..(lm + 1) * pi];
                            let gxs = &w.gxe[lm * i * e..(lm + 1) * i * e];
                            let gx = Some(&mut w.gx_rows[lm * pi..(lm + 1) * pi]);
                            phi_backward(&self.phi_shape, &mx, xs, i, &mut w.member_acts[0][lm], gxs, None, gx);
                        }
                    }
                }
                for r in 0..nb {
                    for a in 0..o {
                        let src = &w.gx_rows[(r * o + a) * i * s..(r * o + a + 1) * i * s];
                        w.gx_atoms[(a * nb + r) * i * s..(a * nb + r + 1) * i * s].copy_from_slice(src);
                    }
                }
                let g = &mut blk.grads.gen;
                for b in g.buffers_mut() {
                    b.fill(0.0);
                }
                gen_backward(&self.gen_shape, &self.generator, &w.z, &w.s0, nb, i, &mut w.online, &w.gx_atoms, g);
            }
        }
    }
}
