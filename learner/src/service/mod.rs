//! The learner crate's gRPC services and their clients: what learners serve to evaluators, and
//! the evaluator's loop against the coordinator's registry. Domain modules (`eval`, `train`,
//! `fused`, …) know nothing of these.

pub mod checkpoint_store;
pub mod evaluator;
