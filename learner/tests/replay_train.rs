//! Training from the replay store on loopback: a coordinator served in-process on port 0 with
//! its 2 in-process shards, one in-process actor streaming `riab-random` (10 place cells) into
//! it, and the learner's own loop (`run_from_coordinator`) training a small δ-model for 200
//! iterations, publishing a checkpoint every 50. A watcher on the registry sees every version
//! once, in order; a restarted learner on the same workdir resumes at 200 and publishes only
//! 250 and 300. A model whose windows or state size differ from the experiment's is refused
//! before training, naming both values.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actor::envs::EnvId;
use actor::stream::run::{run as run_actor, ActorOptions};
use burn::backend::{Autodiff, NdArray};
use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::serve_coordinator;
use learner::train::publisher::Publisher;
use learner::train::replay_source::ReplayOptions;
use learner::train::run::run_from_coordinator;
use proto::pb;
use proto::pb::coordinator_client::CoordinatorClient;
use tokio::runtime::Runtime;
use tokio::sync::watch;

type B = Autodiff<NdArray>;

/// A small model (so 200 iterations take seconds on a CPU) on a small riab-random experiment.
const EXPERIMENT: &str = r#"
[experiment]
env = "riab-random"
seed = 3

[env.cells]
n = 10

[model]
num_outer = 3
num_inner = 2
latent_dims = 2
generator_hidden = 8
generator_layers = 1
discriminator_hidden = 8
embedding_dim = 4

[train]
batch_size = 8
steps = 200
checkpoint_every = 50
log_every = 50
"#;

/// A coordinator (and optionally one actor) on a runtime of their own; the learner runs on the
/// test thread, as the `learner` binary runs on its main thread.
struct Loopback {
    runtime: Runtime,
    addr: String,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Loopback {
    fn start(config: &str) -> Loopback {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (stop, stopped) = watch::channel(false);
        let (addr, server) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let experiment = Experiment::new(ConfigDoc::parse(config, "test").unwrap()).unwrap();
            let mut stopped = stopped.clone();
            let server = tokio::spawn(serve_coordinator(listener, addr.clone(), experiment, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }));
            (addr, server)
        });
        Loopback { runtime, addr, stop, server }
    }

    /// One actor with 2 envs, `steps` steps each, then it drains and stops.
    fn feed(&self, workdir: &std::path::Path, steps: u64) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
        let options = ActorOptions {
            envs: 2,
            max_steps: Some(steps),
            connect_timeout: Duration::from_secs(10),
            workdir: workdir.to_path_buf(),
            ..ActorOptions::new(EnvId::RiabRandom, self.addr.clone())
        };
        let mut stop = self.stop.subscribe();
        self.runtime.spawn(async move {
            let report = run_actor(options, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
            anyhow::ensure!(report.unacknowledged() == 0, "the actor left chunks unacknowledged");
            Ok(report.steps)
        })
    }

    /// Collects every registry entry published from now on.
    fn watch_registry(&self) -> Arc<Mutex<Vec<pb::CheckpointEntry>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = format!("http://{}", self.addr);
        let mut stream = self.runtime.block_on(async {
            let mut client = CoordinatorClient::connect(addr).await.unwrap();
            client.watch_checkpoints(pb::WatchCheckpointsRequest::default()).await.unwrap().into_inner()
        });
        let sink = seen.clone();
        self.runtime.spawn(async move {
            while let Ok(Some(entry)) = stream.message().await {
                sink.lock().unwrap().push(entry);
            }
        });
        seen
    }

    fn stop(self) {
        self.stop.send_replace(true);
        self.runtime.block_on(self.server).unwrap().unwrap();
    }
}

fn doc(sets: &[&str]) -> ConfigDoc {
    let mut doc = ConfigDoc::parse(EXPERIMENT, "test").unwrap();
    doc.apply_sets(sets).unwrap();
    doc
}

#[test]
fn trains_200_iterations_from_one_actor_and_publishes_each_checkpoint_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("learner");
    let lb = Loopback::start(EXPERIMENT);
    let seen = lb.watch_registry();
    let actor = lb.feed(&dir.path().join("actor"), 20_000);
    let options = ReplayOptions { connect_timeout: Duration::from_secs(10), ..ReplayOptions::new(lb.addr.clone()) };

    let first = run_from_coordinator::<B>(doc(&[]), &options, &work, Default::default()).unwrap();
    assert_eq!((first.resumed_from, first.final_step, first.iterations_run), (None, 200, 200));
    let (d, g) = first.last_losses.unwrap();
    assert!(d.is_finite() && g.is_finite(), "losses {d} {g}");
    assert_eq!(first.published, [50, 100, 150, 200]);
    // Each checkpoint names the experiment's env, so that an evaluator can rebuild it.
    let meta = std::fs::read_to_string(work.join("checkpoints/step-000000000200/meta.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!((meta["env"].as_str(), meta["seed"].as_u64()), (Some("riab-random"), Some(3)));
    assert_eq!(meta["env_config"]["cells"]["n"], 10);

    // A restart on the same workdir with more steps: it resumes, and publishes only new versions.
    let second = run_from_coordinator::<B>(doc(&["train.steps=300"]), &options, &work, Default::default()).unwrap();
    assert_eq!((second.resumed_from, second.final_step, second.iterations_run), (Some(200), 300, 100));
    assert_eq!(second.published, [250, 300]);

    // The watcher saw each version once, in order, with its step, its directory and finite losses.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = seen.lock().unwrap().clone();
    let versions: Vec<u64> = seen.iter().map(|e| e.version).collect();
    assert_eq!(versions, [50, 100, 150, 200, 250, 300]);
    for e in &seen {
        assert_eq!(e.step, e.version);
        let path = e.uri.strip_prefix("file://").unwrap_or_else(|| panic!("uri {:?} is not file://", e.uri));
        assert!(path.ends_with(&format!("step-{:012}", e.step)), "{}", e.uri);
        for key in ["loss_d", "loss_g", "iterations_per_second"] {
            let v = e.metrics.get(key).unwrap_or_else(|| panic!("version {}: no {key}", e.version));
            assert!(v.is_finite(), "version {}: {key} = {v}", e.version);
        }
    }
    // The newest checkpoints are still on disk, complete, where their URIs say.
    let newest = seen.last().unwrap().uri.strip_prefix("file://").unwrap().to_string();
    assert!(std::path::Path::new(&newest).join("DONE").is_file(), "{newest}");

    // A third run with nothing to do publishes nothing.
    let third = run_from_coordinator::<B>(doc(&["train.steps=300"]), &options, &work, Default::default()).unwrap();
    assert_eq!((third.iterations_run, third.published.len()), (0, 0));

    lb.stop.send_replace(true);
    let steps = lb.runtime.block_on(actor).unwrap().unwrap();
    assert!(steps > 0);
    lb.stop();
    eprintln!("replay training test took {:.1?}", started.elapsed());
}

/// The coordinator's experiment serves windows of 9 steps; the model's horizon 6 needs 7. And a
/// model configured for 12 place cells against an experiment of 10. Both are refused before
/// any training, naming both values.
#[test]
fn a_mismatched_horizon_or_state_size_is_refused_naming_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let lb = Loopback::start(&format!("{EXPERIMENT}\n[replay]\nwindow_steps = 9\n"));
    let options = ReplayOptions { connect_timeout: Duration::from_secs(10), ..ReplayOptions::new(lb.addr.clone()) };
    let err = run_from_coordinator::<B>(doc(&[]), &options, dir.path(), Default::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("model.horizon = 6") && msg.contains("replay.window_steps = 9"), "{msg}");
    assert!(!dir.path().join("checkpoints").exists(), "nothing was written");
    lb.stop();

    let lb = Loopback::start(EXPERIMENT);
    let options = ReplayOptions { connect_timeout: Duration::from_secs(10), ..ReplayOptions::new(lb.addr.clone()) };
    let err =
        run_from_coordinator::<B>(doc(&["env.cells.n=12"]), &options, dir.path(), Default::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("12 floats") && msg.contains("10 floats"), "{msg}");
    lb.stop();
}

/// Publishing never holds training up: with the coordinator down, `publish` returns at once and
/// the entries wait; once a coordinator serves at that address, they go out in order.
#[test]
fn checkpoints_queued_while_the_coordinator_is_down_are_published_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Reserve a free port, then leave it closed: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let channel = {
        let _context = runtime.enter(); // the channel's connection task needs a runtime
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
    };
    let publisher = Publisher::start(runtime.handle().clone(), CoordinatorClient::new(channel));
    let queued = Instant::now();
    for step in [10, 20] {
        publisher.publish(step, dir.path(), &[("loss_d", 0.5), ("loss_g", f64::NAN)]);
    }
    assert!(queued.elapsed() < Duration::from_millis(100), "publish waited on the coordinator");
    std::thread::sleep(Duration::from_millis(500));

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let experiment = Experiment::new(ConfigDoc::parse(EXPERIMENT, "test").unwrap()).unwrap();
    let server = runtime.spawn(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        serve_coordinator(listener, addr.to_string(), experiment, async {
            let _ = stopped.await;
        })
        .await
    });
    let report = publisher.finish(Duration::from_secs(20));
    assert_eq!(report.published, [10, 20]);
    assert!(report.unpublished.is_empty());
    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
