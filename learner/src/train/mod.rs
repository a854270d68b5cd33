//! Training: data, the iteration, checkpoints.
//!
//! - [`dataset`]: windows of H+1 steps from an offline `.npz` written by `actor simulate`;
//! - [`checkpoint`]: checkpoint directories with a DONE marker, newest N kept;
//! - [`trainer`]: the iteration (D step, G step, Polyak) and what a checkpoint holds;
//! - [`run`]: a whole run with resume, progress output and periodic checkpoints.

pub mod checkpoint;
pub mod dataset;
pub mod run;
pub mod trainer;
