//! Exact tests on small worlds (spec `dsm-algorithm.md` §9.2, "Tabular exact distributional SM" and
//! "Bellman-target test"): states are one-hot, so S is the number of states and the mean of an
//! atom's samples is its measure's mass on each state (a sample that is not exactly one-hot counts
//! by its coordinates, the linear reading of r(x) = x_k).
//!
//! - [`fork_puts_one_atom_on_each_branch`]: x0 → x1 or x2 with p = 1/2, trained with O = 2; the
//!   atoms must split, one per branch.
//! - [`bellman_target_of_dirac_atoms_has_the_law_of_the_backup`]: the generator frozen at Dirac
//!   atoms, the target built as the trainer builds it; its empirical law is ν of §3.2 (χ²).
//! - [`two_state_walk_matches_the_sr_row_and_the_return_law`]: the mixture mean against the SR row
//!   (1−γ)(I−γP)⁻¹ and the W1 of the return law against dynamic programming.
//! - [`deterministic_cycle_collapses_the_atoms`]: every atom near the one exact measure.
//!
//! What the walk and the cycle can resolve. An atom is known through I samples, and the loss
//! compares atoms through MMD²_U of I against I samples, whose noise at I = 32 corresponds to a
//! mass difference of about 0.1 on a state (a mass estimated from 32 samples has a standard
//! deviation up to 0.09). The outer bandwidth is the median heuristic, which rescales the atoms'
//! distances by their own median, so atoms are placed to about that resolution and no finer, and
//! an atom that strays far has a weak gradient (the IMQ kernel's tail) and returns slowly. The
//! tolerances below are set from that, from what training reaches in CI's budget (measured
//! values in each test's doc), and so that a model without the property fails (a collapsed model
//! for the walk's law, a model that ignores the source state for the means).
//!
//! With a fixed outer bandwidth h = 1 instead, the atoms' distances (MMD² < 0.3 here) sit in the
//! IMQ kernel's linear range, where the outer MMD² is close to the distance between the atoms'
//! *mixtures*: the mixture mean is learned, the atoms' spread is not (measured: the cycle's
//! atoms stayed 0.3 apart). The default median heuristic is what makes the δ-model
//! distributional, and the tests keep it.
//!
//! The trained tests use test-only hyperparameters, stated in each test's doc; they were chosen
//! to converge within CI's budget (release mode, 2 cores) with the fixed seeds used here, and
//! their tolerances are set from what that training reaches (see each test).
//!
//! Every model trains on the fused engine as 2 exact data-parallel replicas (the result is the
//! one-replica result bit for bit); the walk and the cycle train without a discriminator
//! (`train.discriminator_steps = 0`).
//!
//! burn's NdArray backend has one global RNG (`B::seed`, the generator's latents), so tests that
//! draw from it hold [`SERIAL`]: run in parallel they would interleave their draws and no longer
//! be reproducible from their seeds.

use std::sync::{Mutex, MutexGuard};

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Param};
use burn::tensor::{Tensor, TensorData};
use common::config::ConfigDoc;
use common::rng::StreamRng;
use learner::config::LearnerConfig;
use learner::loss::target::{build_target, sample_horizon_indices};
use learner::model::generator::{Generator, GeneratorConfig};
use learner::train::cross_engine::into_trainer;
use learner::train::dataset::{OfflineDataset, WindowBatch, STEP_FIRST, STEP_LAST, STEP_MID};
use learner::train::engine::Engine;
use learner::train::trainer::Trainer;
use rand::{Rng, SeedableRng};

type B = Autodiff<NdArray>;

/// Held by every test that draws from the backend's global RNG (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream of one-hot states `states` (each < `s`) with step types `types`.
fn one_hot_dataset(states: &[usize], types: &[u8], s: usize) -> OfflineDataset {
    let mut obs = vec![0f32; states.len() * s];
    for (t, &x) in states.iter().enumerate() {
        obs[t * s + x] = 1.0;
    }
    OfflineDataset::from_parts(obs, types.to_vec(), 1, states.len(), s).unwrap()
}

/// A model trained from `sets` (`section.key=value`) for `steps` iterations on `data`, by the
/// engine a run would use: the fused engine, here as 2 replicas of one thread (its result does not
/// depend on either count). The state is returned in a burn trainer, whose generator module
/// samples the atoms.
fn train(sets: &[&str], data: &OfflineDataset, steps: u64) -> Trainer<B> {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&["train.replicas=2", "train.threads=2"]).unwrap();
    doc.apply_sets(sets).unwrap();
    let config = LearnerConfig::resolve(&doc).unwrap();
    let mut engine = Engine::<B>::new(config.clone(), doc.clone(), data.obs_dim(), Default::default()).unwrap();
    for _ in 0..steps {
        // The engine itself fails a non-finite loss; the D loss is NaN when there is no D step.
        let losses = engine.iteration(data).unwrap();
        assert!(losses.generator.is_finite());
    }
    match engine {
        Engine::Burn(_) | Engine::Gpu(_) => panic!("every variant trains on the fused engine"),
        Engine::Fused(fused) => {
            assert_eq!(fused.replicas(), 2);
            let mut trainer = Trainer::<B>::new(config, doc, data.obs_dim(), Default::default());
            into_trainer(&fused.replica(0), &mut trainer);
            trainer
        }
    }
}

/// The mean of `n` samples of each atom of the online generator at one-hot state `x`: atom o's
/// mass on each state, `[O][S]`.
fn atom_means(trainer: &Trainer<B>, x: usize, n: usize) -> Vec<Vec<f64>> {
    let generator = trainer.generator().valid();
    let s = generator.state_dim();
    let mut source = vec![0f32; s];
    source[x] = 1.0;
    let source = Tensor::<NdArray, 2>::from_data(TensorData::new(source, [1, s]), &Default::default());
    let samples: Vec<f32> = generator.sample(source, n).into_data().to_vec().unwrap(); // [1, O, n, S]
    samples
        .chunks_exact(n * s)
        .map(|atom| {
            let mut mean = vec![0.0; s];
            for sample in atom.chunks_exact(s) {
                for (m, &v) in mean.iter_mut().zip(sample) {
                    *m += f64::from(v) / n as f64;
                }
            }
            mean
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Spec §9.2 *Fork*: x0 → x1 with p = 1/2, else x2; x1 and x2 absorbing. Exactly,
/// M(x0) = (1−γ)δ_{x0} + γδ_{x1} or (1−γ)δ_{x0} + γδ_{x2}, each with probability 1/2, so a
/// δ-model with O = 2 puts one atom on each.
///
/// Data: 1,000 two-row episodes [x0 (FIRST), x1 or x2 (LAST)] in one stream. With LAST absorbing
/// (§3.2) the branch state takes all the mass after the first step, which is the exact M(x0) above
/// (and M(x1) = δ_{x1}): a window from x0 has its LAST at t* = 1, so its target is x0 with
/// probability 1−γ and the branch with probability γ, with no bootstrap.
///
/// Test-only hyperparameters: O = 2, I = 8, Z = 2, a generator of 2 hidden layers of 32, φ 16 wide,
/// γ = 0.5, H = 6, batch 16, Adam learning rate 1e-3 (Polyak 0.01), 1,000 iterations, seed 0.
///
/// Checks, on 4,000 samples per atom at x0 (each atom's mass on x0, x1, x2):
/// - the split: one atom's mass on x1 minus its mass on x2 exceeds γ/2, the other's is below −γ/2
///   (exactly ±γ; a collapsed model has 0 for both);
/// - each atom's mass vector is within 0.2 (max over states) of its branch's (1−γ, γ, 0) or
///   (1−γ, 0, γ). A collapsed model (both atoms at (1−γ, γ/2, γ/2)) is γ/2 = 0.25 from either
///   branch, so it fails; the test asserts that too.
///
/// What training reaches (measured on a 2-core x86-64, seeds given as `experiment.seed`; the data
/// seed fixed), on the fused engine after 1,000 iterations: seed 0 (the one used) 0.13
/// from the branches (atoms (0.43, 0.55, −0.06) and (0.58, −0.08, 0.37)); seed 2 0.03; seed 3
/// 0.12; seed 1 splits the atoms but one keeps x0's mass too high (0.71, 0.21 off). On the burn
/// engine, before the fused one: seed 0 0.07, seeds 2 and 3 0.16, seed 1 0.51 off. The split holds
/// for all four seeds; the vector check for three of them. The run is deterministic for a seed
/// and thread count (the draws are counter-based; [`SERIAL`] keeps the sampling of the atoms
/// reproducible), but a CPU whose float kernels round differently could take another path, as
/// another seed does.
#[test]
fn fork_puts_one_atom_on_each_branch() {
    const GAMMA: f64 = 0.5;
    const TOL: f64 = 0.2;
    let _serial = serial();
    let mut rng = StreamRng::seed_from_u64(1);
    let (mut states, mut types) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        states.extend([0, if rng.random::<bool>() { 1 } else { 2 }]);
        types.extend([STEP_FIRST, STEP_LAST]);
    }
    let data = one_hot_dataset(&states, &types, 3);
    let trainer = train(
        &[
            "experiment.seed=0",
            "model.num_outer=2",
            "model.num_inner=8",
            "model.latent_dims=2",
            "model.generator_hidden=32",
            "model.generator_layers=2",
            "model.discriminator_hidden=16",
            "model.gamma=0.5",
            "model.horizon=6",
            "train.batch_size=16",
            "train.learning_rate=1e-3",
        ],
        &data,
        1000,
    );
    let mut atoms = atom_means(&trainer, 0, 4000);
    // The atom with more mass on x1 is the x1 branch's.
    atoms.sort_by(|a, b| b[1].total_cmp(&a[1]));
    eprintln!("fork: atoms at x0 {atoms:.3?}");
    // The split: mass on x1 minus mass on x2 is +γ for one atom and −γ for the other, 0 for both
    // when collapsed; the midpoint γ/2 separates the two.
    let split: Vec<f64> = atoms.iter().map(|m| m[1] - m[2]).collect();
    assert!(split[0] > GAMMA / 2.0 && split[1] < -GAMMA / 2.0, "the atoms do not split: {atoms:.3?}");
    let branches = [[1.0 - GAMMA, GAMMA, 0.0], [1.0 - GAMMA, 0.0, GAMMA]];
    for (atom, exact) in atoms.iter().zip(&branches) {
        let err = max_abs_diff(atom, exact);
        assert!(err < TOL, "atom {atom:.3?} is {err:.3} from its branch {exact:?}; all atoms: {atoms:.3?}");
    }
    let collapsed = [1.0 - GAMMA, GAMMA / 2.0, GAMMA / 2.0];
    assert!(branches.iter().all(|b| max_abs_diff(&collapsed, b) > TOL), "the tolerance must reject a collapsed model");
}

/// Wilson–Hilferty χ² critical value at α = 10⁻⁶ (as `loss::target`'s tests, whose helper is
/// crate-private): it errs high by at most 15% (df = 1), 4% at df = 6.
fn chi_square_critical(df: usize) -> f64 {
    const Z: f64 = 4.753_424_308_822_899; // Φ⁻¹(1 − 10⁻⁶)
    let df = df as f64;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + Z * a.sqrt()).powi(3)
}

/// Pearson's χ² of `observed` against `probs`; every cell expects at least 5 draws.
fn assert_fits(what: &str, observed: &[u64], probs: &[f64]) {
    let n: u64 = observed.iter().sum();
    let mut stat = 0.0;
    for (&o, &p) in observed.iter().zip(probs) {
        let e = p * n as f64;
        assert!(e >= 5.0, "{what}: a cell expects {e} < 5 draws");
        stat += (o as f64 - e).powi(2) / e;
    }
    let critical = chi_square_critical(probs.len() - 1);
    assert!(
        stat < critical,
        "{what}: χ² = {stat:.1} ≥ {critical:.1}; observed {observed:?}, probabilities {probs:.4?}"
    );
}

/// A generator whose atom o is the Dirac measure at s + c_o, whatever its latent: one hidden layer
/// of width W ≥ S that copies s (the leaky ReLU is the identity on s ≥ 0), an output layer that
/// copies it back, and the output bias c_o. Every value involved is a small integer, so the output
/// is exact in f32.
fn dirac_generator(offsets: &[Vec<f32>], latent_dims: usize, hidden: usize) -> Generator<NdArray> {
    let (atoms, s) = (offsets.len(), offsets[0].len());
    let device = Default::default();
    let mut generator = GeneratorConfig::new(atoms, latent_dims, s, hidden).with_layers(1).init::<NdArray>(&device, 0);
    let (mut w0, mut w1) = (vec![0f32; atoms * (latent_dims + s) * hidden], vec![0f32; atoms * hidden * s]);
    for o in 0..atoms {
        for d in 0..s {
            w0[(o * (latent_dims + s) + latent_dims + d) * hidden + d] = 1.0;
            w1[(o * hidden + d) * s + d] = 1.0;
        }
    }
    let tensor =
        |v: Vec<f32>, shape: [usize; 3]| Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &device));
    generator.weights = vec![tensor(w0, [atoms, latent_dims + s, hidden]), tensor(w1, [atoms, hidden, s])];
    generator.biases =
        vec![tensor(vec![0.0; atoms * hidden], [atoms, 1, hidden]), tensor(offsets.concat(), [atoms, 1, s])];
    generator
}

/// Spec §9.2 *Bellman-target test*: with the target generator frozen at Dirac atoms (atom o at
/// s + c_o, [`dirac_generator`]), the targets Y of a fixed window, built as the trainer builds
/// them (a window batch from the dataset, the generator's samples at s_H, the horizon indices and
/// `build_target`), follow ν_o = Σ_{t<H}(1−γ)γ^t δ_{s_t} + γ^H δ_{s_H + c_o}; with a LAST at t* in
/// the window, ν = Σ_{t<t*}(1−γ)γ^t δ_{s_t} + γ^{t*} δ_{s_{t*}} and no bootstrap.
///
/// The window is s_t = (t, 0), S = 2, H = 6, γ = 0.8, and c_o = (0, 10(o+1)), so every candidate
/// is recognisable: s_H + c_o names both the atom and the bootstrap state (a bootstrap from the
/// wrong atom, or at s_0 instead of s_H, lands in no cell and fails). Each window is the only one
/// its dataset serves (N = H + 2 rows: starts in [0, 1)), drawn as a batch of 100; with O = 3 and
/// I = 1,000 that is 10⁵ draws per atom, and the χ² test per atom has α = 10⁻⁶.
#[test]
fn bellman_target_of_dirac_atoms_has_the_law_of_the_backup() {
    const GAMMA: f64 = 0.8;
    const H: usize = 6;
    let (batch, outer, inner, s) = (100, 3, 1000, 2);
    let _serial = serial();
    let offsets: Vec<Vec<f32>> = (0..outer).map(|o| vec![0.0, 10.0 * (o + 1) as f32]).collect();
    let target = dirac_generator(&offsets, 2, 4);
    let obs: Vec<f32> = (0..H + 2).flat_map(|t| [t as f32, 0.0]).collect();
    let mut rng = StreamRng::seed_from_u64(5);
    for t_star in [None, Some(3)] {
        let mut types = vec![STEP_MID; H + 2];
        types[0] = STEP_FIRST;
        if let Some(t) = t_star {
            types[t] = STEP_LAST;
            types[t + 1] = STEP_FIRST;
        }
        let data = OfflineDataset::from_parts(obs.clone(), types, 1, H + 2, s).unwrap();
        let mut windows = WindowBatch::default();
        data.sample_windows(&mut rng, batch, H, &mut windows);
        // As `Trainer::batch_and_target`.
        let window = windows.observations_tensor::<NdArray>(&Default::default());
        let s_h = window.clone().slice([0..batch, H..H + 1, 0..s]).reshape([batch, s]);
        let bootstrap = target.sample(s_h, inner);
        let indices = sample_horizon_indices(&mut rng, GAMMA, H, &windows.step_types, batch, outer, inner);
        let y: Vec<f32> =
            build_target(window, &windows.step_types, bootstrap, &indices, true).into_data().to_vec().unwrap();

        // Cells 0..H: Y = s_t; cell H: Y = s_H (possible only with a LAST at H); cell H + 1: the
        // atom's own bootstrap s_H + c_o.
        let mut counts = vec![vec![0u64; H + 2]; outer];
        for (k, v) in y.chunks_exact(s).enumerate() {
            let o = (k / inner) % outer;
            let cell = match (v[0], v[1]) {
                (t, y1) if y1 == 0.0 && t >= 0.0 && t <= H as f32 && t.fract() == 0.0 => t as usize,
                (t, y1) if t == H as f32 && y1 == offsets[o][1] => H + 1,
                other => panic!("target {other:?} of atom {o} is no candidate of ν"),
            };
            counts[o][cell] += 1;
        }
        let mut probs = vec![0.0; H + 2];
        let cap = t_star.unwrap_or(H);
        for (t, p) in probs.iter_mut().enumerate().take(cap) {
            *p = (1.0 - GAMMA) * GAMMA.powi(t as i32);
        }
        probs[if t_star.is_some() { cap } else { H + 1 }] = GAMMA.powi(cap as i32);
        for (o, observed) in counts.iter().enumerate() {
            // Cells of probability 0 must be empty; the rest are tested.
            let (mut obs_kept, mut probs_kept) = (Vec::new(), Vec::new());
            for (&c, &p) in observed.iter().zip(&probs) {
                if p == 0.0 {
                    assert_eq!(c, 0, "LAST at {t_star:?}, atom {o}: a cell of probability 0 was drawn: {observed:?}");
                } else {
                    obs_kept.push(c);
                    probs_kept.push(p);
                }
            }
            assert_fits(&format!("LAST at {t_star:?}, atom {o}"), &obs_kept, &probs_kept);
        }
    }
}

/// One stream of `n` steps of the Markov chain `p` (rows sum to 1) from state 0, no episode end.
fn markov_dataset(p: &[Vec<f64>], n: usize, seed: u64) -> OfflineDataset {
    let mut rng = StreamRng::seed_from_u64(seed);
    let mut states = Vec::with_capacity(n);
    let mut x = 0;
    for _ in 0..n {
        states.push(x);
        let u: f64 = rng.random();
        let mut cumulative = 0.0;
        x = p[x]
            .iter()
            .position(|&q| {
                cumulative += q;
                u < cumulative
            })
            .unwrap_or(p.len() - 1);
    }
    let mut types = vec![STEP_MID; n];
    types[0] = STEP_FIRST;
    one_hot_dataset(&states, &types, p.len())
}

/// The SR (1−γ)(I−γP)⁻¹, `[S][S]`: row x is the exact mean of M(x) (Gauss–Jordan, S is tiny).
fn successor_representation(p: &[Vec<f64>], gamma: f64) -> Vec<Vec<f64>> {
    let s = p.len();
    // [I − γP | (1−γ)I]
    let mut a: Vec<Vec<f64>> = (0..s)
        .map(|i| {
            let mut row: Vec<f64> = (0..s).map(|j| f64::from(u8::from(i == j)) - gamma * p[i][j]).collect();
            row.extend((0..s).map(|j| if i == j { 1.0 - gamma } else { 0.0 }));
            row
        })
        .collect();
    for c in 0..s {
        let pivot = (c..s).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, pivot);
        let d = a[c][c];
        a[c].iter_mut().for_each(|v| *v /= d);
        for r in 0..s {
            if r != c {
                let f = a[r][c];
                let pivot_row = a[c].clone();
                a[r].iter_mut().zip(&pivot_row).for_each(|(v, pv)| *v -= f * pv);
            }
        }
    }
    a.into_iter().map(|row| row[s..].to_vec()).collect()
}

/// The exact law of M(x)'s mass on `state`, Σ_t (1−γ)γ^t 1{X_t = state} ∈ [0, 1], for each source
/// x, by distributional dynamic programming: iterate G(x) = (1−γ)1{x = state} + γG(X′) on a grid
/// of `k` points of [0, 1], each backed-up point split between its two grid neighbours in
/// proportion (the Cramér projection, which keeps the mean). Returns `[S][k]` probabilities.
///
/// Error: each projection moves mass by at most one cell, 1/(k−1), and the backup contracts W1
/// by γ, so the W1 error is at most 1/((k−1)(1−γ)); 400 iterations leave γ^400 of the start.
fn exact_mass_law(p: &[Vec<f64>], gamma: f64, state: usize, k: usize) -> Vec<Vec<f64>> {
    let s = p.len();
    let cells = (k - 1) as f64;
    let mut law: Vec<Vec<f64>> = (0..s)
        .map(|_| {
            let mut l = vec![0.0; k];
            l[0] = 1.0;
            l
        })
        .collect();
    for _ in 0..400 {
        let mut next = vec![vec![0.0; k]; s];
        for x in 0..s {
            let r = if x == state { 1.0 - gamma } else { 0.0 };
            for (y, &pxy) in p[x].iter().enumerate().filter(|(_, &q)| q > 0.0) {
                for (j, &q) in law[y].iter().enumerate().filter(|(_, &q)| q > 0.0) {
                    let u = ((r + gamma * j as f64 / cells) * cells).min(cells);
                    let lo = u.floor() as usize;
                    let f = u - lo as f64;
                    next[x][lo] += pxy * q * (1.0 - f);
                    if f > 0.0 {
                        next[x][lo + 1] += pxy * q * f;
                    }
                }
            }
        }
        law = next;
    }
    law
}

/// W1 between a law on the grid j/(k−1) of [0, 1] and the uniform law on `atoms`: ∫|F − G|.
fn w1_grid_to_atoms(law: &[f64], atoms: &[f64]) -> f64 {
    let cells = (law.len() - 1) as f64;
    // (position, grid mass, atom mass), sorted by position.
    let mut points: Vec<(f64, f64, f64)> = law.iter().enumerate().map(|(j, &q)| (j as f64 / cells, q, 0.0)).collect();
    points.extend(atoms.iter().map(|&a| (a, 0.0, 1.0 / atoms.len() as f64)));
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut f, mut g, mut w1) = (0.0, 0.0, 0.0);
    for pair in points.windows(2) {
        f += pair[0].1;
        g += pair[0].2;
        w1 += (f - g).abs() * (pair[1].0 - pair[0].0);
    }
    w1
}

/// The mean of a law on the grid of [0, 1].
fn grid_mean(law: &[f64]) -> f64 {
    let cells = (law.len() - 1) as f64;
    law.iter().enumerate().map(|(j, &q)| q * j as f64 / cells).sum()
}

/// The exact references the trained tests rely on: the DP law's mean is the SR entry; on a
/// deterministic alternation x0 ⇄ x1 the law is the Dirac at Σ_t (1−γ)γ^t 1{t odd} = γ/(1+γ)
/// (W1 to that single atom is 0 up to the grid); and the SR of the fork's chain is (1−γ, γ, 0).
#[test]
fn exact_references_are_right() {
    let walk = vec![vec![0.7, 0.3], vec![0.2, 0.8]];
    let sr = successor_representation(&walk, 0.5);
    // (I − γP)⁻¹ by hand: [[0.65, −0.15], [−0.1, 0.6]]⁻¹ = [[0.6, 0.15], [0.1, 0.65]] / 0.375.
    let by_hand = [[0.8, 0.2], [0.4 / 3.0, 1.3 / 1.5]];
    for x in 0..2 {
        assert!(max_abs_diff(&sr[x], &by_hand[x]) < 1e-12, "SR row {x}: {:?}", sr[x]);
    }
    let law = exact_mass_law(&walk, 0.5, 1, 2001);
    for x in 0..2 {
        let total: f64 = law[x].iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "law {x} sums to {total}");
        assert!((grid_mean(&law[x]) - sr[x][1]).abs() < 1e-6, "law {x} mean {} vs SR {}", grid_mean(&law[x]), sr[x][1]);
    }
    let alternation = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
    let dirac = exact_mass_law(&alternation, 0.5, 1, 2001);
    assert!(w1_grid_to_atoms(&dirac[0], &[0.5 / 1.5]) < 1e-3, "x0: {}", w1_grid_to_atoms(&dirac[0], &[0.5 / 1.5]));
    assert!(w1_grid_to_atoms(&dirac[1], &[1.0 / 1.5]) < 1e-3, "x1: {}", w1_grid_to_atoms(&dirac[1], &[1.0 / 1.5]));
    let fork = vec![vec![0.0, 0.5, 0.5], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
    assert!(max_abs_diff(&successor_representation(&fork, 0.5)[0], &[0.5, 0.25, 0.25]) < 1e-12);
}

/// The hyperparameters of the walk and cycle tests (test-only; module doc): O = 4, I = 32, Z = 2,
/// a generator of 2 hidden layers of 32, γ = 0.5, H = 6, batch 64, Adam learning rate 1e-4
/// (Polyak 0.01), no discriminator (φ = identity: the kernels act on the one-hot states), the
/// reference's kernels (inner RQ mixture at h = 1, outer IMQ at the median heuristic), 4,000
/// iterations (about 35 s per test on the fused engine, 2 replicas, 2-core x86-64). The burn-era
/// settings (batch 16, 3e-4, 2,000 iterations) passed on burn's trajectory but not on the fused
/// engine's: the two engines agree to 1e-7 for 100 iterations and then part as any chaotic
/// training does (1e-3 apart by 400), and on the fused trajectory the walk's mixture at x1 missed
/// its 0.12 by 0.01–0.05 (at 2,000, 3,000 and 5,000 iterations). The larger batch and smaller
/// rate average the gradient noise that those margins were eaten by. Without a discriminator because φ, spectrally normalised, is 1-Lipschitz: it can
/// only bring one-hot states closer, below a resolution that is already the limit here, and its
/// adversarial step adds noise (measured: atoms with no mass on their own source, which the exact
/// measure forbids); the fork test trains with it.
const SMALL_WORLD_SETS: [&str; 11] = [
    "model.num_outer=4",
    "model.num_inner=32",
    "model.latent_dims=2",
    "model.generator_hidden=32",
    "model.generator_layers=2",
    "model.gamma=0.5",
    "model.horizon=6",
    "train.batch_size=64",
    "train.learning_rate=1e-4",
    "train.discriminator_steps=0",
    "experiment.seed=0",
];
const SMALL_WORLD_ITERATIONS: u64 = 4000;

/// Spec §9.2 *Two-state random walk*: P = [[0.7, 0.3], [0.2, 0.8]], γ = 0.5, r = 1{x = x1}.
///
/// - Mean: the atoms' mixture (the mean of their masses, [`atom_means`] on 4,000 samples each)
///   is the SR row (1−γ)(I−γP)⁻¹[x] = (0.8, 0.2) at x0 and (0.133, 0.867) at x1, within 0.12 on
///   every state. A model that ignores the source (both rows at the stationary (0.4, 0.6)) is
///   0.27 off or more.
/// - Law: the return G = Σγ^t r(X_t) is M(x)'s mass on x1 divided by 1−γ, so the test compares,
///   in mass units, the law of the atoms' masses on x1 (uniform over the 4 atoms) with the exact
///   law ([`exact_mass_law`], 2,001-point grid, error < 0.001). The sum over x0 and x1 of W1 must
///   be below 0.20. For reference: the best 4-atom approximations reach 0.025 + 0.036 = 0.061,
///   a collapsed model (every atom at the mean: a γ-model ensemble) 0.152 + 0.128 = 0.280, which
///   the test also checks it rejects.
///
/// Measured on a 2-core x86-64 (`experiment.seed` 0, data seed 1), fused engine: W1 0.044 at x0
/// and 0.042 at x1 (sum 0.086). With the burn-era settings (batch 16, 3e-4) on burn: 0.112 after
/// 2,000 iterations, 0.145 after 3,000. The sum fluctuates along training by a
/// few hundredths; on another walk's data (same P) seeds 0, 1, 2 gave 0.12, 0.16, 0.19 after
/// 3,000 iterations, seed 2 being the closest to the tolerance (its atoms at x1 all near mass 1,
/// the law's lower quarter missed).
#[test]
fn two_state_walk_matches_the_sr_row_and_the_return_law() {
    const GAMMA: f64 = 0.5;
    const MEAN_TOL: f64 = 0.12;
    const W1_TOL: f64 = 0.20;
    let _serial = serial();
    let walk = vec![vec![0.7, 0.3], vec![0.2, 0.8]];
    let data = markov_dataset(&walk, 20_000, 1);
    let trainer = train(&SMALL_WORLD_SETS, &data, SMALL_WORLD_ITERATIONS);
    let sr = successor_representation(&walk, GAMMA);
    let law = exact_mass_law(&walk, GAMMA, 1, 2001);
    let (mut w1_sum, mut collapsed_sum) = (0.0, 0.0);
    let mut report = String::new();
    for x in 0..2 {
        let atoms = atom_means(&trainer, x, 4000);
        let mixture: Vec<f64> = (0..2).map(|k| atoms.iter().map(|a| a[k]).sum::<f64>() / atoms.len() as f64).collect();
        let mean_err = max_abs_diff(&mixture, &sr[x]);
        assert!(
            mean_err < MEAN_TOL,
            "x{x}: mixture {mixture:.3?} is {mean_err:.3} from the SR row {:.3?}; atoms {atoms:.3?}",
            sr[x]
        );
        let on_x1: Vec<f64> = atoms.iter().map(|a| a[1]).collect();
        let w1 = w1_grid_to_atoms(&law[x], &on_x1);
        w1_sum += w1;
        collapsed_sum += w1_grid_to_atoms(&law[x], &[grid_mean(&law[x])]);
        report += &format!("x{x}: atoms' mass on x1 {on_x1:.3?}, W1 {w1:.3}; ");
    }
    eprintln!("two-state walk: {report}sum {w1_sum:.3}");
    assert!(w1_sum < W1_TOL, "W1 summed over x0, x1 is {w1_sum:.3} ≥ {W1_TOL}: {report}");
    assert!(collapsed_sum > W1_TOL, "the tolerance must reject a collapsed model ({collapsed_sum:.3})");
}

/// Spec §9.2 *Deterministic cycle*: x0 → x1 → x2 → x0, γ = 0.5. M(x) is not random: it is
/// Σ_t (1−γ)γ^t δ_{x+t mod 3} = (4/7, 2/7, 1/7) rotated to start at x, so every atom must be that
/// one measure (the outer MMD must not spread them).
///
/// Checks at each source, on 4,000 samples per atom ([`atom_means`]):
/// - the mixture is within 0.08 of the exact measure on every state;
/// - every atom is within 0.35 of it on every state, and the atoms' root-mean-square distance
///   (max over states) to their mixture is below 0.25: the spread allowed is the resolution of
///   the I = 32-sample estimator (module doc) with a margin; atoms spread over the cycle (one
///   per state's Dirac, or the exact measure's rotations) are ≥ 0.42 from it.
///
/// Measured (seed 0, data seed 1), fused engine: the mixture within 0.028, the worst atom 0.15 off,
/// spreads 0.09, 0.13, 0.10 at x0, x1, x2. With the burn-era settings on burn: after 2,000
/// iterations 0.033, 0.24 and 0.18 at worst; after 3,000, 0.028, 0.24 and 0.14.
/// The spread does not shrink to 0 with these sizes (module doc); a run on other data, with one
/// atom lagging at x1 and x2, had its worst atom 0.29 off.
#[test]
fn deterministic_cycle_collapses_the_atoms() {
    const GAMMA: f64 = 0.5;
    let _serial = serial();
    let cycle = vec![vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]];
    let data = markov_dataset(&cycle, 20_000, 1);
    let trainer = train(&SMALL_WORLD_SETS, &data, SMALL_WORLD_ITERATIONS);
    let sr = successor_representation(&cycle, GAMMA);
    for (x, exact) in sr.iter().enumerate() {
        let atoms = atom_means(&trainer, x, 4000);
        let mixture: Vec<f64> = (0..3).map(|k| atoms.iter().map(|a| a[k]).sum::<f64>() / atoms.len() as f64).collect();
        let mean_err = max_abs_diff(&mixture, exact);
        assert!(
            mean_err < 0.08,
            "x{x}: mixture {mixture:.3?} is {mean_err:.3} from M(x) {:.3?}; atoms {atoms:.3?}",
            sr[x]
        );
        for atom in &atoms {
            let err = max_abs_diff(atom, exact);
            assert!(err < 0.35, "x{x}: atom {atom:.3?} is {err:.3} from M(x) {exact:.3?}; atoms {atoms:.3?}");
        }
        let spread = (atoms.iter().map(|a| max_abs_diff(a, &mixture).powi(2)).sum::<f64>() / atoms.len() as f64).sqrt();
        eprintln!("cycle x{x}: mixture error {mean_err:.3}, spread {spread:.3}, atoms {atoms:.3?}");
        assert!(spread < 0.25, "x{x}: the atoms spread {spread:.3} around their mixture {mixture:.3?}: {atoms:.3?}");
    }
}
