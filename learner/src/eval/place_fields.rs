//! Place-field statistics of a rate map (`ratinabox-spec.md` §5, items 2, 3 and 5): Skaggs
//! spatial information with a circular-shift significance test, sparsity, and the fields at a
//! fraction of the peak.
//!
//! RatInABox has none of these; the definitions are the standard ones the spec gives. Rates are
//! firing rates, so a negative value (a generator's output can be one) counts as 0.

use rand::Rng;

use super::grid::Grid;

/// Skaggs information `Σ p_i (λ_i/λ̄) log2(λ_i/λ̄)` in bits per spike, `λ̄ = Σ p_i λ_i`, over bins
/// with occupancy probability `p` (summing to 1). 0 for a silent map (λ̄ = 0).
pub fn skaggs_information(rates: &[f64], occupancy: &[f64]) -> f64 {
    debug_assert_eq!(rates.len(), occupancy.len());
    let mean: f64 = rates.iter().zip(occupancy).map(|(r, p)| p * r.max(0.0)).sum();
    if mean <= 0.0 {
        return 0.0;
    }
    rates
        .iter()
        .zip(occupancy)
        .filter(|(r, p)| **r > 0.0 && **p > 0.0)
        .map(|(r, p)| {
            let q = r / mean;
            p * q * q.log2()
        })
        .sum()
}

/// Sparsity `(Σ p_i λ_i)² / Σ p_i λ_i²` in (0, 1]: the fraction of the arena a cell fires in,
/// 1 for a flat map. 1 for a silent map.
pub fn sparsity(rates: &[f64], occupancy: &[f64]) -> f64 {
    let (mut m1, mut m2) = (0.0, 0.0);
    for (r, p) in rates.iter().zip(occupancy) {
        let r = r.max(0.0);
        m1 += p * r;
        m2 += p * r * r;
    }
    if m2 <= 0.0 {
        1.0
    } else {
        m1 * m1 / m2
    }
}

/// A trajectory binned onto a grid, for the statistics that need an occupancy: each step's bin.
#[derive(Debug, Clone)]
pub struct BinnedTrajectory {
    pub bins: Vec<usize>,
    pub nbins: usize,
    /// Time step (s).
    pub dt: f64,
}

impl BinnedTrajectory {
    pub fn new(grid: &Grid, positions: &[[f64; 2]], dt: f64) -> BinnedTrajectory {
        BinnedTrajectory { bins: positions.iter().map(|p| grid.nearest_bin(*p)).collect(), nbins: grid.len(), dt }
    }

    /// Occupancy probability per bin.
    pub fn occupancy(&self) -> Vec<f64> {
        let mut p = vec![0.0; self.nbins];
        for &b in &self.bins {
            p[b] += 1.0;
        }
        let n = self.bins.len() as f64;
        p.iter_mut().for_each(|v| *v /= n);
        p
    }

    /// Skaggs information of the rate series `series` (one rate per step) binned by position:
    /// `λ_i` is the mean rate over the steps in bin i (RatInABox's `norm_by_bincount`).
    pub fn information(&self, series: &[f64], occupancy: &[f64], shift: usize) -> f64 {
        let n = self.bins.len();
        let mut sums = vec![0.0; self.nbins];
        for (t, &b) in self.bins.iter().enumerate() {
            sums[b] += series[(t + shift) % n].max(0.0);
        }
        let counts: Vec<f64> = occupancy.iter().map(|p| p * n as f64).collect();
        let rates: Vec<f64> = sums.iter().zip(&counts).map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 }).collect();
        skaggs_information(&rates, occupancy)
    }
}

/// The result of [`shift_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftTest {
    /// Bits per spike of the unshifted rates.
    pub information: f64,
    /// The shuffles' 95th percentile.
    pub threshold95: f64,
    /// The fraction of shuffles at or above the observed value, counting the observation itself
    /// (so never 0): `(1 + #{shuffled ≥ observed}) / (1 + shuffles)`.
    pub p_value: f64,
}

impl ShiftTest {
    /// Above the shuffles' 95th percentile.
    pub fn significant(&self) -> bool {
        self.information > self.threshold95
    }
}

/// Draws `shuffles` circular shifts of at least `min_shift_s` seconds from both ends of the
/// trajectory (uniform over `[m, n − m]` steps), the same for every cell of a report.
pub fn draw_shifts<R: Rng>(
    steps: usize,
    dt: f64,
    min_shift_s: f64,
    shuffles: usize,
    rng: &mut R,
) -> Option<Vec<usize>> {
    let m = (min_shift_s / dt).ceil() as usize + 1;
    if steps <= 2 * m {
        return None;
    }
    Some((0..shuffles).map(|_| rng.random_range(m..=steps - m)).collect())
}

/// Skaggs information of `series` along `trajectory`, and its significance against the same
/// rates circularly shifted by each of `shifts` steps: a shift keeps the rates' own time
/// structure and breaks only their relation to position, so a cell passes only if its rate
/// depends on where the agent is. (A shuffle of map bins under uniform occupancy would not
/// test anything: every permutation of a map has the same information.)
pub fn shift_test(trajectory: &BinnedTrajectory, series: &[f64], shifts: &[usize]) -> ShiftTest {
    let occupancy = trajectory.occupancy();
    let information = trajectory.information(series, &occupancy, 0);
    let mut shuffled: Vec<f64> = shifts.iter().map(|&s| trajectory.information(series, &occupancy, s)).collect();
    shuffled.sort_by(f64::total_cmp);
    let above = shuffled.iter().filter(|&&v| v >= information).count();
    let threshold95 = if shuffled.is_empty() {
        f64::INFINITY
    } else {
        // The 95th percentile, linearly interpolated (NumPy's default).
        let pos = 0.95 * (shuffled.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        shuffled[lo] + (shuffled[hi] - shuffled[lo]) * (pos - lo as f64)
    };
    ShiftTest { information, threshold95, p_value: (1 + above) as f64 / (1 + shifts.len()) as f64 }
}

/// One place field: a 4-connected set of bins at or above the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub bins: Vec<usize>,
    /// m².
    pub area: f64,
    /// The rate-weighted centre of its bins (m).
    pub centroid: [f64; 2],
    pub peak: f64,
}

/// The fields of `map` (one rate per grid bin; masked bins never belong to one): connected
/// components (4-connectivity) of bins with rate ≥ `fraction`·peak, keeping those of at least
/// `min_area` m², largest first. A silent map has none.
pub fn fields(map: &[f64], grid: &Grid, fraction: f64, min_area: f64) -> Vec<Field> {
    let peak = (0..grid.len()).filter(|&k| grid.inside[k]).map(|k| map[k]).fold(f64::NEG_INFINITY, f64::max);
    if peak.is_nan() || peak <= 0.0 {
        return Vec::new();
    }
    let threshold = fraction * peak;
    let above = |k: usize| grid.inside[k] && map[k] >= threshold;
    let mut seen = vec![false; grid.len()];
    let mut out = Vec::new();
    for start in 0..grid.len() {
        if seen[start] || !above(start) {
            continue;
        }
        let mut bins = Vec::new();
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(k) = stack.pop() {
            bins.push(k);
            for n in grid.neighbours(k) {
                if !seen[n] && above(n) {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
        bins.sort_unstable();
        let area = bins.len() as f64 * grid.dx * grid.dx;
        if area + 1e-12 < min_area {
            continue;
        }
        let weight: f64 = bins.iter().map(|&k| map[k]).sum();
        let (mut cx, mut cy) = (0.0, 0.0);
        for &k in &bins {
            let c = grid.centre(k);
            cx += map[k] * c.x;
            cy += map[k] * c.y;
        }
        let peak = bins.iter().map(|&k| map[k]).fold(f64::NEG_INFINITY, f64::max);
        out.push(Field { bins, area, centroid: [cx / weight, cy / weight], peak });
    }
    out.sort_by(|a, b| b.area.total_cmp(&a.area));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use actor::envs::arena::Arena;
    use actor::envs::config::{EnvConfig, EnvId};
    use common::rng;

    fn grid(dx: f64) -> Grid {
        let EnvConfig::Riab(c) = EnvConfig::defaults(EnvId::RiabRandom) else { unreachable!() };
        Grid::over(&Arena::new(&c.arena), dx).unwrap()
    }

    fn gaussian(g: &Grid, centre: [f64; 2], w: f64) -> Vec<f64> {
        (0..g.len())
            .map(|k| {
                let c = g.centre(k);
                let r2 = (c.x - centre[0]).powi(2) + (c.y - centre[1]).powi(2);
                (-r2 / (2.0 * w * w)).exp()
            })
            .collect()
    }

    /// A cell firing at rate 1 on a fraction f of a uniformly occupied arena and silent elsewhere
    /// carries log2(1/f) bits per spike and has sparsity f; a flat map carries none.
    #[test]
    fn information_and_sparsity_of_analytic_maps() {
        let n = 64;
        let p = vec![1.0 / n as f64; n];
        for on in [1, 4, 16, 64] {
            let rates: Vec<f64> = (0..n).map(|i| if i < on { 1.0 } else { 0.0 }).collect();
            let f = on as f64 / n as f64;
            assert!((skaggs_information(&rates, &p) - (1.0 / f).log2()).abs() < 1e-12, "f = {f}");
            assert!((sparsity(&rates, &p) - f).abs() < 1e-12);
        }
        // Two rate levels: λ = 2 on half the bins, 1 on the rest, λ̄ = 1.5.
        let rates: Vec<f64> = (0..n).map(|i| if i < n / 2 { 2.0 } else { 1.0 }).collect();
        let want = 0.5 * (2.0 / 1.5) * (2.0f64 / 1.5).log2() + 0.5 * (1.0 / 1.5) * (1.0f64 / 1.5).log2();
        assert!((skaggs_information(&rates, &p) - want).abs() < 1e-12);
        assert!((sparsity(&rates, &p) - 1.5 * 1.5 / 2.5).abs() < 1e-12);
        assert_eq!(skaggs_information(&[0.0; 64], &p), 0.0);
    }

    /// A Gaussian cell of width w has, at 0.2·peak, one disc-shaped field of radius
    /// w·√(2 ln 5) = 1.794w (0.405 m² for w = 0.2) centred on the cell.
    #[test]
    fn the_field_of_a_gaussian_cell_is_its_analytic_disc() {
        let g = grid(0.01);
        let w = 0.2;
        let map = gaussian(&g, [0.5, 0.5], w);
        let found = fields(&map, &g, 0.2, 0.01);
        assert_eq!(found.len(), 1);
        let want = std::f64::consts::PI * (w * (2.0 * 5f64.ln()).sqrt()).powi(2);
        assert!((want - 0.4045).abs() < 1e-3);
        // A disc of radius r on a 1 cm grid: the bin count is off by at most the perimeter's bins.
        let tolerance = 2.0 * std::f64::consts::PI * 0.36 * 0.01;
        assert!((found[0].area - want).abs() < tolerance, "{} vs {want}", found[0].area);
        assert!((found[0].centroid[0] - 0.5).abs() < 1e-9 && (found[0].centroid[1] - 0.5).abs() < 1e-9);
        // Two narrow cells far apart: two fields, of equal area; the second one's centroid is its centre.
        let (a, b) = (gaussian(&g, [0.25, 0.25], 0.05), gaussian(&g, [0.75, 0.7], 0.05));
        let map: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let found = fields(&map, &g, 0.2, 0.001);
        assert_eq!(found.len(), 2);
        assert!((found[0].area - found[1].area).abs() <= 4.0 * 0.01 * 0.01 * 10.0);
        let near = |f: &Field, c: [f64; 2]| (f.centroid[0] - c[0]).hypot(f.centroid[1] - c[1]) < 2e-3;
        assert!(found.iter().any(|f| near(f, [0.75, 0.7])) && found.iter().any(|f| near(f, [0.25, 0.25])));
        // The minimum area drops small fields; a silent map has none.
        assert!(fields(&map, &g, 0.2, 0.1).is_empty());
        assert!(fields(&vec![0.0; g.len()], &g, 0.2, 0.0).is_empty());
    }

    /// Along a random walk, a position-tuned rate is significant and a rate that depends only on
    /// time is not: the shift keeps time structure, so the test cannot pass on it.
    #[test]
    fn the_shift_test_passes_tuned_cells_and_fails_untuned_ones() {
        let g = grid(0.05);
        let mut r = rng::stream(3, &["walk".into()]);
        let (mut x, mut y) = (0.5f64, 0.5f64);
        let dt = 0.05;
        let positions: Vec<[f64; 2]> = (0..24000)
            .map(|_| {
                x = (x + 0.01 * (r.random::<f64>() - 0.5)).clamp(0.0, 0.999);
                y = (y + 0.01 * (r.random::<f64>() - 0.5)).clamp(0.0, 0.999);
                [x, y]
            })
            .collect();
        let traj = BinnedTrajectory::new(&g, &positions, dt);
        let shifts = draw_shifts(positions.len(), dt, 20.0, 100, &mut r).unwrap();
        assert!(shifts.iter().all(|&s| s > 400 && s < 24000 - 400));
        let tuned: Vec<f64> =
            positions.iter().map(|p| (-((p[0] - 0.5).powi(2) + (p[1] - 0.5).powi(2)) / 0.02).exp()).collect();
        let t = shift_test(&traj, &tuned, &shifts);
        assert!(t.significant() && t.p_value < 0.02, "{t:?}");
        let untuned: Vec<f64> = (0..positions.len()).map(|k| 1.0 + (k as f64 * dt / 7.0).sin()).collect();
        let u = shift_test(&traj, &untuned, &shifts);
        assert!(!u.significant() && u.p_value > 0.05, "{u:?}");
        assert!(draw_shifts(100, dt, 20.0, 10, &mut r).is_none());
    }
}
