//! `learner_bench`: iterations per second of the δ-model on this machine's CPU, and the inner
//! MMD's self-term reuse against the direct formula, measured in the same run.
//!
//! `cargo run --release -p learner --bin learner_bench [-- --quick]`. The dataset is synthetic
//! (a bounded random walk of the right state size), so the simulator is not what is measured.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Tensor};
use clap::Parser;

use common::config::ConfigDoc;
use learner::config::LearnerConfig;
use learner::loss::kernels::Kernel;
use learner::loss::mmd::{direct_inner_mmd_matrices, inner_mmd_matrices, pair_block_means};
use learner::train::dataset::OfflineDataset;
use learner::train::trainer::Trainer;

type B = Autodiff<NdArray>;

#[derive(Debug, Parser)]
#[command(name = "learner_bench", about = "Benchmarks of the δ-model learner on the CPU")]
struct Cli {
    /// Fewer iterations (a smoke run of the benchmark itself).
    #[arg(long)]
    quick: bool,
}

fn walk(streams: usize, steps: usize, dim: usize) -> OfflineDataset {
    let mut rng = common::rng::stream(0, &["bench".into()]);
    let mut obs = Vec::with_capacity(streams * steps * dim);
    for _ in 0..streams {
        let mut x = vec![0.5f32; dim];
        for _ in 0..steps {
            for v in &mut x {
                *v = (*v + rand::Rng::random_range(&mut rng, -0.05..0.05)).clamp(0.0, 1.0);
            }
            obs.extend_from_slice(&x);
        }
    }
    let mut types = vec![1u8; streams * steps];
    for e in 0..streams {
        types[e * steps] = 0;
    }
    OfflineDataset::from_parts(obs, types, streams, steps, dim).expect("a valid synthetic dataset")
}

/// Iterations per second of a config, after `warmup` iterations.
fn iterations_per_second(file: &str, sets: &[&str], dim: usize, warmup: u64, iters: u64) -> (f64, f64) {
    let mut doc = ConfigDoc::load(std::path::Path::new(file)).expect("config");
    doc.apply_sets(sets).expect("overrides");
    let config = LearnerConfig::resolve(&doc).expect("valid config");
    let data = walk(1, 24_000, dim);
    let mut trainer = Trainer::<B>::new(config, doc, dim, Default::default());
    for _ in 0..warmup {
        trainer.iteration(&data).expect("finite");
    }
    let start = Instant::now();
    let mut last = 0.0;
    for _ in 0..iters {
        last = trainer.iteration(&data).expect("finite").generator;
    }
    (iters as f64 / start.elapsed().as_secs_f64(), last)
}

/// Seconds per forward + backward of the inner MMD matrices, block path vs direct formula.
fn inner_mmd(b: usize, o: usize, i: usize, e: usize, reps: usize) -> (f64, f64) {
    let device = Default::default();
    let kernel = Kernel::rq_default();
    let time = |direct: bool| {
        let start = Instant::now();
        for _ in 0..reps {
            let x = Tensor::<B, 4>::random([b, o, i, e], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let y = Tensor::<B, 4>::random([b, o, i, e], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let (dxx, dyy, dxy) = if direct {
                direct_inner_mmd_matrices(x.clone(), y.clone(), &kernel)
            } else {
                inner_mmd_matrices(pair_block_means(x.clone(), y.clone(), &kernel))
            };
            let total = dxx.sum() + dyy.sum() + dxy.sum();
            let _ = total.backward();
        }
        start.elapsed().as_secs_f64() / reps as f64
    };
    let _ = time(false); // warm-up
    (time(false), time(true))
}

fn main() {
    let cli = Cli::parse();
    let (thesis_iters, pendulum_iters, reps) = if cli.quick { (5, 1, 2) } else { (100, 2, 10) };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
    println!("| benchmark | result |\n|---|---|");
    let (ips, loss) = iterations_per_second(&format!("{root}/riab-random.toml"), &[], 50, 3, thesis_iters);
    println!(
        "| thesis config (O 10, I 5, Z 5, 32-wide, B 32, S 50): iterations/s | {ips:.1} (500k iterations: {:.1} h; last G loss {loss:.4}) |",
        500_000.0 / ips / 3600.0
    );
    // The full Pendulum batch (64 rows, 16 chunks of 4) takes minutes per iteration on 2 cores;
    // one chunk's worth (B = 4) is timed and scaled by 16, since chunks run one after another.
    let (ips, loss) =
        iterations_per_second(&format!("{root}/pendulum.toml"), &["train.batch_size=4"], 3, 0, pendulum_iters);
    let full = ips / 16.0;
    println!(
        "| Pendulum config (O 51, I 32, Z 8, 256-wide, S 3) at B 4 (one chunk): iterations/s | {ips:.3}; scaled to B 64: {full:.4} (2.5M iterations: {:.0} years; last G loss {loss:.4}) |",
        2_500_000.0 / full / 86_400.0 / 365.0
    );
    let (b, o, i) = (32, 10, 5);
    let (block, direct) = inner_mmd(b, o, i, 8, reps);
    println!(
        "| inner MMD matrices, B {b}, O {o}, I {i}, E 8, forward + backward: self-term reuse vs direct | {:.2} ms vs {:.2} ms ({:.2}× faster) |",
        block * 1e3,
        direct * 1e3,
        direct / block
    );
}
