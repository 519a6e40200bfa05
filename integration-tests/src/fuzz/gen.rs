//! The fuzzer's inputs, generated from one seed: event fields from a grammar of hostile values
//! (numbers at and beyond every type edge, also as strings; unicode edge cases; every timestamp
//! form the parsers accept and many they must refuse; huge and empty strings; random levels;
//! high-cardinality services and addresses; deep and wide attributes), combined at random into
//! JSON, NDJSON and raw-line bodies, and raw Kafka records with any broker timestamp.
//!
//! Every choice comes from the one `StdRng`, so a seed replays the run exactly. The values
//! themselves are `values`' grammar.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::Rng;

use super::values::*;

/// One request to `POST /api/v1/logs`.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub content_type: &'static str,
    /// `?service=` for raw lines, already URL-encoded.
    pub service_query: Option<String>,
    pub body: Vec<u8>,
    /// Events the body was built from (valid or not).
    pub events: usize,
}

/// One record written straight into the raw topic, as any broker client can.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub content_type: &'static str,
    /// The broker timestamp the producer sets (ms since the epoch), if it sets one.
    pub timestamp_ms: Option<i64>,
}

/// One event as JSON text. Half the time a well-formed event whose hostility is in its values
/// only (numbers at every edge, long and odd strings, high-cardinality names): those are accepted
/// and reach every aggregate. Otherwise any field may be missing, of the wrong type or past its
/// limit. `id` is the event's own id when it carries a normal one.
pub fn event_json(rng: &mut StdRng, now: DateTime<Utc>, id: &str) -> String {
    if rng.random_bool(0.5) {
        return valid_event_json(rng, now, id);
    }
    wild_event_json(rng, now, id)
}

fn clean(rng: &mut StdRng, max_chars: usize) -> String {
    let t = text(rng, max_chars).replace('\0', "");
    if t.trim().is_empty() {
        "x".to_owned()
    } else {
        t
    }
}

/// A well-formed event: valid fields, hostile values.
pub fn valid_event_json(rng: &mut StdRng, now: DateTime<Utc>, id: &str) -> String {
    let ts = now - Duration::milliseconds(rng.random_range(0..5_000));
    let service = match rng.random_range(0..3) {
        0 => format!("svc-{:08x}", rng.random::<u32>()),
        _ => pick(rng, &["payments", "auth", "search", "api"]).to_owned(),
    };
    let mut attrs: Vec<String> = Vec::new();
    for key in ["latency_ms", "duration_ms", "http.duration_ms"] {
        if rng.random_bool(0.5) {
            attrs.push(format!("\"{key}\":{}", number_value(rng)));
        }
    }
    if rng.random_bool(0.4) {
        let ip = match rng.random_range(0..3) {
            0 => format!("198.51.100.{}", rng.random::<u8>()),
            1 => "7".repeat(rng.random_range(100..3_000)),
            _ => clean(rng, 60),
        };
        attrs.push(format!(
            "\"client.ip\":{}",
            serde_json::to_string(&ip).expect("str")
        ));
    }
    if rng.random_bool(0.3) {
        let user = clean(rng, 3_000);
        attrs.push(format!(
            "\"user\":{}",
            serde_json::to_string(&user).expect("str")
        ));
    }
    if rng.random_bool(0.3) {
        let path = clean(rng, 200);
        attrs.push(format!(
            "\"http.path\":{}",
            serde_json::to_string(&path).expect("str")
        ));
    }
    let message = if rng.random_bool(0.3) {
        "login failed for user admin".to_owned()
    } else {
        clean(rng, 300)
    };
    format!(
        "{{\"event_id\":\"{id}\",\"timestamp\":\"{}\",\"level\":{},\"service\":{},\"message\":{},\"attributes\":{{{}}}}}",
        ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        level(rng),
        serde_json::to_string(&service).expect("str"),
        serde_json::to_string(&message).expect("str"),
        attrs.join(",")
    )
}

/// An event whose every field may be missing, of the wrong type or past its limit.
pub fn wild_event_json(rng: &mut StdRng, now: DateTime<Utc>, id: &str) -> String {
    let mut fields: Vec<String> = Vec::new();
    match rng.random_range(0..30) {
        0 => {}
        1 => fields.push("\"event_id\":null".into()),
        2 => fields.push(format!("\"event_id\":\"{}\"", "i".repeat(129))),
        3 => fields.push(format!("\"event_id\":{}", number_text(rng))),
        _ => fields.push(format!("\"event_id\":\"{id}\"")),
    }
    if rng.random_range(0..40) != 0 {
        fields.push(format!("\"timestamp\":{}", timestamp(rng, now)));
    }
    if rng.random_range(0..40) != 0 {
        fields.push(format!("\"level\":{}", level(rng)));
    }
    if rng.random_range(0..40) != 0 {
        fields.push(format!("\"service\":{}", service(rng)));
    }
    if rng.random_bool(0.5) {
        fields.push(format!("\"component\":{}", string_literal(rng, 40)));
    }
    if rng.random_bool(0.5) {
        fields.push(format!("\"host\":{}", string_literal(rng, 40)));
    }
    let message = match rng.random_range(0..30) {
        0 => "\"\"".to_owned(),
        1 => serde_json::to_string(&"m".repeat(32 * 1024)).expect("str"),
        2 => serde_json::to_string(&"m".repeat(32 * 1024 + 1)).expect("str"),
        3 => number_value(rng),
        _ => string_literal(rng, 300),
    };
    if rng.random_range(0..40) != 0 {
        fields.push(format!("\"message\":{message}"));
    }
    if rng.random_bool(0.2) {
        fields.push(format!(
            "\"trace_id\":\"{}\"",
            "a".repeat(rng.random_range(0..70))
        ));
    }
    if rng.random_bool(0.1) {
        fields.push(format!(
            "\"span_id\":\"{}\"",
            "b".repeat(rng.random_range(0..40))
        ));
    }
    if rng.random_bool(0.8) {
        fields.push(format!("\"attributes\":{}", attributes(rng)));
    }
    if rng.random_bool(0.03) {
        fields.push("\"unknown_field\":1".into());
    }
    // Field order is the client's business.
    for i in (1..fields.len()).rev() {
        let j = rng.random_range(0..=i);
        fields.swap(i, j);
    }
    format!("{{{}}}", fields.join(","))
}

/// One raw line: Apache combined, RFC 5424, RFC 3164, or something that is none of them.
pub fn raw_line(rng: &mut StdRng, now: DateTime<Utc>) -> String {
    let near = now - Duration::milliseconds(rng.random_range(0..30_000));
    let msg = text(rng, 200).replace(['\n', '\r'], " ");
    match rng.random_range(0..4) {
        0 => {
            let status = if rng.random_bool(0.8) {
                pick(rng, &["200", "404", "500", "503"]).to_string()
            } else {
                number_text(rng)
            };
            let bytes = if rng.random_bool(0.7) {
                rng.random_range(0..100_000).to_string()
            } else {
                number_text(rng)
            };
            let date = if rng.random_bool(0.9) {
                near.format("%d/%b/%Y:%H:%M:%S %z").to_string()
            } else {
                pick(
                    rng,
                    &[
                        "31/Feb/2026:25:61:61 +9999",
                        "01/Jan/0000:00:00:00 +0000",
                        "",
                    ],
                )
                .to_string()
            };
            format!(
                "{}.{}.{}.{} - {} [{date}] \"GET /p?q={} HTTP/1.1\" {status} {bytes} \"-\" \"{}\"",
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                pick(rng, &["-", "admin", "é"]),
                msg.replace([' ', '"'], "+"),
                msg.replace('"', "'"),
            )
        }
        1 => {
            let pri = if rng.random_bool(0.9) {
                rng.random_range(0..192).to_string()
            } else {
                number_text(rng)
            };
            let ts = if rng.random_bool(0.9) {
                near.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            } else {
                pick(rng, &["-", "9999-99-99T99:99:99Z", "0001-01-01T00:00:00Z"]).to_string()
            };
            let sd = pick(
                rng,
                &[
                    "-",
                    "[x@1 a=\"b\"]",
                    "[x@1 a=\"b\\\"]\"]",
                    "[",
                    "[x a=\"1e308\"]",
                ],
            );
            format!(
                "<{pri}>1 {ts} host-{} app {} ID47 {sd} {msg}",
                rng.random::<u16>(),
                rng.random::<u32>()
            )
        }
        2 => format!(
            "<{}>{} host tag[{}]: {msg}",
            rng.random_range(0..200),
            near.format("%b %e %H:%M:%S"),
            rng.random::<u16>()
        ),
        _ => text(rng, 300).replace(['\n', '\r'], " "),
    }
}

/// Stands for the event id in a template event, replaced per copy.
pub const TEMPLATE_ID: &str = "__fuzz_template_id__";

/// A request body: JSON (one event or an array), NDJSON, raw lines, or a body broken as a whole.
/// `next_id` hands out unique event ids.
pub fn ingest_request(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    next_id: &mut dyn FnMut() -> String,
    max_events: usize,
) -> IngestRequest {
    let n = rng.random_range(1..=max_events.max(1));
    match rng.random_range(0..20) {
        0..=1 => {
            // One client's batch: n events of one template (same service, level, attributes),
            // as real emitters send; what lands in one window row again and again.
            let template = event_json(rng, now, TEMPLATE_ID);
            let events: Vec<String> = (0..n)
                .map(|_| template.replace(TEMPLATE_ID, &next_id()))
                .collect();
            IngestRequest {
                content_type: "application/json",
                service_query: None,
                body: format!("[{}]", events.join(",")).into_bytes(),
                events: n,
            }
        }
        2..=6 => {
            let events: Vec<String> = (0..n).map(|_| event_json(rng, now, &next_id())).collect();
            IngestRequest {
                content_type: "application/json",
                service_query: None,
                body: format!("[{}]", events.join(",")).into_bytes(),
                events: n,
            }
        }
        7..=8 => IngestRequest {
            content_type: "application/json",
            service_query: None,
            body: event_json(rng, now, &next_id()).into_bytes(),
            events: 1,
        },
        9..=13 => {
            let mut body = String::new();
            for _ in 0..n {
                body.push_str(&event_json(rng, now, &next_id()));
                body.push_str(if rng.random_bool(0.1) { "\n\n" } else { "\n" });
            }
            IngestRequest {
                content_type: "application/x-ndjson",
                service_query: None,
                body: body.into_bytes(),
                events: n,
            }
        }
        14..=17 => {
            let lines: Vec<String> = (0..n).map(|_| raw_line(rng, now)).collect();
            let service_query = rng.random_bool(0.4).then(|| {
                let s = text(rng, 20);
                url_encode(if s.trim().is_empty() { "web" } else { &s })
            });
            IngestRequest {
                content_type: "text/plain",
                service_query,
                body: lines.join("\n").into_bytes(),
                events: n,
            }
        }
        _ => {
            // Broken as a whole: truncated, not UTF-8, empty, or not JSON at all.
            let whole = format!("[{}]", event_json(rng, now, &next_id()));
            let body = match rng.random_range(0..4) {
                0 => whole.as_bytes()[..rng.random_range(0..whole.len())].to_vec(),
                1 => {
                    let mut b = whole.into_bytes();
                    let at = rng.random_range(0..b.len());
                    b.insert(at, 0xff);
                    b
                }
                2 => Vec::new(),
                _ => b"{\"a\":".repeat(rng.random_range(1..5_000)),
            };
            IngestRequest {
                content_type: pick(
                    rng,
                    &["application/json", "application/x-ndjson", "text/plain"],
                ),
                service_query: None,
                body,
                events: 0,
            }
        }
    }
}

/// A record written straight into the raw topic, with any broker timestamp: far-future events
/// whose record time is far ahead too (a watermark attack), raw lines, bytes that are nothing.
pub fn raw_record(rng: &mut StdRng, now: DateTime<Utc>, id: &str) -> RawRecord {
    let ts_ms = match rng.random_range(0..5) {
        0 => Some(253_402_300_799_000), // 9999-12-31
        1 => Some(0),
        2 => None,
        3 => Some(now.timestamp_millis() + rng.random_range(0..86_400_000 * 365)),
        _ => Some(now.timestamp_millis()),
    };
    match rng.random_range(0..4) {
        0 => {
            let far = ts_ms
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(now)
                .to_rfc3339();
            RawRecord {
                key: Some(id.as_bytes().to_vec()),
                payload: format!(
                    "{{\"event_id\":\"{id}\",\"timestamp\":\"{far}\",\"level\":\"ERROR\",\"service\":\"payments\",\"message\":\"from the future\",\"attributes\":{}}}",
                    attributes(rng)
                )
                .into_bytes(),
                content_type: "application/json",
                timestamp_ms: ts_ms,
            }
        }
        1 => RawRecord {
            key: rng.random_bool(0.5).then(|| text(rng, 20).into_bytes()),
            payload: raw_line(rng, now).into_bytes(),
            content_type: "text/plain",
            timestamp_ms: ts_ms,
        },
        2 => RawRecord {
            key: None,
            payload: (0..rng.random_range(0..200))
                .map(|_| rng.random::<u8>())
                .collect(),
            content_type: pick(rng, &["application/json", "text/plain"]),
            timestamp_ms: ts_ms,
        },
        _ => RawRecord {
            key: Some(id.as_bytes().to_vec()),
            payload: event_json(rng, now, id).into_bytes(),
            content_type: "application/json",
            timestamp_ms: ts_ms,
        },
    }
}

pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
