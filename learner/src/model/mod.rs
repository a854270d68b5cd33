//! The networks of a δ-model.
//!
//! - [`init`]: LeCun-normal initialisation truncated to [−2, 2] (burn has no truncated normal);
//! - [`generator`]: O per-atom MLPs over [z ; s], evaluated as one batched op with an atom axis;
//! - [`spectral_norm`]: a dense layer whose kernel is divided by its spectral norm (one power
//!   iteration per call, `u` kept as non-trainable state);
//! - [`discriminator`]: the residual MLP φ with spectral norm on every kernel;
//! - [`separate_discriminator`]: one such φ per (batch slot, atom), the γ-model ensemble's discriminator.

pub mod discriminator;
pub mod generator;
pub mod init;
pub mod separate_discriminator;
pub mod spectral_norm;
