//! Raw log lines other systems write, parsed into [`LogEvent`]: Apache combined (and common) access
//! log lines and syslog (RFC 5424 and RFC 3164). The gateway's ingest and the collector both use
//! these, so a line means the same event wherever it enters.
//!
//! The original line is kept as the event's `message` (nothing is lost); the parsed fields go into
//! `attributes`. Raw lines carry no id, so the caller supplies one ([`derived_id`] makes a stable one
//! from where the line was read, which keeps replays idempotent).

use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::event::{EventError, Level, LogEvent};

/// What the caller knows about a raw line that the line itself may not say.
#[derive(Debug, Clone)]
pub struct LineContext<'a> {
    pub event_id: String,
    /// Used when the line names no service (Apache lines never do; syslog may use `-`).
    pub default_service: &'a str,
    /// Receive time: resolves RFC 3164's missing year and is the timestamp of last resort.
    pub received_at: DateTime<Utc>,
}

/// Parse one raw line: syslog when it starts with `<PRI>`, else Apache combined/common.
pub fn parse_line(line: &str, ctx: &LineContext<'_>) -> Result<LogEvent, EventError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let event = if line.starts_with('<') {
        parse_syslog(line, ctx)?
    } else {
        parse_apache(line, ctx)?
    };
    event.validate()?;
    Ok(event)
}

fn bad(format: &'static str, reason: impl Into<String>) -> EventError {
    EventError::Unparseable {
        format,
        reason: reason.into(),
    }
}

/// A ULID whose time part is `ts` and whose random part is a stable hash of `seed`: the same line
/// read from the same place always gets the same id. SHA-256, so no client can craft a seed that
/// lands on another's id (FNV, used before, can be steered), and stable across Rust releases.
pub fn derived_id(ts: DateTime<Utc>, seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(seed);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    let random = u128::from_be_bytes(first) & ((1u128 << 80) - 1);
    ulid::Ulid::from_parts(ts.timestamp_millis().max(0) as u64, random).to_string()
}

/// Splits off the next space-separated token.
fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    Some(match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    })
}

/// A `"..."` field with `\"` escapes; returns the unescaped content and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start_matches(' ').strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '"' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// `%h %l %u [%t] "%r" %>s %b` and optionally `"%{Referer}i" "%{User-agent}i"`.
pub fn parse_apache(line: &str, ctx: &LineContext<'_>) -> Result<LogEvent, EventError> {
    const F: &str = "apache";
    let (client, rest) = token(line).ok_or_else(|| bad(F, "empty line"))?;
    let (_ident, rest) = token(rest).ok_or_else(|| bad(F, "missing ident field"))?;
    let (user, rest) = token(rest).ok_or_else(|| bad(F, "missing user field"))?;
    let rest = rest
        .trim_start()
        .strip_prefix('[')
        .ok_or_else(|| bad(F, "missing [time]"))?;
    let end = rest
        .find(']')
        .ok_or_else(|| bad(F, "unterminated [time]"))?;
    let timestamp = DateTime::parse_from_str(&rest[..end], "%d/%b/%Y:%H:%M:%S %z")
        .map_err(|e| bad(F, format!("bad time {:?}: {e}", &rest[..end])))?
        .with_timezone(&Utc);
    let (request, rest) =
        quoted(&rest[end + 1..]).ok_or_else(|| bad(F, "missing quoted request"))?;
    let (status, rest) = token(rest).ok_or_else(|| bad(F, "missing status"))?;
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad(F, format!("bad status {status:?}")))?;
    let (bytes, rest) = token(rest).ok_or_else(|| bad(F, "missing size"))?;
    let bytes: Option<u64> = match bytes {
        "-" => None,
        b => Some(b.parse().map_err(|_| bad(F, format!("bad size {b:?}")))?),
    };
    let (referer, user_agent) = match quoted(rest) {
        Some((r, rest)) => (Some(r), quoted(rest).map(|(ua, _)| ua)),
        None => (None, None),
    };

    let mut attributes = Map::new();
    attributes.insert("client.ip".into(), Value::from(client));
    if user != "-" {
        attributes.insert("user".into(), Value::from(user));
    }
    let mut parts = request.splitn(3, ' ');
    if let (Some(method), Some(path)) = (parts.next(), parts.next()) {
        attributes.insert("http.method".into(), Value::from(method));
        attributes.insert("http.path".into(), Value::from(path));
        if let Some(version) = parts.next() {
            attributes.insert("http.version".into(), Value::from(version));
        }
    }
    attributes.insert("http.status".into(), Value::from(status));
    if let Some(b) = bytes {
        attributes.insert("http.response_size".into(), Value::from(b));
    }
    if let Some(r) = referer.filter(|r| r != "-") {
        attributes.insert("http.referer".into(), Value::from(r));
    }
    if let Some(ua) = user_agent.filter(|u| u != "-") {
        attributes.insert("user_agent".into(), Value::from(ua));
    }
    let level = match status {
        500.. => Level::Error,
        400..=499 => Level::Warn,
        _ => Level::Info,
    };
    Ok(LogEvent {
        event_id: ctx.event_id.clone(),
        timestamp,
        level,
        service: ctx.default_service.to_owned(),
        component: "access".into(),
        host: String::new(),
        message: line.to_owned(),
        trace_id: None,
        span_id: None,
        attributes,
    })
}

/// Syslog severity (0 emergency … 7 debug) as a level.
fn severity_level(severity: u8) -> Level {
    match severity {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        _ => Level::Debug,
    }
}

/// RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`) or RFC 3164
/// (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`).
pub fn parse_syslog(line: &str, ctx: &LineContext<'_>) -> Result<LogEvent, EventError> {
    const F: &str = "syslog";
    let rest = line
        .strip_prefix('<')
        .ok_or_else(|| bad(F, "missing <PRI>"))?;
    let close = rest
        .find('>')
        .filter(|&i| (1..=3).contains(&i))
        .ok_or_else(|| bad(F, "bad <PRI>"))?;
    let pri: u8 = rest[..close]
        .parse()
        .ok()
        .filter(|p| *p <= 191)
        .ok_or_else(|| bad(F, format!("bad PRI {:?}", &rest[..close])))?;
    let rest = &rest[close + 1..];
    let mut attributes = Map::new();
    attributes.insert("syslog.facility".into(), Value::from(pri / 8));
    attributes.insert("syslog.severity".into(), Value::from(pri % 8));
    let nil = |s: &str| if s == "-" { None } else { Some(s.to_owned()) };

    let (timestamp, host, app, message) = if let Some(after) = rest.strip_prefix("1 ") {
        let (ts, r) = token(after).ok_or_else(|| bad(F, "missing timestamp"))?;
        let (host, r) = token(r).ok_or_else(|| bad(F, "missing hostname"))?;
        let (app, r) = token(r).ok_or_else(|| bad(F, "missing app-name"))?;
        let (procid, r) = token(r).ok_or_else(|| bad(F, "missing procid"))?;
        let (msgid, r) = token(r).ok_or_else(|| bad(F, "missing msgid"))?;
        let timestamp = match ts {
            "-" => ctx.received_at,
            t => DateTime::parse_from_rfc3339(t)
                .map_err(|e| bad(F, format!("bad timestamp {t:?}: {e}")))?
                .with_timezone(&Utc),
        };
        if let Some(p) = nil(procid) {
            attributes.insert("syslog.procid".into(), Value::from(p));
        }
        if let Some(m) = nil(msgid) {
            attributes.insert("syslog.msgid".into(), Value::from(m));
        }
        let msg = structured_data(r.trim_start(), &mut attributes)?;
        let msg = msg.trim_start_matches('\u{feff}');
        (timestamp, nil(host), nil(app), msg.to_owned())
    } else {
        // RFC 3164: "Mmm dd hh:mm:ss" (day space-padded), no year and no zone (taken as UTC).
        if rest.len() < 16 {
            return Err(bad(F, "line too short for an RFC 3164 header"));
        }
        // A multibyte character across the 15-byte header's end is not a timestamp (and would
        // panic `split_at`).
        if !rest.is_char_boundary(15) {
            return Err(bad(F, "bad RFC 3164 timestamp (non-ASCII)"));
        }
        let (stamp, r) = rest.split_at(15);
        let timestamp = bsd_timestamp(stamp, ctx.received_at)
            .ok_or_else(|| bad(F, format!("bad timestamp {stamp:?}")))?;
        let (host, r) = token(r).ok_or_else(|| bad(F, "missing hostname"))?;
        let (tag, msg) = match r.find(": ") {
            Some(i) if !r[..i].contains(' ') => (Some(&r[..i]), &r[i + 2..]),
            _ => (None, r),
        };
        let app = tag.map(|t| match t.find('[') {
            Some(i) => {
                let pid = t[i + 1..].trim_end_matches(']');
                attributes.insert("syslog.procid".into(), Value::from(pid));
                &t[..i]
            }
            None => t,
        });
        (
            timestamp,
            Some(host.to_owned()),
            app.map(str::to_owned),
            msg.to_owned(),
        )
    };
    let message = if message.trim().is_empty() {
        line.to_owned()
    } else {
        message
    };
    Ok(LogEvent {
        event_id: ctx.event_id.clone(),
        timestamp,
        level: severity_level(pri % 8),
        service: app.unwrap_or_else(|| ctx.default_service.to_owned()),
        component: "syslog".into(),
        host: host.unwrap_or_default(),
        message,
        trace_id: None,
        span_id: None,
        attributes,
    })
}

/// RFC 5424 structured data: `-` or `[id k="v" ...]...`; params become `sd.<id>.<k>` attributes.
fn structured_data<'a>(s: &'a str, attrs: &mut Map<String, Value>) -> Result<&'a str, EventError> {
    const F: &str = "syslog";
    if let Some(rest) = s.strip_prefix('-') {
        return Ok(rest.strip_prefix(' ').unwrap_or(rest));
    }
    let mut rest = s;
    while let Some(r) = rest.strip_prefix('[') {
        let id_end = r
            .find([' ', ']'])
            .ok_or_else(|| bad(F, "unterminated structured data"))?;
        let id = &r[..id_end];
        let mut r = &r[id_end..];
        loop {
            r = r.trim_start_matches(' ');
            if let Some(after) = r.strip_prefix(']') {
                r = after;
                break;
            }
            let eq = r
                .find('=')
                .ok_or_else(|| bad(F, "structured data param without '='"))?;
            let name = &r[..eq];
            let (value, after) =
                quoted(&r[eq + 1..]).ok_or_else(|| bad(F, "structured data value not quoted"))?;
            attrs.insert(format!("sd.{id}.{name}"), Value::from(value));
            r = after;
        }
        rest = r;
    }
    Ok(rest.strip_prefix(' ').unwrap_or(rest))
}

/// The year is the one that puts the stamp closest before `now` (a December line read in January
/// belongs to last year).
fn bsd_timestamp(stamp: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let at = |year: i32| {
        NaiveDateTime::parse_from_str(&format!("{year} {stamp}"), "%Y %b %e %H:%M:%S")
            .ok()
            .map(|t| Utc.from_utc_datetime(&t))
    };
    let this = at(now.year())?;
    if this > now + chrono::Duration::days(1) {
        at(now.year() - 1)
    } else {
        Some(this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> LineContext<'static> {
        LineContext {
            event_id: "01TEST".into(),
            default_service: "web",
            received_at: "2026-11-23T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_multibyte_character_in_any_header_position_is_an_error_not_a_panic() {
        let base = "<13>Nov 23 07:58:01 host app: x";
        for cut in 0..base.len() {
            for ch in ["é", "€", "😀"] {
                let mut line = base.to_owned();
                if line.is_char_boundary(cut) {
                    line.insert_str(cut, ch);
                    let _ = parse_line(&line, &ctx());
                }
            }
        }
        let err = parse_line("<13>Nov 23 07:58:0é host app: x", &ctx()).unwrap_err();
        assert_eq!(err.kind(), "unparseable_line");
    }

    #[test]
    fn apache_combined_line_becomes_an_event_with_http_attributes() {
        let line = r#"10.1.2.3 - alice [23/Nov/2026:08:00:00 +0100] "GET /cart?id=7 HTTP/1.1" 502 1234 "https://shop/" "Mozilla/5.0 (X11)""#;
        let e = parse_line(line, &ctx()).unwrap();
        assert_eq!(
            e.timestamp,
            "2026-11-23T07:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(e.level, Level::Error);
        assert_eq!(e.service, "web");
        assert_eq!(e.message, line);
        assert_eq!(e.attributes["http.status"], 502);
        assert_eq!(e.attributes["http.path"], "/cart?id=7");
        assert_eq!(e.attributes["user"], "alice");
        assert_eq!(e.attributes["user_agent"], "Mozilla/5.0 (X11)");
        assert_eq!(e.attributes["http.response_size"], 1234);
    }

    #[test]
    fn apache_common_line_without_referer_parses_and_4xx_is_warn() {
        let line = r#"192.0.2.1 - - [23/Nov/2026:08:00:00 +0000] "POST /login HTTP/1.0" 401 -"#;
        let e = parse_line(line, &ctx()).unwrap();
        assert_eq!(e.level, Level::Warn);
        assert!(!e.attributes.contains_key("user"));
        assert!(!e.attributes.contains_key("http.response_size"));
    }

    #[test]
    fn apache_line_with_a_bad_status_is_refused_naming_the_format() {
        let line = r#"10.0.0.1 - - [23/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" abc 12"#;
        let err = parse_line(line, &ctx()).unwrap_err();
        assert_eq!(err.kind(), "unparseable_line");
        assert!(err.to_string().contains("apache"), "{err}");
        assert!(err.to_string().contains("status"), "{err}");
    }

    #[test]
    fn rfc5424_line_with_structured_data_parses() {
        let line = r#"<131>1 2026-11-23T08:00:00.250Z gen-1 payments 4242 ID47 [origin ip="10.0.0.9" x="a\"b"] charge failed"#;
        let e = parse_line(line, &ctx()).unwrap();
        assert_eq!(e.level, Level::Error); // 131 = local0.err
        assert_eq!(e.service, "payments");
        assert_eq!(e.host, "gen-1");
        assert_eq!(e.message, "charge failed");
        assert_eq!(e.attributes["sd.origin.ip"], "10.0.0.9");
        assert_eq!(e.attributes["sd.origin.x"], "a\"b");
        assert_eq!(e.attributes["syslog.msgid"], "ID47");
        assert_eq!(e.attributes["syslog.facility"], 16);
    }

    #[test]
    fn rfc5424_nil_fields_fall_back_to_the_context() {
        let e = parse_line("<14>1 - - - - - - hello", &ctx()).unwrap();
        assert_eq!(e.service, "web");
        assert_eq!(e.timestamp, ctx().received_at);
        assert_eq!(e.level, Level::Info);
        assert_eq!(e.message, "hello");
    }

    #[test]
    fn rfc3164_line_takes_the_year_that_lies_before_the_receive_time() {
        let e = parse_line(
            "<130>Nov  3 07:05:09 gen-2 auth[812]: token key missing",
            &ctx(),
        )
        .unwrap();
        assert_eq!(e.level, Level::Fatal);
        assert_eq!(e.service, "auth");
        assert_eq!(e.host, "gen-2");
        assert_eq!(e.attributes["syslog.procid"], "812");
        assert_eq!(e.message, "token key missing");
        assert_eq!(
            e.timestamp,
            "2026-11-03T07:05:09Z".parse::<DateTime<Utc>>().unwrap()
        );
        let dec = parse_line("<14>Dec 31 23:59:59 h app: late", &ctx()).unwrap();
        assert_eq!(dec.timestamp.year(), 2025);
    }

    #[test]
    fn syslog_with_a_bad_priority_is_refused() {
        let err = parse_line("<999>1 - - - - - - x", &ctx()).unwrap_err();
        assert_eq!(err.kind(), "unparseable_line");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct_per_seed() {
        let t: DateTime<Utc> = "2026-11-23T08:00:00Z".parse().unwrap();
        assert_eq!(derived_id(t, b"raw/3/17"), derived_id(t, b"raw/3/17"));
        assert_ne!(derived_id(t, b"raw/3/17"), derived_id(t, b"raw/3/18"));
        assert_eq!(derived_id(t, b"x").len(), 26);
    }
}
