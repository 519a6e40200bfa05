//! Records the collector can never store (the poison set), shared by `tests/poison.rs` and the
//! fault suite's `logpipe-poison`, so both send the same kinds.

use chrono::Utc;

pub fn json_event(ts: &str, message: &str, attributes: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{}","timestamp":"{ts}","level":"ERROR","service":"poison","message":"{message}","attributes":{attributes}}}"#,
        logpipe_common::LogEvent::new_id()
    )
    .into_bytes()
}

/// Records no database row can hold, with their content type and the DLQ `error.kind` each must get.
pub fn records() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    let now = Utc::now().to_rfc3339();
    let mut invalid_utf8_json = json_event(&now, "x", "{}");
    // The message's one character ("x", 19 bytes from the end) becomes an invalid byte.
    let at = invalid_utf8_json.len() - 19;
    invalid_utf8_json[at] = 0xff;
    vec![
        (
            json_event(&now, "a\\u0000b", "{}"),
            "application/json",
            "nul_character",
        ),
        (
            json_event(&now, "deep", r#"{"req":{"headers":["ok","a\u0000"]}}"#),
            "application/json",
            "nul_character",
        ),
        (
            json_event("-5000-01-01T00:00:00Z", "ancient", "{}"),
            "application/json",
            "timestamp_out_of_range",
        ),
        (
            json_event("0000-12-31T23:59:59Z", "year zero", "{}"),
            "application/json",
            "timestamp_out_of_range",
        ),
        (
            json_event("+10000-01-01T00:00:00Z", "far future", "{}"),
            "application/json",
            // Whether chrono reads a five-digit year decides which check refuses it.
            logpipe_common::LogEvent::from_json(
                json_event("+10000-01-01T00:00:00Z", "far future", "{}").as_slice(),
            )
            .expect_err("refused")
            .kind(),
        ),
        (invalid_utf8_json, "application/json", "invalid_json"),
        (
            vec![b'<', b'1', b'3', b'>', 0xff, 0xfe, b' ', b'x'],
            "text/plain",
            "unparseable_line",
        ),
        (
            json_event(&now, &"x".repeat(40 * 1024), "{}"),
            "application/json",
            "too_long",
        ),
        (
            "<13>Nov 23 07:58:0\u{e9} host app: x".as_bytes().to_vec(),
            "text/plain",
            "unparseable_line",
        ),
    ]
}
