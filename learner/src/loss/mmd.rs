//! The inner MMD² of the δ-model: the reference estimator, and the pair-block reduction behind which the
//! loss computes all `3·O²` inner MMDs of a batch.
//!
//! - [`pairwise_sq_dists`]: all-pairs squared Euclidean distances, from explicit differences (the
//!   `|p|² + |q|² − 2p·q` matmul trick loses the distances under burn-cuda's TF32 matmuls; see ARCHITECTURE.md).
//! - [`mmd2`] / [`mmd2_batched`]: the reference's `dsm/kernels.py::mmd` (U- or V-statistic, fixed or
//!   median-heuristic bandwidth), for one pair of sample sets or a batch of pairs.
//! - [`pair_block_means`] → [`PairBlocks`] → [`inner_mmd_matrices`]: **the pair-block contract** of
//!   ARCHITECTURE.md. Two `[B,O,I,E]` sample sets go in; the `O×O` matrices of kernel block means come out
//!   (`xx`, `yy`, `xy`), and the inner MMD² matrices are assembled from them with the self-term reuse of
//!   dsm-algorithm.md §3.5: `MMD²_U(P,Q) = s(P) + s(Q) − 2 c(P,Q)`, where `s(P)` (P's U-statistic self term) is
//!   computed once per atom and `c(P,Q)` once per pair of atoms. A fused GPU kernel may replace
//!   [`pair_block_means`] (forward and backward) without touching anything else.
//! - [`direct_inner_mmd_matrices`]: the reference formula, one full MMD²_U per `(o, o')`, kept as the oracle for
//!   tests and the baseline for benchmarks. It does about 3× the kernel evaluations of the pair-block version.
//!
//! All functions are backend-generic and differentiable (gradients flow to the samples; the median bandwidth
//! is a stop-gradient, as in the reference).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::kernels::Kernel;

/// Lower bound of a median-heuristic bandwidth (`dsm/kernels.py::mmd`, `jnp.maximum(nanmedian, 1e-6)`).
pub const MIN_BANDWIDTH: f64 = 1e-6;

/// Upper bound, in elements, of the explicit-difference tensor `[rows, O·I, O·I, E]` that [`pair_block_means`]
/// builds at once (2²⁶ f32 = 256 MiB). Larger batches are processed in chunks of batch rows.
pub const PAIR_CHUNK_ELEMENTS: usize = 1 << 26;

/// How squared distances are scaled before the kernel is applied (`dsm/kernels.py::mmd`, `adaptive_bandwidth`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bandwidth {
    /// `K = k(D/h)` with a fixed `h` (the reference's non-adaptive case is `h = 1`).
    Fixed(f64),
    /// The median heuristic: `h = stop_grad(max(median(D_xx off-diagonal ∪ D_yy off-diagonal ∪ D_xy), 1e-6))`,
    /// the median of an even count being the mean of the two middle values (NumPy's `nanmedian`).
    ///
    /// The median is taken of squared distances. For [`Kernel::Energy`] the reference takes it of its distance
    /// `‖x−y‖^α` instead; the two agree for an odd count of values (the median commutes with a monotone map)
    /// but not exactly for an even count or at the 1e-6 floor. No reference config combines them.
    Median,
}

/// All-pairs squared Euclidean distances, `D[g,i,j] = Σ_e (x[g,i,e] − y[g,j,e])²`, computed from explicit
/// differences (`dsm/kernels.py::pairwise_distance` with `euclidean_distance`).
///
/// Entries are exact for `x_i = y_j` (so `D[g,i,i] = 0` exactly when `x = y`), and are never negative.
///
/// # Shapes
/// - `x`: `[G, n, E]`, `y`: `[G, m, E]`;
/// - returns `[G, n, m]`. The intermediate difference tensor is `[G, n, m, E]`.
pub fn pairwise_sq_dists<B: Backend>(x: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
    let [g, n, _] = x.dims();
    let m = y.dims()[1];
    let diff = x.unsqueeze_dim::<4>(2) - y.unsqueeze_dim::<4>(1); // [G, n, m, E]
    diff.square().sum_dim(3).reshape([g, n, m])
}

/// The reference MMD² estimator between two sample sets (`dsm/kernels.py::mmd`).
///
/// `unbiased = true` is the reference's `from_samples=True` (U-statistic self terms
/// `(ΣK_xx − tr K_xx)/(n(n−1))`); `false` is the V-statistic (means including the diagonal). The cross term is
/// always the mean over all `n·m` pairs. The result is not clipped and can be negative.
///
/// # Shapes
/// - `x`: `[n, E]`, `y`: `[m, E]`;
/// - returns `[1]`.
///
/// # Panics
/// If `unbiased` and `n < 2` or `m < 2`.
pub fn mmd2<B: Backend>(
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    kernel: &Kernel,
    unbiased: bool,
    bandwidth: Bandwidth,
) -> Tensor<B, 1> {
    mmd2_batched(x.unsqueeze(), y.unsqueeze(), kernel, unbiased, bandwidth)
}

/// [`mmd2`] for a batch of `G` independent pairs of sample sets (each pair gets its own median bandwidth).
///
/// Unlike the reference, the median heuristic also accepts `n ≠ m` (the reference's `jnp.concatenate` of
/// `[n,n]`, `[m,m]` and `[n,m]` matrices along axis 0 fails then); for `n = m` it is the same set of values.
///
/// # Shapes
/// - `x`: `[G, n, E]`, `y`: `[G, m, E]`;
/// - returns `[G]`.
///
/// # Panics
/// If `unbiased` and `n < 2` or `m < 2`.
pub fn mmd2_batched<B: Backend>(
    x: Tensor<B, 3>,
    y: Tensor<B, 3>,
    kernel: &Kernel,
    unbiased: bool,
    bandwidth: Bandwidth,
) -> Tensor<B, 1> {
    let [g, n, _] = x.dims();
    let m = y.dims()[1];
    let dxx = pairwise_sq_dists(x.clone(), x.clone()); // [G, n, n]
    let dyy = pairwise_sq_dists(y.clone(), y.clone()); // [G, m, m]
    let dxy = pairwise_sq_dists(x, y); // [G, n, m]

    let (dxx, dyy, dxy) = match bandwidth {
        Bandwidth::Fixed(1.0) => (dxx, dyy, dxy),
        Bandwidth::Fixed(h) => (dxx.div_scalar(h), dyy.div_scalar(h), dxy.div_scalar(h)),
        Bandwidth::Median => {
            let values = Tensor::cat(
                vec![off_diagonal(dxx.clone()), off_diagonal(dyy.clone()), dxy.clone().reshape([g, n * m])],
                1,
            );
            let h = median_heuristic(values).reshape([g, 1, 1]);
            (dxx.div(h.clone()), dyy.div(h.clone()), dxy.div(h))
        }
    };

    let mxx = self_term(kernel.apply(dxx), unbiased);
    let myy = self_term(kernel.apply(dyy), unbiased);
    let mxy = kernel.apply(dxy).mean_dim(2).mean_dim(1).reshape([g]);
    mxx + myy - mxy.mul_scalar(2.0)
}

/// The mean of a square kernel matrix, without its diagonal when `unbiased`.
///
/// The diagonal is masked out rather than subtracted (`(ΣK − tr K)/(n(n−1))` in the reference): the same value
/// in exact arithmetic, without the cancellation.
///
/// # Shapes
/// `k`: `[G, n, n]` → `[G]`.
fn self_term<B: Backend>(k: Tensor<B, 3>, unbiased: bool) -> Tensor<B, 1> {
    let [g, n, _] = k.dims();
    if unbiased {
        assert!(n >= 2, "the U-statistic needs at least 2 samples per set, got {n}");
        let weights = diagonal_weights::<B>(n, 1.0 / (n * (n - 1)) as f64, 0.0, &k.device());
        (k * weights).sum_dim(2).sum_dim(1).reshape([g])
    } else {
        k.mean_dim(2).mean_dim(1).reshape([g])
    }
}

/// The off-diagonal entries of a batch of square matrices, row-major.
///
/// # Shapes
/// `d`: `[G, n, n]` → `[G, n(n−1)]`.
pub fn off_diagonal<B: Backend>(d: Tensor<B, 3>) -> Tensor<B, 2> {
    let [g, n, n2] = d.dims();
    assert_eq!(n, n2, "off_diagonal needs square matrices, got [{g}, {n}, {n2}]");
    let idx: Vec<i64> = (0..n * n).filter(|k| k / n != k % n).map(|k| k as i64).collect();
    let len = idx.len();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [len]), &d.device());
    d.reshape([g, n * n]).select(1, idx)
}

/// The median-heuristic bandwidth of each row of values: `max(median, 1e-6)`, detached from the graph.
///
/// The median of an even count is the mean of the two middle values (NumPy). It is computed with a tensor
/// `sort`: on the CPU backend that is a plain sort, but burn 0.21 has no GPU sort, so on CUDA `sort` reads the
/// `[G, N]` values back to the host, sorts them there and uploads the result: one device synchronisation per
/// call (7,701 values per batch row at Pendulum sizes). NaN values are not skipped (the reference's `nanmedian`
/// only ever sees the NaNs it put on the diagonals itself, which are removed here instead).
///
/// # Shapes
/// `values`: `[G, N]` with `N ≥ 1` → `[G]`.
pub fn median_heuristic<B: Backend>(values: Tensor<B, 2>) -> Tensor<B, 1> {
    let [g, count] = values.dims();
    assert!(count >= 1, "median of no values");
    let sorted = values.detach().sort(1);
    let (start, len) = if count % 2 == 1 { (count / 2, 1) } else { (count / 2 - 1, 2) };
    sorted.narrow(1, start, len).mean_dim(1).reshape([g]).clamp_min(MIN_BANDWIDTH)
}

/// The kernel block means of two batches of atoms: the output of the pair-block reduction.
///
/// For batch row `b` and atoms `o, o'` (each atom a set of `I` samples `x[b,o,·]`):
/// - `xx[b,o,o'] = mean_{i,j} k(x[b,o,i], x[b,o',j])`, except that the diagonal blocks `o = o'` leave out
///   `i = j` (mean over `I(I−1)` pairs): `xx[b,o,o] = s(X_o)` is the U-statistic self term;
/// - `yy` likewise for `y`;
/// - `xy[b,o,o'] = mean_{i,j} k(x[b,o,i], y[b,o',j])` over all `I²` pairs.
///
/// `inner` (= I) and `k_zero` (= k(0)) complete the picture: the all-pairs mean of a diagonal block is
/// `((I−1)·s + k(0))/I`, which [`inner_mmd_matrices`] needs for `MMD²_U(X_o, X_o)`.
#[derive(Debug, Clone)]
pub struct PairBlocks<B: Backend> {
    /// `[B, O, O]`, diagonal = U-statistic self terms of `x`'s atoms.
    pub xx: Tensor<B, 3>,
    /// `[B, O, O]`, diagonal = U-statistic self terms of `y`'s atoms.
    pub yy: Tensor<B, 3>,
    /// `[B, O, O]`, all-pairs cross means.
    pub xy: Tensor<B, 3>,
    /// Samples per atom, I.
    pub inner: usize,
    /// The kernel at 0, `k(0)` ([`Kernel::at_zero`]).
    pub k_zero: f64,
}

/// The pair-block reduction (bandwidth 1), processing the batch in chunks of [`default_chunk_rows`] rows.
///
/// Costs `3·(O·I)²` kernel evaluations per batch row (the `x`–`x`, `y`–`y` and `x`–`y` kernel matrices of all
/// samples), against `9·O²·I²` for [`direct_inner_mmd_matrices`].
///
/// # Shapes
/// - `x`, `y`: `[B, O, I, E]`, `I ≥ 2`;
/// - returns [`PairBlocks`] of `[B, O, O]` matrices.
pub fn pair_block_means<B: Backend>(x: Tensor<B, 4>, y: Tensor<B, 4>, kernel: &Kernel) -> PairBlocks<B> {
    let [_, o, i, e] = x.dims();
    pair_block_means_chunked(x, y, kernel, default_chunk_rows(o, i, e))
}

/// The number of batch rows [`pair_block_means`] processes at once, so that the explicit-difference tensor
/// `[rows, O·I, O·I, E]` stays within [`PAIR_CHUNK_ELEMENTS`] (at least one row).
///
/// Thesis sizes (O=10, I=5, E=8) take 3,355 rows at once; Pendulum (O=51, I=32, E=8) takes 3.
/// Under autodiff the chunks' intermediate results are all kept for the backward pass, so chunking bounds the
/// largest single allocation, not the total memory of the tape.
pub fn default_chunk_rows(o: usize, i: usize, e: usize) -> usize {
    let n = o * i;
    (PAIR_CHUNK_ELEMENTS / (n * n * e).max(1)).max(1)
}

/// [`pair_block_means`] with an explicit number of batch rows per chunk (`chunk_rows ≥ 1`); the result does
/// not depend on it.
///
/// # Shapes
/// - `x`, `y`: `[B, O, I, E]`, `I ≥ 2`;
/// - returns [`PairBlocks`] of `[B, O, O]` matrices.
///
/// # Panics
/// If the shapes differ, `I < 2` or `chunk_rows = 0`.
pub fn pair_block_means_chunked<B: Backend>(
    x: Tensor<B, 4>,
    y: Tensor<B, 4>,
    kernel: &Kernel,
    chunk_rows: usize,
) -> PairBlocks<B> {
    let [b, o, i, e] = x.dims();
    assert_eq!(x.dims(), y.dims(), "x and y must have the same [B, O, I, E] shape");
    assert!(i >= 2, "the U-statistic needs at least 2 samples per atom, got I = {i}");
    assert!(chunk_rows >= 1, "chunk_rows must be at least 1");
    let n = o * i;
    let device = x.device();
    // [1, O·I, O·I]: 0 on the diagonal, 1/(I(I−1)) in the rest of the diagonal blocks, 1/I² elsewhere.
    let self_weights = block_mean_weights::<B>(o, i, &device);
    let cross_scale = 1.0 / (i * i) as f64;

    let (mut xx, mut yy, mut xy) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..b).step_by(chunk_rows) {
        let rows = chunk_rows.min(b - start);
        let xc = x.clone().narrow(0, start, rows).reshape([rows, n, e]);
        let yc = y.clone().narrow(0, start, rows).reshape([rows, n, e]);
        let kxx = kernel.apply(pairwise_sq_dists(xc.clone(), xc.clone())); // [rows, n, n]
        let kyy = kernel.apply(pairwise_sq_dists(yc.clone(), yc.clone()));
        let kxy = kernel.apply(pairwise_sq_dists(xc, yc));
        xx.push(block_sums(kxx * self_weights.clone(), o, i));
        yy.push(block_sums(kyy * self_weights.clone(), o, i));
        xy.push(block_sums(kxy, o, i).mul_scalar(cross_scale));
    }
    let join = |parts: Vec<Tensor<B, 3>>| {
        if parts.len() == 1 {
            parts.into_iter().next().unwrap()
        } else {
            Tensor::cat(parts, 0)
        }
    };
    PairBlocks { xx: join(xx), yy: join(yy), xy: join(xy), inner: i, k_zero: kernel.at_zero() }
}

/// Sums a `[G, O·I, O·I]` matrix over each `I×I` block.
///
/// # Shapes
/// `k`: `[G, O·I, O·I]` → `[G, O, O]`.
fn block_sums<B: Backend>(k: Tensor<B, 3>, o: usize, i: usize) -> Tensor<B, 3> {
    let g = k.dims()[0];
    k.reshape([g, o, i, o, i]).sum_dim(4).sum_dim(2).reshape([g, o, o])
}

/// The weights that turn block sums of an `x`–`x` kernel matrix into [`PairBlocks::xx`]: 0 on the diagonal,
/// `1/(I(I−1))` elsewhere in the diagonal blocks, `1/I²` in the other blocks.
///
/// # Shapes
/// Returns `[1, O·I, O·I]`.
fn block_mean_weights<B: Backend>(o: usize, i: usize, device: &B::Device) -> Tensor<B, 3> {
    let n = o * i;
    let (same_atom, other_atom) = (1.0 / (i * (i - 1)) as f64, 1.0 / (i * i) as f64);
    let w: Vec<f64> = (0..n * n)
        .map(|k| {
            let (p, q) = (k / n, k % n);
            if p == q {
                0.0
            } else if p / i == q / i {
                same_atom
            } else {
                other_atom
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(w, [1, n, n]), device)
}

/// A `[1, n, n]` matrix with `diag` on the diagonal and `off` elsewhere.
fn diagonal_weights<B: Backend>(n: usize, off: f64, diag: f64, device: &B::Device) -> Tensor<B, 3> {
    let w: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { diag } else { off }).collect();
    Tensor::from_data(TensorData::new(w, [1, n, n]), device)
}

/// The inner MMD² matrices from the kernel block means, with the self-term reuse (dsm-algorithm.md §3.5):
///
/// `D_pq[b,o,o'] = s_p[b,o] + s_q[b,o'] − 2 c_pq[b,o,o']`, where `s_p` is the diagonal of the same-set block
/// matrix and `c_pq` the cross mean. For the diagonal of `Dxx` (and `Dyy`) the cross mean is the all-pairs mean
/// of atom `o` with itself, `((I−1)·s + k(0))/I`, so `Dxx[b,o,o] = 2(s − k(0))/I ≤ 0`: exactly the reference's
/// `MMD²_U(X_o, X_o)`, whose cross term includes `i = j`. Nothing is clipped here.
///
/// # Shapes
/// - `blocks`: [`PairBlocks`] of `[B, O, O]`;
/// - returns `(Dxx, Dyy, Dxy)`, each `[B, O, O]`, with `Dxy[b,o,o'] = MMD²_U(x[b,o], y[b,o'])`.
pub fn inner_mmd_matrices<B: Backend>(blocks: PairBlocks<B>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let PairBlocks { xx, yy, xy, inner, k_zero } = blocks;
    let [b, o, _] = xx.dims();
    let device = xx.device();
    let eye = diagonal_weights::<B>(o, 0.0, 1.0, &device); // [1, O, O]
    let diag = |m: &Tensor<B, 3>| (m.clone() * eye.clone()).sum_dim(2).reshape([b, o]); // [B, O]
    let (sx, sy) = (diag(&xx), diag(&yy));
    let col = |s: &Tensor<B, 2>| s.clone().reshape([b, o, 1]);
    let row = |s: &Tensor<B, 2>| s.clone().reshape([b, 1, o]);
    // On the diagonal, the all-pairs mean exceeds the U-statistic mean s by (k(0) − s)/I.
    let with_self_pairs =
        |m: Tensor<B, 3>, s: &Tensor<B, 2>| m + col(s).neg().add_scalar(k_zero).div_scalar(inner as f64) * eye.clone();
    let dxx = col(&sx) + row(&sx) - with_self_pairs(xx, &sx).mul_scalar(2.0);
    let dyy = col(&sy) + row(&sy) - with_self_pairs(yy, &sy).mul_scalar(2.0);
    let dxy = col(&sx) + row(&sy) - xy.mul_scalar(2.0);
    (dxx, dyy, dxy)
}

/// The reference computation of the inner MMD² matrices: each of the `3·O²` entries is a full `MMD²_U`
/// between two atoms (`dsm/train.py::train_step.grad_fn`, the vmapped `kernels.mmd_distance` before its clip),
/// bandwidth 1. The oracle for [`pair_block_means`] + [`inner_mmd_matrices`], and the benchmark baseline.
///
/// It is not chunked: its difference tensor is `[B·O², I, I, E]` at once (1.4·10⁹ elements at Pendulum sizes),
/// so benchmark it on slices of the batch.
///
/// # Shapes
/// - `x`, `y`: `[B, O, I, E]`, `I ≥ 2`;
/// - returns `(Dxx, Dyy, Dxy)`, each `[B, O, O]`: `Dpq[b,o,o'] = MMD²_U(p[b,o], q[b,o'])`.
pub fn direct_inner_mmd_matrices<B: Backend>(
    x: Tensor<B, 4>,
    y: Tensor<B, 4>,
    kernel: &Kernel,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    direct_inner_mmd_matrices_with(x, y, kernel, Bandwidth::Fixed(1.0))
}

/// [`direct_inner_mmd_matrices`] with any bandwidth: with [`Bandwidth::Median`] every one of the `3·O²` inner
/// MMDs gets its own median-heuristic bandwidth, as the reference's `inner_kernel_adaptive_bandwidth` does
/// (the vmapped `kernels.mmd` computes it per pair of atoms). The pair-block reduction cannot share kernel
/// matrices across pairs then, so this is the path the adaptive inner bandwidth takes.
///
/// # Shapes
/// - `x`, `y`: `[B, O, I, E]`, `I ≥ 2`;
/// - returns `(Dxx, Dyy, Dxy)`, each `[B, O, O]`.
pub fn direct_inner_mmd_matrices_with<B: Backend>(
    x: Tensor<B, 4>,
    y: Tensor<B, 4>,
    kernel: &Kernel,
    bandwidth: Bandwidth,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let [b, o, i, e] = x.dims();
    // p[b,o] placed at [b,o,o'], and q[b,o'] placed at [b,o,o'], flattened to B·O·O pairs of sets.
    let rows = |p: Tensor<B, 4>| p.unsqueeze_dim::<5>(2).expand([b, o, o, i, e]).reshape([b * o * o, i, e]);
    let cols = |q: Tensor<B, 4>| q.unsqueeze_dim::<5>(1).expand([b, o, o, i, e]).reshape([b * o * o, i, e]);
    let pairs =
        |p: Tensor<B, 4>, q: Tensor<B, 4>| mmd2_batched(rows(p), cols(q), kernel, true, bandwidth).reshape([b, o, o]);
    (pairs(x.clone(), x.clone()), pairs(y.clone(), y.clone()), pairs(x, y))
}

/// Helpers shared by the loss tests: a seeded normal generator independent of any backend's global RNG, and
/// comparisons.
#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::{backend::Backend, Tensor, TensorData};

    /// SplitMix64 with Box–Muller normals: deterministic, and independent of test threads.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1].
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }

        pub(crate) fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }

        /// A permutation of `0..n` (Fisher–Yates).
        pub(crate) fn permutation(&mut self, n: usize) -> Vec<usize> {
            let mut p: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                let j = (self.next_u64() % (k as u64 + 1)) as usize;
                p.swap(k, j);
            }
            p
        }

        pub(crate) fn normal_tensor<B: Backend, const D: usize>(
            &mut self,
            shape: [usize; D],
            device: &B::Device,
        ) -> Tensor<B, D> {
            let v: Vec<f32> = (0..shape.iter().product()).map(|_| self.normal() as f32).collect();
            Tensor::from_data(TensorData::new(v, shape), device)
        }
    }

    pub(crate) fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// `|a − b| ≤ abs + rel·|b|` elementwise, with a message naming the first failure.
    pub(crate) fn assert_close(a: &[f32], b: &[f32], rel: f64, abs: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths differ");
        for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
            let (x, y) = (x as f64, y as f64);
            assert!(x.is_finite() && y.is_finite(), "{what}[{k}]: not finite ({x}, {y})");
            assert!((x - y).abs() <= abs + rel * y.abs(), "{what}[{k}]: {x} vs {y} (diff {:e})", (x - y).abs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_close, values, Rng};
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray;
    type AB = Autodiff<NdArray>;

    fn golden_x() -> Tensor<B, 2> {
        Tensor::from_data([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], &Default::default())
    }

    fn golden_y() -> Tensor<B, 2> {
        Tensor::from_data([[0.5, 0.5], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]], &Default::default())
    }

    fn scalar(t: Tensor<B, 1>) -> f32 {
        values(t)[0]
    }

    /// The golden values are float32 results of UP's `dsm/kernels.py::mmd` (jax 0.4.23 CPU, dsm-algorithm.md
    /// §9.2), sums of a few terms of size ≤ 5: each side carries a rounding error of a few f32 ulps of those
    /// terms (~1e-6 absolute), hence 2e-6 absolute plus 1e-6 relative.
    fn assert_golden(got: f32, expected: f32, what: &str) {
        assert_close(&[got], &[expected], 1e-6, 2e-6, what);
    }

    #[test]
    fn pairwise_sq_dists_by_hand() {
        let d = pairwise_sq_dists(golden_x().unsqueeze::<3>(), golden_y().unsqueeze::<3>());
        assert_eq!(d.dims(), [1, 3, 4]);
        #[rustfmt::skip]
        let expected = [
            0.5, 2.0, 1.0, 0.0,
            0.5, 1.0, 4.0, 1.0,
            2.5, 2.0, 5.0, 4.0,
        ];
        assert_eq!(values(d), expected);
        let dxx = values(pairwise_sq_dists(golden_x().unsqueeze::<3>(), golden_x().unsqueeze::<3>()));
        assert_eq!([dxx[0], dxx[4], dxx[8]], [0.0; 3]);
    }

    /// §9.2: RQ mixture, squared L2, h = 1: U = −0.73129004, V = 0.66865665.
    #[test]
    fn golden_rq_u_and_v() {
        let k = Kernel::rq_default();
        let u = scalar(mmd2(golden_x(), golden_y(), &k, true, Bandwidth::Fixed(1.0)));
        let v = scalar(mmd2(golden_x(), golden_y(), &k, false, Bandwidth::Fixed(1.0)));
        assert_golden(u, -0.73129004, "RQ U");
        assert_golden(v, 0.66865665, "RQ V");
    }

    /// §9.2: RBF(1), median heuristic, U-statistic, x4 = x ∪ {[2,2]} and y: −0.11506248.
    #[test]
    fn golden_rbf_median_u() {
        let x4 = Tensor::cat(vec![golden_x(), Tensor::from_data([[2.0, 2.0]], &Default::default())], 0);
        let u = scalar(mmd2(x4, golden_y(), &Kernel::rbf(1.0), true, Bandwidth::Median));
        assert_golden(u, -0.11506248, "RBF median U");
    }

    /// §9.2: energy distance (NegationKernel on `energy_distance`, α = 1), U-statistic: −0.50965375.
    #[test]
    fn golden_energy_u() {
        let u = scalar(mmd2(golden_x(), golden_y(), &Kernel::Energy { alpha: 1.0 }, true, Bandwidth::Fixed(1.0)));
        assert_golden(u, -0.50965375, "energy U");
    }

    /// A fixed bandwidth h is the same as dividing the inputs by √h.
    #[test]
    fn fixed_bandwidth_scales_squared_distances() {
        let k = Kernel::rq_default();
        let a = scalar(mmd2(golden_x(), golden_y(), &k, true, Bandwidth::Fixed(4.0)));
        let b = scalar(mmd2(golden_x().div_scalar(2.0), golden_y().div_scalar(2.0), &k, true, Bandwidth::Fixed(1.0)));
        assert_close(&[a], &[b], 1e-6, 1e-6, "h = 4");
    }

    /// Over G = 4000 independent draws of two iid N(0, I₂) samples (n = m = 6), the U-statistic has mean 0 and
    /// the V-statistic a positive bias. The bound is 4 standard errors (fixed seed: only a defect fails).
    #[test]
    fn u_statistic_is_unbiased_and_v_statistic_is_not() {
        let (g, n) = (4000, 6);
        let device = Default::default();
        let mut rng = Rng::new(7);
        let x = rng.normal_tensor::<B, 3>([g, n, 2], &device);
        let y = rng.normal_tensor::<B, 3>([g, n, 2], &device);
        let k = Kernel::rq_default();
        let stats = |unbiased| {
            let v: Vec<f64> = values(mmd2_batched(x.clone(), y.clone(), &k, unbiased, Bandwidth::Fixed(1.0)))
                .into_iter()
                .map(f64::from)
                .collect();
            let mean = v.iter().sum::<f64>() / g as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (g - 1) as f64;
            (mean, (var / g as f64).sqrt())
        };
        let (u_mean, u_se) = stats(true);
        assert!(u_mean.abs() < 4.0 * u_se, "U mean {u_mean} (se {u_se})");
        let (v_mean, v_se) = stats(false);
        assert!(v_mean > 4.0 * v_se, "V mean {v_mean} (se {v_se})");
    }

    #[test]
    fn off_diagonal_and_median() {
        let device = Default::default();
        let d = Tensor::<B, 3>::from_data([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]], &device);
        assert_eq!(values(off_diagonal(d)), [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
        let odd = Tensor::<B, 2>::from_data([[5.0, 1.0, 3.0], [0.0, 0.0, 0.0]], &device);
        assert_eq!(values(median_heuristic(odd)), [3.0, MIN_BANDWIDTH as f32]);
        let even = Tensor::<B, 2>::from_data([[4.0, 1.0, 3.0, 2.0]], &device);
        assert_eq!(values(median_heuristic(even)), [2.5]);
    }

    /// The pair-block matrices assemble into exactly the reference's inner MMD² matrices: values and gradients
    /// (of a random linear functional of all three matrices) agree with the direct computation, for each
    /// kernel, on random inputs. Both are float32 with different summation orders, hence 1e-5.
    #[test]
    fn pair_blocks_equal_direct_values_and_gradients() {
        let device = Default::default();
        let (b, o, i, e) = (2, 3, 4, 3);
        for (seed, kernel) in [Kernel::rq_default(), Kernel::imq(1.0), Kernel::rbf(2.0), Kernel::Energy { alpha: 1.5 }]
            .into_iter()
            .enumerate()
        {
            let mut rng = Rng::new(100 + seed as u64);
            let x = rng.normal_tensor::<AB, 4>([b, o, i, e], &device).require_grad();
            let y = rng
                .normal_tensor::<AB, 4>([b, o, i, e], &device)
                .mul_scalar(1.3)
                .add_scalar(0.2)
                .detach()
                .require_grad();
            let w: Vec<Tensor<AB, 3>> = (0..3).map(|_| rng.normal_tensor([b, o, o], &device)).collect();
            let functional = |(dxx, dyy, dxy): (Tensor<AB, 3>, Tensor<AB, 3>, Tensor<AB, 3>)| {
                (dxx * w[0].clone() + dyy * w[1].clone() + dxy * w[2].clone()).sum()
            };

            let blocks = inner_mmd_matrices(pair_block_means(x.clone(), y.clone(), &kernel));
            let direct = direct_inner_mmd_matrices(x.clone(), y.clone(), &kernel);
            for (name, p, q) in
                [("Dxx", &blocks.0, &direct.0), ("Dyy", &blocks.1, &direct.1), ("Dxy", &blocks.2, &direct.2)]
            {
                assert_close(&values(p.clone()), &values(q.clone()), 1e-5, 1e-5, &format!("{kernel:?} {name}"));
            }

            let gb = functional(blocks).backward();
            let gd = functional(direct).backward();
            for (name, t) in [("x", &x), ("y", &y)] {
                let a = values(t.grad(&gb).unwrap());
                let d = values(t.grad(&gd).unwrap());
                assert!(d.iter().any(|v| v.abs() > 1e-3), "{kernel:?}: gradient wrt {name} vanishes");
                assert_close(&a, &d, 1e-4, 1e-5, &format!("{kernel:?} grad {name}"));
            }
        }
    }

    /// Processing the batch in chunks changes nothing.
    #[test]
    fn chunking_is_invisible() {
        let device = Default::default();
        let mut rng = Rng::new(3);
        let x = rng.normal_tensor::<B, 4>([5, 3, 4, 2], &device);
        let y = rng.normal_tensor::<B, 4>([5, 3, 4, 2], &device);
        let k = Kernel::rq_default();
        let whole = pair_block_means_chunked(x.clone(), y.clone(), &k, 5);
        for chunk in [1, 2, 7] {
            let parts = pair_block_means_chunked(x.clone(), y.clone(), &k, chunk);
            assert_eq!(values(parts.xx), values(whole.xx.clone()), "chunk {chunk}");
            assert_eq!(values(parts.yy), values(whole.yy.clone()), "chunk {chunk}");
            assert_eq!(values(parts.xy), values(whole.xy.clone()), "chunk {chunk}");
        }
        assert_eq!(default_chunk_rows(51, 32, 8), 3);
        assert_eq!(default_chunk_rows(10, 5, 8), 3355);
    }

    /// Dxx and Dyy are symmetric with non-positive diagonals; Dxy(x, y) is Dxy(y, x) transposed.
    #[test]
    fn symmetries() {
        let device = Default::default();
        let mut rng = Rng::new(11);
        let x = rng.normal_tensor::<B, 4>([2, 4, 3, 2], &device);
        let y = rng.normal_tensor::<B, 4>([2, 4, 3, 2], &device);
        let k = Kernel::rq_default();
        let (dxx, _, dxy) = inner_mmd_matrices(pair_block_means(x.clone(), y.clone(), &k));
        let (_, _, dyx) = inner_mmd_matrices(pair_block_means(y, x, &k));
        assert_close(&values(dxx.clone()), &values(dxx.clone().swap_dims(1, 2)), 0.0, 1e-6, "Dxx symmetric");
        assert_close(&values(dxy), &values(dyx.swap_dims(1, 2)), 0.0, 1e-6, "Dxy = Dyxᵀ");
        let d = values(dxx);
        for b in 0..2 {
            for o in 0..4 {
                assert!(d[b * 16 + o * 5] <= 0.0, "Dxx[{b},{o},{o}] = {}", d[b * 16 + o * 5]);
            }
        }
    }
}
