//! Attributes go to PostgreSQL as the text they arrived in (`RawEvent`): every record the
//! collector's reading accepts must be one jsonb takes, or one record would refuse its whole
//! batch. Generated records (the fuzz suite's grammar: numbers past every type edge and past
//! numeric's, lone surrogates, long and deep values) are written through the collector's own
//! `Db::write_batch` against the real PostgreSQL, and read back.

use chrono::Utc;
use logpipe_collector::db::{BatchWrite, Db, StoredEvent};
use logpipe_common::{LogEvent, RawEvent};
use logpipe_integration_tests as it;
use rand::SeedableRng;
use serde_json::Value;

/// The same values, numbers within an ulp (a number rewritten for numeric reads back so).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= y.abs() * 1e-15
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

/// The JSON text with every number as Rust reads it into an `f64` and writes it back: numeric
/// writes `f64::MAX` out in 309 digits, which serde_json (without its `float_roundtrip` feature)
/// reads as past `f64`.
fn numbers_as_f64(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some((_, c)) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.push(chars.next().unwrap().1),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '-' | '0'..='9' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !matches!(d, '0'..='9' | '-' | '+' | '.' | 'e' | 'E') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                let n: f64 = text[i..end].parse().unwrap();
                out.push_str(&format!("{n:e}"));
            }
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn every_record_the_collector_accepts_is_stored_with_its_attributes_as_jsonb() {
    let seed = it::fuzz::seed_from_env();
    eprintln!("seed {seed} (LOGPIPE_FUZZ_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let name = it::unique("raw_attrs");
    let config = it::collector_config(&name, 1);
    let pool = it::schema_pool(&name).await;
    let db = Db::connect(&config.database).await.unwrap();
    logpipe_collector::storage::first_pass(&db, &config.storage)
        .await
        .unwrap();
    let now = Utc::now();
    let mut accepted: Vec<(String, RawEvent)> = Vec::new();
    // Numbers serde_json reads (as 0 or a finite f64) but numeric refuses as written: past its
    // ±16,383-digit exponent, or 20,000 digits after the point.
    let refused_as_written = [
        "0e-99999".to_owned(),
        "1e-99999".to_owned(),
        format!("{}e-300", "9".repeat(300)),
        format!("0.{}1", "0".repeat(20_000)),
    ];
    let fixed = refused_as_written.iter().enumerate().map(|(i, n)| {
        format!(
            r#"{{"event_id":"fixed-{i}","timestamp":"{}","level":"INFO","service":"s","message":"m","attributes":{{"n":{n},"deep":[{{"n":{n}}}]}}}}"#,
            now.to_rfc3339()
        )
    });
    // Keys out of jsonb's order (shorter first, then bytewise) and written twice: COPY sends the
    // top-level entries in jsonb's order, equal keys in the order written, so jsonb keeps the
    // last as the tree does; with an escaped key the text goes as it arrived.
    let reordered = [
        r#"{"zz":1,"b":2,"a":5,"b":3,"ab":{"y":1,"x":2}}"#,
        r#"{"zz":1,"b":2,"a\u0062":4,"ab":6,"a":[]}"#,
    ]
    .iter()
    .enumerate()
    .map(|(i, attrs)| {
        format!(
            r#"{{"event_id":"order-{i}","timestamp":"{}","level":"INFO","service":"s","message":"m","attributes":{attrs}}}"#,
            now.to_rfc3339()
        )
    });
    let fixed = fixed.chain(reordered);
    let generated: Vec<String> = (0..3_000)
        .map(|i| it::fuzz::gen::event_json(&mut rng, now, &format!("ra-{i}")))
        .collect();
    for record in fixed.chain(generated) {
        if let Ok(e) = RawEvent::from_json(record.as_bytes()) {
            accepted.push((record, e));
        }
    }
    assert!(accepted.len() > 1_000, "{} accepted", accepted.len());
    let fixed = accepted
        .iter()
        .filter(|(_, e)| e.event_id().starts_with("fixed-"))
        .count();
    assert_eq!(fixed, refused_as_written.len(), "each is a valid record");
    let alerts = logpipe_collector::detect::AlertSettings::default();
    let mut offset = 0i64;
    for chunk in accepted.chunks(250) {
        let events = chunk
            .iter()
            .map(|(_, e)| {
                offset += 1;
                StoredEvent {
                    event: e,
                    partition: 0,
                    offset,
                }
            })
            .collect();
        let write = BatchWrite {
            events,
            ..Default::default()
        };
        if let Err(e) = db.write_batch("ra", "ra.raw", &write, &alerts, 10).await {
            // Name the record PostgreSQL refuses: each alone.
            for (record, event) in chunk {
                let one = BatchWrite {
                    events: vec![StoredEvent {
                        event,
                        partition: 1,
                        offset: 0,
                    }],
                    ..Default::default()
                };
                if db
                    .write_batch("ra", "ra.raw", &one, &alerts, 10)
                    .await
                    .is_err()
                {
                    panic!("PostgreSQL refused an accepted record (seed {seed}): {record}");
                }
            }
            panic!("a batch was refused (seed {seed}): {e}");
        }
    }
    let rows: Vec<(String, chrono::DateTime<Utc>, String)> =
        sqlx::query_as("SELECT event_id, ts, attributes::text FROM log_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    // An id and time written twice is one row (the write is idempotent by them); PostgreSQL
    // keeps microseconds.
    let key_of = |e: &RawEvent| {
        let micros = e.timestamp().timestamp_micros();
        (
            e.event_id().to_owned(),
            chrono::DateTime::from_timestamp_micros(micros).unwrap(),
        )
    };
    let mut keys = std::collections::HashMap::new();
    for (_, e) in &accepted {
        *keys.entry(key_of(e)).or_insert(0) += 1;
    }
    assert_eq!(rows.len(), keys.len(), "every accepted record stored once");
    let stored: std::collections::HashMap<_, String> = rows
        .into_iter()
        .map(|(id, ts, text)| ((id, ts), text))
        .collect();
    let mut compared = 0;
    for (record, e) in &accepted {
        let key = key_of(e);
        // Where both readings accept, the stored values are the tree's.
        let (Ok(tree), 1) = (LogEvent::from_json(record.as_bytes()), keys[&key]) else {
            continue;
        };
        let text = &stored[&key];
        let back: Value =
            serde_json::from_str(&numbers_as_f64(text)).unwrap_or_else(|e| panic!("{e}: {text}"));
        let equal = same(&back, &Value::Object(tree.attributes.clone()));
        assert!(equal, "seed {seed}: {record} stored as {text}");
        compared += 1;
    }
    assert!(compared > 1_000, "{compared} compared");
    let order_0 = stored
        .iter()
        .find(|((id, _), _)| id == "order-0")
        .unwrap()
        .1;
    assert_eq!(
        order_0,
        r#"{"a": 5, "b": 3, "ab": {"x": 2, "y": 1}, "zz": 1}"#
    );
    it::drop_schema(&pool, &name).await;
}
