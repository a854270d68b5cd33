//! LeCun-normal initialisation truncated to [−2, 2], as flax's `lecun_normal`.
//!
//! Every `nn.Dense` kernel of the reference (`dsm/models.py::MLP`, `ResidualMLP`) is initialised
//! with flax's default `lecun_normal()`, which is `variance_scaling(1.0, "fan_in",
//! "truncated_normal")`: a standard normal truncated to [−2, 2], divided by the truncated law's
//! standard deviation (0.879…) so that the result has variance exactly `1 / fan_in`. burn's
//! `Initializer` has no truncated normal, so the samples are drawn here on the host from a seeded
//! [`rand::Rng`] (rejection sampling) and uploaded as one tensor. Drawing on the host also makes the
//! initial parameters a function of the seed alone, the same on every backend and device.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;

/// Where flax truncates the standard normal: samples lie in `[−TRUNCATION_BOUND, TRUNCATION_BOUND]`.
pub const TRUNCATION_BOUND: f64 = 2.0;

/// Standard deviation of a standard normal truncated to [−2, 2]; flax's `variance_scaling`
/// divides by this constant so that the truncated samples have unit variance before scaling
/// (`jax/_src/nn/initializers.py` writes `.87962566103423978`, one digit more than f64 holds).
pub const TRUNCATED_STD: f64 = 0.879_625_661_034_239_8;

/// One draw from a standard normal truncated to `[−bound, bound]`, by rejection.
///
/// Rejection is exact (the accepted draws follow the truncated law) and cheap for the bound used
/// here: a draw is accepted with probability P(|X| ≤ 2) ≈ 0.954, so about 1.05 normals per sample.
///
/// # Panics
/// If `bound` is not positive (the loop would never end for bound 0 and is meaningless below).
pub fn truncated_standard_normal<R: Rng + ?Sized>(rng: &mut R, bound: f64) -> f64 {
    assert!(bound > 0.0, "truncation bound must be positive, got {bound}");
    loop {
        let x: f64 = rng.sample(StandardNormal);
        if x.abs() <= bound {
            return x;
        }
    }
}

/// A tensor of the given shape drawn from flax's `lecun_normal` for a layer with `fan_in` inputs:
/// N(0, 1) truncated to [−2, 2], divided by [`TRUNCATED_STD`], times `sqrt(1 / fan_in)`.
///
/// The caller names `fan_in` because it is not always a fixed axis of `shape`: for the generator's
/// per-atom kernels `[O, in, out]` it is `in`, as for each atom's own `Dense` under flax's
/// `nn.vmap`.
///
/// # Shapes
/// - output: `shape`, every entry within `±2 · sqrt(1 / fan_in) / TRUNCATED_STD`.
///
/// # Panics
/// If `fan_in` is zero.
pub fn lecun_normal<B: Backend, const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    fan_in: usize,
    rng: &mut R,
    device: &B::Device,
) -> Tensor<B, D> {
    assert!(fan_in > 0, "lecun_normal needs a positive fan_in");
    let scale = (1.0 / fan_in as f64).sqrt() / TRUNCATED_STD;
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| (truncated_standard_normal(rng, TRUNCATION_BOUND) * scale) as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `n` draws from a standard normal, as an `f32` tensor of the given shape; used for the
/// spectral-norm vector `u` (flax initialises it with `jax.random.normal`).
pub fn standard_normal<B: Backend, const D: usize, R: Rng + ?Sized>(
    shape: [usize; D],
    rng: &mut R,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample::<f64, _>(StandardNormal) as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use common::rng::stream;

    type B = NdArray;

    /// The constant is the standard deviation of N(0,1) truncated to [−2, 2]:
    /// Var = 1 − 2·b·φ(b) / (Φ(b) − Φ(−b)) with b = 2, φ(2) = e^{−2}/√(2π) and
    /// Φ(2) − Φ(−2) = erf(√2) = 0.9544997361036416 (Abramowitz & Stegun table 26.1).
    #[test]
    fn truncated_std_constant_matches_closed_form() {
        let b = TRUNCATION_BOUND;
        let phi = (-b * b / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mass = 0.954_499_736_103_641_6;
        let std = (1.0 - 2.0 * b * phi / mass).sqrt();
        assert!((std - TRUNCATED_STD).abs() < 1e-12, "{std} vs {TRUNCATED_STD}");
    }

    /// Bounds, mean and standard deviation of 200 000 draws with fan_in 64.
    ///
    /// Tolerances come from n, at 5 standard errors (a fixed seed, so only a defect fails):
    /// the mean's standard error is σ/√n; for the sample standard deviation it is
    /// ≈ σ·√((κ − 1)/(4n)) with κ the kurtosis, and κ < 3 for a truncated normal, so σ/√(2n) bounds it.
    #[test]
    fn lecun_normal_has_flax_bounds_mean_and_std() {
        let fan_in = 64;
        let n = 200_000;
        let device = Default::default();
        let mut rng = stream(11, &["init-test".into()]);
        let t = lecun_normal::<B, 2, _>([n / 100, 100], fan_in, &mut rng, &device);
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        assert_eq!(v.len(), n);

        let sigma = (1.0 / fan_in as f64).sqrt();
        let bound = TRUNCATION_BOUND * sigma / TRUNCATED_STD;
        // f32 rounding of an in-bounds f64 value can exceed the bound by at most half an ulp.
        let bound_f32 = bound * (1.0 + f64::from(f32::EPSILON));
        assert!(v.iter().all(|&x| f64::from(x).abs() <= bound_f32), "a sample lies outside ±{bound}");
        // The truncation is active: samples reach close to the bound (P(|X| > 1.9) ≈ 0.012 per draw).
        let max = v.iter().map(|&x| f64::from(x).abs()).fold(0.0, f64::max);
        assert!(max > 1.9 * sigma / TRUNCATED_STD, "max |x| = {max} is far from the bound");

        let nf = n as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / nf;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / (nf - 1.0);
        let std = var.sqrt();
        assert!(mean.abs() < 5.0 * sigma / nf.sqrt(), "mean {mean}");
        assert!((std - sigma).abs() < 5.0 * sigma / (2.0 * nf).sqrt(), "std {std} vs {sigma}");
    }

    #[test]
    fn lecun_normal_is_a_function_of_the_seed() {
        let device = Default::default();
        let draw = |seed| {
            let mut rng = stream(seed, &["init-test".into()]);
            lecun_normal::<B, 3, _>([2, 3, 4], 3, &mut rng, &device).into_data()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn truncated_normal_rejects_a_non_positive_bound() {
        let mut rng = stream(0, &[]);
        truncated_standard_normal(&mut rng, 0.0);
    }
}
