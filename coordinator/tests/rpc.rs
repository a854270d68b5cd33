//! Every RPC of a coordinator process (control plane and in-process shards) against a real server
//! on 127.0.0.1:0, with bad input: each refusal has the right status code and names its field.

use std::time::Duration;

use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::serve_coordinator;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::insert_request::Kind;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self, Role};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(config: &str) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let experiment = Experiment::new(ConfigDoc::parse(config, "test").unwrap()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_coordinator(listener, addr.clone(), experiment, async {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn actor(env: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        role: Role::Actor as i32,
        env_id: env.into(),
        actor_id: 1,
        incarnation: 9,
        ..Default::default()
    }
}

fn assert_status(s: tonic::Status, code: Code, needle: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(needle), "{:?} lacks {needle:?}", s.message());
}

#[tokio::test]
async fn coordinator_rpcs_refuse_bad_input() {
    let server = Server::start("").await;
    let mut c = CoordinatorClient::new(server.channel().await);
    let bad_role = pb::RegisterRequest { role: 0, ..Default::default() };
    assert_status(c.register(bad_role).await.unwrap_err(), Code::InvalidArgument, "role");
    assert_status(c.register(actor("")).await.unwrap_err(), Code::InvalidArgument, "env_id");
    assert_status(c.register(actor("cartpole")).await.unwrap_err(), Code::InvalidArgument, "cartpole");
    assert_status(
        c.get_experiment(pb::GetExperimentRequest {}).await.unwrap_err(),
        Code::FailedPrecondition,
        "no experiment yet",
    );
    let reg = c.register(actor("riab-walls")).await.unwrap().into_inner();
    assert_eq!((reg.lease_ms, reg.heartbeat_ms), (10_000, 2_000));
    let err = c.register(actor("pendulum")).await.unwrap_err();
    assert_status(err.clone(), Code::FailedPrecondition, "riab-walls");
    assert!(err.message().contains("pendulum"));
    let e = c.get_experiment(pb::GetExperimentRequest {}).await.unwrap().into_inner();
    assert_eq!((e.env_id.as_str(), e.window_steps, e.chunk_steps), ("riab-walls", 7, 64));
    assert!(e.config_toml.contains("thigmotaxis"));
    c.heartbeat(pb::HeartbeatRequest { node_id: reg.node_id }).await.unwrap();
    assert_status(c.heartbeat(pb::HeartbeatRequest { node_id: 999 }).await.unwrap_err(), Code::NotFound, "node_id");
    let map = c.get_shard_map(pb::GetShardMapRequest {}).await.unwrap().into_inner();
    assert_eq!(map.version, 1);
    assert_eq!(map.slots.iter().map(|s| s.shard_id).collect::<Vec<_>>(), [0, 1]);
    assert!(map.slots.iter().all(|s| s.address == server.addr));
    server.stop().await;
}

#[tokio::test]
async fn checkpoint_registry_publish_and_watch() {
    let server = Server::start("[experiment]\nenv = \"pendulum\"\n").await;
    let mut c = CoordinatorClient::new(server.channel().await);
    let entry = |version: u64, uri: &str| pb::CheckpointEntry {
        version,
        step: version * 100,
        uri: uri.into(),
        metrics: [("loss".to_string(), 0.5)].into(),
        ..Default::default()
    };
    assert_status(c.publish_checkpoint(entry(1, "")).await.unwrap_err(), Code::InvalidArgument, "uri");
    let mut nan = entry(1, "file:///x");
    nan.metrics.insert("mmd".into(), f64::NAN);
    assert_status(c.publish_checkpoint(nan).await.unwrap_err(), Code::InvalidArgument, "mmd");
    c.publish_checkpoint(entry(1, "file:///ckpt/1")).await.unwrap();
    c.publish_checkpoint(entry(2, "file:///ckpt/2")).await.unwrap();
    assert_status(
        c.publish_checkpoint(entry(2, "file:///again")).await.unwrap_err(),
        Code::FailedPrecondition,
        "version",
    );
    // A watcher gets the latest entry first, then every new one.
    let mut watch = c.watch_checkpoints(pb::WatchCheckpointsRequest::default()).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!((first.version, first.uri.as_str(), first.metrics["loss"]), (2, "file:///ckpt/2", 0.5));
    assert!(first.published_unix_ms > 0);
    c.publish_checkpoint(entry(3, "file:///ckpt/3")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.version, 3);
    server.stop().await;
}

#[tokio::test]
async fn evaluations_are_claimed_renewed_and_published_once() {
    use pb::claim_evaluation_response::Outcome;
    let server = Server::start("[experiment]\nenv = \"pendulum\"\n").await;
    let mut c = CoordinatorClient::new(server.channel().await);
    for version in 1..=3 {
        let entry = pb::CheckpointEntry {
            version,
            step: version,
            uri: format!("file:///m/{version}"),
            fetch_address: "127.0.0.1:1".into(),
            ..Default::default()
        };
        c.publish_checkpoint(entry).await.unwrap();
    }
    // Policies are versioned on their own.
    let policy = pb::CheckpointEntry {
        version: 1,
        uri: "file:///p/1".into(),
        kind: pb::CheckpointKind::Policy as i32,
        ..Default::default()
    };
    c.publish_checkpoint(policy).await.unwrap();
    // A watcher from version 2 gets the backlog, oldest first, then new entries.
    let from = pb::WatchCheckpointsRequest { from_version: Some(2), ..Default::default() };
    let mut watch = c.watch_checkpoints(from).await.unwrap().into_inner();
    for want in [2, 3] {
        let got = watch.message().await.unwrap().unwrap();
        assert_eq!((got.version, got.fetch_address.as_str()), (want, "127.0.0.1:1"));
        assert_eq!(got.evaluation.unwrap().state(), pb::evaluation::State::Pending);
    }
    let bad_kind = pb::WatchCheckpointsRequest { kind: 7, ..Default::default() };
    assert_status(c.watch_checkpoints(bad_kind).await.err().unwrap(), Code::InvalidArgument, "kind");

    let claim = |version: u64, claimant: &str| pb::ClaimEvaluationRequest {
        version,
        claimant: claimant.into(),
        ..Default::default()
    };
    let got = c.claim_evaluation(claim(2, "a")).await.unwrap().into_inner();
    assert_eq!((got.outcome(), got.lease_ms), (Outcome::Granted, 10_000));
    let got = c.claim_evaluation(claim(2, "b")).await.unwrap().into_inner();
    assert_eq!((got.outcome(), got.holder.as_str()), (Outcome::Held, "a"));
    assert_status(c.claim_evaluation(claim(9, "b")).await.unwrap_err(), Code::NotFound, "version");
    assert_status(c.claim_evaluation(claim(2, "")).await.unwrap_err(), Code::InvalidArgument, "claimant");
    let renew = pb::RenewEvaluationRequest { version: 2, claimant: "a".into(), ..Default::default() };
    c.renew_evaluation(renew).await.unwrap();
    let renew = pb::RenewEvaluationRequest { version: 2, claimant: "b".into(), ..Default::default() };
    assert_status(c.renew_evaluation(renew).await.unwrap_err(), Code::FailedPrecondition, "not claimed by b");
    let result = |claimant: &str| pb::PublishEvaluationRequest {
        version: 2,
        claimant: claimant.into(),
        headline: [("w1_mean".to_string(), 0.75)].into(),
        report_uri: "file:///r/2".into(),
        ..Default::default()
    };
    assert_status(c.publish_evaluation(result("b")).await.unwrap_err(), Code::FailedPrecondition, "version");
    c.publish_evaluation(result("a")).await.unwrap();
    assert_status(c.publish_evaluation(result("a")).await.unwrap_err(), Code::AlreadyExists, "already evaluated");
    assert_eq!(c.claim_evaluation(claim(2, "b")).await.unwrap().into_inner().outcome(), Outcome::Done);
    // Version 1 was never claimed: its publisher may skip it; version 3 stays pending.
    let skip = pb::SkipEvaluationRequest { version: 1, reason: "deleted".into(), ..Default::default() };
    let got = c.skip_evaluation(skip).await.unwrap().into_inner();
    assert_eq!(got.outcome(), pb::skip_evaluation_response::Outcome::Skipped);
    let list = c.list_checkpoints(pb::ListCheckpointsRequest::default()).await.unwrap().into_inner();
    let states: Vec<_> = list.entries.iter().map(|e| e.evaluation.as_ref().unwrap().state()).collect();
    use pb::evaluation::State;
    assert_eq!(states, [State::Skipped, State::Done, State::Pending]);
    let done = list.entries[1].evaluation.as_ref().unwrap();
    assert_eq!(
        (done.headline["w1_mean"], done.report_uri.as_str(), done.claimant.as_str()),
        (0.75, "file:///r/2", "a")
    );
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let server = Server::start("").await;
    let mut h = HealthClient::new(server.channel().await);
    for service in ["dsm.v1.Coordinator", "dsm.v1.Replay"] {
        let r = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }
    server.stop().await;
}

fn stream_id(env_index: u32) -> Option<pb::StreamId> {
    Some(pb::StreamId { actor_id: 1, incarnation: 2, env_index })
}

fn open(shard_id: u32, env_index: u32, obs_dim: u32) -> pb::InsertRequest {
    pb::InsertRequest {
        shard_id,
        kind: Some(Kind::Open(pb::StreamHeader {
            stream: stream_id(env_index),
            obs_dim,
            action_dim: 0,
            has_rewards: false,
            first_seq: 0,
            env_id: "riab-random".into(),
            first_step: 0,
        })),
    }
}

fn chunk(env_index: u32, seq: u64, steps: u32, obs: Vec<f32>, types: Vec<u8>) -> pb::InsertRequest {
    pb::InsertRequest {
        shard_id: 0,
        kind: Some(Kind::Chunk(pb::Chunk {
            stream: stream_id(env_index),
            seq,
            steps,
            observations: proto::pack_f32(&obs),
            step_types: types,
            actions: vec![],
            rewards: vec![],
        })),
    }
}

/// One insert stream; each request gets exactly one response, in order.
struct Inserter {
    tx: mpsc::Sender<pb::InsertRequest>,
    rx: tonic::Streaming<pb::InsertResponse>,
}

impl Inserter {
    async fn new(client: &mut ReplayClient<Channel>) -> Inserter {
        let (tx, rx) = mpsc::channel(16);
        let rx = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Inserter { tx, rx }
    }

    async fn send(&mut self, r: pb::InsertRequest) -> Option<pb::Refusal> {
        self.tx.send(r).await.unwrap();
        self.rx.message().await.unwrap().unwrap().refusal
    }
}

fn assert_refusal(r: Option<pb::Refusal>, code: Code, field: &str, needle: &str) {
    let r = r.unwrap_or_else(|| panic!("accepted; expected a refusal of {field}"));
    assert_eq!((Code::from_i32(r.code), r.field.as_str()), (code, field), "{r:?}");
    assert!(r.message.contains(needle), "{:?} lacks {needle:?}", r.message);
}

#[tokio::test]
async fn insert_refuses_each_malformed_message_and_the_stream_goes_on() {
    let server = Server::start("[replay]\nmax_size = 1000\n").await;
    let mut client = ReplayClient::new(server.channel().await);
    let mut ins = Inserter::new(&mut client).await;
    assert_refusal(
        ins.send(pb::InsertRequest { shard_id: 7, kind: None }).await,
        Code::NotFound,
        "shard_id",
        "no shard 7",
    );
    assert_refusal(ins.send(pb::InsertRequest { shard_id: 0, kind: None }).await, Code::InvalidArgument, "kind", "");
    assert_refusal(ins.send(open(0, 0, 0)).await, Code::InvalidArgument, "open.obs_dim", "got 0");
    let mut no_stream = open(0, 0, 2);
    if let Some(Kind::Open(h)) = &mut no_stream.kind {
        h.stream = None;
    }
    assert_refusal(ins.send(no_stream).await, Code::InvalidArgument, "open.stream", "missing");
    assert_refusal(
        ins.send(chunk(0, 0, 1, vec![1.0, 2.0], vec![0])).await,
        Code::FailedPrecondition,
        "chunk.stream",
        "never opened",
    );
    assert!(ins.send(open(0, 0, 2)).await.is_none());
    assert_refusal(
        ins.send(chunk(0, 0, 2, vec![1.0, 2.0, 3.0], vec![0, 1])).await,
        Code::InvalidArgument,
        "chunk.observations",
        "expected 4",
    );
    assert_refusal(
        ins.send(chunk(0, 0, 1, vec![1.0, f32::NAN], vec![0])).await,
        Code::InvalidArgument,
        "chunk.observations",
        "not finite",
    );
    assert_refusal(
        ins.send(chunk(0, 0, 1, vec![1.0, f32::INFINITY], vec![0])).await,
        Code::InvalidArgument,
        "chunk.observations",
        "not finite",
    );
    assert_refusal(
        ins.send(chunk(0, 0, 1, vec![1.0, 2.0], vec![3])).await,
        Code::InvalidArgument,
        "chunk.step_types",
        "unknown step type 3",
    );
    assert_refusal(
        ins.send(chunk(0, 0, 1, vec![1.0, 2.0], vec![])).await,
        Code::InvalidArgument,
        "chunk.step_types",
        "expected 1",
    );
    assert_refusal(ins.send(chunk(0, 0, 0, vec![], vec![])).await, Code::InvalidArgument, "chunk.steps", "got 0");
    let mut with_rewards = chunk(0, 0, 1, vec![1.0, 2.0], vec![0]);
    if let Some(Kind::Chunk(c)) = &mut with_rewards.kind {
        c.rewards = proto::pack_f32(&[1.0]);
    }
    assert_refusal(ins.send(with_rewards).await, Code::InvalidArgument, "chunk.rewards", "expected 0");
    assert_refusal(
        ins.send(chunk(0, 1, 1, vec![1.0, 2.0], vec![0])).await,
        Code::OutOfRange,
        "chunk.seq",
        "expected 0, got 1",
    );
    // After all that, the stream goes on: valid chunks are stored.
    assert!(ins.send(chunk(0, 0, 2, vec![1.0, 2.0, 3.0, 4.0], vec![0, 1])).await.is_none());
    assert!(ins.send(chunk(0, 1, 1, vec![5.0, 6.0], vec![1])).await.is_none());
    // A second stream with another shape is refused at open.
    assert_refusal(ins.send(open(0, 1, 3)).await, Code::FailedPrecondition, "open", "obs_dim");
    let stats = client.stats(pb::StatsRequest { shard_id: 0 }).await.unwrap().into_inner();
    assert_eq!((stats.size_steps, stats.inserted_steps_total, stats.refused_chunks_total), (3, 3, 9));
    server.stop().await;
}

#[tokio::test]
async fn sample_and_stats_refuse_bad_input_and_account_for_eviction() {
    let server = Server::start("[replay]\nmax_size = 100\nwindow_steps = 3\nchunk_steps = 10\n").await;
    let mut client = ReplayClient::new(server.channel().await);
    let req = |shard_id, count, timeout_ms| pb::SampleRequest { shard_id, count, timeout_ms };
    assert_status(client.sample(req(0, 0, 0)).await.unwrap_err(), Code::InvalidArgument, "count");
    assert_status(client.sample(req(0, 70_000, 0)).await.unwrap_err(), Code::InvalidArgument, "count");
    assert_status(client.sample(req(9, 1, 0)).await.unwrap_err(), Code::NotFound, "shard_id");
    assert_status(client.sample(req(0, 1, 30)).await.unwrap_err(), Code::DeadlineExceeded, "timeout");
    assert_status(client.stats(pb::StatsRequest { shard_id: 2 }).await.unwrap_err(), Code::NotFound, "shard_id");
    let mut ins = Inserter::new(&mut client).await;
    assert!(ins.send(open(0, 0, 1)).await.is_none());
    for seq in 0..25u64 {
        let obs: Vec<f32> = (0..10).map(|i| (seq * 10 + i) as f32).collect();
        let mut types = vec![1u8; 10];
        if seq == 0 {
            types[0] = 0;
        }
        assert!(ins.send(chunk(0, seq, 10, obs, types)).await.is_none());
    }
    let s = client.stats(pb::StatsRequest { shard_id: 0 }).await.unwrap().into_inner();
    assert_eq!((s.size_steps, s.inserted_steps_total, s.evicted_steps_total), (100, 250, 150));
    assert_eq!(s.inserted_steps_total, s.size_steps + s.evicted_steps_total);
    assert_eq!(s.valid_window_starts, 98);
    let limiter = s.limiter.unwrap();
    assert_eq!((limiter.insert_count, limiter.delete_count, limiter.min_size_to_sample), (250, 150, 3));
    let r = client.sample(req(0, 50, 100)).await.unwrap().into_inner();
    assert_eq!((r.windows, r.window_steps, r.obs_dim), (50, 3, 1));
    let obs = proto::unpack_f32("observations", &r.observations, 150).unwrap();
    for (w, start) in r.start_steps.iter().enumerate() {
        assert!(*start >= 150, "never before the eviction point");
        let got = &obs[w * 3..w * 3 + 3];
        assert_eq!(got, [*start as f32, (*start + 1) as f32, (*start + 2) as f32]);
    }
    let s = client.stats(pb::StatsRequest { shard_id: 0 }).await.unwrap().into_inner();
    assert_eq!(s.sampled_windows_total, 50);
    server.stop().await;
}
