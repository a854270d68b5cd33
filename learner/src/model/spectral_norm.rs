//! A dense layer whose kernel is divided by an estimate of its spectral norm.
//!
//! The reference wraps its discriminator in flax's `nn.SpectralNorm` (flax 0.8.0,
//! `flax/linen/normalization.py::SpectralNorm`, `n_steps = 1`, `eps = 1e-12`; see `dsm/configs.py`,
//! "iResMLP, i.e. spectral norm on a residual MLP for injectivity of the discriminator"). For a
//! kernel W (`[in, out]`) and a persisted vector u (`[1, out]`, initialised N(0, 1)) every call does
//! one power iteration
//!
//! ```text
//! v  = l2n(u Wᵀ)          [1, in]
//! u' = l2n(v W)           [1, out]      l2n(x) = x · rsqrt(Σx² + 1e-12)
//! σ  = v W u'ᵀ            (u', v stop-gradient; σ stays differentiable in W)
//! W̄  = W / σ              (W unchanged when σ = 0)
//! ```
//!
//! and, with `update_stats`, stores u ← u'. Chained calls therefore run the power iteration across
//! training steps, and σ converges to the largest singular value of the slowly moving W. The bias is
//! one-dimensional and is not normalised (flax normalises only parameters with ndim > 1).
//!
//! u is not a trainable parameter. It lives in a burn [`RunningState`], like `BatchNorm`'s running
//! statistics, so that it is saved in and restored from the module record while optimisers leave it
//! alone (it never has a gradient).

use burn::config::Config;
use burn::module::{Module, Param, RunningState};
use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;

use super::init::{lecun_normal, standard_normal};

/// The `eps` of flax's `_l2_normalize` inside `SpectralNorm`.
pub const L2_NORMALIZE_EPS: f64 = 1e-12;

/// Sizes of a [`SpectralLinear`].
#[derive(Config, Debug)]
pub struct SpectralLinearConfig {
    /// The input width (rows of the kernel).
    pub d_input: usize,
    /// The output width (columns of the kernel, length of u).
    pub d_output: usize,
}

impl SpectralLinearConfig {
    /// A layer initialised as flax's `Dense` under `SpectralNorm`: kernel `lecun_normal`
    /// (fan_in = `d_input`), bias zeros, u ~ N(0, I), all drawn from `rng` (kernel first, then u).
    pub fn init<B: Backend, R: Rng + ?Sized>(&self, device: &B::Device, rng: &mut R) -> SpectralLinear<B> {
        let weight = lecun_normal([self.d_input, self.d_output], self.d_input, rng, device);
        let u = standard_normal([1, self.d_output], rng, device);
        SpectralLinear {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(Tensor::zeros([self.d_output], device)),
            u: RunningState::new(u),
        }
    }
}

/// `y = x W̄ + b` with W̄ = W / σ̂(W), σ̂ from one power-iteration step per call.
///
/// # Shared state
/// `u` is a [`RunningState`], whose value sits behind an `Arc`: a `clone()` of this layer (or of a
/// module holding it) shares u with the original, so an update through either is seen by both,
/// and `load_record` on a clone overwrites the original's u too. `valid()` makes an independent
/// copy.
#[derive(Module, Debug)]
pub struct SpectralLinear<B: Backend> {
    /// The kernel W, `[d_input, d_output]`, trainable.
    pub weight: Param<Tensor<B, 2>>,
    /// The bias b, `[d_output]`, trainable and not normalised.
    pub bias: Param<Tensor<B, 1>>,
    /// The power-iteration vector u, `[1, d_output]`: non-trainable, persisted in the record.
    pub u: RunningState<Tensor<B, 2>>,
}

/// `x · rsqrt(Σx² + eps)` over all elements, as flax's `_l2_normalize(x, eps=1e-12)`.
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let inv_norm = x.clone().square().sum().add_scalar(L2_NORMALIZE_EPS).sqrt().recip(); // [1]
    x * inv_norm.unsqueeze::<2>() // [1, n] * [1, 1]
}

impl<B: Backend> SpectralLinear<B> {
    /// The stored u, with any update made on this thread applied.
    ///
    /// # Shapes
    /// - output: `[1, d_output]`
    pub fn u(&self) -> Tensor<B, 2> {
        self.u.value_sync()
    }

    /// One power-iteration step from the stored u: `(u', v, σ)` for the current W.
    ///
    /// u' and v are computed from a detached W and are constants for autodiff; σ = v W u'ᵀ is
    /// differentiable in W.
    ///
    /// # Shapes
    /// - u': `[1, d_output]`, v: `[1, d_input]`, σ: `[1, 1]`
    fn power_iteration(&self, w: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let u = self.u().to_device(&w.device()).detach(); // [1, out]
        let w_const = w.clone().detach();
        let v = l2_normalize(u.matmul(w_const.clone().transpose())); // [1, in]
        let u_new = l2_normalize(v.clone().matmul(w_const)); // [1, out]
        let sigma = v.clone().matmul(w).matmul(u_new.clone().transpose()); // [1, 1]
        (u_new, v, sigma)
    }

    /// The spectral-norm estimate σ that the next call to [`forward`](Self::forward) would divide
    /// by (one power-iteration step from the stored u); does not update u.
    ///
    /// # Shapes
    /// - output: `[1]`
    pub fn sigma(&self) -> Tensor<B, 1> {
        let (_, _, sigma) = self.power_iteration(self.weight.val());
        sigma.reshape([1])
    }

    /// The normalised kernel W̄ = W / σ (W itself when σ = 0), stepping the power iteration once;
    /// with `update_stats` the new u' is stored.
    ///
    /// # Shapes
    /// - output: `[d_input, d_output]`
    pub fn normalized_weight(&self, update_stats: bool) -> Tensor<B, 2> {
        let w = self.weight.val();
        let (u_new, _, sigma) = self.power_iteration(w.clone());
        if update_stats {
            // u' was computed from a detached W, so it carries no autodiff graph; storing it keeps
            // nothing alive (as BatchNorm stores its detached running statistics).
            self.u.update(u_new.detach());
        }
        let zero = sigma.clone().equal_elem(0.0);
        let divisor = sigma.mask_fill(zero, 1.0); // [1, 1]
        w / divisor
    }

    /// `y = x W̄ + b`.
    ///
    /// `update_stats` stores the new power-iteration vector u'. The reference sets it in the
    /// discriminator step (lhs then rhs, so u advances twice per step) and not in the generator
    /// step (`dsm/train.py::train_step`, `mutable=["spectral_norm"]`).
    ///
    /// # Shapes
    /// - x: `[N, d_input]`
    /// - output: `[N, d_output]`
    pub fn forward(&self, x: Tensor<B, 2>, update_stats: bool) -> Tensor<B, 2> {
        x.matmul(self.normalized_weight(update_stats)) + self.bias.val().unsqueeze::<2>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::TensorData;
    use common::rng::stream;

    type B = NdArray;
    type A = Autodiff<NdArray>;

    fn layer<Bk: Backend>(d_in: usize, d_out: usize, seed: u64) -> SpectralLinear<Bk> {
        SpectralLinearConfig::new(d_in, d_out).init(&Default::default(), &mut stream(seed, &["sn-test".into()]))
    }

    fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    /// A Householder reflection I − 2 a aᵀ / aᵀa, row-major n×n.
    fn householder(a: &[f64]) -> Vec<f64> {
        let n = a.len();
        let aa: f64 = a.iter().map(|x| x * x).sum();
        (0..n * n).map(|k| f64::from(u8::from(k / n == k % n)) - 2.0 * a[k / n] * a[k % n] / aa).collect()
    }

    /// Row-major (r×k)·(k×c).
    fn matmul(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
        (0..r * c).map(|e| (0..k).map(|j| a[(e / c) * k + j] * b[j * c + e % c]).sum()).collect()
    }

    /// The largest singular value of a row-major r×c matrix, by 10 000 power iterations on MᵀM in f64.
    fn top_singular_value(m: &[f64], r: usize, c: usize) -> f64 {
        let mut x = vec![1.0; c];
        let mut s = 0.0;
        for _ in 0..10_000 {
            let y = matmul(m, &x, r, c, 1); // M x
            let z: Vec<f64> = (0..c).map(|j| (0..r).map(|i| m[i * c + j] * y[i]).sum()).collect(); // Mᵀ M x
            let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt();
            s = norm.sqrt(); // ‖MᵀM x‖ → σ² for unit x
            x = z.iter().map(|v| v / norm).collect();
        }
        s
    }

    #[test]
    fn init_matches_flax_dense_layout() {
        let l = layer::<B>(5, 7, 0);
        assert_eq!(l.weight.dims(), [5, 7]);
        assert_eq!(l.bias.dims(), [7]);
        assert_eq!(l.u().dims(), [1, 7]);
        assert_eq!(l.bias.val().abs().sum().into_scalar(), 0.0);
        assert!(!l.u().is_require_grad());
    }

    /// W = H_a [diag(3, 2, 0.5); 0] H_b has singular values {3, 2, 0.5} by construction. The power
    /// iteration contracts the error by (2/3)² per call, so after 60 updating calls σ̂ equals 3 to f32
    /// precision, and the normalised kernel (read off as the output for x = I, b = 0) has spectral
    /// norm 1 (checked in f64 on the host).
    #[test]
    fn sigma_converges_to_the_largest_singular_value() {
        let device = Default::default();
        let (d_in, d_out) = (4, 3);
        let mut diag = vec![0.0; d_in * d_out];
        for (k, s) in [3.0, 2.0, 0.5].into_iter().enumerate() {
            diag[k * d_out + k] = s;
        }
        let w = matmul(
            &matmul(&householder(&[1.0, -2.0, 0.5, 1.5]), &diag, d_in, d_in, d_out),
            &householder(&[0.3, 1.0, -0.7]),
            d_in,
            d_out,
            d_out,
        );
        assert!((top_singular_value(&w, d_in, d_out) - 3.0).abs() < 1e-9);

        let mut l = layer::<B>(d_in, d_out, 1);
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w32, [d_in, d_out]), &device));

        let eye = Tensor::<B, 2>::eye(d_in, &device);
        for _ in 0..60 {
            l.forward(eye.clone(), true);
        }
        let sigma = l.sigma().into_scalar();
        assert!((f64::from(sigma) - 3.0).abs() < 3.0 * 1e-6, "σ̂ = {sigma}");

        let w_bar = host(l.forward(eye, false));
        let s = top_singular_value(&w_bar, d_in, d_out);
        assert!((s - 1.0).abs() < 1e-6, "‖W̄‖₂ = {s}");
    }

    /// σ̂ also converges for a random LeCun-initialised kernel (true value from f64 power iteration).
    #[test]
    fn sigma_converges_for_a_random_kernel() {
        let device = Default::default();
        let (d_in, d_out) = (6, 5);
        let l = layer::<B>(d_in, d_out, 2);
        let truth = top_singular_value(&host(l.weight.val()), d_in, d_out);
        let x = Tensor::<B, 2>::zeros([1, d_in], &device);
        for _ in 0..500 {
            l.forward(x.clone(), true);
        }
        let sigma = f64::from(l.sigma().into_scalar());
        assert!((sigma - truth).abs() < 1e-5 * truth, "σ̂ = {sigma}, σ_max = {truth}");
    }

    #[test]
    fn u_changes_only_with_update_stats() {
        let device = Default::default();
        let l = layer::<B>(4, 3, 3);
        let x = Tensor::<B, 2>::ones([2, 4], &device);
        let u0 = l.u().into_data();
        for _ in 0..3 {
            l.forward(x.clone(), false);
        }
        l.sigma();
        assert_eq!(l.u().into_data(), u0, "update_stats = false must leave u");

        let y_first = l.forward(x.clone(), true).into_data();
        let u1 = l.u().into_data();
        assert_ne!(u1, u0, "update_stats = true must store u'");
        // u' is unit length.
        let norm: f64 = host(l.u()).iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        // The call that updates uses the same σ as a non-updating call from the same u would.
        let l2 = layer::<B>(4, 3, 3);
        assert_eq!(l2.forward(x.clone(), false).into_data(), y_first);
        // A second update starts from the stored u'.
        l.forward(x, true);
        assert_ne!(l.u().into_data(), u1);
    }

    #[test]
    fn sigma_zero_leaves_the_kernel_unchanged() {
        let device = Default::default();
        let mut l = layer::<B>(3, 2, 4);
        l.weight = Param::from_tensor(Tensor::zeros([3, 2], &device));
        l.bias = Param::from_tensor(Tensor::from_floats([1.0, -1.0], &device));
        let y = l.forward(Tensor::ones([2, 3], &device), true);
        assert_eq!(y.into_data(), TensorData::from([[1.0f32, -1.0], [1.0, -1.0]]));
    }

    /// The autodiff gradient of L = Σ c ⊙ (x W/σ + b) w.r.t. W against central finite differences
    /// in f64 of the same function with u' and v held at their values for the unperturbed W (they are
    /// stop-gradient in the reference). h = 1e-6 gives an f64 truncation+rounding error ≈ 1e-9, so the
    /// tolerance is set by the f32 forward/backward: 1e-4 relative to max(1, |g|).
    #[test]
    fn kernel_gradient_matches_finite_differences() {
        let device = Default::default();
        let (n, d_in, d_out) = (5, 3, 4);
        let mut l = layer::<A>(d_in, d_out, 5);
        let mut rng = stream(5, &["sn-test-data".into()]);
        let x = standard_normal::<A, 2, _>([n, d_in], &mut rng, &device);
        let c = standard_normal::<A, 2, _>([n, d_out], &mut rng, &device);
        let bias = standard_normal::<A, 1, _>([d_out], &mut rng, &device);
        l.bias = Param::from_tensor(bias.clone());

        let loss = (l.forward(x.clone(), false) * c.clone()).sum();
        let grads = loss.backward();
        let g = host(l.weight.grad(&grads).expect("kernel gradient"));

        let (w0, u0) = (host(l.weight.val()), host(l.u()));
        let (xv, cv, bv) = (host(x), host(c), host(bias));
        let l2n = |v: Vec<f64>| {
            let s = (v.iter().map(|a| a * a).sum::<f64>() + L2_NORMALIZE_EPS).sqrt();
            v.into_iter().map(|a| a / s).collect::<Vec<f64>>()
        };
        // v = l2n(u Wᵀ): v_j = Σ_k u_k W[j, k]; u' = l2n(v W).
        let v = l2n((0..d_in).map(|j| (0..d_out).map(|k| u0[k] * w0[j * d_out + k]).sum()).collect());
        let u1 = l2n((0..d_out).map(|k| (0..d_in).map(|j| v[j] * w0[j * d_out + k]).sum()).collect());
        let f = |w: &[f64]| -> f64 {
            let sigma: f64 = (0..d_in).map(|j| (0..d_out).map(|k| v[j] * w[j * d_out + k] * u1[k]).sum::<f64>()).sum();
            let y = matmul(&xv, w, n, d_in, d_out);
            (0..n * d_out).map(|e| cv[e] * (y[e] / sigma + bv[e % d_out])).sum()
        };
        let h = 1e-6;
        for e in 0..d_in * d_out {
            let (mut wp, mut wm) = (w0.clone(), w0.clone());
            wp[e] += h;
            wm[e] -= h;
            let fd = (f(&wp) - f(&wm)) / (2.0 * h);
            assert!((g[e] - fd).abs() < 1e-4 * fd.abs().max(1.0), "entry {e}: autodiff {} vs fd {fd}", g[e]);
        }
    }

    /// Even if u were a tracked tensor, the forward pass would not differentiate through it; and an
    /// optimiser step changes W and b but leaves u (it has no gradient entry).
    #[test]
    fn no_gradient_reaches_u_and_the_optimiser_leaves_it() {
        let device = Default::default();
        let mut l = layer::<A>(4, 3, 6);
        let tracked_u = l.u().require_grad();
        l.u = RunningState::new(tracked_u.clone());
        let x = Tensor::<A, 2>::ones([2, 4], &device);
        let loss = l.forward(x.clone(), false).powf_scalar(2.0).sum();
        let grads = loss.backward();
        assert!(tracked_u.grad(&grads).is_none(), "u must be a constant of the graph");

        // With the ordinary untracked u: gradients only for W and b; Adam leaves u alone.
        let mut l = layer::<A>(4, 3, 6);
        let (u0, w0) = (l.u().into_data(), l.weight.val().into_data());
        let mut optim = AdamConfig::new().init::<A, SpectralLinear<A>>();
        let grads = GradientsParams::from_grads(l.forward(x.clone(), false).powf_scalar(2.0).sum().backward(), &l);
        assert_eq!(grads.len(), 2, "gradients for W and b only");
        l = optim.step(1e-2, l, grads);
        assert_eq!(l.u().into_data(), u0);
        assert_ne!(l.weight.val().into_data(), w0);

        // An update made in the same forward pass as the gradient survives the optimiser step.
        let loss = l.forward(x, true).powf_scalar(2.0).sum();
        let u_after_forward = l.u().into_data();
        assert_ne!(u_after_forward, u0);
        let grads = GradientsParams::from_grads(loss.backward(), &l);
        l = optim.step(1e-2, l, grads);
        assert_eq!(l.u().into_data(), u_after_forward);
        assert!(!l.u().is_require_grad());
        // `valid()` (the inner backend) carries the same u.
        assert_eq!(l.valid().u().into_data(), u_after_forward);
    }
}
