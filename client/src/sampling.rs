//! The sampling client the learner uses: batches of windows from every shard, through a bounded
//! prefetch queue.
//!
//! A background task refreshes each shard's number of valid window starts (`Stats`), splits each
//! batch over the shards by a multinomial draw in proportion to those counts, so the union is a
//! uniform draw over every valid start of the store, and asks all shards at once. Finished
//! batches wait in a queue of `prefetch` batches; when the learner falls behind, the task waits
//! and stops asking. Per-shard window counts are kept for throughput reporting.
//!
//! Failover: a shard whose call fails (unreachable, restarting, no longer at that address) is set
//! aside and the batch is drawn from the shards that answer, uniform over *their* valid starts.
//! The dead shard is retried with exponential backoff and jitter ([`Backoff`]); each retry
//! re-fetches the shard map through the [`CoordinatorHandle`] first (its slot may have moved to
//! another node, or be unserved for now), and once its `Stats` answers it is drawn from again.
//! With every shard down the client waits, saying so.
//!
//! Metrics: `dsm_learner_sampled_windows_total{shard}`, `dsm_learner_shard_failures_total{shard}`
//! and `dsm_learner_live_shards`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::shard::{ShardAddresses, StreamKey};
use futures::future::join_all;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self};
use proto::FieldViolation;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::connect::{self, error_chain, with_deadline, RPC_DEADLINE};
use crate::coordinator::{ClientError, CoordinatorHandle};

/// First and largest pause between retries of a dead shard.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(2);
/// How long a connection to a shard may take: shorter than other clients', because a batch waits
/// while a dead shard is probed.
const SHARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a dead shard's probe (`Stats`) and of a shard map refresh.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// Deadline of the `Stats` calls before each draw.
const STATS_DEADLINE: Duration = Duration::from_secs(5);
/// A `Sample` call's deadline on top of the time the shard may wait for its limiter: the transfer.
const TRANSFER_ALLOWANCE: Duration = Duration::from_secs(10);
/// First and largest pause while no shard has anything to sample yet.
const IDLE_FIRST: Duration = Duration::from_millis(5);
const IDLE_CAP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("batch size and prefetch must be at least 1")]
    BadOptions,
    #[error("coordinator {address}")]
    Coordinator {
        address: String,
        #[source]
        source: ClientError,
    },
    #[error("the shard map has no slots")]
    NoSlots,
    /// A call failed in a way that is a bug, not a dead shard (see `is_shard_failure`).
    #[error("{what} shard {shard}: {} ({:?})", status.message(), status.code())]
    Shard { what: &'static str, shard: u32, status: tonic::Status },
    #[error("shard {shard}: {what}")]
    Malformed { shard: u32, what: String },
    #[error("the sampling task stopped")]
    Stopped,
}

/// A batch of B windows of W steps, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleBatch {
    pub windows: usize,
    pub window_steps: usize,
    pub obs_dim: usize,
    pub action_dim: usize,
    /// B × W × obs_dim.
    pub observations: Vec<f32>,
    /// B × W.
    pub step_types: Vec<u8>,
    /// B × W × action_dim (empty without actions).
    pub actions: Vec<f32>,
    /// B × W (empty without rewards).
    pub rewards: Vec<f32>,
    /// Per window: its stream, the stream-step of its first step, and the shard it came from.
    pub streams: Vec<StreamKey>,
    pub start_steps: Vec<u64>,
    pub shards: Vec<u32>,
}

impl SampleBatch {
    /// Appends shard `shard`'s answer, checking its shapes: the wire edge of a sample.
    fn append(&mut self, shard: u32, r: pb::SampleResponse) -> Result<(), SamplingError> {
        let malformed = |what: String| SamplingError::Malformed { shard, what };
        let unpack = |v: FieldViolation| malformed(v.to_string());
        let n = r.windows as usize;
        if n == 0 {
            return Ok(());
        }
        let (w, s, a) = (r.window_steps as usize, r.obs_dim as usize, r.action_dim as usize);
        if self.windows == 0 {
            (self.window_steps, self.obs_dim, self.action_dim) = (w, s, a);
        } else if (w, s, a) != (self.window_steps, self.obs_dim, self.action_dim) {
            return Err(malformed(format!("serves windows of another shape ({w} steps × {s})")));
        }
        self.observations.extend(proto::unpack_f32("observations", &r.observations, n * w * s).map_err(unpack)?);
        if r.step_types.len() != n * w {
            return Err(malformed(format!("step_types has {} entries, expected {}", r.step_types.len(), n * w)));
        }
        self.step_types.extend_from_slice(&r.step_types);
        self.actions.extend(proto::unpack_f32("actions", &r.actions, n * w * a).map_err(unpack)?);
        if !r.rewards.is_empty() {
            self.rewards.extend(proto::unpack_f32("rewards", &r.rewards, n * w).map_err(unpack)?);
        }
        if r.streams.len() != n || r.start_steps.len() != n {
            return Err(malformed(format!("window metadata does not match {n} windows")));
        }
        self.streams.extend(r.streams.iter().map(|s| StreamKey {
            actor_id: s.actor_id,
            incarnation: s.incarnation,
            env_index: s.env_index,
        }));
        self.start_steps.extend_from_slice(&r.start_steps);
        self.shards.extend(std::iter::repeat_n(shard, n));
        self.windows += n;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct SamplingOptions {
    pub batch_size: usize,
    /// Batches kept ready ahead of the learner.
    pub prefetch: usize,
    /// How long one `Sample` call may wait on a shard's rate limiter.
    pub shard_timeout: Duration,
    /// Seed of the shard-allocation draws and of the retries' jitter.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { batch_size: 32, prefetch: 8, shard_timeout: Duration::from_millis(200), seed: 0 }
    }
}

pub struct SamplingClient {
    rx: mpsc::Receiver<Result<SampleBatch, SamplingError>>,
    windows_per_shard: Arc<Vec<AtomicU64>>,
    failures_per_shard: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SamplingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel to the shard at `address`, connected now.
async fn connect_shard(address: &str) -> Result<Channel, String> {
    let endpoint = connect::endpoint(address).map_err(|e| e.to_string())?.connect_timeout(SHARD_CONNECT_TIMEOUT);
    endpoint.connect().await.map_err(|e| error_chain(&e))
}

/// One shard slot as the client sees it.
struct Slot {
    id: u32,
    /// Where the shard map last said it is (`None` while unserved).
    address: Option<String>,
    /// `None` while the shard is set aside.
    client: Option<ReplayClient<Channel>>,
    retry_at: Instant,
    backoff: Backoff,
}

/// The slots, and the coordinator to re-resolve them through.
struct Shards {
    coordinator: CoordinatorHandle,
    map_version: u64,
    slots: Vec<Slot>,
    /// The pause while nothing is sampleable anywhere; reset at each batch.
    idle: Backoff,
}

impl Shards {
    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.client.is_some()).count()
    }

    /// Sets slot `i` aside after a failed call.
    fn fail(&mut self, i: usize, why: &str, failures: &[AtomicU64]) {
        let slot = &mut self.slots[i];
        if slot.client.take().is_some() {
            slot.backoff.reset();
            failures[i].fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dsm_learner_shard_failures_total", "shard" => slot.id.to_string()).increment(1);
            let live = self.live();
            eprintln!("sampling: shard {} failed ({why}); going on with {live} live shard(s)", self.slots[i].id);
            metrics::gauge!("dsm_learner_live_shards").set(live as f64);
        }
        let slot = &mut self.slots[i];
        slot.retry_at = Instant::now() + slot.backoff.next_delay();
    }

    /// Re-fetches the shard map; a slot whose address changed is reconnected on its next retry.
    async fn refresh_map(&mut self) {
        let Ok(map) = self.coordinator.shard_map(PROBE_DEADLINE).await else {
            return; // the coordinator is down too: keep the addresses we have
        };
        if map.version == self.map_version {
            return;
        }
        self.map_version = map.version;
        for slot in &mut self.slots {
            let address = map.address(slot.id);
            if slot.address.as_deref() != address {
                slot.address = address.map(str::to_string);
                slot.client = None;
                slot.retry_at = Instant::now();
            }
        }
    }

    /// Retries the dead slots whose time has come; returns how many came back.
    async fn revive(&mut self, failures: &[AtomicU64]) -> usize {
        let now = Instant::now();
        if !self.slots.iter().any(|s| s.client.is_none() && s.retry_at <= now) {
            return 0;
        }
        self.refresh_map().await;
        let mut back = 0;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.client.is_some() || slot.retry_at > now {
                continue;
            }
            let Some(address) = slot.address.clone() else {
                self.fail(i, "unserved", failures);
                continue;
            };
            let id = slot.id;
            let probe = async {
                let mut c = connect::replay_client(connect_shard(&address).await?);
                let r = with_deadline(pb::StatsRequest { shard_id: id }, PROBE_DEADLINE);
                c.stats(r).await.map_err(|s| format!("{} ({:?})", s.message(), s.code()))?;
                Ok::<_, String>(c)
            };
            match probe.await {
                Ok(c) => {
                    let slot = &mut self.slots[i];
                    slot.client = Some(c);
                    slot.backoff.reset();
                    back += 1;
                    eprintln!("sampling: shard {id} is back (at {address})");
                    metrics::gauge!("dsm_learner_live_shards").set(self.live() as f64);
                }
                Err(e) => self.fail(i, &e, failures),
            }
        }
        back
    }
}

impl SamplingClient {
    /// Connects to the coordinator at `coordinator` (one attempt), resolves the shard map through
    /// it and starts prefetching ([`SamplingClient::start`]).
    pub async fn connect(coordinator: &str, options: SamplingOptions) -> Result<SamplingClient, SamplingError> {
        check(&options)?;
        let handle = CoordinatorHandle::connect(coordinator, Duration::ZERO)
            .await
            .map_err(|source| SamplingError::Coordinator { address: coordinator.to_string(), source })?;
        SamplingClient::start(handle, options).await
    }

    /// Resolves the shard map through `coordinator` and starts prefetching on the current tokio
    /// runtime. Shards that are unserved or unreachable now are retried in the background.
    pub async fn start(
        coordinator: CoordinatorHandle,
        options: SamplingOptions,
    ) -> Result<SamplingClient, SamplingError> {
        check(&options)?;
        let map = coordinator
            .shard_map(RPC_DEADLINE)
            .await
            .map_err(|source| SamplingError::Coordinator { address: coordinator.address().to_string(), source })?;
        if map.num_slots() == 0 {
            return Err(SamplingError::NoSlots);
        }
        let slots = connect_slots(&map, options.seed).await;
        let n = slots.len();
        register_metrics(n);
        let mut shards = Shards {
            coordinator,
            map_version: map.version,
            slots,
            idle: Backoff::new(IDLE_FIRST, IDLE_CAP, common::rng::derive_seed(options.seed, &["sampler-idle".into()])),
        };
        metrics::gauge!("dsm_learner_live_shards").set(shards.live() as f64);
        let windows_per_shard: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let failures_per_shard: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let (tx, rx) = mpsc::channel(options.prefetch);
        let (counters, failures) = (windows_per_shard.clone(), failures_per_shard.clone());
        let task = tokio::spawn(async move {
            let mut rng = common::rng::stream(options.seed, &["sampler".into()]);
            loop {
                let batch = next_batch(&mut shards, &options, &mut rng, &counters, &failures).await;
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return; // the learner dropped the client, or we reported an error
                }
            }
        });
        Ok(SamplingClient { rx, windows_per_shard, failures_per_shard, task })
    }

    /// The next batch; waits while the store has nothing to sample. After an error every later
    /// call answers [`SamplingError::Stopped`].
    pub async fn next(&mut self) -> Result<SampleBatch, SamplingError> {
        self.rx.recv().await.unwrap_or(Err(SamplingError::Stopped))
    }

    /// Windows received from each shard so far (index = shard id).
    pub fn windows_per_shard(&self) -> Vec<u64> {
        self.windows_per_shard.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// How often each shard was set aside after a failed call (index = shard id).
    pub fn failures_per_shard(&self) -> Vec<u64> {
        self.failures_per_shard.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

fn check(options: &SamplingOptions) -> Result<(), SamplingError> {
    if options.batch_size == 0 || options.prefetch == 0 {
        return Err(SamplingError::BadOptions);
    }
    Ok(())
}

/// The sampling client's series in its process (the learner's): per shard slot, and the live count.
pub const SAMPLING_PER_SHARD: [common::telemetry::Metric; 2] = [
    common::telemetry::Metric::counter("dsm_learner_sampled_windows_total", "windows sampled from each shard"),
    common::telemetry::Metric::counter(
        "dsm_learner_shard_failures_total",
        "times a shard was set aside after a failed call",
    ),
];
pub const SAMPLING: [common::telemetry::Metric; 1] =
    [common::telemetry::Metric::gauge("dsm_learner_live_shards", "shards the sampling client draws from now")];

fn register_metrics(slots: usize) {
    common::telemetry::register(&SAMPLING, &[]);
    for id in 0..slots {
        common::telemetry::register(&SAMPLING_PER_SHARD, &[("shard", id.to_string())]);
    }
}

/// One slot per shard of `map`, connected now where that works (one channel per address: the
/// in-process shards of a coordinator share its port); the others are retried by the task.
async fn connect_slots(map: &ShardAddresses, seed: u64) -> Vec<Slot> {
    let now = Instant::now();
    let mut by_address: HashMap<String, Channel> = HashMap::new();
    let mut slots = Vec::new();
    for id in 0..map.num_slots() {
        let address = map.address(id);
        let client = match address {
            None => None,
            Some(a) => match by_address.get(a) {
                Some(ch) => Some(connect::replay_client(ch.clone())),
                None => match connect_shard(a).await {
                    Ok(ch) => {
                        by_address.insert(a.to_string(), ch.clone());
                        Some(connect::replay_client(ch))
                    }
                    Err(e) => {
                        eprintln!("sampling: shard {id} at {a} not reachable yet ({e})");
                        None
                    }
                },
            },
        };
        let seed = common::rng::derive_seed(seed, &["sampler-retry".into(), id.into()]);
        slots.push(Slot {
            id,
            address: address.map(str::to_string),
            client,
            retry_at: now,
            backoff: Backoff::new(RETRY_FIRST, RETRY_CAP, seed),
        });
    }
    slots
}

/// Whether a failed call means the shard is gone (set it aside) rather than a bug (report it).
fn is_shard_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | Internal | Cancelled | NotFound | Aborted | ResourceExhausted)
}

/// Splits `n` draws over `weights` by a multinomial draw (sequential binomials, as a categorical
/// per draw): shard i gets each window with probability wᵢ/Σw.
fn allocate<R: Rng>(n: usize, weights: &[u64], rng: &mut R) -> Vec<usize> {
    let total: u64 = weights.iter().sum();
    let mut out = vec![0; weights.len()];
    if total == 0 {
        return out;
    }
    for _ in 0..n {
        let mut x = rng.random_range(0..total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                out[i] += 1;
                break;
            }
            x -= w;
        }
    }
    out
}

async fn next_batch<R: Rng>(
    shards: &mut Shards,
    options: &SamplingOptions,
    rng: &mut R,
    counters: &[AtomicU64],
    failures: &[AtomicU64],
) -> Result<SampleBatch, SamplingError> {
    let mut batch = SampleBatch::default();
    shards.idle.reset();
    let mut said_all_down = false;
    while batch.windows < options.batch_size {
        shards.revive(failures).await;
        if shards.live() == 0 {
            if !said_all_down {
                eprintln!("sampling: no shard answers; waiting for one to come back");
                said_all_down = true;
            }
            let next = shards.slots.iter().map(|s| s.retry_at).min().unwrap_or_else(Instant::now);
            tokio::time::sleep_until(next.max(Instant::now() + Duration::from_millis(5)).into()).await;
            continue;
        }
        let stats = join_all(shards.slots.iter().map(|slot| {
            let id = slot.id;
            let client = slot.client.clone();
            async move {
                let mut c = client?;
                Some(c.stats(with_deadline(pb::StatsRequest { shard_id: id }, STATS_DEADLINE)).await)
            }
        }))
        .await;
        let mut weights = vec![0u64; shards.slots.len()];
        for (i, s) in stats.into_iter().enumerate() {
            match s {
                Some(Ok(r)) => weights[i] = r.into_inner().valid_window_starts,
                Some(Err(s)) if is_shard_failure(s.code()) || s.code() == tonic::Code::DeadlineExceeded => {
                    shards.fail(i, s.message(), failures)
                }
                Some(Err(status)) => {
                    return Err(SamplingError::Shard { what: "stats of", shard: shards.slots[i].id, status })
                }
                None => {}
            }
        }
        let want = allocate(options.batch_size - batch.windows, &weights, rng);
        if want.iter().all(|&n| n == 0) {
            // Nothing to sample anywhere yet: wait with backoff.
            tokio::time::sleep(shards.idle.next_delay()).await;
            continue;
        }
        let timeout_ms = options.shard_timeout.as_millis() as u64;
        let replies = join_all(shards.slots.iter().enumerate().zip(&want).filter(|(_, &n)| n > 0).filter_map(
            |((i, slot), &n)| {
                let mut c = slot.client.clone()?;
                let id = slot.id;
                // The server waits up to timeout_ms for its limiter; allow for the transfer on top.
                let r = with_deadline(
                    pb::SampleRequest { shard_id: id, count: n as u32, timeout_ms },
                    Duration::from_millis(timeout_ms) + TRANSFER_ALLOWANCE,
                );
                Some(async move { (i, id, c.sample(r).await) })
            },
        ))
        .await;
        for (i, id, reply) in replies {
            match reply {
                Ok(r) => {
                    let r = r.into_inner();
                    let n = u64::from(r.windows);
                    batch.append(id, r)?;
                    counters[i].fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("dsm_learner_sampled_windows_total", "shard" => id.to_string()).increment(n);
                }
                // The shard's rate limiter said not yet: try again on the next round.
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => {}
                Err(s) if is_shard_failure(s.code()) => shards.fail(i, s.message(), failures),
                Err(status) => return Err(SamplingError::Shard { what: "sampling", shard: id, status }),
            }
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shard's share follows its weight: with n = 100,000 draws the sd of a share is at
    /// most 0.16%; allow 1%.
    #[test]
    fn allocation_is_proportional_to_valid_starts() {
        let mut rng = common::rng::stream(1, &["test".into()]);
        let got = allocate(100_000, &[100, 300, 0, 600], &mut rng);
        assert_eq!(got.iter().sum::<usize>(), 100_000);
        assert_eq!(got[2], 0);
        for (g, w) in got.iter().zip([0.1, 0.3, 0.0, 0.6]) {
            assert!((*g as f64 / 100_000.0 - w).abs() < 0.01, "{got:?}");
        }
        assert_eq!(allocate(5, &[0, 0], &mut rng), [0, 0]);
    }

    fn response(windows: u32, window_steps: u32, obs_dim: u32) -> pb::SampleResponse {
        let n = (windows * window_steps) as usize;
        pb::SampleResponse {
            windows,
            window_steps,
            obs_dim,
            action_dim: 0,
            observations: vec![0; n * obs_dim as usize * 4],
            step_types: vec![1; n],
            streams: (0..windows).map(|i| pb::StreamId { actor_id: 1, incarnation: 2, env_index: i }).collect(),
            start_steps: (0..u64::from(windows)).collect(),
            ..Default::default()
        }
    }

    /// Answers of one shape append; another shape, or a short payload, is refused naming the
    /// shard.
    #[test]
    fn answers_append_and_malformed_ones_name_the_shard() {
        let mut batch = SampleBatch::default();
        batch.append(0, response(2, 3, 4)).unwrap();
        batch.append(1, response(1, 3, 4)).unwrap();
        assert_eq!((batch.windows, batch.observations.len(), batch.shards.as_slice()), (3, 36, &[0, 0, 1][..]));
        assert_eq!(batch.streams[1], StreamKey { actor_id: 1, incarnation: 2, env_index: 1 });
        let err = batch.append(2, response(1, 4, 4)).unwrap_err().to_string();
        assert!(err.starts_with("shard 2: serves windows of another shape"), "{err}");
        let mut short = response(1, 3, 4);
        short.observations.pop();
        let err = SampleBatch::default().append(5, short).unwrap_err().to_string();
        assert!(err.starts_with("shard 5: observations:"), "{err}");
    }
}
