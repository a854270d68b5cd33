//! One replay shard as a service sees it: the table, the rate limiter, the per-stream sequence
//! cursors and the counters, behind one lock, plus the waiting that the rate limiter asks for.
//!
//! The table and the limiter are pure state machines; blocking lives here. A caller that the
//! limiter refuses waits on a `Notify` that every state change fires, up to its deadline. The lock
//! is a `std::sync::Mutex` held only for the synchronous state change, never across an `.await`
//! (as in mini-redis's `db.rs`), and every wait re-checks the condition after waking.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::rng::{self, StreamRng};
use tokio::sync::Notify;

use crate::rate_limiter::{LimiterState, RateLimiter};
use crate::table::{ChunkData, StreamKey, StreamSpec, Table, WindowBuf, WindowMeta};

/// Sampled windows, packed back to back (B × W steps), as the wire wants them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedWindows {
    pub obs_dim: usize,
    pub action_dim: usize,
    pub observations: Vec<f32>,
    pub step_types: Vec<u8>,
    pub actions: Vec<f32>,
    pub rewards: Vec<f32>,
    pub metas: Vec<WindowMeta>,
}

impl PackedWindows {
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }
}

/// Why a shard refused a message. `field` names what was wrong, for the per-chunk refusal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refused {
    pub code: tonic::Code,
    pub field: &'static str,
    pub message: String,
}

impl Refused {
    pub fn new(code: tonic::Code, field: &'static str, message: impl Into<String>) -> Self {
        Self { code, field, message: message.into() }
    }
}

/// Where a stream stands: its shape and the next sequence number it may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub spec: StreamSpec,
    pub next_seq: u64,
}

/// Counters beyond the table's own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardCounters {
    pub sampled_windows: u64,
    pub refused_chunks: u64,
    pub insert_blocked: Duration,
    pub sample_blocked: Duration,
}

/// A snapshot for `Stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStats {
    pub shard_id: u32,
    pub size_steps: u64,
    pub max_size_steps: u64,
    pub inserted_steps: u64,
    pub evicted_steps: u64,
    pub stored_bytes: u64,
    pub valid_window_starts: u64,
    pub streams: u32,
    pub counters: ShardCounters,
    pub limiter: LimiterState,
}

struct State {
    table: Table,
    limiter: RateLimiter,
    cursors: HashMap<StreamKey, Cursor>,
    counters: ShardCounters,
    rng: StreamRng,
}

pub struct Shard {
    id: u32,
    max_size: u64,
    window: usize,
    state: Mutex<State>,
    changed: Notify,
}

impl Shard {
    /// A shard holding `max_size` steps and serving windows of `window` steps. `seed` fixes its
    /// sampling stream (derived from the experiment seed, "replay" and the shard id).
    pub fn new(id: u32, max_size: u64, window: usize, limiter: RateLimiter, seed: u64) -> Shard {
        Shard {
            id,
            max_size,
            window,
            state: Mutex::new(State {
                table: Table::new(max_size as usize, window),
                limiter,
                cursors: HashMap::new(),
                counters: ShardCounters::default(),
                rng: rng::stream(seed, &["replay".into(), id.into()]),
            }),
            changed: Notify::new(),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn window(&self) -> usize {
        self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for counters; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a stream. Re-opening an open stream at its next sequence number is accepted (a
    /// reconnecting writer); anything else about an open stream is refused.
    pub fn open(&self, key: StreamKey, spec: StreamSpec, first_seq: u64) -> Result<(), Refused> {
        let mut s = self.lock();
        if let Some(c) = s.cursors.get(&key) {
            if c.spec != spec {
                return Err(Refused::new(
                    tonic::Code::FailedPrecondition,
                    "open",
                    "stream is already open with another shape",
                ));
            }
            if c.next_seq != first_seq {
                return Err(Refused::new(
                    tonic::Code::FailedPrecondition,
                    "open.first_seq",
                    format!("stream is already open; the next sequence number is {}, not {first_seq}", c.next_seq),
                ));
            }
            return Ok(());
        }
        s.table
            .open_stream(key, spec)
            .map_err(|e| Refused::new(tonic::Code::FailedPrecondition, "open", e.to_string()))?;
        s.cursors.insert(key, Cursor { spec, next_seq: first_seq });
        Ok(())
    }

    /// The cursor of an open stream (validation needs its shape and next sequence number).
    pub fn cursor(&self, key: &StreamKey) -> Option<Cursor> {
        self.lock().cursors.get(key).copied()
    }

    /// Counts a refusal made before the shard saw the chunk (validation at the edge).
    pub fn count_refusal(&self) {
        self.lock().counters.refused_chunks += 1;
        metrics::counter!("dsm_replay_refused_chunks_total", "shard" => self.id.to_string()).increment(1);
    }

    /// Stores a validated chunk once the rate limiter allows `chunk.steps` inserts, waiting for
    /// at most until `deadline` (forever when `None`). Sequence continuity is re-checked under the
    /// lock, so two writers of one stream cannot interleave.
    pub async fn insert(&self, key: StreamKey, chunk: ChunkData, deadline: Option<Instant>) -> Result<(), Refused> {
        let steps = chunk.steps as u64;
        let mut waited_since: Option<Instant> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let cursor = *s.cursors.get(&key).ok_or_else(|| {
                    Refused::new(tonic::Code::FailedPrecondition, "chunk.stream", "stream was never opened")
                })?;
                if chunk.first_seq != cursor.next_seq {
                    return Err(Refused::new(
                        tonic::Code::OutOfRange,
                        "chunk.seq",
                        format!("sequence gap: expected {}, got {}", cursor.next_seq, chunk.first_seq),
                    ));
                }
                if s.limiter.can_insert(steps) {
                    if let Some(t) = waited_since {
                        let blocked = t.elapsed();
                        s.counters.insert_blocked += blocked;
                        metrics::histogram!("dsm_replay_insert_blocked_seconds", "shard" => self.id.to_string())
                            .record(blocked.as_secs_f64());
                    }
                    let outcome = s
                        .table
                        .insert(key, chunk)
                        .map_err(|e| Refused::new(tonic::Code::InvalidArgument, "chunk", e.to_string()))?;
                    s.limiter.insert(steps);
                    if outcome.evicted_steps > 0 {
                        s.limiter.delete(outcome.evicted_steps as u64);
                    }
                    if let Some(c) = s.cursors.get_mut(&key) {
                        c.next_seq += 1;
                    }
                    self.publish_gauges(&s, steps, outcome.evicted_steps as u64);
                    drop(s);
                    self.changed.notify_waiters();
                    return Ok(());
                }
            }
            let now = Instant::now();
            waited_since.get_or_insert(now);
            match deadline {
                Some(d) if d <= now => {
                    if let Some(t) = waited_since {
                        self.lock().counters.insert_blocked += t.elapsed();
                    }
                    return Err(Refused::new(
                        tonic::Code::DeadlineExceeded,
                        "chunk",
                        "rate limiter: timeout exceeded before the right to insert was acquired",
                    ));
                }
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Samples up to `count` windows into `out` (appending), waiting until `deadline` for the
    /// first one, as Reverb's batched sampling does: the first window may wait, the rest are taken
    /// only while the limiter allows them at once. Sampling also needs a valid window start (the
    /// limiter counts steps, and steps spread over streams shorter than a window make none).
    pub async fn sample(&self, count: usize, deadline: Instant, out: &mut PackedWindows) -> Result<(), Refused> {
        let mut waited_since: Option<Instant> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.lock();
                let s = &mut *guard;
                if let (true, true, Some(spec)) = (s.limiter.can_sample(1), s.table.valid_starts() > 0, s.table.spec())
                {
                    if let Some(t) = waited_since {
                        let blocked = t.elapsed();
                        s.counters.sample_blocked += blocked;
                        metrics::histogram!("dsm_replay_sample_blocked_seconds", "shard" => self.id.to_string())
                            .record(blocked.as_secs_f64());
                    }
                    out.obs_dim = spec.obs_dim;
                    out.action_dim = spec.action_dim;
                    let mut buf = WindowBuf::new(spec, self.window);
                    let mut taken = 0u64;
                    while out.len() < count && s.limiter.can_sample(1) {
                        let Some(meta) = s.table.sample_into(&mut s.rng, &mut buf) else { break };
                        s.limiter.maybe_commit_sample();
                        out.observations.extend_from_slice(&buf.observations);
                        out.step_types.extend_from_slice(&buf.step_types);
                        out.actions.extend_from_slice(&buf.actions);
                        out.rewards.extend_from_slice(&buf.rewards);
                        out.metas.push(meta);
                        taken += 1;
                    }
                    s.counters.sampled_windows += taken;
                    metrics::counter!("dsm_replay_sampled_windows_total", "shard" => self.id.to_string())
                        .increment(taken);
                    drop(guard);
                    self.changed.notify_waiters();
                    return Ok(());
                }
            }
            let now = Instant::now();
            waited_since.get_or_insert(now);
            if deadline <= now {
                if let Some(t) = waited_since {
                    self.lock().counters.sample_blocked += t.elapsed();
                }
                return Err(Refused::new(
                    tonic::Code::DeadlineExceeded,
                    "timeout_ms",
                    "rate limiter: timeout exceeded before the right to sample was acquired",
                ));
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    fn publish_gauges(&self, s: &State, inserted: u64, evicted: u64) {
        let shard = self.id.to_string();
        metrics::counter!("dsm_replay_inserted_steps_total", "shard" => shard.clone()).increment(inserted);
        metrics::counter!("dsm_replay_evicted_steps_total", "shard" => shard.clone()).increment(evicted);
        metrics::gauge!("dsm_replay_size_steps", "shard" => shard.clone()).set(s.table.stored_steps() as f64);
        metrics::gauge!("dsm_replay_stored_bytes", "shard" => shard.clone()).set(s.table.stored_bytes() as f64);
        metrics::gauge!("dsm_replay_valid_window_starts", "shard" => shard).set(s.table.valid_starts() as f64);
    }

    pub fn stats(&self) -> ShardStats {
        let s = self.lock();
        ShardStats {
            shard_id: self.id,
            size_steps: s.table.stored_steps() as u64,
            max_size_steps: self.max_size,
            inserted_steps: s.table.inserted_steps(),
            evicted_steps: s.table.evicted_steps(),
            stored_bytes: s.table.stored_bytes() as u64,
            valid_window_starts: s.table.valid_starts(),
            streams: s.table.num_streams() as u32,
            counters: s.counters,
            limiter: s.limiter.checkpoint(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The waiting around the limiter: both sides block, both honour deadlines, and each is
    //! released by the other side's progress.

    use super::*;
    use std::sync::Arc;

    const KEY: StreamKey = StreamKey { actor_id: 1, incarnation: 2, env_index: 0 };
    const SPEC: StreamSpec = StreamSpec { obs_dim: 1, action_dim: 0, has_rewards: false };

    fn chunk(seq: u64, steps: usize) -> ChunkData {
        ChunkData {
            first_seq: seq,
            steps,
            observations: (0..steps).map(|i| (seq as usize * steps + i) as f32).collect(),
            step_types: vec![1; steps],
            actions: vec![],
            rewards: vec![],
        }
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn sampling_waits_for_min_size_then_succeeds() {
        let shard = Arc::new(Shard::new(0, 1000, 4, RateLimiter::min_size(4).unwrap(), 0));
        shard.open(KEY, SPEC, 0).unwrap();
        let mut out = PackedWindows::default();
        let err = shard.sample(1, soon(30), &mut out).await.unwrap_err();
        assert_eq!(err.code, tonic::Code::DeadlineExceeded);
        assert!(shard.stats().counters.sample_blocked >= Duration::from_millis(30));
        // A sampler waiting without a near deadline is released by an insert.
        let sampler = {
            let shard = shard.clone();
            tokio::spawn(async move {
                let mut out = PackedWindows::default();
                shard.sample(2, soon(5000), &mut out).await.map(|()| out)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sampler.is_finished());
        shard.insert(KEY, chunk(0, 4), None).await.unwrap();
        let out = sampler.await.unwrap().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out.observations, [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]);
    }

    /// With samples-per-insert limiting, inserts block until samples catch up, and an insert
    /// deadline is honoured.
    #[tokio::test]
    async fn inserts_block_until_samples_catch_up() {
        // spi 1, min size 4, diff allowed in [0, 8]: at most 8 windows ahead of samples.
        let limiter = RateLimiter::new(1.0, 4, 0.0, 8.0).unwrap();
        let shard = Arc::new(Shard::new(0, 1000, 2, limiter, 0));
        shard.open(KEY, SPEC, 0).unwrap();
        shard.insert(KEY, chunk(0, 4), None).await.unwrap(); // free up to min size
        shard.insert(KEY, chunk(1, 4), None).await.unwrap(); // diff 8 ≤ 8
        let err = shard.insert(KEY, chunk(2, 4), Some(soon(30))).await.unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::DeadlineExceeded, "chunk"));
        assert_eq!(shard.stats().size_steps, 8, "a refused insert stores nothing");
        let writer = {
            let shard = shard.clone();
            tokio::spawn(async move { shard.insert(KEY, chunk(2, 4), None).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the insert waits for samples");
        let mut out = PackedWindows::default();
        shard.sample(4, soon(1000), &mut out).await.unwrap();
        assert_eq!(out.len(), 4);
        writer.await.unwrap().unwrap();
        let stats = shard.stats();
        assert_eq!(stats.size_steps, 12);
        assert_eq!((stats.limiter.insert_count, stats.limiter.sample_count), (12, 4));
        assert!(stats.counters.insert_blocked >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn sequence_and_open_rules() {
        let shard = Shard::new(0, 1000, 2, RateLimiter::min_size(2).unwrap(), 0);
        let err = shard.insert(KEY, chunk(0, 2), None).await.unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::FailedPrecondition, "chunk.stream"));
        shard.open(KEY, SPEC, 5).unwrap();
        let err = shard.insert(KEY, chunk(0, 2), None).await.unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::OutOfRange, "chunk.seq"));
        shard.insert(KEY, chunk(5, 2), None).await.unwrap();
        // Re-opening at the next sequence number is a reconnect; anywhere else is refused.
        shard.open(KEY, SPEC, 6).unwrap();
        assert_eq!(shard.open(KEY, SPEC, 3).unwrap_err().field, "open.first_seq");
        let other = StreamSpec { obs_dim: 2, ..SPEC };
        assert_eq!(shard.open(KEY, other, 6).unwrap_err().field, "open");
        let key2 = StreamKey { env_index: 1, ..KEY };
        assert!(shard.open(key2, other, 0).unwrap_err().message.contains("obs_dim"));
    }

    /// FIFO eviction keeps the store bounded, and inserted = stored + evicted.
    #[tokio::test]
    async fn accounting_holds_through_eviction() {
        let shard = Shard::new(0, 100, 2, RateLimiter::min_size(2).unwrap(), 0);
        shard.open(KEY, SPEC, 0).unwrap();
        for seq in 0..30 {
            shard.insert(KEY, chunk(seq, 7), None).await.unwrap();
            let s = shard.stats();
            assert!(s.size_steps <= 100);
            assert_eq!(s.inserted_steps, s.size_steps + s.evicted_steps);
            assert_eq!(s.limiter.insert_count - s.limiter.delete_count, s.size_steps);
        }
        assert_eq!(shard.stats().inserted_steps, 210);
    }
}
