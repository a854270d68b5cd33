//! The fused δ-model engine on the CPU: the training iteration with hand-written forward and
//! backward passes on flat buffers, threads over batch rows, no allocation per iteration.
//!
//! - [`matmul`]: row-major products through a run-time-dispatched GEMM crate;
//! - [`pool`]: the fixed worker threads of the parallel regions;
//! - [`kernel`]: kernels with their derivatives, vectorisable (specialised powers, polynomial ln/exp);
//! - [`mmd`]: one batch row's loss (pair blocks, clip, median by selection, outer MMD) and its backward;
//! - [`pair_mmd`]: the losses whose inner MMD² each have their own bandwidth (γ-model / SR, `median`);
//! - [`network`]: the generator (split first layer) and φ with spectral norm, forward and backward;
//! - [`adam`]: Adam and Polyak on flat buffers, operation for operation as burn;
//! - [`collective`]: how replicas sum their gradients (the `Collective` trait; threads on the CPU);
//! - [`engine`]: the iteration of one replica;
//! - [`replicas`]: exact data-parallel replicas (thread groups, summed by a collective);
//! - [`state`]: the training state as named arrays (checkpoint v2), and copies between engines;
//! - `simd`: run-time AVX2 dispatch of the element-wise loops.
//!
//! The burn modules (`model`, `loss`) are the reference this engine is tested against.

pub mod adam;
pub mod collective;
pub mod engine;
pub mod kernel;
pub mod matmul;
pub mod mmd;
pub mod network;
pub mod pair_mmd;
pub mod pool;
pub mod replicas;
mod simd;
pub mod state;
