//! The variants of dsm-algorithm.md §1.1 train end to end on a tiny synthetic dataset: the γ-model ensemble /
//! SR baseline (separate discriminators per (batch slot, atom)), the single-step model and the `median` kernels
//! (no discriminator). A few iterations each, finite losses, and the pieces each variant adds behave: separate
//! discriminators diverge across batch slots and round-trip through a checkpoint; without a discriminator there
//! is no D loss.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use common::config::ConfigDoc;
use common::npz::{write_npz, NpyArray};
use learner::config::LearnerConfig;
use learner::train::dataset::OfflineDataset;
use learner::train::trainer::Trainer;

type B = Autodiff<NdArray>;

/// A 2-D random walk, 2 streams of 200 steps, with an episode boundary in the middle.
fn dataset(path: &Path) -> OfflineDataset {
    let (e, n) = (2usize, 200usize);
    let mut obs = Vec::new();
    let mut types = Vec::new();
    let mut rng = common::rng::stream(4, &["walk".into()]);
    for _ in 0..e {
        let (mut x, mut y) = (0.0f32, 0.0f32);
        for t in 0..n {
            x += rand::Rng::random_range(&mut rng, -0.1..0.1);
            y += rand::Rng::random_range(&mut rng, -0.1..0.1);
            obs.extend([x, y]);
            types.push(match t {
                0 | 100 => 0,
                99 | 199 => 2,
                _ => 1,
            });
        }
    }
    write_npz(
        path,
        &[("observations", &NpyArray::f32(vec![e, n, 2], obs)), ("step_type", &NpyArray::u8(vec![e, n], types))],
    )
    .unwrap();
    OfflineDataset::load(path).unwrap()
}

const SR: [&str; 3] = ["model.num_outer=1", "model.distributional=false", "model.inner_separate_discriminator=true"];
const SINGLE_STEP: [&str; 4] =
    ["model.cumulant_is_source_state=false", "model.gamma=0", "model.horizon=1", "model.bootstrap=false"];
const MEDIAN: [&str; 6] = [
    "model.inner_kernel=rbf",
    "model.inner_bandwidths=[1.0]",
    "model.inner_adaptive_bandwidth=true",
    "model.outer_kernel=rbf",
    "model.outer_bandwidths=[1.0]",
    "train.discriminator_steps=0",
];

fn trainer(sets: &[&str]) -> Trainer<B> {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&[
        "model.num_outer=3",
        "model.num_inner=3",
        "model.latent_dims=2",
        "model.generator_hidden=8",
        "model.discriminator_hidden=8",
        "train.batch_size=4",
    ])
    .unwrap();
    doc.apply_sets(sets).unwrap();
    let config = LearnerConfig::resolve(&doc).unwrap();
    Trainer::new(config, doc, 2, Default::default())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Runs `n` iterations and returns the losses.
fn train(t: &mut Trainer<B>, data: &OfflineDataset, n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|_| {
            let l = t.iteration(data).unwrap();
            (l.discriminator, l.generator)
        })
        .collect()
}

/// The thesis SR baseline: O = 1, γ-model loss, one discriminator per batch slot. The slots start identical
/// and, trained on different rows, end up different; the shared φ is left alone; a checkpoint holds the
/// separate discriminators and restores them.
#[test]
fn sr_baseline_trains_separate_discriminators_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("walk.npz"));
    let mut t = trainer(&SR);
    let shared_before = host(t.discriminator().input.weight.val());
    let w = |t: &Trainer<B>| host(t.separate_discriminator().unwrap().input.weight.val());
    let before = w(&t);
    let per = before.len() / 4; // 4 slots × 1 atom
    assert_eq!(before[..per], before[per..2 * per], "slots start identical");
    for (d, g) in train(&mut t, &data, 3) {
        assert!(d.is_finite() && g.is_finite(), "losses {d} {g}");
    }
    let after = w(&t);
    assert_ne!(after, before, "the separate discriminators trained");
    assert_ne!(after[..per], after[per..2 * per], "slots 0 and 1 got different gradients");
    assert_eq!(host(t.discriminator().input.weight.val()), shared_before, "the shared φ is unused");

    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    t.save(&ckpt).unwrap();
    assert!(ckpt.join("separate_discriminator.mpk").exists());
    let mut restored = trainer(&SR);
    restored.load(&ckpt).unwrap();
    assert_eq!(w(&restored), after);
    let u = |t: &Trainer<B>| host(t.separate_discriminator().unwrap().output.u());
    assert_eq!(u(&restored), u(&t), "the spectral-norm state is in the checkpoint");
    // Training goes on from the restored state.
    assert!(train(&mut restored, &data, 1).iter().all(|(d, g)| d.is_finite() && g.is_finite()));
}

/// The same with row chunks: each chunk uses its own slots' discriminators.
#[test]
fn sr_baseline_trains_with_row_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("walk.npz"));
    let mut t = trainer(&[&SR[..], &["train.batch_chunk=3"]].concat());
    for (d, g) in train(&mut t, &data, 2) {
        assert!(d.is_finite() && g.is_finite(), "losses {d} {g}");
    }
}

/// The single-step model (§1.1): the γ-model ensemble with O = 1, γ = 0, H = 1, no bootstrap, j = K.
#[test]
fn single_step_model_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("walk.npz"));
    let mut t = trainer(&[&SR[..], &SINGLE_STEP[..]].concat());
    for (d, g) in train(&mut t, &data, 3) {
        assert!(d.is_finite() && g.is_finite(), "losses {d} {g}");
    }
}

/// The `median` variant: no discriminator (no D step, so no D loss), RBF kernels with the median heuristic.
#[test]
fn median_variant_trains_without_a_discriminator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("walk.npz"));
    let mut t = trainer(&MEDIAN);
    let shared_before = host(t.discriminator().input.weight.val());
    let losses = train(&mut t, &data, 3);
    for (d, g) in losses {
        assert!(d.is_nan() && g.is_finite(), "losses {d} {g}");
    }
    assert_eq!(host(t.discriminator().input.weight.val()), shared_before, "no discriminator is trained");
    assert!(t.separate_discriminator().is_none());
}

/// Every shipped experiment file's `[model]` and `[train]` resolve, and `configs/riab-random-sr.toml` is the
/// thesis SR baseline on exactly the data of `configs/riab-random.toml`: the same `[experiment]` and `[env]`,
/// O = 1, the γ-model loss and separate discriminators, everything else as the δ-model.
#[test]
fn shipped_configs_resolve_and_sr_matches_the_thesis_dataset() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let doc = ConfigDoc::load(&path).unwrap();
            LearnerConfig::resolve(&doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let dsm = ConfigDoc::load(&dir.join("riab-random.toml")).unwrap();
    let sr = ConfigDoc::load(&dir.join("riab-random-sr.toml")).unwrap();
    for section in ["experiment", "env"] {
        assert_eq!(sr.section(section), dsm.section(section), "[{section}] must match riab-random.toml");
    }
    let (dsm, sr) = (LearnerConfig::resolve(&dsm).unwrap(), LearnerConfig::resolve(&sr).unwrap());
    assert_eq!((sr.model.num_outer, sr.model.distributional, sr.model.inner_separate_discriminator), (1, false, true));
    let mut as_sr = dsm.model.clone();
    (as_sr.num_outer, as_sr.distributional, as_sr.inner_separate_discriminator) = (1, false, true);
    assert_eq!(sr.model, as_sr);
    assert_eq!(sr.train, dsm.train);
}
