//! One generated event before it is a [`LogEvent`]: names borrowed from the fleet's tables, numbers
//! kept as numbers, and the three strings it needs made (message, user, client address) in the
//! factory's reused buffers. The engine writes it straight to its wire JSON ([`Draft::write_json`]),
//! byte for byte what `serde_json` writes for the same event as a `LogEvent`, without building the
//! event's strings and attribute map first (issue 32: those allocations were a fifth of the
//! generator's CPU per event).

use chrono::{DateTime, Utc};
use logpipe_common::{Level, LogEvent};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};
use serde_json::{Map, Value};

/// Everything one event carries, borrowed from its factory until the next draw.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub id: ulid::Ulid,
    pub timestamp: DateTime<Utc>,
    pub level: Level,
    pub service: &'static str,
    pub component: &'static str,
    pub host: &'a str,
    pub message: &'a str,
    pub method: &'static str,
    pub path: &'static str,
    pub status: u16,
    pub latency_ms: u32,
    pub user: &'a str,
    pub client_ip: &'a str,
    /// The simulated trace and span ids (written as 32 and 16 hex digits).
    pub trace: u128,
    pub span: u64,
}

/// A trace or span id as text, on the stack: 32 or 16 lowercase hex digits.
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    fn of(mut v: u128) -> Self {
        let mut out = [b'0'; N];
        for b in out.iter_mut().rev() {
            *b = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
        }
        Hex(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// The 26-character ULID text, on the stack.
pub struct IdText([u8; ulid::ULID_LEN]);

impl IdText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("Crockford base32 is ASCII")
    }
}

impl<'a> Draft<'a> {
    pub fn trace_hex(&self) -> Hex<32> {
        Hex::of(self.trace)
    }

    pub fn span_hex(&self) -> Hex<16> {
        Hex::of(u128::from(self.span))
    }

    pub fn id_text(&self) -> IdText {
        let mut buf = [0u8; ulid::ULID_LEN];
        self.id.array_to_str(&mut buf);
        IdText(buf)
    }

    /// Appends the event's wire JSON to `buf`; `ids` (trace id, span id) replace the simulated
    /// ones, as when the event joins the pipeline's own trace.
    pub fn write_json(&self, buf: &mut Vec<u8>, ids: Option<(&str, &str)>) {
        let (trace, span) = (self.trace_hex(), self.span_hex());
        let (trace_id, span_id) = ids.unwrap_or((trace.as_str(), span.as_str()));
        let id = self.id_text();
        let wire = Wire {
            draft: self,
            event_id: id.as_str(),
            trace_id,
            span_id,
        };
        serde_json::to_writer(buf, &wire).expect("a draft serializes");
    }

    /// The same event as a [`LogEvent`] (tests, benches and the storage bench build these).
    pub fn to_event(&self) -> LogEvent {
        let attributes = Map::from_iter([
            ("http.method".into(), Value::from(self.method)),
            ("http.path".into(), Value::from(self.path)),
            ("http.status".into(), Value::from(self.status)),
            ("latency_ms".into(), Value::from(self.latency_ms)),
            ("user".into(), Value::from(self.user)),
            ("client.ip".into(), Value::from(self.client_ip)),
        ]);
        LogEvent {
            event_id: self.id.to_string(),
            timestamp: self.timestamp,
            level: self.level,
            service: self.service.into(),
            component: self.component.into(),
            host: self.host.into(),
            message: self.message.into(),
            trace_id: Some(self.trace_hex().as_str().into()),
            span_id: Some(self.span_hex().as_str().into()),
            attributes,
        }
    }
}

/// The draft in `LogEvent`'s field order, with the id texts made once.
struct Wire<'d, 'a> {
    draft: &'d Draft<'a>,
    event_id: &'d str,
    trace_id: &'d str,
    span_id: &'d str,
}

impl Serialize for Wire<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.draft;
        let mut e = s.serialize_struct("LogEvent", 10)?;
        e.serialize_field("event_id", self.event_id)?;
        e.serialize_field(
            "timestamp",
            &logpipe_common::timestamp::Rfc3339(&d.timestamp),
        )?;
        e.serialize_field("level", &d.level)?;
        e.serialize_field("service", d.service)?;
        e.serialize_field("component", d.component)?;
        e.serialize_field("host", d.host)?;
        e.serialize_field("message", d.message)?;
        e.serialize_field("trace_id", self.trace_id)?;
        e.serialize_field("span_id", self.span_id)?;
        e.serialize_field("attributes", &Attributes(d))?;
        e.end()
    }
}

/// The six HTTP attributes, in the order a `serde_json::Map` (sorted by key) writes them.
struct Attributes<'d, 'a>(&'d Draft<'a>);

impl Serialize for Attributes<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("client.ip", d.client_ip)?;
        m.serialize_entry("http.method", d.method)?;
        m.serialize_entry("http.path", d.path)?;
        m.serialize_entry("http.status", &d.status)?;
        m.serialize_entry("latency_ms", &d.latency_ms)?;
        m.serialize_entry("user", d.user)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EventFactory, Profile};
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The hand-made writer against serde's `LogEvent`: the same bytes for every profile,
        /// seed, moment and cycle second, draw after draw from one factory (so the reused buffers
        /// are reused), with the simulated ids and with the pipeline's.
        #[test]
        fn a_draft_writes_the_bytes_its_log_event_serializes_to(
            seed in any::<u64>(),
            profile in 0..5usize,
            millis in -62_135_596_800_000i64..253_402_300_799_999,
            elapsed_ms in 0..600_000u64,
            host in "[a-z0-9.-]{0,20}|\\PC{0,8}",
            joined in any::<bool>(),
        ) {
            let profile = Profile::parse(Profile::NAMES[profile]).unwrap();
            let now = chrono::Utc.timestamp_millis_opt(millis).unwrap();
            let mut f = EventFactory::new(seed, host, profile);
            let ids = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
            for i in 0..40 {
                let d = f.draw(now, Duration::from_millis(elapsed_ms + i * 997));
                let mut event = d.to_event();
                let mut written = b"kept".to_vec();
                if joined {
                    d.write_json(&mut written, Some(ids));
                    event.trace_id = Some(ids.0.into());
                    event.span_id = Some(ids.1.into());
                } else {
                    d.write_json(&mut written, None);
                }
                let mut expected = b"kept".to_vec();
                expected.extend(serde_json::to_vec(&event).unwrap());
                prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
            }
        }
    }

    #[test]
    fn ids_are_written_as_fixed_width_lowercase_hex() {
        assert_eq!(super::Hex::<16>::of(0).as_str(), "0000000000000000");
        assert_eq!(
            super::Hex::<32>::of(u128::MAX).as_str(),
            "ffffffffffffffffffffffffffffffff"
        );
        assert_eq!(
            super::Hex::<32>::of(0xabc).as_str(),
            format!("{:032x}", 0xabcu128)
        );
    }
}
