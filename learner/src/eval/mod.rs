//! Evaluation of trained checkpoints: what a scientist reads (`dsm-algorithm.md` §4).

pub mod config;
pub mod decoder;
pub mod distribution_metrics;
pub mod evaluate;
pub mod grid;
pub mod model;
pub mod monte_carlo;
pub mod pendulum;
pub mod pendulum_report;
pub mod place_fields;
pub mod report;
pub mod riab_report;
pub mod riab_rollouts;
