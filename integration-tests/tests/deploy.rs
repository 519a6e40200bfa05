//! The deployment files agree with the code: every metric the Grafana dashboard and the Prometheus
//! alert rules query is one the services declare, and the files parse.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Metric names the services register (`counter!("name"` and friends), histograms with the series
/// names Prometheus sees.
fn declared() -> BTreeSet<String> {
    let re = regex::Regex::new(r#"(counter|gauge|histogram)!\(\s*"([a-z_]+)""#).unwrap();
    let mut names = BTreeSet::new();
    for dir in [
        "common/src",
        "generator/src",
        "gateway/src",
        "collector/src",
    ] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for c in re.captures_iter(&text) {
                let name = c[2].to_owned();
                if &c[1] == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                names.insert(name);
            }
        }
    }
    names
}

/// Metric-looking identifiers in PromQL: words ending in a Prometheus unit or kind suffix.
fn referenced(promql: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(
        r"\b[a-z][a-z_]*_(total|seconds|seconds_bucket|seconds_sum|seconds_count|state|lag|backend|current)\b",
    )
    .unwrap();
    re.find_iter(promql)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[test]
fn the_dashboard_queries_only_metrics_the_services_export() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/logpipe.json")).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used = referenced(&exprs);
    assert!(
        used.len() >= 10,
        "the dashboard covers the pipeline: {used:?}"
    );
    let declared = declared();
    let unknown: Vec<_> = used.difference(&declared).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses unknown metrics {unknown:?}"
    );
}

#[test]
fn the_alert_rules_query_only_metrics_the_services_export() {
    let rules = read("deploy/prometheus/alerts.yml");
    let exprs: String = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let used = referenced(&exprs);
    for want in [
        "circuit_breaker_state",
        "collector_consumer_lag",
        "collector_dlq_total",
        "gateway_rate_limit_backend",
    ] {
        assert!(used.contains(want), "no alert on {want}");
    }
    let declared = declared();
    let unknown: Vec<_> = used.difference(&declared).collect();
    assert!(
        unknown.is_empty(),
        "alert rules use unknown metrics {unknown:?}"
    );
}

#[test]
fn prometheus_scrapes_every_service_and_loads_the_rules() {
    let config = read("deploy/prometheus/prometheus.yml");
    for job in [
        "job_name: gateway",
        "job_name: generator",
        "job_name: collector",
        "alerts.yml",
    ] {
        assert!(config.contains(job), "prometheus.yml lacks {job}");
    }
}
