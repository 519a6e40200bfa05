//! The same events as each shipper protocol's body, for the gateway's benches (`http`'s
//! protocols phase, `parse`'s per-protocol decode): OTLP protobuf and JSON, an Elasticsearch bulk
//! body of ECS documents, a Loki push; and gzip.

use logpipe_common::event::LogEvent;
use serde_json::{json, Value};

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

/// The events as one OTLP request: one resource per service, as an SDK per process sends them.
pub(crate) fn otlp_body(events: &[LogEvent]) -> Vec<u8> {
    use logpipe_gateway::protocols::otlp::proto::*;
    use prost::Message;
    let s = |v: &str| {
        Some(AnyValue {
            value: Some(Value::String(v.into())),
        })
    };
    let int = |v: i64| {
        Some(AnyValue {
            value: Some(Value::Int(v)),
        })
    };
    let mut by_service: std::collections::BTreeMap<&str, Vec<LogRecord>> = Default::default();
    for e in events {
        let attributes = e
            .attributes
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: int(v.as_i64().unwrap_or(0)),
            })
            .collect();
        by_service.entry(&e.service).or_default().push(LogRecord {
            time_unix_nano: e.timestamp.timestamp_nanos_opt().unwrap_or(0) as u64,
            severity_number: if e.level == logpipe_common::event::Level::Error {
                17
            } else {
                9
            },
            body: s(&e.message),
            attributes,
            ..Default::default()
        });
    }
    ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .map(|(service, records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        KeyValue {
                            key: "service.name".into(),
                            value: s(service),
                        },
                        KeyValue {
                            key: "host.name".into(),
                            value: s("bench-1"),
                        },
                    ],
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "api".into(),
                        version: String::new(),
                    }),
                    log_records: records,
                }],
            })
            .collect(),
    }
    .encode_to_vec()
}

/// The same request in OTLP/JSON.
pub(crate) fn otlp_json(events: &[LogEvent]) -> Vec<u8> {
    let mut by_service: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for e in events {
        let attributes: Vec<Value> = e
            .attributes
            .iter()
            .map(|(k, v)| json!({"key": k, "value": {"intValue": v.to_string()}}))
            .collect();
        by_service.entry(&e.service).or_default().push(json!({
            "timeUnixNano": e.timestamp.timestamp_nanos_opt().unwrap_or(0).to_string(),
            "severityNumber": if e.level == logpipe_common::event::Level::Error { 17 } else { 9 },
            "body": {"stringValue": e.message},
            "attributes": attributes,
        }));
    }
    let resource_logs: Vec<Value> = by_service
        .into_iter()
        .map(|(service, records)| {
            json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": service}},
                    {"key": "host.name", "value": {"stringValue": "bench-1"}}]},
                "scopeLogs": [{"scope": {"name": "api"}, "logRecords": records}],
            })
        })
        .collect();
    serde_json::to_vec(&json!({"resourceLogs": resource_logs})).expect("JSON")
}

/// The events as a Loki push: one stream per service and level, snappy-compressed protobuf.
pub(crate) fn loki_body(events: &[LogEvent]) -> Vec<u8> {
    use logpipe_gateway::protocols::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp};
    use prost::Message;
    let mut streams: std::collections::BTreeMap<String, Vec<EntryAdapter>> = Default::default();
    for e in events {
        let labels = format!(
            "{{service_name=\"{}\", level=\"{}\", host=\"{}\"}}",
            e.service, e.level, e.host
        );
        streams.entry(labels).or_default().push(EntryAdapter {
            timestamp: Some(Timestamp {
                seconds: e.timestamp.timestamp(),
                nanos: e.timestamp.timestamp_subsec_nanos() as i32,
            }),
            line: e.message.clone(),
            structured_metadata: vec![],
        });
    }
    let push = PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, entries)| StreamAdapter { labels, entries })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&push.encode_to_vec())
        .expect("in memory")
}

/// The events as an Elasticsearch bulk body of ECS documents.
pub(crate) fn bulk_body(events: &[LogEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(b"{\"create\":{\"_index\":\"logs-bench\"}}\n");
        let doc = json!({
            "@timestamp": e.timestamp.to_rfc3339(),
            "log": {"level": e.level.as_str(), "logger": e.component},
            "service": {"name": e.service},
            "host": {"name": e.host},
            "message": e.message,
            "http.status": e.attributes.get("http.status"),
            "latency_ms": e.attributes.get("latency_ms"),
        });
        serde_json::to_writer(&mut out, &doc).expect("JSON");
        out.push(b'\n');
    }
    out
}
