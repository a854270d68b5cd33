//! The δ-model's loss.
//!
//! - [`kernels`]: the kernels of `dsm/kernels.py`, on squared distances;
//! - [`mmd`]: the inner MMD² (U- and V-statistics), with the self-term reuse, behind the
//!   pair-block contract of ARCHITECTURE.md;
//! - [`outer`]: the outer IMQ MMD with the median-heuristic bandwidth, and the full loss;
//! - [`target`]: the geometric-horizon distributional Bellman target.

pub mod kernels;
pub mod mmd;
pub mod outer;
pub mod target;
