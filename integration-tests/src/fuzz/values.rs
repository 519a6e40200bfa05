//! The fuzzer's grammar of hostile values: numbers at and beyond every type edge (also as
//! strings), unicode edge cases, every timestamp form the parsers accept and many they must
//! refuse, huge and empty strings, random levels, high-cardinality services, deep and wide
//! attributes. `gen` combines them into events, bodies and raw records.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::Rng;

pub(super) fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Numbers as JSON text: the type edges of i64, u64 and f64, past them, and long digit runs.
pub fn number_text(rng: &mut StdRng) -> String {
    const EDGES: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "1.7976931348623157e308",
        "-1.7976931348623157e308",
        "1e308",
        "1e309",
        "-1e400",
        "5e-324",
        "2.2250738585072014e-308",
        "4.9e-325",
        "1E+2",
        "0.000000000000000000000000000001",
        "123456789012345678901234567890",
        "86400000",
        "86400001",
    ];
    // Magnitudes whose sum overflows f64: what aggregates must bound (two such latencies in one
    // window row once stalled every partition).
    const HUGE: &[&str] = &[
        "1.7976931348623157e308",
        "1.7e308",
        "1e308",
        "9e307",
        "18446744073709551615",
        "9223372036854775807",
    ];
    match rng.random_range(0..6) {
        0 => (pick(rng, HUGE)).to_owned(),
        1 => (pick(rng, EDGES)).to_owned(),
        2 | 5 => rng.random::<i64>().to_string(),
        3 => {
            let f = f64::from_bits(rng.random::<u64>());
            if f.is_finite() {
                format!("{f:e}")
            } else {
                "1e999".to_owned()
            }
        }
        _ => {
            let len = rng.random_range(1..400);
            let mut s: String = (0..len)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            if rng.random_bool(0.3) {
                s.push_str(&format!("e{}", rng.random_range(-400..400)));
            }
            if s.starts_with('0') && s.len() > 1 {
                s.replace_range(0..1, "9");
            }
            s
        }
    }
}

/// A value where a number is expected: a number, or a number-like string.
pub fn number_value(rng: &mut StdRng) -> String {
    const STRINGS: &[&str] = &[
        "\"1e308\"",
        "\"-1e308\"",
        "\"1e999\"",
        "\"NaN\"",
        "\"nan\"",
        "\"inf\"",
        "\"-inf\"",
        "\"Infinity\"",
        "\" 5 \"",
        "\"0x10\"",
        "\"18446744073709551616\"",
        "\"\"",
        "null",
        "true",
        "[1e308]",
        "{\"v\":1e308}",
    ];
    if rng.random_bool(0.25) {
        (pick(rng, STRINGS)).to_owned()
    } else if rng.random_bool(0.2) {
        format!("\"{}\"", number_text(rng))
    } else {
        number_text(rng)
    }
}

/// Text with unicode edge cases, control characters, quotes and SQL metacharacters.
pub fn text(rng: &mut StdRng, max_chars: usize) -> String {
    const PIECES: &[&str] = &[
        "payment declined",
        "login failed for user admin",
        "authentication failed",
        "' OR '1'='1",
        "1 UNION SELECT password FROM users--",
        "; DROP TABLE log_events;--",
        "pg_sleep(10)",
        "%",
        "_",
        "\\",
        "\"",
        "'",
        "\u{1F44D}",
        "\u{202E}",
        "\u{FEFF}",
        "\u{FFFF}",
        "\u{10FFFF}",
        "e\u{301}",
        "\u{200B}",
        "日本語",
        "\u{7F}",
        "\u{1}",
        "\u{1B}[31m",
        "\r\n",
        "\t",
        " ",
        "<script>",
        "${jndi:ldap://x}",
        "\u{0}",
    ];
    let n = rng.random_range(0..12);
    let mut s = String::new();
    for _ in 0..n {
        if s.chars().count() >= max_chars {
            break;
        }
        if rng.random_bool(0.5) {
            s.push_str(pick(rng, PIECES));
        } else {
            let len = rng.random_range(1..12);
            s.extend((0..len).map(|_| char::from(b'a' + rng.random_range(0..26u8))));
        }
    }
    s.chars().take(max_chars).collect()
}

/// A JSON string literal: mostly escaped text, sometimes a huge one, sometimes a lone surrogate.
pub fn string_literal(rng: &mut StdRng, max_chars: usize) -> String {
    match rng.random_range(0..40) {
        0 => "\"\\ud800\"".to_owned(),
        1 => "\"\\udfff tail\"".to_owned(),
        2 => serde_json::to_string(&"x".repeat(rng.random_range(16_000..40_000))).expect("str"),
        3 => serde_json::to_string(&"\u{1}".repeat(rng.random_range(1_000..6_000))).expect("str"),
        _ => serde_json::to_string(&text(rng, max_chars)).expect("str"),
    }
}

/// A timestamp: near the collector's clock most of the time (so most events are accepted), else
/// every edge the parsers meet.
pub fn timestamp(rng: &mut StdRng, now: DateTime<Utc>) -> String {
    let near = now - Duration::milliseconds(rng.random_range(0..30_000));
    let forms: [String; 24] = [
        format!(
            "\"{}\"",
            near.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        format!(
            "\"{}\"",
            near.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        ),
        format!(
            "\"{}\"",
            near.with_timezone(&chrono::FixedOffset::east_opt(14 * 3600).expect("offset"))
                .to_rfc3339()
        ),
        format!(
            "\"{}\"",
            near.with_timezone(&chrono::FixedOffset::west_opt(12 * 3600).expect("offset"))
                .to_rfc3339()
        ),
        format!("\"{}\"", near.format("%Y-%m-%dt%H:%M:%S%.3fz")),
        format!("\"{}\"", near.format("%Y-%m-%d %H:%M:%S")),
        format!("\"{}\"", near.format("%Y-%m-%dT%H:%M:%S")),
        format!("{}", near.timestamp()),
        format!("{}", near.timestamp_millis()),
        "\"0001-01-01T00:00:00Z\"".into(),
        "\"9999-12-31T23:59:59.999999999Z\"".into(),
        "\"10000-01-01T00:00:00Z\"".into(),
        "\"-0001-01-01T00:00:00Z\"".into(),
        "\"1970-01-01T00:00:00Z\"".into(),
        "\"2026-02-30T00:00:00Z\"".into(),
        "\"2016-12-31T23:59:60Z\"".into(),
        format!("\"{}\"", (now + Duration::days(1)).to_rfc3339()),
        format!("\"{}\"", (now + Duration::seconds(9)).to_rfc3339()),
        format!("\"{}\"", (now - Duration::days(400)).to_rfc3339()),
        "\"\"".into(),
        "null".into(),
        number_value(rng),
        "\"yesterday\"".into(),
        format!("\"{}\"", near.to_rfc3339()),
    ];
    if rng.random_bool(0.9) {
        forms[0].clone()
    } else {
        forms[rng.random_range(0..forms.len())].clone()
    }
}

pub fn level(rng: &mut StdRng) -> String {
    const LEVELS: &[&str] = &[
        "\"INFO\"",
        "\"WARN\"",
        "\"ERROR\"",
        "\"FATAL\"",
        "\"DEBUG\"",
        "\"TRACE\"",
        "\"warning\"",
        "\"Err\"",
        "\"critical\"",
        "\"emerg\"",
        "\"notice\"",
        "\"\"",
        "\"NOPE\"",
        "3",
        "null",
        "\"INFO \"",
    ];
    if rng.random_bool(0.85) {
        (pick(rng, &LEVELS[..6])).to_owned()
    } else {
        (pick(rng, LEVELS)).to_owned()
    }
}

/// Services: a few common ones (so the queries find rows), many one-off ones (cardinality), and
/// the edges of a name.
pub fn service(rng: &mut StdRng) -> String {
    match rng.random_range(0..20) {
        0..=8 => format!("\"{}\"", pick(rng, &["payments", "auth", "search", "api"])),
        9..=14 => format!("\"svc-{:08x}\"", rng.random::<u32>()),
        15 => format!("\"{}\"", "s".repeat(128)),
        16 => format!("\"{}\"", "s".repeat(129)),
        17 => format!("\"{}\"", "é".repeat(64)),
        _ => pick(
            rng,
            &[
                "\"~other\"",
                "\"   \"",
                "\"../etc/passwd\"",
                "\"a/b%2Fc\"",
                "\"\"",
                "null",
                "\"\\u0000\"",
            ],
        )
        .to_string(),
    }
}

/// An attributes object: the aggregated ones (latencies, client address, user, path) with hostile
/// values, plus random keys, sometimes deep, sometimes wide.
pub fn attributes(rng: &mut StdRng) -> String {
    let mut fields: Vec<String> = Vec::new();
    for key in ["latency_ms", "duration_ms", "http.duration_ms"] {
        if rng.random_bool(0.4) {
            fields.push(format!("\"{key}\":{}", number_value(rng)));
        }
    }
    if rng.random_bool(0.3) {
        let ip = match rng.random_range(0..4) {
            0 => format!(
                "{}.{}.{}.{}",
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>()
            ),
            1 => "203.0.113.7".into(),
            2 => "1".repeat(rng.random_range(100..5_000)),
            _ => text(rng, 60),
        };
        fields.push(format!(
            "\"client.ip\":{}",
            serde_json::to_string(&ip).expect("str")
        ));
    }
    if rng.random_bool(0.2) {
        fields.push(format!("\"user\":{}", string_literal(rng, 200)));
    }
    if rng.random_bool(0.2) {
        fields.push(format!("\"http.path\":{}", string_literal(rng, 200)));
    }
    if rng.random_bool(0.2) {
        fields.push(format!("\"http.status\":{}", number_value(rng)));
    }
    match rng.random_range(0..20) {
        0 => {
            // Deep: around the 16-level limit.
            let depth = rng.random_range(10..24);
            let inner = format!("{}1{}", "{\"d\":".repeat(depth), "}".repeat(depth));
            fields.push(format!("\"deep\":{inner}"));
        }
        1 => {
            // Wide: around the 64-attribute limit.
            for i in 0..rng.random_range(50..80) {
                fields.push(format!("\"k{i}\":{}", number_value(rng)));
            }
        }
        2 => fields.push(format!(
            "\"arr\":[{}]",
            (0..rng.random_range(0..200))
                .map(|_| number_value(rng))
                .collect::<Vec<_>>()
                .join(",")
        )),
        3 => fields.push(format!(
            "{}:{}",
            string_literal(rng, 40),
            string_literal(rng, 40)
        )),
        _ => {}
    }
    format!("{{{}}}", fields.join(","))
}
