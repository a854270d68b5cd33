//! The learned kernel features φ: R^S → R^E, a residual MLP with spectral norm on every kernel.
//!
//! The reference's discriminator (`dsm/train.py::DistributionalSRDiscriminator`, config
//! `nn.SpectralNorm(ResidualMLP(256, 2 layers/block, 2 blocks, 8 outputs))` in `dsm/configs.py`)
//! embeds every state sample, lhs and rhs alike, before the inner kernel. `dsm/models.py::ResidualMLP`
//! is
//!
//! ```text
//! x = Dense(W)(s)
//! repeat blocks:
//!     h = x;  x = leaky_relu(x)
//!     x = MLP(layers_per_block × [Dense(W) → leaky_relu], then Dense(W))(x)
//!     x = x + h
//! x = leaky_relu(x);  return Dense(E)(x)
//! ```
//!
//! which for the reference sizes is 1 + 2·3 + 1 = 8 Dense layers. flax's `SpectralNorm` wraps the
//! whole module, so every one of those kernels is spectrally normalised ([`SpectralLinear`]); the
//! residual connections plus normalised (Lipschitz ≤ 1) blocks make φ injective ("iResMLP").

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::leaky_relu;
use burn::tensor::{backend::Backend, Tensor};

use super::generator::LEAKY_RELU_SLOPE;
use super::spectral_norm::{SpectralLinear, SpectralLinearConfig};

/// Sizes of a [`Discriminator`]; the reference uses W = 256, 2 blocks of 2 hidden layers, E = 8.
#[derive(Config, Debug)]
pub struct DiscriminatorConfig {
    /// S, the input (state) dimension.
    pub state_dim: usize,
    /// W, the width of the residual stream and of every hidden layer.
    pub hidden: usize,
    /// The number of residual blocks.
    #[config(default = 2)]
    pub blocks: usize,
    /// Hidden layers (Dense(W) → leaky_relu) in each block's MLP; one more Dense(W) follows.
    #[config(default = 2)]
    pub layers_per_block: usize,
    /// E, the embedding dimension.
    #[config(default = 8)]
    pub embedding_dim: usize,
}

impl DiscriminatorConfig {
    /// A discriminator initialised as the reference: every kernel `lecun_normal`, biases zero,
    /// every spectral-norm u ~ N(0, I).
    ///
    /// The k-th Dense layer in forward order draws from
    /// `common::rng::stream(seed, ["discriminator", k])`.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Discriminator<B> {
        let mut k = 0usize;
        let mut dense = |d_input: usize, d_output: usize| {
            let mut rng = common::rng::stream(seed, &["discriminator".into(), k.into()]);
            k += 1;
            SpectralLinearConfig::new(d_input, d_output).init(device, &mut rng)
        };
        let input = dense(self.state_dim, self.hidden);
        let blocks = (0..self.blocks)
            .map(|_| ResidualBlock {
                layers: (0..=self.layers_per_block).map(|_| dense(self.hidden, self.hidden)).collect(),
            })
            .collect();
        let output = dense(self.hidden, self.embedding_dim);
        Discriminator { input, blocks, output }
    }
}

/// One residual block: `x + MLP(leaky_relu(x))`, the MLP being `layers.len() − 1` hidden layers
/// (Dense → leaky_relu) and a final Dense, all W → W.
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    /// The block MLP's Dense layers, in order.
    pub layers: Vec<SpectralLinear<B>>,
}

impl<B: Backend> ResidualBlock<B> {
    /// # Shapes
    /// - x: `[N, W]`
    /// - output: `[N, W]`
    pub fn forward(&self, x: Tensor<B, 2>, update_stats: bool) -> Tensor<B, 2> {
        let skip = x.clone();
        let mut x = leaky_relu(x, LEAKY_RELU_SLOPE);
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, update_stats);
            if k < last {
                x = leaky_relu(x, LEAKY_RELU_SLOPE);
            }
        }
        x + skip
    }
}

/// φ: the spectrally normalised residual MLP.
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    /// Dense(S → W), applied to the raw state.
    pub input: SpectralLinear<B>,
    /// The residual blocks.
    pub blocks: Vec<ResidualBlock<B>>,
    /// Dense(W → E), after a final leaky_relu.
    pub output: SpectralLinear<B>,
}

impl<B: Backend> Discriminator<B> {
    /// Every Dense layer in forward order (8 for the reference sizes).
    pub fn layers(&self) -> impl Iterator<Item = &SpectralLinear<B>> {
        std::iter::once(&self.input)
            .chain(self.blocks.iter().flat_map(|b| b.layers.iter()))
            .chain(std::iter::once(&self.output))
    }

    /// Every Dense layer in forward order, mutably.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut SpectralLinear<B>> {
        std::iter::once(&mut self.input)
            .chain(self.blocks.iter_mut().flat_map(|b| b.layers.iter_mut()))
            .chain(std::iter::once(&mut self.output))
    }

    /// E, the embedding dimension.
    pub fn embedding_dim(&self) -> usize {
        self.output.weight.dims()[1]
    }

    /// φ(x) for a batch of states.
    ///
    /// `update_stats` advances and stores every layer's spectral-norm u. The reference does so in
    /// the discriminator step only, once for lhs and once for rhs (so u moves twice per step), and
    /// discards the updates in the generator step (`dsm/train.py::train_step`).
    ///
    /// # Shapes
    /// - x: `[N, S]`
    /// - output: `[N, E]`
    pub fn forward(&self, x: Tensor<B, 2>, update_stats: bool) -> Tensor<B, 2> {
        let mut x = self.input.forward(x, update_stats); // [N, W]
        for block in &self.blocks {
            x = block.forward(x, update_stats); // [N, W]
        }
        self.output.forward(leaky_relu(x, LEAKY_RELU_SLOPE), update_stats) // [N, E]
    }

    /// φ applied to every state sample of a `[B, O, I, S]` tensor (one shared φ for all atoms, the
    /// δ-model's `inner_separate_discriminator = False`).
    ///
    /// # Shapes
    /// - x: `[B, O, I, S]`
    /// - output: `[B, O, I, E]`
    pub fn embed(&self, x: Tensor<B, 4>, update_stats: bool) -> Tensor<B, 4> {
        let [b, o, i, s] = x.dims();
        let e = self.forward(x.reshape([b * o * i, s]), update_stats); // [B·O·I, E]
        e.reshape([b, o, i, self.embedding_dim()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Param;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::TensorData;

    type B = NdArray;

    fn config() -> DiscriminatorConfig {
        DiscriminatorConfig::new(3, 16)
    }

    fn states<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        seeded_states(shape, 0)
    }

    fn seeded_states<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        let mut rng = common::rng::stream(seed, &["discriminator-test".into()]);
        super::super::init::standard_normal(shape, &mut rng, &Default::default())
    }

    fn all_u<Bk: Backend>(d: &Discriminator<Bk>) -> Vec<TensorData> {
        d.layers().map(|l| l.u().into_data()).collect()
    }

    #[test]
    fn has_eight_spectral_dense_layers_of_the_reference_shapes() {
        let d = config().init::<B>(&Default::default(), 0);
        let shapes: Vec<[usize; 2]> = d.layers().map(|l| l.weight.dims()).collect();
        let mut expected = vec![[3, 16]];
        expected.extend([[16, 16]; 6]);
        expected.push([16, 8]);
        assert_eq!(shapes, expected);
        assert_eq!(d.layers().count(), 8);
        assert!(d.layers().all(|l| l.u().dims() == [1, l.weight.dims()[1]]));
        // Each layer has its own initialisation.
        assert_ne!(d.blocks[0].layers[0].weight.val().into_data(), d.blocks[0].layers[1].weight.val().into_data());
    }

    #[test]
    fn forward_and_embed_shapes_agree() {
        let d = config().init::<B>(&Default::default(), 0);
        assert_eq!(d.forward(states([10, 3]), false).dims(), [10, 8]);
        let x = states([2, 3, 4, 3]);
        let e = d.embed(x.clone(), false);
        assert_eq!(e.dims(), [2, 3, 4, 8]);
        // embed is forward on the flattened samples.
        let flat = d.forward(x.reshape([24, 3]), false).reshape([2, 3, 4, 8]);
        assert_eq!(e.into_data(), flat.into_data());
    }

    /// The largest singular value of a row-major r×c matrix, by 5 000 power iterations on MᵀM in f64.
    fn top_singular_value(m: &[f64], r: usize, c: usize) -> f64 {
        let mut x = vec![1.0; c];
        let mut s = 0.0;
        for _ in 0..5_000 {
            let y: Vec<f64> = (0..r).map(|i| (0..c).map(|j| m[i * c + j] * x[j]).sum()).collect();
            let z: Vec<f64> = (0..c).map(|j| (0..r).map(|i| m[i * c + j] * y[i]).sum()).collect();
            let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt();
            s = norm.sqrt();
            x = z.iter().map(|v| v / norm).collect();
        }
        s
    }

    /// After repeated updating calls every layer's normalised kernel has spectral norm 1 (host f64
    /// check; σ̂ ≤ σ_max always, and the error shrinks as (σ₂/σ₁)^(2k)). Then, leaky_relu being
    /// 1-Lipschitz, φ is Lipschitz with constant ≤ 2^blocks = 4, even with kernels scaled by 50.
    #[test]
    fn converged_spectral_norm_normalises_every_kernel() {
        let mut d = config().init::<B>(&Default::default(), 1);
        for l in d.blocks.iter_mut().flat_map(|b| b.layers.iter_mut()) {
            l.weight = Param::from_tensor(l.weight.val().mul_scalar(50.0));
        }
        let x = states([64, 3]);
        for _ in 0..300 {
            d.forward(x.clone(), true);
        }
        for (k, l) in d.layers().enumerate() {
            let [r, c] = l.weight.dims();
            let w_bar: Vec<f64> =
                l.normalized_weight(false).into_data().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect();
            let s = top_singular_value(&w_bar, r, c);
            assert!((s - 1.0).abs() < 1e-4, "layer {k}: ‖W̄‖₂ = {s}");
        }

        let y = x.clone() + seeded_states([64, 3], 1).mul_scalar(0.1);
        let dx = (x.clone() - y.clone()).square().sum_dim(1).sqrt();
        let dphi = (d.forward(x, false) - d.forward(y, false)).square().sum_dim(1).sqrt();
        let ratio = (dphi / dx).max().into_scalar();
        assert!(ratio <= 4.0 * (1.0 + 1e-4), "Lipschitz ratio {ratio}");
    }

    #[test]
    fn update_stats_false_leaves_every_u_unchanged() {
        let d = config().init::<B>(&Default::default(), 2);
        let u0 = all_u(&d);
        d.forward(states([5, 3]), false);
        d.embed(states([1, 2, 3, 3]), false);
        assert_eq!(all_u(&d), u0);

        d.forward(states([5, 3]), true);
        let u1 = all_u(&d);
        assert!(u0.iter().zip(&u1).all(|(a, b)| a != b), "update_stats = true must move every u");
    }

    /// u is part of the record: into_record → load_record into a differently seeded model restores
    /// it, also through a byte recorder (what checkpoints use), and under autodiff.
    #[test]
    fn record_round_trip_keeps_u() {
        let device = Default::default();
        let d = config().init::<B>(&device, 3);
        for _ in 0..3 {
            d.forward(states([5, 3]), true);
        }
        let u = all_u(&d);
        let x = states([4, 3]);
        let y = d.forward(x.clone(), false).into_data();

        let other = config().init::<B>(&device, 4);
        assert_ne!(all_u(&other), u);
        let loaded = other.load_record(d.clone().into_record());
        assert_eq!(all_u(&loaded), u);
        assert_eq!(loaded.forward(x.clone(), false).into_data(), y);

        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(d.into_record(), ()).unwrap();
        let record = recorder.load(bytes, &device).unwrap();
        let restored = config().init::<B>(&device, 5).load_record(record);
        assert_eq!(all_u(&restored), u);
        assert_eq!(restored.forward(x, false).into_data(), y);

        type A = Autodiff<NdArray>;
        let ad = config().init::<A>(&device, 6);
        ad.forward(Tensor::from_inner(states([5, 3])), true);
        let u_ad = all_u(&ad);
        let ad_loaded = config().init::<A>(&device, 7).load_record(ad.into_record());
        assert_eq!(all_u(&ad_loaded), u_ad);
    }

    /// burn's RunningState keeps its value behind an `Arc`: clones share u, so an update through a
    /// clone is visible in the original. Callers that need an independent copy use `valid()` or a
    /// fresh `init` + `load_record`. This pins the behaviour the trainer relies on.
    #[test]
    fn clones_share_u_state() {
        let d = config().init::<B>(&Default::default(), 8);
        let u0 = all_u(&d);
        let c = d.clone();
        c.forward(states([5, 3]), true);
        assert_ne!(all_u(&d), u0);
        assert_eq!(all_u(&d), all_u(&c));
    }
}
