//! The δ-model crate.
//!
//! Layout:
//! - [`config`]: the typed `[model]` and `[train]` sections;
//! - [`device`]: one build for CPU and GPU machines: burn's CUDA backend is always compiled in and
//!   chosen at run time only when a CUDA driver is present;
//! - [`eval`]: evaluation of checkpoints: return-distribution metrics, figures, reports;
//! - [`fused`]: the fused CPU engine (hand-written forward/backward, threads), tested against burn;
//! - [`model`]: generator, spectral norm, discriminator;
//! - [`loss`]: kernels, inner and outer MMD, the Bellman target;
//! - [`service`]: the checkpoint store (gRPC) and the evaluator's registry loop;
//! - [`train`]: data, iteration, checkpoints.

pub mod config;
pub mod cuda;
pub mod eval;
pub mod fused;
pub mod loss;
pub mod model;
pub mod service;
pub mod train;
