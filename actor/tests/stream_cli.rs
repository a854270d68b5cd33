//! The `actor` binary streaming into a real coordinator (started in-process on 127.0.0.1:0):
//! it streams, drains and exits 0 on SIGTERM; bad input gets one line and a non-zero exit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::serve_coordinator;
use proto::pb;
use proto::pb::replay_client::ReplayClient;

async fn start(config: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let experiment = Experiment::new(ConfigDoc::parse(config, "test").unwrap()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_coordinator(listener, addr.clone(), experiment, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn inserted(addr: &str) -> u64 {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut c = ReplayClient::new(ch);
    let mut total = 0;
    for shard_id in 0..2 {
        total += c.stats(pb::StatsRequest { shard_id }).await.unwrap().into_inner().inserted_steps_total;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_then_drains_and_exits_zero_on_sigterm() {
    let (addr, _stop) = start("").await;
    let child = Command::new(env!("CARGO_BIN_EXE_actor"))
        .args(["--env", "riab-walls", "--coordinator", &addr, "--envs", "8", "--actor-id", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while inserted(&addr).await < 10_000 {
        assert!(start.elapsed() < Duration::from_secs(30), "the actor never streamed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("draining") && stderr.contains("0 unacknowledged"), "{stderr}");
    // Every acknowledged step is stored (nothing was evicted at this size).
    let line = stderr.lines().find(|l| l.starts_with("actor stopped")).unwrap();
    let steps: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(inserted(&addr).await, steps * 8, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let (addr, _stop) = start("[experiment]\nenv = \"pendulum\"\n").await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--env", "riab-walls", "--coordinator", &addr], "this experiment runs pendulum, not riab-walls"),
        (vec!["--coordinator", &addr], "--env is required"),
        (vec!["--env", "riab-wall", "--coordinator", &addr], "unknown env id `riab-wall`"),
        (vec!["--env", "pendulum", "--coordinator", &addr, "--envs", "0"], "--envs"),
        (vec!["--env", "pendulum", "--coordinator", "127.0.0.1:1", "--connect-timeout-seconds", "0"], "not reachable"),
    ];
    for (args, needle) in cases {
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || Command::new(env!("CARGO_BIN_EXE_actor")).args(&args).output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(needle), "{args:?}: {stderr}");
    }
}
