//! The arena: RatInABox's 2-D `Environment` (v1.15.3, `ratinabox/Environment.py`).
//!
//! A rectangle (`scale` × `aspect·scale`, from the origin) or a simple polygon, with solid or
//! periodic boundaries, plus extra walls as segments. As in RatInABox, the wall list holds the
//! boundary edges first (solid boundaries only; a periodic box has no walls at all) and then the
//! user's walls, and the boundary edges are built as `[b[i+1], b[i]]`.

use rand::Rng;

use super::config::{ArenaConfig, BoundaryConditions, CentreMethod};
use super::geometry::{polygon_contains_strictly, Segment, Vec2};

#[derive(Debug, Clone)]
pub struct Arena {
    boundary: Vec<Vec2>,
    /// True for the default box (no `boundary` given), as RatInABox's `is_rectangular`.
    rectangular: bool,
    /// (x_min, x_max, y_min, y_max) of the boundary.
    extent: [f64; 4],
    /// The box height: RatInABox wraps periodic vectors by it on both axes.
    scale: f64,
    bc: BoundaryConditions,
    walls: Vec<Segment>,
    n_boundary_walls: usize,
}

impl Arena {
    pub fn new(config: &ArenaConfig) -> Arena {
        let (boundary, rectangular) = match &config.boundary {
            Some(b) => (b.iter().map(|p| Vec2::new(p[0], p[1])).collect::<Vec<_>>(), false),
            None => {
                let (w, h) = (config.aspect * config.scale, config.scale);
                (vec![Vec2::new(0.0, 0.0), Vec2::new(w, 0.0), Vec2::new(w, h), Vec2::new(0.0, h)], true)
            }
        };
        let extent = [
            boundary.iter().map(|p| p.x).fold(f64::INFINITY, f64::min),
            boundary.iter().map(|p| p.x).fold(f64::NEG_INFINITY, f64::max),
            boundary.iter().map(|p| p.y).fold(f64::INFINITY, f64::min),
            boundary.iter().map(|p| p.y).fold(f64::NEG_INFINITY, f64::max),
        ];
        let mut walls = Vec::new();
        if config.boundary_conditions == BoundaryConditions::Solid {
            let n = boundary.len();
            walls.extend((0..n).map(|i| Segment::new(boundary[(i + 1) % n], boundary[i])));
        }
        let n_boundary_walls = walls.len();
        walls.extend(
            config.walls.iter().map(|w| Segment::new(Vec2::new(w[0][0], w[0][1]), Vec2::new(w[1][0], w[1][1]))),
        );
        Arena {
            boundary,
            rectangular,
            extent,
            scale: config.scale,
            bc: config.boundary_conditions,
            walls,
            n_boundary_walls,
        }
    }

    /// Every wall, boundary edges first (RatInABox's `Env.walls`).
    pub fn walls(&self) -> &[Segment] {
        &self.walls
    }

    /// The walls that are not boundary edges.
    pub fn internal_walls(&self) -> &[Segment] {
        &self.walls[self.n_boundary_walls..]
    }

    pub fn boundary_conditions(&self) -> BoundaryConditions {
        self.bc
    }

    pub fn extent(&self) -> [f64; 4] {
        self.extent
    }

    /// Strictly inside the boundary (points on an edge are outside).
    pub fn contains(&self, p: Vec2) -> bool {
        if self.rectangular {
            let [x0, x1, y0, y1] = self.extent;
            p.x > x0 && p.x < x1 && p.y > y0 && p.y < y1
        } else {
            polygon_contains_strictly(&self.boundary, p)
        }
    }

    /// The safety net applied after collision handling when a step ends outside: clamp 1 cm
    /// inside a solid box, wrap a periodic one, or resample uniformly in a polygon
    /// (`apply_boundary_conditions`). Wrapping takes `p mod x_max` like the reference, which
    /// assumes the box starts at the origin (ours always does).
    pub fn apply_boundary_conditions<R: Rng>(&self, p: Vec2, rng: &mut R) -> Vec2 {
        if self.contains(p) {
            return p;
        }
        let [x0, x1, y0, y1] = self.extent;
        if !self.rectangular {
            return self.sample_random(rng);
        }
        match self.bc {
            BoundaryConditions::Periodic => Vec2::new(p.x.rem_euclid(x1), p.y.rem_euclid(y1)),
            BoundaryConditions::Solid => {
                Vec2::new(p.x.max(x0 + 0.01).min(x1 - 0.01), p.y.max(y0 + 0.01).min(y1 - 0.01))
            }
        }
    }

    /// The vector from `from` to `to`, the short way round on a torus.
    ///
    /// Reproduces a RatInABox quirk (`get_vectors_between___accounting_for_environment`): a
    /// periodic component is wrapped when it exceeds `scale/2`, with `scale` (the height) used for
    /// both axes, so with `aspect ≠ 1` the x wrap is off. The issue is silent on this, so we keep
    /// the reference's behaviour.
    pub fn vector_between(&self, from: Vec2, to: Vec2) -> Vec2 {
        let mut d = to - from;
        if self.bc == BoundaryConditions::Periodic {
            let s = self.scale;
            for c in [&mut d.x, &mut d.y] {
                if c.abs() > s / 2.0 {
                    *c = -c.signum() * (s - c.abs());
                }
            }
        }
        d
    }

    /// A uniform position inside the arena (rejection sampling within the extent).
    pub fn sample_random<R: Rng>(&self, rng: &mut R) -> Vec2 {
        let [x0, x1, y0, y1] = self.extent;
        loop {
            let p = Vec2::new(x0 + (x1 - x0) * rng.random::<f64>(), y0 + (y1 - y0) * rng.random::<f64>());
            if self.rectangular || self.contains(p) {
                return p;
            }
        }
    }

    /// `n` positions by one of RatInABox's `sample_positions` methods.
    ///
    /// `uniform` lays a grid of spacing δ = √(bounding-box area/n): `linspace(x0+δ/2, x1−δ/2, int(W/δ))` on each
    /// axis, grid points outside a polygon dropped. `uniform_jitter` adds U(±0.45δ) to each
    /// coordinate. When the grid has fewer than n points, the rest are copies of grid points chosen
    /// with replacement, jittered by U(±0.45δ/2). For n = 50 in the unit box: a 7 × 7 grid plus one.
    pub fn sample_positions<R: Rng>(&self, n: usize, method: CentreMethod, rng: &mut R) -> Vec<Vec2> {
        if method == CentreMethod::Random {
            return (0..n).map(|_| self.sample_random(rng)).collect();
        }
        let [x0, x1, y0, y1] = self.extent;
        // RatInABox uses the bounding box's area even for a polygon (`Environment.py:602`).
        let delta = ((x1 - x0) * (y1 - y0) / n as f64).sqrt();
        let xs = linspace(x0 + delta / 2.0, x1 - delta / 2.0, ((x1 - x0) / delta) as usize);
        let ys = linspace(y0 + delta / 2.0, y1 - delta / 2.0, ((y1 - y0) / delta) as usize);
        // np.meshgrid(x, y).reshape(2, -1).T: x varies fastest.
        let mut grid: Vec<Vec2> = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| Vec2::new(x, y)))
            .filter(|&p| self.rectangular || self.contains(p))
            .collect();
        let jitter = |rng: &mut R, half: f64| rng.random_range(-half..half);
        if method == CentreMethod::UniformJitter {
            for p in &mut grid {
                p.x += jitter(rng, 0.45 * delta);
                p.y += jitter(rng, 0.45 * delta);
            }
        }
        let n_grid = grid.len();
        if n_grid == 0 {
            return (0..n).map(|_| self.sample_random(rng)).collect();
        }
        while grid.len() < n {
            let mut p = grid[rng.random_range(0..n_grid)];
            p.x += jitter(rng, 0.45 * delta / 2.0);
            p.y += jitter(rng, 0.45 * delta / 2.0);
            grid.push(p);
        }
        grid
    }
}

/// NumPy's `linspace(a, b, n)`.
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::{EnvConfig, EnvId};

    fn arena(id: EnvId) -> Arena {
        match EnvConfig::defaults(id) {
            EnvConfig::Riab(c) => Arena::new(&c.arena),
            _ => unreachable!(),
        }
    }

    #[test]
    fn walls_list_boundary_edges_first() {
        let a = arena(EnvId::RiabWalls);
        assert_eq!(a.walls().len(), 5);
        assert_eq!(a.internal_walls().len(), 1);
        assert_eq!(a.walls()[0], Segment::new(Vec2::new(1.0, 0.0), Vec2::new(0.0, 0.0)));
        assert_eq!(a.internal_walls()[0].b, Vec2::new(0.4, 0.9));
        let mut cfg = match EnvConfig::defaults(EnvId::RiabRandom) {
            EnvConfig::Riab(c) => c.arena,
            _ => unreachable!(),
        };
        cfg.boundary_conditions = BoundaryConditions::Periodic;
        assert!(Arena::new(&cfg).walls().is_empty(), "a periodic box has no walls");
    }

    #[test]
    fn boundary_conditions() {
        let a = arena(EnvId::RiabRandom);
        let mut rng = common::rng::stream(0, &["test".into()]);
        assert_eq!(a.apply_boundary_conditions(Vec2::new(1.2, -0.3), &mut rng), Vec2::new(0.99, 0.01));
        assert_eq!(a.apply_boundary_conditions(Vec2::new(0.5, 0.5), &mut rng), Vec2::new(0.5, 0.5));
        let mut cfg = match EnvConfig::defaults(EnvId::RiabRandom) {
            EnvConfig::Riab(c) => c.arena,
            _ => unreachable!(),
        };
        cfg.boundary_conditions = BoundaryConditions::Periodic;
        let p = Arena::new(&cfg);
        let w = p.apply_boundary_conditions(Vec2::new(1.25, -0.25), &mut rng);
        assert!((w.x - 0.25).abs() < 1e-12 && (w.y - 0.75).abs() < 1e-12);
        let v = p.vector_between(Vec2::new(0.95, 0.5), Vec2::new(0.05, 0.5));
        assert!((v.x - 0.1).abs() < 1e-12 && v.y == 0.0);
    }

    /// §7.11 of the spec: n = 50 in the unit box gives a 7 × 7 grid on
    /// `linspace(0.0707, 0.9293, 7)`, each point within ±0.45δ (δ = 0.1414), plus one extra.
    #[test]
    fn centre_layout_for_fifty_cells() {
        let a = arena(EnvId::RiabRandom);
        let mut rng = common::rng::stream(3, &["cells".into()]);
        let cs = a.sample_positions(50, CentreMethod::UniformJitter, &mut rng);
        assert_eq!(cs.len(), 50);
        let delta = (1.0f64 / 50.0).sqrt();
        let grid = linspace(delta / 2.0, 1.0 - delta / 2.0, 7);
        assert!((grid[0] - 0.070_710_678).abs() < 1e-8 && (grid[6] - 0.929_289_32).abs() < 1e-7);
        for (i, c) in cs.iter().take(49).enumerate() {
            let (gx, gy) = (grid[i % 7], grid[i / 7]);
            assert!((c.x - gx).abs() <= 0.45 * delta && (c.y - gy).abs() <= 0.45 * delta, "centre {i}: {c:?}");
        }
        // The extra one sits within ±0.45δ/2 of some jittered grid point.
        let extra = cs[49];
        assert!(cs[..49]
            .iter()
            .any(|g| (g.x - extra.x).abs() <= 0.225 * delta && (g.y - extra.y).abs() <= 0.225 * delta));
        // Unjittered `uniform` is exactly the grid, x varying fastest: for n = 49, δ = 1/7.
        let u = a.sample_positions(49, CentreMethod::Uniform, &mut rng);
        assert_eq!(u.len(), 49);
        let (x, y) = (1.0 / 14.0 + 2.0 / 7.0, 1.0 / 14.0 + 1.0 / 7.0);
        assert!((u[9].x - x).abs() < 1e-12 && (u[9].y - y).abs() < 1e-12, "{:?}", u[9]);
    }

    #[test]
    fn polygon_sampling_stays_inside() {
        let cfg = ArenaConfig {
            scale: 1.0,
            aspect: 1.0,
            boundary: Some(vec![[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0], [1.0, 2.0], [0.0, 2.0]]),
            boundary_conditions: BoundaryConditions::Solid,
            walls: vec![],
        };
        let a = Arena::new(&cfg);
        assert_eq!(a.walls().len(), 6);
        let mut rng = common::rng::stream(1, &["t".into()]);
        for m in [CentreMethod::Random, CentreMethod::Uniform, CentreMethod::UniformJitter] {
            let ps = a.sample_positions(30, m, &mut rng);
            assert_eq!(ps.len(), 30);
            assert!(ps.iter().all(|&p| a.contains(p) || m == CentreMethod::UniformJitter));
        }
        let out = a.apply_boundary_conditions(Vec2::new(1.5, 1.5), &mut rng);
        assert!(a.contains(out));
    }
}
