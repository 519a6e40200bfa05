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
use logpipe_common::control::{parse_start_request, GeneratorStatus, StartBodyError, StartRequest};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::middleware::client_span;
use crate::state::AppState;
use tracing::Instrument;

/// What a generator answers: its status (start, stop and status all return it) or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum InstanceBody {
    Status(Box<GeneratorStatus>),
    Error(ErrorBody),
}

/// One instance's answer: its HTTP status and body, or why it could not be reached.
struct InstanceReply {
    url: String,
    result: Result<(StatusCode, Option<InstanceBody>), String>,
}

/// One instance as the gateway reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceReport {
    pub url: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<InstanceBody>,
    /// Why it could not be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl InstanceReply {
    fn report(&self) -> InstanceReport {
        match &self.result {
            Ok((status, body)) => InstanceReport {
                url: self.url.clone(),
                reachable: true,
                http_status: Some(status.as_u16()),
                body: body.clone(),
                error: None,
            },
            Err(e) => InstanceReport {
                url: self.url.clone(),
                reachable: false,
                http_status: None,
                body: None,
                error: Some(e.clone()),
            },
        }
    }
}

/// The answer to a start or stop that reached at least one instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FanOut {
    /// Instances that accepted the call.
    pub accepted: usize,
    pub instances: Vec<InstanceReport>,
}

/// Every instance's status and the totals over the reachable ones.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AggregateStatus {
    /// `running` when any instance runs, `idle` when some answer and none runs, else `unreachable`.
    pub state: &'static str,
    pub instances_total: usize,
    pub instances_reachable: usize,
    pub instances_running: usize,
    /// Sum of the rates asked of the running instances.
    pub rate_per_second: u64,
    pub measured_rate_per_second: f64,
    pub events_generated: u64,
    pub events_acked: u64,
    pub events_failed: u64,
    pub instances: Vec<InstanceReport>,
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
                    // A body of neither shape is reported as absent, not guessed at.
                    let body = resp.json::<InstanceBody>().await.ok();
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
    let instances: Vec<InstanceReport> = replies.iter().map(InstanceReply::report).collect();
    let answered: Vec<&(StatusCode, Option<InstanceBody>)> = replies
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
        Json(FanOut {
            accepted,
            instances,
        }),
    )
        .into_response()
}

/// Start generating on every instance. The body is optional: without one, each instance runs its
/// configured defaults. It is checked here, so a malformed or unknown field is refused before any
/// instance is called.
#[utoipa::path(post, path = "/api/v1/generator/start", tag = "control",
    request_body(content = Option<StartRequest>, description = "Run parameters; every field optional, and so is the body",
        content_type = "application/json"),
    responses(
        (status = 202, description = "Every instance started", body = FanOut),
        (status = 207, description = "Some instances started; `instances` says which", body = FanOut),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 409, description = "Every instance refused (already running)", body = ErrorBody),
        (status = 422, description = "Every instance refused the parameters", body = ErrorBody),
        (status = 429, description = "Control rate limit spent", body = ErrorBody),
        (status = 502, description = "No instance reachable", body = ErrorBody),
    ))]
pub async fn start(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match start_request(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // What is forwarded is the typed request, re-serialized: only fields the contract names.
    let forwarded = request.map(|r| Bytes::from(serde_json::to_vec(&r).expect("a plain struct")));
    let replies = call_all(
        &s,
        &headers,
        reqwest::Method::POST,
        "/api/v1/generator/start",
        forwarded,
    )
    .await;
    fan_out_response(replies, StatusCode::ACCEPTED)
}

/// The start body: none (blank), a valid request, or why not (400 not JSON, 422 naming the field).
fn start_request(body: &[u8]) -> Result<Option<StartRequest>, ApiError> {
    parse_start_request(body).map_err(|e| match e {
        StartBodyError::NotJson(_) => ApiError::BadRequest(e.to_string()),
        StartBodyError::Field { .. } => ApiError::InvalidBody(e.to_string()),
    })
}

/// Stop generating on every instance.
#[utoipa::path(post, path = "/api/v1/generator/stop", tag = "control",
    responses(
        (status = 200, description = "Every instance stopped", body = FanOut),
        (status = 207, description = "Some instances stopped", body = FanOut),
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
        (status = 200, description = "Per-instance and total status", body = AggregateStatus),
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
                        serde_json::to_vec(&aggregate_status(&replies)).expect("a plain struct"),
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

/// Every generator's status, totalled: what the console's sampler reads every 2 s.
pub(crate) async fn aggregate(s: &AppState) -> AggregateStatus {
    let replies = call_all(
        s,
        &HeaderMap::new(),
        reqwest::Method::GET,
        "/api/v1/generator/status",
        None,
    )
    .await;
    aggregate_status(&replies)
}

fn aggregate_status(replies: &[InstanceReply]) -> AggregateStatus {
    let mut total = AggregateStatus {
        state: "unreachable",
        instances_total: replies.len(),
        instances_reachable: 0,
        instances_running: 0,
        rate_per_second: 0,
        measured_rate_per_second: 0.0,
        events_generated: 0,
        events_acked: 0,
        events_failed: 0,
        instances: replies.iter().map(InstanceReply::report).collect(),
    };
    for r in replies {
        let Ok((status, Some(InstanceBody::Status(st)))) = &r.result else {
            continue;
        };
        if !status.is_success() {
            continue;
        }
        total.instances_reachable += 1;
        if st.is_running() {
            total.instances_running += 1;
            // The configured rate only counts for instances that are running.
            total.rate_per_second += u64::from(st.rate_per_second.unwrap_or(0));
        }
        total.measured_rate_per_second += st.measured_rate_per_second;
        total.events_generated += st.events_generated;
        total.events_acked += st.events_acked;
        total.events_failed += st.events_failed;
    }
    total.state = if total.instances_running > 0 {
        "running"
    } else if total.instances_reachable > 0 {
        "idle"
    } else {
        "unreachable"
    };
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator's status: `counts` are generated, acked and failed.
    fn status(
        id: &str,
        state: &str,
        rate: u32,
        measured: f64,
        counts: [u64; 3],
    ) -> GeneratorStatus {
        GeneratorStatus {
            instance_id: id.into(),
            state: state.into(),
            topic: "logs.raw".into(),
            rate_per_second: Some(rate),
            measured_rate_per_second: measured,
            events_generated: counts[0],
            events_acked: counts[1],
            events_failed: counts[2],
            events_skipped: 0,
            events_rate_limited: 0,
            budget: None,
            breaker_state: "closed".into(),
            started_at: None,
            run: None,
        }
    }

    fn reply(url: &str, state: &str, rate: u32, measured: f64, counts: [u64; 3]) -> InstanceReply {
        InstanceReply {
            url: url.into(),
            result: Ok((
                StatusCode::OK,
                Some(InstanceBody::Status(Box::new(status(
                    url, state, rate, measured, counts,
                )))),
            )),
        }
    }

    #[test]
    fn status_sums_instances_and_marks_the_unreachable_one() {
        let replies = vec![
            reply("http://a", "running", 100, 99.5, [10, 9, 0]),
            reply("http://b", "running", 50, 50.0, [5, 5, 1]),
            reply("http://idle", "idle", 70, 0.0, [1, 1, 0]),
            InstanceReply {
                url: "http://c".into(),
                result: Err("connection refused".into()),
            },
        ];
        let v = serde_json::to_value(aggregate_status(&replies)).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(
            v["rate_per_second"], 150,
            "an idle instance's rate does not count"
        );
        assert_eq!(v["events_generated"], 16);
        assert_eq!(v["events_acked"], 15);
        assert_eq!(v["events_failed"], 1);
        assert_eq!(v["instances_reachable"], 3);
        assert_eq!(v["instances_running"], 2);
        assert_eq!(v["instances"][3]["reachable"], false);
        assert_eq!(v["instances"][0]["body"]["instance_id"], "http://a");
    }

    #[test]
    fn a_refusal_from_every_instance_passes_through_with_its_status() {
        let replies = vec![InstanceReply {
            url: "http://a".into(),
            result: Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(InstanceBody::Error(ErrorBody {
                    error: "invalid_parameter".into(),
                    detail: "`threads` ...".into(),
                })),
            )),
        }];
        let resp = fan_out_response(replies, StatusCode::ACCEPTED);
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn a_start_body_is_optional_and_checked_field_by_field() {
        assert_eq!(start_request(b"").unwrap(), None);
        assert_eq!(start_request(b" \n").unwrap(), None);
        assert_eq!(start_request(b"null").unwrap(), None);
        let r = start_request(br#"{"rate_per_second": 5, "profile": "burst"}"#).unwrap();
        assert_eq!(r.unwrap().rate_per_second, Some(5));
        assert!(matches!(
            start_request(br#"{"rate": 5}"#),
            Err(ApiError::InvalidBody(d)) if d.contains("rate")
        ));
        assert!(matches!(
            start_request(b"{oops"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn a_generator_status_body_parses_as_the_typed_contract() {
        // What the generator serves, as the gateway reads it: the same type at both ends.
        let st = status("g", "idle", 10, 0.0, [1, 1, 0]);
        let body: InstanceBody =
            serde_json::from_value(serde_json::to_value(&st).unwrap()).unwrap();
        assert_eq!(body, InstanceBody::Status(Box::new(st)));
        let err: InstanceBody =
            serde_json::from_str(r#"{"error":"already_running","detail":"d"}"#).unwrap();
        assert!(matches!(err, InstanceBody::Error(_)));
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
