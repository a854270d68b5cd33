//! The Pendulum section of a report: for every (reward, source) pair, the δ-model's 51 atom
//! returns against the Monte-Carlo returns of the data policy, by W1, KS and Cramér–von Mises
//! (`dsm-algorithm.md` §4.4), with the arrays and figures they come from.
//!
//! The reference's summary drops statistics exactly equal to 0 (`filter(None, …)`, §4.4); a
//! perfect match is a result, so here every pair counts.

use std::f64::consts::TAU;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use actor::envs::config::PendulumConfig;
use actor::envs::pendulum::PendulumEnv;
use actor::envs::Frame;
use common::npz::NpyArray;
use common::rng;

use super::config::EvalConfig;
use super::distribution_metrics as dm;
use super::model::TrainedModel;
use super::monte_carlo::discounted_returns;
use super::pendulum::{atom_returns, observation, source_name, source_states, PendulumRollout, Reward};
use super::report::{finite, ReportDir};
use figures::{self as plot, CdfPanel};

/// Bumped whenever the Monte-Carlo computation changes, so that stale cache files are not read.
const MC_CACHE_VERSION: u32 = 1;

/// The three statistics of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStats {
    pub wasserstein: f64,
    pub ks: f64,
    pub cvm: f64,
}

impl PairStats {
    pub fn of(predicted: &[f64], mc: &[f64]) -> Result<PairStats> {
        Ok(PairStats {
            wasserstein: dm::wasserstein_distance(predicted, mc).context("W1")?,
            ks: dm::ks_statistic(predicted, mc).context("KS")?,
            cvm: dm::cramervonmises_statistic(predicted, mc).context("Cramér–von Mises")?,
        })
    }
}

/// What the section hands back for the registry and the markdown.
pub struct PendulumSection {
    pub json: Value,
    /// Headline numbers (`w1_mean`, …) for the registry and the metrics.
    pub headline: Vec<(String, f64)>,
    pub markdown: String,
}

/// Monte-Carlo returns of every reward from every source, `[source][reward][rollout]`, computed
/// in parallel over sources (each source has its own random stream, so the result does not depend
/// on the thread count) and cached in `cache_dir` under a key covering the policy and dynamics
/// (the whole env config), the source, the rewards, γ, the horizon, the rollouts and the seed.
pub fn mc_returns(env: &PendulumConfig, gamma: f64, eval: &EvalConfig, cache_dir: &Path) -> Result<Vec<Vec<Vec<f64>>>> {
    let sources = source_states();
    let horizon = env.max_episode_steps as usize;
    let key = |i: usize| -> String {
        let what = json!({
            "version": MC_CACHE_VERSION,
            "env": env,
            "source": [sources[i].0, sources[i].1],
            "rewards": Reward::ALL.iter().map(|r| r.title()).collect::<Vec<_>>(),
            "gamma": gamma,
            "horizon": horizon,
            "rollouts": eval.mc_rollouts,
            "seed": eval.seed,
        });
        let digest = Sha256::digest(what.to_string().as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    };
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let threads = eval.threads().min(sources.len()).max(1);
    let mut out: Vec<Option<Vec<Vec<f64>>>> = vec![None; sources.len()];
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= sources.len() {
                            return Ok(());
                        }
                        let path = cache_dir.join(format!("mc-{}.npy", key(i)));
                        let returns = match read_cached(&path, eval.mc_rollouts) {
                            Some(r) => r,
                            None => {
                                let mut r = rng::stream(eval.seed, &["eval".into(), "mc".into(), (i as u64).into()]);
                                let process = PendulumRollout { config: env };
                                let returns = discounted_returns(
                                    &process,
                                    sources[i],
                                    Reward::ALL.len(),
                                    eval.mc_rollouts,
                                    horizon,
                                    gamma,
                                    &mut r,
                                );
                                write_cached(&path, &returns)?;
                                returns
                            }
                        };
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(returns);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a Monte-Carlo worker panicked")?;
        }
        Ok(())
    })?;
    Ok(out.into_iter().map(|r| r.expect("every source was simulated")).collect())
}

fn read_cached(path: &Path, rollouts: usize) -> Option<Vec<Vec<f64>>> {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let a = NpyArray::read_npy(&mut f).ok()?;
    let data = match &a.data {
        common::npz::NpyData::F64(v) => v,
        _ => return None,
    };
    if a.shape != [Reward::ALL.len(), rollouts] || data.iter().any(|x| !x.is_finite()) {
        eprintln!("warning: {} is not a valid Monte-Carlo cache file; recomputing", path.display());
        return None;
    }
    Some(data.chunks(rollouts).map(<[f64]>::to_vec).collect())
}

fn write_cached(path: &Path, returns: &[Vec<f64>]) -> Result<()> {
    let rollouts = returns.first().map_or(0, Vec::len);
    let a = NpyArray::f64(vec![returns.len(), rollouts], returns.concat());
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    a.write_npy(&mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// States of the data policy's own stream (the dataset's distribution, re-simulated from the
/// experiment seed) as (θ mod 2π, θ̇), for the grey background of the sample figures.
fn background(env: &PendulumConfig, seed: u64, points: usize) -> Vec<[f64; 2]> {
    let envs = 16;
    let mut sim = PendulumEnv::new(env, seed, 0, envs);
    let mut frame = Frame::new(envs, 3, 1, false, true);
    let mut out = Vec::with_capacity(points);
    while out.len() < points {
        sim.step(&mut frame);
        for x in frame.observations.chunks_exact(3) {
            if out.len() < points {
                out.push(angle_rate(x));
            }
        }
    }
    out
}

/// A generated or observed `[cos θ, sin θ, θ̇]` as (θ mod 2π, θ̇).
fn angle_rate(x: &[f32]) -> [f64; 2] {
    let theta = f64::from(x[1]).atan2(f64::from(x[0])).rem_euclid(TAU);
    [theta, f64::from(x[2])]
}

/// Evaluates `model` on the Pendulum sources, writing its arrays and figures under `prefix`
/// (`""`, or `"compare/"` for a second model) in `report`. `mc` comes from [`mc_returns`].
pub fn evaluate(
    model: &TrainedModel,
    env: &PendulumConfig,
    eval: &EvalConfig,
    mc: &[Vec<Vec<f64>>],
    data_seed: u64,
    report: &mut ReportDir,
    prefix: &str,
) -> Result<PendulumSection> {
    let gamma = model.config.model.gamma;
    let atoms = model.atoms();
    let n = eval.samples_per_atom;
    let sources = source_states();
    let back = background(env, data_seed, eval.background_points);
    let mut pairs = Vec::new();
    let mut stats: Vec<PairStats> = Vec::new();
    for (i, &(theta, theta_dot)) in sources.iter().enumerate() {
        let name = source_name(theta, theta_dot);
        let obs = observation(theta, theta_dot).map(|v| v as f32);
        let samples = model.sample(&obs, n, eval.seed, &format!("pendulum-source-{i}"));
        let samples_file = report.array(
            &format!("{prefix}samples/{name}.npy"),
            &NpyArray::f32(vec![atoms, n, 3], samples.clone()),
            "generated states [atom, sample, (cos θ, sin θ, θ̇)] from this source",
        )?;
        let mut panels = Vec::new();
        for (k, reward) in Reward::ALL.into_iter().enumerate() {
            let mut r =
                rng::stream(eval.seed, &["eval".into(), "actions".into(), (i as u64).into(), (k as u64).into()]);
            let predicted = atom_returns(env, &samples, atoms, reward, gamma, &mut r);
            let truth = &mc[i][k];
            let s = PairStats::of(&predicted, truth)
                .with_context(|| format!("{} from {name}: the returns are not finite", reward.title()))?;
            let slug = reward.slug();
            let predicted_file = report.array(
                &format!("{prefix}returns/{slug}/{name}.npy"),
                &NpyArray::f64(vec![atoms], predicted.clone()),
                "the δ-model's return per atom, mean r / (1 − γ)",
            )?;
            let mc_file = report.array(
                &format!("{prefix}mc/{slug}/{name}.npy"),
                &NpyArray::f64(vec![truth.len()], truth.clone()),
                "Monte-Carlo discounted returns of the data policy from this source",
            )?;
            pairs.push(json!({
                "reward": reward.title(),
                "source": { "theta": theta, "theta_dot": theta_dot },
                "wasserstein": finite("wasserstein", s.wasserstein)?,
                "ks": finite("ks", s.ks)?,
                "cvm": finite("cvm", s.cvm)?,
                "predicted_returns": predicted_file,
                "mc_returns": mc_file,
                "samples": samples_file,
            }));
            stats.push(s);
            panels.push(CdfPanel { title: reward.title().to_string(), predicted, reference: truth.clone() });
        }
        let cdf = format!("{prefix}cdf/{name}.png");
        plot::cdf_panels(
            &report.path(&cdf)?,
            &format!("Return CDFs from θ = {theta:.2} rad, dθ/dt = {theta_dot} rad/s (step {})", model.step),
            "discounted return",
            &panels,
        )?;
        report.figure(
            &cdf,
            &format!(
                "θ = {theta:.2}, θ̇ = {theta_dot}: the closer the δ-model's CDF (its {atoms} atoms) follows the \
                 Monte-Carlo CDF in each panel, the better it predicts that reward's return distribution."
            ),
        );
        let per_atom: Vec<Vec<[f64; 2]>> =
            samples.chunks(n * 3).map(|a| a.chunks_exact(3).map(angle_rate).collect()).collect();
        let fig = format!("{prefix}samples/{name}.png");
        plot::state_samples(
            &report.path(&fig)?,
            &format!("Generated states from θ = {theta:.2} rad, dθ/dt = {theta_dot} rad/s (step {})", model.step),
            "θ mod 2π (rad)",
            "dθ/dt (rad/s)",
            &back,
            &per_atom,
            [theta.rem_euclid(TAU), theta_dot],
        )?;
        report.figure(
            &fig,
            &format!(
                "θ = {theta:.2}, θ̇ = {theta_dot}: each colour is one atom's occupancy; atoms should cover the part \
                 of the data (grey) the policy visits from the source (red ×), and differ where the future is uncertain."
            ),
        );
    }
    let summary = |f: fn(&PairStats) -> f64| -> Result<Value> {
        let values: Vec<f64> = stats.iter().map(f).collect();
        let s = dm::summarize(&values).context("no pairs")?;
        Ok(json!({
            "mean": finite("mean", s.mean)?,
            "median": finite("median", s.median)?,
            "min": finite("min", s.min)?,
            "max": finite("max", s.max)?,
        }))
    };
    let w1 = summary(|s| s.wasserstein)?;
    let ks = summary(|s| s.ks)?;
    let cvm = summary(|s| s.cvm)?;
    let get = |v: &Value, k: &str| v[k].as_f64().unwrap_or_default();
    let headline = vec![
        ("w1_mean".to_string(), get(&w1, "mean")),
        ("w1_median".to_string(), get(&w1, "median")),
        ("ks_mean".to_string(), get(&ks, "mean")),
        ("cvm_mean".to_string(), get(&cvm, "mean")),
    ];
    let markdown = format!(
        "| statistic over {} (reward, source) pairs | mean | median | min | max |\n|---|---|---|---|---|\n{}",
        stats.len(),
        [("W1", &w1), ("KS", &ks), ("Cramér–von Mises", &cvm)]
            .iter()
            .map(|(name, v)| format!(
                "| {name} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                get(v, "mean"),
                get(v, "median"),
                get(v, "min"),
                get(v, "max")
            ))
            .collect::<String>()
    );
    let json = json!({
        "sources": sources.iter().map(|(t, d)| json!({ "theta": t, "theta_dot": d })).collect::<Vec<_>>(),
        "rewards": Reward::ALL.iter().map(|r| r.title()).collect::<Vec<_>>(),
        "gamma": gamma,
        "atoms": atoms,
        "samples_per_atom": n,
        "mc_rollouts": eval.mc_rollouts,
        "mc_horizon": env.max_episode_steps,
        "summary": { "wasserstein": w1, "ks": ks, "cvm": cvm },
        "pairs": pairs,
    });
    Ok(PendulumSection { json, headline, markdown })
}
