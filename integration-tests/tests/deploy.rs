//! The deployment files and ARCHITECTURE.md agree with the code: every metric the Grafana dashboard
//! and the Prometheus alert rules query is one the services declare, the files parse, and every
//! path and code name ARCHITECTURE.md mentions exists.

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

/// The text of every `.rs` file below `dir` (relative to the root), subfolders included.
/// The text of every file under `dir` (SQL, shell, TOML, YAML, Python), for names outside Rust.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.extension().is_some_and(|x| {
            ["sql", "sh", "toml", "yml", "yaml", "py", "mjs"].contains(&x.to_str().unwrap_or(""))
        }) {
            out.push(std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    out
}

fn rust_sources(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
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
        for text in rust_sources(dir) {
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

/// Every crate of the workspace, by folder.
const CRATES: [&str; 8] = [
    "common",
    "generator",
    "gateway",
    "collector",
    "integration-tests",
    "load-test",
    "storage-bench",
    "fault-suite/report",
];

#[test]
fn architecture_md_names_only_paths_and_code_that_exist() {
    // Prose only: fenced blocks (the diagram) would pair backticks wrongly.
    let doc: String = read("ARCHITECTURE.md")
        .split("```")
        .step_by(2)
        .collect::<Vec<_>>()
        .join("\n");
    let code: String = CRATES.iter().flat_map(|c| rust_sources(c)).collect();
    let ticked = regex::Regex::new(r"`([^`]+)`").unwrap();
    let path = regex::Regex::new(r"^[a-z0-9_./-]+(\.rs|\.sh|\.md|/)$").unwrap();
    let ident = regex::Regex::new(r"^[A-Z][A-Za-z]+(::[a-z_]+)?$|^[a-z_]+\(\)?$").unwrap();
    let crates = CRATES;
    let lower = regex::Regex::new(r"^[a-z][a-z0-9_]*$").unwrap();
    let lower_path = regex::Regex::new(r"^[a-z][a-z0-9_]*(::[a-z][a-z0-9_]*)+$").unwrap();
    // Functions that live outside the Rust sources (SQL, shell).
    let others: String = [
        "collector/migrations",
        "scripts",
        "deploy",
        "integration-tests",
        "fault-suite",
    ]
    .iter()
    .flat_map(|d| files_under(&root().join(d)))
    .collect();
    let mut lowercase = 0;
    let (mut paths, mut names, mut missing) = (0, 0, Vec::new());
    for c in ticked.captures_iter(&doc) {
        let t = &c[1];
        if path.is_match(t) {
            paths += 1;
            // A path is from the root, from a crate, or from a crate's src/.
            let found = root().join(t).exists()
                || crates.iter().any(|k| {
                    root().join(k).join(t).exists() || root().join(k).join("src").join(t).exists()
                });
            if !found {
                missing.push(t.to_owned());
            }
        } else if ident.is_match(t) && t.chars().next().is_some_and(|ch| ch.is_ascii_uppercase()) {
            names += 1;
            // `Type::method`: both parts must be in the code.
            if !t.split("::").all(|part| code.contains(part)) {
                missing.push(t.to_owned());
            }
        } else if let Some(f) = t.strip_suffix("()").filter(|f| lower.is_match(f)) {
            // `function()`: a function of that name is defined (Rust, SQL or shell).
            lowercase += 1;
            if !code.contains(&format!("fn {f}"))
                && !others.contains(&format!("FUNCTION {f}"))
                && !others.contains(&format!("\n{f}() {{"))
            {
                missing.push(t.to_owned());
            }
        } else if lower_path.is_match(t) {
            // `module::item`: the module exists and the item is in the code.
            lowercase += 1;
            let mut parts = t.split("::");
            let module = parts.next().unwrap_or_default();
            let defined = code.contains(&format!("mod {module}"))
                || crates.iter().any(|k| {
                    root()
                        .join(k)
                        .join("src")
                        .join(format!("{module}.rs"))
                        .exists()
                        || root().join(k).join("src").join(module).is_dir()
                })
                || crates.contains(&module)
                || module.starts_with("logpipe_");
            if !defined || !parts.all(|part| code.contains(part)) {
                missing.push(t.to_owned());
            }
        }
    }
    assert!(lowercase >= 3, "{lowercase} lowercase names checked");
    assert!(
        paths >= 10 && names >= 10,
        "{paths} paths, {names} names checked"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what the code does not have: {missing:?}"
    );
}

#[test]
fn compose_publishes_ports_on_loopback_only_and_never_the_generator_or_collector() {
    // Line by line: a service is a key indented by two spaces under `services:`, and every
    // published port is written `ports: ["host:port:port", ...]` on one line.
    let mut service = String::new();
    let mut published = Vec::new();
    for line in read("docker-compose.yml").lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with(' ') {
                service = name.to_owned();
            }
        }
        if let Some(ports) = line.trim().strip_prefix("ports:") {
            for port in ports.trim_matches(|c| " []".contains(c)).split(',') {
                let port = port.trim().trim_matches('"');
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{service} publishes {port} on every host interface"
                );
                published.push(service.clone());
            }
        }
    }
    for internal in ["generator", "collector"] {
        assert!(
            !published.iter().any(|n| n == internal),
            "{internal}'s control API must stay inside the stack's network"
        );
    }
    assert!(published.iter().any(|n| n == "gateway"), "{published:?}");
    published.sort();
    published.dedup();
    assert_eq!(
        published,
        ["gateway", "grafana", "prometheus", "zipkin"],
        "only the gateway and the dashboards publish a port"
    );
}

#[test]
fn compose_keeps_the_workers_and_stores_on_an_internal_network_behind_the_internal_token() {
    let compose = read("docker-compose.yml");
    let mut service = String::new();
    let mut networks = std::collections::BTreeMap::new();
    let mut in_services = false;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_services = line == "services:";
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if in_services && !name.starts_with(' ') {
                service = name.to_owned();
            }
        }
        if let Some(n) = line.trim().strip_prefix("networks:") {
            if in_services && !n.trim().is_empty() {
                networks.insert(service.clone(), n.trim().to_owned());
            }
        }
    }
    for worker in ["collector", "generator", "kafka", "redis", "postgres"] {
        assert_eq!(
            networks.get(worker).map(String::as_str),
            Some("[backend]"),
            "{worker} must sit on the internal network only"
        );
    }
    assert!(
        compose.contains("  backend:\n    internal: true"),
        "the backend network must have no route out"
    );
    assert!(compose.contains("LOGPIPE_INTERNAL_TOKEN: ${LOGPIPE_INTERNAL_TOKEN:?"));
    let prometheus = read("deploy/prometheus/prometheus.yml");
    assert_eq!(
        prometheus.matches("credentials_file").count(),
        2,
        "Prometheus scrapes the collector and the generator with the token"
    );
}

/// Relative links of a Markdown file (`[text](target)`, images included), without anchors.
fn relative_links(text: &str) -> Vec<String> {
    let link = regex::Regex::new(r"!?\[[^\]]*\]\(([^)\s]+)\)").expect("regex");
    link.captures_iter(text)
        .map(|c| c[1].split('#').next().unwrap_or("").to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn the_readme_is_a_front_door_and_every_reference_page_is_one_link_away() {
    let readme = read("README.md");
    assert!(
        readme.lines().count() <= 150,
        "the README is a front door, not the manual ({} lines)",
        readme.lines().count()
    );
    for must in [
        "./setup.sh",
        "./test.sh",
        "http://127.0.0.1:8090/",
        "/api/v1/generator/status",
        "/api/v1/events",
        "## Next steps",
    ] {
        assert!(readme.contains(must), "the README shows {must}");
    }
    let linked: BTreeSet<String> = relative_links(&readme).into_iter().collect();
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        // The storage benchmark's reports are linked from BENCHMARKS.md.
        if name.ends_with(".md") && !name.starts_with("storage-bench-") {
            pages.push(format!("docs/{name}"));
        }
    }
    assert!(pages.len() >= 10, "{pages:?}");
    for page in &pages {
        assert!(linked.contains(page), "the README does not link {page}");
    }
    // Every relative link of the README, the docs and the two design documents resolves.
    let mut files = vec![
        "README.md".to_owned(),
        "ARCHITECTURE.md".to_owned(),
        "BENCHMARKS.md".to_owned(),
    ];
    files.extend(pages);
    for file in files {
        let dir = Path::new(&file)
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        for target in relative_links(&read(&file)) {
            assert!(
                root().join(&dir).join(&target).exists(),
                "{file} links {target}, which does not exist"
            );
        }
    }
}

/// The modules of a crate (`src/a.rs` → `a`, `src/b/mod.rs` → `b`, `src/b/c.rs` → `b::c`) and which
/// of them each one names (`crate::x`, `crate::x::y`, `super::y`), test modules left out.
fn module_graph(krate: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).expect("src dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(base).expect("under src").with_extension("");
                let name = rel.to_string_lossy().replace("/mod", "").replace('/', "::");
                let test_file = name == "tests" || name.ends_with("::tests");
                if name != "lib" && name != "main" && !name.starts_with("bin") && !test_file {
                    let text = std::fs::read_to_string(&p).expect("source");
                    let text = match text.find("#[cfg(test)]\nmod tests") {
                        Some(k) => text[..k].to_owned(),
                        None => text,
                    };
                    out.push((name, text));
                }
            }
        }
    }
    let base = root().join(krate).join("src");
    let mut files = Vec::new();
    walk(&base, &base, &mut files);
    let names: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let crate_ref = regex::Regex::new(r"crate::([a-z_]+)(?:::([a-z_]+))?").expect("regex");
    let super_ref = regex::Regex::new(r"super::([a-z_]+)").expect("regex");
    // `use crate::{a, b::c};`: each item of the group.
    let crate_group = regex::Regex::new(r"crate::\{([^}]*)\}").expect("regex");
    let mut graph = std::collections::BTreeMap::new();
    for (name, text) in &files {
        let mut to = BTreeSet::new();
        for c in crate_ref.captures_iter(text) {
            let nested = c.get(2).map(|m| format!("{}::{}", &c[1], m.as_str()));
            let target = match nested {
                Some(n) if names.contains(&n) => n,
                _ => c[1].to_owned(),
            };
            if names.contains(&target) && &target != name {
                to.insert(target);
            }
        }
        for g in crate_group.captures_iter(text) {
            for item in g[1].split(',') {
                let parts: Vec<&str> = item.trim().split("::").collect();
                let nested = (parts.len() > 1).then(|| format!("{}::{}", parts[0], parts[1]));
                let target = match nested {
                    Some(n) if names.contains(&n) => n,
                    _ => parts[0].to_owned(),
                };
                if names.contains(&target) && &target != name {
                    to.insert(target);
                }
            }
        }
        if let Some((parent, _)) = name.rsplit_once("::") {
            for c in super_ref.captures_iter(text) {
                let sibling = format!("{parent}::{}", &c[1]);
                let target = if names.contains(&sibling) {
                    sibling
                } else {
                    parent.to_owned()
                };
                if &target != name {
                    to.insert(target);
                }
            }
        }
        graph.insert(name.clone(), to);
    }
    graph
}

/// A module that reaches itself through the graph, with the path, if any.
fn a_circle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for start in graph.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    circle.push(next.clone());
                    return Some(circle);
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle() {
    for krate in CRATES {
        let graph = module_graph(krate);
        // The services are read whole (a crate of one file has no graph to speak of).
        if ["common", "generator", "gateway", "collector"].contains(&krate) {
            assert!(graph.len() >= 3, "{krate}: {} modules read", graph.len());
        }
        assert_eq!(a_circle(&graph), None, "{krate} has an import circle");
    }
    // The check finds a circle where there is one.
    let made: std::collections::BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert!(a_circle(&made).is_some());
}
