//! The δ-model crate.
//!
//! Layout:
//! - [`config`]: the typed `[model]` and `[train]` sections;
//! - [`device`]: one build for CPU and GPU machines: burn's CUDA backend is always compiled in and
//!   chosen at run time only when a CUDA driver is present;
//! - [`model`]: generator, spectral norm, discriminator;
//! - [`loss`]: kernels, inner and outer MMD, the Bellman target;
//! - [`train`]: data, iteration, checkpoints.

pub mod config;
pub mod device;
pub mod loss;
pub mod model;
pub mod train;
