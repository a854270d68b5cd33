//! The evaluator end to end: a tiny Pendulum δ-model trained for a few iterations gives a
//! complete, well-formed report; checkpoints travel over the learner's checkpoint store; two
//! evaluator processes on one registry evaluate each version exactly once, and a SIGKILLed
//! evaluator's claimed version is evaluated by the other once its lease ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actor::envs::{EnvConfig, EnvId};
use actor::simulate::SimulateSpec;
use burn::backend::{Autodiff, NdArray};
use common::config::ConfigDoc;
use common::npz::NpyArray;
use coordinator::experiment::Experiment;
use coordinator::server::serve_coordinator;
use learner::eval::evaluate;
use learner::service::checkpoint_store::{self, CheckpointStoreService};
use learner::train::checkpoint::CheckpointDir;
use learner::train::run::run;
use proto::pb;
use proto::pb::coordinator_client::CoordinatorClient;
use serde_json::Value;
use sha2::Digest;
use tokio::runtime::Runtime;
use tokio::sync::watch;

type B = Autodiff<NdArray>;

/// Small enough that a report takes a second or two.
const EVAL_SETS: [&str; 3] = ["eval.mc_rollouts=200", "eval.samples_per_atom=64", "eval.background_points=400"];

/// Trains a tiny δ-model on a short Pendulum recording, checkpointing every iteration; returns
/// the complete checkpoint directories, oldest first.
fn trained_pendulum(workdir: &Path, steps: u64) -> Vec<PathBuf> {
    let spec = SimulateSpec {
        env: EnvId::Pendulum,
        config: EnvConfig::defaults(EnvId::Pendulum),
        seed: 5,
        actor_id: 0,
        num_envs: 2,
        steps: 402,
        policy: None,
    };
    std::fs::create_dir_all(workdir).unwrap();
    let data = workdir.join("pendulum.npz");
    spec.run(|_| {}).unwrap().write(&data).unwrap();
    let mut doc = support::tiny_doc(steps, 1, &[&format!("train.keep_checkpoints={steps}")]);
    doc.apply_set("experiment.env=pendulum").unwrap();
    run::<B>(doc, &data, workdir, Default::default()).unwrap();
    CheckpointDir::open(workdir, 1).unwrap().complete().into_iter().map(|(_, d)| d).collect()
}

fn sets() -> Vec<String> {
    EVAL_SETS.iter().map(|s| s.to_string()).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_tiny_pendulum_checkpoint_gives_a_complete_report() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoints = trained_pendulum(tmp.path(), 2);
    let out = tmp.path().join("reports");
    let written = evaluate::evaluate(&checkpoints[1], Some(&checkpoints[0]), &out, "000000000002", &sets()).unwrap();
    assert!(written.dir.join("DONE").is_file());
    assert!(written.headline.iter().any(|(k, v)| k == "w1_mean" && v.is_finite() && *v >= 0.0));
    let body = read_json(&written.dir.join("report.json"));
    let text = std::fs::read_to_string(written.dir.join("report.json")).unwrap();
    assert!(!text.contains("null") && !text.contains("NaN"), "report.json holds no null or NaN");
    assert_eq!(body["env"], "pendulum");
    assert_eq!(body["checkpoint"]["step"], 2);
    // Every array the JSON lists exists and loads with the shape it states.
    let arrays = body["arrays"].as_object().unwrap();
    for (file, about) in arrays {
        let mut f = std::io::BufReader::new(std::fs::File::open(written.dir.join(file)).unwrap());
        let a = NpyArray::read_npy(&mut f).unwrap();
        let shape: Vec<usize> = serde_json::from_value(about["shape"].clone()).unwrap();
        assert_eq!(a.shape, shape, "{file}");
    }
    // The paper's 63 (reward, source) pairs, each naming the files its statistics came from.
    for section in [&body["pendulum"], &body["compare"]["pendulum"]] {
        let pairs = section["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 63);
        for p in pairs {
            for key in ["predicted_returns", "mc_returns", "samples"] {
                assert!(arrays.contains_key(p[key].as_str().unwrap()), "{key} of {p}");
            }
            for key in ["wasserstein", "ks", "cvm"] {
                assert!(p[key].as_f64().unwrap() >= 0.0, "{key} of {p}");
            }
            assert!(p["ks"].as_f64().unwrap() <= 1.0);
        }
        let w1 = &section["summary"]["wasserstein"];
        assert!(w1["min"].as_f64() <= w1["median"].as_f64() && w1["median"].as_f64() <= w1["max"].as_f64());
    }
    let predicted = &body["pendulum"]["pairs"][0]["predicted_returns"];
    assert_eq!(arrays[predicted.as_str().unwrap()]["shape"], serde_json::json!([3]), "one return per atom");
    // Every figure is a PNG that decodes, and report.md links it.
    let md = std::fs::read_to_string(written.dir.join("report.md")).unwrap();
    let figures = body["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 2 * 2 * 9, "CDFs and samples per source, for both checkpoints");
    for fig in figures {
        let file = fig["file"].as_str().unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(written.dir.join(file)).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert!(reader.info().width >= 400, "{file}");
        assert!(md.contains(&format!("]({file})")), "report.md links {file}");
    }
    // A second report of the same checkpoint reuses the Monte-Carlo cache and gives the same numbers.
    let again = evaluate::evaluate(&checkpoints[1], None, &out, "again", &sets()).unwrap();
    assert_eq!(again.headline, written.headline);
}

#[test]
fn incompatible_checkpoints_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("reports");
    // A checkpoint directory without DONE.
    std::fs::create_dir_all(tmp.path().join("half")).unwrap();
    let err = evaluate::evaluate(&tmp.path().join("half"), None, &out, "x", &[]).unwrap_err().to_string();
    assert!(err.contains("no DONE marker"), "{err}");
    // A checkpoint whose model does not read its env's states: a riab-random δ-model whose
    // meta.json (checksum and all) says the env has 30 cells, not the 50 it was trained on.
    let data = tmp.path().join("riab.npz");
    let spec = SimulateSpec {
        env: EnvId::RiabRandom,
        config: EnvConfig::defaults(EnvId::RiabRandom),
        seed: 1,
        actor_id: 0,
        num_envs: 1,
        steps: 100,
        policy: None,
    };
    spec.run(|_| {}).unwrap().write(&data).unwrap();
    let work = tmp.path().join("riab");
    run::<B>(support::tiny_doc(1, 1, &[]), &data, &work, Default::default()).unwrap();
    let (_, dir) = CheckpointDir::open(&work, 1).unwrap().latest().unwrap();
    let mut meta = read_json(&dir.join("meta.json"));
    meta["env_config"]["cells"]["n"] = serde_json::json!(30);
    let text = serde_json::to_string(&meta).unwrap();
    std::fs::write(dir.join("meta.json"), &text).unwrap();
    let mut manifest = read_json(&dir.join("manifest.json"));
    let digest: String = sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    manifest["files"]["meta.json"] = serde_json::json!(digest);
    std::fs::write(dir.join("manifest.json"), serde_json::to_string(&manifest).unwrap()).unwrap();
    let err = evaluate::evaluate(&dir, None, &out, "x", &[]).unwrap_err().to_string();
    assert!(err.contains("50-float states") && err.contains("riab-random") && err.contains("produces 30"), "{err}");
    // Published to a registry, the same checkpoint is marked skipped with that reason, once.
    let lb = Loopback::start("[replay]\nlease_seconds = 2.0\nheartbeat_seconds = 0.5\n");
    lb.publish(1, &dir, "");
    let wd = tmp.path().join("evaluator").tap_create();
    let _e = Evaluator::start(&lb.addr, &wd, &[]);
    wait_until("version 1 is skipped", Duration::from_secs(60), || {
        state(&lb.entries()[0]) == pb::evaluation::State::Skipped
    });
    let reason = lb.entries()[0].evaluation.as_ref().unwrap().skip_reason.clone();
    assert!(reason.contains("50-float states") && reason.contains("produces 30"), "{reason}");
    assert!(reports_in(&wd).is_empty());
    assert!(!err.contains('\n'));
}

/// A coordinator in-process on port 0, on a runtime of its own.
struct Loopback {
    runtime: Runtime,
    addr: String,
    stop: watch::Sender<bool>,
}

impl Loopback {
    fn start(config: &str) -> Loopback {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (stop, stopped) = watch::channel(false);
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let experiment = Experiment::new(ConfigDoc::parse(config, "test").unwrap()).unwrap();
            let mut stopped = stopped.clone();
            tokio::spawn(serve_coordinator(listener, addr.clone(), experiment, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }));
            addr
        });
        Loopback { runtime, addr, stop }
    }

    fn client(&self) -> CoordinatorClient<tonic::transport::Channel> {
        let addr = format!("http://{}", self.addr);
        self.runtime.block_on(async { CoordinatorClient::connect(addr).await.unwrap() })
    }

    fn publish(&self, version: u64, dir: &Path, fetch_address: &str) {
        let mut c = self.client();
        let entry = pb::CheckpointEntry {
            version,
            step: version,
            uri: format!("file://{}", dir.display()),
            fetch_address: fetch_address.into(),
            ..Default::default()
        };
        self.runtime.block_on(c.publish_checkpoint(entry)).unwrap();
    }

    fn entries(&self) -> Vec<pb::CheckpointEntry> {
        let mut c = self.client();
        self.runtime.block_on(c.list_checkpoints(pb::ListCheckpointsRequest::default())).unwrap().into_inner().entries
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Evaluator(Child);

impl Evaluator {
    fn start(coordinator: &str, workdir: &Path, extra: &[&str]) -> Evaluator {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_evaluator"));
        cmd.args(["--coordinator", coordinator, "--workdir"]).arg(workdir);
        for s in EVAL_SETS.iter().chain(extra) {
            cmd.args(["--set", s]);
        }
        let log = std::fs::File::create(workdir.with_extension("log")).unwrap();
        Evaluator(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn state(e: &pb::CheckpointEntry) -> pb::evaluation::State {
    e.evaluation.as_ref().unwrap().state()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reports_in(workdir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(workdir.join("eval")) else { return vec![] };
    let mut names: Vec<String> = dir
        .flatten()
        .filter(|e| e.path().join("DONE").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn two_evaluators_evaluate_each_version_once_and_take_over_a_dead_ones_claim() {
    use pb::evaluation::State;
    let tmp = tempfile::tempdir().unwrap();
    let checkpoints = trained_pendulum(&tmp.path().join("learner"), 6);
    assert_eq!(checkpoints.len(), 6);
    // A 2 s lease, so that a dead evaluator's claim ends quickly.
    let lb =
        Loopback::start("[experiment]\nenv = \"pendulum\"\n[replay]\nlease_seconds = 2.0\nheartbeat_seconds = 0.5\n");
    for (i, dir) in checkpoints.iter().enumerate() {
        lb.publish(i as u64 + 1, dir, "");
    }
    let (wa, wb) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&wa).unwrap();
    std::fs::create_dir_all(&wb).unwrap();
    // A claims version 1 with a report slow enough to be killed in the middle of it.
    let mut a = Evaluator::start(&lb.addr, &wa, &["eval.mc_rollouts=200000"]);
    wait_until("A claims version 1", Duration::from_secs(60), || state(&lb.entries()[0]) == State::Claimed);
    a.kill9();
    let killed = Instant::now();
    let _b = Evaluator::start(&lb.addr, &wb, &[]);
    let _c = Evaluator::start(&lb.addr, &tmp.path().join("c").tap_create(), &[]);
    wait_until("every version is evaluated", Duration::from_secs(240), || {
        lb.entries().iter().all(|e| state(e) == State::Done)
    });
    let entries = lb.entries();
    // Version 1 was A's: it was done only after A's lease ran out.
    let first = entries[0].evaluation.as_ref().unwrap();
    assert!(!first.claimant.is_empty());
    assert!(killed.elapsed() >= Duration::from_secs(2));
    // Each version has one report, in the workdir of the evaluator that published it.
    let (rb, rc) = (reports_in(&wb), reports_in(&tmp.path().join("c")));
    let mut all: Vec<String> = rb.iter().chain(&rc).cloned().collect();
    all.sort();
    let want: Vec<String> = (1..=6).map(|v| format!("{v:012}")).collect();
    assert_eq!(all, want, "each version evaluated exactly once (B: {rb:?}, C: {rc:?})");
    assert!(reports_in(&wa).is_empty(), "A died before finishing");
    for e in &entries {
        let ev = e.evaluation.as_ref().unwrap();
        let dir = ev.report_uri.strip_prefix("file://").unwrap();
        assert!(Path::new(dir).join("report.md").is_file(), "{}", ev.report_uri);
        assert!(ev.headline["w1_mean"] >= 0.0);
    }
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn a_checkpoint_fetched_over_grpc_equals_the_learners_files() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoints = trained_pendulum(&tmp.path().join("learner"), 1);
    let root = tmp.path().join("learner").join("checkpoints");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = CheckpointStoreService::new(&root).unwrap().server();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    });
    let dest = tmp.path().join("fetched");
    let uri = format!("file://{}", checkpoints[0].display());
    let got = runtime.block_on(checkpoint_store::fetch(&addr, &uri, &dest, Duration::from_secs(30))).unwrap();
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&got), names(&checkpoints[0]));
    for name in names(&got) {
        assert_eq!(std::fs::read(got.join(&name)).unwrap(), std::fs::read(checkpoints[0].join(&name)).unwrap());
    }
    // By directory name too; and anything outside the checkpoint directory is refused.
    let by_name = checkpoints[0].file_name().unwrap().to_str().unwrap().to_string();
    runtime
        .block_on(checkpoint_store::fetch(&addr, &by_name, &tmp.path().join("f2"), Duration::from_secs(30)))
        .unwrap();
    let outside = [
        format!("file://{}", tmp.path().join("learner").display()),
        format!("{}/../../pendulum.npz", checkpoints[0].display()),
        "../pendulum.npz".to_string(),
        "/etc".to_string(),
        format!("file://{}", tmp.path().join("learner").join("pendulum.npz").display()),
    ];
    for bad in outside {
        let err = runtime
            .block_on(checkpoint_store::fetch(&addr, &bad, &tmp.path().join("bad"), Duration::from_secs(30)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the learner's checkpoint directory"), "{bad}: {err}");
        assert!(!tmp.path().join("bad").exists());
    }
    let err = runtime
        .block_on(checkpoint_store::fetch(&addr, "step-999999999999", &tmp.path().join("bad"), Duration::from_secs(30)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}
