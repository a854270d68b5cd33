//! A standalone replay shard (`replay --coordinator host:port`): the scale-out form of the shards a
//! coordinator hosts in-process.
//!
//! 1. Fetch the experiment from the coordinator (waiting while no actor has fixed it yet): the
//!    `[replay]` section sets the window, the limiter and the checkpoint period.
//! 2. Look in the workdir for a complete checkpoint: a restarted shard asks the coordinator for
//!    the slot it held, and restores it (table, cursors, limiter counters).
//! 3. Register (role REPLAY, its advertised address); the coordinator assigns a slot and puts it
//!    in the shard map. A slot still held by a dead node's unexpired lease is retried with backoff.
//! 4. Serve the `Replay` service for that one shard, heartbeat, and re-register whenever the
//!    coordinator forgets it (coordinator restart, lease lost to a pause).
//! 5. On shutdown: stop serving, write a final checkpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::config::ConfigDoc;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_server::ReplayServer;
use proto::pb::{self, Role};
use rand::Rng;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::checkpointer::{self, Checkpointer};
use crate::experiment::Experiment;
use crate::server::MAX_MESSAGE_BYTES;
use crate::service::replay::ReplayService;
use crate::shard::Shard;

/// Every unary call to the coordinator carries a deadline.
const RPC_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ReplayNodeOptions {
    pub coordinator: String,
    pub listen: SocketAddr,
    /// What the shard map tells others; default: the bound address.
    pub advertise: Option<String>,
    /// Overrides `replay.max_size` for this shard.
    pub max_size: Option<u64>,
    pub workdir: PathBuf,
    /// How long to keep retrying an unreachable coordinator (at start, and for a slot held by a
    /// dead node's lease).
    pub connect_timeout: Duration,
}

/// Exponential backoff with jitter in [0.5, 1.5)×, capped.
struct Backoff {
    next: Duration,
    cap: Duration,
    rng: common::rng::StreamRng,
}

impl Backoff {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Backoff {
            next: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            rng: common::rng::stream(nanos as u64, &["backoff".into()]),
        }
    }

    async fn wait(&mut self) {
        let j: f64 = self.rng.random();
        tokio::time::sleep(self.next.mul_f64(0.5 + j)).await;
        self.next = (self.next * 2).min(self.cap);
    }
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(RPC_DEADLINE);
    r
}

async fn connect(addr: &str) -> Result<CoordinatorClient<Channel>> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let channel = Endpoint::from_shared(uri)
        .with_context(|| format!("--coordinator {addr}: bad address"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The experiment, once the coordinator has one.
async fn fetch_experiment(opts: &ReplayNodeOptions) -> Result<(CoordinatorClient<Channel>, Experiment)> {
    let start = Instant::now();
    let mut backoff = Backoff::new();
    let mut said = false;
    loop {
        let attempt = async {
            let mut c = connect(&opts.coordinator).await?;
            match c.get_experiment(with_deadline(pb::GetExperimentRequest {})).await {
                Ok(e) => Ok(Some((c, e.into_inner()))),
                Err(s) if s.code() == Code::FailedPrecondition => Ok(None),
                Err(s) => Err(anyhow::anyhow!("{} ({:?})", s.message(), s.code())),
            }
        };
        match attempt.await {
            Ok(Some((c, e))) => {
                let doc = ConfigDoc::parse(&e.config_toml, "the coordinator's experiment")?;
                return Ok((c, Experiment::new(doc)?));
            }
            Ok(None) if !said => {
                eprintln!("waiting for the experiment (the coordinator has none until an actor registers)");
                said = true;
            }
            Ok(None) => {}
            Err(e) if start.elapsed() < opts.connect_timeout => {
                eprintln!("coordinator {} not reachable ({e:#}); retrying", opts.coordinator);
            }
            Err(e) => {
                bail!("--coordinator {}: not reachable after {:?}: {e:#}", opts.coordinator, opts.connect_timeout)
            }
        }
        backoff.wait().await;
    }
}

/// The slot whose checkpoint in `workdir` is newest, if any: a restarted shard wants it back.
pub fn checkpointed_slot(workdir: &Path) -> Option<u32> {
    let shards = workdir.join("shards");
    let mut best: Option<(std::time::SystemTime, u32)> = None;
    for entry in std::fs::read_dir(shards).ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix("shard-")).and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(t) = checkpointer::newest_complete_time(&entry.path()) {
            if best.is_none_or(|(b, _)| t > b) {
                best = Some((t, id));
            }
        }
    }
    best.map(|(_, id)| id)
}

/// Registers as a replay node, retrying while the wanted slot (or every slot) is held by a lease
/// that has not expired yet (a SIGKILLed predecessor at another address) or the coordinator is
/// unreachable.
async fn register(
    client: &mut CoordinatorClient<Channel>,
    advertise: &str,
    wanted: Option<u32>,
    patience: Duration,
) -> Result<pb::RegisterResponse> {
    let start = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        let req = pb::RegisterRequest {
            role: Role::Replay as i32,
            advertise: advertise.to_string(),
            shard_id: wanted,
            ..Default::default()
        };
        match client.register(with_deadline(req)).await {
            Ok(r) => return Ok(r.into_inner()),
            // Taken or full: a dead node's lease frees its slot within one lease period.
            Err(s)
                if matches!(
                    s.code(),
                    Code::AlreadyExists | Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded
                ) && start.elapsed() < patience =>
            {
                eprintln!("registering: {} ({:?}); retrying", s.message(), s.code());
            }
            Err(s) => bail!("registering with the coordinator: {} ({:?})", s.message(), s.code()),
        }
        backoff.wait().await;
    }
}

/// Runs a replay node until `shutdown` resolves. `ready` receives the bound address and slot.
pub async fn run_replay_node(
    opts: ReplayNodeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr, u32, u32),
) -> Result<()> {
    let (mut client, experiment) = fetch_experiment(&opts).await?;
    let r = experiment.replay().clone();
    let max_size = opts.max_size.unwrap_or(r.max_size);
    anyhow::ensure!(
        max_size >= u64::from(r.window_steps),
        "--max-size {max_size} cannot hold one window of {} steps",
        r.window_steps
    );
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let bound = listener.local_addr()?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| bound.to_string());
    let wanted = checkpointed_slot(&opts.workdir);
    let reg = register(&mut client, &advertise, wanted, opts.connect_timeout).await?;
    let slot = reg.shard_id;

    let limiter = r.limiter().map_err(anyhow::Error::msg)?;
    let shard = Arc::new(Shard::new(slot, max_size, r.window_steps as usize, limiter, experiment.seed()));
    let dir = checkpointer::shard_dir(&opts.workdir, slot);
    checkpointer::restore_and_report(&shard, &dir)?;
    let checkpoints = Checkpointer::start(shard.clone(), dir, r.checkpoint_seconds);
    ready(bound, slot, reg.num_shards);

    let heartbeat = tokio::spawn(keep_registered(client, advertise, slot, reg, opts.connect_timeout));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ReplayServer<ReplayService>>().await;
    let service = ReplayService::new(vec![shard.clone()], closing)
        .with_checkpointer(slot, checkpoints.clone())
        .into_server()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            health.set_not_serving::<ReplayServer<ReplayService>>().await;
            let _ = closing_tx.send(true);
        })
        .await;
    heartbeat.abort();
    let last = checkpoints.shutdown().await;
    match last {
        Ok(path) => eprintln!("final checkpoint of shard {slot}: {}", path.display()),
        Err(e) => eprintln!("error: final checkpoint of shard {slot}: {e:#}"),
    }
    served.map_err(Into::into)
}

/// Heartbeats; registers again (asking for the same slot) when the coordinator no longer knows
/// this node, e.g. after the coordinator restarted.
async fn keep_registered(
    mut client: CoordinatorClient<Channel>,
    advertise: String,
    slot: u32,
    mut reg: pb::RegisterResponse,
    patience: Duration,
) {
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let every = Duration::from_millis(reg.heartbeat_ms.max(100));
        tokio::time::sleep(every).await;
        let mut req = tonic::Request::new(pb::HeartbeatRequest { node_id: reg.node_id });
        req.set_timeout(every.max(Duration::from_secs(1)));
        match client.heartbeat(req).await {
            Ok(_) => {
                if unreachable_since.take().is_some() {
                    eprintln!("coordinator reachable again");
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                eprintln!("the coordinator forgot this node ({}); registering again for slot {slot}", s.message());
                match register(&mut client, &advertise, Some(slot), patience).await {
                    Ok(r) if r.shard_id == slot => reg = r,
                    Ok(r) => eprintln!("error: re-registered for slot {slot} but was given {}", r.shard_id),
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Err(s) => {
                if unreachable_since.is_none() {
                    eprintln!("heartbeat failed: {} ({:?}); retrying", s.message(), s.code());
                    unreachable_since = Some(Instant::now());
                }
            }
        }
    }
}
