//! Prometheus metrics for every role.
//!
//! Each long-running process calls [`serve_metrics`] once with its `--metrics-addr`; after that the
//! `metrics` macros anywhere in the process (`counter!("dsm_actor_steps_total")`) are scraped at
//! `http://ADDR/metrics`. Names follow `dsm_<role>_<what>_<unit>`, counters end in `_total`, and no
//! per-step value goes into a label ([`check_metric_name`] enforces the shape).
//!
//! The exporter is built without its default push-gateway feature, which would pull in rustls and
//! aws-lc-rs (a slow C build) for nothing we use. Histograms get explicit buckets so Prometheus sees
//! real `_bucket` series rather than the exporter's default summaries.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// Latency buckets (seconds) for every `*_seconds` histogram: 100 µs to 30 s.
pub const SECONDS_BUCKETS: [f64; 12] = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0];

/// Starts the HTTP exporter on `addr` and installs it as the global recorder. Must be called
/// from within a tokio runtime (the listener is a task on it), once per process.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .install()
}

/// Whether `name` follows the project's convention: `dsm_<role>_<what>_<unit>`, lower snake case,
/// with counters ending in `_total`.
pub fn check_metric_name(name: &str, is_counter: bool) -> Result<(), String> {
    const ROLES: [&str; 5] = ["coordinator", "replay", "actor", "learner", "evaluator"];
    let rest = name.strip_prefix("dsm_").ok_or_else(|| format!("metric {name} must start with dsm_"))?;
    if !ROLES.iter().any(|r| rest.starts_with(&format!("{r}_"))) {
        return Err(format!("metric {name} must name its role ({})", ROLES.join(", ")));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("metric {name} must be lower snake case"));
    }
    if is_counter != name.ends_with("_total") {
        return Err(format!("metric {name}: counters, and only counters, end in _total"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn metric_names_follow_the_convention() {
        assert!(check_metric_name("dsm_actor_steps_total", true).is_ok());
        assert!(check_metric_name("dsm_replay_size_steps", false).is_ok());
        assert!(check_metric_name("actor_steps_total", true).is_err());
        assert!(check_metric_name("dsm_actor_steps", true).is_err());
        assert!(check_metric_name("dsm_actor_size_total", false).is_err());
        assert!(check_metric_name("dsm_rat_steps_total", true).is_err());
        assert!(check_metric_name("dsm_actor_Steps_total", true).is_err());
    }

    /// The exporter serves what the `metrics` macros record, with real histogram buckets.
    #[test]
    fn exporter_serves_recorded_metrics() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Find a free port, then hand it to the exporter.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        rt.block_on(async {
            serve_metrics(addr).unwrap();
            metrics::counter!("dsm_actor_steps_total").increment(3);
            metrics::histogram!("dsm_actor_step_seconds").record(0.002);
            let body = tokio::task::spawn_blocking(move || {
                for _ in 0..100 {
                    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                        let mut body = String::new();
                        s.read_to_string(&mut body).unwrap();
                        return body;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                panic!("exporter never listened on {addr}");
            })
            .await
            .unwrap();
            assert!(body.contains("dsm_actor_steps_total 3"), "{body}");
            assert!(body.contains("dsm_actor_step_seconds_bucket{le=\"0.003\"} 1"), "{body}");
        });
    }
}
