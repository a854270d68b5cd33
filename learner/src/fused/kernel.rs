//! The kernels of `loss::kernels` as value-and-derivative evaluations on chunks of squared
//! distances, written so that the compiler vectorises them (no calls, no branches per element).
//!
//! Every positive-definite kernel of the reference is a sum of terms of two shapes:
//! - a power `t^(−α)` of `t = 1 + c·d`: the rational quadratic term α (c = 1/(2α)), the inverse
//!   multiquadric (α = ½, c = 1/b) and Cauchy (α = 1, c = 1/b);
//! - an exponential `exp(−c·d)`: RBF (c = 1/b).
//!
//! A power with an integer or half-integer exponent is computed from `r = 1/t` by products (and one
//! square root), so of the reference's rational-quadratic mixture (α = 0.2, 0.5, 1, 2, 5) only
//! α = 0.2 needs a logarithm and an exponential. Those two are polynomial approximations on the
//! float's bits ([`ln`], [`exp`]), accurate to a few ulps, so they vectorise too. The derivative
//! `d/dd t^(−α) = −α·c·t^(−α)·r` reuses the value, which is what the burn path's `powf` recomputes.

use crate::loss::kernels::Kernel;

/// How a power term is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Power {
    /// `r^n`.
    Integer(u32),
    /// `√r · r^n`, i.e. `t^(−(n + ½))`.
    Half(u32),
    /// `exp(−α·ln t)`.
    General(f32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Term {
    Power { c: f32, alpha: f32, power: Power },
    Exp { c: f32 },
}

/// A kernel as a list of terms: `k(d) = Σ terms`, `k'(d) = Σ term′`.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedKernel {
    terms: Vec<Term>,
    k_zero: f32,
}

fn power(alpha: f64) -> Power {
    let twice = 2.0 * alpha;
    if alpha == alpha.round() && alpha <= 16.0 {
        Power::Integer(alpha as u32)
    } else if twice == twice.round() && alpha <= 16.0 {
        Power::Half((alpha - 0.5) as u32)
    } else {
        Power::General(alpha as f32)
    }
}

impl FusedKernel {
    /// The fused form of a kernel; `None` for the energy kernel, which is not a sum of these terms
    /// (it stays on the burn engine).
    pub fn new(kernel: &Kernel) -> Option<FusedKernel> {
        let terms = match kernel {
            Kernel::RationalQuadratic(alphas) => alphas
                .iter()
                .map(|&a| Term::Power { c: (1.0 / (2.0 * a)) as f32, alpha: a as f32, power: power(a) })
                .collect(),
            Kernel::InverseMultiQuadric(bs) => {
                bs.iter().map(|&b| Term::Power { c: (1.0 / b) as f32, alpha: 0.5, power: Power::Half(0) }).collect()
            }
            Kernel::Cauchy(bs) => {
                bs.iter().map(|&b| Term::Power { c: (1.0 / b) as f32, alpha: 1.0, power: Power::Integer(1) }).collect()
            }
            Kernel::Rbf(bs) => bs.iter().map(|&b| Term::Exp { c: (1.0 / b) as f32 }).collect(),
            Kernel::Energy { .. } => return None,
        };
        Some(FusedKernel { terms, k_zero: kernel.at_zero() as f32 })
    }

    /// k(0).
    pub fn k_zero(&self) -> f32 {
        self.k_zero
    }

    /// `k[j] = k(d[j])` and `dk[j] = k'(d[j])` for every j (all three slices of one length).
    ///
    /// Works in chunks that stay in L1 while every term adds onto them, with the choice of power
    /// made once per term and chunk, so each inner loop is straight-line and vectorises.
    #[inline(always)]
    pub fn eval(&self, d: &[f32], k: &mut [f32], dk: &mut [f32]) {
        const CHUNK: usize = 512;
        let n = d.len();
        let (k, dk) = (&mut k[..n], &mut dk[..n]);
        for ((d, k), dk) in d.chunks(CHUNK).zip(k.chunks_mut(CHUNK)).zip(dk.chunks_mut(CHUNK)) {
            k.fill(0.0);
            dk.fill(0.0);
            for term in &self.terms {
                match *term {
                    Term::Power { c, alpha, power } => {
                        let scale = -alpha * c;
                        match power {
                            Power::Integer(0) => power_term(d, k, dk, c, scale, |_, _| 1.0),
                            Power::Integer(1) => power_term(d, k, dk, c, scale, |_, r| r),
                            Power::Integer(2) => power_term(d, k, dk, c, scale, |_, r| r * r),
                            Power::Integer(3) => power_term(d, k, dk, c, scale, |_, r| r * r * r),
                            Power::Integer(4) => power_term(d, k, dk, c, scale, |_, r| powi(r, 4)),
                            Power::Integer(5) => power_term(d, k, dk, c, scale, |_, r| powi(r, 5)),
                            Power::Integer(m) => power_term(d, k, dk, c, scale, |_, r| powi(r, m)),
                            Power::Half(0) => power_term(d, k, dk, c, scale, |_, r| r.sqrt()),
                            Power::Half(1) => power_term(d, k, dk, c, scale, |_, r| r.sqrt() * r),
                            Power::Half(m) => power_term(d, k, dk, c, scale, |_, r| r.sqrt() * powi(r, m)),
                            Power::General(a) => power_term(d, k, dk, c, scale, |t, _| exp(-a * ln(t))),
                        }
                    }
                    Term::Exp { c } => {
                        for j in 0..d.len() {
                            let e = exp(-c * d[j]);
                            k[j] += e;
                            dk[j] -= c * e;
                        }
                    }
                }
            }
        }
    }

    /// The kernel as a C function `void name(float d, float* k, float* dk)` for the CUDA engine's
    /// kernels (`cuda::source`): the same terms in the same order, each power by the same products.
    /// The one difference is a general power, which calls `expf(−α·logf(t))` where [`eval`] has its
    /// polynomial `exp` and `ln` (both within a few ulps of the correctly rounded values).
    ///
    /// [`eval`]: FusedKernel::eval
    pub fn c_function(&self, name: &str) -> String {
        let lit = |x: f32| format!("{x:e}f");
        let mut body = String::new();
        for term in &self.terms {
            let line = match *term {
                Term::Power { c, alpha, power } => {
                    let p = match power {
                        Power::Integer(m) => c_powi(m),
                        Power::Half(m) => format!("sqrtf(r) * {}", c_powi_paren(m)),
                        Power::General(a) => format!("expf(-({}) * logf(t))", lit(a)),
                    };
                    let scale = -alpha * c;
                    format!(
                        "    {{ float t = 1.0f + ({c}) * d; float r = 1.0f / t; float p = {p}; k += p; dk += ({scale}) * p * r; }}\n",
                        c = lit(c),
                        scale = lit(scale),
                    )
                }
                Term::Exp { c } => {
                    format!("    {{ float e = expf(-({c}) * d); k += e; dk -= ({c}) * e; }}\n", c = lit(c))
                }
            };
            body.push_str(&line);
        }
        format!(
            "DSM_DEV void {name}(float d, float* k_out, float* dk_out) {{\n    float k = 0.0f, dk = 0.0f;\n    (void)d;\n{body}    *k_out = k;\n    *dk_out = dk;\n}}\n"
        )
    }

    /// `(k(d), k'(d))` for one value.
    pub fn eval_one(&self, d: f32) -> (f32, f32) {
        let (mut k, mut dk) = ([0.0f32], [0.0f32]);
        self.eval(&[d], &mut k, &mut dk);
        (k[0], dk[0])
    }
}

/// Adds one power term `t^(−α)`, `t = 1 + c·d`, and its derivative `scale·t^(−α)/t`
/// (`scale = −α·c`); `pow(t, 1/t)` is `t^(−α)`.
#[inline(always)]
fn power_term(d: &[f32], k: &mut [f32], dk: &mut [f32], c: f32, scale: f32, pow: impl Fn(f32, f32) -> f32) {
    let n = d.len();
    let (k, dk) = (&mut k[..n], &mut dk[..n]);
    for j in 0..n {
        let t = 1.0 + c * d[j];
        let r = 1.0 / t;
        let p = pow(t, r);
        k[j] += p;
        dk[j] += scale * p * r;
    }
}

/// [`powi`] as a C expression in `r`, the same products in the same order.
fn c_powi(m: u32) -> String {
    match m {
        0 => "1.0f".into(),
        1 => "r".into(),
        2 => "r * r".into(),
        3 => "r * r * r".into(),
        4 => "(r * r) * (r * r)".into(),
        5 => "(r * r) * (r * r) * r".into(),
        _ => format!("1.0f{}", " * r".repeat(m as usize)),
    }
}

fn c_powi_paren(m: u32) -> String {
    format!("({})", c_powi(m))
}

#[inline(always)]
fn powi(r: f32, m: u32) -> f32 {
    match m {
        0 => 1.0,
        1 => r,
        2 => r * r,
        3 => r * r * r,
        4 => {
            let r2 = r * r;
            r2 * r2
        }
        5 => {
            let r2 = r * r;
            r2 * r2 * r
        }
        _ => {
            let mut p = 1.0;
            for _ in 0..m {
                p *= r;
            }
            p
        }
    }
}

/// ln x for finite x > 0 (normal floats): x = 2^e·m with m ∈ [√½, √2), ln m = 2·atanh(s),
/// s = (m − 1)/(m + 1), |s| ≤ 0.172, by its odd series to s¹¹ (truncation < 1e-10).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    // Shift the mantissa range to [√½, √2) by borrowing from the exponent.
    let shifted = bits - 0x3f35_04f3; // bits of √½
    let e = shifted >> 23;
    let m = f32::from_bits((shifted & 0x007f_ffff) as u32 + 0x3f35_04f3);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 2.0 + s2 * (2.0 / 3.0 + s2 * (2.0 / 5.0 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0 + s2 * (2.0 / 11.0)))));
    (e as f32) * std::f32::consts::LN_2 + s * series
}

/// e^x, for x ≤ 0 down to the smallest normal (smaller results flush to 0): x = n·ln 2 + r with
/// |r| ≤ ln2/2 (ln 2 split in two parts for an exact reduction), e^r by Taylor to r⁷.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_are_accurate() {
        let mut worst: f64 = 0.0;
        for k in 0..100_000 {
            let x = 1.0 + k as f32 * 0.013; // t ≥ 1, up to 1301
            let err = (f64::from(ln(x)) - f64::from(x).ln()).abs() / f64::from(x).ln().max(1e-3);
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "ln relative error {worst}");
        for x in [1e-30f32, 1e-5, 0.3, 0.7, 1.0, 1.5, 2.0, 1e10] {
            assert!((f64::from(ln(x)) - f64::from(x).ln()).abs() < 2e-6 * (1.0 + f64::from(x).ln().abs()), "ln {x}");
        }
        let mut worst: f64 = 0.0;
        for k in 0..100_000 {
            let x = -(k as f32) * 0.0008; // 0 to −80
            let e = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - e).abs() / e);
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
    }

    /// The golden values of dsm-algorithm.md §9.2 (UP's `kernels.py`, jax float32), as printed there.
    #[test]
    #[allow(clippy::approx_constant, clippy::excessive_precision)]
    fn golden_kernel_values() {
        let zz = [0.0f32, 0.5, 1.0, 2.0, 10.0];
        let cases = [
            (Kernel::rq_default(), [5.0, 4.040_429_6, 3.413_065, 2.622_499_2, 1.102_261_8]),
            (Kernel::imq(1.0), [1.0, 0.816_496_6, 0.707_106_8, 0.577_350_3, 0.301_511_3]),
            (Kernel::rbf(1.0), [1.0, 0.606_530_67, 0.367_879_45, 0.135_335_28, 4.539_993_1e-5]),
            (Kernel::cauchy(1.0), [1.0, 0.666_666_7, 0.5, 0.333_333_3, 0.090_909_1]),
        ];
        for (kernel, want) in cases {
            let f = FusedKernel::new(&kernel).unwrap();
            for (d, w) in zz.iter().zip(want) {
                let (k, _) = f.eval_one(*d);
                assert!((k - w).abs() <= 2e-6 * w.abs().max(1e-3), "{kernel:?} at {d}: {k} vs {w}");
            }
        }
    }

    /// The derivative against a central difference of the f64 formula.
    #[test]
    fn derivatives_match_finite_differences() {
        let kernels = [Kernel::rq_default(), Kernel::imq(1.0), Kernel::rbf(2.0), Kernel::cauchy(0.5)];
        for kernel in kernels {
            let f = FusedKernel::new(&kernel).unwrap();
            let exact = |d: f64| -> f64 {
                match &kernel {
                    Kernel::RationalQuadratic(a) => a.iter().map(|a| (1.0 + d / (2.0 * a)).powf(-a)).sum(),
                    Kernel::InverseMultiQuadric(b) => b.iter().map(|b| (1.0 + d / b).powf(-0.5)).sum(),
                    Kernel::Rbf(b) => b.iter().map(|b| (-d / b).exp()).sum(),
                    Kernel::Cauchy(b) => b.iter().map(|b| 1.0 / (1.0 + d / b)).sum(),
                    Kernel::Energy { .. } => unreachable!(),
                }
            };
            for d in [0.0f64, 0.01, 0.3, 1.0, 4.0, 25.0] {
                let h = 1e-6;
                let fd = (exact(d + h) - exact((d - h).max(0.0))) / (d + h - (d - h).max(0.0));
                let (k, dk) = f.eval_one(d as f32);
                assert!((f64::from(k) - exact(d)).abs() < 1e-6 * exact(d).max(1.0), "{kernel:?} k({d})");
                assert!((f64::from(dk) - fd).abs() < 1e-5 * fd.abs().max(1.0), "{kernel:?} k'({d}): {dk} vs {fd}");
            }
        }
        assert!(FusedKernel::new(&Kernel::Energy { alpha: 1.0 }).is_none());
    }
}
