//! Every variant of dsm-algorithm.md §1.1 on the fused engine (tests/variants.rs trains them on burn), and the engine's exact replicas.
//!
//! - The γ-model ensemble / SR (separate discriminators per batch slot and atom), the single-step
//!   model, and the `median` variant (RBF with the median heuristic on both levels, no
//!   discriminator): one full iteration against the burn engine from the same parameters and
//!   draws, with the tolerances of tests/fused_vs_burn.rs (gradients read off as parameter
//!   changes under a huge-ε Adam: 1e-4 of the tensor's largest change + 1e-6).
//! - Replicas: 1 × B, 2 × B/2 and 4 × B/4 rows give the same parameters after 50 iterations, for
//!   the δ-model and the SR variant; a checkpoint written with 2 replicas resumes with 1, and the
//!   reverse.

mod support;

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use common::config::ConfigDoc;
use learner::config::LearnerConfig;
use learner::fused::engine::{gen_from_burn, members_from_burn, phi_from_burn, FusedEngine};
use learner::fused::replicas::Replicas;
use learner::train::checkpoint::CheckpointDir;
use learner::train::checkpoint_v2;
use learner::train::dataset::OfflineDataset;
use learner::train::run::run;
use learner::train::trainer::Trainer;

type B = Autodiff<NdArray>;

/// A bounded random walk in S dimensions, 2 streams with an episode boundary (LAST, then FIRST).
fn walk(dim: usize) -> OfflineDataset {
    let (streams, steps) = (2, 400);
    let mut rng = common::rng::stream(5, &["variants-test".into()]);
    let mut obs = Vec::new();
    let mut types = Vec::new();
    for _ in 0..streams {
        let mut x = vec![0.5f32; dim];
        for t in 0..steps {
            for v in &mut x {
                *v = (*v + rand::Rng::random_range(&mut rng, -0.2..0.2)).clamp(0.0, 1.0);
            }
            obs.extend_from_slice(&x);
            types.push(match t {
                0 | 200 => 0,
                199 | 399 => 2,
                _ => 1,
            });
        }
    }
    OfflineDataset::from_parts(obs, types, streams, steps, dim).unwrap()
}

/// The variants, as configs/riab-random-sr.toml lists their overrides.
const SR: &[&str] = &["model.num_outer=1", "model.distributional=false", "model.inner_separate_discriminator=true"];
const SINGLE_STEP: &[&str] = &[
    "model.num_outer=1",
    "model.distributional=false",
    "model.inner_separate_discriminator=true",
    "model.cumulant_is_source_state=false",
    "model.gamma=0",
    "model.horizon=1",
    "model.bootstrap=false",
];
const MEDIAN: &[&str] = &[
    "model.inner_kernel=rbf",
    "model.inner_bandwidths=[1.0]",
    "model.inner_adaptive_bandwidth=true",
    "model.outer_kernel=rbf",
    "model.outer_bandwidths=[1.0]",
    "train.discriminator_steps=0",
];
/// The γ-model ensemble with several atoms and one shared φ.
const ENSEMBLE_SHARED: &[&str] = &["model.distributional=false"];

fn config(variant: &[&str], extra: &[&str]) -> (LearnerConfig, ConfigDoc) {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&[
        "model.num_outer=4",
        "model.num_inner=3",
        "model.latent_dims=3",
        "model.generator_hidden=16",
        "model.discriminator_hidden=16",
        "model.embedding_dim=6",
        "train.batch_size=6",
    ])
    .unwrap();
    doc.apply_sets(variant).unwrap();
    doc.apply_sets(extra).unwrap();
    (LearnerConfig::resolve(&doc).unwrap(), doc)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn assert_close(what: &str, fused: &[f32], burn: &[f32], rel: f32, abs: f32) {
    assert_eq!(fused.len(), burn.len(), "{what}: lengths");
    let scale = max_abs(burn);
    for (k, (a, b)) in fused.iter().zip(burn).enumerate() {
        assert!((a - b).abs() <= rel * scale + abs, "{what}[{k}]: fused {a} vs burn {b} (scale {scale})");
    }
}

fn diff(after: &[f32], before: &[f32]) -> Vec<f32> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// One iteration of `variant` on both engines: the losses, and every parameter's change (the
/// gradient, under lr = ε = 10⁴), the spectral-norm vectors and the target.
fn one_iteration_agrees(name: &str, variant: &[&str]) {
    let dim = 3;
    let (cfg, doc) = config(variant, &["train.learning_rate=10000.0", "train.adam_eps=10000.0"]);
    let data = walk(dim);
    let mut burn = Trainer::<B>::new(cfg.clone(), doc.clone(), dim, Default::default());
    let mut fused = FusedEngine::new(cfg, doc, dim).unwrap();
    let g0 = gen_from_burn(&burn.generator().valid());
    assert_eq!(fused.generator, g0, "{name}: the engines start from the same generator");
    let members0 = burn.separate_discriminator().map(|s| members_from_burn(&s.valid()));
    if let Some(m0) = &members0 {
        assert_eq!(&fused.members, m0, "{name}: and the same separate discriminators");
    }
    let p0 = phi_from_burn(&burn.discriminator().valid());
    let lb = burn.iteration(&data).unwrap();
    let lf = fused.iteration(&data).unwrap();
    for (what, a, b) in [("D loss", lf.discriminator, lb.discriminator), ("G loss", lf.generator, lb.generator)] {
        if b.is_nan() {
            assert!(a.is_nan(), "{name} {what}: fused {a}, burn NaN (no discriminator step)");
        } else {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-6, "{name} {what}: fused {a} vs burn {b}");
        }
    }
    let g1 = gen_from_burn(&burn.generator().valid());
    for l in 0..g0.weights.len() {
        let want = diff(&g1.weights[l], &g0.weights[l]);
        assert!(max_abs(&want) > 0.0, "{name}: generator layer {l} has a gradient");
        let got = diff(&fused.generator.weights[l], &g0.weights[l]);
        assert_close(&format!("{name} G W{l} step"), &got, &want, 1e-4, 1e-6);
        let want = diff(&g1.biases[l], &g0.biases[l]);
        let got = diff(&fused.generator.biases[l], &g0.biases[l]);
        assert_close(&format!("{name} G b{l} step"), &got, &want, 1e-4, 1e-6);
    }
    let t1 = gen_from_burn(burn.target());
    for l in 0..g0.weights.len() {
        assert_close(&format!("{name} target W{l}"), &fused.target.weights[l], &t1.weights[l], 1e-5, 1e-6);
    }
    // The shared φ: trained by the δ-model and the shared ensemble, untouched otherwise.
    let p1 = phi_from_burn(&burn.discriminator().valid());
    assert_eq!(fused.phi == p0, p1 == p0, "{name}: φ trains on both engines or on neither");
    for k in 0..p0.weights.len() {
        let want = diff(&p1.weights[k], &p0.weights[k]);
        assert_close(&format!("{name} φ W{k} step"), &diff(&fused.phi.weights[k], &p0.weights[k]), &want, 1e-4, 1e-6);
        assert_close(&format!("{name} φ u{k}"), &fused.phi.u[k], &p1.u[k], 1e-5, 1e-6);
    }
    if let Some(m0) = members0 {
        let m1 = members_from_burn(&burn.separate_discriminator().unwrap().valid());
        for (j, ((a0, a1), f)) in m0.iter().zip(&m1).zip(&fused.members).enumerate() {
            for k in 0..a0.weights.len() {
                let want = diff(&a1.weights[k], &a0.weights[k]);
                // A member's gradient comes from its one batch row; the first layer's always moves.
                if k == 0 {
                    assert!(max_abs(&want) > 0.0, "{name}: member {j} layer 0 has a gradient");
                }
                let got = diff(&f.weights[k], &a0.weights[k]);
                assert_close(&format!("{name} member {j} W{k} step"), &got, &want, 1e-4, 1e-6);
                let got = diff(&f.biases[k], &a0.biases[k]);
                assert_close(
                    &format!("{name} member {j} b{k} step"),
                    &got,
                    &diff(&a1.biases[k], &a0.biases[k]),
                    1e-4,
                    1e-6,
                );
                assert_close(&format!("{name} member {j} u{k}"), &f.u[k], &a1.u[k], 1e-5, 1e-6);
            }
        }
    }
}

#[test]
fn the_sr_variant_agrees_with_burn() {
    one_iteration_agrees("SR", SR);
}

#[test]
fn the_single_step_model_agrees_with_burn() {
    one_iteration_agrees("single-step", SINGLE_STEP);
}

#[test]
fn the_median_variant_agrees_with_burn() {
    one_iteration_agrees("median", MEDIAN);
}

#[test]
fn the_gamma_ensemble_with_a_shared_discriminator_agrees_with_burn() {
    one_iteration_agrees("ensemble, shared φ", ENSEMBLE_SHARED);
}

/// 50 iterations with `replicas` replicas of `threads` threads each: every replica's arrays.
fn replicated(variant: &[&str], replicas: usize, threads: usize) -> Vec<Vec<checkpoint_v2::Array>> {
    let dim = 3;
    let data = walk(dim);
    let (cfg, doc) = config(variant, &["train.batch_size=32", &format!("train.threads={}", replicas * threads)]);
    let mut group = Replicas::new(cfg, doc, dim, replicas).unwrap();
    assert_eq!(group.replicas(), replicas);
    assert_eq!(group.threads(), replicas * threads);
    for _ in 0..50 {
        group.iteration(&data).unwrap();
    }
    assert_eq!(group.step(), 50);
    // Each replica trained its own rows' separate discriminators (SR); gathered, every replica
    // holds the whole model.
    group.gather_members();
    (0..replicas).map(|r| group.replica(r).to_arrays()).collect()
}

/// B = 32 rows are 4 blocks of 8: one replica with all, two with two each, four with one each
/// (and two replicas of two threads). The result is the same bit for bit: every replica holds the
/// one-replica parameters, target, Adam moments and spectral-norm vectors.
fn replicas_agree(variant: &[&str]) {
    let one = replicated(variant, 1, 1).remove(0);
    for (replicas, threads) in [(2, 1), (4, 1), (2, 2)] {
        for (r, arrays) in replicated(variant, replicas, threads).into_iter().enumerate() {
            assert_eq!(arrays.len(), one.len());
            for (a, b) in arrays.iter().zip(&one) {
                assert_eq!(a.name, b.name);
                let worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-6, "{replicas} replicas × {threads}: replica {r}'s {} is off by {worst}", a.name);
                assert!(
                    a.data == b.data,
                    "{replicas} replicas × {threads}: replica {r}'s {} is not bit-identical",
                    a.name
                );
            }
        }
    }
}

#[test]
fn replicas_train_the_delta_model_exactly() {
    replicas_agree(&[]);
}

#[test]
fn replicas_train_the_sr_variant_exactly() {
    replicas_agree(SR);
}

fn arrays(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = checkpoint_v2::read(dir).unwrap();
    c.arrays.into_values().map(|a| (a.name, a.data)).collect()
}

/// A run checkpointed at 10 with one replica count and resumed to 20 with the other ends where a
/// run straight to 20 ends, for the δ-model and the SR variant.
#[test]
fn checkpoints_move_between_replica_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    support::random_dataset(&data);
    for (name, variant) in [("delta", &[][..]), ("sr", SR)] {
        let doc = |steps: u64, replicas: usize| {
            let mut extra = vec!["train.batch_size=16".to_string(), format!("train.replicas={replicas}")];
            extra.push("train.threads=2".into());
            extra.extend(variant.iter().map(|s| s.to_string()));
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            support::tiny_doc(steps, 10, &extra)
        };
        let latest = |w: &Path| CheckpointDir::open(w, 5).unwrap().latest().unwrap().1;
        let straight = tmp.path().join(format!("{name}-straight"));
        run::<B>(doc(20, 1), &data, &straight, Default::default()).unwrap();
        for (first, second) in [(2, 1), (1, 2)] {
            let w = tmp.path().join(format!("{name}-{first}-{second}"));
            run::<B>(doc(10, first), &data, &w, Default::default()).unwrap();
            let resumed = run::<B>(doc(20, second), &data, &w, Default::default()).unwrap();
            assert_eq!(resumed.resumed_from, Some(10));
            assert_eq!(
                arrays(&latest(&w)),
                arrays(&latest(&straight)),
                "{name}: {first} replicas then {second} must match one replica throughout"
            );
        }
    }
}

/// The `median` variant at the small-world sizes (I = 32, an even count of values for each inner
/// median) with the reference's Adam: 20 iterations on both engines stay within 1e-5 (each step
/// moves a parameter by about the learning rate, 3e-4).
#[test]
fn the_median_variant_stays_with_burn_for_twenty_iterations() {
    let dim = 2;
    let data = walk(dim);
    let (cfg, doc) = config(
        MEDIAN,
        &[
            "model.num_inner=32",
            "model.latent_dims=2",
            "model.generator_layers=2",
            "train.batch_size=16",
            "train.learning_rate=3e-4",
        ],
    );
    let mut burn = Trainer::<B>::new(cfg.clone(), doc.clone(), dim, Default::default());
    let mut fused = FusedEngine::new(cfg, doc, dim).unwrap();
    for it in 1..=20 {
        let lb = burn.iteration(&data).unwrap();
        let lf = fused.iteration(&data).unwrap();
        assert!(
            (lf.generator - lb.generator).abs() <= 1e-4 * lb.generator.abs() + 1e-6,
            "iteration {it}: G loss fused {} vs burn {}",
            lf.generator,
            lb.generator
        );
    }
    let g = gen_from_burn(&burn.generator().valid());
    for l in 0..g.weights.len() {
        assert_close(&format!("G W{l}"), &fused.generator.weights[l], &g.weights[l], 0.0, 1e-5);
        assert_close(&format!("G b{l}"), &fused.generator.biases[l], &g.biases[l], 0.0, 1e-5);
    }
}
