//! The δ-model's loss (dsm-algorithm.md §3.5) and the non-distributional γ-model loss (§3.6).
//!
//! For each batch row `b`, following `dsm/train.py::train_step.grad_fn` (the `config.distributional` branch):
//! 1. inner distances between atoms, `D_pq[o,o'] = max(0, MMD²_U(p_o, q_o'))` with the inner kernel and
//!    bandwidth 1 (`dsm/kernels.py::mmd_distance`), computed through the pair-block reduction
//!    ([`pair_block_means`] → [`inner_mmd_matrices`]);
//! 2. the median-heuristic bandwidth `h_b` over the off-diagonal entries of `Dxx` and `Dyy` and all of `Dxy`
//!    (stop-gradient, floored at 1e-6; [`median_bandwidth`]);
//! 3. the outer V-statistic `L_b = mean K(Dxx/h_b) + mean K(Dyy/h_b) − 2 mean K(Dxy/h_b)` with the outer kernel
//!    (IMQ in the reference), diagonals included ([`outer_mmd`]);
//! 4. `L = mean_b L_b` ([`delta_loss`]).
//!
//! The generator minimises `L` and the discriminator maximises it; both use this function.
//!
//! The variants of dsm-algorithm.md §1.1 select their loss through [`LossSpec`] (from `[model]`): other
//! inner/outer kernels and bandwidths ([`delta_loss_with`]; the `median` variant) or the non-distributional
//! γ-model loss ([`gamma_model_loss_with`]; the γ-model ensemble, the SR baseline and the single-step model).

use burn::tensor::{backend::Backend, Tensor};

use super::kernels::Kernel;
use super::mmd::{
    direct_inner_mmd_matrices_with, inner_mmd_matrices, median_heuristic, mmd2_batched, off_diagonal, pair_block_means,
    Bandwidth,
};
use crate::config::ModelConfig;

/// The loss a run trains, as `[model]` selects it (dsm-algorithm.md §1.1; `dsm/train.py::train_step.grad_fn`):
///
/// | variant | `distributional` | inner kernel, bandwidth | outer kernel, bandwidth |
/// |---|---|---|---|
/// | δ-model (default) | true | RQ(0.2, 0.5, 1, 2, 5), h = 1 | IMQ(1), median |
/// | γ-model ensemble / SR, single-step model | false | RQ(0.2, …, 5), h = 1 | none |
/// | `median` | true | RBF(1), median | RBF(1), median |
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    /// true: [`delta_loss_with`] (§3.5); false: [`gamma_model_loss_with`] (§3.6).
    pub distributional: bool,
    pub inner: Kernel,
    pub inner_bandwidth: Bandwidth,
    pub outer: Kernel,
    pub outer_bandwidth: Bandwidth,
}

impl LossSpec {
    /// The loss of a `[model]` section.
    pub fn from_model(m: &ModelConfig) -> Self {
        LossSpec {
            distributional: m.distributional,
            inner: m.inner(),
            inner_bandwidth: m.inner_bandwidth(),
            outer: m.outer(),
            outer_bandwidth: m.outer_bandwidth(),
        }
    }

    /// The loss on embedded samples (the generator minimises it, the discriminator maximises it).
    ///
    /// # Shapes
    /// - `xe`, `ye`: `[B, O, I, E]` (`I ≥ 2`);
    /// - returns `[1]`.
    pub fn loss<B: Backend>(&self, xe: Tensor<B, 4>, ye: Tensor<B, 4>) -> Tensor<B, 1> {
        if self.distributional {
            delta_loss_with(xe, ye, &self.inner, self.inner_bandwidth, &self.outer, self.outer_bandwidth)
        } else {
            gamma_model_loss_with(xe, ye, &self.inner, self.inner_bandwidth)
        }
    }
}

/// The inner distance matrices of the δ-model loss, clipped at 0 (`dsm/kernels.py::mmd_distance`): step 1.
///
/// The clip makes every diagonal entry of `Dxx`/`Dyy` exactly 0 (`MMD²_U(X, X) ≤ 0`) and kills the gradient of
/// every clipped entry.
///
/// # Shapes
/// - `xe`, `ye`: `[B, O, I, E]` embedded samples (`I ≥ 2`);
/// - returns `(Dxx, Dyy, Dxy)`, each `[B, O, O]`.
pub fn inner_distances<B: Backend>(
    xe: Tensor<B, 4>,
    ye: Tensor<B, 4>,
    inner: &Kernel,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let (dxx, dyy, dxy) = inner_mmd_matrices(pair_block_means(xe, ye, inner));
    (dxx.clamp_min(0.0), dyy.clamp_min(0.0), dxy.clamp_min(0.0))
}

/// The outer median-heuristic bandwidth of each batch row: the median of the `2·O(O−1) + O²` values
/// `{Dxx off-diagonal} ∪ {Dyy off-diagonal} ∪ {Dxy all}` (the reference sets the two diagonals to NaN and takes
/// `nanmedian`), the mean of the two middle values for an even count, floored at 1e-6 and detached.
///
/// Computed with a tensor sort of the `[B, 2·O(O−1) + O²]` values ([`median_heuristic`]); on CUDA burn 0.21
/// does that sort on the host, which synchronises the device once per call.
///
/// # Shapes
/// - `dxx`, `dyy`, `dxy`: `[B, O, O]`;
/// - returns `[B]`.
pub fn median_bandwidth<B: Backend>(dxx: Tensor<B, 3>, dyy: Tensor<B, 3>, dxy: Tensor<B, 3>) -> Tensor<B, 1> {
    let [b, o, _] = dxy.dims();
    let values = Tensor::cat(vec![off_diagonal(dxx), off_diagonal(dyy), dxy.reshape([b, o * o])], 1);
    median_heuristic(values)
}

/// The outer V-statistic MMD² of each batch row, with a given bandwidth per row (step 3):
/// `L_b = mean_{o,o'} K(Dxx/h_b) + mean K(Dyy/h_b) − 2 mean K(Dxy/h_b)` (`dsm/kernels.py::mmd` with
/// `from_samples=False`), all `O²` terms including the diagonals.
///
/// # Shapes
/// - `dxx`, `dyy`, `dxy`: `[B, O, O]`; `h`: `[B]`;
/// - returns `[B]`.
pub fn outer_mmd<B: Backend>(
    dxx: Tensor<B, 3>,
    dyy: Tensor<B, 3>,
    dxy: Tensor<B, 3>,
    h: Tensor<B, 1>,
    outer: &Kernel,
) -> Tensor<B, 1> {
    let b = dxy.dims()[0];
    let h = h.reshape([b, 1, 1]);
    let mean = |d: Tensor<B, 3>| outer.apply(d.div(h.clone())).mean_dim(2).mean_dim(1).reshape([b]);
    mean(dxx) + mean(dyy) - mean(dxy).mul_scalar(2.0)
}

/// The δ-model loss `L = mean_b L_b` (dsm-algorithm.md §3.5; `dsm/train.py::train_step.grad_fn`, distributional
/// branch): inner MMD²_U with `inner` at bandwidth 1, clipped at 0; outer V-statistic with `outer` at the
/// median-heuristic bandwidth of each row.
///
/// Gradients flow to `xe` and `ye` through the inner distances, never through the bandwidth.
///
/// # Shapes
/// - `xe`: `[B, O, I, E]` embedded model samples, `ye`: `[B, O, I, E]` embedded target samples (`I ≥ 2`);
/// - returns `[1]`.
pub fn delta_loss<B: Backend>(xe: Tensor<B, 4>, ye: Tensor<B, 4>, inner: &Kernel, outer: &Kernel) -> Tensor<B, 1> {
    let (dxx, dyy, dxy) = inner_distances(xe, ye, inner);
    let h = median_bandwidth(dxx.clone(), dyy.clone(), dxy.clone());
    outer_mmd(dxx, dyy, dxy, h, outer).mean()
}

/// [`delta_loss`] with any inner and outer bandwidths (§3.4–§3.5): with [`Bandwidth::Median`] for the inner
/// kernel, each of the `3·O²` inner MMD²_U gets its own median heuristic (the `median` variant; computed pair by
/// pair, [`direct_inner_mmd_matrices_with`]); with `Fixed(h)` for the outer kernel every row uses `h` instead of
/// its median. `(Fixed(1), Median)` is [`delta_loss`].
///
/// # Shapes
/// - `xe`, `ye`: `[B, O, I, E]` (`I ≥ 2`);
/// - returns `[1]`.
pub fn delta_loss_with<B: Backend>(
    xe: Tensor<B, 4>,
    ye: Tensor<B, 4>,
    inner: &Kernel,
    inner_bandwidth: Bandwidth,
    outer: &Kernel,
    outer_bandwidth: Bandwidth,
) -> Tensor<B, 1> {
    let (b, device) = (xe.dims()[0], xe.device());
    let (dxx, dyy, dxy) = match inner_bandwidth {
        Bandwidth::Fixed(1.0) => inner_distances(xe, ye, inner),
        bandwidth => {
            let (dxx, dyy, dxy) = direct_inner_mmd_matrices_with(xe, ye, inner, bandwidth);
            (dxx.clamp_min(0.0), dyy.clamp_min(0.0), dxy.clamp_min(0.0))
        }
    };
    let h = match outer_bandwidth {
        Bandwidth::Median => median_bandwidth(dxx.clone(), dyy.clone(), dxy.clone()),
        Bandwidth::Fixed(h) => Tensor::full([b], h, &device),
    };
    outer_mmd(dxx, dyy, dxy, h, outer).mean()
}

/// The non-distributional loss of the γ-model ensemble (dsm-algorithm.md §3.6; `dsm/train.py`, the
/// `not config.distributional` branch): `mean_{b,o} MMD²_U(xe[b,o], ye[b,o])` with `inner` at bandwidth 1. Each
/// atom is compared with its own target only; no clip, no outer kernel.
///
/// # Shapes
/// - `xe`, `ye`: `[B, O, I, E]` (`I ≥ 2`);
/// - returns `[1]`.
pub fn gamma_model_loss<B: Backend>(xe: Tensor<B, 4>, ye: Tensor<B, 4>, inner: &Kernel) -> Tensor<B, 1> {
    gamma_model_loss_with(xe, ye, inner, Bandwidth::Fixed(1.0))
}

/// [`gamma_model_loss`] with any inner bandwidth (the median heuristic gives each (b, o) its own).
///
/// With `inner_separate_discriminator` the embeddings come from φ_{(b,o)}, one discriminator per batch slot
/// and atom ([`crate::model::separate_discriminator`]); the loss itself is the same.
///
/// # Shapes
/// - `xe`, `ye`: `[B, O, I, E]` (`I ≥ 2`);
/// - returns `[1]`.
pub fn gamma_model_loss_with<B: Backend>(
    xe: Tensor<B, 4>,
    ye: Tensor<B, 4>,
    inner: &Kernel,
    bandwidth: Bandwidth,
) -> Tensor<B, 1> {
    let [b, o, i, e] = xe.dims();
    let xe = xe.reshape([b * o, i, e]);
    let ye = ye.reshape([b * o, i, e]);
    mmd2_batched(xe, ye, inner, true, bandwidth).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::mmd::testing::{assert_close, values, Rng};
    use crate::loss::mmd::{mmd2, MIN_BANDWIDTH};
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Int, TensorData};

    type B = NdArray;
    type AB = Autodiff<NdArray>;

    /// The §9.2 example: O = 3 atoms of I = 4 samples in S = E = 2 (identity embedding).
    fn golden_xy<BB: Backend>() -> (Tensor<BB, 4>, Tensor<BB, 4>) {
        let device = Default::default();
        let y = [[0.5, 0.5], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]];
        let x = [[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [[1.1, 0.1], [1.1, 0.1], [0.1, 2.1], [0.1, 2.1]], y];
        let y_plus_1 = y.map(|p| p.map(|c| c + 1.0));
        let yy = [y_plus_1, y, [[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]];
        (Tensor::<BB, 3>::from_data(x, &device).unsqueeze(), Tensor::<BB, 3>::from_data(yy, &device).unsqueeze())
    }

    /// §9.2 golden value from UP's code (jax 0.4.23 CPU, float32): outer IMQ MMD² with the median heuristic,
    /// V-statistic, over RQ-mixture inner MMD²_U distances clipped at 0: 0.22193120; and the printed distance
    /// matrices, compared to 1e-5 as the spec asks (they are printed with ~7 digits, and the reference's own
    /// float32 output is asymmetric by 2.4e-6). Values are kept exactly as printed.
    #[test]
    #[allow(clippy::excessive_precision)]
    fn golden_delta_loss() {
        let (x, y) = golden_xy::<B>();
        let (inner, outer) = (Kernel::rq_default(), Kernel::imq(1.0));
        let (dxx, dyy, dxy) = inner_distances(x.clone(), y.clone(), &inner);
        #[rustfmt::skip]
        let cases = [
            ("Dxx", dxx, [0.0, 0.0, 0.0, 0.0, 0.0, 0.5913768, 0.0, 0.5913792, 0.0]),
            ("Dyy", dyy, [0.0, 0.668293, 1.0891314, 0.668292, 0.0, 0.0, 1.0891314, 0.0, 0.0]),
            ("Dxy", dxy, [1.0891314, 0.0, 0.0, 0.5833869, 0.5913768, 0.0, 0.668292, 0.0, 0.0]),
        ];
        for (name, got, expected) in cases {
            assert_close(&values(got), &expected, 0.0, 1e-5, name);
        }
        let loss = values(delta_loss(x, y, &inner, &outer));
        assert_eq!(loss.len(), 1);
        assert_close(&loss, &[0.22193120], 1e-6, 1e-6, "delta loss");
    }

    /// The median skips exactly the two diagonals. With O = 2 the 8 values are Dxx off-diagonal {5, 6}, Dyy
    /// off-diagonal {7, 8} and Dxy {1, 2, 3, 4}: median (4+5)/2 = 4.5 (an even count). Keeping the 4 zero
    /// diagonals would give 3.5; dropping Dxy's diagonal {1, 4} too would give 5.5.
    #[test]
    fn median_ignores_exactly_the_two_diagonals() {
        let device = Default::default();
        let dxx = Tensor::<B, 3>::from_data([[[0.0, 5.0], [6.0, 0.0]]], &device);
        let dyy = Tensor::<B, 3>::from_data([[[0.0, 7.0], [8.0, 0.0]]], &device);
        let dxy = Tensor::<B, 3>::from_data([[[1.0, 2.0], [3.0, 4.0]]], &device);
        assert_eq!(values(median_bandwidth(dxx, dyy, dxy)), [4.5]);

        // O = 3: 21 values (odd). Off-diagonals 10..=15 and 20..=25, Dxy 1..=9: the 11th smallest is 11.
        // With the six zero diagonals it would be 8.
        let offdiag = |base: f32| {
            let v = [0.0, base, base + 1.0, base + 2.0, 0.0, base + 3.0, base + 4.0, base + 5.0, 0.0];
            Tensor::<B, 3>::from_data(TensorData::new(v.to_vec(), [1, 3, 3]), &device)
        };
        let dxy = Tensor::<B, 3>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 3, 3]),
            &device,
        );
        assert_eq!(values(median_bandwidth(offdiag(10.0), offdiag(20.0), dxy)), [11.0]);

        // Per batch row, and floored at 1e-6.
        let zeros = Tensor::<B, 3>::zeros([2, 3, 3], &device);
        assert_eq!(values(median_bandwidth(zeros.clone(), zeros.clone(), zeros)), [MIN_BANDWIDTH as f32; 2]);
    }

    /// Unclipped, MMD²_U(X_o, X_o) ≤ 0 on the diagonals; clipped, the diagonals are exactly 0.
    #[test]
    fn clipped_diagonals_are_zero() {
        let device = Default::default();
        let mut rng = Rng::new(5);
        let x = rng.normal_tensor::<B, 4>([3, 4, 5, 2], &device);
        let y = rng.normal_tensor::<B, 4>([3, 4, 5, 2], &device);
        for kernel in [Kernel::rq_default(), Kernel::imq(1.0), Kernel::rbf(1.0), Kernel::cauchy(1.0)] {
            let (raw_xx, raw_yy, _) = inner_mmd_matrices(pair_block_means(x.clone(), y.clone(), &kernel));
            let (dxx, dyy, _) = inner_distances(x.clone(), y.clone(), &kernel);
            for (raw, clipped) in [(raw_xx, dxx), (raw_yy, dyy)] {
                let (raw, clipped) = (values(raw), values(clipped));
                for b in 0..3 {
                    for o in 0..4 {
                        let k = b * 16 + o * 5;
                        assert!(raw[k] <= 0.0, "{kernel:?}: MMD²_U(X,X) = {}", raw[k]);
                        assert_eq!(clipped[k], 0.0);
                    }
                }
            }
        }
    }

    /// The loss is invariant to permuting the atoms of xe and of ye (independently) and the samples within the
    /// atoms; only the float32 summation order changes.
    #[test]
    fn permutation_invariance() {
        let device = Default::default();
        let mut rng = Rng::new(9);
        let (b, o, i, e) = (2, 5, 4, 3);
        let x = rng.normal_tensor::<B, 4>([b, o, i, e], &device);
        let y = rng.normal_tensor::<B, 4>([b, o, i, e], &device).add_scalar(0.3);
        let (inner, outer) = (Kernel::rq_default(), Kernel::imq(1.0));
        let base = values(delta_loss(x.clone(), y.clone(), &inner, &outer));

        let mut perm = |n: usize| {
            let p: Vec<i64> = rng.permutation(n).into_iter().map(|v| v as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(p, [n]), &device)
        };
        let (xa, ya, xs, ys) = (perm(o), perm(o), perm(i), perm(i));
        let xp = x.select(1, xa).select(2, xs);
        let yp = y.select(1, ya).select(2, ys);
        let permuted = values(delta_loss(xp, yp, &inner, &outer));
        assert_close(&permuted, &base, 1e-5, 1e-7, "permuted atoms and samples");
        assert!(base[0] > 1e-3, "degenerate example: loss {}", base[0]);
    }

    /// Gradients reach xe and ye (finite, nonzero), and none flows through the bandwidth: the gradients equal
    /// those of the same loss with the bandwidth fed in as a constant, and differ from those of a loss whose
    /// median is left in the graph.
    #[test]
    fn gradients_flow_to_samples_not_bandwidth() {
        let device = Default::default();
        let mut rng = Rng::new(21);
        let (b, o, i, e) = (2, 4, 6, 2);
        // Atoms spread apart (atom o centred at (o, 0)), so that most inner distances survive the clip.
        let offsets = Tensor::<AB, 4>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0], [1, o, 1, e]),
            &device,
        );
        let x = (rng.normal_tensor::<AB, 4>([b, o, i, e], &device).mul_scalar(0.5) + offsets.clone()).require_grad();
        let y = (rng.normal_tensor::<AB, 4>([b, o, i, e], &device).mul_scalar(0.5) + offsets.mul_scalar(1.5))
            .require_grad();
        let (inner, outer) = (Kernel::rq_default(), Kernel::imq(1.0));

        let g_loss = delta_loss(x.clone(), y.clone(), &inner, &outer).backward();
        let gx = values(x.grad(&g_loss).unwrap());
        let gy = values(y.grad(&g_loss).unwrap());
        for (name, g) in [("xe", &gx), ("ye", &gy)] {
            assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
            assert!(g.iter().any(|v| v.abs() > 1e-4), "{name}: zero gradient");
        }

        let (dxx, dyy, dxy) = inner_distances(x.clone(), y.clone(), &inner);
        let h = median_bandwidth(dxx.clone(), dyy.clone(), dxy.clone());
        let h_const = Tensor::<AB, 1>::from_data(h.into_data(), &device);
        assert!(values(h_const.clone()).iter().all(|&h| h > 1e-2), "degenerate example: the median hit its floor");
        let g_const = outer_mmd(dxx.clone(), dyy.clone(), dxy.clone(), h_const, &outer).mean().backward();
        assert_close(&values(x.grad(&g_const).unwrap()), &gx, 1e-6, 1e-9, "xe, constant bandwidth");
        assert_close(&values(y.grad(&g_const).unwrap()), &gy, 1e-6, 1e-9, "ye, constant bandwidth");

        // The same median, but differentiable (O = 4: 40 values, the mean of the 20th and 21st). A backward pass
        // consumes its graph, so the distances are computed again.
        let (dxx, dyy, dxy) = inner_distances(x.clone(), y.clone(), &inner);
        let all =
            Tensor::cat(vec![off_diagonal(dxx.clone()), off_diagonal(dyy.clone()), dxy.clone().reshape([b, o * o])], 1);
        let h_live = all.sort(1).narrow(1, 19, 2).mean_dim(1).reshape([b]);
        let g_live = outer_mmd(dxx, dyy, dxy, h_live, &outer).mean().backward();
        let gx_live = values(x.grad(&g_live).unwrap());
        assert!(gx_live.iter().all(|v| v.is_finite()));
        let max_diff = gx.iter().zip(&gx_live).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff > 1e-5, "a differentiable bandwidth should change the gradient (max diff {max_diff})");
    }

    /// The γ-model loss is the mean over (b, o) of the per-atom MMD²_U against the atom's own target.
    #[test]
    fn gamma_model_loss_is_mean_of_per_atom_mmd() {
        let (x, y) = golden_xy::<B>();
        let k = Kernel::rq_default();
        let loss = values(gamma_model_loss(x.clone(), y.clone(), &k));
        let per_atom: Vec<f32> = (0..3)
            .map(|o| {
                let xo = x.clone().narrow(1, o, 1).reshape([4, 2]);
                let yo = y.clone().narrow(1, o, 1).reshape([4, 2]);
                values(mmd2(xo, yo, &k, true, Bandwidth::Fixed(1.0)))[0]
            })
            .collect();
        let expected = per_atom.iter().sum::<f32>() / 3.0;
        assert_close(&loss, &[expected], 1e-6, 1e-7, "gamma-model loss");
        // Unclipped: atom 2 of the example (Dxy[2,2] = 0 after the clip) has MMD²_U(X₂, Y₂) < 0.
        assert!(per_atom.iter().any(|&v| v < 0.0), "{per_atom:?}");
    }

    /// f64 hand computations of §3.3–§3.5 on scalar samples (E = 1), written from the spec's formulas with plain
    /// loops: the oracles of the variant tests.
    mod by_hand {
        pub fn rq(zz: f64) -> f64 {
            [0.2, 0.5, 1.0, 2.0, 5.0].iter().map(|a| (1.0 + zz / (2.0 * a)).powf(-a)).sum()
        }

        pub fn rbf(zz: f64) -> f64 {
            (-zz).exp()
        }

        pub fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        }

        /// MMD²_U(p, q) (§3.4) with kernel `k` on squared distances; `adaptive`: the median heuristic over the
        /// off-diagonal pp and qq distances and all pq distances, else h = 1.
        pub fn mmd2_u(p: &[f64], q: &[f64], k: fn(f64) -> f64, adaptive: bool) -> f64 {
            let d = |a: f64, b: f64| (a - b) * (a - b);
            let (n, m) = (p.len(), q.len());
            let off = |s: &[f64]| -> Vec<f64> {
                let mut v = Vec::new();
                for i in 0..s.len() {
                    for j in 0..s.len() {
                        if i != j {
                            v.push(d(s[i], s[j]));
                        }
                    }
                }
                v
            };
            let cross: Vec<f64> = p.iter().flat_map(|&a| q.iter().map(move |&b| d(a, b))).collect();
            let h = if adaptive { median([off(p), off(q), cross.clone()].concat()).max(1e-6) } else { 1.0 };
            let sxx = off(p).iter().map(|&z| k(z / h)).sum::<f64>() / (n * (n - 1)) as f64;
            let syy = off(q).iter().map(|&z| k(z / h)).sum::<f64>() / (m * (m - 1)) as f64;
            let sxy = cross.iter().map(|&z| k(z / h)).sum::<f64>() / (n * m) as f64;
            sxx + syy - 2.0 * sxy
        }

        /// The δ-model loss (§3.5) of `x`, `y` laid out `[B][O][I]`: inner MMD²_U clipped at 0, outer median
        /// heuristic over the two off-diagonals and all of Dxy, outer V-statistic, mean over rows.
        pub fn delta_loss(
            x: &[Vec<Vec<f64>>],
            y: &[Vec<Vec<f64>>],
            inner: fn(f64) -> f64,
            inner_adaptive: bool,
            outer: fn(f64) -> f64,
        ) -> f64 {
            let mut total = 0.0;
            for (xb, yb) in x.iter().zip(y) {
                let o = xb.len();
                let dist = |p: &[Vec<f64>], q: &[Vec<f64>]| -> Vec<Vec<f64>> {
                    (0..o)
                        .map(|a| (0..o).map(|c| mmd2_u(&p[a], &q[c], inner, inner_adaptive).max(0.0)).collect())
                        .collect()
                };
                let (dxx, dyy, dxy) = (dist(xb, xb), dist(yb, yb), dist(xb, yb));
                let mut values = Vec::new();
                for a in 0..o {
                    for c in 0..o {
                        if a != c {
                            values.push(dxx[a][c]);
                            values.push(dyy[a][c]);
                        }
                        values.push(dxy[a][c]);
                    }
                }
                let h = median(values).max(1e-6);
                let mean =
                    |dm: &Vec<Vec<f64>>| dm.iter().flatten().map(|&v| outer(v / h)).sum::<f64>() / (o * o) as f64;
                total += mean(&dxx) + mean(&dyy) - 2.0 * mean(&dxy);
            }
            total / x.len() as f64
        }
    }

    /// The `[model]` section of a variant, from its `--set` overrides.
    fn variant(sets: &[&str]) -> ModelConfig {
        let mut doc = common::config::ConfigDoc::empty();
        doc.apply_sets(sets).unwrap();
        crate::config::LearnerConfig::resolve(&doc).unwrap().model
    }

    const MEDIAN: [&str; 6] = [
        "model.inner_kernel=rbf",
        "model.inner_bandwidths=[1.0]",
        "model.inner_adaptive_bandwidth=true",
        "model.outer_kernel=rbf",
        "model.outer_bandwidths=[1.0]",
        "train.discriminator_steps=0",
    ];

    /// `[B][O][I]` nested vectors as a `[B, O, I, 1]` tensor.
    fn tensor(v: &[Vec<Vec<f64>>]) -> Tensor<B, 4> {
        let (b, o, i) = (v.len(), v[0].len(), v[0][0].len());
        let flat: Vec<f32> = v.iter().flatten().flatten().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(flat, [b, o, i, 1]), &Default::default())
    }

    /// The default `[model]` is the δ-model loss: on the §9.2 example it gives the golden 0.22193120.
    #[test]
    #[allow(clippy::excessive_precision)]
    fn default_spec_is_the_delta_model() {
        let spec = LossSpec::from_model(&ModelConfig::default());
        assert_eq!(spec.outer_bandwidth, Bandwidth::Median);
        let (x, y) = golden_xy::<B>();
        assert_close(&values(spec.loss(x, y)), &[0.22193120], 1e-6, 1e-6, "default spec");
    }

    /// The `median` variant (§1.1): its inner MMD² is the §9.2 golden RBF(1) median-heuristic U-statistic
    /// −0.11506248 (x4 = x ∪ {[2,2]}, y; the Dxy entry before the clip).
    #[test]
    #[allow(clippy::excessive_precision)]
    fn median_variant_inner_mmd_is_the_golden_value() {
        let spec = LossSpec::from_model(&variant(&MEDIAN));
        assert_eq!((spec.inner.clone(), spec.inner_bandwidth), (Kernel::rbf(1.0), Bandwidth::Median));
        let device = Default::default();
        let x4 = Tensor::<B, 2>::from_data([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [2.0, 2.0]], &device);
        let y = Tensor::<B, 2>::from_data([[0.5, 0.5], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]], &device);
        let (_, _, dxy) = direct_inner_mmd_matrices_with(
            x4.reshape([1, 1, 4, 2]),
            y.reshape([1, 1, 4, 2]),
            &spec.inner,
            spec.inner_bandwidth,
        );
        assert_close(&values(dxy), &[-0.11506248], 1e-6, 1e-6, "RBF median MMD²_U");
    }

    /// The `median` variant's loss (RBF(1) inner and outer, median heuristic on both, §1.1 and §3.4–§3.5)
    /// matches the f64 hand computation on B = 2 rows of O = 3 atoms of I = 3 scalar samples.
    #[test]
    fn median_variant_matches_hand_computation() {
        let x = vec![
            vec![vec![0.0, 1.0, 0.3], vec![2.0, 2.5, 1.5], vec![-1.0, 0.0, 1.0]],
            vec![vec![0.1, 0.2, 0.3], vec![1.0, 3.0, 2.0], vec![0.0, 0.0, 0.5]],
        ];
        let y = vec![
            vec![vec![0.5, 1.5, 0.0], vec![3.0, 2.0, 2.2], vec![0.4, -0.4, 0.0]],
            vec![vec![1.0, 0.0, -1.0], vec![2.5, 2.5, 0.5], vec![0.2, 0.9, -0.3]],
        ];
        let expected = by_hand::delta_loss(&x, &y, by_hand::rbf, true, by_hand::rbf);
        assert!(expected.abs() > 1e-3, "degenerate example: {expected}");
        let spec = LossSpec::from_model(&variant(&MEDIAN));
        let got = values(spec.loss(tensor(&x), tensor(&y)));
        assert_close(&got, &[expected as f32], 1e-5, 1e-6, "median variant");
        // The same hand computation reproduces the default δ-model loss (RQ h = 1 inner, IMQ(1) outer).
        let imq = |zz: f64| (1.0 + zz).powf(-0.5);
        let expected = by_hand::delta_loss(&x, &y, by_hand::rq, false, imq);
        let got = values(LossSpec::from_model(&ModelConfig::default()).loss(tensor(&x), tensor(&y)));
        assert_close(&got, &[expected as f32], 1e-5, 1e-6, "δ-model");
    }

    /// The γ-model ensemble / SR loss (`distributional = false`, §3.6): the mean over (b, o) of the unclipped
    /// RQ-mixture MMD²_U between atom o and its own target, matching the f64 hand computation.
    #[test]
    fn gamma_model_variant_matches_hand_computation() {
        let spec = LossSpec::from_model(&variant(&[
            "model.num_outer=1",
            "model.distributional=false",
            "model.inner_separate_discriminator=true",
        ]));
        assert!(!spec.distributional);
        let x = vec![vec![vec![0.0, 1.0, 0.25]], vec![vec![2.0, 0.0, -1.0]]];
        let y = vec![vec![vec![0.5, 2.0, 0.0]], vec![vec![2.0, 0.1, -0.9]]];
        let per: Vec<f64> =
            x.iter().zip(&y).map(|(xb, yb)| by_hand::mmd2_u(&xb[0], &yb[0], by_hand::rq, false)).collect();
        assert!(per.iter().any(|&v| v < 0.0), "the loss is not clipped: one row should be negative, {per:?}");
        let expected = per.iter().sum::<f64>() / 2.0;
        let got = values(spec.loss(tensor(&x), tensor(&y)));
        assert_close(&got, &[expected as f32], 1e-5, 1e-6, "γ-model loss");
    }

    /// The single-step model (§1.1: γ-model ensemble, cumulant_is_source_state = false, O = 1, γ = 0, H = 1,
    /// bootstrap = false): every target sample is s_1 (§3.2, j = K = 1), so the loss is
    /// `mean_b MMD²_U(X_b, {s_1, …, s_1})`, matching the f64 hand computation.
    #[test]
    fn single_step_variant_matches_hand_computation() {
        use crate::loss::target::{build_target, HorizonSampler};
        let m = variant(&[
            "model.num_outer=1",
            "model.distributional=false",
            "model.inner_separate_discriminator=true",
            "model.cumulant_is_source_state=false",
            "model.gamma=0",
            "model.horizon=1",
            "model.bootstrap=false",
        ]);
        let (batch, inner) = (2, 3);
        let windows = [[0.0, 0.7], [1.0, -0.5]]; // s_0, s_1 of each row
        let step_types = [1u8; 4]; // MID everywhere: no LAST
        let mut rng = common::rng::stream(0, &["single-step".into()]);
        let mut indices = Vec::new();
        HorizonSampler::new(m.gamma, m.horizon, m.cumulant_is_source_state).sample_into(
            &mut rng,
            &step_types,
            m.num_outer,
            inner,
            &mut indices,
        );
        assert!(indices.iter().all(|&j| j == 1), "{indices:?}");
        let device = Default::default();
        let obs = Tensor::<B, 3>::from_data(TensorData::new(vec![0.0f32, 0.7, 1.0, -0.5], [batch, 2, 1]), &device);
        let y = build_target(obs, &step_types, Tensor::zeros([batch, 1, inner, 1], &device), &indices, m.bootstrap);
        let x = vec![vec![vec![0.0, 1.0, 0.25]], vec![vec![2.0, 0.0, -1.0]]];
        let expected =
            x.iter().zip(windows).map(|(xb, w)| by_hand::mmd2_u(&xb[0], &[w[1]; 3], by_hand::rq, false)).sum::<f64>()
                / 2.0;
        let got = values(LossSpec::from_model(&m).loss(tensor(&x), y));
        assert_close(&got, &[expected as f32], 1e-5, 1e-6, "single-step loss");
    }
}
