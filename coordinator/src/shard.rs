//! One replay shard as a service sees it: the table, the rate limiter, the per-stream sequence
//! cursors and the counters, behind one lock, plus the waiting that the rate limiter asks for.
//!
//! The table and the limiter are pure state machines; blocking lives here. A caller that the
//! limiter refuses waits on a `Notify` that every state change fires, up to its deadline. The lock
//! is a `std::sync::Mutex` held only for the synchronous state change, never across an `.await`
//! (as in mini-redis's `db.rs`), and every wait re-checks the condition after waking.
//!
//! # Resends and lost steps
//!
//! A writer whose stream broke reopens it at its oldest unacknowledged chunk (`first_seq`, and
//! that chunk's absolute `first_step`), then resends from there. Against the stream's cursor:
//!
//! - unknown stream: opened at `first_step`; the steps before it were acknowledged by a shard
//!   that no longer has them (a restore from an older checkpoint, or none), so they count as
//!   lost. A fresh stream opens at step 0 and loses nothing;
//! - `first_seq` = the next sequence number: a plain reconnect; `first_step` must be the
//!   stream's next step;
//! - `first_seq` below it: the writer lost acknowledgements, not data; the chunks it resends
//!   below the next sequence number are acknowledged as duplicates ([`Inserted::Duplicate`]) and
//!   not stored again;
//! - `first_seq` above it: the shard lost acknowledged chunks (it was restored from an older
//!   checkpoint): the `first_step − next_step` steps count as lost and the stream goes on after a
//!   gap ([`Table::continue_after_gap`]: no window spans it).
//!
//! So, with every stream reopened: steps acknowledged to writers = inserted + lost, and
//! inserted = stored + evicted. [`Shard::snapshot`] and [`Shard::restore`] carry the table, the
//! limiter's counters, the cursors and these counters through a checkpoint.
//!
//! A stream is open while the writer that opened it last is connected: the service calls
//! [`Shard::release`] when an insert connection ends, and a chunk on a closed stream is refused
//! until it is opened again. A restored shard has no writers, so all its streams start closed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::rng::{self, StreamRng};
use tokio::sync::Notify;

use crate::rate_limiter::{LimiterState, RateLimiter};
use crate::shard_checkpoint::{SavedCounters, SavedCursor, ShardSnapshot};
use crate::table::{ChunkData, SnapshotError, StreamKey, StreamSpec, Table, WindowBuf, WindowMeta};

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

/// Where a stream stands: its shape, the next chunk it may send, and who holds it open.
///
/// Cursors outlive their streams' data (a closed stream whose chunks were all evicted is gone
/// from the table, not from here), so that a writer reconnecting much later is still told apart
/// from one whose steps were lost. One cursor per stream ever opened: a few dozen bytes each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub spec: StreamSpec,
    /// Sequence number of the next chunk.
    pub next_seq: u64,
    /// Absolute index of the next chunk's first step.
    pub next_step: u64,
    /// The writer (insert connection) that opened the stream last, while it is open; `None` once
    /// that writer went away (the stream is closed; its data stays until evicted).
    pub writer: Option<u64>,
}

/// What [`Shard::insert`] did with an accepted chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored (and counted by the limiter).
    Stored,
    /// A resend of a chunk stored before (its sequence number is below the stream's next one):
    /// acknowledged again, not stored twice.
    Duplicate,
}

/// Counters beyond the table's own. The first four are saved in checkpoints; the blocked times
/// and the checkpoint counts belong to the running process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardCounters {
    pub sampled_windows: u64,
    pub refused_chunks: u64,
    /// Steps that writers had acknowledged but this shard does not have (see the module doc).
    pub lost_steps: u64,
    /// Resent chunks acknowledged without being stored again.
    pub duplicate_chunks: u64,
    pub insert_blocked: Duration,
    pub sample_blocked: Duration,
    /// Checkpoints completed by this process, and when the newest completed (Unix ms, 0 if none).
    pub checkpoints: u64,
    pub last_checkpoint_unix_ms: i64,
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
    /// Streams a writer holds open now.
    pub open_streams: u32,
    pub counters: ShardCounters,
    pub limiter: LimiterState,
    /// The checkpoint this shard restored at start, if any.
    pub restored_from: Option<String>,
}

/// Why [`Shard::restore`] refused a snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    #[error("the checkpoint belongs to shard {found}, not to shard {expected}")]
    ShardId { expected: u32, found: u32 },
    #[error(
        "the checkpoint was written with replay.{field} = {found}, but this shard has {expected}; \
         use the same value, or move the checkpoint directory away to start empty"
    )]
    Config { field: &'static str, expected: u64, found: u64 },
    #[error(transparent)]
    Table(#[from] SnapshotError),
    #[error("inconsistent shard snapshot: {0}")]
    Inconsistent(String),
}

/// Counts one request waiting on the limiter in a gauge for as long as it lives, so that a wait
/// that never ends is visible (the blocked-seconds histograms record a wait only once it ends).
struct Blocked(metrics::Gauge);

impl Blocked {
    fn new(name: &'static str, shard: u32) -> Blocked {
        let gauge = metrics::gauge!(name, "shard" => shard.to_string());
        gauge.increment(1.0);
        Blocked(gauge)
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Records the time from a request's arrival to its answer (whatever the answer) when dropped.
struct Answered {
    histogram: metrics::Histogram,
    since: Instant,
}

impl Answered {
    fn new(name: &'static str, shard: u32) -> Answered {
        Answered { histogram: metrics::histogram!(name, "shard" => shard.to_string()), since: Instant::now() }
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.histogram.record(self.since.elapsed().as_secs_f64());
    }
}

struct State {
    table: Table,
    limiter: RateLimiter,
    cursors: HashMap<StreamKey, Cursor>,
    counters: ShardCounters,
    rng: StreamRng,
    restored_from: Option<String>,
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
        crate::metrics::register_shard(id);
        // A MinSize limiter is Reverb's ratio limiter with unbounded diffs: it targets no ratio.
        let target = if limiter.targets_a_ratio() { limiter.samples_per_insert() } else { 0.0 };
        metrics::gauge!("dsm_replay_samples_per_insert_target", "shard" => id.to_string()).set(target);
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
                restored_from: None,
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

    /// Opens, for `writer` (an id for the insert connection), a stream whose chunk `first_seq`
    /// starts at absolute step `first_step`, or reopens one after a broken connection; see the
    /// module doc for the four cases. The stream stays open until [`release`](Self::release) by
    /// the same writer (a newer writer's open takes it over). Refused, changing nothing: another
    /// shape than the stream's or the table's (`open`), and a `first_step` that contradicts the
    /// stream's (`open.first_step`).
    pub fn open(
        &self,
        writer: u64,
        key: StreamKey,
        spec: StreamSpec,
        first_seq: u64,
        first_step: u64,
    ) -> Result<(), Refused> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(cursor) = s.cursors.get(&key).copied() else {
            s.table
                .open_stream_at(key, spec, first_step)
                .map_err(|e| Refused::new(tonic::Code::FailedPrecondition, "open", e.to_string()))?;
            let cursor = Cursor { spec, next_seq: first_seq, next_step: first_step, writer: Some(writer) };
            s.cursors.insert(key, cursor);
            self.count_lost(s, first_step);
            return Ok(());
        };
        if cursor.spec != spec {
            return Err(Refused::new(
                tonic::Code::FailedPrecondition,
                "open",
                "stream is already open with another shape",
            ));
        }
        let (next_seq, next_step) = (cursor.next_seq, cursor.next_step);
        let contradiction = |why: String| Err(Refused::new(tonic::Code::FailedPrecondition, "open.first_step", why));
        // Where the stream goes on: its next step, or past a gap of lost steps.
        let step = match first_seq.cmp(&next_seq) {
            Ordering::Equal if first_step != next_step => {
                return contradiction(format!(
                    "chunk {first_seq} is the stream's next and starts at step {next_step}, not {first_step}"
                ))
            }
            // A resend from an earlier chunk: those below `next_seq` are acknowledged as duplicates.
            Ordering::Less if first_step >= next_step => {
                return contradiction(format!(
                    "chunk {first_seq} was stored before step {next_step}, so it cannot start at step {first_step}"
                ))
            }
            Ordering::Equal | Ordering::Less => next_step,
            Ordering::Greater if first_step <= next_step => {
                return contradiction(format!(
                    "chunks {next_seq}..{first_seq} are missing, so chunk {first_seq} must start after step \
                     {next_step}, not at {first_step}"
                ))
            }
            Ordering::Greater => first_step,
        };
        debug_assert!(s.table.stream(&key).is_none_or(|i| i.next_step == next_step), "cursor and table agree");
        let reopened = match s.table.stream(&key) {
            Some(info) if info.open => s.table.continue_after_gap(key, step).map(|_| ()),
            // Closed: resumed, after a gap if there is one; or forgotten once evicted: reopened.
            _ => s.table.open_stream_at(key, spec, step),
        };
        reopened.map_err(|e| Refused::new(tonic::Code::FailedPrecondition, "open.first_step", e.to_string()))?;
        let c = s.cursors.get_mut(&key).expect("checked above");
        c.writer = Some(writer);
        if step > next_step {
            c.next_seq = first_seq;
            c.next_step = step;
            self.count_lost(s, step - next_step);
        }
        Ok(())
    }

    /// Closes `key` if `writer` holds it open (its insert connection ended): its data stays
    /// sampleable until evicted, and a later open resumes it. A writer that no longer holds the
    /// stream (a newer connection reopened it) changes nothing.
    pub fn release(&self, writer: u64, key: &StreamKey) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(c) = s.cursors.get_mut(key).filter(|c| c.writer == Some(writer)) {
            c.writer = None;
            s.table.close_stream(*key);
        }
    }

    fn count_lost(&self, s: &mut State, steps: u64) {
        if steps > 0 {
            s.counters.lost_steps += steps;
            metrics::counter!("dsm_replay_lost_steps_total", "shard" => self.id.to_string()).increment(steps);
        }
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
    /// lock, so two writers of one stream cannot interleave. A chunk whose sequence number is
    /// below the stream's next one was stored before: it is acknowledged as a duplicate at once,
    /// without waiting for the limiter.
    pub async fn insert(
        &self,
        key: StreamKey,
        chunk: ChunkData,
        deadline: Option<Instant>,
    ) -> Result<Inserted, Refused> {
        let steps = chunk.steps as u64;
        let _answered = Answered::new("dsm_replay_insert_seconds", self.id);
        let mut blocked: Option<Blocked> = None;
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
                if cursor.writer.is_none() {
                    return Err(Refused::new(
                        tonic::Code::FailedPrecondition,
                        "chunk.stream",
                        "stream is closed (its connection ended); open it again first",
                    ));
                }
                if chunk.first_seq < cursor.next_seq {
                    s.counters.duplicate_chunks += 1;
                    metrics::counter!("dsm_replay_duplicate_chunks_total", "shard" => self.id.to_string()).increment(1);
                    return Ok(Inserted::Duplicate);
                }
                if chunk.first_seq > cursor.next_seq {
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
                        c.next_step += steps;
                    }
                    self.publish_gauges(&s, steps, outcome.evicted_steps as u64);
                    drop(s);
                    self.changed.notify_waiters();
                    return Ok(Inserted::Stored);
                }
            }
            let now = Instant::now();
            waited_since.get_or_insert(now);
            blocked.get_or_insert_with(|| Blocked::new("dsm_replay_blocked_inserts", self.id));
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
        let _answered = Answered::new("dsm_replay_sample_seconds", self.id);
        let mut blocked: Option<Blocked> = None;
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
            blocked.get_or_insert_with(|| Blocked::new("dsm_replay_blocked_samples", self.id));
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
            open_streams: s.table.stats().open_streams as u32,
            counters: s.counters,
            limiter: s.limiter.checkpoint(),
            restored_from: s.restored_from.clone(),
        }
    }

    /// Everything a checkpoint keeps, taken under the lock in O(streams + chunks): one reference
    /// count per chunk, no payload copied. Inserts and samples wait only for this.
    pub fn snapshot(&self) -> ShardSnapshot {
        let s = self.lock();
        ShardSnapshot {
            shard_id: self.id,
            table: s.table.snapshot(),
            limiter: s.limiter.checkpoint(),
            cursors: s
                .cursors
                .iter()
                .map(|(&key, c)| SavedCursor { key, next_seq: c.next_seq, next_step: c.next_step })
                .collect(),
            counters: SavedCounters {
                sampled_windows: s.counters.sampled_windows,
                refused_chunks: s.counters.refused_chunks,
                lost_steps: s.counters.lost_steps,
                duplicate_chunks: s.counters.duplicate_chunks,
            },
        }
    }

    /// Replaces this shard's state with a snapshot's (read from `source`, which `Stats` reports).
    ///
    /// The limiter keeps its *settings* from this shard's config and takes the snapshot's
    /// *counters*: the config is the experiment's one source of truth, and Reverb's restoring of
    /// old settings is what left its users' samplers blocked with no visible reason (reverb
    /// #103, anchors-distributed.md §7). With the counters restored, the limiter's size equals the
    /// restored table's, so a shard that holds its minimum size samples at once. Refused, changing
    /// nothing: another shard's snapshot, another window or `max_size`, and any inconsistency.
    pub fn restore(&self, snapshot: ShardSnapshot, source: impl Into<String>) -> Result<(), RestoreError> {
        let ShardSnapshot { shard_id, table, limiter, cursors, counters } = snapshot;
        if shard_id != self.id {
            return Err(RestoreError::ShardId { expected: self.id, found: shard_id });
        }
        if table.window != self.window {
            let (expected, found) = (self.window as u64, table.window as u64);
            return Err(RestoreError::Config { field: "window_steps", expected, found });
        }
        if table.max_size as u64 != self.max_size {
            let (expected, found) = (self.max_size, table.max_size as u64);
            return Err(RestoreError::Config { field: "max_size", expected, found });
        }
        let mut table = Table::restore(table)?;
        let inconsistent = |m: String| Err(RestoreError::Inconsistent(m));
        if limiter.delete_count > limiter.insert_count
            || limiter.insert_count - limiter.delete_count != table.stored_steps() as u64
        {
            return inconsistent(format!(
                "the limiter counts {} inserts and {} deletes, but the table stores {} steps",
                limiter.insert_count,
                limiter.delete_count,
                table.stored_steps()
            ));
        }
        let mut restored_cursors = HashMap::with_capacity(cursors.len());
        for SavedCursor { key, next_seq, next_step } in cursors {
            let Some(spec) = table.spec() else { return inconsistent("cursors without a spec".into()) };
            if table.stream(&key).is_some_and(|i| i.next_step != next_step) {
                return inconsistent(format!("{key}: the cursor and the table disagree on the next step"));
            }
            restored_cursors.insert(key, Cursor { spec, next_seq, next_step, writer: None });
        }
        // No writer is connected to a restored shard: every stream is closed until reopened.
        let open: Vec<StreamKey> = table.streams().filter(|i| i.open).map(|i| i.key).collect();
        for key in open {
            if !restored_cursors.contains_key(&key) {
                return inconsistent(format!("{key} is open in the table but has no cursor"));
            }
            table.close_stream(key);
        }
        if let Some(info) = table.streams().find(|i| !restored_cursors.contains_key(&i.key)) {
            return inconsistent(format!("{} is in the table but has no cursor", info.key));
        }
        let mut s = self.lock();
        let settings = s.limiter.checkpoint();
        let state = LimiterState {
            insert_count: limiter.insert_count,
            sample_count: limiter.sample_count,
            delete_count: limiter.delete_count,
            ..settings
        };
        s.limiter = RateLimiter::restore(&state).map_err(|e| RestoreError::Inconsistent(e.to_string()))?;
        s.table = table;
        s.cursors = restored_cursors;
        s.counters = ShardCounters {
            sampled_windows: counters.sampled_windows,
            refused_chunks: counters.refused_chunks,
            lost_steps: counters.lost_steps,
            duplicate_chunks: counters.duplicate_chunks,
            ..ShardCounters::default()
        };
        s.restored_from = Some(source.into());
        self.publish_gauges(&s, 0, 0);
        drop(s);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Records a completed checkpoint (for `Stats` and the metrics).
    pub fn record_checkpoint(&self, unix_ms: i64) {
        let mut s = self.lock();
        s.counters.checkpoints += 1;
        s.counters.last_checkpoint_unix_ms = unix_ms;
        metrics::counter!("dsm_replay_checkpoints_total", "shard" => self.id.to_string()).increment(1);
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
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
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
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
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
        shard.open(1, KEY, SPEC, 5, 0).unwrap();
        let err = shard.insert(KEY, chunk(6, 2), None).await.unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::OutOfRange, "chunk.seq"));
        assert_eq!(shard.insert(KEY, chunk(5, 2), None).await.unwrap(), Inserted::Stored);
        // Re-opening at the next sequence number and step is a reconnect.
        shard.open(1, KEY, SPEC, 6, 2).unwrap();
        let err = shard.open(1, KEY, SPEC, 6, 3).unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::FailedPrecondition, "open.first_step"));
        assert!(err.message.contains("starts at step 2, not 3"), "{err}");
        // A resend from an earlier chunk must start before the next step.
        assert_eq!(shard.open(1, KEY, SPEC, 5, 2).unwrap_err().field, "open.first_step");
        shard.open(1, KEY, SPEC, 5, 0).unwrap();
        // A later chunk must start after it.
        assert_eq!(shard.open(1, KEY, SPEC, 8, 2).unwrap_err().field, "open.first_step");
        let other = StreamSpec { obs_dim: 2, ..SPEC };
        assert_eq!(shard.open(1, KEY, other, 6, 2).unwrap_err().field, "open");
        let key2 = StreamKey { env_index: 1, ..KEY };
        assert!(shard.open(1, key2, other, 0, 0).unwrap_err().message.contains("obs_dim"));
        let s = shard.stats();
        assert_eq!((s.size_steps, s.counters.lost_steps, s.counters.duplicate_chunks), (2, 0, 0));
    }

    /// A writer that lost acknowledgements reopens at its oldest unacknowledged chunk and resends:
    /// what was stored is acknowledged again without being stored, the rest is stored once.
    #[tokio::test]
    async fn resends_are_acknowledged_as_duplicates_and_not_stored() {
        let shard = Shard::new(0, 1000, 2, RateLimiter::min_size(2).unwrap(), 0);
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
        for seq in 0..5 {
            shard.insert(KEY, chunk(seq, 4), None).await.unwrap();
        }
        // Acks for chunks 2..5 were lost: reopen at chunk 2 (step 8) and resend 2..8.
        shard.open(1, KEY, SPEC, 2, 8).unwrap();
        let mut acks = Vec::new();
        for seq in 2..8 {
            acks.push(shard.insert(KEY, chunk(seq, 4), None).await.unwrap());
        }
        use Inserted::{Duplicate, Stored};
        assert_eq!(acks, [Duplicate, Duplicate, Duplicate, Stored, Stored, Stored]);
        let s = shard.stats();
        assert_eq!((s.inserted_steps, s.size_steps, s.counters.duplicate_chunks), (32, 32, 3));
        assert_eq!(s.limiter.insert_count, 32, "duplicates are not counted as inserts");
        assert_eq!(s.counters.refused_chunks, 0);
        // The stored steps are 0..32 exactly once: every window is consecutive.
        let mut out = PackedWindows::default();
        shard.sample(500, soon(1000), &mut out).await.unwrap();
        for (w, meta) in out.metas.iter().enumerate() {
            let rows = &out.observations[2 * w..2 * w + 2];
            assert_eq!(rows, [meta.start_step as f32, meta.start_step as f32 + 1.0]);
        }
    }

    /// A shard that lost acknowledged chunks (restored from an older checkpoint) counts them when
    /// the stream reopens past them; the identities hold: inserted = stored + evicted, and
    /// acknowledged = inserted + lost.
    #[tokio::test]
    async fn reopening_past_a_gap_counts_lost_steps() {
        let shard = Shard::new(0, 40, 2, RateLimiter::min_size(2).unwrap(), 0);
        let key2 = StreamKey { env_index: 1, ..KEY };
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
        for seq in 0..3 {
            shard.insert(KEY, chunk(seq, 4), None).await.unwrap();
        }
        // The writer had chunks 3..6 acknowledged by the shard's previous life: resume at chunk 6.
        shard.open(1, KEY, SPEC, 6, 24).unwrap();
        assert_eq!(shard.stats().counters.lost_steps, 12);
        for seq in 6..16 {
            shard.insert(KEY, chunk(seq, 4), None).await.unwrap();
        }
        // A stream the shard never saw, reopened at step 20: its first 20 steps were lost.
        shard.open(1, key2, SPEC, 5, 20).unwrap();
        shard.insert(key2, chunk(5, 4), None).await.unwrap();
        let s = shard.stats();
        let acknowledged = 16 * 4 + (20 + 4);
        assert_eq!(s.counters.lost_steps, 12 + 20);
        assert_eq!(s.inserted_steps, s.size_steps + s.evicted_steps);
        assert_eq!(s.inserted_steps + s.counters.lost_steps, acknowledged);
        assert!(s.evicted_steps > 0);
        // Windows never span the gap [12, 24) of the first stream.
        let mut out = PackedWindows::default();
        shard.sample(1000, soon(1000), &mut out).await.unwrap();
        for (w, meta) in out.metas.iter().enumerate() {
            let rows = &out.observations[2 * w..2 * w + 2];
            assert_eq!(rows[1], rows[0] + 1.0, "{meta:?} is consecutive");
            if meta.key == KEY {
                assert!(meta.start_step + 2 <= 12 || meta.start_step >= 24, "{meta:?} spans the gap");
            }
        }
    }

    /// Restoring a snapshot brings back the table, the cursors, the counters and the limiter's
    /// counters: a shard that held its minimum size samples at once, and writers go on.
    #[tokio::test]
    async fn a_restored_shard_samples_at_once_and_takes_inserts() {
        // spi 1, min size 8, diff in [-4, 40]: samples are limited by inserts, so the restored
        // counters decide whether sampling may go on.
        let limiter = || RateLimiter::new(1.0, 8, -4.0, 40.0).unwrap();
        let shard = Shard::new(3, 1000, 2, limiter(), 0);
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
        for seq in 0..4 {
            shard.insert(KEY, chunk(seq, 4), None).await.unwrap();
        }
        let mut out = PackedWindows::default();
        shard.sample(10, soon(1000), &mut out).await.unwrap();
        let before = shard.stats();
        let snap = shard.snapshot();

        let restored = Shard::new(3, 1000, 2, limiter(), 0);
        restored.restore(snap.clone(), "ckpt-x").unwrap();
        let after = restored.stats();
        assert_eq!(after.limiter, before.limiter);
        assert_eq!(after.restored_from.as_deref(), Some("ckpt-x"));
        assert_eq!(
            (after.size_steps, after.inserted_steps, after.valid_window_starts, after.counters.sampled_windows),
            (before.size_steps, before.inserted_steps, before.valid_window_starts, 10)
        );
        assert_eq!(after.open_streams, 0, "no writer is connected to a restored shard");
        // The same state, but for the open flags.
        let (mut again, mut expected) = (restored.snapshot(), snap.clone());
        expected.table.ranges.iter_mut().for_each(|r| r.open = false);
        again.cursors.sort();
        expected.cursors.sort();
        assert_eq!(again, expected);
        let mut out = PackedWindows::default();
        restored.sample(1, soon(200), &mut out).await.expect("sampling does not hang after a restore");
        let err = restored.insert(KEY, chunk(4, 4), None).await.unwrap_err();
        assert_eq!(err.field, "chunk.stream", "a writer must reopen first");
        restored.open(2, KEY, SPEC, 4, 16).unwrap();
        assert_eq!(restored.insert(KEY, chunk(4, 4), Some(soon(200))).await.unwrap(), Inserted::Stored);
        assert_eq!(restored.insert(KEY, chunk(1, 4), None).await.unwrap(), Inserted::Duplicate);

        // Another shard's snapshot, or another max_size, is refused and changes nothing.
        let other = Shard::new(4, 1000, 2, limiter(), 0);
        assert_eq!(other.restore(snap.clone(), "x"), Err(RestoreError::ShardId { expected: 4, found: 3 }));
        let smaller = Shard::new(3, 500, 2, limiter(), 0);
        let err = smaller.restore(snap.clone(), "x").unwrap_err();
        assert!(err.to_string().contains("replay.max_size = 1000"), "{err}");
        assert_eq!(smaller.stats().size_steps, 0);
        let mut broken = snap;
        broken.limiter.delete_count += 1;
        assert!(matches!(restored.restore(broken, "x"), Err(RestoreError::Inconsistent(_))));
    }

    /// A stream is open while the writer that opened it last is connected; its data outlives it,
    /// and its cursor outlives its data, so a writer that comes back resumes without loss.
    #[tokio::test]
    async fn a_stream_closes_when_its_writer_goes_and_reopens_where_it_stopped() {
        let shard = Shard::new(0, 40, 2, RateLimiter::min_size(2).unwrap(), 0);
        let key2 = StreamKey { env_index: 1, ..KEY };
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
        shard.insert(KEY, chunk(0, 4), None).await.unwrap();
        shard.insert(KEY, chunk(1, 4), None).await.unwrap();
        assert_eq!(shard.stats().open_streams, 1);
        // Writer 2 reconnects before the server noticed writer 1 is gone: 1's end changes nothing.
        shard.open(2, KEY, SPEC, 2, 8).unwrap();
        shard.release(1, &KEY);
        assert_eq!(shard.stats().open_streams, 1);
        shard.insert(KEY, chunk(2, 4), None).await.unwrap();
        shard.release(2, &KEY);
        assert_eq!(shard.stats().open_streams, 0);
        let err = shard.insert(KEY, chunk(3, 4), None).await.unwrap_err();
        assert_eq!((err.code, err.field), (tonic::Code::FailedPrecondition, "chunk.stream"));
        let mut out = PackedWindows::default();
        shard.sample(1, soon(200), &mut out).await.expect("a closed stream's data stays sampleable");
        shard.open(3, KEY, SPEC, 3, 12).unwrap();
        shard.insert(KEY, chunk(3, 4), None).await.unwrap();
        shard.release(3, &KEY);
        // Evicted entirely while closed, the stream is gone from the table, not from the cursors:
        // it comes back at step 16 with nothing lost, or later with the gap counted.
        shard.open(1, key2, SPEC, 0, 0).unwrap();
        for seq in 0..10 {
            shard.insert(key2, chunk(seq, 4), None).await.unwrap();
        }
        assert_eq!(shard.stats().streams, 1, "the table forgot the closed, evicted stream");
        assert_eq!(shard.open(4, KEY, SPEC, 4, 20).unwrap_err().field, "open.first_step");
        shard.open(4, KEY, SPEC, 4, 16).unwrap();
        assert_eq!(shard.stats().counters.lost_steps, 0);
        shard.release(4, &KEY);
        shard.open(5, KEY, SPEC, 6, 24).unwrap();
        assert_eq!(shard.stats().counters.lost_steps, 8);
        shard.insert(KEY, chunk(6, 4), None).await.unwrap();
        let s = shard.stats();
        assert_eq!(s.inserted_steps, s.size_steps + s.evicted_steps);
        assert_eq!(s.inserted_steps + s.counters.lost_steps, 16 + 40 + 8 + 4);
    }

    /// FIFO eviction keeps the store bounded, and inserted = stored + evicted.
    #[tokio::test]
    async fn accounting_holds_through_eviction() {
        let shard = Shard::new(0, 100, 2, RateLimiter::min_size(2).unwrap(), 0);
        shard.open(1, KEY, SPEC, 0, 0).unwrap();
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
