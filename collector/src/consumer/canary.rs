//! The canary that tells a refused record from a refusing database, pure: the known-good event
//! and the write it goes into (the refused record's own offset moves, every kind of derived row),
//! and the description of a refused record's derived rows for its DLQ headers. The writer
//! (`write.rs`, `dead_letter`) writes the canary and rolls it back.

use chrono::{DateTime, Utc};
use logpipe_common::{LogEvent, RawEvent};

use crate::db::{BatchWrite, OffsetMove, StoredEvent};
use crate::detect::Findings;
use crate::windows::{Aggregator, Spec};

/// The canary's event: valid by construction, FATAL so the alert statements run, with a latency
/// so every window column is written. Its id is fresh, so it never meets a stored row.
pub(super) fn canary_event(now: DateTime<Utc>) -> RawEvent {
    let mut attributes = serde_json::Map::new();
    attributes.insert("latency_ms".into(), 1.into());
    attributes.insert("client.ip".into(), "192.0.2.1".into());
    let event = LogEvent {
        event_id: format!("logpipe-canary-{}", LogEvent::new_id()),
        timestamp: now,
        level: logpipe_common::Level::Fatal,
        service: "logpipe.canary".into(),
        component: "collector".into(),
        host: "collector".into(),
        message: "logpipe canary: a known-good write, rolled back".into(),
        trace_id: None,
        span_id: None,
        attributes,
    };
    RawEvent::from_event(&event).expect("the canary is valid by construction")
}

/// The canary's write: the refused record's offset `moves` as they are, and the canary event in
/// place of the record with every kind of row an event derives (raw row, window rows, a detection,
/// a failed-login counter, an error-rate judgement), so each statement of the batch write runs.
pub(super) fn canary_write<'a>(
    event: &'a RawEvent,
    moves: &[OffsetMove],
    specs: &[Spec],
) -> BatchWrite<'a> {
    use crate::detect::{AlertKind, Detection, FailedLogins};
    let mut agg = Aggregator::default();
    agg.add(
        event.service(),
        event,
        crate::windows::Latency::bounded(1.0),
    );
    let mut findings = Findings::default();
    let t = event.timestamp();
    findings.detections.insert(
        (AlertKind::FatalEvent, event.service().to_owned()),
        vec![Detection {
            kind: AlertKind::FatalEvent,
            subject: event.service().to_owned(),
            service: event.service().to_owned(),
            first_seen: t,
            last_seen: t,
            count: 1,
            example: event.message().to_owned(),
        }],
    );
    let start = t.timestamp().div_euclid(60) * 60;
    findings.failed_logins.insert(
        ("ip:192.0.2.1".into(), start),
        FailedLogins {
            subject: "ip:192.0.2.1".into(),
            service: event.service().to_owned(),
            window_start: DateTime::from_timestamp(start, 0).unwrap_or(t),
            hits: 1,
            first_seen: t,
            last_seen: t,
        },
    );
    let at = moves.first().map_or((0, 0), |m| (m.partition, m.next - 1));
    BatchWrite {
        events: vec![StoredEvent {
            event,
            partition: at.0,
            offset: at.1,
        }],
        windows: agg.into_deltas(specs),
        findings,
        moves: moves.to_vec(),
        closed: vec![(event.service().to_owned(), t - chrono::Duration::days(1))],
    }
}

/// The rows a (one-record) write derives at `stage`, as JSON for the DLQ's `error.row` header:
/// which row PostgreSQL refused, so an operator can see the value at fault.
pub(super) fn describe_rows(write: &BatchWrite<'_>, stage: Option<&str>) -> String {
    use serde_json::json;
    let v = match stage {
        Some("window_stats") => json!(write
            .windows
            .iter()
            .map(|(k, s)| json!({
                "width_secs": k.spec.width, "slide_secs": k.spec.slide,
                "window_start": k.start_secs, "service": k.service, "level": k.level.as_str(),
                "event_count": s.count, "latency_count": s.latency_count,
                "latency_sum_ms": s.latency_sum_ms, "latency_max_ms": s.latency_max_ms,
            }))
            .collect::<Vec<_>>()),
        Some("alerts") => json!({
            "detections": write.findings.detections.keys()
                .map(|(k, subject)| json!({"kind": k.as_str(), "subject": subject}))
                .collect::<Vec<_>>(),
            "failed_logins": write.findings.failed_logins.values()
                .map(|f| json!({"subject": f.subject, "window_start": f.window_start, "hits": f.hits}))
                .collect::<Vec<_>>(),
        }),
        Some("consumer_offsets") => json!(write
            .moves
            .iter()
            .map(|m| json!({"partition": m.partition, "next_offset": m.next, "max_event_ts": m.max_event_ts}))
            .collect::<Vec<_>>()),
        Some("error_rate") => json!({"services": write.closed.iter().map(|(s, _)| s).collect::<Vec<_>>()}),
        _ => json!(write
            .events
            .iter()
            .map(|e| json!({"table": "log_events", "event_id": e.event.event_id(), "ts": e.event.timestamp()}))
            .collect::<Vec<_>>()),
    };
    let mut text = v.to_string();
    // A header, not a payload: bounded (the record itself is the DLQ record's payload).
    if text.len() > 4096 {
        let mut cut = 4096;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_writes_every_kind_of_row_for_the_refused_records_moves() {
        let now = DateTime::from_timestamp(1_800_000_300, 0).unwrap();
        let e = canary_event(now);
        assert_eq!(e.level(), logpipe_common::Level::Fatal);
        let moves = vec![OffsetMove {
            partition: 2,
            expected: 40,
            next: 41,
            max_event_ts: None,
            last_record_hash: Some(1),
        }];
        let w = canary_write(
            &e,
            &moves,
            &crate::windows::WindowSettings::default().specs(),
        );
        assert_eq!(w.moves, moves);
        assert_eq!((w.events[0].partition, w.events[0].offset), (2, 40));
        assert!(!w.windows.is_empty());
        assert_eq!(w.findings.detections.len(), 1);
        assert_eq!(w.findings.failed_logins.len(), 1);
        assert_eq!(w.closed.len(), 1);
        assert!(describe_rows(&w, Some("window_stats")).contains("latency_sum_ms"));
    }
}
