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

/// Φ⁻¹(p) for p in (0, 1): Wichura (1988), algorithm AS241 `PPND16`.
pub fn quantile(p: f64) -> f64 {
    debug_assert!(p > 0.0 && p < 1.0, "quantile of {p}");
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q
            * (((((((2509.080_928_730_122_7 * r + 33430.575_583_588_128) * r + 67265.770_927_008_7) * r
                + 45921.953_931_549_87)
                * r
                + 13731.693_765_509_461)
                * r
                + 1971.590_950_306_551_3)
                * r
                + 133.141_667_891_784_38)
                * r
                + 3.387_132_872_796_366_5)
            / (((((((5226.495_278_852_545 * r + 28729.085_735_721_943) * r + 39307.895_800_092_71) * r
                + 21213.794_301_586_597)
                * r
                + 5394.196_021_424_751)
                * r
                + 687.187_007_492_057_9)
                * r
                + 42.313_330_701_600_91)
                * r
                + 1.0);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let val = if r <= 5.0 {
        let r = r - 1.6;
        (((((((7.745_450_142_783_414e-4 * r + 0.022_723_844_989_269_184) * r + 0.241_780_725_177_450_6) * r
            + 1.270_458_252_452_368_4)
            * r
            + 3.647_848_324_763_204_5)
            * r
            + 5.769_497_221_460_691)
            * r
            + 4.630_337_846_156_546)
            * r
            + 1.423_437_110_749_683_5)
            / (((((((1.050_750_071_644_416_9e-9 * r + 5.475_938_084_995_345e-4) * r
                + 0.015_198_666_563_616_457)
                * r
                + 0.148_103_976_427_480_08)
                * r
                + 0.689_767_334_985_1)
                * r
                + 1.676_384_830_183_803_8)
                * r
                + 2.053_191_626_637_759)
                * r
                + 1.0)
    } else {
        let r = r - 5.0;
        (((((((2.010_334_399_292_288_1e-7 * r + 2.711_555_568_743_487_6e-5) * r
            + 0.001_242_660_947_388_078_4)
            * r
            + 0.026_532_189_526_576_124)
            * r
            + 0.296_560_571_828_504_9)
            * r
            + 1.784_826_539_917_291_3)
            * r
            + 5.463_784_911_164_114)
            * r
            + 6.657_904_643_501_103)
            / (((((((2.044_263_103_389_939_7e-15 * r + 1.421_511_758_316_446e-7) * r
                + 1.846_318_317_510_054_8e-5)
                * r
                + 7.868_691_311_456_133e-4)
                * r
                + 0.014_875_361_290_850_615)
                * r
                + 0.136_929_880_922_735_8)
                * r
                + 0.599_832_206_555_888)
                * r
                + 1.0)
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
