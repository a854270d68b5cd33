//! `dsm dashboard`: the Grafana dashboard's panels drawn as PNG files, from the same PromQL
//! queries against a Prometheus server, for where Grafana is not installed (it is not in
//! Debian's packages) and for documentation. These are plotters line charts of each panel's
//! range queries, not Grafana screenshots: same queries, same legends, simpler drawing.
//!
//! The dashboard is read from Grafana's JSON model (`deploy/grafana/dashboards/dsm.json` is built
//! in): its `timeseries` panels, each query's `expr` and `legendFormat`, and the panel's unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::prom_api::PromApi;

/// The dashboard that `deploy/grafana` provisions.
pub const BUILT_IN: &str = include_str!("../../deploy/grafana/dashboards/dsm.json");

/// One query of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub expr: String,
    /// Grafana's legend template: `{{label}}` is replaced by that label's value.
    pub legend: String,
}

/// One time-series panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    /// Grafana's unit id (`short`, `s`, `bytes`, …).
    pub unit: String,
    pub targets: Vec<Target>,
}

/// The dashboard's title and its time-series panels, in order (panels inside rows included).
pub fn parse(json: &str) -> Result<(String, Vec<Panel>)> {
    let doc: Value = serde_json::from_str(json).context("the dashboard is not JSON")?;
    let title = doc["title"].as_str().unwrap_or("dashboard").to_string();
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = doc["panels"].as_array().context("the dashboard has no `panels`")?.iter().collect();
    stack.reverse();
    while let Some(p) = stack.pop() {
        if p["type"] == "row" {
            stack.extend(p["panels"].as_array().into_iter().flatten().rev());
            continue;
        }
        if p["type"] != "timeseries" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("").to_string();
        let targets: Vec<Target> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["hide"] != true)
            .filter_map(|t| {
                let expr = t["expr"].as_str()?.to_string();
                Some(Target { expr, legend: t["legendFormat"].as_str().unwrap_or("").to_string() })
            })
            .collect();
        ensure!(!targets.is_empty(), "panel {title:?} has no query");
        for t in &targets {
            ensure!(!t.expr.contains('$'), "panel {title:?}: {}: dashboard variables are not supported", t.expr);
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("short").to_string();
        panels.push(Panel { title, unit, targets });
    }
    ensure!(!panels.is_empty(), "the dashboard has no time-series panels");
    Ok((title, panels))
}

/// A series' name in the legend: the template with `{{label}}` filled in, as Grafana does; an
/// empty template names the series by its labels.
pub fn legend(template: &str, labels: &BTreeMap<String, String>) -> String {
    if template.is_empty() {
        let inner: Vec<String> =
            labels.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        return format!("{{{}}}", inner.join(", "));
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        out.push_str(labels.get(after[..close].trim()).map(String::as_str).unwrap_or(""));
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// The y axis of a unit, scaled as Grafana would for values up to `max`: its label and the
/// factor values are divided by (seconds become ms or µs, bytes KiB, MiB or GiB).
fn axis(unit: &str, max: f64) -> (&'static str, f64) {
    let pick = |steps: &[(&'static str, f64)]| {
        let fits = steps.iter().rev().find(|(_, f)| max >= *f);
        *fits.unwrap_or(&steps[0])
    };
    match unit {
        "s" => pick(&[("µs", 1e-6), ("ms", 1e-3), ("seconds", 1.0)]),
        "ms" => pick(&[("ms", 1.0), ("seconds", 1e3)]),
        "bytes" => {
            pick(&[("bytes", 1.0), ("KiB", 1024.0), ("MiB", 1024.0 * 1024.0), ("GiB", 1024.0 * 1024.0 * 1024.0)])
        }
        "percentunit" => ("fraction", 1.0),
        _ => ("", 1.0),
    }
}

/// What to draw: the range ends at `end` (unix seconds) and spans `range` seconds.
#[derive(Debug, Clone)]
pub struct Window {
    pub end: f64,
    pub range: f64,
    pub step: f64,
}

/// What was drawn.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The grid of every panel that has data.
    pub overview: Option<PathBuf>,
    /// One file per panel that has data, in dashboard order.
    pub panels: Vec<(String, PathBuf)>,
    /// Panels none of whose queries returned a finite point in the window.
    pub empty: Vec<String>,
}

/// Queries every panel over `window` and writes `out/dashboard.png` and `out/NN-title.png`.
pub fn render(api: &PromApi, title: &str, panels: &[Panel], window: &Window, out: &Path) -> Result<Rendered> {
    ensure!(window.range > 0.0 && window.step > 0.0, "the range and the step must be > 0");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let start = window.end - window.range;
    let mut drawn = Vec::new();
    let mut rendered = Rendered::default();
    for (i, panel) in panels.iter().enumerate() {
        let mut series = Vec::new();
        for target in &panel.targets {
            let result = api
                .query_range(&target.expr, start, window.end, window.step)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("panel {:?}", panel.title))?;
            for s in result {
                let points: Vec<[f64; 2]> = s.points.iter().map(|p| [p[0] - window.end, p[1]]).collect();
                series.push((legend(&target.legend, &s.labels), points));
            }
        }
        let values = || series.iter().flat_map(|(_, p)| p).map(|p| p[1]).filter(|v| v.is_finite());
        let Some(max) = values().map(f64::abs).reduce(f64::max) else {
            rendered.empty.push(panel.title.clone());
            continue;
        };
        let (y_label, scale) = axis(&panel.unit, max);
        for (_, points) in &mut series {
            points.iter_mut().for_each(|p| p[1] /= scale);
        }
        let line = figures::LinePanel {
            title: panel.title.clone(),
            x_label: "seconds before the end".into(),
            y_label: y_label.into(),
            series,
        };
        let path = out.join(format!("{:02}-{}.png", i + 1, slug(&panel.title)));
        figures::line_panels(&path, &panel.title, std::slice::from_ref(&line), (900, 500))?;
        rendered.panels.push((panel.title.clone(), path));
        drawn.push(line);
    }
    if drawn.is_empty() {
        bail!("no panel has data in the last {} s: is Prometheus scraping the roles?", window.range);
    }
    let path = out.join("dashboard.png");
    let heading =
        format!("{title}: the last {} s (drawn from Prometheus by `dsm dashboard`, not Grafana)", window.range);
    figures::line_panels(&path, &heading, &drawn, (600, 400))?;
    rendered.overview = Some(path);
    Ok(rendered)
}

/// A file-name-safe form of a title: lower case, words joined by `-`.
fn slug(title: &str) -> String {
    let words: Vec<String> = title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words.join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dashboard_parses() {
        let (title, panels) = parse(BUILT_IN).unwrap();
        assert_eq!(title, "δ-model experiment");
        assert!(panels.len() >= 12, "{} panels", panels.len());
        let memory = panels.iter().find(|p| p.unit == "bytes").unwrap();
        assert_eq!(memory.targets.len(), 5, "one query per role");
        assert!(panels.iter().all(|p| p.targets.iter().all(|t| t.expr.contains("dsm_"))));
    }

    #[test]
    fn rows_are_opened_and_other_panels_skipped() {
        let json = r#"{"title": "t", "panels": [
            {"type": "text", "title": "notes"},
            {"type": "row", "title": "r", "panels": [
                {"type": "timeseries", "title": "a", "targets": [{"expr": "up", "legendFormat": "{{job}}"}]}]},
            {"type": "timeseries", "title": "b", "fieldConfig": {"defaults": {"unit": "s"}},
             "targets": [{"expr": "x"}, {"expr": "hidden", "hide": true}]}]}"#;
        let (_, panels) = parse(json).unwrap();
        assert_eq!(panels.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(panels[1].unit, "s");
        assert_eq!(panels[1].targets, [Target { expr: "x".into(), legend: String::new() }]);
        assert_eq!(panels[0].unit, "short");
    }

    #[test]
    fn bad_dashboards_are_named() {
        assert!(parse("{").unwrap_err().to_string().contains("not JSON"));
        let e = parse(r#"{"panels": [{"type": "timeseries", "title": "p", "targets": []}]}"#).unwrap_err();
        assert!(e.to_string().contains("\"p\" has no query"), "{e}");
        let e = parse(
            r#"{"panels": [{"type": "timeseries", "title": "p", "targets": [{"expr": "rate(x[$__rate_interval])"}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("variables"), "{e}");
    }

    #[test]
    fn legends_fill_labels_like_grafana() {
        let labels: BTreeMap<String, String> = [("__name__", "up"), ("env", "riab-walls"), ("shard", "1")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(legend("{{env}}", &labels), "riab-walls");
        assert_eq!(legend("shard {{ shard }} of {{env}}", &labels), "shard 1 of riab-walls");
        assert_eq!(legend("{{missing}}x", &labels), "x");
        assert_eq!(legend("open {{env", &labels), "open {{env");
        assert_eq!(legend("", &labels), "{env=\"riab-walls\", shard=\"1\"}");
    }

    #[test]
    fn axes_scale_like_grafana() {
        assert_eq!(axis("s", 0.0001), ("µs", 1e-6));
        assert_eq!(axis("s", 0.02), ("ms", 1e-3));
        assert_eq!(axis("s", 3.0), ("seconds", 1.0));
        assert_eq!(axis("s", 0.0), ("µs", 1e-6));
        assert_eq!(axis("bytes", 60e6), ("MiB", 1048576.0));
        assert_eq!(axis("bytes", 512.0), ("bytes", 1.0));
        assert_eq!(axis("short", 1e9), ("", 1.0));
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("Env steps/s per env"), "env-steps-s-per-env");
        assert_eq!(slug("Insert and sample latency"), "insert-and-sample-latency");
    }
}
