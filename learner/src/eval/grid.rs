//! The square-binned grid over an arena on which every RatInABox analysis is computed: source
//! positions, rate maps, occupancy histograms and place fields share it.
//!
//! Bin k (row-major, row 0 at the bottom) covers `[x0 + i·dx, x0 + (i+1)·dx) × [y0 + j·dx, …)`
//! with `i = k % nx`, `j = k / nx`; its centre is the source position of that bin. The grid
//! covers the arena's bounding box (the last row and column may reach past it when `dx` does
//! not divide the box); a bin whose centre lies outside the arena is masked out.

use anyhow::{ensure, Result};

use actor::envs::arena::Arena;
use actor::envs::geometry::Vec2;

#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub dx: f64,
    pub nx: usize,
    pub ny: usize,
    pub x0: f64,
    pub y0: f64,
    /// Whether each bin's centre lies inside the arena.
    pub inside: Vec<bool>,
}

impl Grid {
    /// The grid of bin size `dx` (m) over `arena`.
    pub fn over(arena: &Arena, dx: f64) -> Result<Grid> {
        let [x0, x1, y0, y1] = arena.extent();
        ensure!(dx.is_finite() && dx > 0.0, "the grid's bin size must be positive, not {dx}");
        let count = |len: f64| ((len / dx) - 1e-9).ceil().max(1.0) as usize;
        let (nx, ny) = (count(x1 - x0), count(y1 - y0));
        ensure!(nx * ny <= 1_000_000, "a bin size of {dx} m gives {nx} × {ny} bins: use a coarser grid");
        let mut grid = Grid { dx, nx, ny, x0, y0, inside: Vec::new() };
        grid.inside = (0..nx * ny).map(|k| arena.contains(grid.centre(k))).collect();
        ensure!(grid.inside.iter().any(|&b| b), "no bin of {dx} m has its centre inside the arena");
        Ok(grid)
    }

    pub fn len(&self) -> usize {
        self.nx * self.ny
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn centre(&self, k: usize) -> Vec2 {
        let (i, j) = (k % self.nx, k / self.nx);
        Vec2::new(self.x0 + (i as f64 + 0.5) * self.dx, self.y0 + (j as f64 + 0.5) * self.dx)
    }

    /// The bins inside the arena, in order.
    pub fn inside_bins(&self) -> Vec<usize> {
        (0..self.len()).filter(|&k| self.inside[k]).collect()
    }

    /// The bin holding `p`, `None` outside the grid.
    pub fn bin_of(&self, p: [f64; 2]) -> Option<usize> {
        let i = ((p[0] - self.x0) / self.dx).floor();
        let j = ((p[1] - self.y0) / self.dx).floor();
        if !(i >= 0.0 && j >= 0.0 && (i as usize) < self.nx && (j as usize) < self.ny) {
            return None;
        }
        Some(j as usize * self.nx + i as usize)
    }

    /// The nearest bin to `p`: `p` clamped onto the grid.
    pub fn nearest_bin(&self, p: [f64; 2]) -> usize {
        let i = ((p[0] - self.x0) / self.dx).floor().clamp(0.0, (self.nx - 1) as f64) as usize;
        let j = ((p[1] - self.y0) / self.dx).floor().clamp(0.0, (self.ny - 1) as f64) as usize;
        j * self.nx + i
    }

    /// `[x0, x1, y0, y1]` of the whole grid (for figures).
    pub fn extent(&self) -> [f64; 4] {
        [self.x0, self.x0 + self.nx as f64 * self.dx, self.y0, self.y0 + self.ny as f64 * self.dx]
    }

    /// The four neighbours of bin `k` that exist (4-connectivity).
    pub fn neighbours(&self, k: usize) -> impl Iterator<Item = usize> + '_ {
        let (i, j) = ((k % self.nx) as isize, (k / self.nx) as isize);
        [(-1, 0), (1, 0), (0, -1), (0, 1)].into_iter().filter_map(move |(di, dj)| {
            let (a, b) = (i + di, j + dj);
            (a >= 0 && b >= 0 && (a as usize) < self.nx && (b as usize) < self.ny)
                .then(|| b as usize * self.nx + a as usize)
        })
    }

    /// A normalised histogram of `points` over the grid's bins (points outside it are dropped;
    /// the result sums to 1 over the rest, or is all 0 when none fall inside).
    pub fn histogram(&self, points: &[[f64; 2]]) -> Vec<f64> {
        let mut h = vec![0.0; self.len()];
        for p in points {
            if let Some(k) = self.bin_of(*p) {
                h[k] += 1.0;
            }
        }
        let total: f64 = h.iter().sum();
        if total > 0.0 {
            h.iter_mut().for_each(|v| *v /= total);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actor::envs::config::{EnvConfig, EnvId};

    fn unit_box() -> Arena {
        let EnvConfig::Riab(c) = EnvConfig::defaults(EnvId::RiabRandom) else { unreachable!() };
        Arena::new(&c.arena)
    }

    #[test]
    fn bins_centres_and_lookup_agree() {
        let g = Grid::over(&unit_box(), 0.05).unwrap();
        assert_eq!((g.nx, g.ny), (20, 20));
        assert!(g.inside.iter().all(|&b| b));
        let c = g.centre(21);
        assert!((c.x - 0.075).abs() < 1e-12 && (c.y - 0.075).abs() < 1e-12);
        for k in [0, 21, 399] {
            let c = g.centre(k);
            assert_eq!(g.bin_of([c.x, c.y]), Some(k));
        }
        assert_eq!(g.bin_of([1.2, 0.5]), None);
        assert_eq!(g.nearest_bin([1.2, -0.3]), 19);
        assert_eq!(g.neighbours(0).count(), 2);
        assert_eq!(g.neighbours(21).count(), 4);
        let h = g.histogram(&[[0.01, 0.01], [0.01, 0.02], [0.99, 0.99], [5.0, 5.0]]);
        assert_eq!((h[0], h[399]), (2.0 / 3.0, 1.0 / 3.0));
        // A bin size that does not divide the box covers it with one more column and row.
        let g = Grid::over(&unit_box(), 0.3).unwrap();
        assert_eq!((g.nx, g.ny), (4, 4));
        assert!(!g.inside[3] && g.inside[0]);
        assert!(Grid::over(&unit_box(), 0.0).is_err());
    }
}
