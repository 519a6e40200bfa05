//! The shippers' protocols end to end: real clients (the OpenTelemetry Python SDK's OTLP/HTTP
//! exporter, the official Elasticsearch Python client's bulk helper) send through a gateway with
//! keys to a collector on Postgres, and every record is stored once with its fields mapped. Then
//! what a client does on a bad day: resend the same body, send a broken one, send no key.
//!
//! The clients come from `integration-tests/shippers/requirements.txt`, installed by test.sh into
//! the per-user cache (`LOGPIPE_SHIPPER_PYTHON` names another interpreter).

use std::collections::BTreeMap;
use std::process::Command;

use logpipe_gateway::auth::{sha256, ApiKeyConfig, Scope};
use logpipe_gateway::protocols::otlp::proto::{
    AnyValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, LogRecord, Resource,
    ResourceLogs, ScopeLogs, Status, Value as OtlpValue,
};
use logpipe_integration_tests as it;
use logpipe_integration_tests::stack::TestStack;
use prost::Message;
use serde_json::{json, Value};

const KEY: &str = "shipper-secret";

fn python() -> String {
    std::env::var("LOGPIPE_SHIPPER_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/logpipe/shippers-venv/bin/python")
    })
}

fn node_modules() -> String {
    std::env::var("LOGPIPE_SHIPPER_NODE_MODULES").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/logpipe/shippers-node/node_modules")
    })
}

/// Run a shipper script (Python, or Node.js for `.js`); its stdout, one JSON value per line.
fn ship(script: &str, args: &[&str]) -> Vec<Value> {
    let path = format!("{}/shippers/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = if script.ends_with(".js") {
        let mut c = Command::new("node");
        c.env("NODE_PATH", node_modules());
        c
    } else {
        Command::new(python())
    };
    let out = cmd.arg(&path).args(args).output().unwrap_or_else(|e| {
        panic!(
            "{script} could not run ({e}): install the clients with \
             `source scripts/lib.sh && ensure_shipper_clients`"
        )
    });
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect()
}

async fn keyed_stack(test: &str) -> TestStack {
    keyed_stack_with(test, |_| {}).await
}

/// A stack whose gateway has the shippers' key, its configuration then changed by `tune`.
async fn keyed_stack_with(
    test: &str,
    tune: impl FnOnce(&mut logpipe_gateway::config::GatewayConfig),
) -> TestStack {
    TestStack::collector(test, 2)
        .await
        .with_gateway(|c| {
            shipper_key(c);
            tune(c);
        })
        .await
}

/// The key every shipper here sends, with the ingest scope.
fn shipper_key(c: &mut logpipe_gateway::config::GatewayConfig) {
    c.auth.keys = vec![ApiKeyConfig {
        name: "shipper".into(),
        sha256: sha256(KEY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        scopes: vec![Scope::Ingest],
    }];
}

/// Stored rows of `service`: message → (level, host, component, attributes).
async fn stored(
    stack: &TestStack,
    service: &str,
) -> BTreeMap<String, (String, String, String, Value)> {
    let rows: Vec<(String, String, String, String, Value)> = sqlx::query_as(
        "SELECT message, level, host, component, attributes FROM log_events WHERE service = $1",
    )
    .bind(service)
    .fetch_all(&stack.pool)
    .await
    .expect("query rows");
    rows.into_iter()
        .map(|(m, l, h, c, a)| (m, (l, h, c, a)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opentelemetry_sdk_exporter_ships_every_record_once_with_its_fields_mapped() {
    // The exporter sends to the gateway's second port, as it would to 4318, OTLP/HTTP's own.
    let otlp_port = it::free_port();
    let stack = keyed_stack_with("otlp-sdk", |c| c.otlp_port = Some(otlp_port)).await;
    let run = stack.name.replace('_', "-");
    let count = 2_000;
    let endpoint = format!("http://127.0.0.1:{otlp_port}/v1/logs");
    let out = ship("otlp_sdk.py", &[&endpoint, KEY, &run, &count.to_string()]);
    assert_eq!(out.last(), Some(&json!({"done": true})), "the SDK flushed");
    stack.wait_rows(count).await;
    let rows = stored(&stack, &format!("otlp-{run}")).await;
    assert_eq!(rows.len(), count as usize, "each message once");
    for sent in &out[..out.len() - 1] {
        let message = sent["message"].as_str().expect("message");
        let (level, host, component, attrs) = rows
            .get(message)
            .unwrap_or_else(|| panic!("{message:?} was not stored"));
        assert_eq!(Some(level.as_str()), sent["level"].as_str(), "{message}");
        assert_eq!(host, "shipper-host");
        assert_eq!(
            component,
            &format!("shipper.{run}"),
            "the logger is the scope"
        );
        assert_eq!(attrs["seq"], sent["seq"], "{attrs}");
        assert_eq!(attrs["run"], json!(run));
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elasticsearch_client_bulk_ships_every_document_once_and_hears_of_the_refused_one() {
    let stack = keyed_stack("es-bulk").await;
    let run = stack.name.replace('_', "-");
    let count = 1_000;
    let stamp = chrono::Utc::now().to_rfc3339();
    let out = ship(
        "es_bulk.py",
        &[&stack.gw(""), KEY, &run, &count.to_string(), &stamp],
    );
    let report = &out[0];
    assert_eq!(
        report["version"],
        json!(logpipe_gateway::protocols::elastic::VERSION)
    );
    let sent = report["sent"].as_array().expect("sent");
    assert_eq!(report["ok"], json!(sent.len()));
    // One in every hundred has a timestamp that is not a date: refused in its own item, alone.
    let refused = report["errors"].as_array().expect("errors");
    assert_eq!(refused.len(), count as usize / 100, "{refused:?}");
    for r in refused {
        assert_eq!(r["status"], 400);
        assert_eq!(r["type"], "document_parsing_exception");
    }
    stack.wait_rows(sent.len() as i64).await;
    let rows = stored(&stack, &format!("es-{run}")).await;
    assert_eq!(rows.len(), sent.len());
    for doc in sent {
        let message = doc["message"].as_str().expect("message");
        let (level, host, component, attrs) = rows
            .get(message)
            .unwrap_or_else(|| panic!("{message:?} was not stored"));
        assert_eq!(Some(level.as_str()), doc["level"].as_str());
        assert_eq!(
            (host.as_str(), component.as_str()),
            ("shipper-host", "es-shipper")
        );
        assert_eq!(
            attrs["labels"]["seq"], doc["seq"],
            "the rest stays: {attrs}"
        );
    }
    // The same documents again (the client's retry after a lost answer): their `_id`s make them
    // the same events, so nothing is stored twice.
    let again = ship(
        "es_bulk.py",
        &[&stack.gw(""), KEY, &run, &count.to_string(), &stamp],
    );
    assert_eq!(again[0]["ok"], json!(sent.len()));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    stack.wait_rows(sent.len() as i64).await;
    stack.stop().await;
}

/// winston-loki, in both its encodings, through Basic auth: every line stored once, labels mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_client_ships_every_line_once_in_protobuf_and_in_json() {
    let stack = keyed_stack("loki-winston").await;
    let mut total = 0;
    for (mode, count) in [("--protobuf", 1_500), ("--json", 500)] {
        let run = format!("{}{mode}", stack.name.replace('_', "-"));
        let out = ship(
            "loki_winston.js",
            &[&stack.gw(""), KEY, &run, &count.to_string(), mode],
        );
        assert_eq!(
            out.last().map(|d| &d["done"]),
            Some(&json!(true)),
            "{:?}",
            out.last()
        );
        total += count;
        stack.wait_rows(total).await;
        let rows = stored(&stack, &format!("loki-{run}")).await;
        assert_eq!(rows.len(), count as usize, "{mode}: each line once");
        for sent in &out[..out.len() - 1] {
            let message = sent["message"].as_str().expect("message");
            let (level, host, _, _) = rows
                .get(message)
                .unwrap_or_else(|| panic!("{mode}: {message:?} was not stored"));
            assert_eq!(Some(level.as_str()), sent["level"].as_str(), "{message}");
            assert_eq!(host, "shipper-host");
        }
    }
    stack.stop().await;
}

/// A relay test's run folder (its config's state, pid and log) and the program name its lines
/// carry, both named after the test's stack so parallel tests do not meet.
fn relay_run(stack: &TestStack, prefix: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(&stack.name);
    std::fs::create_dir_all(&dir).expect("run dir");
    let program = format!("{prefix}-{}", &stack.name[stack.name.len() - 8..]);
    (dir, program)
}

/// syslog-ng (Debian's) running `deploy/shippers/{config}` as it is, with `env`, relaying what it
/// gets on a free port, which it returns with the process.
fn syslog_ng(
    config: &str,
    env: &[(&str, String)],
    dir: &std::path::Path,
) -> (std::process::Child, u16) {
    let port = it::free_port();
    let config = format!("{}/../deploy/shippers/{config}", env!("CARGO_MANIFEST_DIR"));
    let log = std::fs::File::create(dir.join("syslog-ng.log")).expect("log file");
    let mut cmd = Command::new("syslog-ng");
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("SYSLOG_PORT", port.to_string())
        .args(["-F", "-e", "--no-caps", "-f", &config])
        .arg("-R")
        .arg(dir.join("persist"))
        .arg("-p")
        .arg(dir.join("pid"))
        .arg("-c")
        .arg(dir.join("ctl"))
        .stderr(log.try_clone().expect("log"))
        .stdout(log);
    (it::spawn_listening(&mut cmd, port), port)
}

/// syslog-ng's `elasticsearch-http()` destination with its default template, configured by
/// deploy/shippers/syslog-ng.conf as users get it, fed RFC 5424 lines over TCP: every line stored
/// once with its program, severity and host mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ngs_elasticsearch_destination_ships_every_line_once_with_its_defaults() {
    let stack = keyed_stack("syslog-ng-es").await;
    let (dir, program) = relay_run(&stack, "app");
    let (daemon, port) = syslog_ng(
        "syslog-ng.conf",
        &[
            ("LOGPIPE_BULK_URL", stack.gw("/_bulk")),
            ("LOGPIPE_KEY", KEY.into()),
        ],
        &dir,
    );
    relay_and_check(stack, daemon, port, &program, &dir, Some("PID")).await;
}

/// syslog-ng's generic `http()` destination with the JSON template of
/// deploy/shippers/syslog-ng-http.conf, into `POST /api/v1/logs`, across a restart of the gateway:
/// every line stored once with its level (syslog's names), host and pid. The template's event_id
/// is syslog-ng's `${UNIQID}`, so a batch it resends is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ngs_http_destination_ships_every_line_once_across_a_gateway_restart() {
    let gateway_port = it::free_port();
    let stack = keyed_stack_with("syslog-ng-http", |c| c.port = gateway_port).await;
    let (dir, program) = relay_run(&stack, "sh");
    let (daemon, port) = syslog_ng(
        "syslog-ng-http.conf",
        &[
            ("LOGPIPE_LOGS_URL", stack.gw("/api/v1/logs")),
            ("LOGPIPE_KEY", KEY.into()),
        ],
        &dir,
    );
    across_a_gateway_restart(
        stack,
        gateway_port,
        daemon,
        port,
        &program,
        &dir,
        Some("pid"),
    )
    .await;
}

/// Write the lines numbered `seqs` as RFC 5424 over TCP, newline-framed, from host `web-7` and app `program`,
/// with special characters and five severities; message → the level logpipe must store.
fn feed_rfc5424(
    port: u16,
    program: &str,
    seqs: std::ops::Range<usize>,
) -> BTreeMap<String, &'static str> {
    use std::io::Write;
    let severities = [
        (3, "ERROR"),
        (4, "WARN"),
        (6, "INFO"),
        (7, "DEBUG"),
        (2, "FATAL"),
    ];
    let mut expected = BTreeMap::new();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for seq in seqs {
        let (severity, level) = severities[seq % severities.len()];
        let message = format!("line {seq} \"quoted\" back\\slash ünïcødé ✓ <b>&amp;</b> {{brace}}");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        writeln!(
            conn,
            "<{}>1 {now} web-7 {program} 42 - - {message}",
            8 + severity
        )
        .expect("write a line");
        expected.insert(message, level);
    }
    conn.flush().expect("flush");
    expected
}

/// Feed 1,000 lines to a relay listening on `port`, wait for them, stop the relay, check every
/// line stored once, and clean up.
async fn relay_and_check(
    stack: TestStack,
    mut daemon: std::process::Child,
    port: u16,
    program: &str,
    dir: &std::path::Path,
    pid: Option<&str>,
) {
    let expected = feed_rfc5424(port, program, 0..1_000);
    stack.wait_rows(expected.len() as i64).await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    check_relayed(&stack, program, &expected, pid).await;
    let _ = std::fs::remove_dir_all(dir);
    stack.stop().await;
}

/// Every line relayed stored once, with its level, host (and, when the relay sends it, its pid
/// in the attribute `pid`).
async fn check_relayed(
    stack: &TestStack,
    program: &str,
    expected: &BTreeMap<String, &'static str>,
    pid: Option<&str>,
) {
    let rows = stored(stack, program).await;
    assert_eq!(rows.len(), expected.len(), "each line stored");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM log_events WHERE service = $1")
        .bind(program)
        .fetch_one(&stack.pool)
        .await
        .expect("count rows");
    assert_eq!(count, expected.len() as i64, "each line once, none twice");
    for (message, level) in expected {
        let (stored_level, host, _, attrs) = rows
            .get(message)
            .unwrap_or_else(|| panic!("{message:?} was not stored"));
        assert_eq!(stored_level, level, "{message}");
        assert_eq!(host, "web-7");
        if let Some(pid) = pid {
            assert_eq!(attrs[pid], "42", "{attrs}");
        }
    }
}

/// rsyslogd (unpacked from Debian's packages into the per-user cache) running
/// `deploy/shippers/{config}` as it is, with `env`, relaying what it gets on a free port, which
/// it returns with the process.
fn rsyslogd(
    config: &str,
    env: &[(&str, String)],
    dir: &std::path::Path,
) -> (std::process::Child, u16) {
    let rsyslog = std::env::var("LOGPIPE_RSYSLOG_ROOT").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/logpipe/rsyslog")
    });
    let port = it::free_port();
    let config = format!("{}/../deploy/shippers/{config}", env!("CARGO_MANIFEST_DIR"));
    let log = std::fs::File::create(dir.join("rsyslog.log")).expect("log file");
    let mut cmd = Command::new(format!("{rsyslog}/usr/sbin/rsyslogd"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("SYSLOG_PORT", port.to_string())
        .args(["-n", "-M"])
        .arg(format!("{rsyslog}/usr/lib/x86_64-linux-gnu/rsyslog"))
        .args(["-f", &config, "-i"])
        .arg(dir.join("pid"))
        .stderr(log.try_clone().expect("log"))
        .stdout(log);
    (it::spawn_listening(&mut cmd, port), port)
}

/// rsyslog's omelasticsearch with the ECS template of deploy/shippers/rsyslog.conf, run as it is:
/// every line stored once with its program, severity and host mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslogs_elasticsearch_action_ships_every_line_once() {
    let stack = keyed_stack("rsyslog-es").await;
    let (dir, program) = relay_run(&stack, "rs");
    let gateway = stack.gw("");
    let gateway_port = gateway
        .rsplit(':')
        .next()
        .expect("a port")
        .trim_end_matches('/')
        .to_owned();
    let (daemon, port) = rsyslogd(
        "rsyslog.conf",
        &[
            ("LOGPIPE_ES_HOST", "127.0.0.1".into()),
            ("LOGPIPE_ES_PORT", gateway_port),
            ("LOGPIPE_KEY", KEY.into()),
        ],
        &dir,
    );
    relay_and_check(stack, daemon, port, &program, &dir, None).await;
}

/// rsyslog's omelasticsearch (deploy/shippers/rsyslog.conf as it is) across a restart of the
/// gateway: lines sent before, during and after the gateway is away are each stored once. rsyslog
/// holds what it could not send and resends the batch it got no answer for; a resent body gives
/// the same ids, so the collector stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_ships_every_line_once_across_a_gateway_restart() {
    let gateway_port = it::free_port();
    let stack = keyed_stack_with("rsyslog-restart", |c| c.port = gateway_port).await;
    let (dir, program) = relay_run(&stack, "rr");
    let (daemon, port) = rsyslogd(
        "rsyslog.conf",
        &[
            ("LOGPIPE_ES_HOST", "127.0.0.1".into()),
            ("LOGPIPE_ES_PORT", gateway_port.to_string()),
            ("LOGPIPE_KEY", KEY.into()),
        ],
        &dir,
    );
    across_a_gateway_restart(stack, gateway_port, daemon, port, &program, &dir, None).await;
}

/// Feed a relay listening on `port` 1,000 lines, stop the gateway (on `gateway_port`) while they
/// may still be on their way, feed 1,000 more while it is away, start it again, feed 1,000 more:
/// each of the 3,000 is stored once. Then stop the relay and clean up.
async fn across_a_gateway_restart(
    mut stack: TestStack,
    gateway_port: u16,
    mut daemon: std::process::Child,
    port: u16,
    program: &str,
    dir: &std::path::Path,
    pid: Option<&str>,
) {
    let mut expected = feed_rfc5424(port, program, 0..1_000);
    stack.gateway.take().expect("a gateway").stop().await;
    expected.extend(feed_rfc5424(port, program, 1_000..2_000));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut config = it::gateway_config(&stack.name);
    config.kafka = stack.kafka.clone();
    config.collector_url = stack.collector.url("");
    config.port = gateway_port;
    shipper_key(&mut config);
    stack.gateway = Some(it::start_gateway(config).await);
    expected.extend(feed_rfc5424(port, program, 2_000..3_000));
    stack.wait_rows(expected.len() as i64).await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    check_relayed(&stack, program, &expected, pid).await;
    let _ = std::fs::remove_dir_all(dir);
    stack.stop().await;
}

/// rsyslog's omfwd over TCP, octet-counted RFC 5424 (deploy/shippers/rsyslog-omfwd.conf as it is)
/// into the gateway's syslog listener: every line stored once with its program, severity and host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslogs_omfwd_over_tcp_ships_every_line_once_to_the_syslog_listener() {
    let listener = it::free_port();
    let stack = TestStack::collector("rsyslog-omfwd", 2)
        .await
        .with_gateway(|c| c.syslog.tcp_addr = Some(format!("127.0.0.1:{listener}")))
        .await;
    let (dir, program) = relay_run(&stack, "fwd");
    let (daemon, port) = rsyslogd(
        "rsyslog-omfwd.conf",
        &[
            ("LOGPIPE_SYSLOG_HOST", "127.0.0.1".into()),
            ("LOGPIPE_SYSLOG_PORT", listener.to_string()),
        ],
        &dir,
    );
    relay_and_check(stack, daemon, port, &program, &dir, None).await;
}

fn otlp_body(service: &str, n: usize) -> Vec<u8> {
    let s = |v: &str| {
        Some(AnyValue {
            value: Some(OtlpValue::String(v.into())),
        })
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("in range") as u64;
    let records = (0..n)
        .map(|i| LogRecord {
            time_unix_nano: now + i as u64,
            severity_number: if i == 0 { 21 } else { 9 },
            body: s(&format!("record {i}")),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: s(service),
                }],
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope::default()),
                log_records: records,
            }],
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_body_is_stored_once_and_a_refusal_comes_in_the_protocols_own_shape() {
    let stack = keyed_stack("otlp-resend").await;
    let client = &stack.client;
    let otlp = otlp_body("resend", 50);
    for _ in 0..2 {
        let resp = it::send(
            client
                .post(stack.gw("/v1/logs"))
                .bearer_auth(KEY)
                .header("content-type", "application/x-protobuf")
                .body(otlp.clone()),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    }
    // Stable ids need stable timestamps: a document without one takes its arrival time, so
    // the resend of such a document would be a new event (docs/protocols.md).
    let at = chrono::Utc::now().to_rfc3339();
    let bulk = (0..30)
        .map(|i| format!("{{\"create\":{{}}}}\n{{\"@timestamp\":\"{at}\",\"message\":\"bulk {i}\",\"service.name\":\"resend\"}}\n"))
        .collect::<String>();
    for _ in 0..2 {
        let (status, answer) = it::call(
            client
                .post(stack.gw("/logs-x/_bulk"))
                .basic_auth("elastic", Some(KEY))
                .header("content-type", "application/x-ndjson")
                .body(bulk.clone()),
        )
        .await;
        assert_eq!(
            (status, &answer["errors"]),
            (200, &json!(false)),
            "{answer}"
        );
    }
    stack.wait_rows(80).await;

    // No key: a `google.rpc.Status` for OTLP (code 16, UNAUTHENTICATED), Elasticsearch's error
    // object for bulk, each with its status and the product header Elasticsearch clients check.
    let resp = it::send(
        client
            .post(stack.gw("/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(otlp.clone()),
    )
    .await;
    assert_eq!(resp.status(), 401);
    let status = Status::decode(resp.bytes().await.expect("body")).expect("a Status");
    assert_eq!(status.code, 16);
    let resp = it::send(client.post(stack.gw("/_bulk")).body(bulk.clone())).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "security_exception");
    assert_eq!(body["status"], 401);

    // A bulk body whose action and source lines disagree is refused whole: nothing stored.
    let broken =
        "{\"index\":{}}\n{\"message\":\"orphan\"}\n{\"message\":\"no action\"}\n{\"index\":{}}\n";
    let (status, answer) = it::call(
        client
            .post(stack.gw("/_bulk"))
            .bearer_auth(KEY)
            .body(broken),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("line [3]")),
        "{answer}"
    );
    // An OTLP body that is not one: 400, not retried by the exporter.
    let resp = it::send(
        client
            .post(stack.gw("/v1/logs"))
            .bearer_auth(KEY)
            .header("content-type", "application/x-protobuf")
            .body(otlp[..otlp.len() - 5].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), 400);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stack.wait_rows(80).await;
    stack.stop().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

/// Hostile bodies on each decoder, each with its precise status, and afterwards only what was
/// acknowledged is stored, all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_protocol_bodies_get_precise_refusals_and_only_acknowledged_events_are_stored() {
    let stack = keyed_stack("proto-hostile").await;
    let client = &stack.client;
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        client
            .post(stack.gw(path))
            .bearer_auth(KEY)
            .header("content-type", ct)
            .body(body)
    };
    let pb = "application/x-protobuf";
    let good = otlp_body("hostile", 10);
    // 20,000 empty records: the repeated field is cheap to send, and over `max_events`.
    let mut many = ExportLogsServiceRequest::decode(&good[..]).expect("decodes");
    many.resource_logs[0].scope_logs[0].log_records = vec![LogRecord::default(); 20_000];
    // 64 MiB of zeros, 64 KB on the wire.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    // A snappy preamble claiming 64 MiB (a varint), then a few bytes.
    let snappy_claim = vec![0x80, 0x80, 0x80, 0x20, 0x00, 0x01, 0x02];
    let bad_labels = {
        use logpipe_gateway::protocols::loki::{PushRequest, StreamAdapter};
        let push = PushRequest {
            streams: vec![StreamAdapter {
                labels: "job=\"x\"".into(),
                entries: vec![],
            }],
        };
        snap::raw::Encoder::new()
            .compress_vec(&push.encode_to_vec())
            .expect("in memory")
    };
    let bulk_bomb = gzip(
        &[
            b"{\"index\":{}}\n{\"message\":\"",
            &vec![b'a'; 8 << 20][..],
            b"\"}\n",
        ]
        .concat(),
    );
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "truncated protobuf",
            post("/v1/logs", pb, good[..good.len() - 4].to_vec()),
            400,
        ),
        (
            "a varint that never ends",
            post(
                "/v1/logs",
                pb,
                vec![
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
            ),
            400,
        ),
        (
            "a length past the end",
            post("/v1/logs", pb, vec![0x0a, 0x7f, 0x0a]),
            400,
        ),
        (
            "20,000 records in one request",
            post("/v1/logs", pb, many.encode_to_vec()),
            413,
        ),
        (
            "OTLP/JSON that is not",
            post(
                "/v1/logs",
                "application/json",
                b"{\"resourceLogs\":{}}".to_vec(),
            ),
            400,
        ),
        (
            "another content type",
            post("/v1/logs", "text/plain", good.clone()),
            415,
        ),
        (
            "a gzip bomb",
            post("/v1/logs", pb, bomb).header("content-encoding", "gzip"),
            413,
        ),
        (
            "an unknown encoding",
            post("/v1/logs", pb, good.clone()).header("content-encoding", "br"),
            415,
        ),
        (
            "a source line with no action",
            post(
                "/_bulk",
                "application/x-ndjson",
                b"{\"index\":{}}\n{\"message\":\"a\"}\n{\"message\":\"b\"}\n".to_vec(),
            ),
            400,
        ),
        (
            "an action with no source",
            post(
                "/_bulk",
                "application/x-ndjson",
                b"{\"index\":{}}\n{\"message\":\"a\"}\n{\"create\":{}}\n".to_vec(),
            ),
            400,
        ),
        (
            "two actions on one line",
            post(
                "/_bulk",
                "application/x-ndjson",
                b"{\"index\":{},\"delete\":{}}\n{}\n".to_vec(),
            ),
            400,
        ),
        (
            "bytes that are not UTF-8",
            post(
                "/_bulk",
                "application/x-ndjson",
                b"{\"index\":{}}\n{\"message\":\"\xff\xfe\"}\n".to_vec(),
            ),
            400,
        ),
        (
            "10,001 actions",
            post(
                "/_bulk",
                "application/x-ndjson",
                "{\"delete\":{\"_id\":\"x\"}}\n".repeat(10_001).into_bytes(),
            ),
            413,
        ),
        (
            "a bulk gzip bomb",
            post("/_bulk", "application/x-ndjson", bulk_bomb).header("content-encoding", "gzip"),
            413,
        ),
        (
            "a snappy body claiming 64 MiB",
            post("/loki/api/v1/push", pb, snappy_claim),
            413,
        ),
        (
            "a Loki body that is not snappy",
            post("/loki/api/v1/push", pb, good.clone()),
            400,
        ),
        (
            "a label set without braces",
            post("/loki/api/v1/push", pb, bad_labels),
            400,
        ),
        (
            "a Loki JSON timestamp that is not one",
            post(
                "/loki/api/v1/push",
                "application/json",
                br#"{"streams":[{"stream":{"app":"x"},"values":[["soon","line"]]}]}"#.to_vec(),
            ),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let resp = it::send(req).await;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("body");
        assert_eq!(
            status,
            want,
            "{what}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    // A bulk body of only refused items: 200 with every item refused, nothing stored.
    let (status, answer) = it::call(post(
        "/_bulk",
        "application/x-ndjson",
        b"{\"update\":{\"_id\":\"1\"}}\n{\"doc\":{}}\n{\"index\":{}}\n[1,2]\n{\"index\":{}}\n{\"message\":\"\\u0000\"}\n".to_vec(),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["errors"], true);
    let statuses: Vec<u64> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item.as_object()?.values().next()?["status"].as_u64())
        .collect();
    assert_eq!(statuses, vec![400, 400, 400], "{answer}");
    // What was acknowledged, all of it and only it.
    let resp = it::send(post("/v1/logs", pb, good)).await;
    assert_eq!(resp.status(), 200);
    stack.wait_rows(10).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stack.wait_rows(10).await;
    stack.stop().await;
}
