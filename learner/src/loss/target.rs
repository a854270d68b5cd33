//! The right-hand side of the δ-model loss: an n-step distributional Bellman target with
//! geometric horizons (spec §3.2).
//!
//! This reproduces `dsm/train.py::train_step.grad_fn` of `JesseFarebro/distributional-sr`
//! (lines 138–213), in two halves:
//!
//! 1. [`sample_horizon_indices`] (host, lines 140–158 and 202–204): for every (b, o, i), an index
//!    j into the window's candidate sequence. K ~ Geometric(1−γ) on {1, 2, …}; with
//!    `cumulant_is_source_state` (the δ-model default) j = K − 1, so P(j = t) = (1−γ)γ^t for t ≥ 0
//!    and the source state s_0 itself carries mass 1−γ. If the window holds a LAST step, the first
//!    one t* caps j at t*: the LAST state is absorbing and receives all the remaining mass γ^{t*}
//!    (time-limit truncations included, quirk Q3). Finally j is clipped to H (`take_along_axis(…,
//!    mode="clip")`, line 206), so **j = H is the bootstrap slot**: it collects the tail mass γ^H.
//! 2. [`build_target`] (device, lines 165–213): the candidate sequence is
//!    [s_0, …, s_{H−1}, X_H] with X_H a sample of the *target* generator's atom o at s_H when
//!    the window has no LAST (and bootstrapping is on), else s_H itself; Y[b,o,i] is candidate
//!    j[b,o,i].
//!
//! Marginally, the I samples of target atom o are iid from
//! Σ_{t<H}(1−γ)γ^t δ_{s_t} + γ^H μ^{θ⁻}_o(s_H), the H-step distributional Bellman backup.
//!
//! The horizons are drawn on the host: they are small integers that only steer a selection, and
//! the window's step types are already there. The selection runs on the device.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;

use crate::train::dataset::STEP_LAST;

/// Draws per-sample horizon indices: the configuration of [`sample_horizon_indices`], with the
/// reference's `cumulant_is_source_state` switch (spec §3.2 last bullet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HorizonSampler {
    gamma: f64,
    horizon: usize,
    cumulant_is_source_state: bool,
    /// ln γ, −∞ for γ = 0.
    ln_gamma: f64,
}

impl HorizonSampler {
    /// `gamma` is the discount γ ∈ [0, 1) (UP's `Config.__post_init__` asserts the same);
    /// `horizon` is H, so windows hold H+1 steps. With `cumulant_is_source_state = false`
    /// (UP's `single_step_model`) j = K ≥ 1 and s_0 is never a target.
    ///
    /// # Panics
    /// If γ is not in [0, 1).
    pub fn new(gamma: f64, horizon: usize, cumulant_is_source_state: bool) -> Self {
        assert!((0.0..1.0).contains(&gamma), "the discount γ = {gamma} must lie in [0, 1)");
        Self { gamma, horizon, cumulant_is_source_state, ln_gamma: gamma.ln() }
    }

    /// γ.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// H.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// One horizon index for a window whose first LAST is at `first_last` (if any).
    ///
    /// K − 1 ~ Geometric(1−γ) on {0, 1, …} is drawn by inversion, F = ⌊ln U / ln γ⌋ with
    /// U ~ U(0, 1], since P(F ≥ t) = P(U ≤ γ^t) = γ^t. That is how `jax.random.geometric`
    /// draws it too (`floor(log(u) / log1p(-p)) + 1`), with one uniform per sample, which matters
    /// here: a training step draws B·O·I ≈ 10⁵ of them. For γ = 0, ln γ = −∞ and F = 0.
    #[inline]
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, first_last: Option<usize>) -> usize {
        let u = 1.0 - rng.random::<f64>(); // (0, 1]
                                           // ≥ 0 (or −0), never NaN. Capping before the cast keeps huge draws (U → 0) finite;
                                           // anything ≥ H + 1 clips alike.
        let f = (u.ln() / self.ln_gamma).floor();
        let cap = self.horizon + 1;
        let failures = if f >= cap as f64 { cap } else { f as usize };
        // K = failures + 1; the index is K − 1 with the source state as a cumulant, else K.
        let mut j = if self.cumulant_is_source_state { failures } else { failures + 1 };
        if let Some(t_star) = first_last {
            // train.py line 157: min(argmax(terminals) + 1, K) − 1 = min(t*, K − 1); without the
            // source-state cumulant, min(t*, K).
            j = j.min(t_star);
        }
        j.min(self.horizon)
    }

    /// Fills `out` with B·O·I indices, laid out [B, O, I]: see [`sample_horizon_indices`].
    ///
    /// # Panics
    /// If `step_types.len()` is not a multiple of H+1.
    pub fn sample_into<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        step_types: &[u8],
        outer: usize,
        inner: usize,
        out: &mut Vec<i64>,
    ) {
        let h1 = self.horizon + 1;
        assert_eq!(step_types.len() % h1, 0, "step types must be [B, H+1] with H = {}", self.horizon);
        let batch = step_types.len() / h1;
        out.clear();
        out.reserve(batch * outer * inner);
        for window in step_types.chunks_exact(h1) {
            let first_last = window.iter().position(|&t| t == STEP_LAST);
            for _ in 0..outer * inner {
                out.push(self.draw(rng, first_last) as i64);
            }
        }
    }
}

/// Horizon indices j ∈ {0, …, H} for every (b, o, i), laid out [B, O, I], for the δ-model
/// (`cumulant_is_source_state = True`; see [`HorizonSampler`] for the other case).
///
/// K ~ Geometric(p = 1−γ) on {1, 2, …}, j = K − 1; if window b holds a LAST step, the first one
/// t* ∈ {0, …, H} caps j at t* (LAST is absorbing); then j is clipped to H. **j = H means the
/// bootstrap slot**: [`build_target`] takes the target generator's sample there, unless the
/// window holds a LAST (then j = H only when t* = H, and it takes s_H).
///
/// Without a LAST: P(j = t) = (1−γ)γ^t for t < H and P(j = H) = γ^H. With a LAST at t*:
/// P(j = t) = (1−γ)γ^t for t < t* and P(j = t*) = γ^{t*}.
///
/// # Shapes
/// `step_types`: [B, H+1] (0 FIRST, 1 MID, 2 LAST); returns [B, O, I] with O = `outer`, I = `inner`.
pub fn sample_horizon_indices<R: Rng + ?Sized>(
    rng: &mut R,
    gamma: f64,
    horizon: usize,
    step_types: &[u8],
    batch: usize,
    outer: usize,
    inner: usize,
) -> Vec<i64> {
    assert_eq!(step_types.len(), batch * (horizon + 1), "step types must be [B = {batch}, H+1 = {}]", horizon + 1);
    let mut out = Vec::with_capacity(batch * outer * inner);
    HorizonSampler::new(gamma, horizon, true).sample_into(rng, step_types, outer, inner, &mut out);
    out
}

/// The Bellman target Y[b,o,i] = candidate j[b,o,i] of window b's sequence
/// [s_0, …, s_{H−1}, X_H], where X_H = `bootstrap[b,o,i]` if `use_bootstrap` and window b holds no
/// LAST step, else s_H (train.py lines 165–213; with `bootstrap=False` the sequence is the raw
/// window, line 166).
///
/// `bootstrap[b,o,i]` is a sample of the **target** generator's atom o at s_H with its own fresh
/// latent (line 174); the pairing of target atom o with online atom o is the reference's, and the
/// outer MMD does not depend on it. With `use_bootstrap = false` its values are never read; only
/// its shape gives O and I (a `Tensor::zeros` of that shape will do).
///
/// Memory: the reference materialises the candidate sequence [B, O, I, H+1, S] and gathers from
/// it. Here each output row is either one window step or its own bootstrap sample, so the target
/// is a row `select` from the [B·(H+1), S] window (indices b·(H+1) + j) followed by a
/// `mask_where` that swaps in the bootstrap rows: O(B·O·I·S) memory, the size of the output,
/// instead of (H+1)× that (7× for H = 6; 146 MB at the thesis size S = 50). A one-hot multiply
/// would need the same expansion and would turn 0·∞ into NaN for unselected slots.
///
/// Gradients do not matter: the caller detaches the target (the reference never differentiates
/// through it with respect to the online parameters). Everything stays on `obs`' device; only the
/// indices and the mask travel there.
///
/// # Shapes
/// - `obs`: [B, H+1, S]; `step_types`: [B, H+1];
/// - `bootstrap`: [B, O, I, S]; `indices`: [B, O, I], each in 0..=H (from [`sample_horizon_indices`]);
/// - returns [B, O, I, S].
///
/// # Panics
/// On inconsistent shapes or an index outside 0..=H.
pub fn build_target<B: Backend>(
    obs: Tensor<B, 3>,
    step_types: &[u8],
    bootstrap: Tensor<B, 4>,
    indices: &[i64],
    use_bootstrap: bool,
) -> Tensor<B, 4> {
    let [batch, h1, s] = obs.dims();
    let [b2, outer, inner, s2] = bootstrap.dims();
    assert!(h1 >= 1, "windows must hold at least one step");
    assert_eq!((b2, s2), (batch, s), "bootstrap [B, O, I, S] must match obs [B, H+1, S] = {:?}", [batch, h1, s]);
    assert_eq!(step_types.len(), batch * h1, "step types must be [B, H+1] = [{batch}, {h1}]");
    let per_window = outer * inner;
    assert_eq!(indices.len(), batch * per_window, "indices must be [B, O, I] = [{batch}, {outer}, {inner}]");
    let horizon = h1 - 1;
    let n = batch * per_window;

    let mut rows = Vec::with_capacity(n);
    let mut take_bootstrap = Vec::with_capacity(if use_bootstrap { n } else { 0 });
    for (b, (window, js)) in step_types.chunks_exact(h1).zip(indices.chunks_exact(per_window.max(1))).enumerate() {
        let bootstraps = use_bootstrap && !window.contains(&STEP_LAST);
        for &j in js {
            assert!((0..=horizon as i64).contains(&j), "horizon index {j} is outside 0..={horizon}");
            rows.push((b * h1) as i64 + j);
            if use_bootstrap {
                take_bootstrap.push(bootstraps && j == horizon as i64);
            }
        }
    }

    let device = obs.device();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let selected = obs.reshape([batch * h1, s]).select(0, rows); // [B·O·I, S]
    let target = if take_bootstrap.iter().any(|&m| m) {
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(take_bootstrap, [n, 1]), &device);
        selected.mask_where(mask.expand([n, s]), bootstrap.reshape([n, s]))
    } else {
        selected
    };
    target.reshape([batch, outer, inner, s])
}

/// χ² goodness-of-fit for the statistical tests of this crate (spec §9.2), in the manner of
/// `statrs`' sampling tests: fixed seeds, so only a defect fails; α = 10⁻⁶ per test.
#[cfg(test)]
pub(crate) mod chi_square {
    /// The per-test significance level.
    pub const ALPHA: f64 = 1e-6;
    /// z_{1−α} = Φ⁻¹(1 − 10⁻⁶), by bisection on `0.5·erfc(z/√2)` in f64.
    const Z: f64 = 4.753_424_308_822_899;

    /// The χ² critical value for `df` degrees of freedom at level [`ALPHA`], by the
    /// Wilson–Hilferty cube-root approximation
    /// χ²_{df,1−α} ≈ df·(1 − 2/(9 df) + z_{1−α}·√(2/(9 df)))³.
    /// It errs high (a slightly smaller true α): +15% at df = 1, +4% at df = 6, +0.3% at df ≥ 68,
    /// against `scipy.stats.chi2.isf(1e-6, df)` (test below).
    pub fn critical_value(df: usize) -> f64 {
        let df = df as f64;
        let a = 2.0 / (9.0 * df);
        df * (1.0 - a + Z * a.sqrt()).powi(3)
    }

    /// Pearson's χ² of `observed` counts against cell probabilities `probs` (summing to 1), with
    /// df = (cells with p > 0) − 1. Cells of probability 0 must be empty. Every other cell must
    /// expect at least 5 draws, the usual validity condition (the tests size n for it rather than
    /// pool cells).
    pub fn assert_fits(what: &str, observed: &[u64], probs: &[f64]) {
        assert_eq!(observed.len(), probs.len());
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{what}: probabilities do not sum to 1");
        let n: u64 = observed.iter().sum();
        let mut stat = 0.0;
        let mut cells = 0;
        for (k, (&o, &p)) in observed.iter().zip(probs).enumerate() {
            if p == 0.0 {
                assert_eq!(o, 0, "{what}: cell {k} has probability 0 but {o} draws");
                continue;
            }
            let e = p * n as f64;
            assert!(e >= 5.0, "{what}: cell {k} expects {e} < 5 draws; raise n");
            stat += (o as f64 - e).powi(2) / e;
            cells += 1;
        }
        assert!(cells >= 2, "{what}: a χ² test needs two cells");
        let df = cells - 1;
        let critical = critical_value(df);
        eprintln!("{what}: χ² = {stat:.2}, df = {df}, critical value {critical:.2} (α = {ALPHA}), n = {n}");
        assert!(
            stat < critical,
            "{what}: χ² = {stat:.2} ≥ {critical:.2} (df = {df}, α = {ALPHA}); observed {observed:?}, n = {n}, \
             probabilities {probs:?}"
        );
    }

    #[test]
    fn wilson_hilferty_is_close_and_conservative() {
        // scipy 1.17.1: [chi2.isf(1e-6, df) for df in (1, 2, 5, 6, 22, 68, 128)]
        let exact = [
            (1, 23.928126976934827),
            (2, 27.631021115928547),
            (5, 35.888186879672865),
            (6, 38.25833637720969),
            (22, 68.85576868072236),
            (68, 138.42735163101455),
            (128, 218.90637608343386),
        ];
        for (df, x) in exact {
            let wh = critical_value(df);
            assert!(wh >= x && wh <= 1.16 * x, "df = {df}: Wilson–Hilferty {wh} vs exact {x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::{STEP_FIRST, STEP_MID};
    use chi_square::assert_fits;
    use common::rng::StreamRng;
    use rand::SeedableRng;

    type Nd = burn::backend::NdArray;

    const GAMMA: f64 = 0.95;
    const H: usize = 6;
    /// 10⁶ draws per window: O · I.
    const O: usize = 100;
    const I: usize = 10_000;

    /// A window of H+1 MID steps with a LAST at `last` (if any) and a FIRST right after it.
    fn window(last: Option<usize>) -> Vec<u8> {
        let mut w = vec![STEP_MID; H + 1];
        if let Some(t) = last {
            w[t] = STEP_LAST;
            if t < H {
                w[t + 1] = STEP_FIRST;
            }
        }
        w
    }

    /// `w` with step `t` set to `code`.
    fn with(mut w: Vec<u8>, t: usize, code: u8) -> Vec<u8> {
        w[t] = code;
        w
    }

    /// Counts of each j ∈ 0..=H, per window.
    fn histograms(indices: &[i64], windows: usize) -> Vec<Vec<u64>> {
        let per = indices.len() / windows;
        indices
            .chunks_exact(per)
            .map(|js| {
                let mut h = vec![0u64; H + 1];
                js.iter().for_each(|&j| h[j as usize] += 1);
                h
            })
            .collect()
    }

    /// P(j = t) = (1−γ)γ^t for t < cap, and the rest, γ^cap, at j = cap.
    fn truncated_geometric(gamma: f64, cap: usize) -> Vec<f64> {
        (0..=H)
            .map(|t| match t.cmp(&cap) {
                std::cmp::Ordering::Less => (1.0 - gamma) * gamma.powi(t as i32),
                std::cmp::Ordering::Equal => gamma.powi(cap as i32),
                std::cmp::Ordering::Greater => 0.0,
            })
            .collect()
    }

    #[test]
    fn bootstrap_mass_is_gamma_to_the_h() {
        // Spec §9.2: 0.7351 for γ = .95, H = 6 (four digits).
        assert!((truncated_geometric(GAMMA, H)[H] - 0.7351).abs() < 5e-5);
    }

    /// Spec §9.2: without a LAST, P(j = t) = (1−γ)γ^t for t < H and P(bootstrap slot) = γ^H;
    /// with a LAST at t*, P(j = t*) = γ^{t*} and nothing beyond. A FIRST without a LAST (a window
    /// that starts mid-stream after an episode boundary) changes nothing. 10⁶ draws per window.
    #[test]
    fn horizon_indices_follow_the_truncated_geometric_law() {
        let cases: [(&str, Vec<u8>, usize); 6] = [
            ("no LAST", window(None), H),
            ("FIRST at 3, no LAST", with(window(None), 3, STEP_FIRST), H),
            ("LAST at 2", window(Some(2)), 2),
            ("LAST at 1 and 4", with(window(Some(1)), 4, STEP_LAST), 1),
            ("LAST at H", window(Some(H)), H),
            ("LAST at 0", window(Some(0)), 0),
        ];
        let types: Vec<u8> = cases.iter().flat_map(|(_, w, _)| w.clone()).collect();
        let mut rng = StreamRng::seed_from_u64(2024);
        let js = sample_horizon_indices(&mut rng, GAMMA, H, &types, cases.len(), O, I);
        assert_eq!(js.len(), cases.len() * O * I);
        for ((what, _, cap), counts) in cases.iter().zip(histograms(&js, cases.len())) {
            if *cap == 0 {
                assert_eq!(counts[0], (O * I) as u64, "{what}: a LAST at 0 must always give j = 0");
                continue;
            }
            assert_fits(what, &counts, &truncated_geometric(GAMMA, *cap));
        }
    }

    /// The same law at γ = 0.5; and γ = 0 puts all mass on the source state (j = 0).
    #[test]
    fn horizon_indices_at_other_discounts() {
        let mut rng = StreamRng::seed_from_u64(7);
        let sampler = HorizonSampler::new(0.5, H, true);
        let mut js = Vec::new();
        sampler.sample_into(&mut rng, &window(None), O, I, &mut js);
        assert_fits("γ = 0.5", &histograms(&js, 1)[0], &truncated_geometric(0.5, H));

        let zero = sample_horizon_indices(&mut rng, 0.0, 1, &[STEP_MID, STEP_MID], 1, 10, 1000);
        assert!(zero.iter().all(|&j| j == 0), "γ = 0 puts all mass on the source state");
    }

    /// `cumulant_is_source_state = False` (UP's `single_step_model`: γ = 0, H = 1, no bootstrap)
    /// always targets s_1; a LAST at 0 keeps it on s_0 (train.py line 157 with `+ 0`). At γ = .95
    /// the index is K itself: P(j = t) = (1−γ)γ^{t−1} for 1 ≤ t < H and γ^{H−1} at H.
    #[test]
    fn horizon_indices_without_the_source_state_cumulant() {
        let mut rng = StreamRng::seed_from_u64(8);
        let mut js = Vec::new();
        let single = HorizonSampler::new(0.0, 1, false);
        let windows = [STEP_MID, STEP_MID, STEP_MID, STEP_LAST, STEP_LAST, STEP_FIRST];
        single.sample_into(&mut rng, &windows, 1, 1000, &mut js);
        assert!(js[..1000].iter().all(|&j| j == 1), "the single-step model targets s_1");
        assert!(js[1000..2000].iter().all(|&j| j == 1), "a LAST at 1 is s_1");
        assert!(js[2000..].iter().all(|&j| j == 0), "a LAST at 0 stays at s_0");

        HorizonSampler::new(GAMMA, H, false).sample_into(&mut rng, &window(None), O, I, &mut js);
        let mut probs = vec![0.0];
        probs.extend(truncated_geometric(GAMMA, H - 1).into_iter().take(H));
        assert_fits("K without the source state", &histograms(&js, 1)[0], &probs);
    }

    /// obs[b, t] = [t, b]; bootstrap[b, o, i] = [−(1 + o), −(1 + b)], a constant per atom that no
    /// observation takes. Returns (obs, bootstrap) tensors.
    fn fake_batch(batch: usize, outer: usize, inner: usize) -> (Tensor<Nd, 3>, Tensor<Nd, 4>) {
        let device = Default::default();
        let obs: Vec<f32> = (0..batch).flat_map(|b| (0..=H).flat_map(move |t| [t as f32, b as f32])).collect();
        let boot: Vec<f32> = (0..batch)
            .flat_map(|b| (0..outer * inner).flat_map(move |k| [-1.0 - (k / inner) as f32, -1.0 - b as f32]))
            .collect();
        (
            Tensor::from_data(TensorData::new(obs, [batch, H + 1, 2]), &device),
            Tensor::from_data(TensorData::new(boot, [batch, outer, inner, 2]), &device),
        )
    }

    /// Spec §9.2 Bellman-target test: with bootstrap samples a recognisable constant per atom, Y
    /// is s_j or that atom's bootstrap exactly as the indices and the LAST rule say, for every
    /// (b, o, i); with bootstrapping off it is always the window step. Indices enumerate every j
    /// for every window (including j = H beside an earlier LAST, which the sampler never emits but
    /// the rule still defines: s_H).
    #[test]
    fn target_picks_the_indexed_candidate() {
        let windows = [window(None), window(Some(2)), window(Some(H)), with(window(None), 0, STEP_FIRST)];
        let (batch, outer, inner) = (windows.len(), 3, 2 * (H + 1));
        let types: Vec<u8> = windows.concat();
        let js: Vec<i64> = (0..batch * outer * inner).map(|k| ((k * 5 + k / inner) % (H + 1)) as i64).collect();
        let sampled = sample_horizon_indices(&mut StreamRng::seed_from_u64(3), GAMMA, H, &types, batch, outer, inner);
        for (indices, use_bootstrap) in [(&js, true), (&js, false), (&sampled, true)] {
            let (obs, boot) = fake_batch(batch, outer, inner);
            let y = build_target(obs, &types, boot, indices, use_bootstrap);
            assert_eq!(y.dims(), [batch, outer, inner, 2]);
            let y: Vec<f32> = y.into_data().to_vec().unwrap();
            for (k, (&j, pair)) in indices.iter().zip(y.chunks_exact(2)).enumerate() {
                let (b, o) = (k / (outer * inner), (k / inner) % outer);
                let no_last = !windows[b].contains(&STEP_LAST);
                let expected = if use_bootstrap && no_last && j == H as i64 {
                    [-1.0 - o as f32, -1.0 - b as f32]
                } else {
                    [j as f32, b as f32]
                };
                assert_eq!(pair, expected, "(b, o, i) = ({b}, {o}, {}), j = {j}", k % inner);
            }
        }
    }

    /// Spec §9.2 through the whole target (sampler + selection), 10⁶ draws per window: with no
    /// LAST, P(Y = s_t) = (1−γ)γ^t for t < H and P(Y = bootstrap) = γ^H; with bootstrap = False,
    /// P(Y = s_H) = γ^H and the bootstrap never appears; with a LAST at t*, P(Y = s_{t*}) = γ^{t*}
    /// and no bootstrap.
    #[test]
    fn target_law_matches_the_bellman_backup() {
        let windows = [window(None), window(Some(3))];
        let (batch, outer, inner) = (windows.len(), 10, 100_000);
        let types: Vec<u8> = windows.concat();
        let mut rng = StreamRng::seed_from_u64(99);
        for use_bootstrap in [true, false] {
            let js = sample_horizon_indices(&mut rng, GAMMA, H, &types, batch, outer, inner);
            let (obs, boot) = fake_batch(batch, outer, inner);
            let y: Vec<f32> = build_target(obs, &types, boot, &js, use_bootstrap).into_data().to_vec().unwrap();
            // Cells 0..=H: Y = s_t; cell H + 1: Y is a bootstrap sample.
            let mut counts = vec![vec![0u64; H + 2]; batch];
            for (k, pair) in y.chunks_exact(2).enumerate() {
                let b = k / (outer * inner);
                let cell = if pair[0] < 0.0 { H + 1 } else { pair[0] as usize };
                counts[b][cell] += 1;
            }
            let mut no_last = truncated_geometric(GAMMA, H);
            no_last.push(0.0);
            if use_bootstrap {
                no_last.swap(H, H + 1);
            }
            let mut last = truncated_geometric(GAMMA, 3);
            last.push(0.0);
            assert_fits(&format!("no LAST, bootstrap = {use_bootstrap}"), &counts[0], &no_last);
            assert_fits(&format!("LAST at 3, bootstrap = {use_bootstrap}"), &counts[1], &last);
        }
    }
}
