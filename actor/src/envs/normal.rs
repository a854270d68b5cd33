//! The standard normal's cdf and quantile, and the Rayleigh ↔ normal speed transform.
//!
//! RatInABox keeps a 2-D agent's speed Rayleigh-distributed by running an OU process on a latent
//! normal variable, `z = Φ⁻¹(F_Rayleigh(s))`, and mapping back with `s = σ √(−2 ln(1 − Φ(z)))`
//! (`utils.rayleigh_to_normal` / `normal_to_rayleigh`). It calls scipy's `norm.ppf`/`norm.cdf`; we
//! use Wichura's AS241 quantile (relative error about 1e-16) and `erfc` from libm, and compute
//! the upper tail `1 − Φ(z)` directly as `erfc(z/√2)/2`, which is the same number without the
//! cancellation.

/// Φ(z), the standard normal cdf.
pub fn cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// 1 − Φ(z), computed without cancellation.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

// AS241 coefficients, highest degree first, as published (Applied Statistics 37(3), 1988).
#[allow(clippy::excessive_precision, clippy::unreadable_literal)]
mod as241 {
    pub const A: [f64; 8] = [
        2509.0809287301226727,
        33430.575583588128105,
        67265.770927008700853,
        45921.953931549871457,
        13731.693765509461125,
        1971.5909503065514427,
        133.14166789178437745,
        3.387132872796366608,
    ];
    pub const B: [f64; 8] = [
        5226.495278852545925,
        28729.085735721942674,
        39307.89580009271061,
        21213.794301586595867,
        5394.1960214247511077,
        687.1870074920579083,
        42.313330701600911252,
        1.0,
    ];
    pub const C: [f64; 8] = [
        7.7454501427834140764e-4,
        0.0227238449892691845833,
        0.24178072517745061177,
        1.27045825245236838258,
        3.64784832476320460504,
        5.7694972214606914055,
        4.6303378461565452959,
        1.42343711074968357734,
    ];
    pub const D: [f64; 8] = [
        1.05075007164441684324e-9,
        5.475938084995344946e-4,
        0.0151986665636164571966,
        0.14810397642748007459,
        0.68976733498510000455,
        1.6763848301838038494,
        2.05319162663775882187,
        1.0,
    ];
    pub const E: [f64; 8] = [
        2.01033439929228813265e-7,
        2.71155556874348757815e-5,
        0.0012426609473880784386,
        0.026532189526576123093,
        0.29656057182850489123,
        1.7848265399172913358,
        5.4637849111641143699,
        6.6579046435011037772,
    ];
    pub const F: [f64; 8] = [
        2.04426310338993978564e-15,
        1.4215117583164458887e-7,
        1.8463183175100546818e-5,
        7.868691311456132591e-4,
        0.0148753612908506148525,
        0.13692988092273580531,
        0.59983220655588793769,
        1.0,
    ];
}

fn horner(coefficients: &[f64; 8], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |acc, &c| acc * x + c)
}

/// Φ⁻¹(p) for p in (0, 1): Wichura (1988), algorithm AS241 `PPND16`.
pub fn quantile(p: f64) -> f64 {
    debug_assert!(p > 0.0 && p < 1.0, "quantile of {p}");
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * horner(&as241::A, r) / horner(&as241::B, r);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let val = if r <= 5.0 {
        let r = r - 1.6;
        horner(&as241::C, r) / horner(&as241::D, r)
    } else {
        let r = r - 5.0;
        horner(&as241::E, r) / horner(&as241::F, r)
    };
    if q < 0.0 {
        -val
    } else {
        val
    }
}

/// The latent normal of a Rayleigh(σ) speed: `Φ⁻¹(clip(1 − exp(−s²/2σ²), 1e-6, 1 − 1e-6))`.
/// The clip is RatInABox's; it bounds z to ±4.75.
pub fn rayleigh_to_normal(speed: f64, sigma: f64) -> f64 {
    let u = -(-(speed * speed) / (2.0 * sigma * sigma)).exp_m1();
    quantile(u.clamp(1e-6, 1.0 - 1e-6))
}

/// The Rayleigh(σ) speed of a latent normal: `σ √(−2 ln(1 − Φ(z)))`.
pub fn normal_to_rayleigh(z: f64, sigma: f64) -> f64 {
    sigma * (-2.0 * upper_tail(z).ln()).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_reference_values() {
        // scipy.stats.norm.ppf values, 16 significant digits.
        let cases = [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.025, -1.959_963_984_540_054),
            (0.1, -1.281_551_565_544_600_5),
            (1e-6, -4.753_424_308_822_899),
            (1e-20, -9.262_340_089_798_408),
        ];
        for (p, z) in cases {
            let got = quantile(p);
            assert!((got - z).abs() <= 1e-12 * z.abs().max(1.0), "Φ⁻¹({p}) = {got}, want {z}");
        }
        // Symmetry; 1 − 1e-6 is inexact in binary, which moves z by about 2e-12.
        assert!((quantile(1.0 - 1e-6) + quantile(1e-6)).abs() < 1e-9);
    }

    #[test]
    fn cdf_inverts_quantile() {
        for i in 1..1000 {
            let p = i as f64 / 1000.0;
            assert!((cdf(quantile(p)) - p).abs() < 1e-14, "p = {p}");
        }
        assert!((cdf(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((upper_tail(5.0) - 2.866_515_718_791_939e-7).abs() < 1e-20);
    }

    #[test]
    fn rayleigh_transform_round_trips() {
        let sigma = 0.08;
        for i in 1..200 {
            let s = i as f64 * 0.002; // 0.002 .. 0.398 m/s, inside the clip
            let back = normal_to_rayleigh(rayleigh_to_normal(s, sigma), sigma);
            assert!((back - s).abs() < 1e-10, "s = {s}, back = {back}");
        }
        // The median of Rayleigh(σ) is σ√(2 ln 2) and maps to z = 0.
        let median = sigma * (2.0 * std::f64::consts::LN_2).sqrt();
        assert!(rayleigh_to_normal(median, sigma).abs() < 1e-12);
        // The clip bounds tiny and huge speeds.
        assert!((rayleigh_to_normal(0.0, sigma) - quantile(1e-6)).abs() < 1e-12);
        assert!((rayleigh_to_normal(10.0, sigma) - quantile(1.0 - 1e-6)).abs() < 1e-12);
    }
}
