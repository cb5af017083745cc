//! Writing Prometheus text by hand: `# HELP`, `# TYPE` and samples with safe labels, for
//! the parts (Kafka, the scaled-out roles) that render their own metrics at scrape time.

use std::fmt::Write as _;

/// Writes `# HELP` and `# TYPE` for `name` (`kind`: counter or gauge).
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample of `name`; `labels` as `key="value"` pairs, values made safe.
pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
        return;
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", value.replace(['\\', '"', '\n'], "_")))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// A metric with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    sample(out, name, &[], value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_headers_samples_and_safe_labels() {
        let mut out = String::new();
        single(&mut out, "m_total", "counter", "things", 3);
        sample(
            &mut out,
            "m_lag",
            &[("topic", "a\"b\nc"), ("partition", "0")],
            7,
        );
        assert_eq!(
            out,
            "# HELP m_total things\n# TYPE m_total counter\nm_total 3\nm_lag{topic=\"a_b_c\",partition=\"0\"} 7\n"
        );
    }
}
