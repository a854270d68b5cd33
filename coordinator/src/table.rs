//! The storage of one replay shard: per-stream chunks under one global step budget.
//!
//! # Map
//!
//! - [`Table`] owns every stored chunk. Actors' chunks arrive through [`Table::insert`] (after the
//!   service has validated shapes, finiteness, step types and sequence continuity); the learner's
//!   windows leave through [`Table::sample_into`].
//! - [`StreamKey`] names a stream, [`StreamSpec`] fixes its row shapes, [`ChunkData`] is one chunk.
//! - [`WindowBuf`] is the caller's reusable output buffer, [`WindowMeta`] says where a window came from.
//! - [`TableStats`] is the O(1) accounting the `Stats` RPC and the metrics read.
//! - [`TableSnapshot`] is the table's whole state, taken in O(chunks) pointer copies (chunk
//!   payloads are shared, never copied), and [`Table::restore`] rebuilds an identical table from
//!   one: the shard's checkpoints are written from it outside the shard's lock.
//!
//! # Contract
//!
//! - **Budget.** At most `max_size` steps are stored. After each insert, while more are stored, the
//!   globally oldest chunk (in insertion order, across all streams) is evicted. A chunk is never split.
//! - **Contiguity.** Chunks of one stream arrive in order and eviction is FIFO, so the oldest chunk
//!   of the table is always the oldest chunk of its stream: a stream's stored steps are one contiguous
//!   range `[first_step, next_step)` of absolute step indices. A window can therefore never cross an
//!   eviction gap (checked by `debug_assert`s on every eviction and copy, and by the tests).
//! - **Gaps.** A stream may start at any absolute step ([`Table::open_stream_at`]), and may go on
//!   after a gap ([`Table::continue_after_gap`]: a shard restored from a checkpoint lost the steps
//!   its writers sent after it). The steps stored before the gap then become a *segment*: a closed
//!   range in a slot of its own, sampleable until evicted, that no longer answers to the stream's
//!   key; the stream goes on in a new slot. Each slot is one contiguous range, so no window spans
//!   a gap.
//! - **Windows.** A window is `W` consecutive stored steps of one slot; a slot with `L` stored
//!   steps has `max(0, L − W + 1)` valid starts. [`Table::sample_into`] draws uniformly over all
//!   valid (slot, start) pairs of the table, so a client that draws from each shard in proportion
//!   to its [`Table::valid_starts`] is uniform over the union (ARCHITECTURE.md, "Conventions").
//!   Windows may contain an episode boundary: step types are copied as they are and the learner
//!   decides what a LAST inside a window means. A window never crosses the start of a stream,
//!   because it never leaves one stream.
//! - **Cost.** Insert: O(log S) plus O(log S) per evicted chunk (S = stream slots). Sample: O(log S)
//!   to choose the stream (a Fenwick tree over per-stream valid-start counts), O(log C) to find the
//!   chunk (binary search over chunk start steps, C = the stream's chunks), then a copy of `W` rows
//!   into the caller's buffers with no allocation. Every statistic: O(1). Snapshot: O(S + C) with
//!   one reference-count increment per chunk; restore: O(S + C) plus the shape checks.
//!
//! This module imports no tokio and no gRPC and takes no locks; the service wraps the table in a
//! `std::sync::Mutex` and holds it only for these synchronous calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use rand::Rng;

/// The identity of one stream (defined in `common`, because a sampled window names it on the
/// client side too).
pub use common::shard::StreamKey;

/// The row shapes of a stream's steps.
///
/// One table holds one spec, fixed by the first stream opened: a sampled batch mixes windows of
/// all streams, so they must all have the same shapes (one experiment, one state space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// Floats per observation row (50 place-cell rates, or 3 for Pendulum).
    pub obs_dim: usize,
    /// Floats per action row; 0 when the env records no actions (the riab envs).
    pub action_dim: usize,
    /// Whether each step carries a reward (Pendulum) or not (riab).
    pub has_rewards: bool,
}

/// One chunk of consecutive steps of one stream, moved into the table (its vectors are kept, not
/// copied) and held behind an `Arc`, so that a [`TableSnapshot`] shares it instead of copying it.
///
/// The caller (the replay service) has already validated it against the stream's header: shapes,
/// finite values, step-type codes and sequence continuity. The table re-checks only what its own
/// invariants need and can check in O(1): a non-zero step count, the size limit and the vector
/// lengths.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChunkData {
    /// The chunk's sequence number (one per chunk, consecutive within a stream; the name follows
    /// the wire's "first sequence number" of a stream header). Kept so that
    /// [`StreamInfo::last_seq`] can tell a reconnecting actor where to resume.
    pub first_seq: u64,
    /// Number of steps (rows) in the chunk.
    pub steps: usize,
    /// `steps × obs_dim` floats, row-major.
    pub observations: Vec<f32>,
    /// `steps` codes: 0 FIRST, 1 MID, 2 LAST.
    pub step_types: Vec<u8>,
    /// `steps × action_dim` floats, row-major (empty when `action_dim` is 0).
    pub actions: Vec<f32>,
    /// `steps` floats, or empty when the spec has no rewards.
    pub rewards: Vec<f32>,
}

impl ChunkData {
    /// Payload bytes: what the chunk's arrays occupy, not counting vector headers or spare capacity.
    pub fn payload_bytes(&self) -> usize {
        4 * (self.observations.len() + self.actions.len() + self.rewards.len()) + self.step_types.len()
    }
}

/// Why the table refused an `open_stream` or an `insert`. Each variant names what was wrong so the
/// service can map it to a status code and a field violation without parsing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The stream's spec differs from the one the table's first stream fixed; `field` is
    /// `obs_dim`, `action_dim` or `has_rewards` (the first that differs).
    SpecMismatch { field: &'static str, table: StreamSpec, stream: StreamSpec },
    /// `open_stream` on a stream that is open already.
    AlreadyOpen(StreamKey),
    /// `insert` on a stream that was never opened (or was closed, fully evicted and dropped).
    UnknownStream(StreamKey),
    /// `insert` or `continue_after_gap` on a stream that is closed.
    StreamClosed(StreamKey),
    /// A stream asked to go on at a step before its next one: stored steps are never rewritten.
    StepBehind { key: StreamKey, next_step: u64, first_step: u64 },
    /// A chunk with zero steps: it would hold a queue entry and a sequence number but no data.
    EmptyChunk,
    /// A chunk larger than the whole table. Refused rather than stored-then-evicted: storing it
    /// would evict every other stream's data and then the chunk itself, leaving an empty table.
    ChunkTooLarge { steps: usize, max_size: usize },
    /// A chunk array whose length is not what `steps` and the spec imply; `field` is
    /// `observations`, `step_types`, `actions` or `rewards`.
    Shape { field: &'static str, expected: usize, got: usize },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::SpecMismatch { field, table, stream } => {
                let show = |s: &StreamSpec| match *field {
                    "obs_dim" => s.obs_dim.to_string(),
                    "action_dim" => s.action_dim.to_string(),
                    _ => s.has_rewards.to_string(),
                };
                write!(f, "{field} is {}, but this table's streams have {}", show(stream), show(table))
            }
            TableError::AlreadyOpen(key) => write!(f, "{key} is already open"),
            TableError::UnknownStream(key) => write!(f, "{key} is not open"),
            TableError::StreamClosed(key) => write!(f, "{key} is closed"),
            TableError::StepBehind { key, next_step, first_step } => {
                write!(f, "{key} cannot go on at step {first_step}: its next step is {next_step}")
            }
            TableError::EmptyChunk => write!(f, "steps is 0; a chunk must hold at least one step"),
            TableError::ChunkTooLarge { steps, max_size } => {
                write!(f, "steps is {steps}, more than the table's max_size of {max_size} steps")
            }
            TableError::Shape { field, expected, got } => write!(f, "{field} has {got} values, expected {expected}"),
        }
    }
}

impl std::error::Error for TableError {}

/// What one insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Absolute index (within its stream) of the chunk's first step.
    pub first_step: u64,
    /// Steps evicted to bring the table back within `max_size` (0 if it fitted).
    pub evicted_steps: usize,
    /// Chunks evicted, all of them older than the inserted one.
    pub evicted_chunks: usize,
}

/// Where a sampled window came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowMeta {
    /// The stream the window belongs to.
    pub key: StreamKey,
    /// Absolute index of the window's first step within its stream, counted from the stream's
    /// start as its writer numbers steps (evicted and lost steps included), so indices stay
    /// comparable across eviction, gaps and restarts.
    pub start_step: u64,
}

/// The caller's reusable window buffers. [`Table::sample_into`] clears and refills them; once
/// their capacity suffices (as [`WindowBuf::new`] ensures) sampling allocates nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowBuf {
    /// `W × obs_dim` floats, row-major.
    pub observations: Vec<f32>,
    /// `W` step-type codes.
    pub step_types: Vec<u8>,
    /// `W × action_dim` floats (empty when `action_dim` is 0).
    pub actions: Vec<f32>,
    /// `W` floats, or empty when the spec has no rewards.
    pub rewards: Vec<f32>,
}

impl WindowBuf {
    /// Buffers with room for one window of `window` steps of `spec`.
    pub fn new(spec: StreamSpec, window: usize) -> Self {
        WindowBuf {
            observations: Vec::with_capacity(window * spec.obs_dim),
            step_types: Vec::with_capacity(window),
            actions: Vec::with_capacity(window * spec.action_dim),
            rewards: Vec::with_capacity(if spec.has_rewards { window } else { 0 }),
        }
    }

    fn clear(&mut self) {
        self.observations.clear();
        self.step_types.clear();
        self.actions.clear();
        self.rewards.clear();
    }
}

/// A snapshot of one stream's state, for listings and for resuming a reconnecting actor. It
/// describes the stream's current range only: segments left behind by a gap are not counted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub key: StreamKey,
    /// Whether inserts are accepted. A closed stream's data stays sampleable until evicted.
    pub open: bool,
    /// Absolute index of the first stored step (equals `next_step` when nothing is stored).
    pub first_step: u64,
    /// Absolute index the next inserted step will get: the step it was opened at, plus its steps
    /// ever inserted, plus any gaps it went on after.
    pub next_step: u64,
    /// Steps stored now: `next_step − first_step`.
    pub stored_steps: usize,
    /// Chunks stored now.
    pub chunks: usize,
    /// Valid window starts now: `max(0, stored_steps − W + 1)`.
    pub valid_starts: u64,
    /// Sequence number of the last chunk inserted (even if since evicted); `None` before the first.
    pub last_seq: Option<u64>,
}

/// The table's accounting, all maintained incrementally. `inserted_steps_total =
/// stored_steps + evicted_steps_total` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Steps stored now (at most `max_size`).
    pub stored_steps: usize,
    /// Steps ever inserted.
    pub inserted_steps_total: u64,
    /// Steps ever evicted.
    pub evicted_steps_total: u64,
    /// Chunks stored now.
    pub chunks_stored: usize,
    /// Chunks ever evicted.
    pub evicted_chunks_total: u64,
    /// Payload bytes stored now (see [`ChunkData::payload_bytes`]).
    pub bytes_stored: usize,
    /// Streams known to the table: open ones, and closed ones that still hold data.
    pub streams: usize,
    /// Streams open now.
    pub open_streams: usize,
    /// Segments: closed ranges left behind when a stream went on after a gap, still holding data.
    pub segments: usize,
    /// Valid window starts over all streams.
    pub valid_starts: u64,
}

/// One live slot in a [`TableSnapshot`]: a stream's current range, or a segment of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSnapshot {
    /// Which slot (slots are kept, so a restored table draws exactly as the original did).
    pub slot: usize,
    pub key: StreamKey,
    pub open: bool,
    /// A closed range left behind by a gap ([`Table::continue_after_gap`]).
    pub segment: bool,
    /// Absolute index of the first stored step; equals `next_step` when nothing is stored.
    pub first_step: u64,
    pub next_step: u64,
    /// Sequence number of the last chunk inserted into the range (or, for a range that has none,
    /// into the stream before it).
    pub last_seq: Option<u64>,
}

/// One stored chunk in a [`TableSnapshot`]: its slot, its first step, and its payload, shared
/// with the table (the sequence number is `data.first_seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkSnapshot {
    pub slot: usize,
    pub start: u64,
    pub data: Arc<ChunkData>,
}

/// A table's whole state, as [`Table::snapshot`] takes it and [`Table::restore`] rebuilds it.
///
/// Holding one keeps its chunks alive after the table evicts them, which is what lets a shard
/// write a checkpoint outside its lock; the cost is that memory until the write ends (at most
/// one table's worth of payload, when everything is evicted meanwhile).
#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    pub max_size: usize,
    pub window: usize,
    pub spec: Option<StreamSpec>,
    /// Slots, live or free.
    pub slots: usize,
    /// The free slots, in the order they will be reused (last first).
    pub free_slots: Vec<usize>,
    /// The live slots, in slot order.
    pub ranges: Vec<RangeSnapshot>,
    /// Every stored chunk in global insertion (FIFO) order, oldest first.
    pub chunks: Vec<ChunkSnapshot>,
    pub inserted_steps_total: u64,
    pub evicted_steps_total: u64,
    pub evicted_chunks_total: u64,
}

impl TableSnapshot {
    /// Steps the snapshot stores.
    pub fn stored_steps(&self) -> u64 {
        self.chunks.iter().map(|c| c.data.steps as u64).sum()
    }
}

/// Why [`Table::restore`] refused a snapshot: which invariant it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inconsistent table snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

/// A stored chunk: the data plus where it sits in its stream.
#[derive(Debug)]
struct StoredChunk {
    /// Per-stream insertion counter; the FIFO queue names chunks by (slot, id).
    id: u64,
    /// Absolute index of the chunk's first step within its stream.
    start: u64,
    data: Arc<ChunkData>,
}

/// One slot's stored chunks, oldest first: a stream's current range, or a segment of it.
#[derive(Debug)]
struct Stream {
    key: StreamKey,
    open: bool,
    /// A closed range left behind by [`Table::continue_after_gap`]: the stream's key maps to
    /// another slot now, so this one is reachable only through the FIFO queue and the sampler.
    segment: bool,
    chunks: VecDeque<StoredChunk>,
    /// Absolute index of the first stored step; equals `next_step` when nothing is stored.
    first_step: u64,
    next_step: u64,
    next_chunk_id: u64,
    last_seq: Option<u64>,
}

impl Stream {
    fn stored_steps(&self) -> usize {
        (self.next_step - self.first_step) as usize
    }

    fn valid_starts(&self, window: usize) -> u64 {
        self.stored_steps().saturating_sub(window - 1) as u64
    }

    fn info(&self, window: usize) -> StreamInfo {
        StreamInfo {
            key: self.key,
            open: self.open,
            first_step: self.first_step,
            next_step: self.next_step,
            stored_steps: self.stored_steps(),
            chunks: self.chunks.len(),
            valid_starts: self.valid_starts(window),
            last_seq: self.last_seq,
        }
    }
}

/// An entry of the global insertion-order queue: which stream slot, which of its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkRef {
    slot: usize,
    id: u64,
}

/// A Fenwick (binary indexed) tree of per-slot counts: point updates, prefix sums and "which slot
/// holds the k-th unit" in O(log n), and appending a slot in O(log n).
#[derive(Debug, Default)]
struct Fenwick {
    /// `tree[i − 1]` is node i (1-based): the sum of values in slots `(i − lowbit(i), i]`.
    tree: Vec<u64>,
}

impl Fenwick {
    /// Appends a slot holding 0. Node i's range is `(i − lowbit(i), i]`; its last value is the
    /// new 0, so the node holds the sum of the existing slots in `(i − lowbit(i), i − 1]`.
    fn push_zero(&mut self) {
        let i = self.tree.len() + 1;
        let low = i & i.wrapping_neg();
        let sum = self.prefix(i - 1) - self.prefix(i - low);
        self.tree.push(sum);
    }

    /// Sum of the first `n` slots.
    fn prefix(&self, n: usize) -> u64 {
        let mut i = n;
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i - 1];
            i &= i - 1;
        }
        sum
    }

    fn add(&mut self, slot: usize, delta: u64) {
        let mut i = slot + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] += delta;
            i += i & i.wrapping_neg();
        }
    }

    fn sub(&mut self, slot: usize, delta: u64) {
        let mut i = slot + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] -= delta;
            i += i & i.wrapping_neg();
        }
    }

    /// The slot holding unit `k` (0-based, `k < total`) and `k`'s offset within that slot:
    /// the slot s with `prefix(s) ≤ k < prefix(s + 1)`, found by descending the implicit tree.
    fn find(&self, mut k: u64) -> (usize, u64) {
        let n = self.tree.len();
        let mut pos = 0;
        let mut step = if n == 0 { 0 } else { 1 << (usize::BITS - 1 - n.leading_zeros()) };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next - 1] <= k {
                pos = next;
                k -= self.tree[next - 1];
            }
            step >>= 1;
        }
        (pos, k)
    }
}

/// The replay store of one shard. See the module docs for the contract.
#[derive(Debug)]
pub struct Table {
    max_size: usize,
    window: usize,
    /// Fixed by the first stream opened, then never changed.
    spec: Option<StreamSpec>,
    /// Stream slots, indexed like the Fenwick tree. A slot empties when its stream is closed and
    /// holds no data; empty slots are reused (see `free_slots`), so memory is bounded by the peak
    /// number of live streams, not by the number of actor restarts.
    slots: Vec<Option<Stream>>,
    /// Empty slots, reused last-freed first. An empty slot's Fenwick count is 0 and no queue entry
    /// names it (its stream was dropped only once all its chunks had been evicted).
    free_slots: Vec<usize>,
    by_key: HashMap<StreamKey, usize>,
    /// Every stored chunk in global insertion order: the eviction queue.
    fifo: VecDeque<ChunkRef>,
    /// Per-slot valid-start counts, for the uniform draw.
    starts: Fenwick,
    stored_steps: usize,
    inserted_steps_total: u64,
    evicted_steps_total: u64,
    evicted_chunks_total: u64,
    bytes_stored: usize,
    open_streams: usize,
    segments: usize,
    valid_starts: u64,
}

impl Table {
    /// An empty table that stores at most `max_size_steps` steps and samples windows of `window`
    /// steps (H + 1; 7 by default).
    ///
    /// # Panics
    ///
    /// If `window` is 0 or `max_size_steps < window` (no window could ever be stored); the config
    /// validation upstream refuses both, so reaching this is a bug.
    pub fn new(max_size_steps: usize, window: usize) -> Self {
        assert!(window >= 1, "window must be at least 1 step");
        assert!(max_size_steps >= window, "max_size ({max_size_steps}) must hold at least one window ({window})");
        Table {
            max_size: max_size_steps,
            window,
            spec: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            fifo: VecDeque::new(),
            starts: Fenwick::default(),
            stored_steps: 0,
            inserted_steps_total: 0,
            evicted_steps_total: 0,
            evicted_chunks_total: 0,
            bytes_stored: 0,
            open_streams: 0,
            segments: 0,
            valid_starts: 0,
        }
    }

    /// The step budget.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The window length W.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The spec every stream shares, once the first stream has been opened.
    pub fn spec(&self) -> Option<StreamSpec> {
        self.spec
    }

    /// Opens `key` for inserts: a new stream starts at step 0; a closed one that still holds data
    /// resumes where it stopped (same step indices; [`StreamInfo::last_seq`] tells the caller which
    /// sequence number comes next), which is what a reconnecting actor of the same incarnation
    /// needs. See [`open_stream_at`](Self::open_stream_at) for the rules.
    pub fn open_stream(&mut self, key: StreamKey, spec: StreamSpec) -> Result<(), TableError> {
        let first_step = self.stream(&key).map_or(0, |s| s.next_step);
        self.open_stream_at(key, spec, first_step)
    }

    /// Opens `key` for inserts, its next step being the absolute step `first_step`.
    ///
    /// The first stream opened fixes the table's spec; later streams must match it field by field.
    /// A new stream starts at `first_step` (a writer that lost its first steps, or whose shard did,
    /// still numbers steps from its stream's start). A closed stream that still holds data resumes
    /// at `first_step` if that is its next step, and goes on after a gap (see
    /// [`continue_after_gap`](Self::continue_after_gap)) if it is later; an earlier one is refused.
    /// A stream that is open already is refused: two writers on one stream would interleave its
    /// steps. A refused open changes nothing.
    pub fn open_stream_at(&mut self, key: StreamKey, spec: StreamSpec, first_step: u64) -> Result<(), TableError> {
        self.check_spec(spec)?;
        if let Some(&slot) = self.by_key.get(&key) {
            let stream = self.slots[slot].as_mut().expect("an indexed slot holds its stream");
            if stream.open {
                return Err(TableError::AlreadyOpen(key));
            }
            if first_step < stream.next_step {
                return Err(TableError::StepBehind { key, next_step: stream.next_step, first_step });
            }
            stream.open = true;
            self.open_streams += 1;
            self.continue_after_gap(key, first_step).expect("an open stream at or after its next step goes on");
        } else {
            let slot = self.new_slot(Stream {
                key,
                open: true,
                segment: false,
                chunks: VecDeque::new(),
                first_step,
                next_step: first_step,
                next_chunk_id: 0,
                last_seq: None,
            });
            self.by_key.insert(key, slot);
            self.open_streams += 1;
        }
        self.spec.get_or_insert(spec);
        Ok(())
    }

    /// Moves open stream `key`'s next step forward to `first_step`, as when its writer resends
    /// from a step that the table never received (a shard restored from an older checkpoint).
    /// Returns the steps skipped (0 when `first_step` is the next step already: nothing changes).
    ///
    /// The steps stored before the gap must never form a window with the steps after it, so they
    /// become a segment: a closed range in their own slot, sampleable until FIFO eviction takes
    /// them, that no longer answers to `key`. The stream itself goes on in a new slot whose first
    /// step is `first_step`. A stream that holds nothing just moves on. Refused: an unknown or
    /// closed stream, and a step before the stream's next one.
    pub fn continue_after_gap(&mut self, key: StreamKey, first_step: u64) -> Result<u64, TableError> {
        let slot = *self.by_key.get(&key).ok_or(TableError::UnknownStream(key))?;
        let stream = self.slots[slot].as_mut().expect("an indexed slot holds its stream");
        if !stream.open {
            return Err(TableError::StreamClosed(key));
        }
        if first_step < stream.next_step {
            return Err(TableError::StepBehind { key, next_step: stream.next_step, first_step });
        }
        let gap = first_step - stream.next_step;
        if gap == 0 {
            return Ok(0);
        }
        if stream.chunks.is_empty() {
            stream.first_step = first_step;
            stream.next_step = first_step;
            return Ok(gap);
        }
        // The old slot keeps its chunks, its queue entries and its valid starts; only its role
        // changes. The open state moves to the new slot, so `open_streams` is unchanged.
        stream.open = false;
        stream.segment = true;
        let last_seq = stream.last_seq;
        self.segments += 1;
        let slot = self.new_slot(Stream {
            key,
            open: true,
            segment: false,
            chunks: VecDeque::new(),
            first_step,
            next_step: first_step,
            next_chunk_id: 0,
            last_seq,
        });
        self.by_key.insert(key, slot);
        Ok(gap)
    }

    fn check_spec(&self, spec: StreamSpec) -> Result<(), TableError> {
        let Some(table) = self.spec else { return Ok(()) };
        let field = if spec.obs_dim != table.obs_dim {
            "obs_dim"
        } else if spec.action_dim != table.action_dim {
            "action_dim"
        } else if spec.has_rewards != table.has_rewards {
            "has_rewards"
        } else {
            return Ok(());
        };
        Err(TableError::SpecMismatch { field, table, stream: spec })
    }

    /// Puts `stream` (holding no chunks) in a free slot, or in a new one.
    fn new_slot(&mut self, stream: Stream) -> usize {
        debug_assert!(stream.chunks.is_empty());
        match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = Some(stream);
                slot
            }
            None => {
                self.slots.push(Some(stream));
                self.starts.push_zero();
                self.slots.len() - 1
            }
        }
    }

    /// Closes `key`: inserts are refused from now on, but its stored data stays sampleable until
    /// evicted, and the stream is forgotten once it holds nothing. Returns whether the stream was
    /// open (false if unknown or already closed, so closing twice is harmless).
    pub fn close_stream(&mut self, key: StreamKey) -> bool {
        let Some(&slot) = self.by_key.get(&key) else {
            return false;
        };
        let stream = self.slots[slot].as_mut().expect("an indexed slot holds its stream");
        if !stream.open {
            return false;
        }
        stream.open = false;
        self.open_streams -= 1;
        if stream.chunks.is_empty() {
            self.drop_stream(slot);
        }
        true
    }

    /// Checks a chunk against the spec and the budget: what [`insert`](Self::insert) and
    /// [`restore`](Self::restore) both need before they store it.
    fn check_chunk(&self, spec: StreamSpec, chunk: &ChunkData) -> Result<(), TableError> {
        let steps = chunk.steps;
        if steps == 0 {
            return Err(TableError::EmptyChunk);
        }
        if steps > self.max_size {
            return Err(TableError::ChunkTooLarge { steps, max_size: self.max_size });
        }
        let shapes = [
            ("observations", steps * spec.obs_dim, chunk.observations.len()),
            ("step_types", steps, chunk.step_types.len()),
            ("actions", steps * spec.action_dim, chunk.actions.len()),
            ("rewards", if spec.has_rewards { steps } else { 0 }, chunk.rewards.len()),
        ];
        match shapes.iter().find(|(_, expected, got)| expected != got) {
            Some(&(field, expected, got)) => Err(TableError::Shape { field, expected, got }),
            None => Ok(()),
        }
    }

    /// Appends `chunk` to stream `key`, then evicts the globally oldest chunks while more than
    /// `max_size` steps are stored. A refused chunk leaves the table unchanged.
    pub fn insert(&mut self, key: StreamKey, chunk: ChunkData) -> Result<InsertOutcome, TableError> {
        let slot = *self.by_key.get(&key).ok_or(TableError::UnknownStream(key))?;
        let spec = self.spec.expect("a stream is known, so the spec is fixed");
        if !self.slots[slot].as_ref().expect("an indexed slot holds its stream").open {
            return Err(TableError::StreamClosed(key));
        }
        self.check_chunk(spec, &chunk)?;
        let start = self.append(slot, Arc::new(chunk));
        let mut outcome = InsertOutcome { first_step: start, evicted_steps: 0, evicted_chunks: 0 };
        while self.stored_steps > self.max_size {
            // The new chunk fits on its own (steps ≤ max_size), so this stops before reaching it.
            outcome.evicted_steps += self.evict_oldest();
            outcome.evicted_chunks += 1;
        }
        Ok(outcome)
    }

    /// Appends a checked chunk to the slot's range and to the FIFO queue; returns its first step.
    fn append(&mut self, slot: usize, data: Arc<ChunkData>) -> u64 {
        let window = self.window;
        let stream = self.slots[slot].as_mut().expect("appending to a live slot");
        let steps = data.steps;
        let before = stream.valid_starts(window);
        let id = stream.next_chunk_id;
        let start = stream.next_step;
        stream.next_chunk_id += 1;
        stream.next_step += steps as u64;
        stream.last_seq = Some(data.first_seq);
        let bytes = data.payload_bytes();
        stream.chunks.push_back(StoredChunk { id, start, data });
        let gained = stream.valid_starts(window) - before;
        self.starts.add(slot, gained);
        self.valid_starts += gained;
        self.fifo.push_back(ChunkRef { slot, id });
        self.stored_steps += steps;
        self.inserted_steps_total += steps as u64;
        self.bytes_stored += bytes;
        start
    }

    /// Evicts the globally oldest chunk and returns its step count.
    fn evict_oldest(&mut self) -> usize {
        let ChunkRef { slot, id } = self.fifo.pop_front().expect("stored steps > 0 implies a queued chunk");
        let window = self.window;
        let stream = self.slots[slot].as_mut().expect("a queued chunk's stream is live");
        let before = stream.valid_starts(window);
        let chunk = stream.chunks.pop_front().expect("a queued chunk is stored");
        // The contiguity invariant: FIFO order across the table is insertion order within each
        // slot, so the table's oldest chunk is its slot's oldest, and eviction only ever advances
        // a slot's first stored step; it never opens a gap inside the stored range.
        debug_assert_eq!(chunk.id, id, "the evicted chunk must be its stream's oldest");
        debug_assert_eq!(chunk.start, stream.first_step, "a stream's stored steps must be contiguous");
        let steps = chunk.data.steps;
        stream.first_step += steps as u64;
        let lost = before - stream.valid_starts(window);
        let forget = stream.chunks.is_empty() && !stream.open;
        self.starts.sub(slot, lost);
        self.valid_starts -= lost;
        self.stored_steps -= steps;
        self.evicted_steps_total += steps as u64;
        self.evicted_chunks_total += 1;
        self.bytes_stored -= chunk.data.payload_bytes();
        if forget {
            self.drop_stream(slot);
        }
        steps
    }

    /// Forgets a closed slot that holds nothing and frees it. A segment's key maps to the
    /// stream's newer slot (or to nothing), so only a current range removes its key's mapping.
    fn drop_stream(&mut self, slot: usize) {
        let stream = self.slots[slot].take().expect("dropping a live slot");
        debug_assert!(!stream.open && stream.chunks.is_empty());
        debug_assert_eq!(self.starts.prefix(slot + 1) - self.starts.prefix(slot), 0);
        if stream.segment {
            self.segments -= 1;
        } else {
            let removed = self.by_key.remove(&stream.key);
            debug_assert_eq!(removed, Some(slot), "a current range's key maps to its slot");
        }
        self.free_slots.push(slot);
    }

    /// Valid window starts over all streams (O(1)). The sampling client weighs shards by this.
    pub fn valid_starts(&self) -> u64 {
        self.valid_starts
    }

    /// Steps stored now (O(1)).
    pub fn stored_steps(&self) -> usize {
        self.stored_steps
    }

    /// Steps ever inserted (O(1)).
    pub fn inserted_steps(&self) -> u64 {
        self.inserted_steps_total
    }

    /// Steps ever evicted (O(1)).
    pub fn evicted_steps(&self) -> u64 {
        self.evicted_steps_total
    }

    /// Payload bytes stored now (O(1)).
    pub fn stored_bytes(&self) -> usize {
        self.bytes_stored
    }

    /// Chunks stored now (O(1)).
    pub fn stored_chunks(&self) -> usize {
        self.fifo.len()
    }

    /// Streams the table knows now: open ones, and closed ones still holding data (O(1)).
    pub fn num_streams(&self) -> usize {
        self.by_key.len()
    }

    /// All accounting at once (O(1)).
    pub fn stats(&self) -> TableStats {
        TableStats {
            stored_steps: self.stored_steps,
            inserted_steps_total: self.inserted_steps_total,
            evicted_steps_total: self.evicted_steps_total,
            chunks_stored: self.fifo.len(),
            evicted_chunks_total: self.evicted_chunks_total,
            bytes_stored: self.bytes_stored,
            streams: self.by_key.len(),
            open_streams: self.open_streams,
            segments: self.segments,
            valid_starts: self.valid_starts,
        }
    }

    /// One stream's state (its current range), if the table knows it.
    pub fn stream(&self, key: &StreamKey) -> Option<StreamInfo> {
        let slot = *self.by_key.get(key)?;
        self.slots[slot].as_ref().map(|s| s.info(self.window))
    }

    /// Every stream the table knows (open, or closed with data left), in slot order; segments are
    /// not listed.
    pub fn streams(&self) -> impl Iterator<Item = StreamInfo> + '_ {
        self.slots.iter().flatten().filter(|s| !s.segment).map(|s| s.info(self.window))
    }

    /// The table's whole state (see [`TableSnapshot`]). O(slots + chunks): each chunk's payload is
    /// shared through its `Arc`, not copied, so a shard holds its lock only for this walk.
    pub fn snapshot(&self) -> TableSnapshot {
        let ranges = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                s.as_ref().map(|s| RangeSnapshot {
                    slot,
                    key: s.key,
                    open: s.open,
                    segment: s.segment,
                    first_step: s.first_step,
                    next_step: s.next_step,
                    last_seq: s.last_seq,
                })
            })
            .collect();
        let chunks = self
            .fifo
            .iter()
            .map(|r| {
                let stream = self.slots[r.slot].as_ref().expect("a queued chunk's stream is live");
                // Chunk ids are consecutive within a slot (assigned in order, evicted from the front).
                let front = stream.chunks.front().expect("a queued chunk is stored").id;
                let c = &stream.chunks[(r.id - front) as usize];
                debug_assert_eq!(c.id, r.id);
                ChunkSnapshot { slot: r.slot, start: c.start, data: Arc::clone(&c.data) }
            })
            .collect();
        TableSnapshot {
            max_size: self.max_size,
            window: self.window,
            spec: self.spec,
            slots: self.slots.len(),
            free_slots: self.free_slots.clone(),
            ranges,
            chunks,
            inserted_steps_total: self.inserted_steps_total,
            evicted_steps_total: self.evicted_steps_total,
            evicted_chunks_total: self.evicted_chunks_total,
        }
    }

    /// Rebuilds the table a [`TableSnapshot`] was taken from: the same slots, FIFO order, valid
    /// starts and counters, so the same random draws give the same windows. The snapshot may come
    /// from disk, so everything the table's invariants rely on is checked first; a snapshot that
    /// fails a check is refused whole.
    pub fn restore(snapshot: TableSnapshot) -> Result<Table, SnapshotError> {
        let bad = |m: String| Err(SnapshotError(m));
        let TableSnapshot {
            max_size,
            window,
            spec,
            slots,
            free_slots,
            ranges,
            chunks,
            inserted_steps_total,
            evicted_steps_total,
            evicted_chunks_total,
        } = snapshot;
        if window == 0 || max_size < window {
            return bad(format!("max_size {max_size} cannot hold a window of {window} steps"));
        }
        if !ranges.is_empty() && spec.is_none() {
            return bad("streams without a spec".into());
        }
        let mut t = Table::new(max_size, window);
        t.spec = spec;
        t.slots = (0..slots).map(|_| None).collect();
        for _ in 0..slots {
            t.starts.push_zero();
        }
        for r in &ranges {
            if r.slot >= slots || t.slots[r.slot].is_some() {
                return bad(format!("slot {} is out of range or listed twice", r.slot));
            }
            if r.first_step > r.next_step || (r.segment && r.open) {
                return bad(format!("slot {} of {}: inconsistent range", r.slot, r.key));
            }
            if r.first_step == r.next_step && (!r.open || r.segment) {
                return bad(format!("slot {} of {}: a closed range without data", r.slot, r.key));
            }
            if !r.segment && t.by_key.insert(r.key, r.slot).is_some() {
                return bad(format!("{} has two current ranges", r.key));
            }
            t.open_streams += usize::from(r.open);
            t.segments += usize::from(r.segment);
            // `next_step` and `last_seq` are rebuilt by appending the chunks, then compared.
            t.slots[r.slot] = Some(Stream {
                key: r.key,
                open: r.open,
                segment: r.segment,
                chunks: VecDeque::new(),
                first_step: r.first_step,
                next_step: r.first_step,
                next_chunk_id: 0,
                last_seq: r.last_seq,
            });
        }
        let free: HashSet<usize> = free_slots.iter().copied().collect();
        if free.len() != free_slots.len()
            || free_slots.len() + ranges.len() != slots
            || free_slots.iter().any(|&s| s >= slots || t.slots[s].is_some())
        {
            return bad("the free slots are not exactly the empty ones".into());
        }
        t.free_slots = free_slots;
        for c in chunks {
            let Some(stream) = t.slots.get(c.slot).and_then(Option::as_ref) else {
                return bad(format!("a chunk names slot {}, which holds no stream", c.slot));
            };
            if c.start != stream.next_step {
                return bad(format!(
                    "{}: a chunk starts at step {}, expected {} (ranges must be contiguous)",
                    stream.key, c.start, stream.next_step
                ));
            }
            let spec = spec.expect("checked: live slots imply a spec");
            let key = stream.key;
            t.check_chunk(spec, &c.data)
                .map_err(|e| SnapshotError(format!("{key}: chunk at step {}: {e}", c.start)))?;
            t.append(c.slot, c.data);
        }
        for r in &ranges {
            let s = t.slots[r.slot].as_ref().expect("restored above");
            if s.next_step != r.next_step || s.last_seq != r.last_seq {
                return bad(format!("slot {} of {}: the chunks do not add up to its range", r.slot, r.key));
            }
        }
        if t.stored_steps > max_size {
            return bad(format!("{} steps stored, more than max_size {max_size}", t.stored_steps));
        }
        if inserted_steps_total != t.stored_steps as u64 + evicted_steps_total {
            return bad(format!(
                "inserted {inserted_steps_total} steps ≠ stored {} + evicted {evicted_steps_total}",
                t.stored_steps
            ));
        }
        t.inserted_steps_total = inserted_steps_total;
        t.evicted_steps_total = evicted_steps_total;
        t.evicted_chunks_total = evicted_chunks_total;
        Ok(t)
    }

    /// Draws one window uniformly over all valid (stream, start) pairs of the table and copies it
    /// into `out` (cleared first; see [`WindowBuf`]). Returns `None`, leaving `out` untouched, when
    /// the table has no valid start (empty, or every stream shorter than W).
    pub fn sample_into<R: Rng + ?Sized>(&self, rng: &mut R, out: &mut WindowBuf) -> Option<WindowMeta> {
        if self.valid_starts == 0 {
            return None;
        }
        let (slot, offset) = self.starts.find(rng.random_range(0..self.valid_starts));
        let stream = self.slots[slot].as_ref().expect("a slot with valid starts holds a stream");
        let start_step = stream.first_step + offset;
        self.copy_window(stream, start_step, out);
        Some(WindowMeta { key: stream.key, start_step })
    }

    /// Copies the W steps of `stream` from absolute step `start` on into `out`, crossing chunk
    /// boundaries as needed.
    fn copy_window(&self, stream: &Stream, start: u64, out: &mut WindowBuf) {
        let spec = self.spec.expect("a stream exists, so the spec is fixed");
        let (od, ad) = (spec.obs_dim, spec.action_dim);
        debug_assert!(start >= stream.first_step && start + self.window as u64 <= stream.next_step);
        out.clear();
        // The chunk holding `start`: the last one starting at or before it.
        let mut c = stream.chunks.partition_point(|ch| ch.start <= start) - 1;
        let mut step = start;
        let mut left = self.window;
        while left > 0 {
            let ch = &stream.chunks[c];
            // After the first chunk, each next chunk must begin exactly where the last one ended.
            debug_assert!(step == start || step == ch.start, "a window must not cross a gap");
            let off = (step - ch.start) as usize;
            let n = left.min(ch.data.steps - off);
            let d = &ch.data;
            out.observations.extend_from_slice(&d.observations[off * od..(off + n) * od]);
            out.step_types.extend_from_slice(&d.step_types[off..off + n]);
            out.actions.extend_from_slice(&d.actions[off * ad..(off + n) * ad]);
            if spec.has_rewards {
                out.rewards.extend_from_slice(&d.rewards[off..off + n]);
            }
            left -= n;
            step += n as u64;
            c += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rng::StreamRng;

    const W: usize = 7;

    /// Observation rows encode (stream tag, absolute step), so a window's rows can be checked for
    /// consecutiveness without trusting the table; actions and rewards encode the step too.
    const SPEC: StreamSpec = StreamSpec { obs_dim: 2, action_dim: 1, has_rewards: true };

    fn key(i: u64) -> StreamKey {
        StreamKey { actor_id: i / 4, incarnation: 0xdead_beef ^ i, env_index: (i % 4) as u32 }
    }

    fn tag(key: StreamKey) -> f32 {
        (key.actor_id * 4 + u64::from(key.env_index)) as f32
    }

    fn rng(purpose: &str) -> StreamRng {
        common::rng::stream(0, &["test".into(), purpose.into()])
    }

    /// The next chunk of `key`'s stream, `steps` long, continuing where the table says it ends.
    fn chunk(table: &Table, key: StreamKey, steps: usize) -> ChunkData {
        let info = table.stream(&key).expect("stream is known");
        let first = info.next_step;
        let mut c = ChunkData { first_seq: info.last_seq.map_or(0, |s| s + 1), steps, ..ChunkData::default() };
        for abs in first..first + steps as u64 {
            c.observations.extend_from_slice(&[tag(key), abs as f32]);
            c.step_types.push((abs % 3) as u8);
            c.actions.push(abs as f32 + 0.5);
            c.rewards.push(-(abs as f32));
        }
        c
    }

    fn put(table: &mut Table, key: StreamKey, steps: usize) -> InsertOutcome {
        let c = chunk(table, key, steps);
        table.insert(key, c).expect("insert accepted")
    }

    /// Checks that `buf` holds W consecutive steps of `meta.key`'s stream starting at `meta.start_step`.
    fn assert_window(buf: &WindowBuf, meta: WindowMeta) {
        assert_eq!(buf.observations.len(), W * SPEC.obs_dim);
        assert_eq!(buf.step_types.len(), W);
        assert_eq!(buf.actions.len(), W);
        assert_eq!(buf.rewards.len(), W);
        for i in 0..W {
            let abs = meta.start_step + i as u64;
            assert_eq!(buf.observations[2 * i], tag(meta.key), "row {i} of {meta:?} is from another stream");
            assert_eq!(buf.observations[2 * i + 1], abs as f32, "row {i} of {meta:?} is not consecutive");
            assert_eq!(buf.step_types[i], (abs % 3) as u8);
            assert_eq!(buf.actions[i], abs as f32 + 0.5);
            assert_eq!(buf.rewards[i], -(abs as f32));
        }
    }

    /// Recomputes every incremental quantity from scratch and compares.
    fn check_invariants(t: &Table) {
        let s = t.stats();
        assert_eq!(
            s.inserted_steps_total,
            s.stored_steps as u64 + s.evicted_steps_total,
            "inserted = stored + evicted"
        );
        assert!(s.stored_steps <= t.max_size);
        let (mut steps, mut chunks, mut bytes, mut starts, mut open, mut live) = (0, 0, 0, 0, 0, 0);
        let mut segments = 0;
        assert_eq!(t.starts.tree.len(), t.slots.len());
        for (slot, stream) in t.slots.iter().enumerate() {
            let fenwick = t.starts.prefix(slot + 1) - t.starts.prefix(slot);
            let Some(stream) = stream else {
                assert_eq!(fenwick, 0, "a free slot has no valid starts");
                assert!(t.free_slots.contains(&slot));
                continue;
            };
            live += 1;
            if stream.segment {
                segments += 1;
                assert!(!stream.open, "a segment is closed");
                assert_ne!(t.by_key.get(&stream.key), Some(&slot), "a segment does not answer to its key");
            } else {
                assert_eq!(t.by_key[&stream.key], slot);
            }
            assert!(stream.open || !stream.chunks.is_empty(), "a closed, empty stream must have been dropped");
            open += usize::from(stream.open);
            let mut next = stream.first_step;
            for ch in &stream.chunks {
                assert_eq!(ch.start, next, "a stream's stored steps must be contiguous");
                next += ch.data.steps as u64;
                bytes += ch.data.payload_bytes();
            }
            assert_eq!(next, stream.next_step);
            let ids: Vec<u64> = t.fifo.iter().filter(|r| r.slot == slot).map(|r| r.id).collect();
            let stored: Vec<u64> = stream.chunks.iter().map(|c| c.id).collect();
            assert_eq!(ids, stored, "the queue must list each stream's chunks in their order");
            let l = stream.stored_steps();
            let v = if l >= W { (l - W + 1) as u64 } else { 0 };
            assert_eq!(fenwick, v);
            steps += l;
            chunks += stream.chunks.len();
            starts += v;
        }
        assert_eq!(s.stored_steps, steps);
        assert_eq!(s.chunks_stored, chunks);
        assert_eq!(s.bytes_stored, bytes);
        assert_eq!(s.valid_starts, starts);
        assert_eq!(t.starts.prefix(t.starts.tree.len()), starts);
        assert_eq!(s.open_streams, open);
        assert_eq!(s.segments, segments);
        assert_eq!(s.streams, live - segments);
        assert_eq!(t.by_key.len(), live - segments);
        assert_eq!(t.streams().count(), live - segments);
    }

    /// Every valid window of every slot (segments included), copied and checked row by row.
    fn check_every_window(t: &Table) -> u64 {
        let mut buf = WindowBuf::new(SPEC, W);
        let mut windows = 0;
        for stream in t.slots.iter().flatten() {
            if stream.stored_steps() < W {
                continue;
            }
            for start in stream.first_step..=stream.next_step - W as u64 {
                t.copy_window(stream, start, &mut buf);
                assert_window(&buf, WindowMeta { key: stream.key, start_step: start });
                windows += 1;
            }
        }
        assert_eq!(windows, t.valid_starts());
        windows
    }

    #[test]
    fn exactly_max_size_steps_evicts_nothing() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        t.open_stream(a, SPEC).unwrap();
        t.open_stream(b, SPEC).unwrap();
        assert_eq!(put(&mut t, a, 60).evicted_steps, 0);
        let out = put(&mut t, b, 40);
        assert_eq!(out, InsertOutcome { first_step: 0, evicted_steps: 0, evicted_chunks: 0 });
        let s = t.stats();
        assert_eq!((s.stored_steps, s.evicted_steps_total, s.chunks_stored), (100, 0, 2));
        assert_eq!(s.valid_starts, (60 - 6) + (40 - 6));
        check_invariants(&t);
    }

    #[test]
    fn one_step_over_max_size_evicts_the_oldest_chunk() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        t.open_stream(a, SPEC).unwrap();
        t.open_stream(b, SPEC).unwrap();
        put(&mut t, a, 60);
        put(&mut t, b, 40);
        // 101 steps: the oldest chunk (a's 60) goes, though b's newest is the one that overflowed.
        let out = put(&mut t, b, 1);
        assert_eq!(out, InsertOutcome { first_step: 40, evicted_steps: 60, evicted_chunks: 1 });
        let s = t.stats();
        assert_eq!((s.stored_steps, s.evicted_steps_total, s.inserted_steps_total), (41, 60, 101));
        let ia = t.stream(&a).unwrap();
        assert_eq!((ia.first_step, ia.next_step, ia.stored_steps, ia.valid_starts, ia.open), (60, 60, 0, 0, true));
        assert_eq!(t.stream(&b).unwrap().valid_starts, 41 - 6);
        assert_eq!(s.valid_starts, 35);
        check_invariants(&t);
    }

    #[test]
    fn chunk_of_max_size_is_stored_and_one_larger_is_refused() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        t.open_stream(a, SPEC).unwrap();
        t.open_stream(b, SPEC).unwrap();
        put(&mut t, a, 30);
        put(&mut t, a, 30);
        let before = t.stats();
        let big = chunk(&t, b, 101);
        assert_eq!(t.insert(b, big), Err(TableError::ChunkTooLarge { steps: 101, max_size: 100 }));
        assert_eq!(t.stats(), before, "a refused chunk changes nothing");
        let out = put(&mut t, b, 100);
        assert_eq!((out.evicted_steps, out.evicted_chunks), (60, 2));
        assert_eq!(t.stats().stored_steps, 100);
        assert_eq!(t.stats().valid_starts, 94);
        check_invariants(&t);
    }

    #[test]
    fn accounting_identity_holds_under_random_inserts_closes_and_reopens() {
        let mut r = rng("accounting");
        let mut t = Table::new(2_000, W);
        let mut keys: Vec<StreamKey> = Vec::new();
        let mut next_key = 0;
        for _ in 0..64 {
            keys.push(key(next_key));
            t.open_stream(key(next_key), SPEC).unwrap();
            next_key += 1;
        }
        let mut evictions = 0;
        for round in 0..6_000 {
            let i = r.random_range(0..keys.len());
            match r.random_range(0..100) {
                // Close a stream and replace it with a fresh one (an actor restarting).
                0 => {
                    assert!(t.close_stream(keys[i]));
                    assert!(!t.close_stream(keys[i]), "closing twice reports false");
                    keys[i] = key(next_key);
                    t.open_stream(keys[i], SPEC).unwrap();
                    next_key += 1;
                }
                _ => {
                    let out = put(&mut t, keys[i], r.random_range(1..=48));
                    evictions += out.evicted_chunks;
                }
            }
            if round % 7 == 0 {
                check_invariants(&t);
            }
        }
        check_invariants(&t);
        assert!(evictions > 1_000, "the test must exercise eviction ({evictions} evictions)");
        assert!(t.slots.len() < 64 + 30, "dropped streams' slots are reused ({} slots)", t.slots.len());
    }

    #[test]
    fn every_sampled_window_is_consecutive_steps_of_one_stream() {
        let mut r = rng("consecutive");
        let mut t = Table::new(1_500, W);
        let keys: Vec<StreamKey> = (0..40).map(key).collect();
        for &k in &keys {
            t.open_stream(k, SPEC).unwrap();
        }
        for _ in 0..2_000 {
            let k = keys[r.random_range(0..keys.len())];
            put(&mut t, k, r.random_range(1..=20));
        }
        assert!(t.stats().evicted_steps_total > 0);
        let mut buf = WindowBuf::new(SPEC, W);
        for _ in 0..20_000 {
            let meta = t.sample_into(&mut r, &mut buf).expect("table has valid starts");
            let info = t.stream(&meta.key).unwrap();
            assert!(meta.start_step >= info.first_step && meta.start_step + W as u64 <= info.next_step);
            assert_window(&buf, meta);
        }
    }

    #[test]
    fn windows_never_straddle_an_eviction_gap() {
        // Chunks shorter than W, so that most windows span several chunks, and heavy eviction.
        let mut r = rng("gap");
        let mut t = Table::new(400, W);
        let keys: Vec<StreamKey> = (0..12).map(key).collect();
        for &k in &keys {
            t.open_stream(k, SPEC).unwrap();
        }
        let mut buf = WindowBuf::new(SPEC, W);
        for round in 0..3_000 {
            let k = keys[r.random_range(0..keys.len())];
            put(&mut t, k, r.random_range(1..=3));
            if round % 100 != 99 {
                continue;
            }
            // Every valid start of every stream, not just sampled ones: each window starts at or
            // after the first stored step (never in evicted data) and its rows are consecutive.
            for slot in 0..t.slots.len() {
                let Some(stream) = &t.slots[slot] else { continue };
                if stream.stored_steps() < W {
                    continue;
                }
                for start in stream.first_step..=stream.next_step - W as u64 {
                    t.copy_window(stream, start, &mut buf);
                    assert_window(&buf, WindowMeta { key: stream.key, start_step: start });
                }
            }
        }
        assert!(t.stats().evicted_steps_total > 5_000);
        check_invariants(&t);
    }

    #[test]
    fn sampling_is_uniform_over_all_valid_starts() {
        // Streams of different lengths, some trimmed by eviction (so starts begin past 0), one
        // shorter than W, over several chunks each; then a chi-square goodness-of-fit test over
        // every valid (stream, start) pair.
        let mut t = Table::new(300, W);
        let keys: Vec<StreamKey> = (0..7).map(key).collect();
        for &k in &keys {
            t.open_stream(k, SPEC).unwrap();
        }
        let sizes = [1, 2, 3, 5, 8, 13];
        for _ in 0..20 {
            for (k, &n) in keys.iter().zip(&sizes) {
                put(&mut t, *k, n);
            }
        }
        put(&mut t, keys[6], W - 1);
        assert!(t.stats().evicted_steps_total > 0);
        check_invariants(&t);

        // Cell index of (stream, start): the stream's offset in this listing plus the start's offset.
        let infos: Vec<StreamInfo> = t.streams().collect();
        let mut base = HashMap::new();
        let mut cells = 0;
        for info in &infos {
            base.insert(info.key, cells);
            cells += info.valid_starts as usize;
        }
        assert_eq!(cells as u64, t.valid_starts());
        assert_eq!(t.stream(&keys[6]).unwrap().valid_starts, 0);

        // 400 draws per cell: every expected count is far above the usual minimum of 5.
        let n = 400 * cells;
        let mut counts = vec![0u64; cells];
        let mut r = rng("uniform");
        let mut buf = WindowBuf::new(SPEC, W);
        for _ in 0..n {
            let meta = t.sample_into(&mut r, &mut buf).unwrap();
            let info = t.stream(&meta.key).unwrap();
            let off = meta.start_step - info.first_step;
            assert!(off < info.valid_starts);
            counts[base[&meta.key] + off as usize] += 1;
        }
        let expected = n as f64 / cells as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        // Critical value at p = 1e-6 for df = cells − 1, by the Wilson–Hilferty approximation
        // χ²_{1−α}(df) ≈ df·(1 − 2/(9df) + z·√(2/(9df)))³ with z = 4.7534 (the standard normal's
        // 1 − 1e-6 quantile); accurate to well under 1% at df in the hundreds. With a fixed seed the
        // outcome is deterministic, so only a real bias (a defect) makes it fail.
        let df = (cells - 1) as f64;
        let h = 2.0 / (9.0 * df);
        let critical = df * (1.0 - h + 4.7534 * h.sqrt()).powi(3);
        assert!(cells > 200, "{cells} cells");
        assert!(chi2 < critical, "chi2 = {chi2:.1} over {cells} cells exceeds the critical value {critical:.1}");
    }

    #[test]
    fn a_stream_shorter_than_the_window_contributes_nothing() {
        let mut t = Table::new(1_000, W);
        let (short, long) = (key(0), key(1));
        t.open_stream(short, SPEC).unwrap();
        put(&mut t, short, 3);
        put(&mut t, short, W - 1 - 3);
        assert_eq!(t.valid_starts(), 0);
        let mut buf = WindowBuf::new(SPEC, W);
        assert_eq!(t.sample_into(&mut rng("short"), &mut buf), None);
        // One more step makes exactly one window.
        put(&mut t, short, 1);
        assert_eq!(t.valid_starts(), 1);
        t.open_stream(long, SPEC).unwrap();
        put(&mut t, long, W - 1);
        assert_eq!(t.valid_starts(), 1, "a stream of W − 1 steps adds nothing");
        let mut r = rng("short");
        for _ in 0..200 {
            let meta = t.sample_into(&mut r, &mut buf).unwrap();
            assert_eq!(meta, WindowMeta { key: short, start_step: 0 });
            assert_window(&buf, meta);
        }
        check_invariants(&t);
    }

    #[test]
    fn sampling_an_empty_table_returns_none_and_leaves_the_buffer_alone() {
        let mut t = Table::new(10, W);
        let mut r = rng("empty");
        let mut buf = WindowBuf { observations: vec![1.0], ..WindowBuf::default() };
        assert_eq!(t.sample_into(&mut r, &mut buf), None);
        t.open_stream(key(0), SPEC).unwrap();
        assert_eq!(t.sample_into(&mut r, &mut buf), None, "an open stream with no data");
        assert_eq!(buf.observations, vec![1.0]);
        assert_eq!(t.stats(), TableStats { streams: 1, open_streams: 1, ..TableStats::default() });
    }

    #[test]
    fn sampling_reuses_the_buffers_without_allocating() {
        let mut t = Table::new(100, W);
        t.open_stream(key(0), SPEC).unwrap();
        for _ in 0..10 {
            put(&mut t, key(0), 3);
        }
        let mut buf = WindowBuf::new(SPEC, W);
        let ptrs = (buf.observations.as_ptr(), buf.step_types.as_ptr(), buf.actions.as_ptr(), buf.rewards.as_ptr());
        let mut r = rng("alloc");
        for _ in 0..100 {
            t.sample_into(&mut r, &mut buf).unwrap();
        }
        let after = (buf.observations.as_ptr(), buf.step_types.as_ptr(), buf.actions.as_ptr(), buf.rewards.as_ptr());
        assert_eq!(ptrs, after, "the buffers were never reallocated");
    }

    #[test]
    fn open_stream_checks_the_spec_and_duplicates() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        t.open_stream(a, SPEC).unwrap();
        assert_eq!(t.spec(), Some(SPEC));
        let err = t.open_stream(b, StreamSpec { obs_dim: 3, ..SPEC }).unwrap_err();
        assert!(matches!(err, TableError::SpecMismatch { field: "obs_dim", .. }));
        assert_eq!(err.to_string(), "obs_dim is 3, but this table's streams have 2");
        let err = t.open_stream(b, StreamSpec { action_dim: 0, ..SPEC }).unwrap_err();
        assert!(matches!(err, TableError::SpecMismatch { field: "action_dim", .. }));
        let err = t.open_stream(b, StreamSpec { has_rewards: false, ..SPEC }).unwrap_err();
        assert!(matches!(err, TableError::SpecMismatch { field: "has_rewards", .. }));
        assert_eq!(t.stream(&b), None, "a refused open leaves no trace");
        assert_eq!(t.open_stream(a, SPEC), Err(TableError::AlreadyOpen(a)));
        // Closed with data: re-opening resumes the stream where it stopped.
        put(&mut t, a, 10);
        assert!(t.close_stream(a));
        t.open_stream(a, SPEC).unwrap();
        let info = t.stream(&a).unwrap();
        assert_eq!((info.open, info.next_step, info.last_seq), (true, 10, Some(0)));
        assert_eq!(put(&mut t, a, 5).first_step, 10);
        check_invariants(&t);
    }

    #[test]
    fn a_closed_stream_stays_sampleable_until_evicted_then_is_dropped() {
        let mut t = Table::new(50, W);
        let (a, b, c) = (key(0), key(1), key(2));
        t.open_stream(a, SPEC).unwrap();
        t.open_stream(b, SPEC).unwrap();
        put(&mut t, a, 20);
        put(&mut t, a, 20);
        assert!(t.close_stream(a));
        assert_eq!(t.insert(a, chunk(&t, a, 1)), Err(TableError::StreamClosed(a)));
        assert_eq!(t.stats().open_streams, 1);
        let mut r = rng("closed");
        let mut buf = WindowBuf::new(SPEC, W);
        assert_eq!(t.sample_into(&mut r, &mut buf).unwrap().key, a, "only a holds data");
        put(&mut t, b, 20); // 60 > 50: a's first chunk goes; a is still listed.
        assert_eq!(t.stream(&a).unwrap().stored_steps, 20);
        put(&mut t, b, 20); // 60 > 50: a's last chunk goes, and a with it.
        assert_eq!(t.stream(&a), None);
        assert_eq!(t.streams().map(|s| s.key).collect::<Vec<_>>(), vec![b]);
        assert_eq!(t.insert(a, ChunkData::default()), Err(TableError::UnknownStream(a)));
        // Its slot is reused by the next new stream.
        t.open_stream(c, SPEC).unwrap();
        assert_eq!(t.slots.len(), 2);
        // Closing an empty stream drops it at once.
        assert!(t.close_stream(c));
        assert_eq!(t.stream(&c), None);
        assert!(!t.close_stream(c));
        check_invariants(&t);
    }

    #[test]
    fn insert_refuses_empty_and_misshapen_chunks_without_changing_anything() {
        let mut t = Table::new(100, W);
        let a = key(0);
        t.open_stream(a, SPEC).unwrap();
        put(&mut t, a, 4);
        let before = t.stats();
        assert_eq!(t.insert(a, ChunkData { first_seq: 1, ..ChunkData::default() }), Err(TableError::EmptyChunk));
        let mut bad = chunk(&t, a, 3);
        bad.observations.pop();
        assert_eq!(t.insert(a, bad), Err(TableError::Shape { field: "observations", expected: 6, got: 5 }));
        let mut bad = chunk(&t, a, 3);
        bad.rewards.clear();
        assert_eq!(t.insert(a, bad), Err(TableError::Shape { field: "rewards", expected: 3, got: 0 }));
        assert_eq!(t.stats(), before);
        assert_eq!(t.stream(&a).unwrap().next_step, 4);
        check_invariants(&t);
    }

    #[test]
    fn streams_without_actions_or_rewards_sample_empty_action_and_reward_rows() {
        let spec = StreamSpec { obs_dim: 3, action_dim: 0, has_rewards: false };
        let mut t = Table::new(100, W);
        t.open_stream(key(0), spec).unwrap();
        let steps = 10;
        let c = ChunkData {
            first_seq: 0,
            steps,
            observations: (0..steps * 3).map(|v| v as f32).collect(),
            step_types: vec![1; steps],
            ..ChunkData::default()
        };
        t.insert(key(0), c).unwrap();
        let mut buf = WindowBuf::new(spec, W);
        let meta = t.sample_into(&mut rng("no-actions"), &mut buf).unwrap();
        let first = meta.start_step as usize * 3;
        assert_eq!(buf.observations, (first..first + W * 3).map(|v| v as f32).collect::<Vec<_>>());
        assert!(buf.actions.is_empty() && buf.rewards.is_empty());
    }

    #[test]
    fn fenwick_find_matches_a_linear_scan_over_thousands_of_slots() {
        let mut r = rng("fenwick");
        let mut f = Fenwick::default();
        let mut values = Vec::new();
        for _ in 0..3_000 {
            f.push_zero();
            values.push(0u64);
            // Mostly empty slots, as when many streams are shorter than W.
            let slot = r.random_range(0..values.len());
            let v = if r.random_range(0..3) == 0 { r.random_range(1..50) } else { 0 };
            f.add(slot, v);
            values[slot] += v;
        }
        for _ in 0..1_000 {
            let slot = r.random_range(0..values.len());
            let v = r.random_range(0..=values[slot]);
            f.sub(slot, v);
            values[slot] -= v;
        }
        let total: u64 = values.iter().sum();
        assert_eq!(f.prefix(f.tree.len()), total);
        let mut k = 0;
        for (slot, &v) in values.iter().enumerate() {
            for off in 0..v {
                assert_eq!(f.find(k), (slot, off));
                k += 1;
            }
        }
    }

    #[test]
    fn a_stream_opened_at_a_later_step_numbers_its_steps_from_there() {
        let mut t = Table::new(100, W);
        let a = key(0);
        t.open_stream_at(a, SPEC, 1_000).unwrap();
        let info = t.stream(&a).unwrap();
        assert_eq!((info.first_step, info.next_step, info.stored_steps), (1_000, 1_000, 0));
        assert_eq!(put(&mut t, a, 10).first_step, 1_000);
        let mut r = rng("later");
        let mut buf = WindowBuf::new(SPEC, W);
        for _ in 0..100 {
            let meta = t.sample_into(&mut r, &mut buf).unwrap();
            assert!((1_000..=1_003).contains(&meta.start_step), "{meta:?}");
            assert_window(&buf, meta);
        }
        check_invariants(&t);
    }

    #[test]
    fn gap_rules_refuse_what_would_rewrite_steps_and_change_nothing_when_refused() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        assert_eq!(t.continue_after_gap(a, 5), Err(TableError::UnknownStream(a)));
        t.open_stream(a, SPEC).unwrap();
        // Nothing stored yet: the stream just moves on, with no segment.
        assert_eq!(t.continue_after_gap(a, 8), Ok(8));
        assert_eq!((t.stream(&a).unwrap().first_step, t.stats().segments), (8, 0));
        put(&mut t, a, 10);
        let before = t.snapshot();
        assert_eq!(t.continue_after_gap(a, 17), Err(TableError::StepBehind { key: a, next_step: 18, first_step: 17 }));
        assert_eq!(t.continue_after_gap(a, 18), Ok(0), "the next step is no gap");
        assert_eq!(t.snapshot(), before, "refusals and no-ops change nothing");
        assert!(t.close_stream(a));
        assert_eq!(t.continue_after_gap(a, 30), Err(TableError::StreamClosed(a)));
        // A closed stream reopened earlier than its next step is refused; later is a gap.
        assert_eq!(t.open_stream_at(a, SPEC, 3), Err(TableError::StepBehind { key: a, next_step: 18, first_step: 3 }));
        assert!(!t.stream(&a).unwrap().open);
        t.open_stream_at(a, SPEC, 30).unwrap();
        let info = t.stream(&a).unwrap();
        assert_eq!((info.open, info.first_step, info.next_step, info.last_seq), (true, 30, 30, Some(0)));
        assert_eq!(t.stats().segments, 1);
        assert_eq!(t.stats().open_streams, 1);
        // An open stream at a later step: two writers, refused as before.
        assert_eq!(t.open_stream_at(a, SPEC, 40), Err(TableError::AlreadyOpen(a)));
        t.open_stream_at(b, SPEC, 7).unwrap();
        assert_eq!(t.stream(&b).unwrap().next_step, 7);
        check_invariants(&t);
    }

    /// The steps before a gap stay sampleable as a segment, never joined to those after it; once
    /// the segment is evicted, freeing its slot leaves the stream's key on its new slot.
    #[test]
    fn windows_never_span_a_gap_and_an_evicted_segment_keeps_the_stream() {
        let mut t = Table::new(100, W);
        let (a, b) = (key(0), key(1));
        t.open_stream(a, SPEC).unwrap();
        t.open_stream(b, SPEC).unwrap();
        put(&mut t, a, 5);
        put(&mut t, a, 15); // a holds [0, 20)
        assert_eq!(t.continue_after_gap(a, 50), Ok(30));
        put(&mut t, a, 3);
        put(&mut t, a, 17); // a holds [50, 70) in a new slot
        let s = t.stats();
        assert_eq!((s.segments, s.streams, s.open_streams, s.stored_steps), (1, 2, 2, 40));
        assert_eq!(s.valid_starts, 2 * (20 - 6), "each side of the gap has its own windows");
        let info = t.stream(&a).unwrap();
        assert_eq!((info.first_step, info.next_step, info.stored_steps, info.last_seq), (50, 70, 20, Some(3)));
        assert_eq!(t.streams().count(), 2, "segments are not listed as streams");
        check_every_window(&t);
        let mut r = rng("gap-span");
        let mut buf = WindowBuf::new(SPEC, W);
        let mut sides = [0; 2];
        for _ in 0..2_000 {
            let meta = t.sample_into(&mut r, &mut buf).unwrap();
            assert_window(&buf, meta);
            assert_eq!(meta.key, a);
            let end = meta.start_step + W as u64;
            assert!(end <= 20 || meta.start_step >= 50, "{meta:?} spans the gap [20, 50)");
            sides[usize::from(meta.start_step >= 50)] += 1;
        }
        assert!(sides[0] > 800 && sides[1] > 800, "both sides are drawn, evenly: {sides:?}");
        check_invariants(&t);
        // b's inserts evict a's segment (the oldest chunks), then a's newer range.
        put(&mut t, b, 64); // 104 > 100: the segment's first chunk (5 steps) goes.
        assert_eq!(t.stats().segments, 1);
        put(&mut t, b, 15); // the segment's last chunk goes, and its slot is freed.
        let s = t.stats();
        assert_eq!((s.segments, s.streams), (0, 2));
        let info = t.stream(&a).expect("the stream still answers to its key");
        assert_eq!((info.first_step, info.next_step, info.open), (50, 70, true));
        assert_eq!(put(&mut t, a, 2).first_step, 70, "and still takes inserts");
        check_every_window(&t);
        check_invariants(&t);
    }

    /// A random history of inserts, gaps, closes and reopens, with eviction throughout; `check`
    /// sees the table every 100 rounds.
    fn random_table_checked(seed: &str, rounds: usize, check: &mut dyn FnMut(&Table)) -> Table {
        let mut r = rng(seed);
        let mut t = Table::new(1_200, W);
        let mut keys: Vec<StreamKey> = (0..24).map(key).collect();
        let mut next_key = keys.len() as u64;
        for &k in &keys {
            t.open_stream(k, SPEC).unwrap();
        }
        for round in 0..rounds {
            let i = r.random_range(0..keys.len());
            match r.random_range(0..100) {
                0..=2 => {
                    let next = t.stream(&keys[i]).unwrap().next_step;
                    t.continue_after_gap(keys[i], next + r.random_range(1..40)).unwrap();
                }
                3 => {
                    t.close_stream(keys[i]);
                    keys[i] = key(next_key);
                    next_key += 1;
                    t.open_stream_at(keys[i], SPEC, r.random_range(0..3) * 100).unwrap();
                }
                _ => {
                    put(&mut t, keys[i], r.random_range(1..=30));
                }
            }
            if round % 100 == 99 {
                check(&t);
            }
        }
        // End with a segment and a closed stream holding data, so that snapshots hold both.
        put(&mut t, keys[1], 10);
        let next = t.stream(&keys[1]).unwrap().next_step;
        t.continue_after_gap(keys[1], next + 5).unwrap();
        put(&mut t, keys[1], 10);
        put(&mut t, keys[0], 10);
        t.close_stream(keys[0]);
        t
    }

    fn random_table(seed: &str, rounds: usize) -> Table {
        random_table_checked(seed, rounds, &mut |_| {})
    }

    #[test]
    fn random_histories_with_gaps_keep_every_invariant_and_never_span_a_gap() {
        for seed in ["gaps-1", "gaps-2", "gaps-3"] {
            let mut most_segments = 0;
            let t = random_table_checked(seed, 4_000, &mut |t| {
                check_invariants(t);
                check_every_window(t);
                most_segments = most_segments.max(t.stats().segments);
            });
            check_invariants(&t);
            check_every_window(&t);
            assert!(most_segments >= 3 && t.stats().evicted_steps_total > 10_000, "{most_segments} {:?}", t.stats());
        }
    }

    #[test]
    fn restore_of_a_snapshot_is_the_same_table() {
        let t = random_table("snapshot", 5_000);
        let snap = t.snapshot();
        assert!(snap.ranges.iter().any(|r| r.segment) && snap.ranges.iter().any(|r| !r.open && !r.segment));
        assert!(!snap.free_slots.is_empty());
        assert_eq!(snap.chunks.len(), t.stats().chunks_stored);
        assert_eq!(snap.stored_steps(), t.stored_steps() as u64);
        let mut u = Table::restore(snap.clone()).unwrap();
        check_invariants(&u);
        assert_eq!(u.stats(), t.stats());
        assert_eq!(u.snapshot(), snap);
        assert_eq!(u.streams().collect::<Vec<_>>(), t.streams().collect::<Vec<_>>());
        assert_eq!(check_every_window(&u), t.valid_starts());
        // Same slots and counts, so the same draws give the same windows.
        let (mut r1, mut r2) = (rng("same"), rng("same"));
        let (mut b1, mut b2) = (WindowBuf::new(SPEC, W), WindowBuf::new(SPEC, W));
        for _ in 0..2_000 {
            assert_eq!(t.sample_into(&mut r1, &mut b1), u.sample_into(&mut r2, &mut b2));
            assert_eq!(b1, b2);
        }
        // And the same history from here on gives the same tables (slot reuse included).
        let mut t = t;
        let mut r = rng("after");
        for _ in 0..500 {
            let keys: Vec<StreamKey> = t.streams().filter(|s| s.open).map(|s| s.key).collect();
            let k = keys[r.random_range(0..keys.len())];
            let steps = r.random_range(1..=30);
            put(&mut t, k, steps);
            put(&mut u, k, steps);
        }
        let fresh = key(10_000);
        t.open_stream(fresh, SPEC).unwrap();
        u.open_stream(fresh, SPEC).unwrap();
        assert_eq!(u.snapshot(), t.snapshot());
        check_invariants(&u);
    }

    #[test]
    fn a_snapshot_shares_payloads_and_outlives_their_eviction() {
        let mut t = Table::new(100, W);
        let a = key(0);
        t.open_stream(a, SPEC).unwrap();
        put(&mut t, a, 60);
        let snap = t.snapshot();
        let first = Arc::clone(&snap.chunks[0].data);
        assert_eq!(Arc::strong_count(&first), 3, "the table, the snapshot and this test share one payload");
        put(&mut t, a, 60); // evicts the first chunk
        assert_eq!(Arc::strong_count(&first), 2, "the table let go; the snapshot still holds it");
        assert_eq!(first.observations[1], 0.0);
        let back = Table::restore(snap).unwrap();
        assert_eq!((back.stored_steps(), back.inserted_steps()), (60, 60));
    }

    #[test]
    fn restore_refuses_inconsistent_snapshots() {
        let t = random_table("refuse", 1_000);
        let good = t.snapshot();
        let refuse = |change: &dyn Fn(&mut TableSnapshot), needle: &str| {
            let mut s = good.clone();
            change(&mut s);
            let err = Table::restore(s).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        };
        refuse(&|s| s.chunks[3].start += 1, "contiguous");
        refuse(&|s| drop(s.chunks.pop()), "do not add up");
        refuse(&|s| s.inserted_steps_total += 1, "inserted");
        refuse(&|s| s.ranges[1].slot = s.ranges[0].slot, "twice");
        refuse(&|s| s.slots += 1, "free slots");
        refuse(&|s| s.max_size = s.stored_steps() as usize - 1, "more than max_size");
        refuse(&|s| s.window = 0, "window");
        refuse(
            &|s| {
                let mut c = (*s.chunks[0].data).clone();
                c.rewards.pop();
                s.chunks[0].data = Arc::new(c);
            },
            "rewards",
        );
        refuse(
            &|s| {
                let seg = s.ranges.iter().position(|r| !r.segment).unwrap();
                let other = s.ranges.iter().rposition(|r| !r.segment).unwrap();
                s.ranges[seg].key = s.ranges[other].key;
            },
            "two current ranges",
        );
        assert!(Table::restore(good).is_ok());
    }
}
