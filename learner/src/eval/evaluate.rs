//! One checkpoint (and optionally a second one beside it) into one report directory.
//!
//! The env the model was trained on is rebuilt from the checkpoint itself: the dataset's `meta`
//! (env id, seed, the full env config, as `actor simulate` or the learner's replay source wrote
//! it), or else the checkpoint's `config.toml` (`[experiment] env` and `[env]`). So the Monte-Carlo
//! ground truth comes from the same dynamics and data policy as the training data. Pendulum
//! checkpoints get the paper's return-distribution report, RatInABox ones the thesis's place-cell
//! analyses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use actor::envs::config::{EnvConfig, EnvId};
use common::config::ConfigDoc;

use super::config::EvalConfig;
use super::model::TrainedModel;
use super::pendulum_report::{self, PendulumSection};
use super::report::ReportDir;
use super::riab_report;

/// Bumped when the layout of `report.json` changes.
pub const REPORT_FORMAT_VERSION: u64 = 1;

/// A written report.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub headline: Vec<(String, f64)>,
    pub seconds: f64,
}

/// The experiment a checkpoint was trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedOn {
    pub env_id: EnvId,
    pub env: EnvConfig,
    /// The seed the data were generated from.
    pub seed: u64,
}

impl TrainedOn {
    pub fn of(model: &TrainedModel) -> Result<TrainedOn> {
        let experiment = model.doc.experiment()?;
        if let Some(meta) = &model.meta {
            if let (Some(id), Some(env)) = (meta.get("env").and_then(Value::as_str), meta.get("env_config")) {
                let env_id: EnvId = id.parse().map_err(|e| anyhow::anyhow!("meta.json: env: {e}"))?;
                let table: toml::Table = toml::Table::try_from(env).context("meta.json: env_config is not a table")?;
                let env = EnvConfig::resolve(env_id, &table).context("meta.json: env_config")?;
                let seed = meta.get("seed").and_then(Value::as_u64).unwrap_or(experiment.seed);
                return Ok(TrainedOn { env_id, env, seed });
            }
        }
        let id = experiment.env.as_deref().with_context(|| {
            format!(
                "{}: the checkpoint names no env (no meta.json with an env, and no [experiment] env in config.toml)",
                model.dir.display()
            )
        })?;
        let env_id: EnvId = id.parse().map_err(|e| anyhow::anyhow!("config.toml: experiment.env: {e}"))?;
        let env = EnvConfig::resolve(env_id, &model.doc.section("env")).context("config.toml: [env]")?;
        Ok(TrainedOn { env_id, env, seed: experiment.seed })
    }
}

/// Whether a report can be made for `model` trained on `on`, with the reason when it cannot: the
/// same answer from every evaluator and every attempt (the model reads states of another size than
/// the env produces).
pub fn compatible(model: &TrainedModel, on: &TrainedOn) -> Result<()> {
    let want = actor::envs::VecEnv::shape_of(&on.env).obs_dim;
    if model.state_dim() != want {
        bail!(
            "{}: its model reads {}-float states, but {} as configured in the checkpoint produces {want}",
            model.dir.display(),
            model.state_dim(),
            on.env_id.as_str()
        );
    }
    Ok(())
}

/// Evaluates the checkpoint in `dir` into `<workdir>/eval/<name>/` (`compare`: a second checkpoint
/// of the same env, evaluated beside it). `sets` are `eval.*` overrides on top of the checkpoint's
/// own `[eval]`. The Monte-Carlo cache lives in `<workdir>/eval/mc-cache/`; `riab-goal`'s policy
/// is read from (or trained into) `<workdir>/policies/`, as the actor does.
pub fn evaluate(dir: &Path, compare: Option<&Path>, workdir: &Path, name: &str, sets: &[String]) -> Result<Written> {
    let started = Instant::now();
    let model = TrainedModel::load(dir)?;
    let on = TrainedOn::of(&model)?;
    compatible(&model, &on)?;
    let other = match compare {
        Some(c) => {
            let m = TrainedModel::load(c).with_context(|| format!("--compare {}", c.display()))?;
            let o = TrainedOn::of(&m)?;
            if o.env != on.env || o.seed != on.seed {
                bail!(
                    "--compare {}: trained on another env ({} with its own config and seed {}) than {} ({}, seed {}): their ground truths differ",
                    c.display(),
                    o.env_id.as_str(),
                    o.seed,
                    dir.display(),
                    on.env_id.as_str(),
                    on.seed
                );
            }
            compatible(&m, &o)?;
            Some(m)
        }
        None => None,
    };
    let mut eval_doc = ConfigDoc::empty();
    eval_doc.set_section("eval", model.doc.section("eval"));
    eval_doc.apply_sets(sets)?;
    let eval = EvalConfig::resolve(&eval_doc)?;
    let root = workdir.join("eval");
    let mut report = ReportDir::begin(&root, name)?;
    let describe = |m: &TrainedModel| json!({ "path": m.dir.display().to_string(), "step": m.step, "model": m.config.model.name() });
    let mut body = json!({
        "format_version": REPORT_FORMAT_VERSION,
        "env": on.env_id.as_str(),
        "checkpoint": describe(&model),
        "config_toml": model.doc.to_toml(),
        "eval": serde_json::to_value(&eval)?,
    });
    let (headline, md) = match &on.env {
        EnvConfig::Pendulum(env) => {
            let cache = root.join("mc-cache");
            let mc = pendulum_report::mc_returns(env, model.config.model.gamma, &eval, &cache)?;
            let main = pendulum_report::evaluate(&model, env, &eval, &mc, on.seed, &mut report, "")?;
            let compared = match &other {
                Some(m) => {
                    let mc = pendulum_report::mc_returns(env, m.config.model.gamma, &eval, &cache)?;
                    Some((m, pendulum_report::evaluate(m, env, &eval, &mc, on.seed, &mut report, "compare/")?))
                }
                None => None,
            };
            body["pendulum"] = main.json.clone();
            if let Some((m, section)) = &compared {
                body["compare"] = json!({ "checkpoint": describe(m), "headline": headline_json(&section.headline), "pendulum": section.json });
            }
            let md = markdown(&model, &main, compared.as_ref().map(|(m, s)| (*m, s)));
            (main.headline, md)
        }
        EnvConfig::Riab(config) => {
            let policy =
                actor::goal_policy::for_env(&on.env, on.seed, workdir, actor::goal_policy::log_event)?.map(|(p, _)| p);
            let world = riab_report::World::build(config, on.seed, policy, &eval)?;
            let mut truths = HashMap::new();
            let main = riab_report::evaluate(&model, &world, &eval, &mut truths, &mut report, "")?;
            let compared = match &other {
                Some(m) => Some((m, riab_report::evaluate(m, &world, &eval, &mut truths, &mut report, "compare/")?)),
                None => None,
            };
            let mut sections = vec![&main];
            sections.extend(compared.as_ref().map(|(_, s)| s));
            riab_report::remapping_figure(&mut report, &sections, model.step)?;
            body["riab"] = main.json.clone();
            if let Some((m, section)) = &compared {
                body["compare"] = json!({ "checkpoint": describe(m), "headline": headline_json(&section.headline), "riab": section.json });
            }
            let md = riab_markdown(&model, on.env_id, &main, compared.as_ref().map(|(m, s)| (*m, s)));
            (main.headline, md)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    body["seconds"] = json!(seconds);
    body["headline"] = headline_json(&headline);
    let markdown = format!("{md}\nEvaluated in {seconds:.1} s.\n\n## Figures\n\n{}", figures_markdown(&report));
    let dir = report.commit(body, &markdown)?;
    Ok(Written { dir, headline, seconds })
}

fn figures_markdown(report: &ReportDir) -> String {
    report.figures().iter().map(|(file, caption)| format!("![{file}]({file})\n\n{caption}\n\n")).collect()
}

fn riab_markdown(
    model: &TrainedModel,
    env: EnvId,
    main: &riab_report::RiabSection,
    compared: Option<(&TrainedModel, &riab_report::RiabSection)>,
) -> String {
    let mut md = format!(
        "# {} place-cell evaluation, step {}\n\n{} from `{}`.\n\n\
         The thesis's analyses (§8.4 of the algorithm spec, §5 of the RatInABox spec): the model's predictions from the \
         true place-cell vector at every position of a grid, read back into space by decoding (the nearest true \
         vector), against the simulator's ground truth for the same env, cells and data policy. Every number is in \
         `report.json`, with the `.npy` files it was computed from.\n\n{}",
        env.as_str(),
        model.step,
        capitalise(&model.config.model.name()),
        model.dir.display(),
        main.markdown
    );
    if let Some((m, s)) = compared {
        md.push_str(&format!(
            "\n## Compared with {} (step {}, `{}`)\n\n{}\nIts figures are under `compare/`; the remapping figure holds both.\n",
            m.config.model.name(),
            m.step,
            m.dir.display(),
            s.markdown
        ));
    }
    md
}

fn markdown(
    model: &TrainedModel,
    main: &PendulumSection,
    compared: Option<(&TrainedModel, &PendulumSection)>,
) -> String {
    let mut md = format!(
        "# Pendulum evaluation, step {}\n\n{} from `{}`.\n\n\
         The δ-model's return distribution (one return per atom) against the Monte-Carlo returns of the \
         data policy, for each reward function and source state of the paper (§4 of the algorithm spec). \
         Lower is better for every statistic; every number is in `report.json`, with the `.npy` files it was \
         computed from.\n\n{}\n",
        model.step,
        capitalise(&model.config.model.name()),
        model.dir.display(),
        main.markdown
    );
    if let Some((m, s)) = compared {
        md.push_str(&format!(
            "\n## Compared with {} (step {}, `{}`)\n\n{}\nIts figures are under `compare/`.\n",
            m.config.model.name(),
            m.step,
            m.dir.display(),
            s.markdown
        ));
    }
    md
}

fn headline_json(headline: &[(String, f64)]) -> Value {
    Value::Object(headline.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}
