//! Training: data, the iteration, checkpoints.
//!
//! - [`dataset`]: windows of H+1 steps from an offline `.npz` written by `actor simulate`, and
//!   the [`dataset::WindowSource`] trait both data sources implement;
//! - [`draws`]: counter-based randomness: every latent, horizon and window of an iteration is a
//!   function of (seed, iteration, phase, purpose, row), shared by every engine;
//! - [`replay_source`]: windows from the live replay store through the coordinator's sampling
//!   client, after checking the coordinator's experiment against the model;
//! - [`publisher`]: checkpoints published to the coordinator's registry in the background;
//! - [`checkpoint`]: checkpoint directories with a DONE marker, newest N kept;
//! - [`retention`]: which checkpoints a publishing learner keeps for evaluators that lag;
//! - [`checkpoint_v2`]: the v2 layout: named `.npy` arrays, state, config, meta, a checksummed manifest;
//! - [`cross_engine`]: the training state moved between the engines (resume on either);
//! - [`engine`]: the engine a run uses (fused by default, burn as the reference), behind one type;
//! - [`trainer`]: the iteration (D step, G step, Polyak) and what a checkpoint holds;
//! - [`metrics`]: the learner's Prometheus metrics;
//! - [`stop`]: SIGTERM and Ctrl-C end a run cleanly, with a checkpoint at its last iteration;
//! - [`run`]: a whole run with resume, progress output and periodic checkpoints, one loop for
//!   both sources.

pub mod checkpoint;
pub mod checkpoint_v2;
pub mod cross_engine;
pub mod dataset;
pub mod draws;
pub mod engine;
pub mod metrics;
pub mod publisher;
pub mod replay_source;
pub mod retention;
pub mod run;
pub mod stop;
pub mod trainer;
