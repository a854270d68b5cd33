//! What the tests that run `dsm up` share: the tiny experiment and the evaluation settings that
//! keep its reports to a second or two, and free loopback ports.
#![allow(dead_code)] // each test binary uses its own part

/// Small enough that an iteration takes well under a millisecond and a report a second or two.
pub const TINY: &str = r#"
[experiment]
env = "riab-random"
seed = 3

[env.cells]
n = 12

[model]
num_outer = 3
num_inner = 3
latent_dims = 2
generator_hidden = 8
discriminator_hidden = 8

[train]
batch_size = 4
checkpoint_every = 200
keep_checkpoints = 3
log_every = 200
threads = 1
"#;

pub const EVAL_SETS: [&str; 8] = [
    "eval.mc_rollouts=200",
    "eval.samples_per_atom=32",
    "eval.map_samples_per_atom=2",
    "eval.spread_rollouts=4",
    "eval.si_trajectory_seconds=60",
    "eval.si_shuffles=10",
    "eval.grid_dx=0.1",
    "eval.decoder_dx=0.05",
];

/// A loopback address nobody listens on (yet).
pub fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}
