//! The gateway's ingest, keys and scopes, hardening and OpenAPI document, against the real broker,
//! Redis, and (for queries) a real collector on Postgres.

use std::collections::BTreeSet;
use std::time::Duration;

use logpipe_gateway::auth::{sha256, ApiKeyConfig, Scope};
use logpipe_gateway::ratelimit::Limit;
use logpipe_integration_tests as it;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(name: &str, secret: &str, scopes: Vec<Scope>) -> ApiKeyConfig {
    ApiKeyConfig {
        name: name.into(),
        sha256: hex(&sha256(secret.as_bytes())),
        scopes,
    }
}

fn event(id: &str, service: &str, level: &str, message: &str) -> Value {
    json!({"event_id": id, "timestamp": chrono::Utc::now().to_rfc3339(), "level": level,
           "service": service, "message": message, "attributes": {"n": 1}})
}

fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_returns_202_after_kafka_has_every_accepted_event_and_lists_the_rejected() {
    let name = it::unique("ingest");
    let config = it::gateway_config(&name);
    let kafka = config.kafka.clone();
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = json!([
        event("a-1", "payments", "ERROR", "charge declined"),
        {"event_id": "bad-level", "timestamp": "2026-11-23T08:00:00Z", "level": "LOUD", "service": "x", "message": "m"},
        event("a-2", "search", "INFO", "query ok"),
        {"event_id": "no-service", "timestamp": "2026-11-23T08:00:00Z", "level": "INFO", "service": "", "message": "m"},
        event("a-3", "payments", "WARN", "slow charge"),
    ]);
    let resp = it::send(
        client
            .post(gw.url("/api/v1/logs"))
            .header("traceparent", tp)
            .json(&body),
    )
    .await;
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().contains_key("ratelimit-remaining"));
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["accepted"], 3);
    let rejected: Vec<(u64, String)> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![(1, "invalid_json".into()), (3, "missing_field".into())]
    );

    // The 202 came after the acks: the records are already readable.
    let records = it::consume_n(&kafka, &kafka.raw_topic, 3, WAIT).await;
    let mut ids = BTreeSet::new();
    for m in &records {
        let e = logpipe_common::LogEvent::from_json(m.payload().unwrap()).unwrap();
        assert_eq!(
            m.key(),
            None,
            "unkeyed: the sticky partitioner spreads them"
        );
        assert_eq!(header(m, "traceparent").as_deref(), Some(tp));
        assert_eq!(
            header(m, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            e.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        ids.insert(e.event_id);
    }
    assert_eq!(
        ids,
        BTreeSet::from(["a-1".into(), "a-2".into(), "a-3".into()])
    );
    gw.stop().await;
}

/// Which partitions a gateway with these librdkafka options puts the 200 events of its second
/// and third requests in. The first request's records wait for the topic's metadata and are
/// placed one by one while the leader is not yet known, so librdkafka picks a new sticky
/// partition for each of them whatever the setting: that request is left out.
async fn partitions_used(name: &str, options: &[(&str, &str)]) -> BTreeSet<i32> {
    let mut config = it::gateway_config(name);
    let reader = config.kafka.clone();
    for (k, v) in options {
        config.kafka.librdkafka_options.insert(*k, *v);
    }
    config.validate().expect("the options pass");
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    for r in 0..3 {
        let body: Vec<Value> = (0..100)
            .map(|i| event(&format!("{name}-{r}-{i}"), "svc", "INFO", "m"))
            .collect();
        let resp = it::send(client.post(gw.url("/api/v1/logs")).json(&body)).await;
        assert_eq!(resp.status(), 202);
    }
    let records = it::consume_n(&reader, &reader.raw_topic, 300, WAIT).await;
    gw.stop().await;
    let first = format!("{name}-0-");
    records
        .iter()
        .filter(|m| {
            let e = logpipe_common::LogEvent::from_json(m.payload().unwrap()).unwrap();
            !e.event_id.starts_with(&first)
        })
        .map(|m| m.partition())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_librdkafka_options_reach_the_gateways_producer() {
    // The sticky partitioner keeps unkeyed records on one partition for
    // `sticky.partitioning.linger.ms`: ten minutes holds both requests on one of the two
    // partitions, 0 sends each record to a random one (all 200 on one: odds 2^-199).
    let held = partitions_used(
        &it::unique("opt-held"),
        &[("sticky.partitioning.linger.ms", "600000")],
    )
    .await;
    assert_eq!(held.len(), 1, "{held:?}");
    let spread = partitions_used(
        &it::unique("opt-spread"),
        &[("sticky.partitioning.linger.ms", "0")],
    )
    .await;
    assert_eq!(spread, BTreeSet::from([0, 1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_takes_ndjson_and_raw_lines_and_stable_ids_with_an_idempotency_key() {
    let name = it::unique("ingestfmt");
    let config = it::gateway_config(&name);
    let kafka = config.kafka.clone();
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now();
    let ndjson = format!(
        "{}\n\n{}\n",
        json!({"timestamp": now.to_rfc3339(), "level": "INFO", "service": "api", "message": "one"}),
        json!({"timestamp": now.to_rfc3339(), "level": "WARN", "service": "api", "message": "two"}),
    );
    let send_ndjson = || {
        client
            .post(gw.url("/api/v1/logs"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "batch-7")
            .body(ndjson.clone())
            .send()
    };
    assert_eq!(send_ndjson().await.unwrap().status(), 202);
    // A resend of the same request carries the same ids, so downstream stores each event once.
    assert_eq!(send_ndjson().await.unwrap().status(), 202);

    let apache = now.format("%d/%b/%Y:%H:%M:%S +0000");
    let lines = format!(
        "10.1.2.3 - alice [{apache}] \"GET /checkout HTTP/1.1\" 502 512 \"-\" \"curl/8\"\n\
         <11>1 {} web-1 nginx 42 - - upstream timed out\n\
         this is not a log line\n",
        now.to_rfc3339()
    );
    let (status, out) = it::call(
        client
            .post(gw.url("/api/v1/logs?service=edge"))
            .header("content-type", "text/plain")
            .body(lines),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(out["accepted"], 2);
    assert_eq!(out["rejected"][0]["index"], 2);
    assert_eq!(out["rejected"][0]["error"], "unparseable_line");

    let records = it::consume_n(&kafka, &kafka.raw_topic, 6, WAIT).await;
    let events: Vec<logpipe_common::LogEvent> = records
        .iter()
        .map(|m| logpipe_common::LogEvent::from_json(m.payload().unwrap()).unwrap())
        .collect();
    let ndjson_ids: Vec<&str> = events
        .iter()
        .filter(|e| e.service == "api")
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(ndjson_ids.len(), 4);
    let distinct: BTreeSet<&str> = ndjson_ids.iter().copied().collect();
    assert_eq!(distinct.len(), 2, "the resend repeated the same two ids");
    let apache_event = events
        .iter()
        .find(|e| e.message.contains("/checkout"))
        .unwrap();
    assert_eq!(apache_event.service, "edge");
    assert_eq!(apache_event.level, logpipe_common::Level::Error);
    let syslog_event = events
        .iter()
        .find(|e| e.message.contains("upstream"))
        .unwrap();
    assert_eq!(syslog_event.service, "nginx");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_precise_statuses_and_json_errors() {
    let name = it::unique("ingestbad");
    let mut config = it::gateway_config(&name);
    config.body_limit_bytes = 4_096;
    config.ingest.max_events = 3;
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let url = gw.url("/api/v1/logs");
    let post = |ct: &'static str, body: String| {
        client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases = [
        (post("application/json", "{oops".into()).await, 400, "bad_request"),
        (post("application/json", "[]".into()).await, 400, "bad_request"),
        (post("text/csv", "a,b".into()).await, 415, "unsupported_media_type"),
        (
            post("application/json", "x".repeat(5_000)).await,
            413,
            "payload_too_large",
        ),
        (
            post(
                "application/json",
                Value::Array(vec![event("1", "s", "INFO", "m"); 4]).to_string(),
            )
            .await,
            413,
            "too_many_events",
        ),
        (
            post(
                "application/json",
                json!([{"event_id": "x", "timestamp": "yesterday", "level": "INFO", "service": "s", "message": "m"}])
                    .to_string(),
            )
            .await,
            422,
            "invalid_events",
        ),
    ];
    for (resp, status, error) in cases {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), status, "{error}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (status, body) = it::call(
        client
            .post(gw.url("/api/v1/logs?servce=typo"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_parameter");
    assert!(
        body["detail"].as_str().unwrap().contains("servce"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_returns_503_with_retry_after_when_kafka_cannot_take_the_events() {
    let name = it::unique("ingestdown");
    let mut config = it::gateway_config(&name);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.kafka.brokers = dead.local_addr().unwrap().to_string();
    drop(dead);
    config.ingest.delivery_timeout_ms = 1_500;
    let gw = it::start_gateway(config).await;
    let resp = it::send(
        reqwest::Client::new()
            .post(gw.url("/api/v1/logs"))
            .json(&event("e-1", "api", "INFO", "m")),
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "kafka_unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains("resend"),
        "{body}"
    );
    let ready = reqwest::get(gw.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["dependencies"]["kafka"], "down");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_by_scope_and_repeated_bad_keys_are_limited() {
    let name = it::unique("auth");
    let mut config = it::gateway_config(&name);
    config.auth.keys = vec![
        key("ops", "admin-secret", vec![Scope::Admin]),
        key("shipper", "ingest-secret", vec![Scope::Ingest]),
        key("dash", "read-secret", vec![Scope::Read]),
    ];
    config.rate_limit.auth_failures = Limit {
        limit: 3,
        window_ms: 60_000,
    };
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let status = |key: Option<&'static str>| {
        let mut r = client.get(gw.url("/api/v1/generator/status"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let no_key = status(None).await.unwrap();
    assert_eq!(no_key.status(), 401);
    assert!(no_key.headers().contains_key("www-authenticate"));
    assert_eq!(status(Some("read-secret")).await.unwrap().status(), 200);
    assert_eq!(status(Some("admin-secret")).await.unwrap().status(), 200);
    let wrong_scope = status(Some("ingest-secret")).await.unwrap();
    assert_eq!(wrong_scope.status(), 403);
    let body: Value = wrong_scope.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(body["detail"].as_str().unwrap().contains("read"));
    let ingest_with_read = it::send(
        client
            .post(gw.url("/api/v1/logs"))
            .header("x-api-key", "read-secret")
            .json(&event("e", "s", "INFO", "m")),
    )
    .await;
    assert_eq!(ingest_with_read.status(), 403);

    // Three bad keys are 401s; the fourth exceeds the failure limit, and from then on this client
    // is refused even with a good key until the window frees up.
    for _ in 0..3 {
        let r = status(Some("guess")).await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_api_key");
    }
    let blocked = status(Some("guess")).await.unwrap();
    assert_eq!(blocked.status(), 429);
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(status(Some("read-secret")).await.unwrap().status(), 429);

    // Keys never appear in metrics.
    let metrics = gw.metrics().await;
    assert!(metrics.contains("gateway_auth_failures_total"));
    assert!(!metrics.contains("secret") && !metrics.contains("guess"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_limit_counts_events_not_requests() {
    let name = it::unique("ingestrl");
    let mut config = it::gateway_config(&name);
    config.rate_limit.ingest = Limit {
        limit: 100,
        window_ms: 60_000,
    };
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let batch = |n: usize, tag: &str| {
        let events: Vec<Value> = (0..n)
            .map(|i| event(&format!("{tag}-{i}"), "api", "INFO", "m"))
            .collect();
        client.post(gw.url("/api/v1/logs")).json(&events).send()
    };
    // Every request spends one unit before its body is read, refused or not; its other events are
    // charged once parsed.
    let too_big = batch(101, "e").await.unwrap();
    assert_eq!(
        too_big.status(),
        413,
        "a batch over the whole limit can never pass"
    );
    let first = batch(60, "a").await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["ratelimit-remaining"], "39");
    let second = batch(60, "b").await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(batch(40, "c").await.unwrap().status(), 429);
    assert_eq!(batch(37, "c").await.unwrap().status(), 202);
    assert_eq!(batch(1, "d").await.unwrap().status(), 429);
    gw.stop().await;
}

/// Send the head of a request whose body never finishes; the connection stays open.
async fn stall(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/logs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ev",
    )
    .await
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_408_and_requests_over_the_concurrency_limit_are_shed_with_503() {
    let name = it::unique("shed");
    let mut config = it::gateway_config(&name);
    config.max_concurrent_requests = 1;
    config.ingest.body_read_timeout_ms = 1_500;
    let gw = it::start_gateway(config).await;
    let mut slow = stall(gw.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed = reqwest::get(gw.url("/api/v1/generator/status"))
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    // Health stays outside the limit.
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);

    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, slow.read_to_end(&mut answer))
        .await
        .expect("the stalled request is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The slot is free again.
    assert_eq!(
        reqwest::get(gw.url("/api/v1/generator/status"))
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_served_route() {
    let name = it::unique("openapi");
    let gw = it::start_gateway(it::gateway_config(&name)).await;
    let doc: Value = reqwest::get(gw.url("/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /api/v1/generator/start",
        "POST /api/v1/generator/stop",
        "GET /api/v1/generator/status",
        "POST /api/v1/logs",
        "GET /api/v1/stats",
        "GET /api/v1/stats/{service}",
        "GET /api/v1/alerts",
        "GET /api/v1/events",
        "GET /api/v1/events/stream",
        "GET /api/v1/timeline",
        "GET /api/v1/pipeline",
        "GET /api/v1/openapi.json",
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "GET /",
        "GET /console/{file}",
        // The shippers' protocols (docs/protocols.md).
        "POST /v1/logs",
        "POST /_bulk",
        "PUT /_bulk",
        "POST /{index}/_bulk",
        "PUT /{index}/_bulk",
        "GET /_license",
        "GET /_cluster/health",
        "GET /_index_template/{name}",
        "HEAD /_index_template/{name}",
        "PUT /_index_template/{name}",
        "GET /_template/{name}",
        "HEAD /_template/{name}",
        "PUT /_template/{name}",
        "GET /_ilm/policy/{name}",
        "HEAD /_ilm/policy/{name}",
        "PUT /_ilm/policy/{name}",
        "POST /loki/api/v1/push",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected);
    // Every listed operation is served (not 404/405) by this gateway.
    let client = reqwest::Client::new();
    for op in &listed {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{service}", "api")
            .replace("{file}", "app.js")
            .replace("{index}", "logs")
            .replace("{name}", "logs");
        let r = it::send(client.request(method.parse().unwrap(), gw.url(&path))).await;
        assert!(
            r.status() != 404 && r.status() != 405,
            "{op} answered {}",
            r.status()
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ingested_through_the_gateway_are_queryable_through_it() {
    let name = it::unique("gwquery");
    let pool = it::schema_pool(&name).await;
    let (collector, _) = it::start_collector(it::collector_config(&name, 2)).await;
    let mut config = it::gateway_config(&name);
    config.collector_url = collector.url("");
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let events: Vec<Value> = (0..20)
        .map(|i| {
            let level = if i % 4 == 0 { "ERROR" } else { "INFO" };
            event(
                &format!("q-{i:02}"),
                "checkout",
                level,
                &format!("order {i} done"),
            )
        })
        .collect();
    let resp = it::send(client.post(gw.url("/api/v1/logs")).json(&events)).await;
    assert_eq!(resp.status(), 202);
    it::wait_rows(&pool, 20).await;
    let page: Value = it::json_body(
        client.get(gw.url("/api/v1/events?service=checkout&min_level=ERROR&limit=10")),
    )
    .await;
    let ids: BTreeSet<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["q-00", "q-04", "q-08", "q-12", "q-16"])
    );
    let stats = it::send(client.get(gw.url("/api/v1/stats/checkout"))).await;
    assert_eq!(stats.status(), 200);
    let (status, body) = it::call(client.get(gw.url("/api/v1/events?level=LOUD"))).await;
    assert_eq!(status, 400, "the collector's 400 passes through");
    assert!(body["detail"].as_str().unwrap().contains("level"));
    gw.stop().await;
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}
