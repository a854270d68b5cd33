//! Reading what a role serves at `/metrics`: the Prometheus text exposition format, as far as our
//! exporter writes it (`# TYPE` lines, `name{label="value",…} value` samples, no timestamps).
//!
//! `dsm up` reads its live view from here rather than from a private channel into each role, so
//! the view shows exactly what Prometheus would scrape; the metrics test reads the same parse.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape: every sample, and the declared type of every family (`counter`, `gauge`,
/// `histogram`, `summary`).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The sum of every sample named exactly `name` (over all label values), or None if there is
    /// none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            *found.get_or_insert(0.0) += s.value;
        }
        found
    }

    /// The family a sample line belongs to: its name without a histogram's or summary's
    /// `_bucket`/`_sum`/`_count` suffix when the family is declared as one.
    pub fn family_of<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if matches!(self.types.get(base).map(String::as_str), Some("histogram" | "summary")) {
                    return base;
                }
            }
        }
        sample
    }
}

/// Parses an exposition. A malformed line is an error naming it: our own exporter wrote it, so a
/// parse failure is a bug worth seeing, not noise to skip.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                scrape.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        scrape.samples.push(parse_sample(line).ok_or_else(|| format!("malformed metrics line: {line}"))?);
    }
    Ok(scrape)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// `key="value",…}` → the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let end = loop {
            let (i, c) = chars.next()?;
            match (escaped, c) {
                (true, 'n') => (value.push('\n'), escaped = false).1,
                (true, c) => (value.push(c), escaped = false).1,
                (false, '\\') => escaped = true,
                (false, '"') => break eq + 1 + i + 1,
                (false, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end..];
    }
}

/// GETs `http://addr/metrics` with a short deadline. None when the role does not answer: it is
/// starting, or gone.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let response = crate::http::get(addr, "/metrics", timeout).ok()?;
    (response.status == 200).then_some(response.body)
}

/// [`fetch`] and [`parse`].
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Option<Scrape> {
    parse(&fetch(addr, timeout)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE dsm_replay_size_steps gauge\n\
        dsm_replay_size_steps{shard=\"0\"} 120\n\
        dsm_replay_size_steps{shard=\"1\"} 80\n\
        # TYPE dsm_learner_iterations_total counter\n\
        dsm_learner_iterations_total 42\n\
        # TYPE dsm_learner_iteration_seconds histogram\n\
        dsm_learner_iteration_seconds_bucket{le=\"0.01\"} 3\n\
        dsm_learner_iteration_seconds_bucket{le=\"+Inf\"} 4\n\
        dsm_learner_iteration_seconds_sum 0.5\n\
        dsm_learner_iteration_seconds_count 4\n\
        dsm_learner_info{engine=\"fused\",note=\"a \\\"quoted\\\", odd}\"} 1\n\
        dsm_learner_discriminator_loss NaN\n";

    #[test]
    fn parses_what_the_exporter_writes() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.sum("dsm_replay_size_steps"), Some(200.0));
        assert_eq!(s.sum("dsm_learner_iterations_total"), Some(42.0));
        assert_eq!(s.sum("dsm_missing"), None);
        assert!(s.sum("dsm_learner_discriminator_loss").unwrap().is_nan());
        let inf = s.samples.iter().find(|x| x.labels.get("le").map(String::as_str) == Some("+Inf")).unwrap();
        assert_eq!(inf.value, 4.0);
        let info = s.samples.iter().find(|x| x.name == "dsm_learner_info").unwrap();
        assert_eq!(info.labels["note"], "a \"quoted\", odd}");
        assert_eq!(info.labels["engine"], "fused");
        assert_eq!(s.family_of("dsm_learner_iteration_seconds_bucket"), "dsm_learner_iteration_seconds");
        assert_eq!(s.family_of("dsm_learner_iterations_total"), "dsm_learner_iterations_total");
        assert_eq!(s.types["dsm_learner_iteration_seconds"], "histogram");
    }

    #[test]
    fn a_malformed_line_is_named() {
        let e = parse("dsm_x{shard=\"0\" 1\n").unwrap_err();
        assert!(e.contains("dsm_x{shard"), "{e}");
        assert!(parse("dsm_x not-a-number\n").is_err());
    }
}
