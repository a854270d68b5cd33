//! `replay_bench`: how fast one replay shard ingests and serves, and what it costs in memory, over
//! the real gRPC path on loopback. `docs/benchmarks.md` ("Replay shard") holds a run's numbers,
//! the machine and the caveats; this file is the method.
//!
//! # What it measures
//!
//! - **Ingest** (transitions/s into one shard): synthetic chunks of 64 steps, built as
//!   `InsertRequest`s *before* the clock starts, so neither a simulator nor payload generation is
//!   measured (tonic still serialises each message at send time: a copy of its bytes, counted).
//!   Each stream gets its own `Insert` RPC on its own connection, as N single-env actors would, with
//!   at most 16 unacknowledged chunks per RPC (`replay.max_in_flight_chunks`'s default). One extra
//!   row sends 16 streams over one RPC, as one actor with 16 envs does. The rate is steps acknowledged
//!   without refusal, divided by the time from the first send to the last acknowledgement; the
//!   shard's `Stats` must then agree on the steps inserted and count no refusal.
//! - **Naive baseline**: there is no unary insert RPC, so one round trip per transition is emulated on
//!   the same `Insert` stream: chunks of ONE step, exactly one in flight.
//! - **Sample** (windows/s): after filling a shard with 1M steps from 16 streams, `Sample` calls of
//!   256 and 1024 windows from 1 and 4 clients (one connection each), and the same draws made
//!   in-process through `Shard::sample` (no gRPC), to show where the time goes. The in-process
//!   case also prints what a checkpoint of that full shard costs: the snapshot under the shard's
//!   lock against the write (and fsync) that follows outside it.
//! - **Memory**: a child process (a fresh heap, so earlier cases cannot pollute it) starts a server,
//!   reads `VmRSS`/`VmHWM` from `/proc/self/status`, fills the shard with 1M steps (chunks generated
//!   on the fly, never more than 16 alive per stream), reads them again and reports MiB per million
//!   stored steps, next to the payload's own size.
//!
//! Each configuration gets a fresh server (so counters and memory never mix), running on its own
//! tokio runtime with its own worker threads (named `srv-*`), while the clients run on another
//! (`cli-*`), as two processes on one machine would. Per-thread CPU time from `/proc/self/task`
//! says how many cores each side used: a hint at what bounds the rate.
//!
//! Both ends of every connection have TCP_NODELAY: `serve_coordinator` sets it on the sockets it
//! accepts, and the clients connect as the actor does. (Before commit a7c92e4 the server's sockets
//! kept Nagle's algorithm on, which this benchmark found; docs/benchmarks.md keeps the history.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::replay_config::ReplayConfig;
use coordinator::server::serve_coordinator;
use coordinator::service::validate;
use coordinator::shard::{PackedWindows, Shard};
use coordinator::shard_checkpoint::CheckpointDir;
use coordinator::table::StreamSpec;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self, insert_request::Kind};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Reverb, as a user measured it (google-deepmind/reverb issue #58): about 224K frames/s with one
/// server. Every rate is set against it. (The 268K is another row of the same table: four
/// independent one-server experiments launched at once on one machine, not a consumer's ceiling.)
/// Other hardware, other payloads: a reference point, not a measurement of this run.
const REVERB_FPS: f64 = 224_000.0;
/// The goals, per shard.
const GOAL_INGEST: f64 = 1_000_000.0;
const GOAL_SAMPLE: f64 = 200_000.0;

/// Steps per chunk (the Conventions' default) and unacknowledged chunks per RPC
/// (`replay.max_in_flight_chunks`'s default).
const CHUNK_STEPS: usize = 64;
const IN_FLIGHT: usize = 16;
/// The incarnation every benchmark stream uses (any value; streams differ by actor and env index).
const INCARNATION: u64 = 0xbe9c_0000_0000_0001;
/// Distinct synthetic payloads per env; chunks cycle through them.
const PAYLOAD_VARIANTS: usize = 16;

/// Throughput and memory of one replay shard over loopback gRPC (see docs/benchmarks.md).
#[derive(Debug, Parser)]
#[command(name = "replay_bench")]
struct Cli {
    /// Seconds per timed measurement (each ingest configuration, each sampling configuration).
    /// The naive baseline runs for half as long.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// A short run (under 20 s on 2 cores): 0.3 s per measurement, 200K-step fills.
    #[arg(long)]
    quick: bool,
    /// Run only the measurements whose name contains this text. Names: `naive ENV`,
    /// `ingest ENV STREAMS/RPCS` (1/1, 4/4, 16/16, 16/1), `sample ENV`, `in-process ENV`,
    /// `memory ENV` (ENV is riab or pendulum), e.g. `--only "ingest riab 16/16"` under a profiler.
    #[arg(long)]
    only: Option<String>,
    /// Internal: be the memory child for this env and print one `memory` line.
    #[arg(long, hide = true)]
    memory_child: Option<Env>,
    /// Internal: steps the memory child stores.
    #[arg(long, hide = true, default_value_t = 1_000_000)]
    memory_steps: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Env {
    /// RatInABox random foraging: 50 place-cell rates per step, no action, no reward.
    Riab,
    /// Pendulum: [cos θ, sin θ, θ̇], one action and one reward per step.
    Pendulum,
}

impl Env {
    fn id(self) -> &'static str {
        match self {
            Env::Riab => "riab-random",
            Env::Pendulum => "pendulum",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Env::Riab => "riab",
            Env::Pendulum => "pendulum",
        }
    }

    fn spec(self) -> StreamSpec {
        match self {
            Env::Riab => StreamSpec { obs_dim: 50, action_dim: 0, has_rewards: false },
            Env::Pendulum => StreamSpec { obs_dim: 3, action_dim: 1, has_rewards: true },
        }
    }

    /// Payload bytes of one step: the floats plus the step-type byte.
    fn step_bytes(self) -> usize {
        let s = self.spec();
        4 * (s.obs_dim + s.action_dim + usize::from(s.has_rewards)) + 1
    }

    /// Step type of a stream's step `t`: riab is one endless episode, Pendulum episodes are 201
    /// rows (FIRST, 199 MID, LAST), as the simulators write them.
    fn step_type(self, t: u64) -> u8 {
        match self {
            Env::Riab => u8::from(t != 0),
            Env::Pendulum => match t % 201 {
                0 => 0,
                200 => 2,
                _ => 1,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic chunks
// ---------------------------------------------------------------------------------------------

/// Packed payloads of `PAYLOAD_VARIANTS` distinct chunks of one env. Values are finite (the shard
/// refuses NaN) and vary, so nothing downstream can special-case a constant.
struct Synth {
    env: Env,
    steps: usize,
    observations: Vec<Vec<u8>>,
    actions: Vec<Vec<u8>>,
    rewards: Vec<Vec<u8>>,
}

impl Synth {
    fn new(env: Env, steps: usize) -> Synth {
        let spec = env.spec();
        let floats = |v: usize, n: usize| -> Vec<u8> {
            let values: Vec<f32> = (0..n).map(|i| ((v * 7919 + i) % 1024) as f32 / 1024.0 - 0.5).collect();
            proto::pack_f32(&values)
        };
        Synth {
            env,
            steps,
            observations: (0..PAYLOAD_VARIANTS).map(|v| floats(v, steps * spec.obs_dim)).collect(),
            actions: (0..PAYLOAD_VARIANTS).map(|v| floats(v + 1, steps * spec.action_dim)).collect(),
            rewards: (0..PAYLOAD_VARIANTS).map(|v| floats(v + 2, if spec.has_rewards { steps } else { 0 })).collect(),
        }
    }

    fn open(&self, stream: &pb::StreamId) -> pb::InsertRequest {
        let spec = self.env.spec();
        pb::InsertRequest {
            shard_id: 0,
            kind: Some(Kind::Open(pb::StreamHeader {
                stream: Some(*stream),
                obs_dim: spec.obs_dim as u32,
                action_dim: spec.action_dim as u32,
                has_rewards: spec.has_rewards,
                first_seq: 0,
                env_id: self.env.id().to_string(),
                first_step: 0,
            })),
        }
    }

    fn chunk(&self, stream: &pb::StreamId, seq: u64) -> pb::Chunk {
        let v = seq as usize % PAYLOAD_VARIANTS;
        let first = seq * self.steps as u64;
        pb::Chunk {
            stream: Some(*stream),
            seq,
            steps: self.steps as u32,
            observations: self.observations[v].clone(),
            step_types: (0..self.steps as u64).map(|t| self.env.step_type(first + t)).collect(),
            actions: self.actions[v].clone(),
            rewards: self.rewards[v].clone(),
        }
    }

    fn insert(&self, stream: &pb::StreamId, seq: u64) -> pb::InsertRequest {
        pb::InsertRequest { shard_id: 0, kind: Some(Kind::Chunk(self.chunk(stream, seq))) }
    }
}

fn stream_id(actor: u64, env_index: u32) -> pb::StreamId {
    pb::StreamId { actor_id: actor, incarnation: INCARNATION, env_index }
}

/// The messages of one `Insert` RPC: an open per stream, then `chunks` chunks dealt round-robin
/// over the streams, each stream's sequence numbers consecutive from 0.
fn schedule(
    synth: Arc<Synth>,
    streams: Vec<pb::StreamId>,
    chunks: usize,
) -> impl Iterator<Item = pb::InsertRequest> + Send + 'static {
    let opens: Vec<pb::InsertRequest> = streams.iter().map(|s| synth.open(s)).collect();
    let n = streams.len();
    opens.into_iter().chain((0..chunks).map(move |i| synth.insert(&streams[i % n], (i / n) as u64)))
}

// ---------------------------------------------------------------------------------------------
// The server, the clients and the CPU accounting
// ---------------------------------------------------------------------------------------------

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// An in-process coordinator with one shard, on its own runtime and OS threads.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// `serve_coordinator` on `127.0.0.1:0`, exactly as the coordinator binary runs it (it sets
    /// TCP_NODELAY on the sockets it accepts).
    fn start(env: Env, max_size: u64) -> Result<Server> {
        let text =
            format!("[experiment]\nenv = \"{}\"\nseed = 0\n[replay]\nshards = 1\nmax_size = {max_size}\n", env.id());
        let experiment = Experiment::new(ConfigDoc::parse(&text, "replay_bench")?)?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("srv-main".into()).spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores())
                .thread_name("srv-worker")
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let _ = addr_tx.send(addr);
                serve_coordinator(listener, addr.to_string(), experiment, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        })?;
        match addr_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => Ok(Server { addr, stop: Some(stop_tx), thread: Some(thread) }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e.context("starting the server")),
                _ => bail!("the server did not start within 10 s"),
            },
        }
    }

    /// Stops the server; waits at most 10 s for a graceful end (the server ends its own long-lived
    /// streams on shutdown, and every client should be gone anyway).
    fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().expect("stopped once");
        let until = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            if Instant::now() > until {
                eprintln!("warning: the server did not stop within 10 s; leaving it behind");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().map_err(|_| anyhow!("the server thread panicked"))?
    }
}

/// A connection as the actor opens one (`client::connect::endpoint`: no Nagle, adaptive HTTP/2
/// windows, keepalive, the protocol's message limits).
async fn connect(addr: SocketAddr) -> Result<ReplayClient<Channel>> {
    let channel = client::connect::endpoint(&addr.to_string())?.connect().await?;
    Ok(client::connect::replay_client(channel))
}

async fn stats(addr: SocketAddr) -> Result<pb::StatsResponse> {
    let mut client = connect(addr).await?;
    Ok(client
        .stats(pb::StatsRequest { shard_id: 0 })
        .await
        .map_err(|s| anyhow!("Stats: {}", s.message()))?
        .into_inner())
}

/// What one `Insert` RPC achieved.
struct Driven<I> {
    acked_chunks: u64,
    last_ack: Instant,
    /// The requests never sent, handed back so that freeing them happens after the clock stops.
    _unsent: I,
}

/// Sends `requests` (its first `opens` are stream headers) over one `Insert` RPC, keeping at most
/// `in_flight` chunks unacknowledged and sending nothing new after `stop_at`. Any refusal fails.
async fn drive<I>(
    mut client: ReplayClient<Channel>,
    opens: usize,
    requests: I,
    in_flight: usize,
    stop_at: Instant,
) -> Result<Driven<I>>
where
    I: Iterator<Item = pb::InsertRequest> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<pb::InsertRequest>(in_flight + opens);
    let permits = Arc::new(Semaphore::new(in_flight));
    let sender = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut requests = requests;
            for r in requests.by_ref().take(opens) {
                if tx.send(r).await.is_err() {
                    return requests;
                }
            }
            while Instant::now() < stop_at {
                let Ok(permit) = permits.acquire().await else { break };
                permit.forget();
                let Some(r) = requests.next() else { break };
                if tx.send(r).await.is_err() {
                    break;
                }
            }
            requests // dropping `tx` here half-closes the RPC; the server then ends it
        })
    };
    let result = async {
        let mut responses =
            client.insert(ReceiverStream::new(rx)).await.map_err(|s| anyhow!("Insert: {}", s.message()))?.into_inner();
        let (mut seen, mut acked, mut last_ack) = (0usize, 0u64, Instant::now());
        while let Some(r) = responses.message().await.map_err(|s| anyhow!("Insert stream: {}", s.message()))? {
            if let Some(f) = r.refusal {
                bail!("the shard refused seq {} of {:?}: {}: {}", r.seq, r.stream, f.field, f.message);
            }
            seen += 1;
            if seen > opens {
                acked += 1;
                last_ack = Instant::now();
                permits.add_permits(1);
            }
        }
        Ok((acked, last_ack))
    }
    .await;
    permits.close(); // a sender waiting for a permit after a failure gives up
    let unsent = sender.await?;
    let (acked_chunks, last_ack) = result?;
    Ok(Driven { acked_chunks, last_ack, _unsent: unsent })
}

/// CPU seconds used so far by the server's threads and by everything else (the clients).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    client: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu { server: self.server - o.server, client: self.client - o.client }
    }
}

/// Sums utime + stime of every live thread, by name. `/proc` reports clock ticks of 1/100 s
/// (USER_HZ, fixed at 100 on Linux's x86-64 and arm64 ABIs), so short cases are coarse.
fn cpu_now() -> Cpu {
    let mut cpu = Cpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return cpu };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("stat")))
        else {
            continue;
        };
        // Fields after the parenthesised name: state is the 3rd field, utime the 14th, stime the 15th.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let seconds = (ticks(11) + ticks(12)) / 100.0;
        if comm.starts_with("srv") {
            cpu.server += seconds;
        } else {
            cpu.client += seconds;
        }
    }
    cpu
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).ok_or_else(|| anyhow!("no {name} in /proc"))?;
        Ok(line[name.len()..].trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Ingest,
    Naive,
    InProcessInsert,
    Sample,
    InProcessSample,
}

/// One line of the results table.
#[derive(Debug, Clone)]
struct Row {
    measure: Measure,
    env: Env,
    setup: String,
    /// Transitions acknowledged, or windows received.
    amount: u64,
    seconds: f64,
    cpu: Cpu,
    note: &'static str,
}

impl Row {
    fn rate(&self) -> f64 {
        self.amount as f64 / self.seconds
    }
}

/// How an ingest case spreads its streams over RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One `Insert` RPC, on its own connection, per stream: N single-env actors.
    RpcPerStream,
    /// One `Insert` RPC carrying every stream: one actor with N envs.
    OneRpc,
}

struct IngestCase {
    env: Env,
    streams: usize,
    layout: Layout,
    chunk_steps: usize,
    in_flight: usize,
    /// Steps pre-built: the clock stops at `seconds` or when they are all acknowledged.
    budget_steps: usize,
    seconds: f64,
}

async fn ingest(case: &IngestCase) -> Result<Row> {
    let server = Server::start(case.env, 1_000_000)?;
    let addr = server.addr;
    let synth = Arc::new(Synth::new(case.env, case.chunk_steps));
    let groups: Vec<Vec<pb::StreamId>> = match case.layout {
        Layout::RpcPerStream => (0..case.streams).map(|i| vec![stream_id(i as u64, 0)]).collect(),
        Layout::OneRpc => vec![(0..case.streams).map(|i| stream_id(0, i as u32)).collect()],
    };
    let chunks_per_rpc = (case.budget_steps / case.chunk_steps / groups.len()).max(1);
    // Build every message and open every connection before the clock starts.
    let mut prepared = Vec::new();
    for streams in groups {
        let opens = streams.len();
        let requests: Vec<pb::InsertRequest> = schedule(synth.clone(), streams, chunks_per_rpc).collect();
        prepared.push((connect(addr).await?, opens, requests));
    }
    let budget = (chunks_per_rpc * prepared.len()) as u64;
    let cpu0 = cpu_now();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(case.seconds);
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(client, opens, requests)| {
            tokio::spawn(drive(client, opens, requests.into_iter(), case.in_flight, stop_at))
        })
        .collect();
    let mut driven = Vec::new();
    for t in tasks {
        driven.push(t.await??);
    }
    let end = driven.iter().map(|d| d.last_ack).max().unwrap_or(start);
    let cpu = cpu_now() - cpu0;
    let acked: u64 = driven.iter().map(|d| d.acked_chunks).sum();
    drop(driven);
    let s = stats(addr).await?;
    let steps = acked * case.chunk_steps as u64;
    ensure!(
        s.inserted_steps_total == steps && s.refused_chunks_total == 0,
        "the shard counts {} steps inserted and {} refusals; the clients saw {steps} steps acknowledged",
        s.inserted_steps_total,
        s.refused_chunks_total
    );
    server.stop()?;
    let rpcs = match case.layout {
        Layout::RpcPerStream => case.streams,
        Layout::OneRpc => 1,
    };
    let measure = if case.chunk_steps == 1 && case.in_flight == 1 { Measure::Naive } else { Measure::Ingest };
    Ok(Row {
        measure,
        env: case.env,
        setup: format!(
            "{} stream{} / {rpcs} RPC{}, {} step{}/chunk, {} in flight{}",
            case.streams,
            if case.streams == 1 { "" } else { "s" },
            if rpcs == 1 { "" } else { "s" },
            case.chunk_steps,
            if case.chunk_steps == 1 { "" } else { "s" },
            case.in_flight,
            if rpcs > 1 { " per RPC" } else { "" }
        ),
        amount: steps,
        seconds: end.duration_since(start).as_secs_f64(),
        cpu,
        note: if acked == budget { "all pre-built chunks sent before the time limit" } else { "" },
    })
}

/// Fills a running server's shard with `steps` steps from 16 streams (chunks built on the fly,
/// untimed) and checks that it holds them.
async fn fill(addr: SocketAddr, env: Env, steps: usize) -> Result<()> {
    const STREAMS: usize = 16;
    let synth = Arc::new(Synth::new(env, CHUNK_STEPS));
    let chunks = steps / CHUNK_STEPS;
    let far = Instant::now() + Duration::from_secs(3600);
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mine = chunks / STREAMS + usize::from(i < chunks % STREAMS);
        let requests = schedule(synth.clone(), vec![stream_id(i as u64, 0)], mine);
        tasks.push(tokio::spawn(drive(connect(addr).await?, 1, requests, IN_FLIGHT, far)));
    }
    for t in tasks {
        t.await??;
    }
    let s = stats(addr).await?;
    ensure!(s.size_steps == (chunks * CHUNK_STEPS) as u64, "the shard holds {} steps after the fill", s.size_steps);
    Ok(())
}

/// Windows/s from `clients` concurrent `Sample` callers asking for `count` windows each call.
async fn sample(server: &Server, env: Env, clients: usize, count: usize, seconds: f64) -> Result<Row> {
    let addr = server.addr;
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(connect(addr).await?);
    }
    let obs_dim = env.spec().obs_dim;
    let cpu0 = cpu_now();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let (mut windows, mut last) = (0u64, Instant::now());
                while Instant::now() < stop_at {
                    let request = pb::SampleRequest { shard_id: 0, count: count as u32, timeout_ms: 1000 };
                    let r = client.sample(request).await.map_err(|s| anyhow!("Sample: {}", s.message()))?.into_inner();
                    let w = r.window_steps as usize;
                    ensure!(
                        r.windows as usize == count && r.observations.len() == count * w * obs_dim * 4,
                        "asked for {count} windows, got {} ({} observation bytes)",
                        r.windows,
                        r.observations.len()
                    );
                    windows += u64::from(r.windows);
                    last = Instant::now();
                }
                Ok::<_, anyhow::Error>((windows, last))
            })
        })
        .collect();
    let (mut windows, mut end) = (0, start);
    for t in tasks {
        let (w, last) = t.await??;
        windows += w;
        end = end.max(last);
    }
    Ok(Row {
        measure: Measure::Sample,
        env,
        setup: format!(
            "{clients} client{}, {count} windows/call, W = 7",
            if clients == 1 { "" } else { "s (1 connection each)" }
        ),
        amount: windows,
        seconds: end.duration_since(start).as_secs_f64(),
        cpu: cpu_now() - cpu0,
        note: "",
    })
}

/// The server's work without gRPC, on one thread: `validate::chunk` + `Shard::insert` (what the
/// service does per chunk) on pre-built chunks from 16 streams, `rounds` times `fill_steps` steps
/// (so every round after the first also evicts), timing only the inserts; then `Shard::sample`
/// with a fresh output per call, as the service calls it.
/// What a checkpoint of the full in-process shard costs: how long the snapshot holds the shard's
/// lock (inserts and samples wait for this only) against the write that follows outside it (to
/// the system's temporary directory, fsync included), and reading it back. One line on stderr.
fn checkpoint_cost(shard: &Shard, env: Env) -> Result<()> {
    let root = std::env::temp_dir().join(format!("replay_bench-checkpoint-{}", std::process::id()));
    let dir = CheckpointDir::new(&root, 1);
    let start = Instant::now();
    let snapshot = shard.snapshot();
    let locked = start.elapsed();
    let start = Instant::now();
    let written = dir.write(&snapshot, 1);
    let write = start.elapsed();
    drop(snapshot);
    let start = Instant::now();
    let loaded = dir.load_latest(shard.id());
    let read = start.elapsed();
    let _ = std::fs::remove_dir_all(&root);
    let written = written?;
    ensure!(loaded?.checkpoint.is_some(), "the checkpoint just written did not load");
    eprintln!(
        "  checkpoint {}: {} steps in {} chunks, {:.0} MB: snapshot under the lock {:.2} ms, write + fsync {:.0} ms, \
         read back {:.0} ms ({})",
        env.name(),
        thousands(written.stored_steps as f64),
        thousands(written.chunks as f64),
        written.bytes as f64 / 1e6,
        locked.as_secs_f64() * 1e3,
        write.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        root.parent().map_or_else(String::new, |p| p.display().to_string()),
    );
    Ok(())
}

fn in_process(env: Env, fill_steps: usize, rounds: usize, count: usize, seconds: f64) -> Result<[Row; 2]> {
    const STREAMS: u64 = 16;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let limiter = ReplayConfig::default().limiter().map_err(anyhow::Error::msg)?;
    let shard = Shard::new(0, 1_000_000, 7, limiter, 0);
    let synth = Synth::new(env, CHUNK_STEPS);
    let ids: Vec<pb::StreamId> = (0..STREAMS).map(|i| stream_id(i, 0)).collect();
    for id in &ids {
        let Some(Kind::Open(header)) = synth.open(id).kind else { unreachable!("open() builds an open") };
        let (key, spec) = validate::header(&header).map_err(|r| anyhow!("{r}"))?;
        shard.open(0, key, spec, 0, 0).map_err(|r| anyhow!("{r}"))?;
    }
    let per_round = fill_steps / CHUNK_STEPS;
    let (mut steps, mut timed) = (0u64, Duration::ZERO);
    for round in 0..rounds {
        let first = round * per_round;
        let chunks: Vec<pb::Chunk> = (first..first + per_round)
            .map(|i| synth.chunk(&ids[i % STREAMS as usize], (i / STREAMS as usize) as u64))
            .collect();
        let start = Instant::now();
        rt.block_on(async {
            for c in chunks {
                let (key, data) = validate::chunk(&shard, c).map_err(|r| anyhow!("{r}"))?;
                shard.insert(key, data, None).await.map_err(|r| anyhow!("{r}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        timed += start.elapsed();
        steps += (per_round * CHUNK_STEPS) as u64;
    }
    ensure!(shard.stats().inserted_steps == steps, "the in-process shard did not take every step");
    checkpoint_cost(&shard, env)?;
    let insert = Row {
        measure: Measure::InProcessInsert,
        env,
        setup: format!(
            "16 streams, {CHUNK_STEPS} steps/chunk, {rounds} × {} steps into a 1M-step table{}",
            thousands(fill_steps as f64),
            if rounds > 1 && fill_steps >= 1_000_000 { " (evicting after the first)" } else { "" }
        ),
        amount: steps,
        seconds: timed.as_secs_f64(),
        cpu: Cpu::default(),
        note: "",
    };

    let start = Instant::now();
    let windows = rt.block_on(async {
        let mut windows = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            let mut out = PackedWindows::default();
            shard.sample(count, Instant::now() + Duration::from_secs(1), &mut out).await.map_err(|r| anyhow!("{r}"))?;
            ensure!(out.len() == count, "asked for {count} windows, got {}", out.len());
            windows += out.len() as u64;
        }
        Ok::<_, anyhow::Error>(windows)
    })?;
    let sample = Row {
        measure: Measure::InProcessSample,
        env,
        setup: format!("{count} windows/call from {} stored steps, W = 7", thousands(shard.stats().size_steps as f64)),
        amount: windows,
        seconds: start.elapsed().as_secs_f64(),
        cpu: Cpu::default(),
        note: "",
    };
    Ok([insert, sample])
}

/// What the memory child reports.
#[derive(Debug, Clone, Copy)]
struct Memory {
    env: Env,
    steps: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    hwm_after_kib: u64,
    stored_bytes: u64,
}

/// The memory child: a fresh process starts a server, fills it, and prints one `memory` line.
fn memory_child(env: Env, steps: u64) -> Result<()> {
    let rt = client_runtime()?;
    rt.block_on(async {
        let server = Server::start(env, steps.max(1_000))?;
        let addr = server.addr;
        let _ = stats(addr).await?; // the server has served once: its lazy state exists
        let (rss_before, _) = memory_kib()?;
        fill(addr, env, steps as usize).await?;
        let s = stats(addr).await?;
        let (rss_after, hwm_after) = memory_kib()?;
        println!(
            "memory steps={} rss_before_kib={rss_before} rss_after_kib={rss_after} hwm_after_kib={hwm_after} stored_bytes={}",
            s.size_steps, s.stored_bytes
        );
        server.stop()
    })
}

fn memory(env: Env, steps: u64) -> Result<Memory> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["--memory-child", env.name(), "--memory-steps", &steps.to_string()])
        .output()
        .context("running the memory child")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "the memory child failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("memory ")).ok_or_else(|| anyhow!("no memory line: {stdout}"))?;
    let fields: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |k: &str| fields.get(k).copied().ok_or_else(|| anyhow!("memory line lacks {k}: {line}"));
    Ok(Memory {
        env,
        steps: get("steps")?,
        rss_before_kib: get("rss_before_kib")?,
        rss_after_kib: get("rss_after_kib")?,
        hwm_after_kib: get("hwm_after_kib")?,
        stored_bytes: get("stored_bytes")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let arch = command_output("uname", &["-m"]).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| format!(", {:.0} GiB RAM", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{} cores (nproc), {arch}, {cpu}{mem}", cores())
}

fn commit() -> String {
    let Some(head) = command_output("git", &["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    match command_output("git", &["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head} (working tree modified)"),
        _ => head,
    }
}

fn print_report(rows: &[Row], memory: &[Memory], seconds: f64) {
    // The naive baseline of the same env, in the same run.
    let naive: HashMap<&str, f64> =
        rows.iter().filter(|r| r.measure == Measure::Naive).map(|r| (r.env.name(), r.rate())).collect();
    let naive_of = |r: &Row| naive.get(r.env.name()).copied();
    println!();
    println!("machine: {}", machine());
    println!("commit:  {}", commit());
    println!("seconds per measurement: {seconds}");
    println!();
    println!(
        "| measurement | env | setup | amount | s | rate /s | vs naive | vs Reverb | vs goal | CPU server + client (cores) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let (what, reverb, goal) = match r.measure {
            Measure::Ingest => ("ingest, transitions/s", REVERB_FPS, GOAL_INGEST),
            Measure::Naive => ("naive baseline, transitions/s", REVERB_FPS, GOAL_INGEST),
            Measure::InProcessInsert => ("in-process validate + insert, transitions/s", REVERB_FPS, GOAL_INGEST),
            Measure::Sample => ("sample, windows/s", REVERB_FPS, GOAL_SAMPLE),
            Measure::InProcessSample => ("in-process Shard::sample, windows/s", REVERB_FPS, GOAL_SAMPLE),
        };
        let vs_naive = match (r.measure, naive_of(r)) {
            (Measure::Ingest | Measure::Naive | Measure::InProcessInsert, Some(n)) => ratio(r.rate() / n),
            _ => "—".into(),
        };
        let cpu = match r.measure {
            Measure::InProcessInsert | Measure::InProcessSample => "1 thread".into(),
            _ => format!("{:.2} + {:.2}", r.cpu.server / r.seconds, r.cpu.client / r.seconds),
        };
        let note = if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) };
        println!(
            "| {what} | {} | {}{note} | {} | {:.3} | {} | {vs_naive} | {} | {} | {cpu} |",
            r.env.name(),
            r.setup,
            thousands(r.amount as f64),
            r.seconds,
            thousands(r.rate()),
            ratio(r.rate() / reverb),
            ratio(r.rate() / goal),
        );
    }
    if !memory.is_empty() {
        println!();
        println!("| env | steps stored | payload MiB/M steps | table's stored_bytes MiB/M | RSS growth MiB/M | peak (HWM) growth MiB/M | RSS / payload |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for m in memory {
            let per_m = |bytes: f64| bytes / (m.steps as f64 / 1e6) / (1024.0 * 1024.0);
            let payload = per_m((m.env.step_bytes() as u64 * m.steps) as f64);
            let rss = per_m(((m.rss_after_kib.saturating_sub(m.rss_before_kib)) * 1024) as f64);
            let hwm = per_m(((m.hwm_after_kib.saturating_sub(m.rss_before_kib)) * 1024) as f64);
            println!(
                "| {} | {} | {payload:.1} | {:.1} | {rss:.1} | {hwm:.1} | {:.2}× |",
                m.env.name(),
                thousands(m.steps as f64),
                per_m(m.stored_bytes as f64),
                rss / payload
            );
        }
    }
    println!();
    println!(
        "vs Reverb: every row against {} frames/s, one Reverb server as a user measured it \
         (google-deepmind/reverb#58); goals: {} transitions/s, {} windows/s.",
        thousands(REVERB_FPS),
        thousands(GOAL_INGEST),
        thousands(GOAL_SAMPLE)
    );
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("cli-worker")
        .enable_all()
        .build()?)
}

fn wanted(only: &Option<String>, name: &str) -> bool {
    only.as_deref().is_none_or(|o| name.contains(o))
}

fn run(cli: Cli) -> Result<()> {
    if let Some(env) = cli.memory_child {
        return memory_child(env, cli.memory_steps);
    }
    let seconds = if cli.quick { cli.seconds.min(0.3) } else { cli.seconds };
    ensure!(seconds > 0.0 && seconds.is_finite(), "--seconds must be positive");
    let fill_steps: usize = if cli.quick { 200_000 } else { 1_000_000 };
    let rounds = if cli.quick { 2 } else { 5 };
    let envs = [Env::Riab, Env::Pendulum];
    let rt = client_runtime()?;
    let mut rows = Vec::new();
    let total = Instant::now();
    let mut record = |row: Row| {
        eprintln!(
            "  {:>12} /s  {} {:?} [{}] ({:.1} s elapsed)",
            thousands(row.rate()),
            row.env.name(),
            row.measure,
            row.setup,
            total.elapsed().as_secs_f64()
        );
        rows.push(row);
    };

    for env in envs {
        let name = format!("naive {}", env.name());
        if wanted(&cli.only, &name) {
            eprintln!("{name}: 1-step chunks, one in flight");
            let case = IngestCase {
                env,
                streams: 1,
                layout: Layout::OneRpc,
                chunk_steps: 1,
                in_flight: 1,
                budget_steps: (200_000.0 * seconds) as usize,
                seconds: seconds / 2.0,
            };
            record(rt.block_on(ingest(&case))?);
        }
    }
    for env in envs {
        let mut cases: Vec<(usize, Layout)> = [1, 4, 16].map(|n| (n, Layout::RpcPerStream)).to_vec();
        cases.push((16, Layout::OneRpc));
        for (streams, layout) in cases {
            let rpcs = if layout == Layout::OneRpc { 1 } else { streams };
            let name = format!("ingest {} {streams}/{rpcs}", env.name());
            if !wanted(&cli.only, &name) {
                continue;
            }
            eprintln!("{name}: {streams} stream(s) over {rpcs} RPC(s)");
            // Enough for 10× the goal, at most 1 GiB of payload; a faster run stops early and its
            // rate still holds (the table marks it).
            let budget = (10.0 * GOAL_INGEST * seconds).min(f64::from(1 << 30) / env.step_bytes() as f64);
            let case = IngestCase {
                env,
                streams,
                layout,
                chunk_steps: CHUNK_STEPS,
                in_flight: IN_FLIGHT,
                budget_steps: budget as usize,
                seconds,
            };
            record(rt.block_on(ingest(&case))?);
        }
    }
    for env in envs {
        let name = format!("sample {}", env.name());
        if wanted(&cli.only, &name) {
            eprintln!("{name}: filling a shard with {} steps", thousands(fill_steps as f64));
            let server = Server::start(env, 1_000_000)?;
            rt.block_on(fill(server.addr, env, fill_steps))?;
            for (clients, count) in [(1, 256), (4, 256), (1, 1024), (4, 1024)] {
                record(rt.block_on(sample(&server, env, clients, count, seconds))?);
            }
            server.stop()?;
        }
    }
    for env in envs {
        let name = format!("in-process {}", env.name());
        if wanted(&cli.only, &name) {
            eprintln!("{name}: validate + insert {rounds} × {} steps, then sample", thousands(fill_steps as f64));
            for row in in_process(env, fill_steps, rounds, 256, seconds)? {
                record(row);
            }
        }
    }
    let mut memory_rows = Vec::new();
    for env in envs {
        let name = format!("memory {}", env.name());
        if wanted(&cli.only, &name) {
            eprintln!("{name}: a child process stores {} steps", thousands(fill_steps as f64));
            memory_rows.push(memory(env, fill_steps as u64)?);
        }
    }
    drop(rt);
    print_report(&rows, &memory_rows, seconds);
    eprintln!("total {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn synthetic_chunks_pass_the_services_validation() {
        for env in [Env::Riab, Env::Pendulum] {
            let limiter = ReplayConfig::default().limiter().unwrap();
            let shard = Shard::new(0, 1_000_000, 7, limiter, 0);
            let synth = Synth::new(env, CHUNK_STEPS);
            let id = stream_id(3, 1);
            let Some(Kind::Open(h)) = synth.open(&id).kind else { panic!("not an open") };
            let (key, spec) = validate::header(&h).unwrap();
            assert_eq!(spec, env.spec());
            shard.open(0, key, spec, 0, 0).unwrap();
            let (_, data) = validate::chunk(&shard, synth.chunk(&id, 0)).unwrap();
            assert_eq!(data.payload_bytes(), CHUNK_STEPS * env.step_bytes());
            assert_eq!(data.step_types[0], 0);
        }
        assert_eq!([200, 201, 401].map(|t| Env::Pendulum.step_type(t)), [2, 0, 2]);
    }

    #[test]
    fn schedules_open_every_stream_then_deal_chunks_round_robin() {
        let synth = Arc::new(Synth::new(Env::Pendulum, 2));
        let kinds: Vec<(u32, Option<u64>)> = schedule(synth, vec![stream_id(0, 0), stream_id(0, 1)], 3)
            .map(|r| match r.kind {
                Some(Kind::Open(h)) => (h.stream.unwrap().env_index, None),
                Some(Kind::Chunk(c)) => (c.stream.unwrap().env_index, Some(c.seq)),
                None => panic!("empty request"),
            })
            .collect();
        assert_eq!(kinds, [(0, None), (1, None), (0, Some(0)), (1, Some(0)), (0, Some(1))]);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
