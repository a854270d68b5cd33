//! The device engine's iteration, run on the host backend (the kernels' host build and the CPU
//! products), against the CPU fused engine from the same state and the same draws: every layout,
//! launch and product of the GPU path is exercised here, without a GPU.

use common::config::ConfigDoc;

use super::backend::Backend;
use super::driver::{driver_present, CudaBackend};
use super::engine::{unsupported, DeviceEngine};
use super::host_backend::HostBackend;
use super::source::ModelKernels;
use crate::config::LearnerConfig;
use crate::fused::engine::FusedEngine;
use crate::train::dataset::OfflineDataset;

/// A bounded random walk in S dimensions, 2 streams with an episode boundary (LAST, then FIRST).
fn walk(dim: usize) -> OfflineDataset {
    let (streams, steps) = (2, 400);
    let mut rng = common::rng::stream(5, &["device-engine-test".into()]);
    let (mut obs, mut types) = (Vec::new(), Vec::new());
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
        "train.threads=1",
    ])
    .unwrap();
    doc.apply_sets(extra).unwrap();
    (LearnerConfig::resolve(&doc).unwrap(), doc)
}

/// Makes the backend of a test: the host build everywhere, GPU 0 where there is a driver.
type MakeBackend<B> = fn(&ModelKernels) -> Option<B>;

fn host(m: &ModelKernels) -> Option<HostBackend> {
    HostBackend::new(m)
}

fn gpu(m: &ModelKernels) -> Option<CudaBackend> {
    if !driver_present() {
        eprintln!("skipped: no CUDA driver (a `gpu` group test)");
        return None;
    }
    Some(CudaBackend::new(0, m).unwrap_or_else(|e| panic!("{e:#}")))
}

fn engines<B: Backend>(extra: &[&str], dim: usize, make: MakeBackend<B>) -> Option<(FusedEngine, DeviceEngine<B>)> {
    let (cfg, doc) = config(extra);
    let backend = make(&ModelKernels::for_config(&cfg, dim).unwrap())?;
    let fused = FusedEngine::new(cfg, doc, dim).unwrap();
    let device = DeviceEngine::from_fused(&fused, backend).unwrap();
    Some((fused, device))
}

fn max_abs<'a>(buffers: impl IntoIterator<Item = &'a Vec<f32>>) -> f32 {
    buffers.into_iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// |device − CPU| ≤ `tol` in every coordinate.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{what}[{k}]: device {a} vs CPU {b} (tolerance {tol})");
    }
}

/// Both engines' last gradients, to `rel` of the largest gradient of the same network (a
/// gradient that is zero in exact arithmetic, as that of φ's output bias, which shifts both sides
/// of every distance alike, is rounding noise in both engines).
fn assert_same_gradients<B: Backend>(what: &str, fused: &FusedEngine, device: &mut DeviceEngine<B>, rel: f32) {
    let (gen, phi) = device.gradients().unwrap();
    let gen_scale = max_abs(fused.grad_gen.weights.iter().chain(&fused.grad_gen.biases));
    let phi_scale = max_abs(fused.grad_phi.weights.iter().chain(&fused.grad_phi.biases));
    assert!(gen_scale > 0.0 && phi_scale > 0.0, "{what}: the gradients are zero");
    for l in 0..gen.weights.len() {
        assert_close(&format!("{what} ∂G W{l}"), &gen.weights[l], &fused.grad_gen.weights[l], rel * gen_scale);
        assert_close(&format!("{what} ∂G b{l}"), &gen.biases[l], &fused.grad_gen.biases[l], rel * gen_scale);
    }
    for k in 0..phi.weights.len() {
        assert_close(&format!("{what} ∂φ W{k}"), &phi.weights[k], &fused.grad_phi.weights[k], rel * phi_scale);
        assert_close(&format!("{what} ∂φ b{k}"), &phi.biases[k], &fused.grad_phi.biases[k], rel * phi_scale);
    }
}

/// One iteration from the same state: the same losses, and the same gradients of both steps (the
/// sums over the batch run in another order, so to 1e-4 of the network's largest gradient).
#[test]
fn one_iteration_matches_the_fused_engine() {
    one_iteration_matches(host);
}

/// The same on GPU 0 (the device's kernels contract multiply-adds, hence its own rounding).
#[test]
fn gpu_one_iteration_matches_the_fused_engine() {
    one_iteration_matches(gpu);
}

fn one_iteration_matches<B: Backend>(make: MakeBackend<B>) {
    // E = 8 and 6; a batch of one block of rows and of three (the loss sum's tree); a fixed
    // outer bandwidth; a generator with one hidden layer, without bootstrapping.
    let cases: [(usize, &[&str]); 4] = [
        (2, &["model.embedding_dim=8"]),
        (5, &["model.embedding_dim=6", "train.batch_size=20"]),
        (3, &["model.outer_adaptive_bandwidth=false"]),
        (4, &["model.generator_layers=1", "model.bootstrap=false"]),
    ];
    for (dim, extra) in cases {
        let Some((mut fused, mut device)) = engines(extra, dim, make) else { return };
        let data = walk(dim);
        let lf = fused.iteration(&data).unwrap();
        let ld = device.iteration(&data).unwrap();
        for (what, a, b) in [("D loss", ld.discriminator, lf.discriminator), ("G loss", ld.generator, lf.generator)] {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{extra:?} {what}: device {a} vs CPU {b}");
        }
        assert_same_gradients(&format!("{extra:?}"), &fused, &mut device, 1e-4);
    }
}

/// Ten iterations: the losses and the last gradients stay with the CPU engine's. The parameters
/// differ by f32 rounding, which Adam's normalisation turns into steps of up to lr in coordinates
/// whose gradient is rounding noise, so those are compared to 2·lr per iteration.
#[test]
fn ten_iterations_follow_the_fused_engine() {
    ten_iterations_follow(host);
}

#[test]
fn gpu_ten_iterations_follow_the_fused_engine() {
    ten_iterations_follow(gpu);
}

fn ten_iterations_follow<B: Backend>(make: MakeBackend<B>) {
    let dim = 3;
    let Some((mut fused, mut device)) = engines(&[], dim, make) else { return };
    let data = walk(dim);
    let iterations = 10;
    for it in 1..=iterations {
        let lf = fused.iteration(&data).unwrap();
        let ld = device.iteration(&data).unwrap();
        for (what, a, b) in [("D", ld.discriminator, lf.discriminator), ("G", ld.generator, lf.generator)] {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "iteration {it} {what} loss: device {a} vs CPU {b}");
        }
    }
    assert_same_gradients("iteration 10", &fused, &mut device, 1e-3);
    let (cfg, doc) = config(&[]);
    let lr = cfg.train.learning_rate as f32;
    let mut back = FusedEngine::new(cfg, doc, dim).unwrap();
    device.store_into(&mut back).unwrap();
    assert_eq!(back.step, iterations);
    assert_eq!((back.adam_generator.time, back.adam_phi.time), (iterations, iterations));
    for (got, want) in back.to_arrays().iter().zip(fused.to_arrays()) {
        assert_eq!(got.name, want.name);
        if !got.name.contains("adam") {
            assert_close(&got.name, &got.data, &want.data, 2.0 * lr * iterations as f32);
        }
    }
}

/// Uploading a state and downloading it gives it back bit for bit (what checkpoints rely on).
#[test]
fn the_training_state_round_trips() {
    let dim = 2;
    let Some((mut fused, _)) = engines(&[], dim, host) else { return };
    let data = walk(dim);
    fused.iteration(&data).unwrap();
    fused.iteration(&data).unwrap();
    let (cfg, doc) = config(&[]);
    let backend = HostBackend::new(&ModelKernels::for_config(&cfg, dim).unwrap()).unwrap();
    let mut device = DeviceEngine::from_fused(&fused, backend).unwrap();
    let mut back = FusedEngine::new(cfg, doc, dim).unwrap();
    device.store_into(&mut back).unwrap();
    assert_eq!(back.to_arrays(), fused.to_arrays());
    assert_eq!(back.state_json(), fused.state_json());
}

#[test]
fn configs_the_device_engine_does_not_cover_are_named() {
    for (set, want) in [
        ("train.discriminator_steps=0", "no φ"),
        ("model.inner_separate_discriminator=true", "inner_separate_discriminator"),
        ("model.distributional=false", "γ-model"),
        ("model.inner_adaptive_bandwidth=true", "inner_adaptive_bandwidth"),
    ] {
        let (cfg, _) = config(&[set, "model.inner_bandwidths=[1.0]"]);
        let why = unsupported(&cfg).unwrap_or_else(|| panic!("{set} is not covered"));
        assert!(why.contains(want), "{set}: {why}");
    }
    let (cfg, _) = config(&[]);
    assert_eq!(unsupported(&cfg), None);
}

/// The thesis and Pendulum configs for one iteration on GPU 0 against the CPU engine run live on
/// the GPU machine's cores (too slow for CI's two): losses to 1e-4, gradients to 1e-3 of the
/// largest (the sums run over thousands of rows in another order).
#[test]
fn gpu_full_configs_match_the_fused_engine() {
    if !driver_present() {
        eprintln!("skipped: no CUDA driver (a `gpu` group test)");
        return;
    }
    for (file, dim) in [("riab-random.toml", 50usize), ("pendulum.toml", 3)] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs").join(file);
        let mut doc = ConfigDoc::load(&path).unwrap();
        doc.apply_sets(&["train.threads=0"]).unwrap();
        let cfg = LearnerConfig::resolve(&doc).unwrap();
        let backend = gpu(&ModelKernels::for_config(&cfg, dim).unwrap()).unwrap();
        let mut fused = FusedEngine::new(cfg, doc, dim).unwrap();
        let mut device = DeviceEngine::from_fused(&fused, backend).unwrap();
        let data = walk(dim);
        let lf = fused.iteration(&data).unwrap();
        let ld = device.iteration(&data).unwrap();
        for (what, a, b) in [("D", ld.discriminator, lf.discriminator), ("G", ld.generator, lf.generator)] {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "{file} {what} loss: GPU {a} vs CPU {b}");
        }
        assert_same_gradients(file, &fused, &mut device, 1e-3);
        eprintln!("{file}: GPU matches the CPU engine (D {} / G {})", ld.discriminator, ld.generator);
    }
}

/// Two and three replicas (host backends with the thread collective) train what one does: the
/// same losses over ten iterations to 1e-4, and parameters within Adam's 2·lr per iteration (the
/// sums over the batch are split differently, so they round differently), every replica equal.
#[test]
fn replicas_train_what_one_engine_does() {
    use super::host_backend::HostMemoryCollective;
    replicas_train_what_one_does(host, |c| Box::new(HostMemoryCollective(c)));
}

/// The same with two and three replicas on GPU 0 (NCCL refuses several ranks on one device, so
/// they sum through the host) .
#[test]
fn gpu_replicas_on_one_gpu_train_what_one_does() {
    use super::nccl::StagedCollective;
    replicas_train_what_one_does(gpu, |c| Box::new(StagedCollective(c)));
}

fn replicas_train_what_one_does<B: Backend + Send>(
    make: MakeBackend<B>,
    collective: fn(crate::fused::collective::ThreadCollective) -> super::backend::DeviceCollective,
) {
    use super::replicas::DeviceReplicas;
    use crate::fused::collective::ThreadCollective;
    let dim = 3;
    let extra = ["train.batch_size=8"];
    let (cfg, doc) = config(&extra);
    let kernels = ModelKernels::for_config(&cfg, dim).unwrap();
    let Some(first) = make(&kernels) else { return };
    let fused = FusedEngine::new(cfg.clone(), doc.clone(), dim).unwrap();
    let data = walk(dim);
    let mut one = DeviceReplicas::new(&fused, vec![first], Vec::new()).unwrap();
    let iterations = 10;
    let losses: Vec<_> = (0..iterations).map(|_| one.iteration(&data).unwrap()).collect();
    let final_state = |r: &DeviceReplicas<B>, k: usize| {
        let mut back = FusedEngine::new(cfg.clone(), doc.clone(), dim).unwrap();
        r.replica(k).store_into(&mut back).unwrap();
        back.to_arrays()
    };
    let want = final_state(&one, 0);
    let lr = cfg.train.learning_rate as f32;
    for size in [2usize, 3] {
        let backends = (0..size).map(|_| make(&kernels).unwrap()).collect();
        let collectives = ThreadCollective::group(size).into_iter().map(collective).collect();
        let mut many = DeviceReplicas::new(&fused, backends, collectives).unwrap();
        for (it, l1) in losses.iter().enumerate() {
            let l = many.iteration(&data).unwrap();
            for (what, a, b) in [("D", l.discriminator, l1.discriminator), ("G", l.generator, l1.generator)] {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                    "{size} replicas, iteration {it} {what}: {a} vs {b}"
                );
            }
        }
        assert_eq!(many.step(), iterations as u64);
        let first = final_state(&many, 0);
        for k in 1..size {
            assert_eq!(final_state(&many, k), first, "replica {k} of {size} differs from replica 0");
        }
        for (got, want) in first.iter().zip(&want) {
            if !got.name.contains("adam") {
                assert_close(
                    &format!("{size} replicas: {}", got.name),
                    &got.data,
                    &want.data,
                    2.0 * lr * iterations as f32,
                );
            }
        }
    }
}

/// A one-rank NCCL all-reduce leaves the buffer as it was (NCCL refuses two ranks on one device,
/// so this is what a one-GPU machine can check of the multi-GPU path).
#[test]
fn gpu_one_rank_nccl_all_reduce() {
    use super::backend::{BackendExt, DeviceSlice};
    use super::nccl::{nccl_present, NcclCollective};
    use crate::fused::collective::Collective;
    let (cfg, _) = config(&[]);
    let Some(mut dev) = gpu(&ModelKernels::for_config(&cfg, 3).unwrap()) else { return };
    assert!(nccl_present(), "no libnccl on this GPU machine's library path");
    let data: Vec<f32> = (0..4096).map(|k| k as f32 * 0.5 - 7.0).collect();
    let v = dev.alloc_f32(data.len()).unwrap();
    dev.upload_f32(v, &data).unwrap();
    let group = NcclCollective::group(&[&dev]).unwrap();
    let mut slice = DeviceSlice { ptr: dev.address(v.addr()), len: v.len };
    group[0].all_reduce_sum(&mut slice).unwrap();
    assert_eq!(dev.download_f32(v).unwrap(), data);
}
