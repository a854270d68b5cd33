//! The frozen `riab-goal` policy of an experiment: trained once, then cached under the workdir.
//!
//! Training ([`crate::envs::goal::train`]) is single-threaded and draws only from the stream
//! `(seed, "policy")`, with the experiment's observation cells as inputs, so every actor of an
//! experiment derives the same policy. The result is cached at
//! `<workdir>/policies/<hash>.json`, where the hash is FNV-1a-64 of the cache format version, the
//! seed and the canonical JSON of the whole `[env]` config (any change to motion, cells, arena,
//! goal or learning constants trains a new policy). The file is written atomically (a temporary
//! name, then a rename), so concurrent actors at worst both train and write the same bytes; a
//! file that does not parse or does not match the config is reported and retrained.
//!
//! This module does file I/O, so it lives at the top of the crate, outside the pure `envs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::envs::actor_critic::GoalPolicy;
use crate::envs::config::RiabConfig;
use crate::envs::goal::{self, TrainProgress};
use crate::envs::EnvConfig;

/// Version of the cache file's layout (and of the training algorithm: bump it when training
/// changes, so old caches are not reused).
pub const FORMAT_VERSION: u32 = 1;

/// How the policy was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReport {
    /// Training episodes run.
    pub episodes: usize,
    /// Success rate over the last `window` episodes of training.
    pub success_rate: f64,
    pub window: usize,
    /// Whether training met its success criterion (otherwise it ran out of episodes).
    pub converged: bool,
    /// Wall-clock seconds training took (when it ran, possibly in an earlier process).
    pub train_seconds: f64,
    /// The cache file.
    pub path: PathBuf,
    /// Loaded from the cache rather than trained now.
    pub from_cache: bool,
}

impl PolicyReport {
    /// One line for a log: how the policy came to be.
    pub fn summary(&self) -> String {
        let trained = format!(
            "{} {} episodes in {:.1} s, success rate {:.2} over the last {}{}",
            if self.from_cache { "trained" } else { "policy: trained" },
            self.episodes,
            self.train_seconds,
            self.success_rate,
            self.window,
            if self.converged { "" } else { " (stopped at env.goal.policy.max_episodes before the success criterion)" }
        );
        if self.from_cache {
            format!("policy: loaded from cache {} ({trained})", self.path.display())
        } else {
            format!("{trained}; cached at {}", self.path.display())
        }
    }
}

/// What [`load_or_train`] tells its caller while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyEvent<'a> {
    /// No usable cache: training starts; it will be written to `path`.
    Started { path: &'a Path },
    /// Training progress, about once a second.
    Training(&'a TrainProgress),
    /// The cache file exists but cannot be used; it will be replaced.
    InvalidCache { path: &'a Path, reason: String },
}

/// The cache file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheFile {
    format_version: u32,
    seed: u64,
    env_config: RiabConfig,
    episodes: usize,
    success_rate: f64,
    window: usize,
    converged: bool,
    train_seconds: f64,
    policy: GoalPolicy,
}

/// `<workdir>/policies/<hash>.json` for this config and seed.
pub fn cache_path(workdir: &Path, config: &RiabConfig, seed: u64) -> PathBuf {
    let canonical = serde_json::to_string(config).expect("a RiabConfig always serialises");
    let key = format!("dsm riab-goal policy v{FORMAT_VERSION}\nseed {seed}\n{canonical}");
    workdir.join("policies").join(format!("{:016x}.json", common::rng::fnv1a64(key.as_bytes())))
}

/// The policy for `config` (which must have `goal`) under experiment seed `seed`: loaded from the
/// cache if a valid file is there, else trained and cached.
pub fn load_or_train(
    config: &RiabConfig,
    seed: u64,
    workdir: &Path,
    mut progress: impl FnMut(PolicyEvent<'_>),
) -> Result<(Arc<GoalPolicy>, PolicyReport)> {
    let path = cache_path(workdir, config, seed);
    if path.exists() {
        match load(&path, config, seed) {
            Ok(found) => return Ok(found),
            Err(e) => progress(PolicyEvent::InvalidCache { path: &path, reason: format!("{e:#}") }),
        }
    }
    progress(PolicyEvent::Started { path: &path });
    let cells = goal::experiment_cells(config, seed);
    let start = Instant::now();
    let mut last = start;
    let trained = goal::train(config, &cells, &mut goal::policy_rng(seed), |p| {
        if last.elapsed() >= Duration::from_secs(1) {
            progress(PolicyEvent::Training(p));
            last = Instant::now();
        }
    })
    .map_err(|e| anyhow!("training the riab-goal policy: {e}"))?;
    let file = CacheFile {
        format_version: FORMAT_VERSION,
        seed,
        env_config: config.clone(),
        episodes: trained.progress.episodes,
        success_rate: trained.progress.success_rate,
        window: trained.progress.window,
        converged: trained.converged,
        train_seconds: start.elapsed().as_secs_f64(),
        policy: trained.policy,
    };
    write_atomically(&path, &serde_json::to_vec(&file).context("serialising the policy")?)
        .with_context(|| format!("writing the policy cache {}", path.display()))?;
    let report = report_of(&file, path, false);
    Ok((Arc::new(file.policy), report))
}

/// [`load_or_train`] for any env: `None` for an env without a goal.
pub fn for_env(
    config: &EnvConfig,
    seed: u64,
    workdir: &Path,
    progress: impl FnMut(PolicyEvent<'_>),
) -> Result<Option<(Arc<GoalPolicy>, PolicyReport)>> {
    match config {
        EnvConfig::Riab(c) if c.goal.is_some() => load_or_train(c, seed, workdir, progress).map(Some),
        _ => Ok(None),
    }
}

/// Writes an event to stderr, as the command line shows training.
pub fn log_event(event: PolicyEvent<'_>) {
    match event {
        PolicyEvent::Started { path } => {
            eprintln!("training the riab-goal policy (single-threaded; cached at {})", path.display())
        }
        PolicyEvent::Training(p) => eprintln!(
            "  episode {}/{}: success rate {:.2} over the last {}, mean episode {:.1} s",
            p.episodes, p.max_episodes, p.success_rate, p.window, p.mean_episode_s
        ),
        PolicyEvent::InvalidCache { path, reason } => {
            eprintln!("warning: ignoring the policy cache {}: {reason}; training again", path.display())
        }
    }
}

fn report_of(file: &CacheFile, path: PathBuf, from_cache: bool) -> PolicyReport {
    PolicyReport {
        episodes: file.episodes,
        success_rate: file.success_rate,
        window: file.window,
        converged: file.converged,
        train_seconds: file.train_seconds,
        path,
        from_cache,
    }
}

fn load(path: &Path, config: &RiabConfig, seed: u64) -> Result<(Arc<GoalPolicy>, PolicyReport)> {
    let bytes = std::fs::read(path).context("reading")?;
    let file: CacheFile = serde_json::from_slice(&bytes).context("parsing")?;
    if file.format_version != FORMAT_VERSION {
        return Err(anyhow!("format version {} (this build writes {FORMAT_VERSION})", file.format_version));
    }
    if file.seed != seed || &file.env_config != config {
        return Err(anyhow!("it was trained for another seed or env config"));
    }
    let goal = config.goal.as_ref().ok_or_else(|| anyhow!("the env has no goal"))?;
    let n = config.cells.n;
    file.policy.check(n).map_err(|e| anyhow!("{e}"))?;
    let critic: Vec<usize> = std::iter::once(n).chain(goal.policy.critic_hidden.iter().copied()).chain([1]).collect();
    if file.policy.actor.sizes() != [n, goal.policy.actor_hidden, 2] || file.policy.critic.sizes() != critic {
        return Err(anyhow!("its network sizes do not match env.goal.policy"));
    }
    let report = report_of(&file, path.to_path_buf(), true);
    Ok((Arc::new(file.policy), report))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache paths have a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("json.{}.partial", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::EnvId;

    fn small() -> RiabConfig {
        let EnvConfig::Riab(mut c) = EnvConfig::defaults(EnvId::RiabGoal) else { unreachable!() };
        c.cells.n = 9;
        c.goal.as_mut().unwrap().policy.max_episodes = 2;
        c
    }

    #[test]
    fn trains_once_then_loads_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let c = small();
        let (trained, first) = load_or_train(&c, 3, dir.path(), |_| {}).unwrap();
        assert!(!first.from_cache);
        assert_eq!(first.episodes, 2);
        assert!(first.path.starts_with(dir.path().join("policies")));
        let (loaded, second) = load_or_train(&c, 3, dir.path(), |_| {}).unwrap();
        assert!(second.from_cache && second.summary().contains("loaded from cache"));
        assert_eq!(loaded, trained, "bit-identical through the cache");
        // Another seed or another config is another file.
        assert_ne!(cache_path(dir.path(), &c, 4), first.path);
        let mut other = c.clone();
        other.goal.as_mut().unwrap().policy.learning_rate = 0.02;
        assert_ne!(cache_path(dir.path(), &other, 3), first.path);
    }

    #[test]
    fn a_corrupt_cache_is_reported_and_retrained() {
        let dir = tempfile::tempdir().unwrap();
        let c = small();
        let path = cache_path(dir.path(), &c, 5);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"format_version\": 1, \"seed\": ").unwrap();
        let mut warned = vec![];
        let (_, report) = load_or_train(&c, 5, dir.path(), |e| {
            if let PolicyEvent::InvalidCache { reason, .. } = e {
                warned.push(reason);
            }
        })
        .unwrap();
        assert!(!report.from_cache);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("parsing"), "{}", warned[0]);
        assert!(load_or_train(&c, 5, dir.path(), |_| {}).unwrap().1.from_cache, "rewritten");
    }

    #[test]
    fn non_goal_envs_need_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        let c = EnvConfig::defaults(EnvId::RiabRandom);
        assert!(for_env(&c, 0, dir.path(), |_| {}).unwrap().is_none());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");
    }
}
