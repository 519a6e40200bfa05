//! Generator control: start and stop reach every configured instance; status aggregates them and
//! marks an unreachable instance as such instead of failing the whole call.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use futures::FutureExt;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorBody};
use crate::http::{client_span, AppState};
use tracing::Instrument;

/// One instance's answer: its HTTP status and JSON body, or why it could not be reached.
struct InstanceReply {
    url: String,
    result: Result<(StatusCode, Value), String>,
}

impl InstanceReply {
    fn to_json(&self) -> Value {
        match &self.result {
            Ok((status, body)) => json!({
                "url": self.url, "reachable": true, "http_status": status.as_u16(), "body": body
            }),
            Err(e) => json!({ "url": self.url, "reachable": false, "error": e }),
        }
    }
}

async fn call_all(
    s: &AppState,
    headers: &HeaderMap,
    method: reqwest::Method,
    path: &str,
    body: Option<Bytes>,
) -> Vec<InstanceReply> {
    let instances = instances(&s.config.generator_urls).await;
    let calls = instances.iter().map(|base| {
        let url = format!("{base}{path}");
        let mut req = s
            .client
            .request(method.clone(), &url)
            .timeout(Duration::from_millis(s.config.upstream_timeout_ms));
        let (span, tp) = client_span(method.as_str(), &url, headers);
        if let Some(tp) = &tp {
            req = req.header("traceparent", tp.as_str());
        }
        if let Some(b) = &body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.clone());
        }
        async move {
            let result = match req.send().instrument(span).await {
                Ok(resp) => {
                    let status = StatusCode::from_u16(resp.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                    Ok((status, body))
                }
                Err(e) => Err(upstream_error(&e)),
            };
            InstanceReply {
                url: base.clone(),
                result,
            }
        }
    });
    join_all(calls).await
}

/// The generator instances behind the configured URLs. A `dns+http://host:port` URL stands for every
/// address the name resolves to now (docker-compose's `--scale generator=N` gives one name N
/// addresses), so start and stop reach each of them; other URLs are one instance each.
pub async fn instances(urls: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let Some(rest) = url.strip_prefix("dns+http://") else {
            out.push(url.clone());
            continue;
        };
        let host_port = rest.split('/').next().unwrap_or(rest);
        match tokio::net::lookup_host(host_port).await {
            Ok(addrs) => {
                let mut found: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                found.sort();
                found.dedup();
                if found.is_empty() {
                    out.push(format!("http://{host_port}"));
                }
                out.extend(found);
            }
            // Unresolvable now: keep it as one instance, which then reports as unreachable.
            Err(_) => out.push(format!("http://{host_port}")),
        }
    }
    out
}

/// A short reason without the request URL's query (never credentials).
fn upstream_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        "request failed".into()
    }
}

/// Fan a control call out and pick one status for the client: a refusal every instance agrees on
/// (422, 409) passes through with its body; otherwise success when any instance accepted it.
fn fan_out_response(replies: Vec<InstanceReply>, ok_status: StatusCode) -> Response {
    let instances: Vec<Value> = replies.iter().map(InstanceReply::to_json).collect();
    let answered: Vec<&(StatusCode, Value)> = replies
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .collect();
    if answered.is_empty() {
        return ApiError::UpstreamUnavailable(format!(
            "{} generator instance(s) configured, none reachable",
            replies.len()
        ))
        .into_response();
    }
    let accepted = answered.iter().filter(|(s, _)| s.is_success()).count();
    if accepted == 0 {
        // Every reachable instance refused: the request itself is wrong (or all are busy).
        let (status, body) = answered[0];
        return (*status, Json(body.clone())).into_response();
    }
    let status = if accepted == replies.len() {
        ok_status
    } else {
        StatusCode::MULTI_STATUS
    };
    (
        status,
        Json(json!({ "accepted": accepted, "instances": instances })),
    )
        .into_response()
}

/// Start generating on every instance (the body is the generator's run request).
#[utoipa::path(post, path = "/api/v1/generator/start", tag = "control",
    request_body(content = serde_json::Value, description = "Run parameters: rate_per_second, threads, batch_size, profile, duration_secs"),
    responses(
        (status = 202, description = "Every instance started", body = serde_json::Value),
        (status = 207, description = "Some instances started; `instances` says which", body = serde_json::Value),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 409, description = "Every instance refused (already running)", body = ErrorBody),
        (status = 422, description = "Every instance refused the parameters", body = ErrorBody),
        (status = 429, description = "Control rate limit spent", body = ErrorBody),
        (status = 502, description = "No instance reachable", body = ErrorBody),
    ))]
pub async fn start(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let replies = call_all(
        &s,
        &headers,
        reqwest::Method::POST,
        "/api/v1/generator/start",
        Some(body),
    )
    .await;
    fan_out_response(replies, StatusCode::ACCEPTED)
}

/// Stop generating on every instance.
#[utoipa::path(post, path = "/api/v1/generator/stop", tag = "control",
    responses(
        (status = 200, description = "Every instance stopped", body = serde_json::Value),
        (status = 207, description = "Some instances stopped", body = serde_json::Value),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 502, description = "No instance reachable", body = ErrorBody),
    ))]
pub async fn stop(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let replies = call_all(
        &s,
        &headers,
        reqwest::Method::POST,
        "/api/v1/generator/stop",
        None,
    )
    .await;
    fan_out_response(replies, StatusCode::OK)
}

/// Every instance's status and the totals; an unreachable instance is marked, not fatal.
#[utoipa::path(get, path = "/api/v1/generator/status", tag = "control",
    responses(
        (status = 200, description = "Per-instance and total status", body = serde_json::Value),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 429, description = "Query rate limit spent", body = ErrorBody),
    ))]
pub async fn status(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let flight = {
        let mut current = s.status_flight.lock().expect("status flight lock");
        match current.as_ref() {
            // A fan-out is on its way: this request shares its answer.
            Some(f) if f.peek().is_none() => f.clone(),
            _ => {
                let state = s.clone();
                let f = async move {
                    let replies = call_all(
                        &state,
                        &headers,
                        reqwest::Method::GET,
                        "/api/v1/generator/status",
                        None,
                    )
                    .await;
                    // Serialized once; every request sharing this flight sends the same bytes.
                    Bytes::from(
                        serde_json::to_vec(&aggregate_status(&replies)).expect("JSON value"),
                    )
                }
                .boxed()
                .shared();
                *current = Some(f.clone());
                f
            }
        }
    };
    let body = flight.await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Status requests that arrive while a status fan-out is in flight wait for that one instead of
/// starting their own (request coalescing): the answer is at most one upstream round trip old,
/// and a burst of pollers costs the generators one call per round trip, not one per poller.
pub type StatusFlight =
    std::sync::Mutex<Option<futures::future::Shared<futures::future::BoxFuture<'static, Bytes>>>>;

fn aggregate_status(replies: &[InstanceReply]) -> Value {
    let mut running = 0;
    let mut reachable = 0;
    let mut totals = [0f64; 5];
    const FIELDS: [&str; 5] = [
        "rate_per_second",
        "measured_rate_per_second",
        "events_generated",
        "events_acked",
        "events_failed",
    ];
    for r in replies {
        if let Ok((status, body)) = &r.result {
            if !status.is_success() {
                continue;
            }
            reachable += 1;
            if body["state"] == "running" {
                running += 1;
            }
            for (i, f) in FIELDS.iter().enumerate() {
                // The configured rate only counts for instances that are running.
                if *f == "rate_per_second" && body["state"] != "running" {
                    continue;
                }
                totals[i] += body[*f].as_f64().unwrap_or(0.0);
            }
        }
    }
    json!({
        "state": if running > 0 { "running" } else if reachable > 0 { "idle" } else { "unreachable" },
        "instances_total": replies.len(),
        "instances_reachable": reachable,
        "instances_running": running,
        "rate_per_second": totals[0] as u64,
        "measured_rate_per_second": totals[1],
        "events_generated": totals[2] as u64,
        "events_acked": totals[3] as u64,
        "events_failed": totals[4] as u64,
        "instances": replies.iter().map(InstanceReply::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(url: &str, body: Value) -> InstanceReply {
        InstanceReply {
            url: url.into(),
            result: Ok((StatusCode::OK, body)),
        }
    }

    #[test]
    fn status_sums_instances_and_marks_the_unreachable_one() {
        let replies = vec![
            reply(
                "http://a",
                json!({"state":"running","rate_per_second":100,"measured_rate_per_second":99.5,"events_generated":10,"events_acked":9,"events_failed":0}),
            ),
            reply(
                "http://b",
                json!({"state":"running","rate_per_second":50,"measured_rate_per_second":50.0,"events_generated":5,"events_acked":5,"events_failed":1}),
            ),
            InstanceReply {
                url: "http://c".into(),
                result: Err("connection refused".into()),
            },
        ];
        let v = aggregate_status(&replies);
        assert_eq!(v["state"], "running");
        assert_eq!(v["rate_per_second"], 150);
        assert_eq!(v["events_generated"], 15);
        assert_eq!(v["events_acked"], 14);
        assert_eq!(v["events_failed"], 1);
        assert_eq!(v["instances_reachable"], 2);
        assert_eq!(v["instances"][2]["reachable"], false);
    }

    #[test]
    fn a_refusal_from_every_instance_passes_through_with_its_status() {
        let replies = vec![InstanceReply {
            url: "http://a".into(),
            result: Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error":"invalid_parameter","detail":"`threads` ..."}),
            )),
        }];
        let resp = fan_out_response(replies, StatusCode::ACCEPTED);
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn a_dns_url_stands_for_every_address_of_the_name() {
        let urls = vec![
            "dns+http://127.0.0.1:8080".to_owned(),
            "http://gen-b:8080".to_owned(),
        ];
        assert_eq!(
            instances(&urls).await,
            vec!["http://127.0.0.1:8080", "http://gen-b:8080"]
        );
    }

    #[test]
    fn no_reachable_instance_is_a_502() {
        let replies = vec![InstanceReply {
            url: "http://a".into(),
            result: Err("timed out".into()),
        }];
        assert_eq!(
            fan_out_response(replies, StatusCode::OK).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
