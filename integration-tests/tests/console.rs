//! The web console's gateway side, against the real broker, Redis and Postgres: the page and its
//! files from the binary, the stage counters it charts, and the live tail's stream through the
//! gateway (its key, its cap on open streams).

use std::time::Duration;

use logpipe_gateway::auth::{sha256, ApiKeyConfig, Scope};
use logpipe_integration_tests as it;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_console_page_and_its_files_without_a_key() {
    let name = it::unique("consolefiles");
    let mut config = it::gateway_config(&name);
    config.auth.keys = vec![ApiKeyConfig {
        name: "reader".into(),
        sha256: hex(&sha256(b"reader-secret")),
        scopes: vec![Scope::Read],
    }];
    config.console.zipkin_ui_url = Some("http://zipkin.example:9411".into());
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    for (path, content_type, marker) in [
        ("/", "text/html", "<title>logpipe console</title>"),
        ("/console/app.js", "text/javascript", "Last-Event-ID"),
        ("/console/style.css", "text/css", ".lvl-FATAL"),
        ("/console/uPlot.iife.min.js", "text/javascript", "uPlot"),
    ] {
        let r = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        assert!(r.text().await.unwrap().contains(marker), "{path}");
    }
    let config = it::get_json(&client, &gw.url("/console/config.json")).await;
    assert_eq!(config["keys_required"], true);
    assert_eq!(config["zipkin_ui_url"], "http://zipkin.example:9411");
    let (status, body) = it::call(client.get(gw.url("/console/other.js"))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    // The data behind the page is the API's, with its keys.
    let r = client.get(gw.url("/api/v1/pipeline")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_endpoint_samples_every_stage_every_two_seconds() {
    let name = it::unique("consolepipe");
    let (collector, _) = it::start_collector(it::collector_config(&name, 2)).await;
    let generator = it::start_generator(it::generator_config(&name, 2)).await;
    let mut config = it::gateway_config(&name);
    config.collector_url = collector.url("");
    config.generator_urls = vec![generator.url("")];
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let r = it::send(
        client
            .post(gw.url("/api/v1/generator/start"))
            .json(&serde_json::json!({"rate_per_second": 500, "duration_secs": 30})),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let samples = it::wait_for(
        "samples with stored events",
        Duration::from_secs(60),
        || {
            let (client, url) = (client.clone(), gw.url("/api/v1/pipeline"));
            async move {
                let v = it::get_json(&client, &url).await;
                let s = v["samples"].as_array().cloned().unwrap_or_default();
                match s.last() {
                    Some(last) if s.len() >= 3 && last["stored"].as_u64().unwrap_or(0) > 0 => Ok(s),
                    _ => Err(format!("{v}")),
                }
            }
        },
    )
    .await;
    let last = samples.last().unwrap();
    for k in ["generated", "acked", "consumed", "stored"] {
        assert!(last[k].as_u64().unwrap() > 0, "{k}: {last}");
    }
    assert!(
        !last["lag"].as_object().unwrap().is_empty(),
        "lag per partition: {last}"
    );
    let t: Vec<i64> = samples.iter().map(|s| s["t"].as_i64().unwrap()).collect();
    assert!(
        t.windows(2).all(|w| w[1] - w[0] >= 1_500),
        "every 2 s: {t:?}"
    );
    // `since_ms` returns only newer samples.
    let newer = it::get_json(
        &client,
        &gw.url(&format!("/api/v1/pipeline?since_ms={}", t[t.len() - 1])),
    )
    .await;
    assert!(newer["samples"].as_array().unwrap().len() <= 1);
    let _ = client.post(gw.url("/api/v1/generator/stop")).send().await;
    gw.stop().await;
    generator.stop().await;
    collector.stop().await;
    let pool = it::schema_pool(&name).await;
    it::drop_schema(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_the_gateway_need_the_read_scope_and_are_capped() {
    let name = it::unique("consolestream");
    let (collector, _) = it::start_collector(it::collector_config(&name, 2)).await;
    let mut config = it::gateway_config(&name);
    config.collector_url = collector.url("");
    config.auth.keys = vec![ApiKeyConfig {
        name: "reader".into(),
        sha256: hex(&sha256(b"reader-secret")),
        scopes: vec![Scope::Read],
    }];
    config.console.max_streams = 1;
    let gw = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let url = gw.url("/api/v1/events/stream?min_level=WARN");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no key, no stream");
    let first = it::send(client.get(&url).bearer_auth("reader-secret")).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = first.bytes_stream();
    use futures::StreamExt;
    let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("event: hello"));
    let (status, v) = it::call(client.get(&url).bearer_auth("reader-secret")).await;
    assert_eq!(status, 503, "one stream at a time here");
    assert_eq!(v["error"], "too_many_streams");
    drop(body);
    // The first one's permit comes back when its client goes.
    it::wait_for("a free stream", Duration::from_secs(10), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .get(&url)
                .bearer_auth("reader-secret")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 200 {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        }
    })
    .await;
    gw.stop().await;
    collector.stop().await;
    let pool = it::schema_pool(&name).await;
    it::drop_schema(&pool, &name).await;
}
