//! `gpu_bench`: the GPU engine's iteration time for the thesis config (at its B 32, 256, 1024) and
//! the Pendulum config (at its B 64, 256, 1024) on GPU 0, against the JAX reference's published figures (H100, from the issue that
//! set the goals) and against the CPU fused engine measured in the same run on the thesis config.
//!
//! `cargo run --release -p learner --bin gpu_bench [-- --quick]` on a machine with a CUDA driver,
//! NVRTC and cuBLAS. Prints a markdown table for docs/benchmarks.md. The data are synthetic
//! random walks of each config's state size.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use common::config::ConfigDoc;
use learner::config::LearnerConfig;
use learner::cuda::backend::{Backend, BackendExt, DeviceSlice};
use learner::cuda::driver::{driver_present, CudaBackend};
use learner::cuda::engine::DeviceEngine;
use learner::cuda::nccl::{nccl_present, NcclCollective};
use learner::cuda::source::ModelKernels;
use learner::fused::collective::Collective;
use learner::fused::engine::{matmul_flops, FusedEngine};
use learner::train::dataset::OfflineDataset;

#[derive(Debug, Parser)]
#[command(
    name = "gpu_bench",
    about = "Iteration time of the δ-model's GPU engine against JAX's figures and the CPU engine"
)]
struct Cli {
    /// Seconds of timed iterations per row (at least 3 iterations).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// One second per row and each config's own B only (a smoke run of the benchmark itself).
    #[arg(long)]
    quick: bool,
    /// The GPU to measure.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
}

fn walk(dim: usize) -> OfflineDataset {
    let (streams, steps) = (1, 24_000);
    let mut rng = common::rng::stream(0, &["gpu-bench".into()]);
    let mut obs = Vec::with_capacity(streams * steps * dim);
    let mut x = vec![0.5f32; dim];
    for _ in 0..steps {
        for v in &mut x {
            *v = (*v + rand::Rng::random_range(&mut rng, -0.05..0.05)).clamp(0.0, 1.0);
        }
        obs.extend_from_slice(&x);
    }
    let mut types = vec![1u8; steps];
    types[0] = 0;
    OfflineDataset::from_parts(obs, types, streams, steps, dim).expect("a valid synthetic dataset")
}

fn config(file: &str, batch: usize) -> Result<(LearnerConfig, ConfigDoc)> {
    let mut doc = ConfigDoc::load(std::path::Path::new(file))?;
    doc.apply_sets(&[format!("train.batch_size={batch}"), "train.threads=0".into()])?;
    Ok((LearnerConfig::resolve(&doc)?, doc))
}

/// Inner-kernel evaluations of one iteration: the pair sums (each unordered self pair once, every
/// cross pair) and the pulls (each point against both sides), the D step pulling both sides.
fn pair_evaluations(cfg: &LearnerConfig) -> f64 {
    let (b, p) = (cfg.train.batch_size as f64, (cfg.model.num_outer * cfg.model.num_inner) as f64);
    let sums = b * (p * (p - 1.0) + p * p);
    let pull_one_side = b * p * (2.0 * p - 1.0);
    2.0 * sums + 3.0 * pull_one_side
}

/// Seconds per iteration: warm-up, then the median of three stretches of at least `seconds / 3`.
fn time(mut step: impl FnMut() -> Result<()>, seconds: f64) -> Result<f64> {
    let start = Instant::now();
    step()?;
    step()?;
    let first = start.elapsed().as_secs_f64() / 2.0;
    let per_stretch = ((seconds / 3.0 / first).ceil() as usize).max(1);
    let mut stretches = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..per_stretch {
            step()?;
        }
        stretches.push(t.elapsed().as_secs_f64() / per_stretch as f64);
    }
    stretches.sort_by(f64::total_cmp);
    Ok(stretches[1])
}

fn main() -> std::process::ExitCode {
    match bench(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(cli: Cli) -> Result<()> {
    if !driver_present() {
        bail!("no CUDA driver (libcuda) on this machine: gpu_bench measures the GPU engine");
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
    let (thesis, pendulum) = (format!("{root}/riab-random.toml"), format!("{root}/pendulum.toml"));
    let seconds = if cli.quick { 1.0 } else { cli.seconds };
    // The JAX reference on one H100 (ms per iteration at each config's own B), the baseline.
    let jax = |name: &str, b: usize| match (name, b) {
        ("Pendulum", 64) => Some((56.0, 62.0)),
        ("thesis", 32) => Some((4.0, 6.0)),
        _ => None,
    };
    let mut device_name = String::new();
    let mut pendulum_ms = f64::NAN;
    let mut gradient_floats = (0usize, 0usize);
    println!("| config | B | GPU ms/it | it/s | JAX ms/it (H100) | × JAX | GEMM TFLOP/s | pair evals/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, file, dim, own) in [("thesis", &thesis, 50usize, 32usize), ("Pendulum", &pendulum, 3, 64)] {
        let batches = if cli.quick { vec![own] } else { vec![own, 256, 1024] };
        for b in batches {
            let (cfg, doc) = config(file, b)?;
            let kernels = ModelKernels::for_config(&cfg, dim).context("kernels")?;
            let backend = CudaBackend::new(cli.gpu, &kernels)?;
            device_name = backend.describe();
            let host = FusedEngine::replica(cfg.clone(), doc, dim, 1, None)?;
            let mut engine = DeviceEngine::from_fused(&host, backend)?;
            let data = walk(dim);
            let s = time(|| engine.iteration(&data).map(|_| ()).map_err(anyhow::Error::from), seconds)?;
            let ms = s * 1e3;
            if name == "Pendulum" && b == own {
                pendulum_ms = ms;
                let count = |p: &[Vec<f32>], q: &[Vec<f32>]| p.iter().chain(q).map(Vec::len).sum::<usize>();
                gradient_floats = (
                    count(&host.generator.weights, &host.generator.biases),
                    count(&host.phi.weights, &host.phi.biases),
                );
            }
            let (base, ratio) = match jax(name, b) {
                Some((lo, hi)) => (format!("{lo:.0}–{hi:.0}"), format!("{:.1}–{:.1}×", lo / ms, hi / ms)),
                None => ("—".into(), "—".into()),
            };
            let tflops = matmul_flops(&cfg, dim) / s / 1e12;
            let evals = pair_evaluations(&cfg) / s;
            println!("| {name} | {b} | {ms:.2} | {:.1} | {base} | {ratio} | {tflops:.1} | {evals:.3e} |", 1.0 / s);
        }
    }
    // A one-rank NCCL all-reduce of the Pendulum generator's gradient (what a one-GPU machine can
    // measure), and the 2- and 8-GPU iteration times computed from it and NVLink's bandwidth.
    if nccl_present() {
        let (gen, phi) = gradient_floats;
        let kernels = ModelKernels::for_config(&config(&pendulum, 64)?.0, 3).context("kernels")?;
        let mut dev = CudaBackend::new(cli.gpu, &kernels)?;
        let v = dev.alloc_f32(gen)?;
        let group = NcclCollective::group(&[&dev])?;
        let mut slice = DeviceSlice { ptr: dev.address(v.addr()), len: v.len };
        let s = time(
            || {
                group[0].all_reduce_sum(&mut slice)?;
                dev.synchronize()
            },
            1.0,
        )?;
        let mb = (gen * 4) as f64 / 1e6;
        println!(
            "\nOne-rank NCCL all-reduce of the Pendulum generator gradient ({mb:.1} MB): {:.1} µs (measured).",
            s * 1e6
        );
        // Computed, not measured: a ring all-reduce moves 2(N−1)/N of the buffer per GPU; NVLink
        // moves 27 MB in about 75 µs at N = 2 (the figure).
        let per_byte_us = 75.0 / 27e6;
        for n in [2usize, 8] {
            let ring = 2.0 * (n - 1) as f64 / n as f64;
            let ar_us = per_byte_us * ((gen + phi) * 4) as f64 * ring;
            let ms = pendulum_ms / n as f64 + ar_us / 1e3;
            println!("Pendulum B 64 on {n} GPUs (computed, not measured): {ms:.2} ms/it ({:.1} ms/it compute + {ar_us:.0} µs all-reduce per iteration)", pendulum_ms / n as f64);
        }
    } else {
        println!("\nNCCL (libnccl) is not on the library path: no all-reduce measured.");
    }
    // The CPU fused engine in the same run (thesis config, B 32, every core).
    let (cfg, doc) = config(&thesis, 32)?;
    let mut cpu = FusedEngine::new(cfg, doc, 50)?;
    let data = walk(50);
    let s = time(|| cpu.iteration(&data).map(|_| ()).map_err(anyhow::Error::from), seconds.min(4.0))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("\nCPU fused engine, thesis config, B 32, {cores} threads: {:.2} ms/it. Device: {device_name}.", s * 1e3);
    Ok(())
}
