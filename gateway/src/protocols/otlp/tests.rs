use super::proto::*;
use super::*;
use serde_json::json;

fn ctx() -> ParseContext<'static> {
    ParseContext {
        received_at: "2026-12-05T12:00:00Z".parse().unwrap(),
        max_events: 100,
        max_future_secs: 10,
        max_event_bytes: 4096,
        default_service: "unknown_service",
        id_seed: Some(b"body-digest".to_vec()),
        tenant: None,
        trace_id: None,
    }
}

fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::String(v.into())),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
    }
}

fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("host.name", s("web-1")),
                    kv("deployment.environment", s("prod")),
                ],
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "app.payments".into(),
                    version: "1.0".into(),
                }),
                log_records: records,
            }],
        }],
    }
}

fn record(body: &str, severity: i32) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_764_935_999_123_456_789,
        severity_number: severity,
        body: s(body),
        trace_id: vec![0x4b; 16],
        span_id: vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        attributes: vec![
            kv(
                "http.status_code",
                Some(AnyValue {
                    value: Some(Value::Int(503)),
                }),
            ),
            kv(
                "tags",
                Some(AnyValue {
                    value: Some(Value::Array(ArrayValue {
                        values: vec![s("a").unwrap(), s("b").unwrap()],
                    })),
                }),
            ),
        ],
        ..Default::default()
    }
}

#[test]
fn a_protobuf_record_maps_to_an_event_field_by_field() {
    let req = request(vec![record("payment declined", 17)]);
    let body = req.encode_to_vec();
    let decoded = decode(Encoding::Protobuf, &body).unwrap();
    let p = to_events(&ctx(), &decoded);
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let e = &p.events[0];
    assert_eq!(e.service, "checkout");
    assert_eq!(e.host, "web-1");
    assert_eq!(e.component, "app.payments");
    assert_eq!(e.level, Level::Error);
    assert_eq!(e.message, "payment declined");
    assert_eq!(
        e.timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "2025-12-05T11:59:59.123456789Z"
    );
    assert_eq!(e.trace_id.as_deref(), Some("4b".repeat(16).as_str()));
    assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(
        Value_json(&e.attributes),
        json!({"http.status_code": 503, "tags": ["a", "b"], "resource": {"deployment.environment": "prod"}})
    );
    assert_eq!(e.event_id.len(), 26);
    // The same body gives the same ids: a resend is stored once.
    assert_eq!(to_events(&ctx(), &decoded).events[0].event_id, e.event_id);
}

#[allow(non_snake_case)]
fn Value_json(m: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Object(m.clone())
}

#[test]
fn otlp_json_reads_camel_case_string_integers_hex_ids_and_enum_names() {
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
        "scopeLogs": [{"scope": {"name": "s"}, "logRecords": [
            {"timeUnixNano": "1764936000000000000", "severityNumber": 13, "body": {"stringValue": "warned"},
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "attributes": [{"key": "n", "value": {"intValue": "42"}}, {"key": "b", "value": {"bytesValue": "aGk="}},
                            {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "x", "value": {"doubleValue": 1.5}}]}}}]},
            {"observed_time_unix_nano": 1764936000000000000u64, "severity_number": "SEVERITY_NUMBER_FATAL",
             "body": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}}
        ]}]
    }]});
    let req = decode(Encoding::Json, body.to_string().as_bytes()).unwrap();
    let p = to_events(&ctx(), &req);
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let (a, b) = (&p.events[0], &p.events[1]);
    assert_eq!((a.level, b.level), (Level::Warn, Level::Fatal));
    assert_eq!(
        a.trace_id.as_deref(),
        Some("5b8efff798038103d269b633813fc60c")
    );
    assert_eq!(
        Value_json(&a.attributes),
        json!({"n": 42, "b": "aGk=", "kv": {"x": 1.5}})
    );
    assert_eq!(
        b.message, r#"{"k":true}"#,
        "a structured body as its JSON text"
    );
    assert_eq!(b.timestamp.to_rfc3339(), "2025-12-05T12:00:00+00:00");
    assert_ne!(a.event_id, b.event_id);
}

#[test]
fn a_record_without_service_or_time_or_severity_gets_the_defaults() {
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: vec![LogRecord {
                    severity_text: "warning".into(),
                    body: s("hello"),
                    ..Default::default()
                }],
            }],
        }],
    };
    let p = to_events(&ctx(), &req);
    let e = &p.events[0];
    assert_eq!(e.service, "unknown_service");
    assert_eq!(e.timestamp, ctx().received_at);
    assert_eq!(e.level, Level::Warn, "the severity text when no number");
    assert_eq!(e.trace_id, None, "no id is not an all-zero id");
}

#[test]
fn bad_records_are_refused_by_index_and_the_rest_kept() {
    let mut no_body = record("", 9);
    no_body.body = None;
    let mut nul = record("a\u{0}b", 9);
    nul.attributes.clear();
    let future = LogRecord {
        time_unix_nano: 1_900_000_000_000_000_000,
        ..record("later", 9)
    };
    let p = to_events(
        &ctx(),
        &request(vec![record("ok", 9), no_body, nul, future]),
    );
    assert_eq!(p.events.len(), 1);
    let refused: Vec<(usize, &str)> = p.rejected.iter().map(|r| (r.index, r.error)).collect();
    assert_eq!(
        refused,
        vec![
            (1, "missing_field"),
            (2, "nul_character"),
            (3, "timestamp_in_future")
        ]
    );
    assert!(summary(&p.rejected).starts_with("record 1: field `message`"));
}

#[test]
fn answers_are_in_the_requests_encoding() {
    let answer = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 2,
            error_message: "record 1: x".into(),
        }),
    };
    let resp = Encoding::Json.respond(StatusCode::OK, &answer);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let resp = error_response(
        Encoding::Protobuf,
        StatusCode::SERVICE_UNAVAILABLE,
        "down".into(),
    );
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        json!({"partialSuccess": {"rejectedLogRecords": 2, "errorMessage": "record 1: x"}})
    );
}

#[test]
fn bodies_that_are_not_otlp_are_refused_not_panicked_on() {
    // A truncated message, a varint that never ends, a wrong wire type, a length past the end.
    let good = request(vec![record("x", 9)]).encode_to_vec();
    for bad in [
        &good[..good.len() - 3],
        &[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[0x0b, 0x00][..],
        &[0x0a, 0x7f, 0x00][..],
    ] {
        assert!(decode(Encoding::Protobuf, bad).is_err(), "{bad:?}");
    }
    assert!(decode(Encoding::Json, b"{\"resourceLogs\": 5}").is_err());
    assert!(decode(
        Encoding::Json,
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#
    )
    .is_err());
}

#[test]
fn values_nested_past_the_attribute_depth_are_refused_and_past_protobufs_limit_do_not_decode() {
    let mut v = s("leaf").unwrap();
    for _ in 0..20 {
        v = AnyValue {
            value: Some(Value::Array(ArrayValue { values: vec![v] })),
        };
    }
    let mut r = record("deep", 9);
    r.attributes = vec![kv("deep", Some(v.clone()))];
    let p = to_events(&ctx(), &request(vec![r]));
    assert_eq!(p.rejected[0].error, "too_deep");
    for _ in 0..200 {
        v = AnyValue {
            value: Some(Value::Array(ArrayValue { values: vec![v] })),
        };
    }
    let mut r = record("deeper", 9);
    r.attributes = vec![kv("deep", Some(v))];
    let body = request(vec![r]).encode_to_vec();
    assert!(
        decode(Encoding::Protobuf, &body).is_err(),
        "prost's recursion limit"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

    /// Any bytes, and any corruption of a valid body, decode or are refused; what decodes maps to
    /// events or refusals, one per record.
    #[test]
    fn any_body_decodes_or_is_refused_and_every_record_is_accounted_for(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        flip in 0usize..200,
        to in proptest::prelude::any::<u8>(),
        text in "\\PC{0,120}",
    ) {
        for body in [bytes.clone(), {
            let mut good = request(vec![record("a", 9), record(&text, 21)]).encode_to_vec();
            let i = flip % good.len();
            good[i] = to;
            good
        }] {
            if let Ok(req) = decode(Encoding::Protobuf, &body) {
                let count: usize = req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
                let p = to_events(&ctx(), &req);
                proptest::prop_assert_eq!(p.events.len() + p.rejected.len(), count);
            }
        }
        let _ = decode(Encoding::Json, &bytes);
        let _ = decode(Encoding::Json, text.as_bytes());
    }
}
