//! Gateway control against real generator instances.

use std::time::Duration;

use logpipe_integration_tests as it;
use serde_json::{json, Value};

fn gateway_config(generators: Vec<String>) -> logpipe_gateway::config::GatewayConfig {
    let mut c = it::gateway_config(&it::unique("gwtest"));
    c.generator_urls = generators;
    c
}

/// An address nothing listens on: bind, note the port, close.
async fn closed_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_marks_an_unreachable_generator_instead_of_failing() {
    let name = it::unique("gwstatus");
    let generator = it::start_generator(it::generator_config(&name, 1)).await;
    let dead = closed_url().await;
    let gateway = it::start_gateway(gateway_config(vec![generator.url(""), dead.clone()])).await;
    let resp = reqwest::get(gateway.url("/api/v1/generator/status"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "idle");
    assert_eq!(body["instances_total"], 2);
    assert_eq!(body["instances_reachable"], 1);
    assert_eq!(body["instances"][1]["url"], dead);
    assert_eq!(body["instances"][1]["reachable"], false);
    gateway.stop().await;
    generator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_an_out_of_range_or_mistyped_field_returns_422_naming_the_field() {
    let name = it::unique("gw422");
    let generator = it::start_generator(it::generator_config(&name, 1)).await;
    let gateway = it::start_gateway(gateway_config(vec![generator.url("")])).await;
    let client = reqwest::Client::new();
    let (status, body) = it::call(
        client
            .post(gateway.url("/api/v1/generator/start"))
            .json(&json!({"rate_per_second": 0})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "invalid_parameter");
    assert!(
        body["detail"].as_str().unwrap().contains("rate_per_second"),
        "{body}"
    );

    // A value of the wrong type fails the typed contract: the 422 names its field too, at the
    // gateway and at the generator behind it.
    for (url, field) in [
        (gateway.url("/api/v1/generator/start"), "rate_per_second"),
        (generator.url("/api/v1/generator/start"), "threads"),
    ] {
        let wrong = json!({ field: -5 });
        let (status, body) = it::call(client.post(&url).json(&wrong)).await;
        assert_eq!(status, 422, "{url}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(field) && detail.contains("-5"), "{body}");
    }

    let resp = it::send(
        client
            .post(gateway.url("/api/v1/generator/start"))
            .header("content-type", "application/json")
            .body("{oops"),
    )
    .await;
    assert_eq!(resp.status(), 400);
    gateway.stop().await;
    generator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_and_status_reach_every_generator_instance() {
    let name = it::unique("gwfan");
    let a = it::start_generator(it::generator_config(&format!("{name}a"), 1)).await;
    let b = it::start_generator(it::generator_config(&format!("{name}b"), 1)).await;
    let gateway = it::start_gateway(gateway_config(vec![a.url(""), b.url("")])).await;
    let client = reqwest::Client::new();
    let resp = it::send(
        client
            .post(gateway.url("/api/v1/generator/start"))
            .json(&json!({"rate_per_second": 200})),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let st = it::wait_for(
        "both instances running with a measured rate",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let url = gateway.url("/api/v1/generator/status");
            async move {
                let s: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                if s["instances_running"] == 2
                    && s["measured_rate_per_second"].as_f64().unwrap_or(0.0) > 0.0
                {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(st["rate_per_second"], 400);
    let resp = it::send(client.post(gateway.url("/api/v1/generator/stop"))).await;
    assert_eq!(resp.status(), 200);
    let s: Value = it::json_body(client.get(gateway.url("/api/v1/generator/status"))).await;
    assert_eq!(s["state"], "idle");
    assert_eq!(
        s["events_generated"], s["events_acked"],
        "stop flushes every generated event"
    );
    gateway.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_unknown_routes_get_json_errors() {
    let mut config = gateway_config(vec![closed_url().await]);
    config.body_limit_bytes = 1024;
    let gateway = it::start_gateway(config).await;
    let client = reqwest::Client::new();
    let resp = it::send(
        client
            .post(gateway.url("/api/v1/generator/start"))
            .header("content-type", "application/json")
            .body(vec![b' '; 4096]),
    )
    .await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");

    let resp = client.get(gateway.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(resp_has_request_id(&client, &gateway.url("/health")).await);
    gateway.stop().await;
}

async fn resp_has_request_id(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .unwrap()
        .headers()
        .contains_key("x-request-id")
}
