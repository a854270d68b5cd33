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
//! The dead shard is retried with exponential backoff and jitter; each retry re-fetches the shard
//! map first (its slot may have moved to another node, or be unserved for now), and once its
//! `Stats` answers it is drawn from again. With every shard down the client waits, saying so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self};
use rand::Rng;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::server::MAX_MESSAGE_BYTES;
use crate::table::StreamKey;

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
    fn append(&mut self, shard: u32, r: pb::SampleResponse) -> Result<()> {
        let n = r.windows as usize;
        if n == 0 {
            return Ok(());
        }
        let (w, s, a) = (r.window_steps as usize, r.obs_dim as usize, r.action_dim as usize);
        if self.windows == 0 {
            (self.window_steps, self.obs_dim, self.action_dim) = (w, s, a);
        } else if (w, s, a) != (self.window_steps, self.obs_dim, self.action_dim) {
            bail!("shard {shard} serves windows of another shape ({w} steps × {s})");
        }
        self.observations.extend(proto::unpack_f32("observations", &r.observations, n * w * s)?);
        if r.step_types.len() != n * w {
            bail!("shard {shard}: step_types has {} entries, expected {}", r.step_types.len(), n * w);
        }
        self.step_types.extend_from_slice(&r.step_types);
        self.actions.extend(proto::unpack_f32("actions", &r.actions, n * w * a)?);
        if !r.rewards.is_empty() {
            self.rewards.extend(proto::unpack_f32("rewards", &r.rewards, n * w)?);
        }
        if r.streams.len() != n || r.start_steps.len() != n {
            bail!("shard {shard}: window metadata does not match {n} windows");
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
    /// Seed of the shard-allocation draws.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { batch_size: 32, prefetch: 8, shard_timeout: Duration::from_millis(200), seed: 0 }
    }
}

pub struct SamplingClient {
    rx: mpsc::Receiver<Result<SampleBatch>>,
    windows_per_shard: Arc<Vec<AtomicU64>>,
    failures_per_shard: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SamplingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: &str) -> Result<Channel> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true).connect().await?)
}

fn replay_client(ch: Channel) -> ReplayClient<Channel> {
    ReplayClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// First and largest pause between retries of a dead shard.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(2);

/// One shard slot as the client sees it.
struct Slot {
    id: u32,
    /// Where the shard map last said it is ("" while unserved).
    address: String,
    /// `None` while the shard is set aside.
    client: Option<ReplayClient<Channel>>,
    retry_at: Instant,
    backoff: Duration,
}

/// The slots, the coordinator to re-resolve them through, and the jitter stream.
struct Shards {
    coordinator: CoordinatorClient<Channel>,
    map_version: u64,
    slots: Vec<Slot>,
    rng: common::rng::StreamRng,
}

impl Shards {
    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.client.is_some()).count()
    }

    /// Sets slot `i` aside after a failed call.
    fn fail(&mut self, i: usize, why: &str, failures: &[AtomicU64]) {
        let slot = &mut self.slots[i];
        if slot.client.take().is_some() {
            slot.backoff = RETRY_FIRST;
            failures[i].fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dsm_learner_shard_failures_total", "shard" => slot.id.to_string()).increment(1);
            let live = self.live();
            eprintln!("sampling: shard {} failed ({why}); going on with {live} live shard(s)", self.slots[i].id);
            metrics::gauge!("dsm_learner_live_shards").set(live as f64);
        }
        let j: f64 = self.rng.random();
        let slot = &mut self.slots[i];
        slot.retry_at = Instant::now() + slot.backoff.mul_f64(0.5 + j);
        slot.backoff = (slot.backoff * 2).min(RETRY_CAP);
    }

    /// Re-fetches the shard map; a slot whose address changed is reconnected on its next retry.
    async fn refresh_map(&mut self) {
        let mut r = tonic::Request::new(pb::GetShardMapRequest {});
        r.set_timeout(Duration::from_secs(2));
        let Ok(map) = self.coordinator.get_shard_map(r).await else {
            return; // the coordinator is down too: keep the addresses we have
        };
        let map = map.into_inner();
        if map.version == self.map_version {
            return;
        }
        self.map_version = map.version;
        for s in map.slots {
            if let Some(slot) = self.slots.iter_mut().find(|x| x.id == s.shard_id) {
                if slot.address != s.address {
                    slot.address = s.address;
                    slot.client = None;
                    slot.retry_at = Instant::now();
                }
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
            if slot.address.is_empty() {
                self.fail(i, "unserved", failures);
                continue;
            }
            let probe = async {
                let mut c = replay_client(connect(&slot.address).await?);
                let mut r = tonic::Request::new(pb::StatsRequest { shard_id: slot.id });
                r.set_timeout(Duration::from_secs(2));
                c.stats(r).await.map_err(|s| anyhow!("{} ({:?})", s.message(), s.code()))?;
                anyhow::Ok(c)
            };
            match probe.await {
                Ok(c) => {
                    let slot = &mut self.slots[i];
                    slot.client = Some(c);
                    slot.backoff = RETRY_FIRST;
                    back += 1;
                    eprintln!("sampling: shard {} is back (at {})", slot.id, slot.address);
                    metrics::gauge!("dsm_learner_live_shards").set(self.live() as f64);
                }
                Err(e) => self.fail(i, &format!("{e:#}"), failures),
            }
        }
        back
    }
}

impl SamplingClient {
    /// Resolves the shard map through the coordinator and starts prefetching. Shards that are
    /// unserved or unreachable now are retried in the background.
    pub async fn connect(coordinator: &str, options: SamplingOptions) -> Result<SamplingClient> {
        if options.batch_size == 0 || options.prefetch == 0 {
            bail!("batch size and prefetch must be at least 1");
        }
        let mut c =
            CoordinatorClient::new(connect(coordinator).await.with_context(|| format!("coordinator {coordinator}"))?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let map = c
            .get_shard_map(pb::GetShardMapRequest {})
            .await
            .map_err(|s| anyhow!("shard map: {}", s.message()))?
            .into_inner();
        if map.slots.is_empty() {
            bail!("the shard map has no slots");
        }
        let now = Instant::now();
        let mut slots = Vec::new();
        let mut by_address: std::collections::HashMap<String, Channel> = Default::default();
        for slot in &map.slots {
            let client = match by_address.get(&slot.address) {
                Some(ch) => Some(replay_client(ch.clone())),
                None if slot.address.is_empty() => None,
                None => match connect(&slot.address).await {
                    Ok(ch) => {
                        by_address.insert(slot.address.clone(), ch.clone());
                        Some(replay_client(ch))
                    }
                    Err(e) => {
                        eprintln!("sampling: shard {} at {} not reachable yet ({e:#})", slot.shard_id, slot.address);
                        None
                    }
                },
            };
            slots.push(Slot {
                id: slot.shard_id,
                address: slot.address.clone(),
                client,
                retry_at: now,
                backoff: RETRY_FIRST,
            });
        }
        let n = slots.len();
        let mut shards = Shards {
            coordinator: c,
            map_version: map.version,
            slots,
            rng: common::rng::stream(options.seed, &["sampler-retry".into()]),
        };
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

    /// The next batch; waits while the store has nothing to sample.
    pub async fn next(&mut self) -> Result<SampleBatch> {
        self.rx.recv().await.unwrap_or_else(|| Err(anyhow!("the sampling task stopped")))
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
) -> Result<SampleBatch> {
    let mut batch = SampleBatch::default();
    let mut idle = Duration::from_millis(5);
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
        let stats = join_all(shards.slots.iter_mut().map(|slot| {
            let id = slot.id;
            let client = slot.client.clone();
            async move {
                let mut c = client?;
                let mut r = tonic::Request::new(pb::StatsRequest { shard_id: id });
                r.set_timeout(Duration::from_secs(5));
                Some(c.stats(r).await)
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
                Some(Err(s)) => bail!("stats of shard {}: {} ({:?})", shards.slots[i].id, s.message(), s.code()),
                None => {}
            }
        }
        let want = allocate(options.batch_size - batch.windows, &weights, rng);
        if want.iter().all(|&n| n == 0) {
            // Nothing to sample anywhere yet: wait with backoff.
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(500));
            continue;
        }
        let timeout_ms = options.shard_timeout.as_millis() as u64;
        let replies = join_all(shards.slots.iter().enumerate().zip(&want).filter(|(_, &n)| n > 0).filter_map(
            |((i, slot), &n)| {
                let mut c = slot.client.clone()?;
                let id = slot.id;
                let mut r = tonic::Request::new(pb::SampleRequest { shard_id: id, count: n as u32, timeout_ms });
                // The server waits up to timeout_ms for its limiter; allow for the transfer on top.
                r.set_timeout(Duration::from_millis(timeout_ms) + Duration::from_secs(10));
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
                Err(s) => bail!("sampling shard {id}: {} ({:?})", s.message(), s.code()),
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
}
