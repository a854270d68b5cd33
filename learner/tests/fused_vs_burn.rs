//! The fused engine against the burn engine (the reference): the same parameters, the same
//! counter-based draws, the same windows; one full iteration (D step, G step, Adam, Polyak, the
//! spectral-norm state) must agree.
//!
//! Tolerances (f32 burn on ndarray against f32 fused; the summation orders differ):
//! - losses: 1e-4 relative + 1e-6 absolute (an MMD near zero loses digits to cancellation);
//! - gradients, read off as parameter changes under an Adam whose ε dwarfs √v (so that the step is
//!   −g exactly to first order): 1e-4 of the largest change of that tensor + 1e-6 absolute;
//! - parameters after several iterations with the reference's Adam: 1e-5 absolute (each step moves a
//!   parameter by about the learning rate, 6.25e-5, so this catches a wrong step direction or size).

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use common::config::ConfigDoc;
use learner::config::LearnerConfig;
use learner::fused::engine::{gen_from_burn, phi_from_burn, FusedEngine};
use learner::fused::network::{GenParams, PhiParams};
use learner::train::dataset::OfflineDataset;
use learner::train::trainer::Trainer;

type B = Autodiff<NdArray>;

/// A bounded random walk in S dimensions, 2 streams with an episode boundary (LAST, then FIRST).
fn walk(dim: usize) -> OfflineDataset {
    let (streams, steps) = (2, 400);
    let mut rng = common::rng::stream(5, &["fused-test".into()]);
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

fn config(extra: &[&str]) -> (LearnerConfig, ConfigDoc) {
    let mut doc = ConfigDoc::empty();
    doc.apply_sets(&[
        "model.num_outer=4",
        "model.num_inner=3",
        "model.latent_dims=3",
        "model.generator_hidden=16",
        "model.discriminator_hidden=16",
        "train.batch_size=6",
    ])
    .unwrap();
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

fn gen_of<Bk: Backend>(t: &learner::model::generator::Generator<Bk>) -> GenParams {
    gen_from_burn(t)
}

fn phi_of(t: &Trainer<B>) -> PhiParams {
    phi_from_burn(&t.discriminator().valid())
}

/// The parameter changes of one iteration, which are the gradients under a huge-ε Adam.
#[test]
fn one_iteration_gives_the_gradients_of_the_burn_engine() {
    // E = 8 takes the engine's specialised pair loops, E = 6 the general ones.
    for (dim, embedding) in [(2usize, 8usize), (5, 6)] {
        // lr = ε: the first Adam step is −g/(1 + √(1−β₂)|g|/(ε√(1−β₂))) ≈ −g.
        let e = format!("model.embedding_dim={embedding}");
        let (cfg, doc) = config(&["train.learning_rate=10000.0", "train.adam_eps=10000.0", &e]);
        let data = walk(dim);
        let mut burn = Trainer::<B>::new(cfg.clone(), doc.clone(), dim, Default::default());
        let mut fused = FusedEngine::new(cfg, doc, dim).unwrap();
        let (g0, p0) = (gen_of(&burn.generator().valid()), phi_of(&burn));
        assert_eq!(fused.generator, g0, "the engines start from the same generator");
        assert_eq!(fused.phi, p0, "and the same φ");
        let lb = burn.iteration(&data).unwrap();
        let lf = fused.iteration(&data).unwrap();
        for (what, a, b) in [("D loss", lf.discriminator, lb.discriminator), ("G loss", lf.generator, lb.generator)] {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-6, "{what}: fused {a} vs burn {b}");
        }
        let (g1, p1) = (gen_of(&burn.generator().valid()), phi_of(&burn));
        for k in 0..p0.weights.len() {
            let want = diff(&p1.weights[k], &p0.weights[k]);
            assert!(max_abs(&want) > 0.0, "φ layer {k} has a gradient");
            assert_close(
                &format!("S={dim} φ W{k} step"),
                &diff(&fused.phi.weights[k], &p0.weights[k]),
                &want,
                1e-4,
                1e-6,
            );
            let want = diff(&p1.biases[k], &p0.biases[k]);
            assert_close(
                &format!("S={dim} φ b{k} step"),
                &diff(&fused.phi.biases[k], &p0.biases[k]),
                &want,
                1e-4,
                1e-6,
            );
            assert_close(&format!("S={dim} φ u{k}"), &fused.phi.u[k], &p1.u[k], 1e-5, 1e-6);
        }
        for l in 0..g0.weights.len() {
            let want = diff(&g1.weights[l], &g0.weights[l]);
            assert!(max_abs(&want) > 0.0, "generator layer {l} has a gradient");
            assert_close(
                &format!("S={dim} G W{l} step"),
                &diff(&fused.generator.weights[l], &g0.weights[l]),
                &want,
                1e-4,
                1e-6,
            );
            let want = diff(&g1.biases[l], &g0.biases[l]);
            assert_close(
                &format!("S={dim} G b{l} step"),
                &diff(&fused.generator.biases[l], &g0.biases[l]),
                &want,
                1e-4,
                1e-6,
            );
        }
        let t1 = gen_of(burn.target());
        for l in 0..g0.weights.len() {
            assert_close(&format!("S={dim} target W{l}"), &fused.target.weights[l], &t1.weights[l], 1e-5, 1e-6);
        }
    }
}

/// With the reference's Adam, five iterations stay together: parameters, target and u.
#[test]
fn five_iterations_with_the_reference_adam_agree() {
    let (cfg, doc) = config(&[]);
    let dim = 3;
    let data = walk(dim);
    let mut burn = Trainer::<B>::new(cfg.clone(), doc.clone(), dim, Default::default());
    let mut fused = FusedEngine::new(cfg, doc, dim).unwrap();
    for it in 1..=5 {
        let lb = burn.iteration(&data).unwrap();
        let lf = fused.iteration(&data).unwrap();
        for (a, b) in [(lf.discriminator, lb.discriminator), (lf.generator, lb.generator)] {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-6, "iteration {it}: loss fused {a} vs burn {b}");
        }
        // After the first iteration, the Adam moments, read out of burn's optimiser records: m1 =
        // (1−β₁)g to the gradients' 1e-4 (here 5e-4 of the array's largest value, as gradients near
        // zero carry the absolute error of the large ones), m2 ∝ g² to twice that. φ's output bias
        // is left out: its exact gradient is zero (the kernels see differences of embeddings only),
        // so its moments are rounding noise. Later iterations drift apart by Adam's normalised
        // steps on those noisy gradients, so only the parameters are compared after five.
        if it > 1 {
            continue;
        }
        let from_burn = learner::train::cross_engine::fused_from_trainer(&burn).unwrap();
        for (w, h) in from_burn.to_arrays().iter().zip(&fused.to_arrays()) {
            let last_bias = format!(".{}.bias", from_burn.phi_shape.layers() - 1);
            if !w.name.starts_with("adam.")
                || (w.name.starts_with("adam.discriminator") && w.name.ends_with(&last_bias))
            {
                continue;
            }
            let rel = if w.name.contains(".m2.") { 1e-3 } else { 5e-4 };
            let scale = w.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_close(&format!("iteration {it}: {}", w.name), &h.data, &w.data, 0.0, rel * scale);
        }
    }
    let (g, p, t) = (gen_of(&burn.generator().valid()), phi_of(&burn), gen_of(burn.target()));
    for l in 0..g.weights.len() {
        assert_close(&format!("G W{l}"), &fused.generator.weights[l], &g.weights[l], 0.0, 1e-5);
        assert_close(&format!("G b{l}"), &fused.generator.biases[l], &g.biases[l], 0.0, 1e-5);
        assert_close(&format!("target W{l}"), &fused.target.weights[l], &t.weights[l], 0.0, 1e-5);
    }
    for k in 0..p.weights.len() {
        assert_close(&format!("φ W{k}"), &fused.phi.weights[k], &p.weights[k], 0.0, 1e-5);
        assert_close(&format!("φ b{k}"), &fused.phi.biases[k], &p.biases[k], 0.0, 1e-5);
        assert_close(&format!("φ u{k}"), &fused.phi.u[k], &p.u[k], 1e-4, 1e-5);
    }
    assert_eq!((fused.adam_generator.time, fused.adam_phi.time), (5, 5));
}

/// 1, 2 and 3 threads give bit-identical parameters, target and Adam moments after 50
/// iterations: each block of `BLOCK_ROWS` rows computes its gradients alone, whichever thread
/// takes it, and the blocks are summed by a tree fixed by their number. B = 20 makes blocks of
/// 8, 8 and 4 rows, so a short last block and an uneven split across threads are covered.
#[test]
fn thread_count_does_not_change_the_result() {
    assert_eq!(learner::fused::engine::BLOCK_ROWS, 8, "the block sizes below assume 8 rows a block");
    let dim = 4;
    let data = walk(dim);
    let run = |threads: usize| {
        let (cfg, doc) = config(&["train.batch_size=20", &format!("train.threads={threads}")]);
        let mut f = FusedEngine::new(cfg, doc, dim).unwrap();
        assert_eq!(f.threads(), threads);
        let losses: Vec<_> = (0..50).map(|_| f.iteration(&data).unwrap()).collect();
        (losses, f.to_arrays())
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(one.0, other.0, "losses, {threads} threads");
        assert!(one.1 == other.1, "parameters, target, Adam moments or u differ with {threads} threads");
    }
}
