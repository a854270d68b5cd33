//! Runs on the fused engine through the learner's run loop and binary: exact resume from a v2
//! checkpoint, a corrupted checkpoint skipped, a clean stop on SIGTERM, and the metrics endpoint.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config::ConfigDoc;
use learner::train::checkpoint::CheckpointDir;
use learner::train::checkpoint_v2;
use learner::train::run::run;
use support::random_dataset;

type B = burn::backend::Autodiff<burn::backend::NdArray>;

fn doc(steps: u64) -> ConfigDoc {
    support::tiny_doc(steps, 10, &["train.threads=2"])
}

fn arrays(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = checkpoint_v2::read(dir).unwrap();
    c.arrays.into_values().map(|a| (a.name, a.data)).collect()
}

/// Stopped at 20 and resumed to 40 gives bit-identical parameters, moments and u to an unstopped
/// run; a flipped byte in the newest checkpoint makes the rerun resume from the one before.
#[test]
fn resume_is_exact_and_a_corrupted_checkpoint_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    random_dataset(&data);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = run::<B>(doc(40), &data, &a, Default::default()).unwrap();
    assert_eq!(full.final_step, 40);
    run::<B>(doc(20), &data, &b, Default::default()).unwrap();
    let resumed = run::<B>(doc(40), &data, &b, Default::default()).unwrap();
    assert_eq!(resumed.resumed_from, Some(20));
    let latest = |w: &Path| CheckpointDir::open(w, 5).unwrap().latest().unwrap();
    let (sa, da) = latest(&a);
    let (sb, db) = latest(&b);
    assert_eq!((sa, sb), (40, 40));
    assert!(checkpoint_v2::is_v2(&da), "the fused engine writes v2");
    assert_eq!(arrays(&da), arrays(&db), "resumed run must match the unstopped one exactly");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(da.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["rng_counter"].as_u64(), state["engine"].as_str()),
        (Some(40), Some(40), Some("fused"))
    );

    // Corrupt step 40 of run b; a rerun asking for 50 iterations resumes from 30.
    let victim = db.join("generator.0.weight.npy");
    let mut bytes = std::fs::read(&victim).unwrap();
    let k = bytes.len() - 3;
    bytes[k] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let again = run::<B>(doc(50), &data, &b, Default::default()).unwrap();
    assert_eq!(again.resumed_from, Some(30));
    assert_eq!(again.final_step, 50);
}

/// SIGTERM: the learner finishes its iteration, writes a complete checkpoint at that step (not a
/// multiple of checkpoint_every), and exits 0.
#[cfg(unix)]
#[test]
fn sigterm_leaves_a_checkpoint_at_the_last_iteration() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    random_dataset(&data);
    let work = tmp.path().join("w");
    let mut child = Command::new(env!("CARGO_BIN_EXE_learner"))
        .args(["--dataset", data.to_str().unwrap(), "--workdir", work.to_str().unwrap()])
        .args(["--set", "model.num_outer=3", "--set", "model.num_inner=3", "--set", "train.batch_size=4"])
        .args(["--set", "train.checkpoint_every=1000000", "--steps", "100000000"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the learner did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(exit.success(), "exit {exit:?}: {err}");
    assert!(err.contains("stop requested"), "{err}");
    let (step, dir) = CheckpointDir::open(&work, 3).unwrap().latest().expect("a checkpoint");
    assert!(step > 0 && step % 1_000_000 != 0, "checkpoint at step {step}");
    assert!(checkpoint_v2::read(&dir).is_ok());
}

/// `GET /metrics` at `addr`, or None while nothing listens there.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of an unlabelled series in a scrape.
fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_are_served_while_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    random_dataset(&data);
    let work = tmp.path().join("w");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_learner"))
        .args(["--dataset", data.to_str().unwrap(), "--workdir", work.to_str().unwrap()])
        .args(["--metrics-addr", &addr.to_string(), "--set", "train.threads=2"])
        // 16 rows are two blocks, so both threads have one.
        .args(["--set", "model.num_outer=3", "--set", "model.num_inner=3", "--set", "train.batch_size=16"])
        .args(["--set", "train.checkpoint_every=20", "--steps", "100000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let body = loop {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint showed on {addr} within 60 s");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(body) = scrape(addr) {
            if value(&body, "dsm_learner_checkpoint_step").is_some_and(|s| s >= 20.0) {
                break body;
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let iterations = value(&body, "dsm_learner_iterations_total").expect("iterations");
    assert!(iterations >= 20.0, "{body}");
    let step = value(&body, "dsm_learner_step").expect("step");
    assert_eq!(step, iterations, "a fresh run's step is its iteration count");
    for loss in ["dsm_learner_discriminator_loss", "dsm_learner_generator_loss"] {
        assert!(value(&body, loss).is_some_and(f64::is_finite), "{loss}: {body}");
    }
    assert!(body.contains("dsm_learner_iteration_seconds_bucket{le=\"0.01\"}"), "{body}");
    assert!(body.contains("dsm_learner_info{engine=\"fused\",threads=\"2\",replicas=\"1\",gpus=\"0\"} 1"), "{body}");
    // Every dsm_learner_* series the endpoint serves follows the naming rule.
    let mut seen = 0;
    for line in body.lines().filter(|l| l.starts_with("# TYPE dsm_learner_")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        common::telemetry::check_metric_name(name, kind == "counter").unwrap();
        seen += 1;
    }
    assert!(seen >= 7, "{body}");
}
