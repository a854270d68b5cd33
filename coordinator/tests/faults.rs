//! Faults, with real processes on loopback: a `coordinator`, standalone `replay` shards and
//! `actor` processes, killed and restarted under load.
//!
//! 1. A shard is SIGKILLed mid-stream and restarted from its checkpoint: the actors reconnect,
//!    and everything they had acknowledged is accounted for as stored + evicted + lost.
//! 2. (An actor SIGKILLed and restarted with a new incarnation: `actor/tests/stream_recovery.rs`.)
//! 3. The coordinator is SIGKILLed and restarted: the replay node re-registers within a lease
//!    period, the actor keeps inserting, and `WatchCheckpoints` resumes from the latest entry.
//! 4. Interrupted checkpoints (no DONE marker, a truncated file) are skipped on start.
//!
//! Leases are 2 s here (heartbeats every 0.5 s) so that the tests stay short. The `actor` binary
//! is found next to this test's own target directory (a workspace `cargo test` builds it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::pb;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_client::ReplayClient;
use tonic::transport::Channel;

const FAST_LEASES: [&str; 4] = ["--set", "replay.lease_seconds=2", "--set", "replay.heartbeat_seconds=0.5"];

fn config(name: &str) -> String {
    format!("{}/../configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn actor_binary() -> PathBuf {
    // target/<profile>/deps/faults-<hash> → target/<profile>/actor
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(format!("actor{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: build it with `cargo build --release -p actor`", bin.display());
    bin
}

/// A child process whose stderr is collected line by line, killed if the test fails.
struct Proc {
    name: String,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The first stdout line (the bound address for servers).
    first_line: String,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (sink, tag, err) = (stderr.clone(), name.to_string(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Proc { name: name.into(), child: Some(child), stderr, first_line: String::new() }
    }

    /// Spawns a server and waits for its "… listening on ADDR …" line.
    fn server(name: &str, program: &Path, args: &[&str]) -> (Proc, String) {
        let mut p = Proc::spawn(name, program, args);
        let out = p.child.as_mut().unwrap().stdout.take().unwrap();
        let mut reader = BufReader::new(out);
        reader.read_line(&mut p.first_line).unwrap();
        let addr = p
            .first_line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {:?}", p.first_line))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines().map_while(Result::ok) {});
        (p, addr)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success(), "kill {sig} {}", self.name);
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
        self.child.take().unwrap().wait().unwrap();
    }

    /// SIGTERM, then the exit status must be 0 within `within`.
    fn stop(&mut self, within: Duration) {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(start.elapsed() < within, "{} did not stop within {within:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The number after `prefix` in the last stderr line that has it.
    fn last_number_after(&self, prefix: &str) -> Option<u64> {
        let lines = self.stderr.lock().unwrap();
        lines.iter().rev().find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn coordinator(workdir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--workdir", workdir.to_str().unwrap()];
    args.extend_from_slice(extra);
    if !extra.contains(&"--listen") {
        args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
    }
    Proc::server("coordinator", Path::new(env!("CARGO_BIN_EXE_coordinator")), &args)
}

fn replay(name: &str, coordinator: &str, workdir: &Path) -> (Proc, String) {
    Proc::server(
        name,
        Path::new(env!("CARGO_BIN_EXE_replay")),
        &["--coordinator", coordinator, "--workdir", workdir.to_str().unwrap(), "--connect-timeout-seconds", "30"],
    )
}

fn actor(name: &str, coordinator: &str, actor_id: u64) -> Proc {
    let id = actor_id.to_string();
    Proc::spawn(
        name,
        &actor_binary(),
        &["--env", "pendulum", "--coordinator", coordinator, "--envs", "4", "--actor-id", &id, "--drain-seconds", "10"],
    )
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn stats(addr: &str, shard_id: u32) -> pb::StatsResponse {
    let mut c = ReplayClient::new(channel(addr).await);
    c.stats(pb::StatsRequest { shard_id }).await.unwrap().into_inner()
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inserted_at_least(addr: &str, shard: u32, steps: u64) -> pb::StatsResponse {
    let what = format!("shard {shard} at {addr} to hold {steps} inserted steps");
    eventually(&what, Duration::from_secs(30), || async {
        let s = stats(addr, shard).await;
        (s.inserted_steps_total >= steps).then_some(s)
    })
    .await
}

async fn checkpoint(addr: &str, shard_id: u32) -> pb::CheckpointResponse {
    let mut c = ReplayClient::new(channel(addr).await);
    c.checkpoint(pb::CheckpointRequest { shard_id }).await.unwrap().into_inner()
}

/// The slot a `replay` process serves, from its first line "(shard slot N of K)".
fn slot_of(p: &Proc) -> u32 {
    let rest = p.first_line.split("shard slot ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_restarts_from_its_checkpoint_and_nothing_is_unaccounted() {
    let dir = tempfile::tempdir().unwrap();
    let (w0, w1) = (dir.path().join("r0"), dir.path().join("r1"));
    let pendulum = config("pendulum.toml");
    let mut args = vec!["--config", &pendulum, "--shards", "2", "--hosted-shards", "0"];
    args.extend_from_slice(&FAST_LEASES);
    args.extend_from_slice(&["--set", "replay.checkpoint_seconds=0"]);
    let (_coordinator, addr) = coordinator(&dir.path().join("c"), &args);
    let (mut r0, a0) = replay("replay-0", &addr, &w0);
    let (r1, a1) = replay("replay-1", &addr, &w1);
    let (s0, s1) = (slot_of(&r0), slot_of(&r1));
    assert_ne!(s0, s1);
    let mut actors = vec![actor("actor-0", &addr, 0), actor("actor-1", &addr, 1)];

    inserted_at_least(&a0, s0, 2_000).await;
    let ckpt = checkpoint(&a0, s0).await;
    assert!(Path::new(&ckpt.path).join("DONE").exists(), "{ckpt:?}");
    // Acknowledged after the checkpoint, so lost in the crash.
    inserted_at_least(&a0, s0, ckpt.stored_steps + 1_000).await;
    r0.kill9();

    let (r0b, a0b) = replay("replay-0b", &addr, &w0);
    assert_eq!(slot_of(&r0b), s0, "the restarted shard takes its old slot back");
    let restored = stats(&a0b, s0).await;
    assert_eq!(restored.restored_from, ckpt.path);
    assert!(restored.inserted_steps_total >= ckpt.stored_steps);
    let limiter = restored.limiter.unwrap();
    assert_eq!(limiter.insert_count - limiter.delete_count, restored.size_steps, "limiter restored with the table");
    // Sampling right after a restore answers at once (Reverb users' complaint: it hung).
    let mut sampler = ReplayClient::new(channel(&a0b).await);
    let started = Instant::now();
    let got = sampler.sample(pb::SampleRequest { shard_id: s0, count: 16, timeout_ms: 2_000 }).await.unwrap();
    assert_eq!(got.into_inner().windows, 16);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The actors find the new address and go on.
    inserted_at_least(&a0b, s0, restored.inserted_steps_total + 2_000).await;

    let mut acked = 0;
    for a in &mut actors {
        a.stop(Duration::from_secs(20));
        acked += a.last_number_after("acknowledged ").expect("the actor reports its acknowledged steps");
    }
    let (x0, x1) = (stats(&a0b, s0).await, stats(&a1, s1).await);
    for s in [&x0, &x1] {
        assert_eq!(s.inserted_steps_total, s.size_steps + s.evicted_steps_total, "{s:?}");
        assert_eq!(s.refused_chunks_total, 0, "{s:?}");
    }
    assert!(x0.lost_steps_total > 0, "acknowledged-after-checkpoint steps are counted as lost: {x0:?}");
    assert_eq!(x1.lost_steps_total, 0);
    let accounted = x0.inserted_steps_total + x0.lost_steps_total + x1.inserted_steps_total;
    assert_eq!(accounted, acked, "acknowledged = Σ (stored + evicted + lost)");
    assert!(actors.iter().all(|a| a.stderr_contains("reconnect")), "both actors wrote to the killed shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_gets_its_nodes_back_and_watch_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let pendulum = config("pendulum.toml");
    let mut args = vec!["--config", &pendulum, "--shards", "1", "--hosted-shards", "0", "--listen", &listen];
    args.extend_from_slice(&FAST_LEASES);
    let (mut c1, addr) = coordinator(&dir.path().join("c"), &args);
    let (_r, raddr) = replay("replay", &addr, &dir.path().join("r"));
    let mut a = actor("actor", &addr, 0);
    inserted_at_least(&raddr, 0, 1_000).await;
    let mut client = CoordinatorClient::new(channel(&addr).await);
    for version in [1, 2] {
        let entry = pb::CheckpointEntry {
            version,
            step: version * 100,
            uri: format!("file:///m/{version}"),
            ..Default::default()
        };
        client.publish_checkpoint(entry).await.unwrap();
    }
    c1.kill9();
    let killed = Instant::now();
    // Restarted without --config: it resumes the experiment from its workdir.
    let mut args2 = vec!["--listen", listen.as_str(), "--hosted-shards", "0"];
    args2.extend_from_slice(&FAST_LEASES);
    let (_c2, addr2) = coordinator(&dir.path().join("c"), &args2);
    assert_eq!(addr2, addr);
    let restarted = Instant::now();
    let mut client = CoordinatorClient::new(channel(&addr).await);
    eventually("the replay node to re-register", Duration::from_secs(10), || {
        let mut client = client.clone();
        let raddr = raddr.clone();
        async move {
            let map = client.get_shard_map(pb::GetShardMapRequest {}).await.ok()?.into_inner();
            (map.slots[0].address == raddr).then_some(())
        }
    })
    .await;
    let lease = Duration::from_secs(2);
    assert!(restarted.elapsed() <= lease, "re-registered {:?} after the restart", restarted.elapsed());
    eprintln!("coordinator down for {:?}; nodes back {:?} after restart", restarted - killed, restarted.elapsed());
    // The actor keeps inserting, and its heartbeats reach the new coordinator.
    inserted_at_least(&raddr, 0, stats(&raddr, 0).await.inserted_steps_total + 1_000).await;
    let mut watch = client.watch_checkpoints(pb::WatchCheckpointsRequest::default()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((first.version, first.uri.as_str()), (2, "file:///m/2"));
    let dup = client
        .publish_checkpoint(pb::CheckpointEntry { version: 2, step: 1, uri: "file:///x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::FailedPrecondition, "a version is never published twice");
    a.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_checkpoints_are_skipped_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("r");
    let pendulum = config("pendulum.toml");
    let mut args = vec!["--config", &pendulum, "--shards", "1", "--hosted-shards", "0"];
    args.extend_from_slice(&FAST_LEASES);
    args.extend_from_slice(&["--set", "replay.checkpoint_seconds=0"]);
    let (_c, addr) = coordinator(&dir.path().join("c"), &args);
    let (mut r, raddr) = replay("replay", &addr, &w);
    let mut a = actor("actor", &addr, 0);
    inserted_at_least(&raddr, 0, 1_000).await;
    let good = checkpoint(&raddr, 0).await;
    inserted_at_least(&raddr, 0, good.stored_steps + 500).await;
    let no_done = checkpoint(&raddr, 0).await;
    a.stop(Duration::from_secs(20));
    r.kill9();

    // 1. The newest has no DONE marker: skipped, the previous one restored.
    std::fs::remove_file(Path::new(&no_done.path).join("DONE")).unwrap();
    let (mut r, raddr) = replay("replay-2", &addr, &w);
    assert_eq!(stats(&raddr, 0).await.restored_from, good.path);
    assert!(r.stderr_contains(&no_done.path), "a warning names the skipped checkpoint");
    // 2. A newer complete checkpoint whose data file is truncated: skipped as well.
    let truncated = checkpoint(&raddr, 0).await;
    r.kill9();
    let data: Vec<PathBuf> = std::fs::read_dir(&truncated.path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "DONE")
        .collect();
    assert!(!data.is_empty());
    for f in &data {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len / 2).unwrap();
    }
    let (mut r, raddr) = replay("replay-3", &addr, &w);
    let s = stats(&raddr, 0).await;
    assert_ne!(s.restored_from, truncated.path);
    assert!(!s.restored_from.is_empty(), "falls back to an earlier complete checkpoint");
    assert!(r.stderr_contains(&truncated.path));
    r.kill9();
    // 3. No complete checkpoint at all: the shard starts empty.
    for entry in std::fs::read_dir(w.join("shards/shard-0")).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path().join("DONE"));
    }
    let (_r, raddr) = replay("replay-4", &addr, &w);
    let s = stats(&raddr, 0).await;
    assert_eq!((s.restored_from.as_str(), s.size_steps), ("", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_client_goes_on_without_a_dead_shard_and_takes_it_back() {
    use client::sampling::{SamplingClient, SamplingOptions};
    let dir = tempfile::tempdir().unwrap();
    let pendulum = config("pendulum.toml");
    let mut args = vec!["--config", &pendulum, "--shards", "2", "--hosted-shards", "0"];
    args.extend_from_slice(&FAST_LEASES);
    let (_coordinator, addr) = coordinator(&dir.path().join("c"), &args);
    let (r0, a0) = replay("replay-0", &addr, &dir.path().join("r0"));
    let (mut r1, a1) = replay("replay-1", &addr, &dir.path().join("r1"));
    let (s0, s1) = (slot_of(&r0), slot_of(&r1));
    let mut a = actor("actor", &addr, 0);
    inserted_at_least(&a0, s0, 1_000).await;
    inserted_at_least(&a1, s1, 1_000).await;
    let options = SamplingOptions { batch_size: 64, prefetch: 1, ..Default::default() };
    let mut client = SamplingClient::connect(&addr, options).await.unwrap();
    for _ in 0..5 {
        next(&mut client).await;
    }
    let before = client.windows_per_shard();
    assert!(before[s0 as usize] > 0 && before[s1 as usize] > 0, "{before:?}");

    r1.kill9();
    // Batches keep coming, from the surviving shard (after the one or two prefetched earlier).
    for _ in 0..10 {
        let b = next(&mut client).await;
        assert_eq!(b.windows, 64);
    }
    let during = client.windows_per_shard();
    assert!(client.failures_per_shard()[s1 as usize] >= 1, "the dead shard was set aside");
    assert!(during[s0 as usize] >= before[s0 as usize] + 8 * 64, "{before:?} → {during:?}");

    // Back (no checkpoint in its workdir: it takes the free slot once the old lease expires).
    let (r1b, a1b) = replay("replay-1b", &addr, &dir.path().join("r1"));
    assert_eq!(slot_of(&r1b), s1);
    inserted_at_least(&a1b, s1, 500).await;
    let start = Instant::now();
    loop {
        let b = next(&mut client).await;
        if b.shards.contains(&s1) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the client never sampled the restarted shard");
    }
    a.stop(Duration::from_secs(20));
}

/// The next batch, within 20 s.
async fn next(client: &mut client::sampling::SamplingClient) -> client::sampling::SampleBatch {
    tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("a batch in 20 s").unwrap()
}
