//! Helpers shared by the learner's integration tests.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::path::Path;

use common::config::ConfigDoc;
use common::npz::{write_npz, NpyArray};

/// An archive as `actor simulate` writes it: 2 streams of 300 uniform random states of 3 floats,
/// each stream one episode (seed fixed).
pub fn random_dataset(path: &Path) {
    let (e, n, s) = (2usize, 300usize, 3usize);
    let mut rng = common::rng::stream(4, &["walk".into()]);
    let obs: Vec<f32> = (0..e * n * s).map(|_| rand::Rng::random_range(&mut rng, 0.0..1.0f32)).collect();
    let mut types = vec![1u8; e * n];
    types[0] = 0;
    types[n] = 0;
    write_npz(
        path,
        &[("observations", &NpyArray::f32(vec![e, n, s], obs)), ("step_type", &NpyArray::u8(vec![e, n], types))],
    )
    .unwrap();
}

/// A tiny δ-model (O 3, I 3, Z 2, 8-wide, B 4) that checkpoints every `checkpoint_every`
/// iterations and keeps 5, for `steps` iterations, with `extra` overrides on top.
pub fn tiny_doc(steps: u64, checkpoint_every: u64, extra: &[&str]) -> ConfigDoc {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&[
        "model.num_outer=3",
        "model.num_inner=3",
        "model.latent_dims=2",
        "model.generator_hidden=8",
        "model.discriminator_hidden=8",
        "train.batch_size=4",
        "train.keep_checkpoints=5",
        &format!("train.checkpoint_every={checkpoint_every}"),
        &format!("train.steps={steps}"),
    ])
    .unwrap();
    doc.apply_sets(extra).unwrap();
    doc
}
