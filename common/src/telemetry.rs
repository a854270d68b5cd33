//! Prometheus metrics for every role.
//!
//! Each long-running process calls [`serve_metrics`] once with its `--metrics-addr` and its role;
//! after that the `metrics` macros anywhere in the process (`counter!("dsm_actor_steps_total")`)
//! are scraped at `http://ADDR/metrics`. Names follow `dsm_<role>_<what>_<unit>`, counters end in
//! `_total`, and no per-step value goes into a label ([`check_metric_name`] enforces the shape).
//!
//! Every role also declares its metrics in one table ([`Metric`]) and [`register`]s them at start,
//! so that `/metrics` lists every series from the first scrape (a counter of failures that never
//! happened reads 0 rather than being absent), each with its help text. The README's list of
//! metrics is checked against what the roles serve (`dsm/tests/metrics.rs`).
//!
//! Process figures (resident memory, CPU seconds, threads) are served under the same rule as
//! `dsm_<role>_process_…`, sampled once a second from `/proc/self/stat`: the exporter's standard
//! `process_*` names would carry no role.
//!
//! The exporter is built without its default push-gateway feature, which would pull in rustls and
//! aws-lc-rs (a slow C build) for nothing we use. Histograms get explicit buckets so Prometheus sees
//! real `_bucket` series rather than the exporter's default summaries.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// Latency buckets (seconds) for every `*_seconds` histogram: 100 µs to 30 s.
pub const SECONDS_BUCKETS: [f64; 12] = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0];

/// Starts the HTTP exporter on `addr`, installs it as the global recorder, and starts sampling
/// the process figures of `role` (one of [`ROLES`]). Must be called from within a tokio runtime
/// (the listener is a task on it), once per process.
pub fn serve_metrics(addr: SocketAddr, role: &'static str) -> Result<(), BuildError> {
    assert!(ROLES.contains(&role), "unknown role {role}");
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .install()?;
    start_process_sampler(role);
    Ok(())
}

/// The roles a metric name may start with (`dsm_<role>_…`).
pub const ROLES: [&str; 5] = ["coordinator", "replay", "actor", "learner", "evaluator"];

/// What kind of series a [`Metric`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// With [`SECONDS_BUCKETS`] (every histogram measures seconds).
    Histogram,
}

/// One declared metric: its name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric { name, kind: Kind::Counter, help }
    }
    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric { name, kind: Kind::Gauge, help }
    }
    pub const fn histogram(name: &'static str, help: &'static str) -> Metric {
        Metric { name, kind: Kind::Histogram, help }
    }
}

/// Describes `metrics` and creates each series with `labels` (bounded values only: a shard id,
/// never a step), so that it is served before its first event. Counters start at 0; a gauge is
/// created at 0 unless the role sets it at start; a histogram starts empty.
pub fn register(metrics: &[Metric], labels: &[(&'static str, String)]) {
    for m in metrics {
        register_one(m.name.to_string(), m.kind, m.help, labels);
    }
}

/// [`register`] for one series whose name is built at run time (`dsm_<role>_…` of a shared
/// client).
pub fn register_one(name: String, kind: Kind, help: &'static str, labels: &[(&'static str, String)]) {
    debug_assert!(check_metric_name(&name, kind == Kind::Counter).is_ok(), "{name}");
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    match kind {
        Kind::Counter => {
            metrics::describe_counter!(name.clone(), help);
            metrics::counter!(name, labels).increment(0);
        }
        Kind::Gauge => {
            metrics::describe_gauge!(name.clone(), help);
            metrics::gauge!(name, labels).increment(0.0);
        }
        Kind::Histogram => {
            metrics::describe_histogram!(name.clone(), metrics::Unit::Seconds, help);
            let _ = metrics::histogram!(name, labels);
        }
    }
}

/// The process figures every role serves, as `dsm_<role>_process_<what>`.
pub fn process_metrics(role: &str) -> [(String, Kind); 3] {
    [
        (format!("dsm_{role}_process_resident_memory_bytes"), Kind::Gauge),
        // A gauge that only grows: the exporter's counters hold integers, and CPU time is not one.
        // `rate()` treats it as it would a counter.
        (format!("dsm_{role}_process_cpu_seconds"), Kind::Gauge),
        (format!("dsm_{role}_process_threads"), Kind::Gauge),
    ]
}

/// Samples `/proc/self/stat` once a second into [`process_metrics`] on a thread of its own (a
/// role's runtime may be busy or absent; the learner's training threads must not carry it).
fn start_process_sampler(role: &'static str) {
    let [(rss, _), (cpu, _), (threads, _)] = process_metrics(role);
    metrics::describe_gauge!(rss.clone(), metrics::Unit::Bytes, "resident set size of the process");
    metrics::describe_gauge!(
        cpu.clone(),
        metrics::Unit::Seconds,
        "CPU time of the process, user + system (only grows)"
    );
    metrics::describe_gauge!(threads.clone(), "threads of the process");
    let (rss, cpu, threads) = (metrics::gauge!(rss), metrics::gauge!(cpu), metrics::gauge!(threads));
    let sample = move || {
        if let Some(p) = read_process_stat() {
            rss.set(p.resident_bytes as f64);
            cpu.set(p.cpu_seconds);
            threads.set(p.threads as f64);
        }
    };
    sample();
    let spawned = std::thread::Builder::new().name("metrics-process".into()).spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        sample();
    });
    if let Err(e) = spawned {
        eprintln!("warning: not sampling process metrics: {e}");
    }
}

/// This process's figures, from `/proc/self/stat` (Linux; None elsewhere or on a parse failure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStat {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
}

pub fn read_process_stat() -> Option<ProcessStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf only reads system constants.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    parse_process_stat(&text, ticks.max(1) as f64, page.max(1) as u64)
}

/// proc(5): after the command name in parentheses (which may hold spaces), field 3 is the state;
/// utime and stime (14, 15) are in clock ticks, num_threads is 20 and rss (24) is in pages.
fn parse_process_stat(text: &str, ticks_per_second: f64, page_bytes: u64) -> Option<ProcessStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcessStat {
        resident_bytes: field(24)? * page_bytes,
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_second,
        threads: field(20)?,
    })
}

/// Whether `name` follows the project's convention: `dsm_<role>_<what>_<unit>`, lower snake case,
/// with counters ending in `_total`.
pub fn check_metric_name(name: &str, is_counter: bool) -> Result<(), String> {
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
    fn process_stat_is_read_as_proc5_says() {
        // A command name with spaces and parentheses, as proc(5) allows.
        let line =
            "4242 (my (odd) role) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0 100 123456789 300 18446744073709551615";
        let p = parse_process_stat(line, 100.0, 4096).unwrap();
        assert_eq!(p, ProcessStat { resident_bytes: 300 * 4096, cpu_seconds: 3.0, threads: 7 });
        let me = read_process_stat().expect("/proc/self/stat on Linux");
        assert!(me.resident_bytes > 1 << 20 && me.threads >= 1, "{me:?}");
    }

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
            serve_metrics(addr, "actor").unwrap();
            register(
                &[
                    Metric::counter("dsm_actor_never_total", "a counter never incremented"),
                    Metric::histogram("dsm_actor_never_seconds", "a histogram never recorded"),
                ],
                &[("shard", "3".into())],
            );
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
            // Registered series are served before their first event, with their help text.
            assert!(body.contains("dsm_actor_never_total{shard=\"3\"} 0"), "{body}");
            assert!(body.contains("# HELP dsm_actor_never_total a counter never incremented"), "{body}");
            assert!(body.contains("# TYPE dsm_actor_never_seconds histogram"), "{body}");
            // The process figures, under the role's name.
            assert!(body.contains("dsm_actor_process_resident_memory_bytes "), "{body}");
            assert!(body.contains("dsm_actor_process_cpu_seconds "), "{body}");
        });
    }
}
