//! Training runs end to end on a tiny synthetic dataset: losses stay finite, checkpoints are
//! complete, a rerun resumes at the newest step with identical parameters, and a diverging run
//! stops with an error naming the iteration while its last good checkpoint stays.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use common::config::ConfigDoc;
use common::npz::{write_npz, NpyArray};
use learner::config::LearnerConfig;
use learner::train::checkpoint::CheckpointDir;
use learner::train::engine::Engine;
use learner::train::run::run;
use learner::train::trainer::Trainer;

type B = Autodiff<NdArray>;

/// A 2-D random walk, 2 streams of 300 steps, with an episode boundary in the middle.
fn dataset(path: &Path) {
    let (e, n) = (2usize, 300usize);
    let mut obs = Vec::new();
    let mut types = Vec::new();
    let mut rng = common::rng::stream(3, &["walk".into()]);
    for _ in 0..e {
        let (mut x, mut y) = (0.0f32, 0.0f32);
        for t in 0..n {
            x += rand::Rng::random_range(&mut rng, -0.1..0.1);
            y += rand::Rng::random_range(&mut rng, -0.1..0.1);
            obs.extend([x, y]);
            types.push(match t {
                0 | 150 => 0,
                149 | 299 => 2,
                _ => 1,
            });
        }
    }
    write_npz(
        path,
        &[("observations", &NpyArray::f32(vec![e, n, 2], obs)), ("step_type", &NpyArray::u8(vec![e, n], types))],
    )
    .unwrap();
}

fn tiny(extra: &[&str]) -> ConfigDoc {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&[
        "model.num_outer=3",
        "model.num_inner=3",
        "model.latent_dims=2",
        "model.generator_hidden=8",
        "model.discriminator_hidden=8",
        "train.batch_size=4",
        "train.checkpoint_every=3",
        "train.log_every=1",
        // These tests read the burn engine's checkpoints; tests/fused_run.rs covers the fused engine's.
        "train.engine=burn",
    ])
    .unwrap();
    doc.apply_sets(extra).unwrap();
    doc
}

#[test]
fn a_run_checkpoints_and_a_rerun_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("walk.npz");
    dataset(&data);
    let work = dir.path().join("work");
    let summary = run::<B>(tiny(&["train.steps=7"]), &data, &work, Default::default()).unwrap();
    assert_eq!((summary.resumed_from, summary.final_step, summary.iterations_run), (None, 7, 7));
    let (d, g) = summary.last_losses.unwrap();
    assert!(d.is_finite() && g.is_finite());
    let checkpoints = CheckpointDir::open(&work, 3).unwrap();
    // Every 3 iterations and at the end; the newest 3 are kept.
    assert_eq!(checkpoints.complete().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 6, 7]);

    // A rerun continues from step 7, up to the new total.
    let summary = run::<B>(tiny(&["train.steps=10"]), &data, &work, Default::default()).unwrap();
    assert_eq!((summary.resumed_from, summary.final_step, summary.iterations_run), (Some(7), 10, 3));
    // Nothing to do when the newest checkpoint is already at the total.
    let summary = run::<B>(tiny(&["train.steps=10"]), &data, &work, Default::default()).unwrap();
    assert_eq!((summary.resumed_from, summary.iterations_run), (Some(10), 0));

    // A loaded checkpoint has exactly the saved parameters: same outputs for the same latents.
    let (_, newest) = checkpoints.latest().unwrap();
    let config = LearnerConfig::resolve(&tiny(&[])).unwrap();
    // The burn engine writes checkpoint v2 for the δ-model; `Engine::load` reads either format.
    let load = || -> Trainer<B> {
        let mut e = Engine::<B>::new(config.clone(), tiny(&[]), 2, Default::default()).unwrap();
        e.load(&newest).unwrap();
        match e {
            Engine::Burn(t) => *t,
            Engine::Fused(_) | Engine::Gpu(_) => panic!("tiny() asks for the burn engine"),
        }
    };
    let (a, b) = (load(), load());
    assert_eq!(a.step, 10);
    let device = Default::default();
    let z = Tensor::<NdArray, 4>::from_data(TensorData::new(vec![0.3f32; 4 * 3 * 3 * 2], [4, 3, 3, 2]), &device);
    let s = Tensor::<NdArray, 2>::from_data(TensorData::new(vec![0.1f32; 8], [4, 2]), &device);
    let fresh = Trainer::<B>::new(LearnerConfig::resolve(&tiny(&[])).unwrap(), tiny(&[]), 2, Default::default());
    let out = |t: &Trainer<B>| -> Vec<f32> {
        t.generator().valid().forward(z.clone(), s.clone()).into_data().to_vec().unwrap()
    };
    assert_eq!(out(&a), out(&b));
    assert_ne!(out(&a), out(&fresh), "training moved the parameters");
    let target: Vec<f32> = a.target().forward(z.clone(), s.clone()).into_data().to_vec().unwrap();
    assert_ne!(target, out(&a), "the target is a Polyak average, not a copy");
}

#[test]
fn a_diverging_run_stops_with_the_iteration_named_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("walk.npz");
    dataset(&data);
    // An absurd learning rate: Adam moves every weight by ~1e30 per step, and the activations
    // overflow within a few iterations.
    for engine in ["burn", "fused"] {
        let work = dir.path().join(engine);
        let engine = format!("train.engine={engine}");
        let doc = tiny(&["train.steps=50", "train.learning_rate=1e30", "train.checkpoint_every=1", &engine]);
        let err = run::<B>(doc, &data, &work, Default::default()).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("non-finite loss") && message.contains("at iteration"), "{message}");
        let iteration: u64 = message.split("at iteration ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert!(message.contains("step"), "the phase is named: {message}");
        // Checkpoints are written every iteration, so the newest is the last good one (none when the
        // very first iteration diverged).
        let latest = CheckpointDir::open(&work, 3).unwrap().latest().map_or(0, |(s, _)| s);
        assert_eq!(latest, iteration - 1, "the last good checkpoint is the one before the bad iteration");
    }
}

#[test]
fn bad_input_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("walk.npz");
    dataset(&data);
    let err = run::<B>(tiny(&["model.horizon=400"]), &data, dir.path(), Default::default()).unwrap_err();
    assert!(format!("{err:#}").contains("400"), "{err:#}");
    let err =
        run::<B>(tiny(&["experiment.env=pendulum"]), &dir.path().join("missing.npz"), dir.path(), Default::default())
            .unwrap_err();
    assert!(format!("{err:#}").contains("missing.npz"), "{err:#}");
}
