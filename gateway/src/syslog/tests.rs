use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use logpipe_common::event::MAX_MESSAGE_BYTES;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

fn ctx() -> ParseContext<'static> {
    ParseContext {
        received_at: Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap(),
        max_events: usize::MAX,
        max_future_secs: 300,
        max_event_bytes: 256 * 1024,
        default_service: "syslog",
        id_seed: None,
        tenant: None,
        trace_id: None,
    }
}

fn frame(text: &[u8]) -> Frame {
    Frame {
        bytes: Bytes::copy_from_slice(text),
        truncated: false,
    }
}

fn event(text: &[u8]) -> LogEvent {
    frame_event(&ctx(), PEER, &frame(text))
        .expect("an event")
        .expect("not blank")
}

#[test]
fn an_rfc5424_message_maps_app_host_severity_and_structured_data() {
    let e = event(b"<11>1 2026-12-06T09:59:58.123Z web-1 nginx 42 ID7 [req@1 id=\"a\\\"b\"] upstream timed out\n");
    assert_eq!(e.service, "nginx");
    assert_eq!(e.host, "web-1");
    assert_eq!(e.level, Level::Error);
    assert_eq!(e.message, "upstream timed out");
    assert_eq!(e.timestamp.timestamp_millis() % 1000, 123);
    assert_eq!(e.attributes["sd.req@1.id"], "a\"b");
    assert_eq!(e.attributes["syslog.source_ip"], "10.1.2.3");
    assert!(!e.attributes.contains_key("syslog.parse_error"));
    assert_eq!(e.event_id.len(), 26, "a fresh ULID");
}

#[test]
fn an_rfc3164_message_maps_its_tag_and_one_without_a_host_takes_the_peer() {
    let e = event(b"<30>Dec  6 09:59:58 host1 cron[123]: job done");
    assert_eq!(
        (e.level, e.host.as_str(), e.service.as_str()),
        (Level::Info, "host1", "cron")
    );
    assert_eq!(e.attributes["syslog.procid"], "123");
    let e = event(b"<13>1 - - - - - - nothing named");
    assert_eq!(e.host, "10.1.2.3");
    assert_eq!(e.service, "syslog");
}

#[test]
fn a_message_that_is_not_syslog_is_kept_as_text_with_the_reason() {
    let e = event(b"just a line from a script");
    assert_eq!(e.message, "just a line from a script");
    assert_eq!(e.timestamp, ctx().received_at);
    assert_eq!(e.service, "syslog");
    assert!(e.attributes["syslog.parse_error"]
        .as_str()
        .unwrap()
        .contains("syslog"));
}

#[test]
fn a_timestamp_far_in_the_future_is_kept_at_the_receive_time_with_the_reason() {
    let e = event(b"<13>1 2099-01-01T00:00:00Z h app - - - from the future");
    assert_eq!(e.timestamp, ctx().received_at);
    assert!(e.attributes["syslog.parse_error"]
        .as_str()
        .unwrap()
        .contains("ahead of the receiver's clock"));
    assert!(e.message.contains("from the future"));
}

#[test]
fn nul_bytes_and_invalid_utf8_do_not_lose_the_message() {
    let e = event(b"<13>1 - h app - - - a\0b \xff\xfe end");
    assert!(e.message.contains('\u{fffd}'));
    assert!(e.message.contains("end"));
    assert!(!e.message.contains('\0'));
}

#[test]
fn a_truncated_message_says_so() {
    let mut f = frame(b"<13>1 - h app - - - the head of something longer");
    f.truncated = true;
    let e = frame_event(&ctx(), PEER, &f).unwrap().unwrap();
    assert_eq!(e.attributes["syslog.truncated"], true);
}

#[test]
fn a_blank_message_is_no_event() {
    for blank in [&b""[..], b"\n", b"  \r\n", b"\0", b" \0\r\n"] {
        assert_eq!(frame_event(&ctx(), PEER, &frame(blank)).unwrap(), None);
    }
}

#[test]
fn settings_refuse_a_message_limit_outside_what_an_event_holds() {
    let mut s = SyslogSettings::default();
    assert!(s.validate().is_ok());
    s.max_message_bytes = MAX_MESSAGE_BYTES + 1;
    assert!(s.validate().is_err());
    s.max_message_bytes = 100;
    assert!(s.validate().is_err());
}

proptest! {
    /// Any bytes of at most the message limit become exactly one valid event or none (blank):
    /// nothing a sender writes is refused or panics.
    #[test]
    fn any_message_within_the_limit_becomes_one_valid_event(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        pri in proptest::option::of(0u16..300),
    ) {
        let mut text = pri.map(|p| format!("<{p}>1 ").into_bytes()).unwrap_or_default();
        text.extend_from_slice(&bytes);
        match frame_event(&ctx(), PEER, &frame(&text)) {
            Ok(Some(e)) => prop_assert!(e.validate().is_ok()),
            Ok(None) => prop_assert!(String::from_utf8_lossy(&text)
                .trim_matches(|c: char| c.is_whitespace() || c == '\0' || c == char::REPLACEMENT_CHARACTER)
                .is_empty()),
            Err(e) => prop_assert!(false, "refused: {e}"),
        }
    }
}
