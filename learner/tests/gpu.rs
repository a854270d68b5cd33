//! `learner --gpus`: its errors on any machine, and, where a CUDA driver exists (never on CI),
//! a run on GPU 0 that trains, checkpoints and resumes on the CPU, against the CPU engine.
//!
//! The GPU half is part of the `gpu` test group: `cargo test --release -p learner --test gpu` on a
//! GPU machine (it says it skipped without a driver). The device engine's iteration itself is
//! checked against the CPU engine in the library's `cuda::engine_tests` (on the host backend
//! everywhere, on the GPU where there is one).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use learner::train::checkpoint::CheckpointDir;
use learner::train::checkpoint_v2;
use learner::train::run::run;
use support::{random_dataset, tiny_doc};

type B = burn::backend::Autodiff<burn::backend::NdArray>;

fn driver_present() -> bool {
    learner::cuda::driver::driver_present()
}

fn learner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_learner")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bad list is one line and a non-zero exit on every machine; so is `--gpus` beside
/// `--replicas`.
#[test]
fn bad_gpu_lists_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    random_dataset(&data);
    let work = tmp.path().join("w");
    let common = ["--dataset", data.to_str().unwrap(), "--workdir", work.to_str().unwrap(), "--steps", "2"];
    for (gpus, want) in [("x", "expected GPU indices"), ("0,0", "lists GPU 0 twice"), ("", "expected GPU indices")] {
        let out = learner(&[&common[..], &["--gpus", gpus]].concat());
        let err = stderr(&out);
        assert!(!out.status.success(), "--gpus {gpus:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: ") && err.contains(want), "--gpus {gpus:?}: {err}");
    }
    let out = learner(&[&common[..], &["--gpus", "0", "--replicas", "2"]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be used with"), "{}", stderr(&out));
    // A variant the GPU engine does not cover names itself (before any device is touched).
    let out = learner(&[&common[..], &["--gpus", "0", "--set", "train.discriminator_steps=0"]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the GPU engine does not cover train.discriminator_steps = 0"), "{}", stderr(&out));
}

/// Without a driver: one line naming the flag and the way out. With one: 20 iterations on GPU 0
/// with a checkpoint at 10 and 20, then 10 more on the CPU from the GPU's checkpoint, against
/// 30 on the CPU alone (same draws; f32 rounding apart, which Adam's normalisation bounds by 2·lr
/// per iteration in a coordinate).
#[test]
fn a_gpu_run_trains_checkpoints_and_resumes_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    random_dataset(&data);
    let gpu_work = tmp.path().join("gpu");
    let args = ["--dataset", data.to_str().unwrap(), "--workdir", gpu_work.to_str().unwrap()];
    let sizes = ["--set", "model.num_outer=3", "--set", "model.num_inner=3", "--set", "train.batch_size=4"];
    let more =
        ["--set", "model.latent_dims=2", "--set", "model.generator_hidden=8", "--set", "model.discriminator_hidden=8"];
    let run_args =
        [&args[..], &sizes[..], &more[..], &["--set", "train.checkpoint_every=10", "--steps", "20", "--gpus", "0"]]
            .concat();
    let out = learner(&run_args);
    if !driver_present() {
        let err = stderr(&out);
        assert!(!out.status.success(), "--gpus 0 without a driver was accepted: {err}");
        assert_eq!(
            err.trim(),
            "error: --gpus 0: no CUDA driver (libcuda) on this machine; omit --gpus to train on the CPU"
        );
        eprintln!("skipped the GPU run: no CUDA driver");
        return;
    }
    assert!(out.status.success(), "the GPU run failed: {}", stderr(&out));
    let (step, dir) = CheckpointDir::open(&gpu_work, 5).unwrap().latest().expect("a checkpoint");
    assert_eq!(step, 20);
    let state = checkpoint_v2::read(&dir).unwrap();
    assert_eq!(state.state_u64("step").unwrap(), 20);
    // Resume on the CPU to 30; and 30 on the CPU alone.
    let doc = |steps| tiny_doc(steps, 10, &["train.threads=1"]);
    let resumed = run::<B>(doc(30), &data, &gpu_work, Default::default()).unwrap();
    assert_eq!(resumed.resumed_from, Some(20));
    let cpu_work = tmp.path().join("cpu");
    run::<B>(doc(30), &data, &cpu_work, Default::default()).unwrap();
    let arrays = |w: &Path| {
        let (_, dir) = CheckpointDir::open(w, 5).unwrap().latest().unwrap();
        checkpoint_v2::read(&dir).unwrap().arrays
    };
    let (gpu, cpu) = (arrays(&gpu_work), arrays(&cpu_work));
    let lr = 6.25e-5f32;
    for (name, want) in &cpu {
        if name.contains("adam") {
            continue;
        }
        let got = &gpu[name];
        for (k, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
            assert!((a - b).abs() <= 2.0 * lr * 30.0, "{name}[{k}]: GPU then CPU {a}, CPU {b}");
        }
    }
}
