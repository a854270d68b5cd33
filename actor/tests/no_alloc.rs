//! Stepping allocates nothing: a counting global allocator watches 1,000 steps of E envs after
//! warm-up. (Its own test binary, so no other test allocates concurrently.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use actor::envs::{EnvConfig, EnvId, VecEnv};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn stepping_allocates_nothing() {
    let mut noisy = EnvConfig::defaults(EnvId::RiabWalls);
    if let EnvConfig::Riab(c) = &mut noisy {
        c.cells.noise_std = 0.1;
    }
    let configs = [noisy, EnvConfig::defaults(EnvId::RiabHighTh), EnvConfig::defaults(EnvId::Pendulum)];
    for config in configs {
        let mut env = VecEnv::new(&config, 1, 0, 64);
        let mut frame = env.new_frame();
        for _ in 0..10 {
            env.step(&mut frame);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            env.step(&mut frame);
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{config:?} allocated while stepping");
    }
}
