//! Shard checkpoints in a running process: restore at start ([`restore_and_report`]), a
//! checkpoint every `replay.checkpoint_seconds`, one on request (the `Checkpoint` RPC), and a final
//! one at shutdown. A coordinator hosting shards in-process ([`start_hosted`], [`shutdown_all`])
//! and a standalone `replay` process ([`Checkpointer::start`]) use the same piece.
//!
//! Each shard has its own directory, `<workdir>/shards/shard-<id>/` ([`shard_dir`]), and one
//! [`Checkpointer`]. A checkpoint holds the shard's lock only for [`Shard::snapshot`]
//! (O(streams + chunks) pointer copies); the file is written on a blocking thread while inserts
//! and samples go on. One writer per shard at a time: a request that arrives while a checkpoint
//! is being written waits for it, then writes its own (so its answer covers everything
//! acknowledged before it was asked).
//!
//! # Guarantees
//!
//! What a shard acknowledged survives a clean stop (SIGTERM: the final checkpoint is written after
//! the server has stopped taking inserts), and what it acknowledged up to its last checkpoint
//! survives a crash. After SIGKILL or a power cut, the chunks acknowledged since the last
//! checkpoint are gone: when their writers reopen their streams past them, the shard counts them
//! in `lost_steps_total`, so that acknowledged = inserted + lost (see `shard`'s module doc). That
//! is the default guarantee: a crash may lose at most `replay.checkpoint_seconds` (60 s) of
//! acknowledged data, and the loss is counted, never silent. Shards are not replicated (Reverb's
//! choice too).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::shard::Shard;
use crate::shard_checkpoint::{CheckpointDir, Written, KEEP};

/// A shard's checkpoint directory under a process's `--workdir`.
pub fn shard_dir(workdir: &Path, shard_id: u32) -> PathBuf {
    workdir.join("shards").join(format!("shard-{shard_id}"))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When the newest complete checkpoint in a shard's directory was written (from its name), if
/// there is one: a restarted standalone shard asks for the slot it checkpointed last.
pub fn newest_complete_time(dir: &Path) -> Option<SystemTime> {
    CheckpointDir::new(dir, KEEP).newest_complete().ok().flatten().map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// Restores `shard` from the newest complete checkpoint in `dir`, printing a warning for each
/// newer directory passed over and one line saying what was restored (or that it starts empty).
/// Returns the checkpoint restored. Blocking file I/O: call it before serving (or on a blocking
/// thread). Errors: an unreadable directory, another shard's checkpoint, or one this shard's
/// config cannot take (another window or `max_size`): starting empty would silently drop it.
pub fn restore_and_report(shard: &Shard, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let id = shard.id();
    let loaded = CheckpointDir::new(dir, KEEP).load_latest(id)?;
    for skipped in &loaded.skipped {
        eprintln!("warning: shard {id}: ignoring checkpoint {}: {}", skipped.path.display(), skipped.reason);
    }
    let Some(checkpoint) = loaded.checkpoint else {
        eprintln!("shard {id}: starting empty (no complete checkpoint in {})", dir.display());
        return Ok(None);
    };
    let path = checkpoint.path;
    shard
        .restore(checkpoint.snapshot, path.display().to_string())
        .with_context(|| format!("shard {id}: restoring {}", path.display()))?;
    let s = shard.stats();
    let l = s.limiter;
    eprintln!(
        "shard {id}: restored from {} ({} steps, {} streams, {} valid window starts; limiter counters: \
         {} inserts, {} samples, {} deletes)",
        path.display(),
        s.size_steps,
        s.streams,
        s.valid_window_starts,
        l.insert_count,
        l.sample_count,
        l.delete_count,
    );
    Ok(Some(path))
}

struct Inner {
    shard: Arc<Shard>,
    dir: CheckpointDir,
    /// Held for a whole checkpoint (snapshot and write) by a spawned task, so that a caller that
    /// gives up (a cancelled RPC) cannot release it while its write still runs.
    writing: Mutex<()>,
    stop: watch::Sender<bool>,
    periodic: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// One shard's checkpoints: written one at a time, periodically if started so. Cheap to clone
/// (the service and the process share one).
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Inner>,
}

impl Checkpointer {
    /// Checkpoints of `shard` in `dir` (created on the first write), keeping the newest [`KEEP`],
    /// written only on request.
    pub fn new(shard: Arc<Shard>, dir: impl Into<PathBuf>) -> Self {
        let (stop, _) = watch::channel(false);
        let inner = Inner {
            shard,
            dir: CheckpointDir::new(dir, KEEP),
            writing: Mutex::new(()),
            stop,
            periodic: std::sync::Mutex::new(None),
        };
        Checkpointer { inner: Arc::new(inner) }
    }

    /// As [`new`](Self::new), plus a checkpoint every `checkpoint_seconds` (the first one a period
    /// after the start; 0 = only on request and at shutdown). Must be called within a tokio
    /// runtime.
    pub fn start(shard: Arc<Shard>, dir: impl Into<PathBuf>, checkpoint_seconds: f64) -> Self {
        let c = Checkpointer::new(shard, dir);
        if checkpoint_seconds > 0.0 && checkpoint_seconds.is_finite() {
            let period = Duration::from_secs_f64(checkpoint_seconds);
            // The first tick is fixed now, not when the task first runs.
            let ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let task = tokio::spawn(periodic(Arc::downgrade(&c.inner), ticks, c.inner.stop.subscribe()));
            *c.inner.periodic.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        c
    }

    pub fn shard(&self) -> &Arc<Shard> {
        &self.inner.shard
    }

    pub fn dir(&self) -> &Path {
        self.inner.dir.root()
    }

    /// Writes a checkpoint now and returns once its `DONE` marker is written; waits first for a
    /// checkpoint already being written. The work runs in its own task: dropping this future does
    /// not stop the write (nor let another start beside it).
    pub async fn checkpoint(&self) -> anyhow::Result<Written> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let _writing = inner.writing.lock().await;
            let started = Instant::now();
            let snapshot = inner.shard.snapshot();
            let locked = started.elapsed();
            let dir = inner.dir.clone();
            let written = tokio::task::spawn_blocking(move || dir.write(&snapshot, unix_ms()))
                .await
                .context("the checkpoint writer panicked")??;
            let id = inner.shard.id().to_string();
            metrics::histogram!("dsm_replay_checkpoint_snapshot_seconds", "shard" => id.clone())
                .record(locked.as_secs_f64());
            metrics::histogram!("dsm_replay_checkpoint_duration_seconds", "shard" => id)
                .record(started.elapsed().as_secs_f64());
            inner.shard.record_checkpoint(unix_ms() as i64);
            for warning in &written.warnings {
                eprintln!("warning: shard {}: {warning}", inner.shard.id());
            }
            Ok(written)
        })
        .await
        .context("the checkpoint task panicked")?
    }

    /// Stops the periodic checkpoints (letting one in progress finish) and writes a final
    /// checkpoint; returns its directory. Call it once the server no longer takes inserts, so
    /// that it holds everything acknowledged.
    pub async fn shutdown(&self) -> anyhow::Result<PathBuf> {
        let _ = self.inner.stop.send(true);
        let task = self.inner.periodic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(self.checkpoint().await?.path)
    }
}

/// Checkpoints once per `period` until `stop` turns true or the checkpointer is dropped. A failed
/// checkpoint is logged and tried again at the next period.
async fn periodic(inner: Weak<Inner>, mut ticks: tokio::time::Interval, mut stop: watch::Receiver<bool>) {
    let period = ticks.period();
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticks.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let c = Checkpointer { inner };
        if let Err(e) = c.checkpoint().await {
            eprintln!("warning: shard {}: checkpoint failed (next try in {period:?}): {e:#}", c.shard().id());
        }
    }
}

/// For a process hosting `shards`: restores each from `<workdir>/shards/shard-<id>/` (one line
/// per shard), then starts its checkpointer. Call it before serving.
pub async fn start_hosted(
    shards: &[Arc<Shard>],
    workdir: &Path,
    checkpoint_seconds: f64,
) -> anyhow::Result<Vec<Checkpointer>> {
    let mut started = Vec::with_capacity(shards.len());
    for shard in shards {
        let dir = shard_dir(workdir, shard.id());
        let (restoring, at) = (Arc::clone(shard), dir.clone());
        tokio::task::spawn_blocking(move || restore_and_report(&restoring, &at))
            .await
            .context("restoring a shard panicked")??;
        started.push(Checkpointer::start(Arc::clone(shard), dir, checkpoint_seconds));
    }
    Ok(started)
}

/// Writes the final checkpoint of every shard (see [`Checkpointer::shutdown`]), printing one line
/// each; fails if any failed, after trying them all.
pub async fn shutdown_all(checkpointers: &[Checkpointer]) -> anyhow::Result<()> {
    let mut failed = None;
    for c in checkpointers {
        let id = c.shard().id();
        match c.shutdown().await {
            Ok(path) => eprintln!("shard {id}: final checkpoint {}", path.display()),
            Err(e) => {
                eprintln!("error: shard {id}: final checkpoint failed: {e:#}");
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(()), |e| Err(e.context("writing the final shard checkpoints")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::RateLimiter;
    use crate::shard::{Inserted, PackedWindows};
    use crate::table::{ChunkData, StreamKey, StreamSpec};

    const KEY: StreamKey = StreamKey { actor_id: 7, incarnation: 0xabc, env_index: 2 };

    fn spec(obs_dim: usize) -> StreamSpec {
        StreamSpec { obs_dim, action_dim: 0, has_rewards: false }
    }

    fn chunk(seq: u64, steps: usize, obs_dim: usize) -> ChunkData {
        ChunkData {
            first_seq: seq,
            steps,
            observations: (0..steps * obs_dim).map(|i| (seq as usize * steps * obs_dim + i) as f32).collect(),
            step_types: vec![1; steps],
            actions: vec![],
            rewards: vec![],
        }
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    /// Reverb's users saw sampling hang after a restore (anchors-distributed.md §7). Here the
    /// limiter limits both sides (samples per insert), its counters come back from disk, and a
    /// sample with a short deadline succeeds at once; writers reopen and go on.
    #[tokio::test]
    async fn a_shard_restored_from_disk_samples_at_once_and_takes_inserts() {
        let tmp = tempfile::tempdir().unwrap();
        let limiter = || RateLimiter::new(2.0, 16, -8.0, 64.0).unwrap();
        let shard = Arc::new(Shard::new(1, 1_000, 4, limiter(), 0));
        shard.open(1, KEY, spec(2), 0, 0).unwrap();
        for seq in 0..8 {
            shard.insert(KEY, chunk(seq, 4, 2), Some(soon(1000))).await.unwrap();
        }
        let mut out = PackedWindows::default();
        shard.sample(30, soon(1000), &mut out).await.unwrap();
        let checkpointer = Checkpointer::new(Arc::clone(&shard), shard_dir(tmp.path(), 1));
        let written = checkpointer.checkpoint().await.unwrap();
        assert_eq!((written.stored_steps, written.chunks), (32, 8));
        assert_eq!(shard.stats().counters.checkpoints, 1);
        assert!(shard.stats().counters.last_checkpoint_unix_ms > 0);
        let before = shard.stats();

        let restarted = Shard::new(1, 1_000, 4, limiter(), 0);
        let from = restore_and_report(&restarted, &shard_dir(tmp.path(), 1)).unwrap();
        assert_eq!(from.as_ref(), Some(&written.path));
        let after = restarted.stats();
        assert_eq!(after.limiter, before.limiter);
        assert_eq!((after.size_steps, after.valid_window_starts), (32, 29));
        assert_eq!(after.counters.sampled_windows, before.counters.sampled_windows);
        assert_eq!(after.restored_from, Some(written.path.display().to_string()));
        let mut out = PackedWindows::default();
        restarted.sample(8, soon(100), &mut out).await.expect("sampling does not hang after a restore");
        assert!(!out.is_empty());
        restarted.open(2, KEY, spec(2), 8, 32).unwrap();
        let ack = restarted.insert(KEY, chunk(8, 4, 2), Some(soon(1000))).await.unwrap();
        assert_eq!(ack, Inserted::Stored);
        assert_eq!(restarted.stats().inserted_steps, 36);

        // Nothing to restore: the shard starts empty.
        let fresh = Shard::new(0, 1_000, 4, limiter(), 0);
        assert_eq!(restore_and_report(&fresh, &shard_dir(tmp.path(), 0)).unwrap(), None);
        assert_eq!(fresh.stats().restored_from, None);
        // Another max_size: refused, naming the key.
        let other = Shard::new(1, 2_000, 4, limiter(), 0);
        let err = restore_and_report(&other, &shard_dir(tmp.path(), 1)).unwrap_err();
        assert!(format!("{err:#}").contains("replay.max_size = 1000"), "{err:#}");
    }

    /// Checkpoint requests that overlap run one after the other, each with its own directory.
    #[tokio::test]
    async fn overlapping_requests_write_one_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let shard = Arc::new(Shard::new(0, 1_000, 4, RateLimiter::min_size(4).unwrap(), 0));
        shard.open(1, KEY, spec(1), 0, 0).unwrap();
        shard.insert(KEY, chunk(0, 10, 1), None).await.unwrap();
        let c = Checkpointer::new(Arc::clone(&shard), tmp.path().join("s"));
        let (a, b, d) = tokio::join!(c.checkpoint(), c.checkpoint(), c.checkpoint());
        let mut paths = vec![a.unwrap().path, b.unwrap().path, d.unwrap().path];
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 3, "three checkpoints, three names");
        assert_eq!(shard.stats().counters.checkpoints, 3);
        let complete = CheckpointDir::new(tmp.path().join("s"), KEEP).complete().unwrap();
        assert_eq!(complete, paths[1..].to_vec(), "the newest two are kept");
    }

    /// The period is kept on a paused clock: nothing before it, one checkpoint per period, none
    /// after shutdown but the final one.
    #[tokio::test(start_paused = true)]
    async fn periodic_checkpoints_follow_the_period_and_stop_at_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let shard = Arc::new(Shard::new(0, 1_000, 4, RateLimiter::min_size(4).unwrap(), 0));
        let c = Checkpointer::start(Arc::clone(&shard), tmp.path().join("s"), 60.0);
        let count = || shard.stats().counters.checkpoints;
        // Waits (on the real clock: the write runs on a blocking thread) for `n` checkpoints.
        async fn until(n: u64, count: impl Fn() -> u64) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while count() < n {
                assert!(std::time::Instant::now() < deadline, "no checkpoint {n}");
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(count(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        until(1, count).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        until(2, count).await;
        let last = c.shutdown().await.unwrap();
        assert_eq!(count(), 3, "the final checkpoint");
        assert!(last.join("DONE").is_file());
        // Gives a checkpoint that should not happen every chance to.
        async fn settle() {
            tokio::time::advance(Duration::from_secs(600)).await;
            for _ in 0..50 {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        settle().await;
        assert_eq!(count(), 3, "no periodic checkpoint after shutdown");
        // 0 seconds: only on request.
        let quiet = Checkpointer::start(Arc::clone(&shard), tmp.path().join("q"), 0.0);
        settle().await;
        assert_eq!(count(), 3);
        quiet.checkpoint().await.unwrap();
        assert_eq!(count(), 4);
    }

    /// How long a checkpoint holds the shard's lock (the snapshot) against how long the write
    /// takes, for a table of 250k riab-sized steps (50 floats): printed with `--nocapture`.
    #[tokio::test]
    async fn the_snapshot_holds_the_lock_for_a_small_part_of_the_write() {
        let tmp = tempfile::tempdir().unwrap();
        let shard = Arc::new(Shard::new(0, 250_000, 7, RateLimiter::min_size(7).unwrap(), 0));
        for env in 0..16u32 {
            shard.open(1, StreamKey { env_index: env, ..KEY }, spec(50), 0, 0).unwrap();
        }
        for seq in 0..(250_000 / 64 / 16) as u64 {
            for env in 0..16u32 {
                shard.insert(StreamKey { env_index: env, ..KEY }, chunk(seq, 64, 50), None).await.unwrap();
            }
        }
        let started = Instant::now();
        let snapshot = shard.snapshot();
        let locked = started.elapsed();
        let dir = CheckpointDir::new(tmp.path().join("s"), KEEP);
        let started = Instant::now();
        let written = dir.write(&snapshot, 1).unwrap();
        let write = started.elapsed();
        eprintln!(
            "checkpoint of {} steps in {} chunks ({:.1} MB): snapshot under the lock {:.3} ms, write {:.1} ms",
            written.stored_steps,
            written.chunks,
            written.bytes as f64 / 1e6,
            locked.as_secs_f64() * 1e3,
            write.as_secs_f64() * 1e3
        );
        assert!(locked < write, "the snapshot copies pointers, not data");
    }
}
