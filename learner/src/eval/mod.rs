//! Evaluation of trained checkpoints: what a scientist reads (`dsm-algorithm.md` §4).

pub mod config;
pub mod distribution_metrics;
pub mod evaluate;
pub mod model;
pub mod monte_carlo;
pub mod pendulum;
pub mod pendulum_report;
pub mod plot;
pub mod report;
