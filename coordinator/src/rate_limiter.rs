//! The replay shard's rate limiter: DeepMind Reverb's `RateLimiter` algebra, exactly.
//!
//! A shard asks this limiter two questions before it touches its table: may `n` steps be inserted
//! now, and may `n` windows be sampled now? The answers, and the counters behind them, are copied
//! from Reverb (`google-deepmind/reverb`, HEAD `c82e319`): `reverb/cc/rate_limiter.h` and
//! `reverb/cc/rate_limiter.cc` for the state and the inequalities, `reverb/rate_limiters.py` for
//! the `MinSize` and `SampleToInsertRatio` constructors and their validation, and
//! `reverb/cc/checkpointing/checkpoint.proto` (`RateLimiterCheckpoint`) for what a checkpoint keeps.
//! The tests port `reverb/cc/rate_limiter_test.cc` and `reverb/rate_limiters_test.py` case by case.
//!
//! # Units
//!
//! One insert is one step; one sample is one window of H + 1 steps (ARCHITECTURE.md,
//! "Conventions"). So `samples_per_insert` is windows sampled per step inserted, and
//! `min_size_to_sample` is counted in steps. The default limiter is [`RateLimiter::min_size`]`(H+1)`;
//! samples-per-insert limiting ([`RateLimiter::sample_to_insert_ratio`]) is opt-in under `[replay]`.
//!
//! # The algebra
//!
//! State: four settings (`spi` = samples_per_insert, `min_size_to_sample`, `min_diff`, `max_diff`)
//! and three monotone counters (`inserts`, `samples`, `deletes`). Derived:
//!
//! ```text
//! size = inserts − deletes                      (integer; items in the table now)
//! diff = inserts · spi − samples                (f64; Reverb's "cursor"; deletes do not enter it)
//!
//! can_sample(n) ⇔ size ≥ min_size_to_sample  ∧  inserts·spi − samples − n ≥ min_diff
//! can_insert(n) ⇔ size + n ≤ min_size_to_sample  ∨  (inserts + n)·spi − samples ≤ max_diff
//! ```
//!
//! Both comparisons are inclusive, and both look at the state *after* the operation, except that
//! sampling needs the minimum size *now* while the insert shortcut ("free until min size") looks at
//! the size after the insert. Deletes therefore can re-open inserts and block samples.
//!
//! # What this module does not do
//!
//! It is a pure state machine: no threads, no tokio, no locks, no clocks. Reverb's old
//! `AwaitCanInsert` / `AwaitAndFinalizeSample` (condvars, deadlines, `Cancel`) were removed from
//! the limiter in Reverb itself (commit `b97fccc`, "Simplify rate limiter interface"); since then
//! the `Table` worker (`reverb/cc/table.cc`, `TableWorkerLoop`) parks requests and re-asks the
//! limiter whenever the table changes. Our shard service (`shard.rs`) does the same around this
//! type: it holds the limiter with the table under one lock, makes refused inserts and samples wait
//! for the next state change, and when a request's deadline passes answers DEADLINE_EXCEEDED (no
//! window yet) or a partial batch, as Reverb's worker does.
//!
//! # Where we differ from Reverb, on purpose
//!
//! - Bad settings are refused with a [`LimiterError`] that names the parameter, where Reverb's C++
//!   constructor dies (`REVERB_CHECK_GT`). We also refuse a non-finite `samples_per_insert` and a
//!   NaN `min_diff` / `max_diff`, which Reverb accepts: NaN makes every comparison false, so the
//!   limiter would block for ever without saying why. Infinite bounds are allowed (they mean "no
//!   bound").
//! - Counters and `min_size_to_sample` are `u64` (Reverb: `int64`), so a negative size is
//!   unrepresentable: [`RateLimiter::delete`] refuses (panics) to delete more than the size, and
//!   [`RateLimiter::restore`] refuses a checkpoint with `delete_count > insert_count`. Python's
//!   `min_size_to_sample = -1` cases cannot be written at all; the `0` cases are tested.
//! - `insert` and `delete` take a count, because a chunk of steps lands at once; Reverb counts one
//!   item per call. `can_insert(n)` is true exactly when n single inserts, checked one after the
//!   other, would all be allowed (both branches are monotone in n because spi > 0).
//!   `can_sample(n)` is Reverb's `CanSample(n)`, which agrees with n single samples except, in
//!   principle, for a last-ulp rounding difference at the boundary when spi is not a dyadic
//!   fraction; [`RateLimiter::commit_samples`] is exactly n `maybe_commit_sample` calls. The tests
//!   check all three against single calls.
//! - The `SampleToInsertRatio` checks are written so that NaN fails them (Python lets NaN through).
//! - Not ported: table registration, the legacy call statistics (`RateLimiterCallStats` keeps only
//!   `completed`, which is [`RateLimiter::inserts`] / [`RateLimiter::samples`]), the setters added
//!   in Reverb `bf5fb95` (to re-configure a restored limiter, edit the [`LimiterState`] before
//!   [`RateLimiter::restore`]), and Python's `Queue` / `Stack` constructors.

use std::fmt;

/// Why a limiter was refused. Every message names the parameter at fault; [`LimiterError::field`]
/// gives it alone, for a `FieldViolation` at the service edge.
#[derive(Debug, Clone, PartialEq)]
pub enum LimiterError {
    /// `min_size_to_sample < 1`. Reverb's C++ constructor dies (`REVERB_CHECK_GT(min_size_to_sample,
    /// 0)`); Python's `MinSize` and `SampleToInsertRatio` raise `ValueError`.
    MinSizeToSample { value: u64 },
    /// `samples_per_insert ≤ 0` or not finite. Reverb dies on `≤ 0` (since `f813ea5`); Python's
    /// `SampleToInsertRatio` raises `ValueError`. A non-finite value is our addition.
    SamplesPerInsert { value: f64 },
    /// `min_diff` or `max_diff` is NaN (our addition; Reverb has no check).
    DiffIsNan { field: &'static str },
    /// `max_diff − min_diff < 2 · max(1, samples_per_insert)` (Python's `SampleToInsertRatio`):
    /// so narrow a range could block samples or inserts completely.
    ErrorBufferTooSmall { min_diff: f64, max_diff: f64, samples_per_insert: f64 },
    /// `min_diff > samples_per_insert · min_size_to_sample` (Python's `SampleToInsertRatio`):
    /// sampling would deadlock as soon as `min_size_to_sample` items have been inserted.
    ErrorBufferAboveMinSize { min_diff: f64, offset: f64 },
    /// A checkpoint with more deletes than inserts (a negative size; our addition).
    DeletesExceedInserts { insert_count: u64, delete_count: u64 },
}

impl LimiterError {
    /// The parameter (or checkpoint field) that was refused.
    pub fn field(&self) -> &'static str {
        match self {
            LimiterError::MinSizeToSample { .. } => "min_size_to_sample",
            LimiterError::SamplesPerInsert { .. } => "samples_per_insert",
            LimiterError::DiffIsNan { field } => field,
            LimiterError::ErrorBufferTooSmall { .. } | LimiterError::ErrorBufferAboveMinSize { .. } => "error_buffer",
            LimiterError::DeletesExceedInserts { .. } => "delete_count",
        }
    }
}

impl fmt::Display for LimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterError::MinSizeToSample { value } => {
                write!(f, "min_size_to_sample ({value}) must be a positive integer")
            }
            LimiterError::SamplesPerInsert { value } => {
                write!(f, "samples_per_insert ({value}) must be a finite number > 0")
            }
            LimiterError::DiffIsNan { field } => write!(f, "{field} must not be NaN"),
            LimiterError::ErrorBufferTooSmall { min_diff, max_diff, samples_per_insert } => write!(
                f,
                "error_buffer: the range [{min_diff}, {max_diff}] is narrower than 2 * max(1.0, samples_per_insert) \
                 = {}; a smaller range could completely block samples and/or inserts",
                2.0 * samples_per_insert.max(1.0)
            ),
            LimiterError::ErrorBufferAboveMinSize { min_diff, offset } => write!(
                f,
                "error_buffer: min_diff ({min_diff}) is above samples_per_insert * min_size_to_sample ({offset}); \
                 sampling would deadlock as soon as min_size_to_sample items have been inserted"
            ),
            LimiterError::DeletesExceedInserts { insert_count, delete_count } => {
                write!(f, "delete_count ({delete_count}) exceeds insert_count ({insert_count})")
            }
        }
    }
}

impl std::error::Error for LimiterError {}

/// The error buffer of [`RateLimiter::sample_to_insert_ratio`], as Python's `error_buffer`
/// argument (`Union[float, Tuple[float, float]]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBuffer {
    /// A number `e`: the range is `spi·min_size ± e`, so the error counts only the operations
    /// after the table first reaches `min_size_to_sample` (at that moment, with no samples yet,
    /// diff is exactly `spi·min_size`).
    Symmetric(f64),
    /// `(min_diff, max_diff)`, used as given, with no offset.
    Range(f64, f64),
}

/// Everything a checkpoint keeps: Reverb's `RateLimiterCheckpoint` (`checkpoint.proto`, fields 2–8),
/// the four settings and the three counters. No cancel flag, statistics or timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterState {
    pub samples_per_insert: f64,
    pub min_size_to_sample: u64,
    pub min_diff: f64,
    pub max_diff: f64,
    pub insert_count: u64,
    pub sample_count: u64,
    pub delete_count: u64,
}

/// Reverb's rate limiter: four settings and three counters; see the module doc for the algebra.
///
/// The owner (the shard service) calls it under the same lock as the table, checks
/// [`can_insert`](Self::can_insert) before it inserts and then calls [`insert`](Self::insert),
/// commits samples with [`maybe_commit_sample`](Self::maybe_commit_sample) or
/// [`commit_samples`](Self::commit_samples), and calls [`delete`](Self::delete) for every step
/// that leaves the table (eviction at `max_size` included), as Reverb's `Table` does.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimiter {
    samples_per_insert: f64,
    min_size_to_sample: u64,
    min_diff: f64,
    max_diff: f64,
    inserts: u64,
    samples: u64,
    deletes: u64,
}

impl RateLimiter {
    /// Reverb's `RateLimiter(samples_per_insert, min_size_to_sample, min_diff, max_diff)`, with
    /// all counters at 0. Checks, in Reverb's order: `min_size_to_sample ≥ 1`, then
    /// `samples_per_insert` finite and > 0; then (ours) neither bound NaN. Like Reverb, it does not
    /// check `min_diff ≤ max_diff`: that is [`sample_to_insert_ratio`](Self::sample_to_insert_ratio)'s job.
    pub fn new(
        samples_per_insert: f64,
        min_size_to_sample: u64,
        min_diff: f64,
        max_diff: f64,
    ) -> Result<Self, LimiterError> {
        if min_size_to_sample < 1 {
            return Err(LimiterError::MinSizeToSample { value: min_size_to_sample });
        }
        if !(samples_per_insert > 0.0 && samples_per_insert.is_finite()) {
            return Err(LimiterError::SamplesPerInsert { value: samples_per_insert });
        }
        if min_diff.is_nan() {
            return Err(LimiterError::DiffIsNan { field: "min_diff" });
        }
        if max_diff.is_nan() {
            return Err(LimiterError::DiffIsNan { field: "max_diff" });
        }
        Ok(RateLimiter {
            samples_per_insert,
            min_size_to_sample,
            min_diff,
            max_diff,
            inserts: 0,
            samples: 0,
            deletes: 0,
        })
    }

    /// Python's `MinSize(min_size_to_sample)`: samples wait until the table holds
    /// `min_size_to_sample` items, inserts are never blocked. Built as spi = 1,
    /// `min_diff = −f64::MAX`, `max_diff = +f64::MAX` (`-sys.float_info.max`, `sys.float_info.max`).
    pub fn min_size(min_size_to_sample: u64) -> Result<Self, LimiterError> {
        if min_size_to_sample < 1 {
            return Err(LimiterError::MinSizeToSample { value: min_size_to_sample });
        }
        RateLimiter::new(1.0, min_size_to_sample, -f64::MAX, f64::MAX)
    }

    /// Python's `SampleToInsertRatio(samples_per_insert, min_size_to_sample, error_buffer)`.
    ///
    /// The range is `spi·min_size ± e` for [`ErrorBuffer::Symmetric`]`(e)`, or the given pair for
    /// [`ErrorBuffer::Range`]. Then, in Python's order:
    /// 1. `samples_per_insert ≤ 0` (or, ours, not finite) is refused;
    /// 2. `max_diff − min_diff < 2·max(1, spi)` is refused (for a symmetric buffer: `e < max(1, spi)`);
    /// 3. `max_diff < spi·min_size` is allowed, and reported by
    ///    [`deadlock_warning`](Self::deadlock_warning) (Python logs a warning);
    /// 4. `min_diff > spi·min_size` is refused;
    /// 5. `min_size_to_sample < 1` is refused, last.
    pub fn sample_to_insert_ratio(
        samples_per_insert: f64,
        min_size_to_sample: u64,
        error_buffer: ErrorBuffer,
    ) -> Result<Self, LimiterError> {
        let spi = samples_per_insert;
        let offset = spi * min_size_to_sample as f64;
        let (min_diff, max_diff) = match error_buffer {
            ErrorBuffer::Symmetric(e) => (offset - e, offset + e),
            ErrorBuffer::Range(lo, hi) => (lo, hi),
        };
        if !(spi > 0.0 && spi.is_finite()) {
            return Err(LimiterError::SamplesPerInsert { value: spi });
        }
        // NaN fails here and below, where Python's `<` and `>` let it through.
        let width = max_diff - min_diff;
        if width.is_nan() || width < 2.0 * spi.max(1.0) {
            return Err(LimiterError::ErrorBufferTooSmall { min_diff, max_diff, samples_per_insert: spi });
        }
        // Step 3 (max_diff below the offset) only warns: see `deadlock_warning`.
        if min_diff.is_nan() || min_diff > offset {
            return Err(LimiterError::ErrorBufferAboveMinSize { min_diff, offset });
        }
        if min_size_to_sample < 1 {
            return Err(LimiterError::MinSizeToSample { value: min_size_to_sample });
        }
        RateLimiter::new(spi, min_size_to_sample, min_diff, max_diff)
    }

    /// Python `SampleToInsertRatio`'s warning, for any limiter: `Some` when
    /// `max_diff < samples_per_insert · min_size_to_sample`. Such a limiter blocks the insert that
    /// would take the table past `min_size_to_sample` until a sample is taken, so a client that
    /// inserts and samples from one thread deadlocks there; concurrent samplers are fine.
    pub fn deadlock_warning(&self) -> Option<String> {
        let offset = self.samples_per_insert * self.min_size_to_sample as f64;
        (self.max_diff < offset).then(|| {
            format!(
                "error_buffer: max_diff ({}) is below samples_per_insert * min_size_to_sample ({offset}); if the \
                 sampler cannot sample concurrently, this will deadlock as soon as min_size_to_sample items have \
                 been inserted",
                self.max_diff
            )
        })
    }

    /// Rebuilds a limiter from a checkpoint, as Reverb's `RateLimiter(const RateLimiterCheckpoint&)`:
    /// the settings go through [`new`](Self::new)'s checks, then the counters are set as saved.
    /// Refuses `delete_count > insert_count` (our addition: a negative size).
    pub fn restore(state: &LimiterState) -> Result<Self, LimiterError> {
        let mut limiter =
            RateLimiter::new(state.samples_per_insert, state.min_size_to_sample, state.min_diff, state.max_diff)?;
        if state.delete_count > state.insert_count {
            return Err(LimiterError::DeletesExceedInserts {
                insert_count: state.insert_count,
                delete_count: state.delete_count,
            });
        }
        limiter.inserts = state.insert_count;
        limiter.samples = state.sample_count;
        limiter.deletes = state.delete_count;
        Ok(limiter)
    }

    /// Reverb's `CheckpointReader`: the four settings and the three counters.
    pub fn checkpoint(&self) -> LimiterState {
        LimiterState {
            samples_per_insert: self.samples_per_insert,
            min_size_to_sample: self.min_size_to_sample,
            min_diff: self.min_diff,
            max_diff: self.max_diff,
            insert_count: self.inserts,
            sample_count: self.samples,
            delete_count: self.deletes,
        }
    }

    /// Reverb's `CanInsert(n)`: whether `n` more steps may be inserted now. Changes nothing.
    ///
    /// ```text
    /// inserts + n − deletes ≤ min_size_to_sample        → true ("free until min size", inclusive)
    /// otherwise: (inserts + n)·spi − samples ≤ max_diff  (f64, inclusive)
    /// ```
    ///
    /// If `inserts + n` overflows `u64` the answer is `false`.
    ///
    /// # Panics
    ///
    /// If `n == 0`, as Reverb's `REVERB_CHECK_GT(num_inserts, 0)`.
    pub fn can_insert(&self, n: u64) -> bool {
        assert!(n > 0, "RateLimiter::can_insert needs n > 0");
        let Some(after) = self.inserts.checked_add(n) else {
            return false;
        };
        if after - self.deletes <= self.min_size_to_sample {
            return true;
        }
        after as f64 * self.samples_per_insert - self.samples as f64 <= self.max_diff
    }

    /// Reverb's `CanSample(n)`: whether `n` more windows may be sampled now. Changes nothing.
    ///
    /// ```text
    /// inserts − deletes < min_size_to_sample       → false (size now; n plays no part)
    /// otherwise: inserts·spi − samples − n ≥ min_diff  (f64, inclusive, evaluated left to right
    ///                                                  as in rate_limiter.cc)
    /// ```
    ///
    /// # Panics
    ///
    /// If `n == 0`, as Reverb's `REVERB_CHECK_GT(num_samples, 0)`.
    pub fn can_sample(&self, n: u64) -> bool {
        assert!(n > 0, "RateLimiter::can_sample needs n > 0");
        if self.size() < self.min_size_to_sample {
            return false;
        }
        self.inserts as f64 * self.samples_per_insert - self.samples as f64 - n as f64 >= self.min_diff
    }

    /// Reverb's `Insert`, `n` times: counts `n` inserted steps. It does not check
    /// [`can_insert`](Self::can_insert); the caller has, under the same lock. Checking without
    /// inserting ("staging") changes nothing. Count only *new* steps: Reverb counts an insert only
    /// for a new key, and none while restoring a checkpoint (`InsertCheckpointItem`).
    pub fn insert(&mut self, n: u64) {
        self.inserts += n;
    }

    /// Reverb's `Delete`, `n` times: counts `n` steps that left the table (evicted at `max_size`,
    /// or removed). Deletes change the size, not the diff.
    ///
    /// # Panics
    ///
    /// If `n > size()`: the table cannot lose more steps than it holds.
    pub fn delete(&mut self, n: u64) {
        assert!(n <= self.size(), "RateLimiter::delete of {n} steps with only {} in the table", self.size());
        self.deletes += n;
    }

    /// Reverb's `MaybeCommitSample`: if [`can_sample`](Self::can_sample)`(1)`, counts one sample
    /// and returns `true`; otherwise changes nothing and returns `false`.
    pub fn maybe_commit_sample(&mut self) -> bool {
        if self.can_sample(1) {
            self.samples += 1;
            true
        } else {
            false
        }
    }

    /// Commits as many samples as allowed, up to `n`, and returns how many: exactly what `n` calls
    /// of [`maybe_commit_sample`](Self::maybe_commit_sample) would commit, which is how Reverb's
    /// table worker fills a batch request (`MaybeCommitSample` in a loop; a partial batch is fine).
    /// It takes O(log n) steps, not n: whether the k-th single commit is allowed,
    /// `inserts·spi − (samples + k − 1) − 1 ≥ min_diff`, is monotone in k, so a binary search finds
    /// the last one. `commit_samples(0)` commits nothing.
    pub fn commit_samples(&mut self, n: u64) -> u64 {
        if self.size() < self.min_size_to_sample {
            return 0;
        }
        let kth_allowed = |k: u64| {
            self.inserts as f64 * self.samples_per_insert - (self.samples + k - 1) as f64 - 1.0 >= self.min_diff
        };
        // Invariant: the first `lo` single commits are allowed, the (hi + 1)-th is not (or is not asked for).
        let (mut lo, mut hi) = (0, n.min(u64::MAX - self.samples));
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if kth_allowed(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        self.samples += lo;
        lo
    }

    /// Reverb's `Reset` (called by `Table::Reset`): all counters back to 0, settings kept.
    pub fn reset(&mut self) {
        self.inserts = 0;
        self.samples = 0;
        self.deletes = 0;
    }

    /// Steps in the table: `inserts − deletes`.
    pub fn size(&self) -> u64 {
        self.inserts - self.deletes
    }

    /// Reverb's cursor: `inserts · samples_per_insert − samples`, in windows.
    pub fn diff(&self) -> f64 {
        self.inserts as f64 * self.samples_per_insert - self.samples as f64
    }

    /// Windows sampled per step inserted.
    pub fn samples_per_insert(&self) -> f64 {
        self.samples_per_insert
    }

    /// Steps the table must hold before any sample.
    pub fn min_size_to_sample(&self) -> u64 {
        self.min_size_to_sample
    }

    /// Whether the limiter holds samples to a ratio of inserts: false for a MinSize limiter,
    /// whose bounds are `±f64::MAX` (or a ratio limiter given an unbounded range).
    pub fn targets_a_ratio(&self) -> bool {
        self.min_diff > -f64::MAX && self.max_diff < f64::MAX
    }

    /// The lowest diff a sample may leave.
    pub fn min_diff(&self) -> f64 {
        self.min_diff
    }

    /// The highest diff an insert may leave, once past `min_size_to_sample`.
    pub fn max_diff(&self) -> f64 {
        self.max_diff
    }

    /// Steps inserted since creation or the last reset (Reverb's `insert_stats.completed`).
    pub fn inserts(&self) -> u64 {
        self.inserts
    }

    /// Windows sampled since creation or the last reset (Reverb's `sample_stats.completed`).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Steps deleted since creation or the last reset.
    pub fn deletes(&self) -> u64 {
        self.deletes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(spi: f64, min_size: u64, min_diff: f64, max_diff: f64) -> RateLimiter {
        RateLimiter::new(spi, min_size, min_diff, max_diff).unwrap()
    }

    // ---- reverb/cc/rate_limiter_test.cc at c82e319, in file order. Parameters are
    // (spi, min_size, min_diff, max_diff); "Insert" in the C++ is CanInsert(1) → true, then Insert().

    #[test]
    fn blocks_samples_until_min_inserts_reached() {
        let mut l = limiter(1.0, 2, -1.0, 1.0);
        assert!(!l.maybe_commit_sample()); // size 0
        assert!(l.can_insert(1));
        l.insert(1);
        assert!(!l.maybe_commit_sample()); // size 1 < 2
        assert!(l.can_insert(1)); // size after = 2 ≤ 2
        l.insert(1);
        assert!(l.maybe_commit_sample()); // 2 − 0 − 1 = 1 ≥ −1
    }

    #[test]
    fn operations_within_the_buffer_are_not_blocked() {
        let mut l = limiter(1.5, 1, -3.0, 3.1);
        assert!(l.can_insert(1)); // shortcut: 1 ≤ 1
        l.insert(1);
        assert!(l.can_insert(1)); // 3.0 ≤ 3.1
        l.insert(1);
        for expected_diff in [2.0, 1.0, 0.0, -1.0, -2.0, -3.0] {
            assert!(l.maybe_commit_sample());
            assert_eq!(l.diff(), expected_diff);
        }
    }

    #[test]
    fn blocks_calls_that_exceeds_the_min_max_limits() {
        let mut l = limiter(1.5, 2, -1.0, 3.0);
        assert!(!l.maybe_commit_sample());
        assert!(l.can_insert(1));
        l.insert(1); // diff 1.5
        assert!(!l.maybe_commit_sample()); // size 1
        assert!(l.can_insert(1)); // 2 ≤ 2
        l.insert(1); // diff 3.0
        assert!(l.maybe_commit_sample()); // 3 − 0 − 1 = 2 ≥ −1
        assert!(!l.can_insert(1)); // 4.5 − 1 = 3.5 > 3
        assert!(l.maybe_commit_sample()); // 3 − 1 − 1 = 1 ≥ −1
        assert!(l.can_insert(1)); // 4.5 − 2 = 2.5 ≤ 3
        l.insert(1);
    }

    #[test]
    fn can_sample() {
        let mut l = limiter(1.0, 1, -1.0, 1.0);
        assert!(!l.can_sample(1)); // size 0
        assert!(l.can_insert(1));
        l.insert(1);
        let before = l.clone();
        assert!(l.can_sample(1)); // 0
        assert!(l.can_sample(2)); // −1
        assert!(!l.can_sample(3)); // −2
        assert_eq!(l, before, "can_sample never changes state");
    }

    #[test]
    fn maybe_commit_sample() {
        let mut l = limiter(1.0, 1, -1.0, 1.0);
        assert!(!l.maybe_commit_sample()); // size 0
        assert!(l.can_insert(1));
        l.insert(1);
        assert!(l.maybe_commit_sample());
        assert_eq!(l.samples(), 1);
        assert!(l.maybe_commit_sample());
        assert_eq!(l.samples(), 2);
        assert!(!l.maybe_commit_sample());
        assert_eq!(l.samples(), 2);
    }

    #[test]
    fn can_insert() {
        let mut l = limiter(1.5, 2, 0.0, 5.0);
        assert!(l.can_insert(1)); // shortcut 1 ≤ 2
        assert!(l.can_insert(2)); // shortcut 2 ≤ 2
        assert!(l.can_insert(3)); // 4.5 ≤ 5
        assert!(!l.can_insert(4)); // 6.0 > 5
        for _ in 0..3 {
            assert!(l.can_insert(1));
            l.insert(1);
        }
        assert!(!l.can_insert(1)); // 6.0
        assert!(l.maybe_commit_sample()); // 3.5
        assert!(l.maybe_commit_sample()); // 2.5
        assert!(l.can_insert(1)); // 4·1.5 − 2 = 4.0
        assert!(!l.can_insert(2)); // 5·1.5 − 2 = 5.5
    }

    #[test]
    fn checkpoint_sets_basic_options() {
        let l = limiter(1.5, 2, 0.0, 5.0);
        assert_eq!(
            l.checkpoint(),
            LimiterState {
                samples_per_insert: 1.5,
                min_size_to_sample: 2,
                min_diff: 0.0,
                max_diff: 5.0,
                insert_count: 0,
                sample_count: 0,
                delete_count: 0,
            }
        );
    }

    #[test]
    fn checkpoint_sets_insert_and_delete_and_sample_count() {
        let mut l = limiter(1.5, 2, 0.0, 5.0);
        let c = l.checkpoint();
        assert_eq!((c.sample_count, c.insert_count), (0, 0));
        for _ in 0..2 {
            assert!(l.can_insert(1));
            l.insert(1);
        }
        assert!(l.maybe_commit_sample());
        l.delete(1);
        let c = l.checkpoint();
        assert_eq!((c.sample_count, c.insert_count, c.delete_count), (1, 2, 1));
    }

    #[test]
    fn can_be_restored_from_checkpoint() {
        let mut l = limiter(1.5, 2, 0.0, 5.0);
        for _ in 0..2 {
            assert!(l.can_insert(1));
            l.insert(1);
        }
        assert!(l.maybe_commit_sample());
        l.delete(1);
        let checkpoint = l.checkpoint();
        let full = |sample_count, insert_count| LimiterState {
            samples_per_insert: 1.5,
            min_size_to_sample: 2,
            min_diff: 0.0,
            max_diff: 5.0,
            insert_count,
            sample_count,
            delete_count: 1,
        };
        assert_eq!(checkpoint, full(1, 2));

        let mut restored = RateLimiter::restore(&checkpoint).unwrap();
        assert!(restored.can_insert(1)); // 2 + 1 − 1 = 2 ≤ 2
        restored.insert(1);
        assert!(restored.maybe_commit_sample()); // size 2; 3·1.5 − 1 − 1 = 2.5 ≥ 0
        assert_eq!(restored.checkpoint(), full(2, 3));
    }

    #[test]
    fn unblocks_inserts_if_deleted_items_brings_size_below_min_size() {
        let mut l = limiter(5.0, 2, 0.0, 5.0);
        assert!(l.can_insert(1));
        l.insert(1);
        assert!(l.can_insert(1)); // shortcut, though diff would be 10
        l.insert(1);
        assert!(!l.can_insert(1)); // 3 > 2; 15 > 5
        assert!(l.maybe_commit_sample()); // 10 − 0 − 1 = 9 ≥ 0
        assert!(!l.can_insert(1)); // 15 − 1 = 14 > 5
        l.delete(1);
        assert!(l.can_insert(1)); // 2 + 1 − 1 = 2 ≤ 2
    }

    #[test]
    fn blocks_samples_if_delete_brings_size_below_min_size() {
        let mut l = limiter(5.0, 2, 0.0, 5.0);
        for _ in 0..2 {
            assert!(l.can_insert(1));
            l.insert(1);
        }
        assert!(l.maybe_commit_sample());
        l.delete(1); // size 1
        assert!(!l.maybe_commit_sample());
        assert!(l.can_insert(1)); // staged only
        assert!(!l.maybe_commit_sample()); // staging does not count
        l.insert(1); // size 2
        assert!(l.maybe_commit_sample()); // 15 − 1 − 1 = 13 ≥ 0
    }

    /// `Info()`: the settings, and call stats whose only field, `completed`, is the counter.
    #[test]
    fn info() {
        for (spi, min_size, min_diff, max_diff) in [(1.0, 1, 0.0, 5.0), (1.5, 14, -10.0, 5.3)] {
            let l = limiter(spi, min_size, min_diff, max_diff);
            assert_eq!(l.samples_per_insert(), spi);
            assert_eq!(l.min_size_to_sample(), min_size);
            assert_eq!(l.min_diff(), min_diff);
            assert_eq!(l.max_diff(), max_diff);
            assert_eq!((l.inserts(), l.samples()), (0, 0));
        }
    }

    /// Death test → a refused constructor. `RateLimiter(1, -1, 0, 5)` is not representable (u64).
    #[test]
    fn dies_if_min_size_to_sample_non_positive() {
        assert_eq!(RateLimiter::new(1.0, 0, 0.0, 5.0), Err(LimiterError::MinSizeToSample { value: 0 }));
    }

    /// Death test → a refused constructor.
    #[test]
    fn dies_if_samples_per_insert_non_positive() {
        for spi in [0.0, -1.0] {
            assert_eq!(RateLimiter::new(spi, 1, -100.0, 100.0), Err(LimiterError::SamplesPerInsert { value: spi }));
        }
    }

    // ---- reverb/rate_limiters_test.py.

    fn is_too_small(r: Result<RateLimiter, LimiterError>) -> bool {
        matches!(r, Err(LimiterError::ErrorBufferTooSmall { .. }))
    }

    #[test]
    fn validates_single_number_error_buffer() {
        // min_size = 10. less_than_samples_per_insert: width 8 < 10.
        assert!(is_too_small(RateLimiter::sample_to_insert_ratio(5.0, 10, ErrorBuffer::Symmetric(4.0))));
        // less_than_one: width 1.8 < 2.
        assert!(is_too_small(RateLimiter::sample_to_insert_ratio(0.5, 10, ErrorBuffer::Symmetric(0.9))));
        // valid: range 5 ± 1.1.
        let l = RateLimiter::sample_to_insert_ratio(0.5, 10, ErrorBuffer::Symmetric(1.1)).unwrap();
        assert_eq!((l.min_diff(), l.max_diff()), (5.0 - 1.1, 5.0 + 1.1));
        assert_eq!(l.deadlock_warning(), None);
    }

    #[test]
    fn validates_explicit_range_error_buffer() {
        let ratio =
            |min_size, spi, lo, hi| RateLimiter::sample_to_insert_ratio(spi, min_size, ErrorBuffer::Range(lo, hi));
        // range_too_small_due_to_sample_per_insert_ratio
        assert!(is_too_small(ratio(10, 5.0, 8.0, 12.0)));
        // range_smaller_than_2
        assert!(is_too_small(ratio(10, 0.1, 9.5, 10.5)));
        // range_below_min_size_to_sample: allowed, with the warning.
        let below = ratio(10, 1.0, 5.0, 9.0).unwrap();
        assert!(below.deadlock_warning().unwrap().contains("max_diff (9)"));
        // range_above_min_size_to_sample
        assert_eq!(
            ratio(10, 1.0, 11.0, 15.0),
            Err(LimiterError::ErrorBufferAboveMinSize { min_diff: 11.0, offset: 10.0 })
        );
        // min_size_to_sample_smaller_than_1
        assert_eq!(ratio(0, 1.0, -100.0, 100.0), Err(LimiterError::MinSizeToSample { value: 0 }));
        // valid
        let l = ratio(10, 1.0, 7.0, 12.0).unwrap();
        assert_eq!((l.min_diff(), l.max_diff()), (7.0, 12.0));
        assert_eq!(l.deadlock_warning(), None);
    }

    #[test]
    fn validates_samples_per_insert() {
        // min_size = 10, error_buffer = 100.
        assert!(RateLimiter::sample_to_insert_ratio(1.0, 10, ErrorBuffer::Symmetric(100.0)).is_ok());
        for spi in [0.0, -1.0] {
            assert_eq!(
                RateLimiter::sample_to_insert_ratio(spi, 10, ErrorBuffer::Symmetric(100.0)),
                Err(LimiterError::SamplesPerInsert { value: spi })
            );
        }
    }

    /// `TestMinSize.test_raises_if_min_size_lt_1` (the −1 case is not representable in u64).
    #[test]
    fn raises_if_min_size_lt_1() {
        assert_eq!(RateLimiter::min_size(0), Err(LimiterError::MinSizeToSample { value: 0 }));
        assert!(RateLimiter::min_size(1).is_ok());
    }

    /// Each check fires only when every earlier one passed, in Python's order:
    /// spi, width, min_diff above the offset, min_size.
    #[test]
    fn sample_to_insert_ratio_validates_in_reverbs_order() {
        let r = |spi, min_size, lo, hi| RateLimiter::sample_to_insert_ratio(spi, min_size, ErrorBuffer::Range(lo, hi));
        // Bad spi, too narrow, above the offset and min_size 0: spi wins.
        assert!(matches!(r(0.0, 0, 5.0, 5.5), Err(LimiterError::SamplesPerInsert { .. })));
        // Too narrow, above the offset and min_size 0: the width wins.
        assert!(is_too_small(r(1.0, 0, 5.0, 5.5)));
        // Above the offset and min_size 0: the offset wins.
        assert!(matches!(r(1.0, 0, 5.0, 10.0), Err(LimiterError::ErrorBufferAboveMinSize { .. })));
        // The edges are allowed: width exactly 2·max(1, spi), min_diff exactly the offset.
        let l = r(1.0, 10, 10.0, 12.0).unwrap();
        assert_eq!(l.deadlock_warning(), None);
        // max_diff exactly the offset is not below it: no warning.
        assert_eq!(r(1.0, 10, 8.0, 10.0).unwrap().deadlock_warning(), None);
    }

    #[test]
    fn sample_to_insert_ratio_refuses_nan_and_infinite_spi() {
        let s = |spi, e| RateLimiter::sample_to_insert_ratio(spi, 10, ErrorBuffer::Symmetric(e));
        assert!(matches!(s(f64::NAN, 100.0), Err(LimiterError::SamplesPerInsert { .. })));
        assert!(matches!(s(f64::INFINITY, 100.0), Err(LimiterError::SamplesPerInsert { .. })));
        assert!(is_too_small(s(1.0, f64::NAN)));
        let r = |lo, hi| RateLimiter::sample_to_insert_ratio(1.0, 10, ErrorBuffer::Range(lo, hi));
        assert!(is_too_small(r(f64::NAN, 100.0)));
        assert!(is_too_small(r(f64::INFINITY, f64::INFINITY)));
        // An unbounded range is a MinSize that also counts samples: fine.
        assert!(s(1.0, f64::INFINITY).is_ok());
        assert!(!s(1.0, f64::INFINITY).unwrap().targets_a_ratio());
        assert!(s(1.0, 100.0).unwrap().targets_a_ratio());
    }

    // ---- MinSize (rate_limiters.py): samples gated on size only, inserts never blocked.

    #[test]
    fn min_size_gates_samples_on_size_only() {
        let mut l = RateLimiter::min_size(3).unwrap();
        assert_eq!((l.samples_per_insert(), l.min_diff(), l.max_diff()), (1.0, -f64::MAX, f64::MAX));
        assert!(!l.targets_a_ratio());
        for _ in 0..3 {
            assert!(!l.can_sample(1));
            assert!(l.can_insert(1));
            l.insert(1);
        }
        // Size 3 = min size: any number of samples, however far past the inserts.
        assert!(l.can_sample(u64::MAX));
        assert_eq!(l.commit_samples(1_000_000), 1_000_000);
        assert!(l.can_insert(1_000_000));
        // Both sides of the size limit.
        l.delete(1);
        assert!(!l.maybe_commit_sample());
        l.insert(1);
        assert!(l.maybe_commit_sample());
        assert_eq!(l.deadlock_warning(), None);
    }

    // ---- Beyond Reverb's tests.

    /// Checkpoint → restore gives an equal limiter, which then answers and counts exactly as the
    /// original does (as CanBeRestoredFromCheckpoint, but compared op by op against the original).
    #[test]
    fn checkpoint_restore_round_trips_and_continues() {
        let mut original = RateLimiter::sample_to_insert_ratio(1.5, 4, ErrorBuffer::Symmetric(3.0)).unwrap();
        for _ in 0..5 {
            if original.can_insert(1) {
                original.insert(1);
            }
        }
        original.commit_samples(3);
        original.delete(1);
        let mut restored = RateLimiter::restore(&original.checkpoint()).unwrap();
        assert_eq!(restored, original);
        assert_eq!(restored.checkpoint(), original.checkpoint());
        for step in 0..40u64 {
            for l in [&mut original, &mut restored] {
                match step % 4 {
                    0 | 1 => {
                        if l.can_insert(1) {
                            l.insert(1);
                        }
                    }
                    2 => {
                        l.maybe_commit_sample();
                    }
                    _ => {
                        if l.size() > 4 {
                            l.delete(1);
                        }
                    }
                }
            }
            assert_eq!(restored, original, "after op {step}");
        }
        assert!(original.inserts() > 6 && original.samples() > 3, "the sequence exercised both sides");
    }

    #[test]
    fn restore_refuses_what_new_refuses_and_negative_sizes() {
        let good = limiter(1.5, 2, 0.0, 5.0).checkpoint();
        let bad = |f: fn(&mut LimiterState)| {
            let mut s = good;
            f(&mut s);
            RateLimiter::restore(&s).unwrap_err().field()
        };
        assert_eq!(bad(|s| s.min_size_to_sample = 0), "min_size_to_sample");
        assert_eq!(bad(|s| s.samples_per_insert = 0.0), "samples_per_insert");
        assert_eq!(bad(|s| s.min_diff = f64::NAN), "min_diff");
        assert_eq!(bad(|s| s.max_diff = f64::NAN), "max_diff");
        assert_eq!(bad(|s| s.delete_count = 1), "delete_count");
        // A checkpoint's settings may be edited before restoring (Reverb's setters, bf5fb95).
        let mut edited = good;
        edited.max_diff = 100.0;
        assert_eq!(RateLimiter::restore(&edited).unwrap().max_diff(), 100.0);
    }

    #[test]
    fn errors_name_their_parameter() {
        let cases = [
            (RateLimiter::new(1.0, 0, 0.0, 1.0), "min_size_to_sample"),
            (RateLimiter::new(-1.0, 1, 0.0, 1.0), "samples_per_insert"),
            (RateLimiter::new(1.0, 1, f64::NAN, 1.0), "min_diff"),
            (RateLimiter::new(1.0, 1, 0.0, f64::NAN), "max_diff"),
            (RateLimiter::sample_to_insert_ratio(1.0, 10, ErrorBuffer::Symmetric(0.5)), "error_buffer"),
            (RateLimiter::sample_to_insert_ratio(1.0, 10, ErrorBuffer::Range(11.0, 20.0)), "error_buffer"),
        ];
        for (result, field) in cases {
            let e = result.unwrap_err();
            assert_eq!(e.field(), field);
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let e = RateLimiter::restore(&LimiterState {
            delete_count: 2,
            insert_count: 1,
            ..limiter(1.0, 1, 0.0, 1.0).checkpoint()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("delete_count"), "{e}");
    }

    /// Reverb's constructor checks nothing about the bounds' order; neither do we.
    #[test]
    fn new_accepts_inverted_and_infinite_bounds_like_reverb() {
        assert!(RateLimiter::new(1.0, 1, 5.0, -5.0).is_ok());
        let mut l = limiter(1.0, 1, f64::NEG_INFINITY, f64::INFINITY);
        l.insert(1);
        assert!(l.can_sample(u64::MAX) && l.can_insert(1000));
        assert!(RateLimiter::new(f64::INFINITY, 1, 0.0, 1.0).is_err());
    }

    #[test]
    fn deadlock_warning_applies_to_any_limiter() {
        assert!(limiter(2.0, 10, 0.0, 19.9).deadlock_warning().is_some());
        assert!(limiter(2.0, 10, 0.0, 20.0).deadlock_warning().is_none());
    }

    /// Both sides of each inclusive limit, away from any shortcut.
    #[test]
    fn limits_are_inclusive() {
        let mut l = limiter(1.0, 1, 0.0, 2.0);
        l.insert(2); // diff 2 = max_diff
        assert!(!l.can_insert(1)); // 3 > 2
        assert!(l.can_sample(2)); // 2 − 2 = 0 = min_diff
        assert!(!l.can_sample(3)); // −1 < 0
        assert!(l.maybe_commit_sample()); // diff 1
        assert!(l.can_insert(1)); // 3 − 1 = 2 ≤ 2
        assert!(!l.can_insert(2)); // 3 > 2
                                   // The shortcut edge: size after exactly min_size passes whatever the diff.
        let l = limiter(100.0, 3, 0.0, 0.0);
        assert!(l.can_insert(3));
        assert!(!l.can_insert(4));
    }

    /// The parameter sets of the C++ tests and two SampleToInsertRatio limiters, driven through a
    /// fixed mixed sequence; at every state `can_insert(n)` must equal n single checked inserts and
    /// `can_sample(n)` / `commit_samples(n)` must equal n single `maybe_commit_sample`s.
    #[test]
    fn batched_calls_equal_successive_single_calls() {
        let limiters = [
            limiter(1.0, 2, -1.0, 1.0),
            limiter(1.5, 1, -3.0, 3.1),
            limiter(1.5, 2, -1.0, 3.0),
            limiter(1.0, 1, -1.0, 1.0),
            limiter(1.5, 2, 0.0, 5.0),
            limiter(5.0, 2, 0.0, 5.0),
            limiter(0.25, 3, -2.0, 2.0),
            RateLimiter::sample_to_insert_ratio(3.0, 7, ErrorBuffer::Symmetric(4.0)).unwrap(),
            RateLimiter::sample_to_insert_ratio(0.1, 20, ErrorBuffer::Range(-1.0, 3.0)).unwrap(),
        ];
        for mut l in limiters {
            for op in 0..60u64 {
                for n in 1..=8 {
                    let mut one_by_one = l.clone();
                    let inserts_ok = (0..n).all(|_| {
                        let ok = one_by_one.can_insert(1);
                        one_by_one.insert(1);
                        ok
                    });
                    assert_eq!(l.can_insert(n), inserts_ok, "can_insert({n}) at {l:?}");

                    let mut one_by_one = l.clone();
                    let committed = (0..n).take_while(|_| one_by_one.maybe_commit_sample()).count() as u64;
                    assert_eq!(l.can_sample(n), committed == n, "can_sample({n}) at {l:?}");
                    let mut batched = l.clone();
                    assert_eq!(batched.commit_samples(n), committed, "commit_samples({n}) at {l:?}");
                    assert_eq!(batched, one_by_one);
                }
                match op % 5 {
                    0 | 1 | 3 => {
                        if l.can_insert(1) {
                            l.insert(1);
                        }
                    }
                    2 => {
                        l.commit_samples(2);
                    }
                    _ => {
                        if l.size() > 0 {
                            l.delete(1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reset_zeroes_counters_and_keeps_settings() {
        let mut l = limiter(1.5, 2, 0.0, 5.0);
        l.insert(2);
        l.maybe_commit_sample();
        l.delete(1);
        l.reset();
        assert_eq!(l, limiter(1.5, 2, 0.0, 5.0));
        assert_eq!((l.size(), l.diff()), (0, 0.0));
    }

    #[test]
    fn commit_samples_of_zero_or_before_min_size_commits_nothing() {
        let mut l = limiter(1.0, 2, -10.0, 10.0);
        l.insert(1);
        assert_eq!(l.commit_samples(5), 0);
        l.insert(1);
        assert_eq!(l.commit_samples(0), 0);
        assert_eq!(l.samples(), 0);
        assert_eq!(l.commit_samples(100), 12); // 2 − k ≥ −10
    }

    #[test]
    fn can_insert_is_false_when_the_count_would_overflow() {
        let mut l = RateLimiter::min_size(1).unwrap();
        l.insert(1);
        assert!(!l.can_insert(u64::MAX));
    }

    #[test]
    #[should_panic(expected = "can_insert needs n > 0")]
    fn can_insert_zero_panics_like_reverbs_check() {
        limiter(1.0, 1, 0.0, 1.0).can_insert(0);
    }

    #[test]
    #[should_panic(expected = "can_sample needs n > 0")]
    fn can_sample_zero_panics_like_reverbs_check() {
        limiter(1.0, 1, 0.0, 1.0).can_sample(0);
    }

    #[test]
    #[should_panic(expected = "delete of 2 steps with only 1")]
    fn delete_more_than_the_size_panics() {
        let mut l = limiter(1.0, 1, 0.0, 1.0);
        l.insert(1);
        l.delete(2);
    }
}
