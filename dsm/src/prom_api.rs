//! Prometheus's HTTP query API (`/api/v1/query`, `/api/v1/query_range`), as far as `dsm dashboard`
//! and the tests need it: instant vectors and range matrices of float samples.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::http;

/// A series' labels (`__name__` included).
pub type Labels = BTreeMap<String, String>;

/// One series of a range query: its labels and its `[unix seconds, value]` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<[f64; 2]>,
}

/// A Prometheus server.
#[derive(Debug, Clone)]
pub struct PromApi {
    addr: SocketAddr,
    timeout: Duration,
}

impl PromApi {
    /// The server at `address` (`HOST:PORT`, optionally `http://HOST:PORT`).
    pub fn new(address: &str, timeout: Duration) -> Result<PromApi, String> {
        Ok(PromApi { addr: http::resolve(address)?, timeout })
    }

    /// The `data` of a successful API answer; an error carries Prometheus's own message (a
    /// PromQL parse error names the position), or says that the server did not answer.
    fn data(&self, path: &str) -> Result<Value, String> {
        let r = http::get(self.addr, path, self.timeout).map_err(|e| format!("Prometheus at {}: {e}", self.addr))?;
        let doc: Value = serde_json::from_str(&r.body)
            .map_err(|_| format!("Prometheus at {}: HTTP {} with a body that is not JSON", self.addr, r.status))?;
        if doc["status"] != "success" {
            let why = doc["error"].as_str().unwrap_or("no error message");
            return Err(format!(
                "Prometheus at {} ({}): {why}",
                self.addr,
                doc["errorType"].as_str().unwrap_or("error")
            ));
        }
        Ok(doc["data"].clone())
    }

    /// An instant query: each series' labels and value (empty while no series matches).
    pub fn query(&self, expr: &str) -> Result<Vec<(Labels, f64)>, String> {
        let data = self.data(&format!("/api/v1/query?query={}", http::encode(expr)))?;
        let result = data["result"].as_array().ok_or_else(|| format!("{expr}: not a vector"))?;
        result.iter().map(|r| Ok((labels(&r["metric"]), sample(&r["value"]).ok_or_else(|| bad(expr))?[1]))).collect()
    }

    /// A range query from `start` to `end` (unix seconds) every `step` seconds.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: f64) -> Result<Vec<Series>, String> {
        let path =
            format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}", http::encode(expr));
        let data = self.data(&path)?;
        let result = data["result"].as_array().ok_or_else(|| format!("{expr}: not a matrix"))?;
        result
            .iter()
            .map(|r| {
                let values = r["values"].as_array().ok_or_else(|| bad(expr))?;
                let points = values.iter().map(|v| sample(v).ok_or_else(|| bad(expr))).collect::<Result<_, _>>()?;
                Ok(Series { labels: labels(&r["metric"]), points })
            })
            .collect()
    }

    /// The server's clock (unix seconds): where a range that ends "now" ends.
    pub fn now(&self) -> Result<f64, String> {
        let data = self.data(&format!("/api/v1/query?query={}", http::encode("time()")))?;
        sample(&data["result"]).map(|s| s[0]).ok_or_else(|| bad("time()"))
    }

    /// The raw JSON of a GET (e.g. `/api/v1/rules`, `/api/v1/targets`).
    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.data(path)
    }
}

fn bad(expr: &str) -> String {
    format!("{expr}: Prometheus answered a sample that is not [time, \"value\"]")
}

fn labels(metric: &Value) -> Labels {
    metric
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// `[1712345678.123, "0.5"]` → `[time, value]`; Prometheus writes NaN and ±Inf as `"NaN"`,
/// `"+Inf"`, `"-Inf"`, which Rust's float parser reads.
fn sample(v: &Value) -> Option<[f64; 2]> {
    let t = v.get(0)?.as_f64()?;
    let x: f64 = v.get(1)?.as_str()?.parse().ok()?;
    Some([t, x])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_prometheus_floats() {
        let s = |text: &str| sample(&serde_json::from_str(text).unwrap());
        assert_eq!(s(r#"[12.5, "0.25"]"#), Some([12.5, 0.25]));
        assert_eq!(s(r#"[1, "+Inf"]"#), Some([1.0, f64::INFINITY]));
        assert_eq!(s(r#"[1, "-Inf"]"#), Some([1.0, f64::NEG_INFINITY]));
        assert!(s(r#"[1, "NaN"]"#).unwrap()[1].is_nan());
        assert_eq!(s(r#"[1, 0.5]"#), None, "values are strings in the API");
        assert_eq!(s(r#"["x", "1"]"#), None);
    }

    #[test]
    fn labels_read_a_metric_object() {
        let l = labels(&serde_json::json!({"__name__": "up", "job": "learner"}));
        assert_eq!(l["job"], "learner");
        assert_eq!(l.len(), 2);
    }
}
