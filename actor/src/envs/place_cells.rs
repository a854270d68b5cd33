//! Place cells: RatInABox's `PlaceCells` (v1.15.3, `ratinabox/Neurons.py`).
//!
//! A cell's rate is a tuning curve of the distance from its centre to the agent, rescaled to
//! `[min_fr, max_fr]`, plus optional additive OU noise (Hz, not clipped, as in the reference).
//! Distances follow `get_distances_between___accounting_for_environment`: euclidean (the short way
//! round on a torus), line of sight (1000 m when an internal wall blocks the straight line), or
//! geodesic with one internal wall (the shorter detour round an end of the wall that lies strictly
//! inside the arena).
//!
//! The gaussian family's exponential is [`exp`], a polynomial that a loop over the cells turns into
//! SIMD code, instead of a call into the C library per cell (which took half the time of an
//! `agent + 50 cells` step, `docs/benchmarks.md`, "Simulator"). It is within 1 ulp of `f64::exp`
//! (tested), so a rate can differ from the C library's in its last bit.

use rand::Rng;
use rand_distr::StandardNormal;

use super::arena::Arena;
use super::config::{BoundaryConditions, CellsConfig, Centres, Tuning, WallGeometry, Widths};
use super::geometry::{Segment, Vec2};

/// RatInABox's "very far" for a blocked line of sight.
const BLOCKED: f64 = 1000.0;

/// The effective distance rule after RatInABox's fallbacks.
#[derive(Debug, Clone)]
enum Distance {
    Euclidean,
    LineOfSight(Vec<Segment>),
    /// One internal wall, and the ends of it a path may go round.
    Geodesic {
        wall: Segment,
        ends: Vec<Vec2>,
    },
}

#[derive(Debug, Clone)]
pub struct PlaceCells {
    centres: Vec<Vec2>,
    /// The centres again, as two arrays, for the loops over cells that vectorise.
    centres_x: Vec<f64>,
    centres_y: Vec<f64>,
    /// Geodesic only: for each of the (at most two) wall ends, the distance from every centre to
    /// it, `INFINITY` for an end that is not a way round. `[end][cell]`.
    to_ends: [Vec<f64>; 2],
    /// Whether this CPU has AVX2, for [`Self::rates_at`]'s 4-lane version (same results).
    avx2: bool,
    widths: Vec<f64>,
    /// 1 / (2w²) per cell, for the gaussian family.
    inv_two_w2: Vec<f64>,
    tuning: Tuning,
    distance: Distance,
    min_fr: f64,
    max_fr: f64,
    noise_std: f64,
    noise_tau: f64,
}

impl PlaceCells {
    /// Builds the cells; `rng` draws sampled centres, and must be the experiment's `(seed, "cells")`
    /// stream so that every actor of an experiment shares one state space.
    pub fn new<R: Rng>(config: &CellsConfig, arena: &Arena, rng: &mut R) -> PlaceCells {
        let centres = match &config.centres {
            Centres::Explicit(cs) => cs.iter().map(|c| Vec2::new(c[0], c[1])).collect(),
            Centres::Method(m) => arena.sample_positions(config.n, *m, rng),
        };
        let widths = match &config.widths {
            Widths::One(w) => vec![*w; centres.len()],
            Widths::PerCell(ws) => ws.clone(),
        };
        // Fallbacks of `PlaceCells.__init__`: no walls to speak of on a torus; geodesic is only
        // defined for one internal wall, and falls back to line of sight beyond that.
        //
        // RatInABox counts walls by position, assuming `walls[:4]` are the box
        // (`Environment.py:713`, `:735-742`, `Neurons.py:915`): line of sight checks `walls[4:]`,
        // geodesic uses `walls[4]`. For the default box that is exactly the internal walls. For a
        // polygon boundary with other than 4 edges it is not (boundary edges from the fifth on
        // count as internal; a triangle's first user wall is skipped); the issue is silent on
        // this, so we reproduce the reference's indexing.
        let walls = arena.walls();
        let internal = &walls[walls.len().min(4)..];
        let distance = match (config.wall_geometry, arena.boundary_conditions()) {
            (_, BoundaryConditions::Periodic) | (WallGeometry::Euclidean, _) => Distance::Euclidean,
            (WallGeometry::Geodesic, _) if internal.is_empty() => Distance::Euclidean,
            (WallGeometry::Geodesic, _) if internal.len() == 1 => {
                let wall = internal[0];
                let ends = [wall.a, wall.b].into_iter().filter(|&e| arena.contains(e)).collect();
                Distance::Geodesic { wall, ends }
            }
            _ => Distance::LineOfSight(internal.to_vec()),
        };
        let to_ends = std::array::from_fn(|j| match &distance {
            Distance::Geodesic { ends, .. } => {
                centres.iter().map(|&c| ends.get(j).map_or(f64::INFINITY, |&e| (e - c).norm())).collect()
            }
            _ => Vec::new(),
        });
        PlaceCells {
            inv_two_w2: widths.iter().map(|w| 1.0 / (2.0 * w * w)).collect(),
            centres_x: centres.iter().map(|c| c.x).collect(),
            centres_y: centres.iter().map(|c| c.y).collect(),
            to_ends,
            avx2: has_avx2(),
            centres,
            widths,
            tuning: config.description,
            distance,
            min_fr: config.min_fr,
            max_fr: config.max_fr,
            noise_std: config.noise_std,
            noise_tau: config.noise_coherence_time,
        }
    }

    pub fn len(&self) -> usize {
        self.centres.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    pub fn centres(&self) -> &[Vec2] {
        &self.centres
    }

    pub fn widths(&self) -> &[f64] {
        &self.widths
    }

    pub fn has_noise(&self) -> bool {
        self.noise_std > 0.0
    }

    /// Distance from cell `i`'s centre to `p` under the arena's wall geometry.
    pub fn distance(&self, arena: &Arena, i: usize, p: Vec2) -> f64 {
        let c = self.centres[i];
        match &self.distance {
            Distance::Euclidean => arena.vector_between(c, p).norm(),
            Distance::LineOfSight(walls) => {
                let line = Segment::new(c, p);
                if walls.iter().any(|w| line.crosses(w)) {
                    BLOCKED
                } else {
                    (p - c).norm()
                }
            }
            Distance::Geodesic { wall, ends } => {
                let line = Segment::new(c, p);
                if !line.crosses(wall) {
                    return (p - c).norm();
                }
                // RatInABox takes the min over the ends strictly inside; if there is none (a wall
                // spanning the arena) it fails, and we treat the view as blocked instead.
                ends.iter().map(|&e| (e - c).norm() + (p - e).norm()).fold(BLOCKED, f64::min)
            }
        }
    }

    /// The distance from every cell's centre to `p`, into `out` (length n): [`Self::distance`]
    /// for each cell, the same numbers, but with the match on the geometry taken once, and, for
    /// euclidean distances in a solid arena and for geodesic ones, in loops without branches that
    /// the compiler vectorises.
    pub fn distances(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
        self.distances_inline(arena, p, out);
    }

    #[inline(always)]
    fn distances_inline(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
        debug_assert_eq!(out.len(), self.len());
        let (xs, ys) = (&self.centres_x[..out.len()], &self.centres_y[..out.len()]);
        match &self.distance {
            Distance::Euclidean if arena.boundary_conditions() == BoundaryConditions::Solid => {
                // `arena.vector_between(c, p).norm()` is `(p − c).norm()` without wrapping.
                for ((o, &cx), &cy) in out.iter_mut().zip(xs).zip(ys) {
                    *o = (p - Vec2::new(cx, cy)).norm();
                }
            }
            Distance::Geodesic { wall, ends } => {
                // `Segment::new(c, p).crosses(wall)` computed without its early return: when the
                // lines are parallel (denominator 0) both quotients are ±∞ or NaN, and the open
                // interval test fails as the early return would. The detour is the same
                // `min(BLOCKED, |e − c| + |p − e|)` over the ends, with |e − c| precomputed and an
                // infinite one for a missing end.
                let d2 = wall.b - wall.a;
                let to_p: [f64; 2] = std::array::from_fn(|j| ends.get(j).map_or(0.0, |&e| (p - e).norm()));
                let (e0, e1) = (&self.to_ends[0][..out.len()], &self.to_ends[1][..out.len()]);
                for ((((o, &cx), &cy), &c0), &c1) in out.iter_mut().zip(xs).zip(ys).zip(e0).zip(e1) {
                    let c = Vec2::new(cx, cy);
                    let d1 = p - c;
                    let denom = d1.cross(d2);
                    let w = wall.a - c;
                    let la = w.cross(d2) / denom;
                    let lb = w.cross(d1) / denom;
                    let crosses = (la > 0.0) & (la < 1.0) & (lb > 0.0) & (lb < 1.0);
                    let detour = BLOCKED.min(c0 + to_p[0]).min(c1 + to_p[1]);
                    *o = if crosses { detour } else { d1.norm() };
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.distance(arena, i, p);
                }
            }
        }
    }

    /// Rates at position `p`, without noise, into `out` (length n).
    pub fn rates_at(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only where the CPU reports AVX2 (`has_avx2`).
            return unsafe { self.rates_at_avx2(arena, p, out) };
        }
        self.rates_at_inline(arena, p, out)
    }

    /// [`Self::rates_at`] compiled for AVX2: the same operations (no FMA, which would change
    /// roundings), on 4 lanes instead of SSE2's 2, so the same numbers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn rates_at_avx2(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
        self.rates_at_inline(arena, p, out)
    }

    #[inline(always)]
    fn rates_at_inline(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
        debug_assert_eq!(out.len(), self.len());
        let span = self.max_fr - self.min_fr;
        if self.tuning == Tuning::OneHot {
            let nearest = (0..self.len())
                .map(|i| (i, self.distance(arena, i, p)))
                .fold((0, f64::INFINITY), |best, (i, d)| if d < best.1 { (i, d) } else { best });
            for (i, o) in out.iter_mut().enumerate() {
                *o = if i == nearest.0 { self.max_fr } else { self.min_fr };
            }
            return;
        }
        self.distances_inline(arena, p, out);
        if self.tuning == Tuning::Gaussian {
            // `tuning_value` for every cell at once: the exponent, then exp and the rescale in a
            // loop that vectorises (one with the C library's exp where an exponent is too far out).
            let inv = &self.inv_two_w2[..out.len()];
            for (o, &k) in out.iter_mut().zip(inv) {
                *o = -(*o * *o * k);
            }
            let in_range = out.iter().fold(true, |ok, &x| ok & (EXP_MIN..=EXP_MAX).contains(&x));
            if in_range {
                for o in out.iter_mut() {
                    *o = exp_poly(*o) * span + self.min_fr;
                }
            } else {
                for o in out.iter_mut() {
                    *o = exp(*o) * span + self.min_fr;
                }
            }
            return;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.tuning_value(i, *o) * span + self.min_fr;
        }
    }

    /// The unit-scale tuning curve of cell `i` at distance `r` (`PlaceCells.get_state`).
    fn tuning_value(&self, i: usize, r: f64) -> f64 {
        let r2k = r * r * self.inv_two_w2[i];
        match self.tuning {
            Tuning::Gaussian => exp(-r2k),
            Tuning::GaussianThreshold => {
                let floor = (-0.5f64).exp();
                (exp(-r2k) - floor).max(0.0) / (1.0 - floor)
            }
            Tuning::DiffOfGaussians => {
                // The wider gaussian has 1.5× the width; it can go below 0 far from the centre.
                let ratio2 = 1.5f64 * 1.5;
                (exp(-r2k) - exp(-r2k / ratio2) / ratio2) * ratio2 / (ratio2 - 1.0)
            }
            // RatInABox compares with the `widths` parameter rather than the per-cell array; they
            // agree for a scalar width, and a per-cell list would not broadcast there, so we use
            // each cell's width.
            Tuning::TopHat => f64::from(u8::from(r < self.widths[i])),
            Tuning::OneHot => unreachable!("handled in rates_at"),
        }
    }

    /// Advances the OU noise of one env by dt (`Neurons.update`): Euler–Maruyama with drift 0,
    /// as RatInABox's `utils.ornstein_uhlenbeck`.
    pub fn step_noise<R: Rng>(&self, noise: &mut [f64], dt: f64, rng: &mut R) {
        if !self.has_noise() {
            return;
        }
        let a = dt / self.noise_tau;
        let s = self.noise_std * (2.0 * a).sqrt();
        for x in noise.iter_mut() {
            let xi: f64 = rng.sample(StandardNormal);
            *x += -*x * a + s * xi;
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// The range of arguments for which [`exp_poly`] holds: its result stays a normal number.
const EXP_MIN: f64 = -708.0;
const EXP_MAX: f64 = 709.0;

/// e^x: [`exp_poly`] in its range, else the C library's.
fn exp(x: f64) -> f64 {
    if (EXP_MIN..=EXP_MAX).contains(&x) {
        exp_poly(x)
    } else {
        x.exp()
    }
}

/// e^x for x in [`EXP_MIN`, `EXP_MAX`], within 1 ulp of `f64::exp`, in straight-line arithmetic
/// (no branch, no table, no call), so that a loop over it vectorises.
///
/// x = q·ln 2 + s with q = round(x/ln 2) and |s| ≲ ln 2 / 2 (Cody–Waite: ln 2 split into a head
/// whose product with q is exact and a tail, as in fdlibm's `e_exp.c`); e^s by its Taylor series to
/// s¹³ (truncation error below 0.05 ulp for |s| ≤ 0.35), summed as 1 + (s + s²·P(s)) so that the
/// last rounding is the largest; then × 2^q, built in the exponent bits. q comes out of adding
/// 1.5·2⁵²: the sum's low mantissa bits are q in two's complement, and adding the exponent bias
/// and shifting left by 52 gives 2^q's bit pattern while q + 1023 lies in [1, 2046].
#[inline(always)]
fn exp_poly(x: f64) -> f64 {
    // 1.5 · 2⁵².
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // fdlibm's ln2HI (6.93147180369123816490e-1, 21 trailing zero bits) and ln2LO
    // (1.90821492927058770002e-10).
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    // 1/k! for k = 2 … 13.
    const C: [f64; 12] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let k = x * std::f64::consts::LOG2_E + SHIFT;
    let q = k - SHIFT;
    let s = (x - q * LN2_HI) - q * LN2_LO;
    // P(s) = Σ C[j] s^j by Estrin's scheme: a dependency chain of 4 multiply–adds instead of
    // Horner's 11, so that loop iterations overlap.
    let s2 = s * s;
    let s4 = s2 * s2;
    let s8 = s4 * s4;
    let a: [f64; 6] = std::array::from_fn(|j| C[2 * j] + C[2 * j + 1] * s);
    let b: [f64; 3] = std::array::from_fn(|j| a[2 * j] + a[2 * j + 1] * s2);
    let p = (b[0] + b[1] * s4) + b[2] * s8;
    let e_s = 1.0 + (s + s2 * p);
    let scale = f64::from_bits(k.to_bits().wrapping_add(1023) << 52);
    e_s * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::{ArenaConfig, CentreMethod};

    fn unit_box(walls: Vec<[[f64; 2]; 2]>) -> Arena {
        Arena::new(&ArenaConfig {
            scale: 1.0,
            aspect: 1.0,
            boundary: None,
            boundary_conditions: BoundaryConditions::Solid,
            walls,
        })
    }

    fn one_cell(tuning: Tuning, geometry: WallGeometry, min_fr: f64, max_fr: f64) -> CellsConfig {
        CellsConfig {
            n: 1,
            description: tuning,
            widths: Widths::One(0.2),
            centres: Centres::Explicit(vec![[0.3, 0.3]]),
            wall_geometry: geometry,
            min_fr,
            max_fr,
            noise_std: 0.0,
            noise_coherence_time: 0.5,
        }
    }

    /// §7.9 of the spec (centre (0.3, 0.3), w = 0.2, max 2, min 0.5, measured with ratinabox
    /// 1.15.3 to 4–5 significant digits, hence the 1e-4 tolerance).
    #[test]
    fn tuning_curves_match_golden_values() {
        let arena = unit_box(vec![]);
        let mut rng = common::rng::stream(0, &["cells".into()]);
        let golden = [
            (Tuning::Gaussian, [2.0, 1.4098, 0.987, 0.5167]),
            (Tuning::DiffOfGaussians, [2.0, 1.1767, 0.6487, 0.3676]),
            (Tuning::GaussianThreshold, [2.0, 0.5, 0.5, 0.5]),
            (Tuning::TopHat, [2.0, 0.5, 0.5, 0.5]),
        ];
        for (tuning, want) in golden {
            let cells = PlaceCells::new(&one_cell(tuning, WallGeometry::Euclidean, 0.5, 2.0), &arena, &mut rng);
            for (d, w) in [0.0, 0.2, 0.3, 0.6].into_iter().zip(want) {
                let mut out = [0.0];
                cells.rates_at(&arena, Vec2::new(0.3 + d, 0.3), &mut out);
                assert!((out[0] - w).abs() < 1e-4 * w.max(1.0) + 5e-4, "{tuning:?} at d = {d}: {} vs {w}", out[0]);
            }
        }
        // Just inside the width, a top hat is on.
        let cells = PlaceCells::new(&one_cell(Tuning::TopHat, WallGeometry::Euclidean, 0.5, 2.0), &arena, &mut rng);
        let mut out = [0.0];
        cells.rates_at(&arena, Vec2::new(0.3 + 0.1999, 0.3), &mut out);
        assert_eq!(out[0], 2.0);
    }

    #[test]
    fn one_hot_fires_for_the_nearest_centre_only() {
        let arena = unit_box(vec![]);
        let mut cfg = one_cell(Tuning::OneHot, WallGeometry::Euclidean, 0.0, 1.0);
        cfg.n = 3;
        cfg.centres = Centres::Explicit(vec![[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]);
        let mut rng = common::rng::stream(0, &["cells".into()]);
        let cells = PlaceCells::new(&cfg, &arena, &mut rng);
        let mut out = [0.0; 3];
        cells.rates_at(&arena, Vec2::new(0.6, 0.55), &mut out);
        assert_eq!(out, [0.0, 1.0, 0.0]);
    }

    /// §3 of the spec: centre (0.3, 0.3), wall [[0.5, 0], [0.5, 0.8]], agent at (0.7, 0.3).
    #[test]
    fn geodesic_and_line_of_sight_examples() {
        let arena = unit_box(vec![[[0.5, 0.0], [0.5, 0.8]]]);
        let mut rng = common::rng::stream(0, &["cells".into()]);
        let p = Vec2::new(0.7, 0.3);
        let rate = |g| {
            let cells = PlaceCells::new(&one_cell(Tuning::Gaussian, g, 0.0, 1.0), &arena, &mut rng.clone());
            let mut out = [0.0];
            cells.rates_at(&arena, p, &mut out);
            (out[0], cells.distance(&arena, 0, p))
        };
        let (euclid, d) = rate(WallGeometry::Euclidean);
        assert!((d - 0.4).abs() < 1e-12 && (euclid - 0.1353).abs() < 1e-4);
        let (los, d) = rate(WallGeometry::LineOfSight);
        assert!(d == 1000.0 && los == 0.0);
        let (geo, d) = rate(WallGeometry::Geodesic);
        let want = 2.0 * (0.2f64 * 0.2 + 0.5 * 0.5).sqrt();
        assert!((d - want).abs() < 1e-12, "geodesic distance {d}, want {want}");
        assert!((geo - (-want * want / 0.08).exp()).abs() < 1e-15 && geo > 4e-7 && geo < 6e-7);
        // With a clear line of sight, every geometry is euclidean.
        let q = Vec2::new(0.3, 0.9);
        let cells = PlaceCells::new(&one_cell(Tuning::Gaussian, WallGeometry::Geodesic, 0.0, 1.0), &arena, &mut rng);
        assert!((cells.distance(&arena, 0, q) - 0.6).abs() < 1e-12);
    }

    /// The thesis walls layout: the wall's foot (0.4, 0) is on the boundary, so only the top end
    /// (0.4, 0.9) is a way round.
    #[test]
    fn geodesic_goes_round_the_free_end_only() {
        let arena = unit_box(vec![[[0.4, 0.0], [0.4, 0.9]]]);
        let mut rng = common::rng::stream(0, &["cells".into()]);
        let mut cfg = one_cell(Tuning::Gaussian, WallGeometry::Geodesic, 0.0, 1.0);
        cfg.centres = Centres::Explicit(vec![[0.2, 0.1]]);
        let cells = PlaceCells::new(&cfg, &arena, &mut rng);
        let p = Vec2::new(0.6, 0.1);
        let top = Vec2::new(0.4, 0.9);
        let want = (top - Vec2::new(0.2, 0.1)).norm() + (p - top).norm();
        assert!((cells.distance(&arena, 0, p) - want).abs() < 1e-12);
        // More than one internal wall: geodesic falls back to line of sight.
        let two = unit_box(vec![[[0.4, 0.0], [0.4, 0.9]], [[0.7, 0.2], [0.7, 1.0]]]);
        let cells = PlaceCells::new(&cfg, &two, &mut rng);
        assert_eq!(cells.distance(&two, 0, p), 1000.0);
    }

    #[test]
    fn noise_is_an_ou_process_with_the_configured_std() {
        let arena = unit_box(vec![]);
        let mut rng = common::rng::stream(5, &["noise".into()]);
        let mut cfg = one_cell(Tuning::Gaussian, WallGeometry::Euclidean, 0.0, 1.0);
        cfg.noise_std = 0.3;
        let cells = PlaceCells::new(&cfg, &arena, &mut rng);
        // Euler–Maruyama with a = dt/τ: stationary variance σ²/(1 − a/2).
        let (dt, n) = (0.05, 200_000);
        let mut x = [0.0];
        let mut sum2 = 0.0;
        for _ in 0..n {
            cells.step_noise(&mut x, dt, &mut rng);
            sum2 += x[0] * x[0];
        }
        let want = 0.3 * 0.3 / (1.0 - dt / 0.5 / 2.0);
        let got = sum2 / n as f64;
        // Autocorrelated samples: effective n ≈ n·a/2 = 10,000, so the relative sd of the
        // variance estimate is about √(2/10⁴) = 1.4%; allow 5 sd.
        assert!((got / want - 1.0).abs() < 0.07, "variance {got} vs {want}");
    }

    /// Distance between two floats in units in the last place (both finite, same sign).
    fn ulps(a: f64, b: f64) -> u64 {
        a.to_bits().abs_diff(b.to_bits())
    }

    /// `exp_poly` against the C library's exp: at most 1 ulp apart over its whole range, and
    /// densely over the exponents the cells produce (−r²/2w² for r up to a few metres).
    #[test]
    fn exp_poly_is_within_one_ulp() {
        use rand::Rng;
        let mut rng = common::rng::stream(7, &["exp".into()]);
        let mut worst = 0;
        let mut check = |x: f64| {
            let (got, want) = (exp_poly(x), x.exp());
            let d = ulps(got, want);
            assert!(d <= 1, "exp({x}): {got:e} vs {want:e}, {d} ulps");
            worst = worst.max(d);
        };
        for _ in 0..1_000_000 {
            check(rng.random_range(-80.0..0.0));
            check(rng.random_range(EXP_MIN..EXP_MAX));
            check(rng.random_range(-1.0..1.0));
        }
        for x in [0.0, -0.0, EXP_MIN, EXP_MAX, 1.0, -1.0, std::f64::consts::LN_2, -std::f64::consts::LN_2 / 2.0] {
            check(x);
        }
        assert_eq!(exp_poly(0.0), 1.0);
        // Outside the range, `exp` is the C library's.
        for x in [-709.0, -745.0, -1e6, 710.0, f64::NEG_INFINITY] {
            assert_eq!(exp(x).to_bits(), x.exp().to_bits(), "exp({x})");
        }
        assert!(exp(f64::NAN).is_nan());
    }

    /// `distances` gives exactly `distance`'s numbers for every geometry, and `rates_at` the
    /// tuning curves within 1 ulp of the formula with the C library's exp (2 ulps after the
    /// rescale to [min_fr, max_fr]; 8 for the tunings that subtract two terms), the same with or
    /// without AVX2.
    #[test]
    fn vectorised_distances_and_rates_match_the_per_cell_formula() {
        use rand::Rng;
        let mut rng = common::rng::stream(8, &["cells".into()]);
        let periodic = ArenaConfig {
            scale: 1.0,
            aspect: 1.0,
            boundary: None,
            boundary_conditions: BoundaryConditions::Periodic,
            walls: vec![],
        };
        let arenas = [
            unit_box(vec![]),
            unit_box(vec![[[0.4, 0.0], [0.4, 0.9]]]), // one free end
            unit_box(vec![[[0.5, 0.2], [0.5, 0.8]]]), // two free ends
            unit_box(vec![[[0.0, 0.5], [1.0, 0.5]]]), // no free end: blocked
            unit_box(vec![[[0.4, 0.0], [0.4, 0.9]], [[0.7, 0.2], [0.7, 1.0]]]), // line of sight
            Arena::new(&periodic),
        ];
        for arena in &arenas {
            for geometry in [WallGeometry::Euclidean, WallGeometry::LineOfSight, WallGeometry::Geodesic] {
                for tuning in [Tuning::Gaussian, Tuning::GaussianThreshold, Tuning::DiffOfGaussians] {
                    let mut cfg = one_cell(tuning, geometry, 0.5, 2.0);
                    cfg.n = 50;
                    cfg.centres = Centres::Method(CentreMethod::UniformJitter);
                    let cells = PlaceCells::new(&cfg, arena, &mut rng);
                    // The same cells without the AVX2 version: 2 lanes, the same numbers.
                    let sse2 = PlaceCells { avx2: false, ..cells.clone() };
                    let (mut d, mut r, mut r2) = (vec![0.0; 50], vec![0.0; 50], vec![0.0; 50]);
                    // Random points, plus points level with a centre and with a wall end
                    // (parallel and collinear cases).
                    let mut points: Vec<Vec2> =
                        (0..400).map(|_| Vec2::new(rng.random::<f64>(), rng.random::<f64>())).collect();
                    points.extend([Vec2::new(cells.centres()[3].x, 0.95), Vec2::new(0.4, 0.95), Vec2::new(0.5, 0.1)]);
                    for p in points {
                        cells.distances(arena, p, &mut d);
                        cells.rates_at(arena, p, &mut r);
                        sse2.rates_at(arena, p, &mut r2);
                        assert!(r.iter().zip(&r2).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX2 vs SSE2 at {p:?}");
                        for i in 0..50 {
                            assert_eq!(d[i].to_bits(), cells.distance(arena, i, p).to_bits(), "cell {i} at {p:?}");
                            let r2k = d[i] * d[i] * cells.inv_two_w2[i];
                            let unit = match tuning {
                                Tuning::Gaussian => (-r2k).exp(),
                                Tuning::GaussianThreshold => {
                                    ((-r2k).exp() - (-0.5f64).exp()).max(0.0) / (1.0 - (-0.5f64).exp())
                                }
                                _ => ((-r2k).exp() - (-r2k / 2.25).exp() / 2.25) * 2.25 / 1.25,
                            };
                            let want = unit * 1.5 + 0.5;
                            let tol = if tuning == Tuning::Gaussian { 2 } else { 8 };
                            assert!(ulps(r[i], want) <= tol, "{tuning:?} cell {i} at {p:?}: {} vs {want}", r[i]);
                        }
                    }
                }
            }
        }
    }
}
