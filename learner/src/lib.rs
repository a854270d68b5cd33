//! The δ-model crate. It grows `model/`, `loss/`, `train/` and `eval/` in later issues; today it
//! holds the compute-device choice every one of them will use.
//!
//! Layout:
//! - [`device`]: one build for CPU and GPU machines: burn's CUDA backend is always compiled in and
//!   chosen at run time only when a CUDA driver is present.

pub mod device;
