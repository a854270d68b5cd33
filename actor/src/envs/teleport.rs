//! `riab-teleport`: the thesis's "teleport" motion (`ratinabox-spec.md` §4.2).
//!
//! The thesis script draws 12,000 uniform points, places them at `np.linspace(0, 1200, 12000)`
//! and hands them to `Agent.import_trajectory`, which fits `scipy.interpolate.interp1d(kind=
//! "cubic")` (a not-a-knot cubic spline) and moves the agent to `spline(t % t_max)` at every
//! update. Because the points are only 0.10001 s apart, the spline overshoots: about 5.7 % of
//! the samples at dt = 0.05 fall outside the box and a step is 0.27 m on average. That is the
//! dataset's character, so we keep it (place cells fire outside the box as RatInABox's do).
//!
//! On an endless stream one block of points would repeat every 1200 s; by default we draw a new
//! block each period instead (`loop = true` restores the repeat), and `mode = "iid"` gives true
//! i.i.d. jumps, which is what "teleport" was meant to approximate.

use rand::Rng;

use super::arena::Arena;
use super::config::{TeleportConfig, TeleportMode};
use super::geometry::Vec2;

/// A not-a-knot cubic spline through values at equally spaced knots `0, h, 2h, …`, the spline
/// `interp1d(kind="cubic")` fits.
#[derive(Debug, Clone, Default)]
pub struct Spline {
    h: f64,
    y: Vec<f64>,
    /// Second derivatives at the knots.
    m: Vec<f64>,
    /// Scratch of the tridiagonal solve, kept so that refitting allocates nothing.
    c: Vec<f64>,
}

impl Spline {
    /// Fits the spline through `y` (at least 4 values) at knots `h` apart.
    pub fn fit(h: f64, y: &[f64]) -> Spline {
        let mut s = Spline::default();
        s.refit(h, y);
        s
    }

    /// Fits in place, reusing the buffers.
    ///
    /// With second derivatives M, the interior conditions are `M[i−1] + 4M[i] + M[i+1] = d[i]`,
    /// `d[i] = 6(y[i−1] − 2y[i] + y[i+1])/h²`. Not-a-knot (one cubic across the first two and the
    /// last two intervals) means `M0 = 2M1 − M2` and `M[n−1] = 2M[n−2] − M[n−3]`; substituted
    /// into the first and last interior rows they give `M1 = d1/6` and `M[n−2] = d[n−2]/6`,
    /// leaving a strictly diagonally dominant tridiagonal system for M2 … M[n−3].
    pub fn refit(&mut self, h: f64, y: &[f64]) {
        let n = y.len();
        assert!(n >= 4, "a not-a-knot spline needs at least 4 knots");
        self.h = h;
        self.y.clear();
        self.y.extend_from_slice(y);
        self.m.clear();
        self.m.resize(n, 0.0);
        self.c.clear();
        self.c.resize(n, 0.0);
        let k = 6.0 / (h * h);
        let d = |i: usize| k * (y[i - 1] - 2.0 * y[i] + y[i + 1]);
        let m = &mut self.m;
        m[1] = d(1) / 6.0;
        m[n - 2] = d(n - 2) / 6.0;
        // Thomas algorithm on rows 2 ..= n−3 (diagonal 4, off-diagonals 1); m holds the
        // right-hand side during the forward sweep and c the modified upper diagonal.
        if n > 4 {
            let (lo, hi) = (2, n - 3);
            for i in lo..=hi {
                let mut rhs = d(i);
                if i == lo {
                    rhs -= m[1];
                }
                if i == hi {
                    rhs -= m[n - 2];
                }
                let (sub, prev_c, prev_r) = if i == lo { (0.0, 0.0, 0.0) } else { (1.0, self.c[i - 1], m[i - 1]) };
                let denom = 4.0 - sub * prev_c;
                self.c[i] = if i < hi { 1.0 / denom } else { 0.0 };
                m[i] = (rhs - sub * prev_r) / denom;
            }
            for i in (lo..hi).rev() {
                m[i] -= self.c[i] * m[i + 1];
            }
        }
        m[0] = 2.0 * m[1] - m[2];
        m[n - 1] = 2.0 * m[n - 2] - m[n - 3];
    }

    /// The knot span `[0, (n−1)h]`.
    pub fn span(&self) -> f64 {
        self.h * (self.y.len() - 1) as f64
    }

    /// The spline at `t`; outside the span the end cubics are extended (`fill_value="extrapolate"`).
    pub fn eval(&self, t: f64) -> f64 {
        let n = self.y.len();
        let i = ((t / self.h).floor().max(0.0) as usize).min(n - 2);
        let (a, b) = (t - i as f64 * self.h, (i + 1) as f64 * self.h - t);
        let h = self.h;
        let (m0, m1, y0, y1) = (self.m[i], self.m[i + 1], self.y[i], self.y[i + 1]);
        (m0 * b * b * b + m1 * a * a * a) / (6.0 * h) + (y0 / h - m0 * h / 6.0) * b + (y1 / h - m1 * h / 6.0) * a
    }
}

/// One env's teleport path.
#[derive(Debug, Clone, Default)]
struct Path {
    x: Spline,
    y: Spline,
    /// The block the splines were fitted for (`None` before the first).
    block: Option<u64>,
}

/// The teleport motion of E envs.
#[derive(Debug, Clone)]
pub struct Teleport {
    config: TeleportConfig,
    dt: f64,
    /// Steps taken; row k is at time `k·dt` (the agent's clock advances before it moves).
    steps: u64,
    paths: Vec<Path>,
    /// Scratch for drawing a block.
    xs: Vec<f64>,
    ys: Vec<f64>,
}

impl Teleport {
    pub fn new(config: &TeleportConfig, dt: f64, num_envs: usize) -> Teleport {
        Teleport {
            config: config.clone(),
            dt,
            steps: 0,
            paths: vec![Path::default(); num_envs],
            xs: Vec::new(),
            ys: Vec::new(),
        }
    }

    /// The position of env `e` at the next row; the caller steps every env once per row, in
    /// order, and then calls [`Teleport::advance`].
    pub fn next_position<R: Rng>(&mut self, e: usize, arena: &Arena, rng: &mut R) -> Vec2 {
        let t = (self.steps + 1) as f64 * self.dt;
        match self.config.mode {
            TeleportMode::Iid => arena.sample_random(rng),
            TeleportMode::Spline => {
                let period = self.config.period;
                // Row times are computed from the step count, not accumulated, so the block
                // boundaries do not drift.
                let mut block = (t / period).floor();
                let mut local = t - block * period;
                if local >= period {
                    block += 1.0;
                    local -= period;
                }
                let block = if self.config.repeat { 0 } else { block.max(0.0) as u64 };
                if self.paths[e].block != Some(block) {
                    self.draw_block(e, block, arena, rng);
                }
                let p = &self.paths[e];
                Vec2::new(p.x.eval(local), p.y.eval(local))
            }
        }
    }

    /// Marks the end of a row.
    pub fn advance(&mut self) {
        self.steps += 1;
    }

    /// Draws env `e`'s points for `block` (uniform in the arena, x then y per point, as
    /// `np.random.uniform(size=(N, 2))` orders them) and fits its splines.
    fn draw_block<R: Rng>(&mut self, e: usize, block: u64, arena: &Arena, rng: &mut R) {
        let n = self.config.points;
        self.xs.clear();
        self.ys.clear();
        for _ in 0..n {
            let p = arena.sample_random(rng);
            self.xs.push(p.x);
            self.ys.push(p.y);
        }
        let h = self.config.period / (n - 1) as f64;
        let path = &mut self.paths[e];
        path.x.refit(h, &self.xs);
        path.y.refit(h, &self.ys);
        path.block = Some(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::{EnvConfig, EnvId, RiabConfig};
    use common::rng;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    /// Values of `scipy.interpolate.interp1d(np.linspace(0, 1, 7), y, kind="cubic")` (scipy 1.x).
    #[test]
    fn matches_scipy_cubic_interp1d() {
        let y = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.6];
        let s = Spline::fit(1.0 / 6.0, &y);
        let golden = [
            (0.0, 0.3),
            (0.05, 0.8470437500000002),
            (0.1, 1.0351000000000001),
            (0.2, 0.7336571428571427),
            (0.37, 0.09168847857142864),
            (0.5, 0.5000000000000001),
            (0.71, 0.5965065357142858),
            (0.99, 0.5136595357142857),
            (1.0, 0.6),
        ];
        for (t, v) in golden {
            close(s.eval(t), v, 1e-12);
        }
        // Four knots: one cubic through all of them.
        let s = Spline::fit(1.0 / 3.0, &[0.0, 1.0, 0.0, 2.0]);
        close(s.eval(0.5), 0.4374999999999998, 1e-12);
        close(s.eval(0.9), 0.7875000000000002, 1e-12);
    }

    #[test]
    fn reproduces_cubics_exactly() {
        let f = |t: f64| 1.0 - 2.0 * t + 0.5 * t * t - 0.3 * t * t * t;
        let h = 0.25;
        let y: Vec<f64> = (0..40).map(|i| f(i as f64 * h)).collect();
        let s = Spline::fit(h, &y);
        for k in 0..400 {
            let t = k as f64 * 0.0243;
            close(s.eval(t), f(t), 1e-9 * (1.0 + f(t).abs()));
        }
    }

    fn thesis() -> RiabConfig {
        match EnvConfig::defaults(EnvId::RiabTeleport) {
            EnvConfig::Riab(c) => c,
            _ => unreachable!(),
        }
    }

    fn path(config: &RiabConfig, seed: u64, steps: usize) -> Vec<Vec2> {
        let arena = Arena::new(&config.arena);
        let mut t = Teleport::new(config.teleport.as_ref().unwrap(), config.dt, 1);
        let mut rng = rng::stream(seed, &["test".into()]);
        (0..steps)
            .map(|_| {
                let p = t.next_position(0, &arena, &mut rng);
                t.advance();
                p
            })
            .collect()
    }

    /// The spec's sanity figures (§4.2, §7.13): 5.7 % of samples outside the box, a mean step of
    /// 0.27 m. Over 5 × 24,000 samples the out-of-box fraction has a standard error of about
    /// 0.15 %, the mean step about 0.001 m (blocks are independent; samples within one are
    /// correlated over a few steps, hence the 4-σ margins below).
    #[test]
    fn thesis_recipe_sanity_figures() {
        let c = thesis();
        let (mut out, mut steps, mut n, mut dist) = (0usize, 0usize, 0usize, 0.0);
        for seed in 0..5 {
            let p = path(&c, seed, 24_000);
            out += p.iter().filter(|q| !(0.0..=1.0).contains(&q.x) || !(0.0..=1.0).contains(&q.y)).count();
            n += p.len();
            for w in p.windows(2) {
                dist += (w[1] - w[0]).norm();
                steps += 1;
            }
        }
        let out = out as f64 / n as f64;
        let mean_step = dist / steps as f64;
        assert!((out - 0.057).abs() < 0.006, "out-of-box fraction {out}");
        assert!((mean_step - 0.27).abs() < 0.006, "mean step {mean_step}");
    }

    #[test]
    fn loop_repeats_and_default_draws_new_blocks() {
        let mut c = thesis();
        // A short period keeps the test fast: 101 points 0.1 s apart over 10 s = 200 rows.
        let t = c.teleport.as_mut().unwrap();
        t.points = 101;
        t.period = 10.0;
        let fresh = path(&c, 1, 400);
        c.teleport.as_mut().unwrap().repeat = true;
        let looped = path(&c, 1, 400);
        // The first block is the same; row 199 is t = 10 s, the start of block 1.
        assert_eq!(fresh[..199], looped[..199]);
        for k in 200..400 {
            assert!((looped[k] - looped[k - 200]).norm() < 1e-9, "row {k}");
        }
        assert_ne!(fresh[199..], looped[199..]);
        // Every row of a block is a spline value; at knots, the drawn points themselves.
        let knot_rows = (1..199).filter(|k| (k + 1) % 2 == 0);
        for k in knot_rows {
            let p = fresh[k];
            assert!((0.0..1.0).contains(&p.x) && (0.0..1.0).contains(&p.y), "row {k} at a knot: {p:?}");
        }
    }

    #[test]
    fn iid_mode_jumps_uniformly() {
        let mut c = thesis();
        c.teleport.as_mut().unwrap().mode = TeleportMode::Iid;
        let p = path(&c, 2, 20_000);
        let n = p.len() as f64;
        let mean_x = p.iter().map(|q| q.x).sum::<f64>() / n;
        let left = p.iter().filter(|q| q.x < 0.25).count() as f64 / n;
        // Uniform: mean 0.5 (sd 0.289/√n = 0.002), P(x < 0.25) = 0.25 (sd 0.003).
        assert!((mean_x - 0.5).abs() < 0.01, "{mean_x}");
        assert!((left - 0.25).abs() < 0.015, "{left}");
        // Consecutive positions are independent: lag-1 correlation of x near 0 (sd 1/√n = 0.007).
        let var: f64 = p.iter().map(|q| (q.x - mean_x).powi(2)).sum::<f64>();
        let cov: f64 = p.windows(2).map(|w| (w[0].x - mean_x) * (w[1].x - mean_x)).sum::<f64>();
        assert!((cov / var).abs() < 0.03, "lag-1 correlation {}", cov / var);
    }
}
