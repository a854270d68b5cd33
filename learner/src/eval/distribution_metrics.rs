//! Distances between two one-dimensional samples, by SciPy's definitions, so that a number in our
//! report means what the same number means in the paper's notebooks (`dsm-algorithm.md` §4):
//!
//! - [`wasserstein_distance`] = `scipy.stats.wasserstein_distance(u, v)`: ∫ |F_u − F_v| dx, the
//!   area between the two empirical CDFs;
//! - [`ks_statistic`] = `scipy.stats.ks_2samp(u, v).statistic` (two-sided): sup |F_u − F_v|;
//! - [`cramervonmises_statistic`] = `scipy.stats.cramervonmises_2samp(u, v).statistic`: Anderson's
//!   T = U / (n m (n + m)) − (4 m n − 1) / (6 (m + n)), with U = n Σᵢ (rᵢ − i)² + m Σⱼ (sⱼ − j)²
//!   where rᵢ, sⱼ are the pooled ranks (ties averaged, SciPy's `rankdata` default) of the sorted
//!   u's and v's.
//!
//! Each answers `None` for an empty or non-finite sample instead of a NaN that a report would
//! carry on. The fixtures in `learner/tests/fixtures/scipy_metrics.json` were computed by SciPy
//! (`make_scipy_metrics.py` beside them) and pin all three, ties included.

/// Both samples sorted, or `None` if either is empty or holds a non-finite value.
fn sorted_pair(u: &[f64], v: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
    if u.is_empty() || v.is_empty() || u.iter().chain(v).any(|x| !x.is_finite()) {
        return None;
    }
    let sort = |s: &[f64]| {
        let mut s = s.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    Some((sort(u), sort(v)))
}

/// The number of elements of sorted `s` that are ≤ `x`.
fn count_le(s: &[f64], x: f64) -> usize {
    s.partition_point(|&y| y <= x)
}

/// ∫ |F_u − F_v| dx: between consecutive pooled values both CDFs are constant.
pub fn wasserstein_distance(u: &[f64], v: &[f64]) -> Option<f64> {
    let (u, v) = sorted_pair(u, v)?;
    let mut all: Vec<f64> = u.iter().chain(&v).copied().collect();
    all.sort_by(f64::total_cmp);
    let (n, m) = (u.len() as f64, v.len() as f64);
    let mut total = 0.0;
    for w in all.windows(2) {
        let dx = w[1] - w[0];
        if dx > 0.0 {
            let fu = count_le(&u, w[0]) as f64 / n;
            let fv = count_le(&v, w[0]) as f64 / m;
            total += (fu - fv).abs() * dx;
        }
    }
    Some(total)
}

/// sup |F_u − F_v|, evaluated at every pooled value (where the supremum is attained).
pub fn ks_statistic(u: &[f64], v: &[f64]) -> Option<f64> {
    let (u, v) = sorted_pair(u, v)?;
    let (n, m) = (u.len() as f64, v.len() as f64);
    let d = u
        .iter()
        .chain(&v)
        .map(|&x| (count_le(&u, x) as f64 / n - count_le(&v, x) as f64 / m).abs())
        .fold(0.0, f64::max);
    Some(d)
}

/// Anderson's two-sample Cramér–von Mises criterion T, as SciPy computes it.
pub fn cramervonmises_statistic(u: &[f64], v: &[f64]) -> Option<f64> {
    let (u, v) = sorted_pair(u, v)?;
    let (n, m) = (u.len(), v.len());
    // Pooled average ranks: a run of k equal values occupying positions p+1..p+k gets p + (k+1)/2.
    let mut pooled: Vec<(f64, bool)> = u.iter().map(|&x| (x, true)).chain(v.iter().map(|&x| (x, false))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut ru, mut rv) = (Vec::with_capacity(n), Vec::with_capacity(m));
    let mut start = 0;
    while start < pooled.len() {
        let mut end = start;
        while end < pooled.len() && pooled[end].0 == pooled[start].0 {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &(_, from_u) in &pooled[start..end] {
            if from_u {
                ru.push(rank);
            } else {
                rv.push(rank);
            }
        }
        start = end;
    }
    let squares = |r: &[f64]| r.iter().enumerate().map(|(i, &r)| (r - (i + 1) as f64).powi(2)).sum::<f64>();
    let (nf, mf) = (n as f64, m as f64);
    let big_u = nf * squares(&ru) + mf * squares(&rv);
    let k = nf + mf;
    Some(big_u / (nf * mf * k) - (4.0 * mf * nf - 1.0) / (6.0 * k))
}

/// Mean, median (NumPy's: the mean of the two middle values of an even count), min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The [`Summary`] of `values`, `None` if there are none or one is not finite.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() || values.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let k = s.len();
    let median = if k % 2 == 1 { s[k / 2] } else { (s[k / 2 - 1] + s[k / 2]) / 2.0 };
    Some(Summary { mean: s.iter().sum::<f64>() / k as f64, median, min: s[0], max: s[k - 1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases small enough to check by hand; the SciPy fixtures test the general case.
    #[test]
    fn hand_checked_values() {
        // Shifting a sample by c moves it c in W1; disjoint samples are 1 apart in KS.
        assert!((wasserstein_distance(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]).unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(ks_statistic(&[0.0, 1.0], &[2.0, 3.0]), Some(1.0));
        assert_eq!(ks_statistic(&[1.0, 2.0], &[2.0, 1.0]), Some(0.0));
        assert_eq!(wasserstein_distance(&[1.0, 2.0], &[2.0, 1.0]), Some(0.0));
        // n = m = 1 with distinct values: pooled ranks 1 and 2, U = 1·(1 − 1)² + 1·(2 − 1)² = 1,
        // T = 1/(1·1·2) − 3/12 = 0.25.
        assert!((cramervonmises_statistic(&[0.0], &[1.0]).unwrap() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn empty_or_non_finite_samples_have_no_distance() {
        assert_eq!(wasserstein_distance(&[], &[1.0]), None);
        assert_eq!(ks_statistic(&[f64::NAN], &[1.0]), None);
        assert_eq!(cramervonmises_statistic(&[1.0], &[f64::INFINITY]), None);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn summaries_follow_numpy() {
        let s = summarize(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s, Summary { mean: 4.0, median: 2.5, min: 1.0, max: 10.0 });
        assert_eq!(summarize(&[5.0, 1.0, 3.0]).unwrap().median, 3.0);
    }
}
