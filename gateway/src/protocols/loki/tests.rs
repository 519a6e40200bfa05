use super::*;
use serde_json::json;

fn ctx() -> ParseContext<'static> {
    ParseContext {
        received_at: "2026-12-05T12:00:00Z".parse().unwrap(),
        max_events: 100,
        max_future_secs: 10,
        max_event_bytes: 4096,
        default_service: "unknown",
        id_seed: Some(b"body-digest".to_vec()),
        tenant: None,
        trace_id: None,
    }
}

const NS: i128 = 1_764_935_999_123_456_789;

#[test]
fn label_sets_parse_with_escapes_and_broken_ones_are_refused() {
    assert_eq!(
        parse_labels(r#"{job="api", level="error",msg="a \"q\" \\ b"}"#).unwrap(),
        vec![
            ("job".to_owned(), "api".to_owned()),
            ("level".to_owned(), "error".to_owned()),
            ("msg".to_owned(), r#"a "q" \ b"#.to_owned())
        ]
    );
    assert_eq!(parse_labels("{}").unwrap(), vec![]);
    for bad in [
        r#"job="api""#,
        r#"{job="api"#,
        r#"{job=api}"#,
        r#"{="x"}"#,
        r#"{a="1" b="2"}"#,
        r#"{a="\"#,
    ] {
        assert!(parse_labels(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_snappy_protobuf_push_maps_labels_metadata_and_keeps_the_nanoseconds() {
    let push = PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{service_name="checkout", level="warn", host="web-1", env="prod"}"#.into(),
            entries: vec![EntryAdapter {
                timestamp: Some(Timestamp {
                    seconds: (NS / 1_000_000_000) as i64,
                    nanos: (NS % 1_000_000_000) as i32,
                }),
                line: "slow charge ✓".into(),
                structured_metadata: vec![
                    LabelPair {
                        name: "trace_id".into(),
                        value: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    },
                    LabelPair {
                        name: "order".into(),
                        value: "42".into(),
                    },
                ],
            }],
        }],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&push.encode_to_vec())
        .unwrap();
    let streams = decode(true, &body, 1 << 20).unwrap();
    let p = to_events(&ctx(), streams);
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let e = &p.events[0];
    assert_eq!(
        (
            e.service.as_str(),
            e.level,
            e.host.as_str(),
            e.message.as_str()
        ),
        ("checkout", Level::Warn, "web-1", "slow charge ✓")
    );
    assert_eq!(
        e.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        Value::Object(e.attributes.clone()),
        json!({"env": "prod", "order": "42", "timestamp_ns": NS.to_string()})
    );
    assert_eq!(e.timestamp.timestamp_nanos_opt().map(i128::from), Some(NS));
}

#[test]
fn a_json_push_takes_string_or_number_timestamps_and_optional_metadata() {
    let body = json!({"streams": [{"stream": {"app": "api", "detected_level": "bogus"}, "values": [
        ["1764936000000000000", "one"],
        [1764936000000000000i64, "two", {"user": "u1", "n": 5}],
    ]}]});
    let streams = decode(false, body.to_string().as_bytes(), 1 << 20).unwrap();
    let p = to_events(&ctx(), streams);
    assert_eq!(p.events.len(), 2, "{:?}", p.rejected);
    assert_eq!(p.events[0].service, "api");
    assert_eq!(p.events[0].level, Level::Info);
    assert_eq!(
        p.events[0].attributes["level"], "bogus",
        "an unknown level is kept"
    );
    assert_eq!(
        p.events[1].attributes["n"], "5",
        "metadata values are text in Loki"
    );
    assert_ne!(p.events[0].event_id, p.events[1].event_id);
    assert!(decode(
        false,
        br#"{"streams":[{"values":[["soon","x"]]}]}"#,
        1 << 20
    )
    .is_err());
    assert!(decode(false, br#"{"streams":[{"values":[[1]]}]}"#, 1 << 20).is_err());
}

#[test]
fn bad_entries_are_refused_by_index_and_the_rest_kept() {
    let streams = vec![Stream {
        labels: vec![("job".into(), "x".into())],
        entries: vec![
            (NS, "fine".into(), vec![]),
            (NS, String::new(), vec![]),
            (NS, "nul \u{0}".into(), vec![]),
            (i128::MAX, "far".into(), vec![]),
            (2_000_000_000_000_000_000, "future".into(), vec![]),
        ],
    }];
    let p = to_events(&ctx(), streams);
    let kinds: Vec<(usize, &str)> = p.rejected.iter().map(|r| (r.index, r.error)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, "missing_field"),
            (2, "nul_character"),
            (3, "timestamp_out_of_range"),
            (4, "timestamp_in_future")
        ]
    );
    assert_eq!(p.events.len(), 1);
}

#[test]
fn a_snappy_body_claiming_more_than_the_limit_is_413_before_it_is_decoded() {
    let big = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 2 << 20])
        .unwrap();
    assert!(big.len() < 200 << 10);
    assert!(matches!(
        decode(true, &big, 1 << 20),
        Err(ApiError::PayloadTooLarge(_))
    ));
    assert!(matches!(
        decode(true, b"not snappy at all", 1 << 20),
        Err(ApiError::BadRequest(_))
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

    /// Any body, either encoding, and any label text: decoded or refused, never a panic; what
    /// decodes maps every entry to an event or a refusal.
    #[test]
    fn any_push_body_or_label_text_is_read_or_refused(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        labels in "\\PC{0,60}",
    ) {
        let _ = parse_labels(&labels);
        let _ = parse_labels(&format!("{{a=\"{labels}\"}}"));
        for protobuf in [true, false] {
            if let Ok(streams) = decode(protobuf, &bytes, 1 << 16) {
                let count: usize = streams.iter().map(|s| s.entries.len()).sum();
                let p = to_events(&ctx(), streams);
                proptest::prop_assert_eq!(p.events.len() + p.rejected.len(), count);
            }
        }
        let compressed = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
        let _ = decode(true, &compressed, 1 << 16);
    }
}
