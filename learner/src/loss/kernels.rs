//! The kernels of the reference's `dsm/kernels.py`, evaluated on **squared** distances.
//!
//! Every kernel of the reference takes a "distance" `zz` and sums over a tuple of bandwidths. With the
//! reference's default `euclidean_distance` (`dsm/kernels.py::euclidean_distance`, `Σ(x−y)²`, squared despite
//! its name) that distance is the squared Euclidean distance, and so it is here: [`Kernel::apply`] always
//! receives `zz = ‖x−y‖²` (divided by a bandwidth where the caller uses one).
//!
//! | variant | `k(zz)` | reference class |
//! |---|---|---|
//! | [`Kernel::RationalQuadratic`] | `Σ_α (1 + zz/(2α))^(−α)` | `RationalQuadraticKernel` |
//! | [`Kernel::InverseMultiQuadric`] | `Σ_b (1 + zz/b)^(−1/2)` | `InverseMultiQuadricKernel` |
//! | [`Kernel::Rbf`] | `Σ_b exp(−zz/b)` | `RBFKernel` |
//! | [`Kernel::Cauchy`] | `Σ_b 1/(1 + zz/b)` | `CauchyKernel` |
//! | [`Kernel::Energy`] | `−zz^(α/2) = −‖x−y‖^α` | `NegationKernel` on `energy_distance(·, alpha=α)` |
//!
//! The energy kernel needs a note. The reference builds it from two pieces: the distance function
//! `energy_distance(x, y, alpha) = ‖x−y‖^α` (`norm_alpha`, with a custom JVP whose gradient is 0 at `x = y`)
//! and `NegationKernel` (`k(d) = −d`); see the `energy_distance_kernel` and `inner_energy_distance_kernel`
//! fiddlers of `dsm/configs.py`. Here the distance is always the squared one, so the same value is
//! `−(zz)^(α/2)`, and the zero gradient at `zz = 0` is reproduced with a masked ("safe") power: where `zz = 0`
//! the power is taken of 1 and the result masked to 0, so neither the value nor the gradient can be NaN or
//! infinite. (The reference's separate `EnergyDistanceKernel(alpha)`, `−zz^α` on the raw distance, is used by
//! no config and has no variant here.)

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// A kernel on squared distances, summed over its bandwidths.
///
/// The bandwidth vectors are the reference's `bandwidths` tuples; for the rational quadratic kernel they are
/// its shape parameters α (length scale 1), so `k(0)` is the number of bandwidths for every variant but
/// [`Kernel::Energy`], whose `k(0)` is 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// `Σ_α (1 + zz/(2α))^(−α)` (`dsm/kernels.py::RationalQuadraticKernel`).
    RationalQuadratic(Vec<f64>),
    /// `Σ_b (1 + zz/b)^(−1/2)` (`dsm/kernels.py::InverseMultiQuadricKernel`).
    InverseMultiQuadric(Vec<f64>),
    /// `Σ_b exp(−zz/b)` (`dsm/kernels.py::RBFKernel`).
    Rbf(Vec<f64>),
    /// `Σ_b 1/(1 + zz/b)` (`dsm/kernels.py::CauchyKernel`).
    Cauchy(Vec<f64>),
    /// `−zz^(α/2)`, i.e. `−‖x−y‖^α`: the reference's `NegationKernel` applied to `energy_distance` with
    /// exponent `alpha`, with gradient 0 at `zz = 0` (`dsm/kernels.py::norm_alpha`'s custom JVP).
    Energy {
        /// The exponent α of `‖x−y‖^α`; the reference uses 1 (`energy_distance_kernel`) and 1.5
        /// (`inner_energy_distance_kernel`).
        alpha: f64,
    },
}

impl Kernel {
    /// The reference's inner kernel: rational quadratic with α ∈ {0.2, 0.5, 1, 2, 5}
    /// (`dsm/configs.py::base`, `inner_kernel`).
    pub fn rq_default() -> Self {
        Kernel::RationalQuadratic(vec![0.2, 0.5, 1.0, 2.0, 5.0])
    }

    /// An inverse multiquadric kernel with a single bandwidth `b`; the reference's outer kernel is `imq(1.0)`
    /// (`dsm/configs.py::base`, `outer_kernel`).
    pub fn imq(b: f64) -> Self {
        Kernel::InverseMultiQuadric(vec![b])
    }

    /// An RBF kernel with a single bandwidth `b` (the reference's `median` config and fiddlers use 1).
    pub fn rbf(b: f64) -> Self {
        Kernel::Rbf(vec![b])
    }

    /// A Cauchy kernel with a single bandwidth `b` (the reference's fiddlers use 1).
    pub fn cauchy(b: f64) -> Self {
        Kernel::Cauchy(vec![b])
    }

    /// The kernel a short config name stands for, with the reference's bandwidths for that name:
    /// `rq` (the default mixture), `imq`, `rbf`, `cauchy` (bandwidth 1) and `energy` (α = 1). `None` for any
    /// other name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "rq" | "rational_quadratic" => Some(Self::rq_default()),
            "imq" | "inverse_multi_quadric" => Some(Self::imq(1.0)),
            "rbf" => Some(Self::rbf(1.0)),
            "cauchy" => Some(Self::cauchy(1.0)),
            "energy" => Some(Kernel::Energy { alpha: 1.0 }),
            _ => None,
        }
    }

    /// `k(0)`: the value of the kernel between a point and itself.
    ///
    /// This is the number of bandwidths for the positive-definite kernels and 0 for [`Kernel::Energy`]. Since
    /// `k(0) ≥ k(zz)` for every `zz ≥ 0` and every variant, `MMD²_U(X, X) ≤ 0`.
    pub fn at_zero(&self) -> f64 {
        match self {
            Kernel::RationalQuadratic(b) | Kernel::InverseMultiQuadric(b) | Kernel::Rbf(b) | Kernel::Cauchy(b) => {
                b.len() as f64
            }
            Kernel::Energy { .. } => 0.0,
        }
    }

    /// Evaluates the kernel elementwise on squared distances, summing over the bandwidths.
    ///
    /// # Shapes
    /// - `zz`: any shape `[...]`, entries `≥ 0` (squared distances, possibly divided by a bandwidth);
    /// - returns the same shape `[...]`.
    ///
    /// # Panics
    /// If a bandwidth list is empty (the reference would return an empty sum's shape error too).
    pub fn apply<B: Backend, const D: usize>(&self, zz: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Kernel::RationalQuadratic(alphas) => {
                sum_over(alphas, |a| zz.clone().div_scalar(2.0 * a).add_scalar(1.0).powf_scalar(-a))
            }
            Kernel::InverseMultiQuadric(bs) => {
                sum_over(bs, |b| zz.clone().div_scalar(b).add_scalar(1.0).sqrt().recip())
            }
            Kernel::Rbf(bs) => sum_over(bs, |b| zz.clone().div_scalar(-b).exp()),
            Kernel::Cauchy(bs) => sum_over(bs, |b| zz.clone().div_scalar(b).add_scalar(1.0).recip()),
            Kernel::Energy { alpha } => safe_pow(zz, alpha / 2.0).neg(),
        }
    }
}

/// `Σ_b term(b)` over a non-empty bandwidth list.
fn sum_over<B: Backend, const D: usize>(bandwidths: &[f64], term: impl Fn(f64) -> Tensor<B, D>) -> Tensor<B, D> {
    let (first, rest) = bandwidths.split_first().expect("a kernel needs at least one bandwidth");
    rest.iter().fold(term(*first), |acc, &b| acc + term(b))
}

/// `zz^p` for `zz ≥ 0`, defined as 0 with gradient 0 where `zz ≤ 0`.
///
/// A plain `powf` has an infinite derivative at 0 for `p < 1`, which autodiff turns into NaN (∞ · 0); this is
/// the reference's custom JVP (`dsm/kernels.py::norm_alpha`, `_custom_fixed_raise_alpha`) done with masks:
/// the power is taken of 1 where `zz ≤ 0`, and the masked entries pass no gradient back.
fn safe_pow<B: Backend, const D: usize>(zz: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    let at_zero = zz.clone().lower_equal_elem(0.0);
    zz.mask_fill(at_zero.clone(), 1.0).powf_scalar(p).mask_fill(at_zero, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{TensorData, Tolerance};

    type B = NdArray;
    type AB = Autodiff<NdArray>;

    const ZZ: [f32; 5] = [0.0, 0.5, 1.0, 2.0, 10.0];

    fn eval(kernel: &Kernel) -> TensorData {
        kernel.apply(Tensor::<B, 1>::from_data(ZZ, &Default::default())).into_data()
    }

    /// Golden values from UP's `dsm/kernels.py` on jax 0.4.23 CPU, float32 (dsm-algorithm.md §9.2):
    /// `RationalQuadraticKernel((0.2,0.5,1,2,5))(zz)` etc. at `zz = [0, .5, 1, 2, 10]`. They are printed with
    /// 7–8 significant digits, so the check is relative 1e-6 (plus 1e-9 absolute for RBF's 4.5e-5). The values
    /// are kept exactly as printed, hence the clippy allowances.
    #[test]
    #[allow(clippy::approx_constant, clippy::excessive_precision)]
    fn golden_values_at_reference_points() {
        let tol = Tolerance::<f32>::rel_abs(1e-6, 1e-9);
        let cases: [(Kernel, [f32; 5]); 4] = [
            (Kernel::rq_default(), [5.0, 4.0404296, 3.413065, 2.6224992, 1.1022618]),
            (Kernel::imq(1.0), [1.0, 0.8164966, 0.7071068, 0.5773503, 0.3015113]),
            (Kernel::rbf(1.0), [1.0, 0.60653067, 0.36787945, 0.13533528, 4.5399931e-05]),
            (Kernel::cauchy(1.0), [1.0, 0.6666667, 0.5, 0.3333333, 0.0909091]),
        ];
        for (kernel, expected) in cases {
            eval(&kernel).assert_approx_eq::<f32>(&TensorData::from(expected), tol);
        }
    }

    /// Energy with α: `−zz^(α/2)`, worked out in f64.
    #[test]
    fn energy_is_negative_norm_power() {
        for alpha in [1.0f64, 1.5] {
            let expected: Vec<f32> = ZZ.iter().map(|&z| -(z as f64).powf(alpha / 2.0) as f32).collect();
            eval(&Kernel::Energy { alpha })
                .assert_approx_eq::<f32>(&TensorData::from(expected.as_slice()), Tolerance::rel_abs(1e-6, 1e-9));
        }
    }

    /// The gradient of the energy kernel is 0 at `zz = 0` (the reference's custom JVP) and
    /// `−(α/2) zz^(α/2−1)` elsewhere; never NaN.
    #[test]
    fn energy_gradient_is_zero_at_zero_and_finite() {
        let alpha = 1.0;
        let zz = Tensor::<AB, 1>::from_data(ZZ, &Default::default()).require_grad();
        let grads = Kernel::Energy { alpha }.apply(zz.clone()).sum().backward();
        let g = zz.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g[0], 0.0);
        for (&z, &gi) in ZZ.iter().zip(&g).skip(1) {
            let expected = -(alpha / 2.0) * (z as f64).powf(alpha / 2.0 - 1.0);
            assert!((gi as f64 - expected).abs() < 1e-6, "zz={z}: {gi} vs {expected}");
        }
    }

    /// `k(0)` matches `apply` at 0 for every variant.
    #[test]
    fn at_zero_matches_apply() {
        for name in ["rq", "imq", "rbf", "cauchy", "energy"] {
            let kernel = Kernel::from_name(name).unwrap();
            let k0 = kernel.apply(Tensor::<B, 1>::zeros([1], &Default::default())).into_scalar();
            assert_eq!(k0 as f64, kernel.at_zero(), "{name}");
        }
        assert_eq!(Kernel::from_name("nope"), None);
    }

    #[test]
    fn serde_round_trip() {
        let kernel = Kernel::rq_default();
        let json = serde_json::to_string(&kernel).unwrap();
        assert_eq!(json, r#"{"rational_quadratic":[0.2,0.5,1.0,2.0,5.0]}"#);
        assert_eq!(serde_json::from_str::<Kernel>(&json).unwrap(), kernel);
        let energy: Kernel = serde_json::from_str(r#"{"energy":{"alpha":1.5}}"#).unwrap();
        assert_eq!(energy, Kernel::Energy { alpha: 1.5 });
    }
}
