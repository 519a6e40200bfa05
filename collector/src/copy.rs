//! Rows of `log_events` in PostgreSQL's binary COPY format: no text escaping on our side and no text
//! parsing of numbers and timestamps on the server's.
//!
//! Layout (PostgreSQL docs, "COPY", binary format): signature, flags, header extension, then per row
//! a 16-bit field count and per field a 32-bit length (-1 for NULL) and the value in the type's
//! binary send format; a 16-bit -1 ends the data.

use chrono::{DateTime, Utc};

use crate::batch::StoredEvent;

/// The column list the encoder writes, in order.
pub const LOG_EVENT_COLUMNS: &str = "event_id, ts, level, service, component, host, message, \
     trace_id, span_id, attributes, kafka_partition, kafka_offset";
const FIELDS: i16 = 12;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Default)]
pub struct CopyEncoder {
    buf: Vec<u8>,
    /// The attributes as a `json` column takes them (no jsonb version byte); jsonb by default.
    json_attributes: bool,
}

impl CopyEncoder {
    /// Rows for a table whose `attributes` column is `json` rather than `jsonb` (the storage
    /// benchmark measures what jsonb's conversion costs against it).
    pub fn for_json_attributes(rows: usize) -> Self {
        CopyEncoder {
            json_attributes: true,
            ..Self::with_capacity(rows)
        }
    }

    pub fn with_capacity(rows: usize) -> Self {
        let mut buf = Vec::with_capacity(19 + rows * 512);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyEncoder {
            buf,
            json_attributes: false,
        }
    }

    fn text(&mut self, s: &str) {
        self.buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn timestamptz(&mut self, t: DateTime<Utc>) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        let micros = t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
        self.buf.extend_from_slice(&micros.to_be_bytes());
    }

    pub fn row(&mut self, s: &StoredEvent<'_>) {
        let e = &s.event;
        self.buf.extend_from_slice(&FIELDS.to_be_bytes());
        self.text(e.event_id());
        self.timestamptz(e.timestamp());
        self.text(e.level().as_str());
        self.text(e.service());
        self.text(e.component());
        self.text(e.host());
        self.text(e.message());
        self.opt_text(e.trace_id());
        self.opt_text(e.span_id());
        // The attributes' text as it arrived (checked to be what jsonb takes, see
        // `logpipe_common::attributes`): jsonb binary = a version byte (1) and the JSON text,
        // its top-level keys in jsonb's order; json's is the text alone, as it arrived.
        let length_at = self.buf.len();
        self.buf.extend_from_slice(&0i32.to_be_bytes());
        if self.json_attributes {
            self.buf.extend_from_slice(e.attributes_json().as_bytes());
        } else {
            self.buf.push(1);
            e.write_attributes_for_jsonb(&mut self.buf);
        }
        let length = (self.buf.len() - length_at - 4) as i32;
        self.buf[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        self.buf.extend_from_slice(&4i32.to_be_bytes());
        self.buf.extend_from_slice(&s.partition.to_be_bytes());
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&s.offset.to_be_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logpipe_common::{Level, LogEvent, RawEvent};

    #[test]
    fn a_row_has_twelve_fields_with_null_for_missing_trace_ids() {
        let mut enc = CopyEncoder::with_capacity(1);
        let event = LogEvent {
            event_id: "01ABC".into(),
            timestamp: "2000-01-01T00:00:01Z".parse().unwrap(),
            level: Level::Info,
            service: "s".into(),
            component: String::new(),
            host: String::new(),
            message: "m".into(),
            trace_id: None,
            span_id: None,
            attributes: Default::default(),
        };
        let event = RawEvent::from_event(&event).unwrap();
        enc.row(&StoredEvent {
            event: &event,
            partition: 2,
            offset: 7,
        });
        let bytes = enc.finish();
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert_eq!(&bytes[19..21], &12i16.to_be_bytes());
        // event_id: length 5 then the bytes.
        assert_eq!(&bytes[21..25], &5i32.to_be_bytes());
        assert_eq!(&bytes[25..30], b"01ABC");
        // ts: 8 bytes, one second after the PostgreSQL epoch.
        assert_eq!(&bytes[34..42], &1_000_000i64.to_be_bytes());
        assert!(bytes.ends_with(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff]));
    }
}
