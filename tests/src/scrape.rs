//! Reading a node's Prometheus text exposition (`GET /metrics`).
//!
//! Invariant: a name matches only itself (`gateway_a` never matches
//! `gateway_a_total`), and comment lines (`# HELP`, `# TYPE`) never count.

use anyhow::{Context, Result};

use crate::Api;

/// The value of the unlabelled sample `name` (`name 3`), if there is one.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of counter or gauge `name`, whatever its labels
/// (0 when the metric was never recorded).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name 3` or `name{labels} 3`, not `name_other 3`.
            let value = if rest.starts_with('{') {
                rest.rsplit_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// The sum of the series of `name` whose labels include `label="value"`.
pub fn metric_labelled(text: &str, name: &str, label: &str, value: &str) -> f64 {
    let want = format!("{label}=\"{value}\"");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, v) = rest.rsplit_once("} ")?;
            labels
                .split(',')
                .any(|kv| kv == want)
                .then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// One metric of a node: the sum of its series in `GET /metrics`.
pub async fn metric(api: &Api, name: &str) -> Result<f64> {
    let text = api.metrics().await.context("reading /metrics")?;
    Ok(metric_sum(&text, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n# TYPE gateway_a_total counter\n\
                        gateway_a_total 3\n\
                        gateway_a_total{op=\"x y\"} 4\n\
                        gateway_a_total_other 100\n\
                        gateway_b 7\n";

    #[test]
    fn metric_sum_adds_series_of_exactly_that_name() {
        assert!((metric_sum(TEXT, "gateway_a_total") - 7.0).abs() < f64::EPSILON);
        assert!((metric_sum(TEXT, "gateway_b") - 7.0).abs() < f64::EPSILON);
        assert!(metric_sum(TEXT, "gateway_c").abs() < f64::EPSILON);
    }

    #[test]
    fn metric_value_reads_only_the_unlabelled_sample() {
        assert_eq!(metric_value(TEXT, "gateway_a_total"), Some(3.0));
        assert_eq!(metric_value(TEXT, "gateway_b"), Some(7.0));
        assert_eq!(metric_value(TEXT, "gateway_a"), None);
    }
}
