//! The monitoring files in deploy/ name only metrics the code serves: every metric in a Grafana
//! panel's query and in an alert rule is in the README's list, which `tests/up.rs` checks against
//! what the running roles serve. (promtool and docker-compose check the files' syntax and the
//! rules' behaviour in `deploy/check`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's metric names, `<role>` expanded, with the series Prometheus derives from each
/// histogram (`_bucket`, `_sum`, `_count`).
fn listed() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let begin = readme.find("<!-- metrics:begin -->").unwrap();
    let end = readme.find("<!-- metrics:end -->").unwrap();
    let mut names = BTreeSet::new();
    for line in readme[begin..end].lines() {
        let Some(rest) = line.strip_prefix("| `") else { continue };
        let name = &rest[..rest.find('`').unwrap()];
        let histogram = line.contains("| histogram |");
        let expanded: Vec<String> = if name.contains("<role>") {
            common::telemetry::ROLES.iter().map(|r| name.replace("<role>", r)).collect()
        } else {
            vec![name.to_string()]
        };
        for n in expanded {
            if histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{n}{suffix}"));
                }
            }
            names.insert(n);
        }
    }
    names
}

/// Every `dsm_…` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("dsm_") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if before_ok {
            out.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

#[test]
fn every_dashboard_query_names_a_served_metric() {
    let listed = listed();
    let path = root().join("deploy/grafana/dashboards/dsm.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "the dashboard lost panels: {}", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: duplicate panel id");
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{title}: wider than the grid");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no dsm metric");
            for n in names {
                assert!(listed.contains(&n), "{title}: {expr} names {n}, which no role serves");
            }
        }
    }
    // The panels the deployment promises (deploy/README.md).
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in ["Env steps/s per env", "Replay size", "Samples per insert", "Limiter blocked time"] {
        assert!(titles.contains(&want), "no panel {want:?}: {titles:?}");
    }
}

#[test]
fn every_alert_names_served_metrics_and_has_a_unit_test() {
    let listed = listed();
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts_test.yml")).unwrap();
    let mut alerts = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts += 1;
            assert!(tests.contains(&format!("alertname: {name}\n")), "alert {name} has no test in alerts_test.yml");
        }
        if let Some(expr) = line.strip_prefix("expr: ") {
            for n in metric_names(expr) {
                assert!(listed.contains(&n), "alert expression {expr} names {n}, which no role serves");
            }
        }
    }
    assert!(alerts >= 9, "alerts.yml lost alerts: {alerts}");
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names("sum by (le) (rate(dsm_replay_insert_seconds_bucket[5m])) / x_dsm_not"),
        ["dsm_replay_insert_seconds_bucket"]
    );
}
