//! The report's distances against values SciPy computed (`fixtures/make_scipy_metrics.py`).

use learner::eval::distribution_metrics::{cramervonmises_statistic, ks_statistic, wasserstein_distance};
use serde_json::Value;

#[test]
fn w1_ks_and_cramer_von_mises_match_scipy() {
    let text = include_str!("fixtures/scipy_metrics.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    for c in cases {
        let (name, u, v) = (c["name"].as_str().unwrap(), floats(&c["u"]), floats(&c["v"]));
        for (metric, ours) in [
            ("wasserstein", wasserstein_distance(&u, &v).unwrap()),
            ("ks", ks_statistic(&u, &v).unwrap()),
            ("cvm", cramervonmises_statistic(&u, &v).unwrap()),
        ] {
            let scipy = c[metric].as_f64().unwrap();
            // Both sides sum the same few hundred terms in f64; only the order differs.
            let tol = 1e-10 * scipy.abs().max(1.0);
            assert!((ours - scipy).abs() <= tol, "{name}: {metric} {ours} but SciPy says {scipy}");
        }
    }
}
