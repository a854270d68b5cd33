//! The RatInABox report end to end: tiny δ-models and an SR baseline trained for a few
//! iterations on short `riab-random` and `riab-walls` recordings give complete, well-formed
//! reports (every file present, JSON without NaN, PNGs that decode, `.npy` files with the shapes
//! the JSON states).

mod support;

use std::path::{Path, PathBuf};

use actor::envs::{EnvConfig, EnvId};
use actor::simulate::SimulateSpec;
use burn::backend::{Autodiff, NdArray};
use common::npz::NpyArray;
use learner::eval::evaluate;
use learner::train::checkpoint::CheckpointDir;
use learner::train::run::run;
use serde_json::Value;

type B = Autodiff<NdArray>;

/// Small enough that a report takes a second or two.
const EVAL_SETS: [&str; 8] = [
    "eval.mc_rollouts=300",
    "eval.samples_per_atom=64",
    "eval.map_samples_per_atom=4",
    "eval.spread_rollouts=4",
    "eval.si_trajectory_seconds=120",
    "eval.si_shuffles=20",
    "eval.grid_dx=0.1",
    "eval.decoder_dx=0.02",
];

fn sets() -> Vec<String> {
    EVAL_SETS.iter().map(|s| s.to_string()).collect()
}

/// Records `env` and trains a tiny model on it (`extra`: config sets); returns its newest checkpoint.
fn trained(workdir: &Path, env: EnvId, extra: &[&str]) -> PathBuf {
    std::fs::create_dir_all(workdir).unwrap();
    let data = workdir.join("data.npz");
    let spec = SimulateSpec {
        env,
        config: EnvConfig::defaults(env),
        seed: 4,
        actor_id: 0,
        num_envs: 1,
        steps: 200,
        policy: None,
    };
    spec.run(|_| {}).unwrap().write(&data).unwrap();
    run::<B>(support::tiny_doc(2, 2, extra), &data, workdir, Default::default()).unwrap();
    CheckpointDir::open(workdir, 1).unwrap().latest().unwrap().1
}

const SR: [&str; 4] =
    ["model.num_outer=1", "model.distributional=false", "model.inner_separate_discriminator=true", "experiment.seed=4"];

fn check_report(dir: &Path, compare: bool, atoms: usize) -> Value {
    assert!(dir.join("DONE").is_file());
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    // serde_json writes a NaN or an infinity as null (the arrays' descriptions may say "NaN").
    fn no_null(v: &Value, at: &str) {
        match v {
            Value::Null => panic!("report.json: {at} is null"),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| no_null(x, &format!("{at}[{i}]"))),
            Value::Object(o) => o.iter().for_each(|(k, x)| no_null(x, &format!("{at}.{k}"))),
            _ => {}
        }
    }
    no_null(&body, "");
    let arrays = body["arrays"].as_object().unwrap();
    for (file, about) in arrays {
        let mut f = std::io::BufReader::new(std::fs::File::open(dir.join(file)).unwrap());
        let a = NpyArray::read_npy(&mut f).unwrap();
        let shape: Vec<usize> = serde_json::from_value(about["shape"].clone()).unwrap();
        assert_eq!(a.shape, shape, "{file}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for fig in body["figures"].as_array().unwrap() {
        let file = fig["file"].as_str().unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join(file)).unwrap()));
        assert!(decoder.read_info().unwrap().info().width >= 400, "{file}");
        assert!(md.contains(&format!("]({file})")), "report.md links {file}");
    }
    let riab = &body["riab"];
    // 50 cells on a 10 cm grid: 10 × 10 bins.
    let maps = riab["place_cells"]["predicted_maps"].as_str().unwrap();
    assert_eq!(arrays[maps]["shape"], serde_json::json!([50, 10, 10]));
    assert_eq!(riab["place_cells"]["cells"].as_array().unwrap().len(), 50);
    let sources = riab["occupancy"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3, "the default occupancy sources");
    for s in sources {
        for key in ["samples", "mc", "histograms"] {
            assert!(arrays.contains_key(s[key].as_str().unwrap()), "{key} of {s}");
        }
        assert_eq!(arrays[s["samples"].as_str().unwrap()]["shape"], serde_json::json!([atoms, 64, 2]));
        assert_eq!(s["atoms"].as_array().unwrap().len(), atoms);
        let js = s["mixture"]["js_bits"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&js) && s["mixture"]["w1"].as_f64().unwrap() >= 0.0);
    }
    let decoder = &riab["decoder"];
    assert!(decoder["error_mean_m"].as_f64().unwrap() < 0.02, "{decoder}");
    for kind in ["noise", "shift"] {
        let levels = riab["remapping"][kind].as_array().unwrap();
        assert_eq!(levels.len(), 6);
        // The undistorted level is the prediction itself.
        assert!((levels[0]["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{kind}: {}", levels[0]);
        assert_eq!(levels[0]["decoded_error_m"].as_f64().unwrap(), 0.0);
    }
    let fields = &riab["fields"];
    let true_fraction = fields["true"]["significant_fraction"].as_f64().unwrap();
    assert!(true_fraction > 0.5, "true place cells carry spatial information: {fields}");
    assert_eq!(riab["spread"].get("pearson_with_true").is_some(), atoms > 1);
    assert_eq!(body.get("compare").is_some(), compare);
    assert!(body["headline"]["map_cosine_mean"].as_f64().is_some());
    body
}

#[test]
fn tiny_riab_random_dsm_and_sr_checkpoints_give_complete_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dsm = trained(&tmp.path().join("dsm"), EnvId::RiabRandom, &["experiment.seed=4"]);
    let sr = trained(&tmp.path().join("sr"), EnvId::RiabRandom, &SR);
    let out = tmp.path().join("reports");
    let written = evaluate::evaluate(&dsm, Some(&sr), &out, "000000000002", &sets()).unwrap();
    let body = check_report(&written.dir, true, 3);
    assert_eq!(body["env"], "riab-random");
    // The SR baseline's section: one atom, so no spread figure of its own.
    let sr_section = &body["compare"]["riab"];
    assert_eq!(sr_section["occupancy"]["sources"][0]["atoms"].as_array().unwrap().len(), 1);
    let figures: Vec<&str> = body["figures"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    for f in ["place_cells.png", "spread.png", "remapping.png", "compare/place_cells.png", "occupancy/x0.50_y0.50.png"]
    {
        assert!(figures.contains(&f), "{f} in {figures:?}");
    }
    assert!(!figures.contains(&"compare/spread.png"));
    // Reports are reproducible.
    let again = evaluate::evaluate(&dsm, None, &out, "again", &sets()).unwrap();
    assert_eq!(again.headline, written.headline);
}

#[test]
fn a_tiny_riab_walls_checkpoint_gives_a_complete_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dsm = trained(&tmp.path().join("dsm"), EnvId::RiabWalls, &["experiment.seed=4"]);
    let written = evaluate::evaluate(&dsm, None, &tmp.path().join("reports"), "w", &sets()).unwrap();
    let body = check_report(&written.dir, false, 3);
    assert_eq!(body["env"], "riab-walls");
    // The wall shows in the truth: from (0.35, 0.5), 5 cm left of the wall, the Monte-Carlo
    // occupancy stays on the left.
    let dir = &written.dir;
    let mc = body["riab"]["occupancy"]["sources"][0]["mc"].as_str().unwrap();
    let a = NpyArray::read_npy(&mut std::io::BufReader::new(std::fs::File::open(dir.join(mc)).unwrap())).unwrap();
    let NpyArray { data: common::npz::NpyData::F64(xy), .. } = a else { panic!("mc is f64") };
    let right = xy.chunks(2).filter(|p| p[0] > 0.4).count() as f64 / (xy.len() / 2) as f64;
    assert!(right < 0.02, "{right} of the samples crossed the wall");
}
