//! One discriminator φ per (batch slot, atom): the reference's `inner_separate_discriminator = True`.
//!
//! **Reference quirk, reproduced (dsm-algorithm.md §2.2, quirk Q2).** In `dsm/train.py`, with
//! `inner_separate_discriminator`, `DistributionalSRDiscriminator` wraps the spectral-normalised residual MLP in
//! two nested `nn.vmap`s: one over the batch (`split_rngs=False`) and one over the atoms (`split_rngs=True`). The
//! parameters therefore get leading dimensions `[B, O]` (UP: kernels `(64, 51, 3, 256)`, spectral-norm `u`
//! `(64, 51, 1, 256)`): every *batch slot* has its own φ as well as every atom. At initialisation the members are
//! identical across batch slots and differ across atoms. Since batch rows are random windows, slot `b` is an
//! arbitrary member of a B-strong ensemble per atom, each member seeing only the rows that land in its slot. The
//! γ-model ensemble (and the thesis SR baseline, O = 1) trains this way; here it is reproduced, not fixed.
//!
//! Layout: the `M = B·O` members are stored flattened, member `m = b·O + o`, so every layer's kernel is
//! `[M, in, out]`, its bias `[M, out]` and its spectral-norm `u` `[M, 1, out]`. Each member is exactly a
//! [`Discriminator`] (the same residual MLP, the same per-member spectral norm of every kernel, with one power
//! iteration per call), evaluated for all members at once with batched matmuls. The members are part of the
//! module record, so checkpoints hold them (and their `u`) like any other module.

use std::ops::Range;

use burn::module::{Module, Param, RunningState};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{backend::Backend, Tensor};

use super::discriminator::{Discriminator, DiscriminatorConfig};
use super::generator::LEAKY_RELU_SLOPE;
use super::spectral_norm::{SpectralLinear, L2_NORMALIZE_EPS};

/// A batch of independent spectral-normalised dense layers, one per member (see [`SpectralLinear`], whose
/// computation each member repeats).
#[derive(Module, Debug)]
pub struct SeparateSpectralLinear<B: Backend> {
    /// The kernels W, `[M, d_input, d_output]`, trainable.
    pub weight: Param<Tensor<B, 3>>,
    /// The biases, `[M, d_output]`, trainable and not normalised.
    pub bias: Param<Tensor<B, 2>>,
    /// The power-iteration vectors u, `[M, 1, d_output]`: non-trainable, persisted in the record.
    pub u: RunningState<Tensor<B, 3>>,
}

/// `x · rsqrt(Σx² + eps)` over each member's vector, as flax's `_l2_normalize`.
///
/// # Shapes
/// `x`: `[M, 1, n]` → `[M, 1, n]`.
fn l2_normalize<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let inv_norm = x.clone().square().sum_dim(2).add_scalar(L2_NORMALIZE_EPS).sqrt().recip(); // [M, 1, 1]
    x * inv_norm
}

impl<B: Backend> SeparateSpectralLinear<B> {
    /// Stacks per-member layers: `layers[m]` becomes member `m`.
    fn stack(layers: &[&SpectralLinear<B>]) -> Self {
        // Detached, so that under autodiff the stacked tensors are fresh leaves (trainable parameters).
        let weight = Tensor::stack::<3>(layers.iter().map(|l| l.weight.val()).collect(), 0).detach();
        let bias = Tensor::stack::<2>(layers.iter().map(|l| l.bias.val()).collect(), 0).detach();
        let u = Tensor::stack::<3>(layers.iter().map(|l| l.u()).collect(), 0).detach();
        SeparateSpectralLinear {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            u: RunningState::new(u),
        }
    }

    /// The stored u of every member, `[M, 1, d_output]`.
    pub fn u(&self) -> Tensor<B, 3> {
        self.u.value_sync()
    }

    /// The normalised kernels W̄ of members `members`, one power-iteration step each; with `update_stats`
    /// those members' u' are stored (the others keep theirs).
    ///
    /// # Shapes
    /// - output: `[members.len(), d_input, d_output]`
    pub fn normalized_weight(&self, members: Range<usize>, update_stats: bool) -> Tensor<B, 3> {
        let w = self.weight.val().slice([members.clone()]); // [M', in, out]
        let u_all = self.u();
        let u = u_all.clone().slice([members.clone()]).to_device(&w.device()).detach(); // [M', 1, out]
        let w_const = w.clone().detach();
        let v = l2_normalize(u.matmul(w_const.clone().swap_dims(1, 2))); // [M', 1, in]
        let u_new = l2_normalize(v.clone().matmul(w_const)); // [M', 1, out]
        let sigma = v.matmul(w.clone()).matmul(u_new.clone().swap_dims(1, 2)); // [M', 1, 1]
        if update_stats {
            self.u.update(u_all.slice_assign([members], u_new.detach()));
        }
        let zero = sigma.clone().equal_elem(0.0);
        w / sigma.mask_fill(zero, 1.0)
    }

    /// `y_m = x_m W̄_m + b_m` for members `members`.
    ///
    /// # Shapes
    /// - x: `[members.len(), N, d_input]`
    /// - output: `[members.len(), N, d_output]`
    pub fn forward(&self, x: Tensor<B, 3>, members: Range<usize>, update_stats: bool) -> Tensor<B, 3> {
        let bias = self.bias.val().slice([members.clone()]).unsqueeze_dim::<3>(1); // [M', 1, out]
        x.matmul(self.normalized_weight(members, update_stats)) + bias
    }
}

/// One residual block per member (see [`super::discriminator::ResidualBlock`]).
#[derive(Module, Debug)]
pub struct SeparateResidualBlock<B: Backend> {
    /// The block MLP's Dense layers, in order.
    pub layers: Vec<SeparateSpectralLinear<B>>,
}

/// φ_{(b,o)}: `B·O` spectral-normalised residual MLPs, one per (batch slot, atom).
#[derive(Module, Debug)]
pub struct SeparateDiscriminator<B: Backend> {
    /// Dense(S → W) of every member.
    pub input: SeparateSpectralLinear<B>,
    /// The residual blocks.
    pub blocks: Vec<SeparateResidualBlock<B>>,
    /// Dense(W → E) of every member.
    pub output: SeparateSpectralLinear<B>,
}

impl DiscriminatorConfig {
    /// `slots · atoms` discriminators of these sizes, member `b·atoms + o` for batch slot `b` and atom `o`.
    ///
    /// Atom `o`'s members are copies of `self.init(device, derive_seed(seed, ["atom", o]))`, the same for every
    /// batch slot: identical across slots, different across atoms, as the reference's nested vmaps
    /// (`split_rngs=False` over the batch) initialise them (§2.2).
    pub fn init_separate<B: Backend>(
        &self,
        slots: usize,
        atoms: usize,
        device: &B::Device,
        seed: u64,
    ) -> SeparateDiscriminator<B> {
        let per_atom: Vec<Discriminator<B>> = (0..atoms)
            .map(|o| self.init(device, common::rng::derive_seed(seed, &["atom".into(), (o as u64).into()])))
            .collect();
        let members: Vec<&Discriminator<B>> = (0..slots).flat_map(|_| per_atom.iter()).collect();
        let stack = |pick: &dyn Fn(&Discriminator<B>) -> &SpectralLinear<B>| {
            SeparateSpectralLinear::stack(&members.iter().map(|d| pick(d)).collect::<Vec<_>>())
        };
        let input = stack(&|d| &d.input);
        let blocks = (0..self.blocks)
            .map(|k| SeparateResidualBlock {
                layers: (0..=self.layers_per_block).map(|l| stack(&|d| &d.blocks[k].layers[l])).collect(),
            })
            .collect();
        let output = stack(&|d| &d.output);
        SeparateDiscriminator { input, blocks, output }
    }
}

impl<B: Backend> SeparateDiscriminator<B> {
    /// Every layer in forward order.
    pub fn layers(&self) -> impl Iterator<Item = &SeparateSpectralLinear<B>> {
        std::iter::once(&self.input)
            .chain(self.blocks.iter().flat_map(|b| b.layers.iter()))
            .chain(std::iter::once(&self.output))
    }

    /// The number of members, `B·O`.
    pub fn members(&self) -> usize {
        self.input.weight.dims()[0]
    }

    /// E, the embedding dimension.
    pub fn embedding_dim(&self) -> usize {
        self.output.weight.dims()[2]
    }

    /// φ_{(b,o)} applied to the samples of batch row `b` and atom `o`, for the rows `first_slot..first_slot + B'`
    /// of the batch (a chunk of rows uses its own slots' members). `update_stats` advances and stores the used
    /// members' spectral-norm u, as [`Discriminator::forward`] does for the shared φ.
    ///
    /// # Shapes
    /// - x: `[B', O, I, S]`
    /// - output: `[B', O, I, E]`
    ///
    /// # Panics
    /// If the rows run past the batch slots (`(first_slot + B')·O` members needed).
    pub fn embed(&self, x: Tensor<B, 4>, first_slot: usize, update_stats: bool) -> Tensor<B, 4> {
        let [b, o, i, s] = x.dims();
        let members = first_slot * o..(first_slot + b) * o;
        assert!(
            members.end <= self.members(),
            "rows {first_slot}..{} with {o} atoms need {} members, the discriminator has {}",
            first_slot + b,
            members.end,
            self.members()
        );
        let mut h = self.input.forward(x.reshape([b * o, i, s]), members.clone(), update_stats); // [M', I, W]
        for block in &self.blocks {
            let skip = h.clone();
            let mut y = leaky_relu(h, LEAKY_RELU_SLOPE);
            let last = block.layers.len() - 1;
            for (k, layer) in block.layers.iter().enumerate() {
                y = layer.forward(y, members.clone(), update_stats);
                if k < last {
                    y = leaky_relu(y, LEAKY_RELU_SLOPE);
                }
            }
            h = y + skip;
        }
        let e = self.output.forward(leaky_relu(h, LEAKY_RELU_SLOPE), members, update_stats); // [M', I, E]
        e.reshape([b, o, i, self.embedding_dim()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type B = NdArray;
    type A = Autodiff<NdArray>;

    fn config() -> DiscriminatorConfig {
        DiscriminatorConfig::new(3, 8).with_embedding_dim(4)
    }

    fn states<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
        let mut rng = common::rng::stream(seed, &["separate-discriminator-test".into()]);
        super::super::init::standard_normal(shape, &mut rng, &Default::default())
    }

    fn member<Bk: Backend, const D: usize>(t: Tensor<Bk, D>, m: usize) -> TensorData {
        t.narrow(0, m, 1).into_data()
    }

    /// The parameters have leading dimension B·O; at init they are equal across batch slots and differ across
    /// atoms, for every layer and for u.
    #[test]
    fn members_start_equal_across_slots_and_differ_across_atoms() {
        let (slots, atoms) = (3, 2);
        let d = config().init_separate::<B>(slots, atoms, &Default::default(), 7);
        assert_eq!(d.members(), 6);
        assert_eq!(d.layers().count(), 8);
        assert_eq!(d.input.weight.dims(), [6, 3, 8]);
        assert_eq!(d.output.weight.dims(), [6, 8, 4]);
        assert_eq!(d.input.u().dims(), [6, 1, 8]);
        for layer in d.layers() {
            for t in [layer.weight.val(), layer.u()] {
                for b in 1..slots {
                    for o in 0..atoms {
                        assert_eq!(member(t.clone(), b * atoms + o), member(t.clone(), o), "slot {b} atom {o}");
                    }
                }
                assert_ne!(member(t.clone(), 0), member(t.clone(), 1), "atoms 0 and 1 must differ");
            }
        }
    }

    /// Each member computes exactly what a shared [`Discriminator`] with its parameters computes: member
    /// `(b, o)` of a separate discriminator at init is atom o's discriminator, including the u update.
    #[test]
    fn each_member_is_a_discriminator() {
        let (slots, atoms) = (2, 3);
        let device = Default::default();
        let d = config().init_separate::<B>(slots, atoms, &device, 11);
        let x = states::<B, 4>([slots, atoms, 5, 3], 1);
        let e = d.embed(x.clone(), 0, true);
        for o in 0..atoms {
            let seed = common::rng::derive_seed(11, &["atom".into(), (o as u64).into()]);
            for b in 0..slots {
                let xo = x.clone().narrow(0, b, 1).narrow(1, o, 1).reshape([5, 3]);
                let got: Vec<f32> = e.clone().narrow(0, b, 1).narrow(1, o, 1).into_data().to_vec().unwrap();
                // A fresh copy of atom o's φ each slot: the slots' u updates are independent.
                let fresh = config().init::<B>(&device, seed);
                let expected: Vec<f32> = fresh.forward(xo, true).into_data().to_vec().unwrap();
                for (g, w) in got.iter().zip(&expected) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "slot {b} atom {o}: {g} vs {w}");
                }
                let u_member: Vec<f32> = member(d.input.u(), b * atoms + o).to_vec().unwrap();
                let u_single: Vec<f32> = fresh.input.u().into_data().to_vec().unwrap();
                for (g, w) in u_member.iter().zip(&u_single) {
                    assert!((g - w).abs() <= 1e-6, "u of slot {b} atom {o}");
                }
            }
        }
    }

    /// A chunk of rows uses (and with update_stats advances) only its own slots' members.
    #[test]
    fn row_chunks_use_their_own_slots() {
        let d = config().init_separate::<B>(4, 2, &Default::default(), 3);
        let x = states::<B, 4>([4, 2, 3, 3], 2);
        let whole = d.clone().embed(x.clone(), 0, false);
        let tail = d.embed(x.clone().narrow(0, 2, 2), 2, false);
        assert_eq!(tail.into_data(), whole.narrow(0, 2, 2).into_data());

        let u0 = d.input.u();
        d.embed(x.narrow(0, 1, 1), 1, true);
        let u1 = d.input.u();
        for m in 0..8 {
            let moved = member(u0.clone(), m) != member(u1.clone(), m);
            assert_eq!(moved, (2..4).contains(&m), "member {m}");
        }
    }

    /// Members receive their own gradients: the same loss on different rows gives slots different gradients,
    /// and a member whose rows do not enter the loss gets none.
    #[test]
    fn members_receive_different_gradients() {
        let d = config().init_separate::<A>(3, 2, &Default::default(), 5);
        let x = states::<A, 4>([3, 2, 4, 3], 4);
        // Only slots 0 and 1 enter the loss.
        let e = d.embed(x, 0, false).narrow(0, 0, 2);
        let grads = e.square().sum().backward();
        let g = d.input.weight.grad(&grads).unwrap(); // [6, 3, 8]
        let norms: Vec<f32> = g.square().sum_dim(2).sum_dim(1).reshape([6]).into_data().to_vec().unwrap();
        assert!(norms[..4].iter().all(|&n| n > 1e-8), "{norms:?}");
        assert!(norms[4..].iter().all(|&n| n == 0.0), "slot 2 is not in the loss: {norms:?}");
        let g: Vec<f32> = d.input.weight.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let per = 3 * 8;
        assert_ne!(g[..per], g[2 * per..3 * per], "slots 0 and 1 of atom 0 must get different gradients");
    }
}
