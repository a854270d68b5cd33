//! Stepping allocates nothing: a counting global allocator watches 1,000 steps of E envs after
//! warm-up. (Its own test binary, so no other test allocates concurrently.)
//!
//! Only the measuring thread's allocations count: libtest's main thread waits on a channel for
//! the test's result and allocates its waker lazily, at a moment that depends on scheduling. On a
//! loaded 2-core CI machine that moment once fell inside the measured steps and failed the test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use actor::envs::actor_critic::{Actor, Critic, GoalPolicy, Mlp};
use actor::envs::{EnvConfig, EnvId, StepType, VecEnv};
use common::rng;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count (const-initialised, so reading it never allocates).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn stepping_allocates_nothing() {
    COUNTED.with(|c| c.set(true));
    let probe = ALLOCATIONS.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(0u64)));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), probe + 1, "the counter sees this thread's allocations");
    let mut noisy = EnvConfig::defaults(EnvId::RiabWalls);
    if let EnvConfig::Riab(c) = &mut noisy {
        c.cells.noise_std = 0.1;
    }
    let goal = EnvConfig::defaults(EnvId::RiabGoal);
    let configs = [noisy, EnvConfig::defaults(EnvId::RiabHighTh), EnvConfig::defaults(EnvId::Pendulum), goal];
    for config in configs {
        let policy = goal_policy(&config);
        let mut env = VecEnv::new(&config, 1, 0, 64, policy).unwrap();
        let mut frame = env.new_frame();
        for _ in 0..10 {
            env.step(&mut frame);
        }
        let mut episode_ends = 0;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            env.step(&mut frame);
            episode_ends += frame.step_types.iter().filter(|&&t| t == StepType::Last).count();
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{config:?} allocated while stepping");
        if env.has_episodes() {
            assert!(episode_ends > 0, "the measured steps include episode resets");
        }
    }
}

/// An untrained policy of the right shape for `riab-goal`, `None` for other envs. Its agents still
/// wander into the goal now and then, so the measured steps include teleports.
fn goal_policy(config: &EnvConfig) -> Option<Arc<GoalPolicy>> {
    let EnvConfig::Riab(c) = config else { return None };
    c.goal.as_ref()?;
    let mut r = rng::stream(1, &["policy".into()]);
    let n = c.cells.n;
    let actor = Actor::new(Mlp::new(&[n, 50, 2], &mut r), 0.5, 0.1);
    let critic = Critic::new(Mlp::new(&[n, 20, 20, 1], &mut r));
    Some(Arc::new(GoalPolicy::freeze(&actor, &critic)))
}
