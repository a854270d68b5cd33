//! Actor recovery, in-process: the coordinator that hosts the replay shards is stopped in the
//! middle of a stream and started again on the same port. Its shards are in memory, so they come
//! back empty, and its node ids are new. The actor must re-fetch the shard map, reconnect with
//! backoff, reopen each stream at its oldest unacknowledged chunk, resend, and register again.
//! Afterwards everything the actor produced is acknowledged exactly once, and the restarted
//! shards hold each stream's steps from its reopen point on, consecutive and without duplicates.

use std::future::Future;
use std::time::{Duration, Instant};

use actor::envs::{EnvConfig, EnvId, VecEnv};
use actor::stream::run::{run, ActorOptions, ActorReport};
use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::serve_coordinator;
use proto::pb;
use proto::pb::replay_client::ReplayClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Short chunks and a small in-flight window, so a restart catches chunks in flight; a fast
/// heartbeat, so re-registration happens well within the test.
const CONFIG: &str = "[experiment]\nenv = \"pendulum\"\nseed = 5\n\
    [replay]\nshards = 2\nchunk_steps = 16\nmax_in_flight_chunks = 4\nheartbeat_seconds = 0.2\nlease_seconds = 1.0\n";
const ENVS: usize = 4;
const ACTOR_ID: u64 = 2;

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    fn start(listener: TcpListener, addr: &str) -> Server {
        let experiment = Experiment::new(ConfigDoc::parse(CONFIG, "test").unwrap()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_coordinator(listener, addr.to_string(), experiment, async {
            let _ = stopped.await;
        }));
        Server { stop, task }
    }

    /// Stops serving and waits until the port is free again.
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn client(addr: &str) -> ReplayClient<tonic::transport::Channel> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    ReplayClient::new(ch)
}

async fn stats(addr: &str) -> Vec<pb::StatsResponse> {
    let mut c = client(addr).await;
    let mut out = Vec::new();
    for shard_id in 0..2 {
        out.push(c.stats(pb::StatsRequest { shard_id }).await.unwrap().into_inner());
    }
    out
}

async fn inserted(addr: &str) -> u64 {
    stats(addr).await.iter().map(|s| s.inserted_steps_total).sum()
}

async fn wait_for_inserts(addr: &str, steps: u64, what: &str) {
    let start = Instant::now();
    while inserted(addr).await < steps {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: fewer than {steps} steps stored after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The actor, run in-process until `stop` fires.
fn spawn_actor(addr: &str) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<ActorReport>>) {
    let mut opts = ActorOptions::new(EnvId::Pendulum, addr);
    opts.envs = ENVS;
    opts.actor_id = ACTOR_ID;
    opts.drain = Duration::from_secs(5);
    opts.connect_timeout = Duration::from_secs(5);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async {
        let _ = stopped.await;
    });
    (stop, tokio::spawn(run(opts, shutdown)))
}

/// Every env's observations for `steps` steps, as the actor simulated them: (env, step) → row.
fn simulate(steps: u64) -> Vec<Vec<[f32; 3]>> {
    let doc = ConfigDoc::parse(CONFIG, "test").unwrap();
    let config = EnvConfig::resolve(EnvId::Pendulum, &doc.section("env")).unwrap();
    let mut env = VecEnv::new(&config, doc.experiment().unwrap().seed, ACTOR_ID, ENVS, None).unwrap();
    let mut frame = env.new_frame();
    let mut rows: Vec<Vec<[f32; 3]>> = (0..ENVS).map(|_| Vec::with_capacity(steps as usize)).collect();
    for _ in 0..steps {
        env.step(&mut frame);
        for (e, row) in rows.iter_mut().enumerate() {
            let o = &frame.observations[e * 3..(e + 1) * 3];
            row.push([o[0], o[1], o[2]]);
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_resends_after_its_replay_server_restarts_on_the_same_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let first = Server::start(listener, &addr);
    let (stop_actor, actor) = spawn_actor(&addr);
    wait_for_inserts(&addr, 2_000, "before the restart").await;

    // The outage: the writers lose their streams with chunks in flight, the coordinator's map
    // and heartbeats fail, and the sim thread is held back by the writers' full queues.
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Server::start(TcpListener::bind(&addr).await.unwrap(), &addr);
    let restarted = Instant::now();
    wait_for_inserts(&addr, 2_000, "after the restart").await;
    // Nodes re-register within one lease period (1 s here) of a coordinator restart.
    tokio::time::sleep_until((restarted + Duration::from_secs(1)).into()).await;

    let _ = stop_actor.send(());
    let report = tokio::time::timeout(Duration::from_secs(10), actor).await.unwrap().unwrap().unwrap();
    let after = stats(&addr).await;
    let windows = sample(&addr).await;
    second.stop().await;

    // Everything produced was acknowledged, once: the restarted shards were empty, so no resend
    // could be a duplicate, and nothing was refused.
    let produced = report.steps * ENVS as u64;
    assert_eq!(report.unacknowledged(), 0, "{report:?}");
    assert_eq!(report.acked_steps(), produced, "{report:?}");
    for w in &report.writers {
        assert_eq!((w.refused_chunks, w.duplicate_acks), (0, 0), "{w:?}");
        assert!(w.reconnects >= 1, "every writer lost its stream: {w:?}");
        assert!(w.resent_chunks <= 4 * w.reconnects, "at most max_in_flight chunks per reconnect: {w:?}");
    }
    assert!(report.reregistrations >= 1, "not registered again within a lease period: {report:?}");

    // The restarted shards: one stream per env, opened at the writer's oldest unacknowledged
    // chunk. The steps before it had been acknowledged by the first server, and count as lost.
    assert_eq!(after.iter().map(|s| s.streams).sum::<u32>(), ENVS as u32, "{after:?}");
    assert_eq!(after.iter().map(|s| s.duplicate_chunks_total + s.refused_chunks_total).sum::<u64>(), 0, "{after:?}");
    let stored: u64 = after.iter().map(|s| s.inserted_steps_total).sum();
    let lost: u64 = after.iter().map(|s| s.lost_steps_total).sum();
    assert_eq!(stored + lost, produced, "{after:?}");

    // What they hold is the actor's streams, step for step: the resend left neither a duplicate
    // nor a gap after the reopen point.
    check_windows(&windows, &report);
}

/// Every sampled window is W consecutive steps of its env's trajectory, as the actor simulated
/// it, at the stream-step index the shard gives it.
fn check_windows(windows: &[pb::SampleResponse], report: &ActorReport) {
    let rows = simulate(report.steps);
    assert!(!windows.is_empty());
    for w in windows {
        let s = w.window_steps as usize;
        let obs = proto::unpack_f32("observations", &w.observations, w.windows as usize * s * 3).unwrap();
        for (i, (stream, &start)) in w.streams.iter().zip(&w.start_steps).enumerate() {
            assert_eq!((stream.actor_id, stream.incarnation), (ACTOR_ID, report.incarnation));
            let env = &rows[stream.env_index as usize];
            for t in 0..s {
                let got = &obs[(i * s + t) * 3..(i * s + t + 1) * 3];
                assert_eq!(got, env[start as usize + t], "env {} step {}", stream.env_index, start as usize + t);
            }
        }
    }
}

/// A batch of windows from each shard that has any.
async fn sample(addr: &str) -> Vec<pb::SampleResponse> {
    let mut c = client(addr).await;
    let mut out = Vec::new();
    for shard_id in 0..2 {
        let request = pb::SampleRequest { shard_id, count: 256, timeout_ms: 1_000 };
        if let Ok(r) = c.sample(request).await {
            out.push(r.into_inner());
        }
    }
    out
}

/// SIGTERM during an outage that does not end: the actor drains for at most its drain time,
/// reconnecting meanwhile, then gives up and reports what was never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_at_its_deadline_when_the_shard_stays_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = Server::start(listener, &addr);
    let mut opts = ActorOptions::new(EnvId::Pendulum, &addr);
    opts.envs = ENVS;
    opts.drain = Duration::from_secs(1);
    let (stop_actor, stopped) = oneshot::channel::<()>();
    let actor = tokio::spawn(run(opts, async {
        let _ = stopped.await;
    }));
    wait_for_inserts(&addr, 1_000, "before the outage").await;
    server.stop().await;
    // Long enough for the simulation to fill a writer's queue and block on it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let _ = stop_actor.send(());
    let report = tokio::time::timeout(Duration::from_secs(5), actor).await.unwrap().unwrap().unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "drained for {took:?}");
    assert!(report.unacknowledged() > 0, "chunks were queued or in flight when the shard went away: {report:?}");
    assert_eq!(report.reconnects(), 0, "{report:?}");
    assert!(report.acked_steps() > 0 && report.acked_steps() < report.steps * ENVS as u64, "{report:?}");
}

/// An actor killed outright, and started again: a new incarnation, so new streams. The shard sees
/// the old streams' connection end (they close; their data stays) and the new streams open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_actor_restarts_with_new_streams() {
    use std::process::{Command, Stdio};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = Server::start(listener, &addr);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_actor"))
            .args(["--env", "pendulum", "--coordinator", &addr, "--envs", "4", "--actor-id", "7"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let open = |s: &[pb::StatsResponse]| s.iter().map(|s| s.open_streams).sum::<u32>();
    let streams = |s: &[pb::StatsResponse]| s.iter().map(|s| s.streams).sum::<u32>();
    let wait = |what: &'static str, done: fn(&[pb::StatsResponse]) -> bool| {
        let addr = addr.clone();
        async move {
            let start = Instant::now();
            loop {
                let s = stats(&addr).await;
                if done(&s) {
                    return s;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "{what}: {s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let mut first = spawn();
    wait("the first actor's streams", |s| s.iter().map(|s| s.inserted_steps_total).sum::<u64>() >= 1_000).await;
    first.kill().unwrap();
    let _ = first.wait();
    let s = wait("the killed actor's streams closing", |s| s.iter().map(|s| s.open_streams).sum::<u32>() == 0).await;
    assert_eq!((streams(&s), open(&s)), (4, 0));
    let before = inserted(&addr).await;

    let second = spawn();
    let s = wait("the new incarnation's streams", |s| s.iter().map(|s| s.streams).sum::<u32>() == 8).await;
    assert_eq!(open(&s), 4, "{s:?}");
    while inserted(&addr).await < before + 1_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap().success());
    let out = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("0 unacknowledged") && stderr.contains("after 0 reconnects"), "{stderr}");
    let s = stats(&addr).await;
    assert_eq!((streams(&s), open(&s)), (8, 0), "{s:?}");
    server.stop().await;
}

/// A TCP proxy in front of a server, whose connections the test can cut while the server lives.
struct Proxy {
    addr: String,
    conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backend = backend.clone();
                accepted.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy { addr, conns, accept }
    }

    /// Closes every connection through the proxy; new ones are accepted as before.
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// The connection breaks but the shard lives on: the writer reopens each stream at its oldest
/// unacknowledged chunk, which the shard may already hold (it stored it, and the acknowledgement
/// was lost with the connection). Those resends are acknowledged as duplicates and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resends_and_the_shard_stores_each_chunk_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let proxy = Proxy::start(backend.clone()).await;
    // The shard map hands out the proxy's address, so the writers' streams go through it.
    let server = Server::start(listener, &proxy.addr);
    let (stop_actor, actor) = spawn_actor(&proxy.addr);
    // Three cuts, each once the actor has streamed on for a while after the one before.
    let mut target = 1_500;
    for _ in 0..3 {
        wait_for_inserts(&backend, target, "between cuts").await;
        proxy.cut();
        target = inserted(&backend).await + 1_500;
    }
    wait_for_inserts(&backend, target, "after the last cut").await;
    let _ = stop_actor.send(());
    let report = tokio::time::timeout(Duration::from_secs(10), actor).await.unwrap().unwrap().unwrap();
    let after = stats(&backend).await;
    let windows = sample(&backend).await;
    proxy.accept.abort();
    proxy.cut();
    server.stop().await;

    let produced = report.steps * ENVS as u64;
    assert_eq!(report.unacknowledged(), 0, "{report:?}");
    assert_eq!(report.acked_steps(), produced, "every chunk counted once, duplicate or not: {report:?}");
    assert!(report.writers.iter().all(|w| w.reconnects >= 1 && w.refused_chunks == 0), "{report:?}");
    assert!(report.reconnects() >= 3, "{report:?}");
    let duplicates: u64 = report.writers.iter().map(|w| w.duplicate_acks).sum();
    eprintln!("{duplicates} duplicate acknowledgements after {} reconnects", report.reconnects());
    assert_eq!(after.iter().map(|s| s.duplicate_chunks_total).sum::<u64>(), duplicates, "{after:?}");
    assert_eq!(after.iter().map(|s| s.inserted_steps_total).sum::<u64>(), produced, "stored once: {after:?}");
    assert_eq!(after.iter().map(|s| s.lost_steps_total + s.refused_chunks_total).sum::<u64>(), 0, "{after:?}");
    assert_eq!(after.iter().map(|s| s.streams).sum::<u32>(), ENVS as u32, "{after:?}");
    check_windows(&windows, &report);
}
