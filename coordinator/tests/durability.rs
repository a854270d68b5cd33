//! Shard durability over the real gRPC path: a coordinator with a workdir checkpoints its
//! in-process shards (on request and at shutdown), a restarted one restores them (limiter counters
//! included) and samples at once; a crash loses what was acknowledged after the last checkpoint,
//! and the shard counts it when writers reopen their streams; resent chunks are acknowledged as
//! duplicates, not stored twice; an interrupted checkpoint is skipped on start.

use std::path::Path;

use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::{serve, serve_coordinator, ServeOptions};
use proto::pb::insert_request::Kind;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

/// 16-step chunks, windows of 4, no periodic checkpoint (only on request and at shutdown).
const CONFIG: &str =
    "[replay]\nshards = 1\nmax_size = 10000\nwindow_steps = 4\nchunk_steps = 16\ncheckpoint_seconds = 0\n";
const STEPS: u32 = 16;
const W: u64 = 4;

struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(workdir: &Path) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let experiment = Experiment::new(ConfigDoc::parse(CONFIG, "test").unwrap()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options =
            ServeOptions { advertise: addr.clone(), hosted_shards: None, workdir: Some(workdir.to_path_buf()) };
        let task = tokio::spawn(serve(listener, options, experiment, async {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    async fn client(&self) -> ReplayClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        ReplayClient::new(channel)
    }

    /// A clean stop (SIGTERM's path): the final checkpoint is written before this returns.
    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// SIGKILL's effect on the shard's state: the serving future is dropped mid-flight, and no
    /// final checkpoint is written.
    async fn crash(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

fn stream_id(env_index: u32) -> Option<pb::StreamId> {
    Some(pb::StreamId { actor_id: 3, incarnation: 0x5eed, env_index })
}

fn open(env_index: u32, first_seq: u64, first_step: u64) -> pb::InsertRequest {
    pb::InsertRequest {
        shard_id: 0,
        kind: Some(Kind::Open(pb::StreamHeader {
            stream: stream_id(env_index),
            obs_dim: 2,
            action_dim: 0,
            has_rewards: false,
            first_seq,
            env_id: "riab-random".into(),
            first_step,
        })),
    }
}

/// Chunk `seq` of stream `env_index`: steps `seq·16 ..`, each observation (env, absolute step),
/// so a window's rows show whether they are consecutive steps of one stream.
fn chunk(env_index: u32, seq: u64) -> pb::InsertRequest {
    let first = seq * u64::from(STEPS);
    let obs: Vec<f32> = (first..first + u64::from(STEPS)).flat_map(|s| [env_index as f32, s as f32]).collect();
    pb::InsertRequest {
        shard_id: 0,
        kind: Some(Kind::Chunk(pb::Chunk {
            stream: stream_id(env_index),
            seq,
            steps: STEPS,
            observations: proto::pack_f32(&obs),
            step_types: vec![1; STEPS as usize],
            actions: vec![],
            rewards: vec![],
        })),
    }
}

/// One insert stream; each request gets one response, in order.
struct Writer {
    tx: mpsc::Sender<pb::InsertRequest>,
    rx: tonic::Streaming<pb::InsertResponse>,
}

impl Writer {
    async fn new(client: &mut ReplayClient<Channel>) -> Writer {
        let (tx, rx) = mpsc::channel(16);
        let rx = client.insert(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Writer { tx, rx }
    }

    async fn send(&mut self, r: pb::InsertRequest) -> pb::InsertResponse {
        self.tx.send(r).await.unwrap();
        self.rx.message().await.unwrap().unwrap()
    }

    /// Sends and expects an acknowledgement; returns whether it was a duplicate.
    async fn ack(&mut self, r: pb::InsertRequest) -> bool {
        let response = self.send(r).await;
        assert_eq!(response.refusal, None);
        response.duplicate
    }
}

async fn stats(client: &mut ReplayClient<Channel>) -> pb::StatsResponse {
    client.stats(pb::StatsRequest { shard_id: 0 }).await.unwrap().into_inner()
}

async fn checkpoint(client: &mut ReplayClient<Channel>) -> pb::CheckpointResponse {
    client.checkpoint(pb::CheckpointRequest { shard_id: 0 }).await.unwrap().into_inner()
}

/// Every window of a sample is consecutive steps of one stream; returns (env, start) pairs.
async fn sample(client: &mut ReplayClient<Channel>, count: u32, timeout_ms: u64) -> Vec<(u32, u64)> {
    let r = client.sample(pb::SampleRequest { shard_id: 0, count, timeout_ms }).await.unwrap().into_inner();
    let obs = proto::unpack_f32("observations", &r.observations, (r.windows * r.window_steps * 2) as usize).unwrap();
    let mut out = Vec::new();
    for (w, start) in r.start_steps.iter().enumerate() {
        let rows = &obs[w * 2 * W as usize..(w + 1) * 2 * W as usize];
        for i in 0..W as usize {
            assert_eq!(rows[2 * i + 1], (start + i as u64) as f32, "window {w} is not consecutive");
            assert_eq!(rows[2 * i], rows[0], "window {w} mixes streams");
        }
        out.push((r.streams[w].env_index, *start));
    }
    out
}

#[tokio::test]
async fn a_restarted_shard_restores_its_checkpoint_counts_what_a_crash_lost_and_takes_resends() {
    let workdir = tempfile::tempdir().unwrap();
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let s = stats(&mut client).await;
    assert_eq!((s.restored_from.as_str(), s.checkpoints_total), ("", 0), "a fresh workdir: starting empty");

    // Stream 0: chunks 0..10 before the checkpoint, 10..15 after it (acknowledged, then lost).
    // Stream 1: chunks 0..6 before the checkpoint.
    let mut w = Writer::new(&mut client).await;
    assert!(!w.ack(open(0, 0, 0)).await);
    assert!(!w.ack(open(1, 0, 0)).await);
    for seq in 0..10 {
        assert!(!w.ack(chunk(0, seq)).await);
    }
    for seq in 0..6 {
        assert!(!w.ack(chunk(1, seq)).await);
    }
    sample(&mut client, 25, 1000).await;
    let ckpt = checkpoint(&mut client).await;
    assert_eq!((ckpt.stored_steps, ckpt.chunks), (16 * 16, 16));
    assert!(Path::new(&ckpt.path).join("DONE").is_file());
    assert!(Path::new(&ckpt.path).starts_with(workdir.path().join("shards").join("shard-0")));
    let at_checkpoint = stats(&mut client).await;
    assert_eq!(at_checkpoint.checkpoints_total, 1);
    assert!(at_checkpoint.last_checkpoint_unix_ms > 0);
    for seq in 10..15 {
        assert!(!w.ack(chunk(0, seq)).await);
    }
    drop((w, client));
    server.crash().await;

    // The restart restores the checkpoint: table and limiter counters as they were then.
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let s = stats(&mut client).await;
    assert_eq!(s.restored_from, ckpt.path);
    assert_eq!((s.size_steps, s.inserted_steps_total, s.streams, s.open_streams), (256, 256, 2, 0));
    assert_eq!(s.limiter, at_checkpoint.limiter);
    assert_eq!(s.sampled_windows_total, 25);
    // Sampling does not hang after a restore.
    assert_eq!(sample(&mut client, 8, 200).await.len(), 8);

    // Stream 1's writer lost the acks of chunks 4 and 5: it reopens at chunk 4 and resends.
    let mut w = Writer::new(&mut client).await;
    assert!(!w.ack(open(1, 4, 64)).await);
    assert!(w.ack(chunk(1, 4)).await, "already stored: a duplicate");
    assert!(w.ack(chunk(1, 5)).await);
    assert!(!w.ack(chunk(1, 6)).await, "new: stored");
    assert!(!w.ack(chunk(1, 7)).await);
    // Stream 0's writer had chunks 10..15 acknowledged: it goes on at chunk 15, step 240; the
    // shard lost steps 160..240.
    assert!(!w.ack(open(0, 15, 240)).await);
    // Contradictory opens are refused, naming the field.
    let refused = w.send(open(0, 15, 250)).await.refusal.unwrap();
    assert_eq!((Code::from_i32(refused.code), refused.field.as_str()), (Code::FailedPrecondition, "open.first_step"));
    assert!(!w.ack(chunk(0, 15)).await);
    assert!(!w.ack(chunk(0, 16)).await);
    let s = stats(&mut client).await;
    assert_eq!((s.lost_steps_total, s.duplicate_chunks_total, s.open_streams), (80, 2, 2));
    assert_eq!(s.inserted_steps_total, s.size_steps + s.evicted_steps_total, "inserted = stored + evicted");
    let acknowledged = 17 * 16 + 8 * 16;
    assert_eq!(s.inserted_steps_total + s.lost_steps_total, acknowledged, "acknowledged = inserted + lost");
    // No window spans stream 0's gap [160, 240).
    for (env, start) in sample(&mut client, 2000, 1000).await {
        if env == 0 {
            assert!(start + W <= 160 || start >= 240, "a window at {start} spans the gap");
        }
    }
    drop((w, client));

    // A clean stop writes a final checkpoint; the next start restores it, losing nothing.
    let before = {
        let mut client = server.client().await;
        stats(&mut client).await
    };
    server.stop().await;
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let s = stats(&mut client).await;
    assert_ne!(s.restored_from, ckpt.path);
    assert_eq!((s.size_steps, s.inserted_steps_total, s.lost_steps_total), (before.size_steps, 320, 80));
    assert_eq!(s.duplicate_chunks_total, 2);
    assert_eq!(s.limiter.as_ref().map(|l| l.insert_count), before.limiter.as_ref().map(|l| l.insert_count));
    let mut w = Writer::new(&mut client).await;
    assert!(!w.ack(open(0, 17, 272)).await);
    assert!(!w.ack(chunk(0, 17)).await);
    assert_eq!(stats(&mut client).await.lost_steps_total, 80, "nothing lost across a clean stop");
    drop((w, client));
    server.stop().await;
}

/// An interrupted checkpoint (no DONE, or a truncated file) is skipped on start: the shard falls
/// back to the previous complete one.
#[tokio::test]
async fn an_interrupted_checkpoint_is_skipped_on_start() {
    let workdir = tempfile::tempdir().unwrap();
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let mut w = Writer::new(&mut client).await;
    assert!(!w.ack(open(0, 0, 0)).await);
    assert!(!w.ack(chunk(0, 0)).await);
    let first = checkpoint(&mut client).await;
    assert!(!w.ack(chunk(0, 1)).await);
    let second = checkpoint(&mut client).await;
    assert_eq!((first.stored_steps, second.stored_steps), (16, 32));
    drop((w, client));
    server.crash().await;

    // The newest loses its DONE marker: the restart takes the first.
    std::fs::remove_file(Path::new(&second.path).join("DONE")).unwrap();
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let s = stats(&mut client).await;
    assert_eq!((s.restored_from.as_str(), s.size_steps), (first.path.as_str(), 16));
    drop(client);
    server.crash().await;

    // The first's file is truncated too: nothing complete is left, so the shard starts empty.
    let data = Path::new(&first.path).join("shard.bin");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len - 7).unwrap();
    let server = Server::start(workdir.path()).await;
    let mut client = server.client().await;
    let s = stats(&mut client).await;
    assert_eq!((s.restored_from.as_str(), s.size_steps), ("", 0));
    drop(client);
    server.stop().await;
}

/// Without a workdir there is nowhere to write: `Checkpoint` says so. An unknown shard is NOT_FOUND.
#[tokio::test]
async fn checkpoint_refuses_without_a_workdir_and_for_unknown_shards() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let experiment = Experiment::new(ConfigDoc::parse(CONFIG, "test").unwrap()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_coordinator(listener, addr.clone(), experiment, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = ReplayClient::new(channel);
    let err = client.checkpoint(pb::CheckpointRequest { shard_id: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no checkpoint directory"), "{}", err.message());
    let err = client.checkpoint(pb::CheckpointRequest { shard_id: 5 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
