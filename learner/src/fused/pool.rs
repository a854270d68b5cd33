//! A fixed set of worker threads that run one closure per thread, then wait: the fused engine's
//! parallel regions (a few per iteration) without spawning threads or allocating per region.
//!
//! [`Pool::run`] hands `f` to every worker through a shared slot and two barriers (start, end);
//! the calling thread is worker 0, so a pool of one thread is a plain call. A panic in a worker
//! is caught and re-raised in the caller after the region ends, so the pool never deadlocks.
//!
//! The barriers spin for a short while before they sleep: the regions are a few milliseconds
//! long and follow each other closely, and waking a sleeping thread costs tens of microseconds on
//! a virtual machine (measured on the 2-thread thesis iteration: 214 it/s with `std::sync::Barrier`,
//! 234–243 with this one; two independent 1-thread runs make 121 each). A
//! thread that waits longer (the data source is slow, training is over) sleeps on a condvar.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job of the current region: a borrowed closure with its lifetime erased. It is only read
/// between the start and end barriers of [`Pool::run`], while the borrow is alive.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync` and outlives every use (see `Job`).
unsafe impl Send for Job {}

/// Spins before sleeping: about 0.2–1 ms of `pause`, longer than the skew between threads that
/// finish equal shares, shorter than anything worth burning a core on.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for `n` threads that spins, then sleeps.
pub(crate) struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl SpinBarrier {
    pub(crate) fn new(n: usize) -> SpinBarrier {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    pub(crate) fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // The last to arrive resets the count before it opens the barrier, so a thread that
            // passes and comes back at once counts towards the next generation.
            self.arrived.store(0, Ordering::Relaxed);
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::Release);
            self.wake.notify_all();
            return;
        }
        for _ in 0..SPINS {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation.load(Ordering::Acquire) == generation {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Shared {
    job: Mutex<Option<Job>>,
    start: SpinBarrier,
    end: SpinBarrier,
    stop: AtomicBool,
    panicked: AtomicBool,
}

pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` threads in all (the caller included); at least 1.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            start: SpinBarrier::new(threads),
            end: SpinBarrier::new(threads),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|id| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("fused-{id}"))
                    .spawn(move || loop {
                        shared.start.wait();
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        let job = shared.job.lock().unwrap_or_else(|e| e.into_inner()).expect("a job is set");
                        // SAFETY: `run` keeps the closure borrowed until the end barrier below.
                        let f = unsafe { &*job.0 };
                        if catch_unwind(AssertUnwindSafe(|| f(id))).is_err() {
                            shared.panicked.store(true, Ordering::Release);
                        }
                        shared.end.wait();
                    })
                    .expect("spawning a fused-engine thread")
            })
            .collect();
        Pool { threads, shared, workers }
    }

    /// The number of threads, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(t)` for every t in `0..threads`, each on its own thread, and returns when all have.
    ///
    /// # Panics
    /// If any call panicked.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        // SAFETY (lifetime erasure): the workers dereference the pointer only between the two
        // barriers, and this function does not return before the end barrier.
        let erased: *const (dyn Fn(usize) + Sync + '_) = f;
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(erased)
        });
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        self.shared.start.wait();
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        self.shared.end.wait();
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if mine.is_err() || self.shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a fused-engine thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.start.wait();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_thread_runs_once_per_region() {
        for threads in [1, 3] {
            let pool = Pool::new(threads);
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..100 {
                pool.run(&|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100));
        }
    }

    /// Many short regions back to back: every thread sees every region exactly once (a barrier
    /// that let a fast thread through twice, or lost a wake-up, fails or hangs here).
    #[test]
    fn short_regions_back_to_back_stay_in_step() {
        let pool = Pool::new(4);
        let total = AtomicUsize::new(0);
        for round in 0..2_000 {
            pool.run(&|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(total.load(Ordering::Relaxed), 4 * (round + 1));
        }
        // Regions far apart: the workers have gone to sleep and must be woken.
        std::thread::sleep(std::time::Duration::from_millis(20));
        pool.run(&|_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 8_004);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|t| assert_ne!(t, 1, "boom"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
