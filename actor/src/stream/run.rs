//! The actor process: `actor --env <id> --coordinator host:port`.
//!
//! 1. Register with the coordinator (retrying with backoff while it is not up) and heartbeat.
//! 2. Fetch the experiment (env config, seed, chunk size) and the shard map.
//! 3. Step E envs on a simulation thread; each env's chunks go to the shard its stream hashes to,
//!    through a bounded queue per shard and one writer per shard.
//! 4. On shutdown: stop stepping, send the partial chunks, wait up to `drain` for their
//!    acknowledgements, and report what is still unacknowledged.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::config::ConfigDoc;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self, Role};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::chunker::{Chunk, Chunker};
use super::writer::{ShardWriter, WriterReport};
use crate::envs::{EnvConfig, EnvId, VecEnv};

/// gRPC message limit on the actor's channels (chunks are a few hundred KiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct ActorOptions {
    pub env: EnvId,
    pub coordinator: String,
    pub envs: usize,
    pub actor_id: u64,
    /// How long to wait for acknowledgements after a shutdown signal.
    pub drain: Duration,
    /// How long to keep retrying an unreachable coordinator at start.
    pub connect_timeout: Duration,
    /// Stop after this many steps per env (tests, benchmarks); `None` runs until shutdown.
    pub max_steps: Option<u64>,
}

/// What an actor did.
#[derive(Debug, Clone, Default)]
pub struct ActorReport {
    pub steps: u64,
    pub incarnation: u64,
    pub writers: Vec<WriterReport>,
}

impl ActorReport {
    pub fn unacknowledged(&self) -> usize {
        self.writers.iter().map(|w| w.unacknowledged.len()).sum()
    }
}

/// A random incarnation per process (time and pid through SplitMix64), so a restarted actor
/// opens new streams.
pub fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    common::rng::splitmix64(nanos as u64 ^ (u64::from(std::process::id()) << 40))
}

async fn channel(addr: &str) -> Result<Channel> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri.clone())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect()
        .await?)
}

/// Connects to the coordinator, retrying with exponential backoff and jitter until `timeout`.
async fn connect_coordinator(addr: &str, timeout: Duration) -> Result<CoordinatorClient<Channel>> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut jitter = common::rng::stream(new_incarnation(), &["backoff".into()]);
    loop {
        match channel(addr).await {
            Ok(ch) => {
                return Ok(CoordinatorClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            }
            Err(e) if start.elapsed() < timeout => {
                eprintln!("coordinator {addr} not reachable ({e:#}); retrying in {backoff:?}");
                let j: f64 = rand::Rng::random(&mut jitter);
                tokio::time::sleep(backoff.mul_f64(0.5 + j)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => bail!("--coordinator {addr}: not reachable after {timeout:?}: {e:#}"),
        }
    }
}

/// Every unary call carries a deadline (Conventions).
const RPC_DEADLINE: Duration = Duration::from_secs(10);

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(RPC_DEADLINE);
    r
}

fn status_line(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

pub async fn run(opts: ActorOptions, shutdown: impl Future<Output = ()> + Send) -> Result<ActorReport> {
    let incarnation = new_incarnation();
    let mut coordinator = connect_coordinator(&opts.coordinator, opts.connect_timeout).await?;
    let reg = coordinator
        .register(with_deadline(pb::RegisterRequest {
            role: Role::Actor as i32,
            advertise: String::new(),
            env_id: opts.env.to_string(),
            actor_id: opts.actor_id,
            incarnation,
        }))
        .await
        .map_err(|s| status_line("registering with the coordinator", s))?
        .into_inner();
    let experiment = coordinator
        .get_experiment(with_deadline(pb::GetExperimentRequest {}))
        .await
        .map_err(|s| status_line("fetching the experiment", s))?
        .into_inner();
    let doc = ConfigDoc::parse(&experiment.config_toml, "the coordinator's experiment")?;
    let env_config = EnvConfig::resolve(opts.env, &doc.section("env"))?;
    let map = coordinator
        .get_shard_map(with_deadline(pb::GetShardMapRequest {}))
        .await
        .map_err(|s| status_line("fetching the shard map", s))?
        .into_inner();
    if map.slots.is_empty() {
        bail!("the coordinator's shard map has no slots");
    }
    let k = map.slots.len() as u32;
    eprintln!(
        "actor {} (incarnation {incarnation:016x}): {} × {} into {k} shards, chunks of {} steps",
        opts.actor_id, opts.envs, opts.env, experiment.chunk_steps
    );

    // Heartbeats keep the lease; they stop with the process.
    let heartbeat_every = Duration::from_millis(reg.heartbeat_ms.max(100));
    let mut hb_client = coordinator.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_every);
        loop {
            tick.tick().await;
            let mut req = tonic::Request::new(pb::HeartbeatRequest { node_id: reg.node_id });
            req.set_timeout(heartbeat_every);
            if let Err(s) = hb_client.heartbeat(req).await {
                eprintln!("heartbeat failed: {}", s.message());
            }
        }
    });

    // Streams → shards, one writer per shard used.
    let mut by_shard: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for e in 0..opts.envs as u32 {
        by_shard.entry(common::shard::shard_of(opts.actor_id, incarnation, e, k)).or_default().push(e);
    }
    let probe = VecEnv::new(&env_config, doc.experiment()?.seed, opts.actor_id, 1);
    let shape = probe.shape();
    drop(probe);
    let max_in_flight = experiment.max_in_flight_chunks.max(1) as usize;
    let mut senders: BTreeMap<u32, mpsc::Sender<Chunk>> = BTreeMap::new();
    let mut writers = Vec::new();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    for (&shard, envs) in &by_shard {
        let address = &map.slots[shard as usize].address;
        let ch = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let c = channel(address).await.with_context(|| format!("connecting to shard {shard} at {address}"))?;
                channels.insert(address.clone(), c.clone());
                c
            }
        };
        let client = ReplayClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(max_in_flight);
        senders.insert(shard, tx);
        let writer = ShardWriter {
            shard_id: shard,
            actor_id: opts.actor_id,
            incarnation,
            env_id: opts.env.to_string(),
            obs_dim: shape.obs_dim as u32,
            action_dim: shape.action_dim as u32,
            has_rewards: shape.has_rewards,
            max_in_flight,
        };
        writers.push(tokio::spawn(writer.run(client, envs.clone(), rx, opts.drain)));
    }

    // The simulation thread: blocking sends into bounded queues are the back-pressure.
    let stop = Arc::new(AtomicBool::new(false));
    let sim_stop = stop.clone();
    let seed = doc.experiment()?.seed;
    let (envs, actor_id, chunk_steps, max_steps) =
        (opts.envs, opts.actor_id, experiment.chunk_steps.max(1) as usize, opts.max_steps);
    let shard_of_env: Vec<u32> =
        (0..envs as u32).map(|e| common::shard::shard_of(actor_id, incarnation, e, k)).collect();
    let sim = tokio::task::spawn_blocking(move || -> u64 {
        let mut env = VecEnv::new(&env_config, seed, actor_id, envs);
        let mut frame = env.new_frame();
        let mut chunker = Chunker::new(envs, env.shape(), chunk_steps);
        let mut steps = 0u64;
        let mut alive = true;
        let send = |c: Chunk, alive: &mut bool| {
            if senders[&shard_of_env[c.env_index as usize]].blocking_send(c).is_err() {
                *alive = false; // a writer ended; stop stepping
            }
        };
        while alive && !sim_stop.load(Ordering::Relaxed) && max_steps.is_none_or(|m| steps < m) {
            env.step(&mut frame);
            steps += 1;
            metrics::counter!("dsm_actor_env_steps_total").increment(envs as u64);
            chunker.push(&frame, |c| send(c, &mut alive));
        }
        if alive {
            chunker.flush(|c| send(c, &mut alive));
        }
        steps
    });

    tokio::pin!(shutdown);
    let sim_result = {
        let mut sim = sim;
        tokio::select! {
            r = &mut sim => r,
            () = &mut shutdown => {
                eprintln!("shutting down: draining for at most {:?}", opts.drain);
                stop.store(true, Ordering::Relaxed);
                sim.await
            }
        }
    };
    let steps = sim_result.context("the simulation thread panicked")?;
    let mut report = ActorReport { steps, incarnation, writers: Vec::new() };
    let mut first_error = None;
    for w in writers {
        match w.await.context("a writer task panicked")? {
            Ok(r) => report.writers.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    heartbeat.abort();
    let unacked = report.unacknowledged();
    if unacked > 0 {
        let list: Vec<String> = report
            .writers
            .iter()
            .flat_map(|w| w.unacknowledged.iter().map(move |(e, s)| format!("shard {} env {e} seq {s}", w.shard_id)))
            .collect();
        eprintln!("{unacked} chunks still unacknowledged at exit: {}", list.join(", "));
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    Ok(report)
}
