//! The collector's reading of a record (`RawEvent`, the text kept, fields located, attributes
//! scanned) against the gateway's (`LogEvent`, a tree), on generated records: both accept the
//! same records with the same content, and refuse the same ones with the same error.
//!
//! Records are built as JSON text, so they hold what serde would never write: escapes of every
//! kind, lone surrogates, numbers past `f64` and past PostgreSQL's numeric, nesting past the
//! bound, wrong types, missing and repeated fields. Attribute keys are written in order and once
//! (the one documented difference: a key written twice counts twice, see `raw_event`).

use logpipe_common::event::EventError;
use logpipe_common::{LogEvent, RawEvent};
use proptest::prelude::*;

type Token = BoxedStrategy<String>;

/// Weighted choices, the hostile ones left out of a clean record.
fn choose(clean: Vec<(u32, Token)>, hostile: Vec<(u32, Token)>, is_clean: bool) -> Token {
    let mut all = clean;
    if !is_clean {
        all.extend(hostile);
    }
    prop::strategy::Union::new_weighted(all).boxed()
}

fn lit(s: &'static str) -> Token {
    Just(s.to_owned()).boxed()
}

fn string_token(clean: bool) -> Token {
    choose(
        vec![
            (
                24,
                "[a-z]{1,8}"
                    .prop_map(|s| serde_json::to_string(&s).unwrap())
                    .boxed(),
            ),
            (
                12,
                "\\PC{0,6}x"
                    .prop_map(|s| serde_json::to_string(&s).unwrap())
                    .boxed(),
            ),
            (6, lit(r#""\u00e9\u4e2d\ud83d\ude00\/\"\\\nz""#)),
        ],
        vec![
            (1, lit(r#""""#)),
            (1, lit(r#""  ""#)),
            (1, lit(r#""a\u0000b""#)),
            (1, lit(r#""x\ud800""#)),
            (1, lit(r#""\udc00""#)),
            (1, lit(r#""\ud800\u0041""#)),
            (
                1,
                (120usize..140)
                    .prop_map(|n| format!("\"{}\"", "n".repeat(n)))
                    .boxed(),
            ),
            (
                1,
                (16_300usize..16_400)
                    .prop_map(|n| format!("\"{}\"", "b".repeat(n)))
                    .boxed(),
            ),
        ],
        clean,
    )
}

fn number_token(clean: bool) -> Token {
    let any_number = prop_oneof![
        3 => any::<i64>().prop_map(|n| n.to_string()),
        2 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        2 => prop::sample::select(vec![
            "0", "-0", "1.50", "1E+2", "1e308", "1e309", "-1e400", "5e-324", "4.9e-325",
            "1.7976931348623157e308", "18446744073709551616", "1e-400", "0e-99999",
            "123456789012345678901234567890123456789012345",
            "0.0000000000000000000000000000000000000000001",
        ])
        .prop_map(str::to_owned),
        1 => ("[1-9][0-9]{0,60}", proptest::option::of(-2000i32..2000))
            .prop_map(|(d, e)| e.map_or(d.clone(), |e| format!("{d}e{e}"))),
    ];
    if clean {
        any_number
            .prop_filter("within f64", |t| serde_json::from_str::<f64>(t).is_ok())
            .boxed()
    } else {
        any_number.boxed()
    }
}

fn scalar_token(clean: bool) -> Token {
    prop_oneof![
        3 => string_token(clean),
        3 => number_token(clean),
        1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn object(entries: Vec<(String, String)>) -> String {
    let body: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap()))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A value's JSON text; object keys in order, as a map iterates them.
fn value_token(clean: bool) -> Token {
    let keys = if clean {
        "[a-zé]{0,3}"
    } else {
        "[a-z\\x00é]{0,3}"
    };
    let tree = scalar_token(clean).prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::btree_map(keys, inner, 0..4)
                .prop_map(|m| object(m.into_iter().collect())),
        ]
    });
    // Nesting near the bound of 16, which the recursion above does not reach.
    let wraps = if clean { 0usize..10 } else { 0usize..20 };
    (tree, wraps, any::<bool>())
        .prop_map(|(v, wrap, arrays)| {
            (0..wrap).fold(v, |v, _| {
                if arrays {
                    format!("[{v}]")
                } else {
                    format!("{{\"k\":{v}}}")
                }
            })
        })
        .boxed()
}

fn attributes_token(clean: bool) -> BoxedStrategy<Option<String>> {
    let keys = if clean {
        "[a-z.]{1,6}"
    } else {
        "[a-z.\\x00]{1,6}"
    };
    let mut options: Vec<(u32, BoxedStrategy<Option<String>>)> = vec![
        (1, Just(None).boxed()),
        (
            1,
            prop::sample::select(vec!["{}", " { } "])
                .prop_map(|s| Some(s.to_owned()))
                .boxed(),
        ),
        (
            6,
            prop::collection::btree_map(keys, value_token(clean), 0..6)
                .prop_map(|m| Some(object(m.into_iter().collect())))
                .boxed(),
        ),
    ];
    if !clean {
        options.push((
            1,
            prop::sample::select(vec!["null", "[]", "5", "\"s\""])
                .prop_map(|s| Some(s.to_owned()))
                .boxed(),
        ));
        options.push((
            1,
            prop::collection::btree_map("[a-z]{1,4}", scalar_token(true), 60..70)
                .prop_map(|m| Some(object(m.into_iter().collect())))
                .boxed(),
        ));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

/// A field's JSON text, or absent; a hostile record may also say `null`.
fn optional(s: Token, clean: bool) -> BoxedStrategy<Option<String>> {
    if clean {
        return proptest::option::weighted(0.8, s).boxed();
    }
    prop_oneof![
        1 => Just(None),
        1 => Just(Some("null".to_owned())),
        8 => s.prop_map(Some),
    ]
    .boxed()
}

fn required(s: Token, clean: bool) -> BoxedStrategy<Option<String>> {
    if clean {
        s.prop_map(Some).boxed()
    } else {
        optional(s, false)
    }
}

/// A record: clean (every field within its bounds; only the attributes' numbers and nesting vary
/// freely) or hostile (any field may be wrong, missing, `null` or repeated).
fn record() -> impl Strategy<Value = String> {
    any::<bool>().prop_flat_map(|clean| {
        let timestamps = if clean {
            vec![
                "\"2026-12-06T08:00:00.123Z\"",
                "\"2026-12-06T08:00:00+02:00\"",
                "\"0001-01-01T00:00:00Z\"",
                "\"9999-12-31T23:59:59Z\"",
            ]
        } else {
            vec![
                "\"2026-12-06T08:00:00Z\"",
                "\"2026-12-06T08:00:00+02:00\"",
                "\"0001-01-01T00:00:00Z\"",
                "\"2026-12-06T08:00:00.5Z\"",
                "\"2026-01-01T00:00:00-05:00\"",
                "\"9999-12-31T23:59:59Z\"",
                "\"0000-12-31T23:59:59Z\"",
                "\"+10000-01-01T00:00:00Z\"",
                "\"yesterday\"",
                "12",
                "null",
            ]
        };
        let levels = if clean {
            vec!["\"INFO\"", "\"warning\"", "\"Fatal\""]
        } else {
            vec![
                "\"INFO\"",
                "\"warning\"",
                "\"ERROR\"",
                "\"FATAL\"",
                "\"debug\"",
                "\"err\"",
                "\"LOUD\"",
                "3",
            ]
        };
        let extras = if clean {
            vec!["", r#","unknown":{"a":[1]}"#]
        } else {
            vec!["", r#","level":"INFO""#]
        };
        let trace = prop_oneof![
            string_token(clean),
            "[a-f0-9]{60,70}".prop_map(|s| format!("\"{s}\""))
        ]
        .prop_filter("within 64 when clean", move |t| !clean || t.len() <= 66)
        .boxed();
        let span = prop_oneof![
            string_token(clean),
            "[a-f0-9]{30,34}".prop_map(|s| format!("\"{s}\""))
        ]
        .prop_filter("within 32 when clean", move |t| !clean || t.len() <= 34)
        .boxed();
        (
            required(string_token(clean), clean),
            prop::sample::select(timestamps),
            prop::sample::select(levels),
            required(string_token(clean), clean),
            optional(string_token(clean), clean),
            optional(string_token(clean), clean),
            required(string_token(clean), clean),
            optional(trace, clean),
            optional(span, clean),
            attributes_token(clean),
            prop::sample::select(extras),
        )
            .prop_map(
                |(
                    event_id,
                    timestamp,
                    level,
                    service,
                    component,
                    host,
                    message,
                    trace_id,
                    span_id,
                    attributes,
                    extra,
                )| {
                    let mut fields = vec![
                        format!("\"timestamp\":{timestamp}"),
                        format!("\"level\":{level}"),
                    ];
                    for (name, v) in [
                        ("event_id", event_id),
                        ("service", service),
                        ("component", component),
                        ("host", host),
                        ("message", message),
                        ("trace_id", trace_id),
                        ("span_id", span_id),
                        ("attributes", attributes),
                    ] {
                        if let Some(v) = v {
                            fields.push(format!("\"{name}\":{v}"));
                        }
                    }
                    format!("{{{}{extra}}}", fields.join(", "))
                },
            )
    })
}

/// An object's top-level keys in the order written.
fn top_level_keys(json: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(json).unwrap().0
}

/// Both readings of one record agree (see the module documentation).
fn agree(record: &str) -> Result<(), TestCaseError> {
    let raw = RawEvent::from_json(record.as_bytes());
    let tree = LogEvent::from_json(record.as_bytes());
    match (raw, tree) {
        (Ok(raw), Ok(tree)) => {
            let stored = raw.attributes_json();
            let mut read = raw.to_event();
            read.attributes = tree.attributes.clone();
            prop_assert_eq!(read, tree.clone(), "{}", record);
            // Stored as written (the same values when read), or, where a number had to be
            // rewritten, exactly as the tree is written.
            let values: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(stored).unwrap();
            prop_assert!(
                values == tree.attributes
                    || stored == serde_json::to_string(&tree.attributes).unwrap(),
                "{} stored as {}",
                record,
                stored
            );
            // What COPY sends a jsonb column: the same object, its keys in jsonb's order.
            let mut for_jsonb = Vec::new();
            raw.write_attributes_for_jsonb(&mut for_jsonb);
            let for_jsonb = std::str::from_utf8(&for_jsonb).unwrap();
            let reordered: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(for_jsonb).unwrap();
            prop_assert_eq!(&reordered, &values, "{} for jsonb as {}", stored, for_jsonb);
            let keys = top_level_keys(for_jsonb);
            prop_assert!(
                keys.windows(2)
                    .all(|w| (w[0].len(), &w[0]) <= (w[1].len(), &w[1]))
                    || stored.contains('\\'),
                "{} for jsonb as {}",
                stored,
                for_jsonb
            );
            // What the gateway sends on: the same event, read either way.
            let mut wire = Vec::new();
            raw.write_json(&mut wire);
            let again = RawEvent::from_json(&wire);
            prop_assert!(
                again.is_ok(),
                "{} wrote {:?}",
                record,
                String::from_utf8_lossy(&wire)
            );
            prop_assert_eq!(again.unwrap().to_event(), raw.to_event(), "{}", record);
            let mut tree_again = LogEvent::from_json(&wire).expect("the tree reads it too");
            tree_again.attributes = tree.attributes.clone();
            prop_assert_eq!(&tree_again, &tree, "{}", record);
            for (k, v) in &tree.attributes {
                let a = raw.attribute(k).expect("every attribute is found");
                // A rewritten number reads back within an ulp of its first reading: serde_json
                // does not promise the round trip without its `float_roundtrip` feature.
                let close = match (a.as_f64(), v.as_f64()) {
                    (Some(x), Some(y)) => x == y || (x - y).abs() <= y.abs() * 1e-15,
                    (x, y) => x == y,
                };
                prop_assert!(close, "{:?} read as {:?} in {}", v, a.as_f64(), record);
                let s = a.as_str();
                prop_assert_eq!(s.as_deref(), v.as_str());
            }
        }
        (Err(a), Err(b)) => {
            prop_assert_eq!(a.kind(), b.kind(), "{} / {} for {}", a, b, record);
            if !matches!(a, EventError::Json(_)) {
                prop_assert_eq!(a, b, "{}", record);
            }
        }
        (raw, tree) => prop_assert!(false, "raw {:?} but tree {:?} for {}", raw, tree, record),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_collectors_reading_accepts_and_refuses_what_the_gateways_does(record in record()) {
        agree(&record)?;
    }
}

#[test]
fn a_valid_event_written_by_serde_reads_back_field_for_field() {
    let e: LogEvent = serde_json::from_str(
        r#"{"event_id":"01J","timestamp":"2026-12-06T08:00:00Z","level":"ERROR","service":"pay",
            "message":"m \"q\"","attributes":{"http.status":502,"b":{"c":[1,"x"]},"u":"\u00e9"}}"#,
    )
    .unwrap();
    let raw = RawEvent::from_event(&e).unwrap();
    assert_eq!(raw.to_event(), e);
    assert_eq!(raw.message(), "m \"q\"");
    assert_eq!(raw.attribute("http.status").unwrap().as_f64(), Some(502.0));
    assert_eq!(raw.attribute("u").unwrap().as_str().as_deref(), Some("é"));
    assert!(
        raw.attribute("c").is_none(),
        "only top-level keys are attributes"
    );
}

#[test]
fn attributes_are_kept_as_written_unless_a_number_would_not_fit_postgresqls_numeric() {
    let at = |attrs: &str| {
        let r = format!(
            r#"{{"event_id":"1","timestamp":"2026-12-06T08:00:00Z","level":"INFO","service":"s","message":"m","attributes":{attrs}}}"#
        );
        RawEvent::from_json(r.as_bytes())
    };
    let kept = at(r#"{"b": 1.50, "a" : [ "x" ]}"#).unwrap();
    assert_eq!(kept.attributes_json(), r#"{"b": 1.50, "a" : [ "x" ]}"#);
    // PostgreSQL refuses '1e-99999'::numeric; serde_json reads it as 0, and so it is stored.
    let rewritten = at(r#"{"tiny": 1e-99999, "big": 1e300}"#).unwrap();
    assert_eq!(rewritten.attributes_json(), r#"{"big":1e+300,"tiny":0.0}"#);
    assert_eq!(at(r#"{"x": 1e400}"#).unwrap_err().kind(), "invalid_json");
}

#[test]
fn a_key_written_twice_counts_twice_and_reads_as_its_last_value() {
    let entries: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    let twice = format!("{{{},{}}}", entries.join(","), entries.join(","));
    let r = format!(
        r#"{{"event_id":"1","timestamp":"2026-12-06T08:00:00Z","level":"INFO","service":"s","message":"m","attributes":{twice}}}"#
    );
    assert_eq!(
        RawEvent::from_json(r.as_bytes()).unwrap_err(),
        EventError::TooManyAttributes(80)
    );
    let r = r#"{"event_id":"1","timestamp":"2026-12-06T08:00:00Z","level":"INFO","service":"s","message":"m","attributes":{"a":1,"\u0061":2}}"#;
    let e = RawEvent::from_json(r.as_bytes()).unwrap();
    assert_eq!(e.attribute("a").unwrap().as_f64(), Some(2.0));
    assert_eq!(e.to_event(), LogEvent::from_json(r.as_bytes()).unwrap());
}

#[test]
fn attributes_go_to_jsonb_in_its_key_order_keeping_the_last_of_a_key_written_twice() {
    let jsonb = |attrs: &str| {
        let r = format!(
            r#"{{"event_id":"1","timestamp":"2026-12-06T08:00:00Z","level":"INFO","service":"s","message":"m","attributes":{attrs}}}"#
        );
        let mut out = Vec::new();
        RawEvent::from_json(r.as_bytes())
            .unwrap()
            .write_attributes_for_jsonb(&mut out);
        String::from_utf8(out).unwrap()
    };
    // Shorter keys first, then bytewise; equal keys in the order written, values as written.
    assert_eq!(
        jsonb(r#"{ "zz" : 1, "b":2.50, "a":{"y":1,"x":2}, "b":3 }"#),
        r#"{"a":{"y":1,"x":2},"b":2.50,"b":3,"zz":1}"#
    );
    // Already in order, or an escaped key: as written.
    assert_eq!(jsonb(r#"{"b": 1, "aa": 2}"#), r#"{"b": 1, "aa": 2}"#);
    assert_eq!(jsonb(r#"{"zz":1,"\u0061":2}"#), r#"{"zz":1,"\u0061":2}"#);
    assert_eq!(jsonb("{}"), "{}");
}

/// Attributes of a few entries: short keys (so they repeat and tie on length), some escaped, in
/// any order.
fn unordered_attributes() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        6 => "[a-c]{0,3}",
        1 => Just("\\u0061".to_owned()),
        1 => Just("é".to_owned()),
    ];
    prop::collection::vec((key, any::<i16>(), " ?"), 0..12).prop_map(|entries| {
        let members: Vec<String> = entries
            .iter()
            .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn attributes_reordered_for_jsonb_are_the_same_object_with_the_same_last_values(
        attrs in unordered_attributes()
    ) {
        let r = format!(
            r#"{{"event_id":"1","timestamp":"2026-12-06T08:00:00Z","level":"INFO","service":"s","message":"m","attributes":{attrs}}}"#
        );
        let e = RawEvent::from_json(r.as_bytes()).unwrap();
        let mut out = Vec::new();
        e.write_attributes_for_jsonb(&mut out);
        let out = String::from_utf8(out).unwrap();
        // serde_json's map keeps the last of a key written twice, as jsonb does.
        let before: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&attrs).unwrap();
        let after: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&out).unwrap();
        prop_assert_eq!(&before, &after, "{} sent as {}", attrs, out);
        if !attrs.contains('\\') {
            let keys = top_level_keys(&out);
            prop_assert!(
                keys.windows(2).all(|w| (w[0].len(), &w[0]) <= (w[1].len(), &w[1])),
                "{} sent as {}",
                attrs,
                out
            );
            prop_assert_eq!(keys.len(), top_level_keys(&attrs).len());
        } else {
            prop_assert_eq!(&out, &attrs);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// An event as serde writes it is written back byte for byte, so a record that passes
    /// through the gateway unchanged reaches Kafka as it would have before.
    #[test]
    fn an_event_serde_wrote_is_written_back_byte_for_byte(record in record()) {
        if let Ok(tree) = LogEvent::from_json(record.as_bytes()) {
            let serde = tree.to_json();
            let raw = RawEvent::from_json(&serde).unwrap();
            let mut wire = Vec::new();
            raw.write_json(&mut wire);
            prop_assert_eq!(String::from_utf8(wire).unwrap(), String::from_utf8(serde).unwrap());
        }
    }
}

#[test]
fn an_event_read_without_an_id_is_checked_after_the_reader_fills_it_in() {
    let record = r#"{"event_id":null,"timestamp":"2026-12-06T08:00:00Z","level":"warning",
        "service":"pay","message":"m","attributes":{"b":1, "a":[true]}}"#;
    let unchecked = RawEvent::read_json(record).unwrap();
    assert_eq!(unchecked.event_id(), "");
    assert_eq!(
        RawEvent::read_json(record).unwrap().check().unwrap_err(),
        EventError::Empty("event_id")
    );
    let mut filled = unchecked;
    filled.set_event_id("01JFILLED".into());
    filled.set_trace_id("4bf92f3577b34da6a3ce929d0e0e4736".into());
    let event = filled.check().unwrap();
    let mut wire = Vec::new();
    event.write_json(&mut wire);
    assert_eq!(
        std::str::from_utf8(&wire).unwrap(),
        r#"{"event_id":"01JFILLED","timestamp":"2026-12-06T08:00:00Z","level":"WARN","service":"pay","component":"","host":"","message":"m","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","attributes":{"b":1, "a":[true]}}"#
    );
}
