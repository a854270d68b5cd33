//! `dsm`: the one command that runs the whole pipeline on one machine.
//!
//! `dsm up` starts the real role binaries (`coordinator`, `replay`, `actor`, `learner`,
//! `evaluator`, found beside `dsm`) as processes talking gRPC over loopback, in order, each once
//! the one before answers; shows the run live; and stops it in order.
//!
//! Layout:
//! - [`plan`]: what runs (binaries, arguments, directories, logs, addresses), decided up front;
//! - [`process`]: one role as a child process (its log, its process group, SIGTERM then SIGKILL);
//! - [`probe`]: health, shard stats and the registry over gRPC, with short deadlines;
//! - [`http`]: one HTTP/1.0 GET, for `/metrics` and Prometheus;
//! - [`prom_text`]: reading `/metrics`;
//! - [`prom_api`]: Prometheus's query API;
//! - [`dashboard`]: `dsm dashboard`, the Grafana dashboard's panels drawn from Prometheus;
//! - [`view`]: the live lines or plain log lines;
//! - [`signals`]: Ctrl-C and SIGTERM for `dsm` itself;
//! - [`up`]: the supervisor that ties them together.
//!
//! `dsm` depends on the client side (`client`, `proto`), on `common` and `figures`, never on a role's crate:
//! it talks to the roles only through their processes and their public interfaces.

pub mod dashboard;
pub mod http;
pub mod plan;
pub mod probe;
pub mod process;
pub mod prom_api;
pub mod prom_text;
pub mod signals;
pub mod up;
pub mod view;
