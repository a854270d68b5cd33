//! End to end on loopback: a `coordinator` process with 2 in-process shards (port 0), two
//! actors streaming Pendulum into it, and the sampling client drawing 1,000 windows. Every
//! window must be W consecutive steps of one stream, which we check against Pendulum's own
//! dynamics (θ' = θ + θ̇'·dt), not against the server's metadata. Then the accounting identity
//! inserted = stored + evicted holds on every shard, and both processes stop cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actor::envs::EnvId;
use actor::stream::run::{run, ActorOptions};
use client::sampling::{SamplingClient, SamplingOptions};
use proto::pb;
use proto::pb::replay_client::ReplayClient;

/// Kills the child if the test fails before stopping it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
        }
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}

/// Starts `coordinator --listen 127.0.0.1:0` and reads its bound address from its first line.
fn start_coordinator(dir: &std::path::Path, args: &[&str]) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", "127.0.0.1:0", "--workdir", dir.to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("coordinator listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Guard(Some(child)), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_stream_into_shards_and_the_client_samples_consecutive_windows() {
    let dir = tempfile::tempdir().unwrap();
    // A small store, so eviction happens during the test.
    let (mut coordinator, addr) = start_coordinator(dir.path(), &["--shards", "2", "--set", "replay.max_size=20000"]);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut actors = Vec::new();
    for actor_id in 0..2u64 {
        let mut stop = stop_rx.clone();
        let options = ActorOptions {
            env: EnvId::Pendulum,
            coordinator: addr.clone(),
            envs: 4,
            actor_id,
            drain: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_steps: None,
            workdir: dir.path().join("work"),
        };
        actors.push(tokio::spawn(run(options, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let options = SamplingOptions { batch_size: 100, prefetch: 2, ..Default::default() };
    let mut client = SamplingClient::connect(&addr, options).await.unwrap();
    let (dt, mut windows, mut actors_seen, mut boundaries) = (0.05f32, 0, [false; 2], 0);
    while windows < 1000 {
        let b = tokio::time::timeout(Duration::from_secs(30), client.next()).await.expect("a batch in 30 s").unwrap();
        assert_eq!((b.window_steps, b.obs_dim, b.action_dim), (7, 3, 1));
        for w in 0..b.windows {
            actors_seen[b.streams[w].actor_id as usize] = true;
            let obs = &b.observations[w * 21..(w + 1) * 21];
            let types = &b.step_types[w * 7..(w + 1) * 7];
            for t in 1..7 {
                if types[t] == 0 {
                    boundaries += 1; // a reset: the next state is a fresh draw
                    continue;
                }
                let (th0, th1) = (obs[3 * (t - 1) + 1].atan2(obs[3 * (t - 1)]), obs[3 * t + 1].atan2(obs[3 * t]));
                let step = (th1 - th0 + std::f32::consts::PI).rem_euclid(std::f32::consts::TAU) - std::f32::consts::PI;
                let predicted = obs[3 * t + 2] * dt;
                assert!((step - predicted).abs() < 1e-4, "window {w} step {t}: Δθ {step} vs θ̇'dt {predicted}");
            }
        }
        windows += b.windows;
    }
    assert!(actors_seen.iter().all(|&s| s), "windows from both actors");
    assert!(client.windows_per_shard().iter().all(|&n| n > 0), "{:?}", client.windows_per_shard());
    eprintln!("1000+ windows checked; {boundaries} episode boundaries inside windows");

    stop_tx.send(true).unwrap();
    for a in actors {
        let report = a.await.unwrap().unwrap();
        assert_eq!(report.unacknowledged(), 0);
        assert!(report.steps > 0);
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut replay = ReplayClient::new(channel);
    let mut evicted = 0;
    for shard_id in 0..2 {
        let s = replay.stats(pb::StatsRequest { shard_id }).await.unwrap().into_inner();
        assert_eq!(s.inserted_steps_total, s.size_steps + s.evicted_steps_total, "shard {shard_id}: {s:?}");
        assert!(s.size_steps <= 20_000);
        assert_eq!(s.refused_chunks_total, 0);
        evicted += s.evicted_steps_total;
    }
    assert!(evicted > 0, "the test should exercise eviction");
    let mut child = coordinator.0.take().unwrap();
    sigterm(&child);
    assert!(child.wait().unwrap().success(), "coordinator exits 0 on SIGTERM");
}
