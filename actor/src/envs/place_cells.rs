//! Place cells: RatInABox's `PlaceCells` (v1.15.3, `ratinabox/Neurons.py`).
//!
//! A cell's rate is a tuning curve of the distance from its centre to the agent, rescaled to
//! `[min_fr, max_fr]`, plus optional additive OU noise (Hz, not clipped, as in the reference).
//! Distances follow `get_distances_between___accounting_for_environment`: euclidean (the short way
//! round on a torus), line of sight (1000 m when an internal wall blocks the straight line), or
//! geodesic with one internal wall (the shorter detour round an end of the wall that lies strictly
//! inside the arena).

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
        PlaceCells {
            inv_two_w2: widths.iter().map(|w| 1.0 / (2.0 * w * w)).collect(),
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

    /// Rates at position `p`, without noise, into `out` (length n).
    pub fn rates_at(&self, arena: &Arena, p: Vec2, out: &mut [f64]) {
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
        for (i, o) in out.iter_mut().enumerate() {
            let r = self.distance(arena, i, p);
            *o = self.tuning_value(i, r) * span + self.min_fr;
        }
    }

    /// The unit-scale tuning curve of cell `i` at distance `r` (`PlaceCells.get_state`).
    fn tuning_value(&self, i: usize, r: f64) -> f64 {
        let r2k = r * r * self.inv_two_w2[i];
        match self.tuning {
            Tuning::Gaussian => (-r2k).exp(),
            Tuning::GaussianThreshold => {
                let floor = (-0.5f64).exp();
                ((-r2k).exp() - floor).max(0.0) / (1.0 - floor)
            }
            Tuning::DiffOfGaussians => {
                // The wider gaussian has 1.5× the width; it can go below 0 far from the centre.
                let ratio2 = 1.5f64 * 1.5;
                ((-r2k).exp() - (-r2k / ratio2).exp() / ratio2) * ratio2 / (ratio2 - 1.0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::ArenaConfig;

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
}
