//! The δ-model generator: O independent per-atom MLPs over [z ; s].
//!
//! The reference (`dsm/train.py::DistributionalSRGenerator`) wraps `dsm/models.py::MLP` in
//! `nn.vmap(variable_axes={"params": 0}, split_rngs=True)`, so every atom o has its own MLP
//! `[z ; s] → Dense(W) → leaky_relu → Dense(W) → leaky_relu → Dense(W) → leaky_relu → Dense(S)`,
//! with its own initialisation, and the parameters carry a leading atom axis
//! (`Dense_0.kernel (O, Z+S, W)`). This module keeps that layout: one `[O, in, out]` kernel and one
//! `[O, 1, out]` bias per layer, and a forward pass that is one batched matmul per layer over the
//! atom axis, never a loop over atoms.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{backend::Backend, Distribution, Tensor};

use super::init::lecun_normal;

/// Negative slope of every activation of the model: flax's `nn.leaky_relu` default.
pub const LEAKY_RELU_SLOPE: f64 = 0.01;

/// Sizes of a [`Generator`]; the reference's Pendulum values are O = 51, Z = 8, S = 3, W = 256.
#[derive(Config, Debug)]
pub struct GeneratorConfig {
    /// O, the number of atoms (independent MLPs).
    pub num_atoms: usize,
    /// Z, the dimension of the latent z ~ N(0, I).
    pub latent_dims: usize,
    /// S, the state dimension (the conditioning input and the output).
    pub state_dim: usize,
    /// W, the width of every hidden layer.
    pub hidden: usize,
    /// The number of hidden layers (each Dense(W) → leaky_relu); one more Dense(S) follows.
    #[config(default = 3)]
    pub layers: usize,
}

impl GeneratorConfig {
    /// A generator with flax's initialisation: kernels `lecun_normal` with fan_in = the layer's
    /// input width (each atom's own `Dense`), biases zero.
    ///
    /// Layer l draws from `common::rng::stream(seed, ["generator", l])`, so the parameters depend
    /// only on the seed and the sizes, not on the backend.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Generator<B> {
        let mut dims = vec![self.latent_dims + self.state_dim];
        dims.extend(std::iter::repeat_n(self.hidden, self.layers));
        dims.push(self.state_dim);

        let (weights, biases) = dims
            .windows(2)
            .enumerate()
            .map(|(l, pair)| {
                let (d_in, d_out) = (pair[0], pair[1]);
                let mut rng = common::rng::stream(seed, &["generator".into(), l.into()]);
                let w = lecun_normal([self.num_atoms, d_in, d_out], d_in, &mut rng, device);
                let b = Tensor::zeros([self.num_atoms, 1, d_out], device);
                (Param::from_tensor(w), Param::from_tensor(b))
            })
            .unzip();
        Generator { weights, biases }
    }
}

/// O per-atom MLPs with stacked parameters.
///
/// Layer l has `weights[l]` of shape `[O, d_in, d_out]` (atom o's kernel is `weights[l][o]`,
/// laid out `[d_in, d_out]` like burn's `Linear` and flax's `Dense`) and `biases[l]` of shape
/// `[O, 1, d_out]`. The layer widths are `Z+S → W → … → W → S`.
#[derive(Module, Debug)]
pub struct Generator<B: Backend> {
    /// Kernels, one `[O, d_in, d_out]` tensor per layer.
    pub weights: Vec<Param<Tensor<B, 3>>>,
    /// Biases, one `[O, 1, d_out]` tensor per layer.
    pub biases: Vec<Param<Tensor<B, 3>>>,
}

impl<B: Backend> Generator<B> {
    /// O, the number of atoms.
    pub fn num_atoms(&self) -> usize {
        self.weights[0].dims()[0]
    }

    /// S, the state dimension (the width of the output layer).
    pub fn state_dim(&self) -> usize {
        self.weights[self.weights.len() - 1].dims()[2]
    }

    /// Z, the latent dimension (the input width minus S).
    pub fn latent_dims(&self) -> usize {
        self.weights[0].dims()[1] - self.state_dim()
    }

    /// Applies atom o's MLP to `[z[b, o, i] ; s[b]]` for every (b, o, i).
    ///
    /// The input is the latent first, then the source state, as in `train_step.sample` of
    /// `dsm/train.py`. All atoms are evaluated at once: the input is rearranged to
    /// `[O, B·I, Z+S]` and each layer is one batched matmul against the `[O, d_in, d_out]` kernel.
    ///
    /// # Shapes
    /// - z: `[B, O, I, Z]`
    /// - s: `[B, S]`, broadcast over O and I
    /// - output: `[B, O, I, S]`
    ///
    /// # Panics
    /// If the shapes disagree with each other or with the parameters.
    pub fn forward(&self, z: Tensor<B, 4>, s: Tensor<B, 2>) -> Tensor<B, 4> {
        let [b, o, i, zd] = z.dims();
        let [bs, sd] = s.dims();
        assert_eq!(b, bs, "z has batch {b} but s has batch {bs}");
        assert_eq!(o, self.num_atoms(), "z has {o} atoms, the generator {}", self.num_atoms());
        assert_eq!(sd, self.state_dim(), "s has dimension {sd}, the generator {}", self.state_dim());
        assert_eq!(zd, self.latent_dims(), "z has dimension {zd}, the generator {}", self.latent_dims());

        let z = z.swap_dims(0, 1).reshape([o, b * i, zd]); // [O, B·I, Z]
        let s = s.reshape([1, b, 1, sd]).expand([o, b, i, sd]).reshape([o, b * i, sd]); // [O, B·I, S]
        let mut x = Tensor::cat(vec![z, s], 2); // [O, B·I, Z+S]

        let last = self.weights.len() - 1;
        for (l, (w, bias)) in self.weights.iter().zip(&self.biases).enumerate() {
            x = x.matmul(w.val()) + bias.val(); // [O, B·I, d_out]
            if l < last {
                x = leaky_relu(x, LEAKY_RELU_SLOPE);
            }
        }
        x.reshape([o, b, i, sd]).swap_dims(0, 1) // [B, O, I, S]
    }

    /// Draws `num_inner` samples from every atom at every source state: one fresh
    /// z ~ N(0, I_Z) per (b, o, i), from the backend's RNG (seed it with `B::seed`).
    ///
    /// This is the reference's training-time sampler, which draws z as (B, I, O, Z) and returns
    /// (B, O, I, S); only the order of the latent draws differs.
    ///
    /// # Shapes
    /// - s: `[B, S]`
    /// - output: `[B, O, I, S]`
    pub fn sample(&self, s: Tensor<B, 2>, num_inner: usize) -> Tensor<B, 4> {
        let [b, _] = s.dims();
        let shape = [b, self.num_atoms(), num_inner, self.latent_dims()];
        let z = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &s.device());
        self.forward(z, s)
    }

    /// The Polyak (exponential moving average) update of a target network,
    /// `θ⁻ ← τ·θ + (1 − τ)·θ⁻` (`optax.incremental_update`, `dsm/state.py::SoftTargetParamsUpdate`).
    /// Parameter ids are kept, so the target's record has the online network's layout.
    pub fn polyak_update(self, online: &Generator<B>, tau: f64) -> Generator<B> {
        let mix = |target: Vec<Param<Tensor<B, 3>>>, online: &[Param<Tensor<B, 3>>]| -> Vec<Param<Tensor<B, 3>>> {
            target
                .into_iter()
                .zip(online)
                .map(|(t, o)| {
                    let o = o.val();
                    t.map(|v| v.mul_scalar(1.0 - tau) + o.mul_scalar(tau))
                })
                .collect()
        };
        Generator { weights: mix(self.weights, &online.weights), biases: mix(self.biases, &online.biases) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{TensorData, Tolerance};

    type B = NdArray;

    fn small_config() -> GeneratorConfig {
        GeneratorConfig::new(3, 2, 4, 5)
    }

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        let mut rng = common::rng::stream(seed, &["generator-test".into()]);
        super::super::init::standard_normal(shape, &mut rng, &Default::default())
    }

    #[test]
    fn shapes_follow_the_reference_layout() {
        let device = Default::default();
        let g = small_config().init::<B>(&device, 0);
        let dims: Vec<[usize; 3]> = g.weights.iter().map(|w| w.dims()).collect();
        assert_eq!(dims, vec![[3, 6, 5], [3, 5, 5], [3, 5, 5], [3, 5, 4]]);
        assert!(g.biases.iter().all(|b| b.val().abs().max().into_scalar() == 0.0), "biases start at zero");
        assert_eq!((g.num_atoms(), g.latent_dims(), g.state_dim()), (3, 2, 4));

        let out = g.forward(random([2, 3, 7, 2], 1), random([2, 4], 2));
        assert_eq!(out.dims(), [2, 3, 7, 4]);
        let sampled = g.sample(random([2, 4], 2), 6);
        assert_eq!(sampled.dims(), [2, 3, 6, 4]);
    }

    /// Different inner samples get different latents, so (almost surely) different outputs.
    #[test]
    fn sample_draws_a_fresh_latent_per_inner_sample() {
        let device = Default::default();
        let g = small_config().init::<B>(&device, 0);
        let x: Vec<f32> = g.sample(random([1, 4], 3), 2).into_data().to_vec().unwrap();
        // [1, O=3, I=2, S=4]: compare inner sample 0 and 1 of each atom.
        for o in 0..3 {
            let base = o * 8;
            assert_ne!(x[base..base + 4], x[base + 4..base + 8], "atom {o}");
        }
    }

    /// Overwriting atom 1's kernels changes atom 1's output and leaves the others bit-identical.
    #[test]
    fn atoms_are_independent() {
        let device = Default::default();
        let mut g = small_config().init::<B>(&device, 0);
        let (z, s) = (random([2, 3, 4, 2], 4), random([2, 4], 5));
        let before = g.forward(z.clone(), s.clone());

        for w in &mut g.weights {
            let [_, d_in, d_out] = w.dims();
            let changed = w.val().slice_assign([1..2, 0..d_in, 0..d_out], Tensor::ones([1, d_in, d_out], &device));
            *w = Param::from_tensor(changed);
        }
        let after = g.forward(z, s);

        for o in 0..3 {
            let a = before.clone().slice([0..2, o..o + 1]).into_data();
            let b = after.clone().slice([0..2, o..o + 1]).into_data();
            if o == 1 {
                assert_ne!(a, b, "atom 1 must change");
            } else {
                assert_eq!(a, b, "atom {o} must not change");
            }
        }
    }

    /// Constant per-atom parameters make the output computable by hand; every hidden unit of a layer
    /// has the same value, so each layer maps a scalar h to (fan-in)·a·h + bias.
    ///
    /// Z = S = 1, W = 2. Atom 0: layer-0 kernel rows z → 0.5, s → 1.0, later kernels 0.5, biases 0.1.
    /// Atom 1: rows z → −1, s → −2, later kernels −1, biases 0. Row 0 has (z, s) = (1, 2), row 1 (1, −1).
    /// - atom 0, row 0: 0.5+2+0.1 = 2.6 → 2·0.5·2.6+0.1 = 2.7 → 2.8 → output 2·0.5·2.8+0.1 = 2.9
    /// - atom 1, row 0: −1−4 = −5 → lrelu −0.05 → 2·(−1)(−0.05) = 0.1 → −0.2 → lrelu −0.002 → output 0.004
    /// - atom 0, row 1: 0.5−1+0.1 = −0.4 → lrelu −0.004 → 0.096 → 0.196 → output 0.296
    /// - atom 1, row 1: −1+2 = 1 → −2 → lrelu −0.02 → 0.04 → output −0.08
    ///
    /// Swapping the order of z and s in the input would give 2.1… for atom 0, row 0.
    #[test]
    fn constant_weights_give_the_hand_computed_output() {
        let device = Default::default();
        let mut g = GeneratorConfig::new(2, 1, 1, 2).init::<B>(&device, 0);
        let first = TensorData::new(vec![0.5f32, 0.5, 1.0, 1.0, -1.0, -1.0, -2.0, -2.0], [2, 2, 2]);
        g.weights[0] = Param::from_tensor(Tensor::from_data(first, &device));
        for w in &mut g.weights[1..] {
            let [_, d_in, d_out] = w.dims();
            let per_atom = Tensor::<B, 1>::from_floats([0.5, -1.0], &device).reshape([2, 1, 1]);
            *w = Param::from_tensor(per_atom.expand([2, d_in, d_out]));
        }
        for b in &mut g.biases {
            let [_, _, d_out] = b.dims();
            let per_atom = Tensor::<B, 1>::from_floats([0.1, 0.0], &device).reshape([2, 1, 1]);
            *b = Param::from_tensor(per_atom.expand([2, 1, d_out]));
        }

        let z = Tensor::<B, 4>::ones([2, 2, 1, 1], &device);
        let s = Tensor::<B, 2>::from_floats([[2.0], [-1.0]], &device);
        let out = g.forward(z, s);
        let expected = TensorData::new(vec![2.9f32, 0.004, 0.296, -0.08], [2, 2, 1, 1]);
        out.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
    }

    /// The batched forward equals a per-atom, per-sample loop in f64 on the host.
    #[test]
    fn batched_forward_matches_a_per_atom_loop() {
        let device = Default::default();
        let (o, zd, sd, w, layers) = (3, 2, 3, 8, 3);
        let mut g = GeneratorConfig::new(o, zd, sd, w).with_layers(layers).init::<B>(&device, 7);
        // Non-zero biases so that they are exercised too.
        for (l, b) in g.biases.iter_mut().enumerate() {
            *b = Param::from_tensor(random(b.dims(), 100 + l as u64));
        }
        let (bsz, inner) = (2, 4);
        let z = random([bsz, o, inner, zd], 8);
        let s = random([bsz, sd], 9);
        let out: Vec<f32> = g.forward(z.clone(), s.clone()).into_data().to_vec().unwrap();

        let host = |t: Tensor<B, 3>| -> (Vec<f64>, [usize; 3]) {
            let dims = t.dims();
            (t.into_data().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect(), dims)
        };
        let ws: Vec<_> = g.weights.iter().map(|p| host(p.val())).collect();
        let bs: Vec<_> = g.biases.iter().map(|p| host(p.val())).collect();
        let zv: Vec<f32> = z.into_data().to_vec().unwrap();
        let sv: Vec<f32> = s.into_data().to_vec().unwrap();

        let mut max_err: f64 = 0.0;
        for bi in 0..bsz {
            for oi in 0..o {
                for ii in 0..inner {
                    let zoff = ((bi * o + oi) * inner + ii) * zd;
                    let mut x: Vec<f64> = zv[zoff..zoff + zd].iter().map(|&v| f64::from(v)).collect();
                    x.extend(sv[bi * sd..(bi + 1) * sd].iter().map(|&v| f64::from(v)));
                    for (l, ((wv, [_, d_in, d_out]), (bv, _))) in ws.iter().zip(&bs).enumerate() {
                        let mut y = vec![0.0; *d_out];
                        for (k, yk) in y.iter_mut().enumerate() {
                            *yk = bv[oi * d_out + k]
                                + (0..*d_in).map(|j| x[j] * wv[(oi * d_in + j) * d_out + k]).sum::<f64>();
                            if l < layers {
                                *yk = if *yk >= 0.0 { *yk } else { LEAKY_RELU_SLOPE * *yk };
                            }
                        }
                        x = y;
                    }
                    let ooff = ((bi * o + oi) * inner + ii) * sd;
                    for k in 0..sd {
                        let err = (f64::from(out[ooff + k]) - x[k]).abs() / (1.0 + x[k].abs());
                        max_err = max_err.max(err);
                    }
                }
            }
        }
        // f32 forward against f64: a few ulps per layer of width ≤ 8.
        assert!(max_err < 1e-5, "max relative error {max_err}");
    }

    /// Under autodiff every kernel and bias receives a gradient.
    #[test]
    fn every_parameter_gets_a_gradient() {
        type A = Autodiff<NdArray>;
        let device = Default::default();
        let g = small_config().init::<A>(&device, 0);
        let z = Tensor::<A, 4>::from_inner(random([2, 3, 4, 2], 1));
        let s = Tensor::<A, 2>::from_inner(random([2, 4], 2));
        let grads = g.forward(z, s).powf_scalar(2.0).sum().backward();
        for p in g.weights.iter().chain(&g.biases) {
            let grad = p.grad(&grads).expect("a gradient for every parameter");
            assert!(grad.abs().sum().into_scalar() > 0.0);
        }
    }

    #[test]
    fn polyak_update_mixes_every_parameter() {
        let device = Default::default();
        let online = GeneratorConfig::new(2, 1, 1, 3).init::<NdArray>(&device, 1);
        let target = GeneratorConfig::new(2, 1, 1, 3).init::<NdArray>(&device, 2);
        let mixed = target.clone().polyak_update(&online, 0.25);
        for (layer, m) in mixed.weights.iter().enumerate() {
            let (t, o): (Vec<f32>, Vec<f32>) = (
                target.weights[layer].val().into_data().to_vec().unwrap(),
                online.weights[layer].val().into_data().to_vec().unwrap(),
            );
            let m: Vec<f32> = m.val().into_data().to_vec().unwrap();
            for ((m, t), o) in m.iter().zip(&t).zip(&o) {
                assert!((m - (0.75 * t + 0.25 * o)).abs() < 1e-6);
            }
            assert_eq!(mixed.weights[layer].id, target.weights[layer].id);
        }
        // τ = 1 copies the online network.
        let copy = target.polyak_update(&online, 1.0);
        let a: Vec<f32> = copy.biases[0].val().into_data().to_vec().unwrap();
        let b: Vec<f32> = online.biases[0].val().into_data().to_vec().unwrap();
        assert_eq!(a, b);
    }
}
