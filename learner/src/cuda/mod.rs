//! The CUDA form of the fused engine's kernels.
//!
//! - [`source`]: the kernels' source for one model (a generated header and `kernels/*.cu`);
//! - [`nvrtc`]: compiling it to PTX with NVRTC, which needs no GPU;
//! - [`backend`]: what the engine needs of a device (memory, launches by the kernel table,
//!   row-major products);
//! - [`engine`]: the fused iteration on a device, against any backend.
//!
//! The kernels are written so that the same text also compiles for the host (see
//! `kernels/prelude.cuh`); the tests in `host_tests` run them that way against the CPU fused
//! engine, and compile them to PTX wherever NVRTC is installed (CI installs it).

pub mod backend;
pub mod driver;
pub mod engine;
pub mod gpus;
pub mod nccl;
pub mod nvrtc;
pub mod replicas;
pub mod source;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod host_backend;
#[cfg(test)]
mod host_tests;
