//! The event as the collector holds it: the record's JSON text, kept whole, with each field
//! located in it. Reading one costs a copy of the record and a pass over its attributes, where
//! [`LogEvent`] costs a `String` per field and a tree of the attributes; and the attributes go to
//! PostgreSQL as the text that arrived, never rebuilt and written again.
//!
//! An ingest point reads a record as [`Unchecked`], fills in what the event left out (an id, the
//! request's trace), checks it, and sends it on with [`RawEvent::write_json`]: the attributes as
//! their text, never parsed into a tree and written again.
//!
//! It accepts and refuses what [`LogEvent::from_json`] does, with the same errors, with two
//! documented differences: attributes are bounded as written, so a key written twice counts twice
//! toward the 64 entries and 16 KiB (jsonb, like serde_json's map, then keeps the last); and
//! attributes nested past serde_json's recursion limit (128 levels) are refused as `too_deep`,
//! naming the bound, where the tree reading stops at the limit and says `invalid_json`. The
//! property tests in `tests/raw_event.rs` hold the two readings to that.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::attributes::{scan, write_in_jsonb_order, Attribute, Entry};
use crate::event::{validate_fields, EventError, Fields, Level, LogEvent};

/// A field's text: where it lies in the record, or the decoded text when it held escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    At(u32, u32),
    Owned(Box<str>),
}

impl Text {
    fn get<'a>(&'a self, record: &'a str) -> &'a str {
        match self {
            Text::At(a, b) => &record[*a as usize..*b as usize],
            Text::Owned(s) => s,
        }
    }
}

/// One event, kept as the JSON text it arrived in (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct RawEvent {
    record: Box<str>,
    event_id: Text,
    service: Text,
    component: Text,
    host: Text,
    message: Text,
    trace_id: Option<Text>,
    span_id: Option<Text>,
    attributes: Text,
    entries: Vec<Entry>,
    timestamp: DateTime<Utc>,
    level: Level,
}

impl fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEvent")
            .field("event_id", &self.event_id())
            .field("timestamp", &self.timestamp)
            .field("level", &self.level)
            .field("service", &self.service())
            .field("message", &self.message())
            .field("attributes", &self.attributes_json())
            .finish_non_exhaustive()
    }
}

/// A string field as read: borrowed from the record unless it held an escape.
struct Str<'a>(Cow<'a, str>);

impl Default for Str<'_> {
    fn default() -> Self {
        Str(Cow::Borrowed(""))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The attributes' text; present whenever the field is, so `null` reaches the scan and is refused
/// there as the map it is not (an `Option` would read it as absent).
#[derive(Default)]
struct Attrs<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Attrs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(|raw| Attrs(Some(raw)))
    }
}

/// The wire schema (`LogEvent`'s serde attributes, field for field), borrowing.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    event_id: Option<Str<'a>>,
    #[serde(deserialize_with = "timestamp")]
    timestamp: DateTime<Utc>,
    level: Level,
    #[serde(borrow)]
    service: Str<'a>,
    #[serde(default, borrow)]
    component: Str<'a>,
    #[serde(default, borrow)]
    host: Str<'a>,
    #[serde(borrow)]
    message: Str<'a>,
    #[serde(default, borrow)]
    trace_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    span_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    attributes: Attrs<'a>,
}

/// A timestamp string, as chrono's `Deserialize` reads one (`crate::timestamp`).
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 date and time")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            crate::timestamp::parse_utc(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// Where `part` lies in `whole`, when it is a slice of it.
fn range_in(whole: &str, part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start + part.len();
    (end <= whole.len()).then_some(start..end)
}

fn locate(record: &str, s: Cow<'_, str>) -> Text {
    match s {
        Cow::Borrowed(b) => match range_in(record, b) {
            Some(r) if u32::try_from(r.end).is_ok() => Text::At(r.start as u32, r.end as u32),
            _ => Text::Owned(b.into()),
        },
        Cow::Owned(o) => Text::Owned(o.into_boxed_str()),
    }
}

impl RawEvent {
    /// Read and validate one JSON record.
    pub fn from_json(bytes: &[u8]) -> Result<RawEvent, EventError> {
        let text = std::str::from_utf8(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        Self::parse(text.into())
    }

    fn parse(record: Box<str>) -> Result<RawEvent, EventError> {
        Self::read(record)?.check()
    }

    /// Read one record whose id (or trace) the reader may still fill in: only its JSON and its
    /// attributes' syntax are checked yet (see [`Unchecked`]).
    pub fn read_json(text: &str) -> Result<Unchecked, EventError> {
        Self::read(text.into())
    }

    fn read(record: Box<str>) -> Result<Unchecked, EventError> {
        let wire: Wire<'_> =
            serde_json::from_str(&record).map_err(|e| EventError::Json(e.to_string()))?;
        let (attributes, scanned) = match wire.attributes.0 {
            None => (Text::Owned("{}".into()), Default::default()),
            Some(raw) => {
                let scanned = scan(raw.get())?;
                (locate(&record, Cow::Borrowed(raw.get())), scanned)
            }
        };
        let text = |s: Option<Str<'_>>| s.map(|s| locate(&record, s.0));
        let event = RawEvent {
            event_id: text(wire.event_id).unwrap_or(Text::Owned("".into())),
            service: locate(&record, wire.service.0),
            component: locate(&record, wire.component.0),
            host: locate(&record, wire.host.0),
            message: locate(&record, wire.message.0),
            trace_id: text(wire.trace_id),
            span_id: text(wire.span_id),
            attributes,
            entries: scanned.entries,
            timestamp: wire.timestamp,
            level: wire.level,
            record,
        };
        Ok(Unchecked {
            event,
            problem: scanned.problem,
            rewrite: scanned.rewrite,
        })
    }

    /// Numbers PostgreSQL might refuse as written (see `attributes::MAX_VERBATIM_NUMBER_BYTES`)
    /// are written as serde_json writes them, which it always takes.
    fn rewrite_attributes(&mut self) -> Result<(), EventError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(self.attributes_json())
                .map_err(|e| EventError::Json(e.to_string()))?;
        let text = serde_json::Value::Object(map).to_string();
        self.entries = scan(&text)?.entries;
        self.attributes = Text::Owned(text.into_boxed_str());
        Ok(())
    }

    /// An event built in code (a parsed Apache or syslog line, the canary), validated as a
    /// record would be.
    pub fn from_event(event: &LogEvent) -> Result<RawEvent, EventError> {
        Self::parse(
            String::from_utf8(event.to_json())
                .expect("JSON is UTF-8")
                .into(),
        )
    }

    /// The event as the owned type, for code that builds or compares whole events.
    pub fn to_event(&self) -> LogEvent {
        LogEvent {
            event_id: self.event_id().to_owned(),
            timestamp: self.timestamp,
            level: self.level,
            service: self.service().to_owned(),
            component: self.component().to_owned(),
            host: self.host().to_owned(),
            message: self.message().to_owned(),
            trace_id: self.trace_id().map(str::to_owned),
            span_id: self.span_id().map(str::to_owned),
            attributes: serde_json::from_str(self.attributes_json())
                .expect("the attributes were read as a map"),
        }
    }

    /// The record's whole JSON text (a line's: the event it was read into, as JSON): what a
    /// dead-letter copy carries.
    pub fn record(&self) -> &str {
        &self.record
    }

    pub fn event_id(&self) -> &str {
        self.event_id.get(&self.record)
    }

    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn service(&self) -> &str {
        self.service.get(&self.record)
    }

    pub fn component(&self) -> &str {
        self.component.get(&self.record)
    }

    pub fn host(&self) -> &str {
        self.host.get(&self.record)
    }

    pub fn message(&self) -> &str {
        self.message.get(&self.record)
    }

    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_ref().map(|t| t.get(&self.record))
    }

    pub fn span_id(&self) -> Option<&str> {
        self.span_id.as_ref().map(|t| t.get(&self.record))
    }

    /// The attributes as a JSON object's text: as they arrived, or rewritten where a number
    /// had to be; `{}` when there were none.
    pub fn attributes_json(&self) -> &str {
        self.attributes.get(&self.record)
    }

    /// The attributes' text for a jsonb column: their top-level entries in the order jsonb
    /// stores them (see `attributes::write_in_jsonb_order`); the same object as
    /// [`Self::attributes_json`].
    pub fn write_attributes_for_jsonb(&self, out: &mut Vec<u8>) {
        write_in_jsonb_order(self.attributes_json(), &self.entries, out);
    }

    /// How many attributes were written (a key written twice counts twice).
    pub fn attribute_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends the event's wire JSON: `LogEvent`'s fields in its order, the attributes as their
    /// text (as they arrived, or rewritten where a number had to be). For an event that arrived as
    /// serde writes a [`LogEvent`], these are the bytes `LogEvent::to_json` writes; for any other,
    /// the same event, without building the attributes' tree to write them.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn field(out: &mut Vec<u8>, name: &str, value: &impl serde::Serialize) {
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            // Strings, a level and a timestamp into a `Vec`: nothing here can fail.
            serde_json::to_writer(&mut *out, value).expect("a field serializes");
            out.push(b',');
        }
        out.push(b'{');
        field(out, "event_id", &self.event_id());
        field(
            out,
            "timestamp",
            &crate::timestamp::Rfc3339(&self.timestamp),
        );
        field(out, "level", &self.level);
        field(out, "service", &self.service());
        field(out, "component", &self.component());
        field(out, "host", &self.host());
        field(out, "message", &self.message());
        if let Some(t) = self.trace_id() {
            field(out, "trace_id", &t);
        }
        if let Some(s) = self.span_id() {
            field(out, "span_id", &s);
        }
        out.extend_from_slice(b"\"attributes\":");
        out.extend_from_slice(self.attributes_json().as_bytes());
        out.push(b'}');
    }

    /// One top-level attribute; when a key was written twice, the last (as jsonb keeps it).
    pub fn attribute(&self, key: &str) -> Option<Attribute<'_>> {
        let text = self.attributes_json();
        self.entries
            .iter()
            .rev()
            .find(|e| e.is(text, key))
            .map(|e| Attribute::new(e.value(text)))
    }
}

/// An event read from its JSON ([`RawEvent::read_json`]) whose named fields are not checked yet:
/// what an ingest point holds while it fills in what the event left out (an id, the request's
/// trace). [`Unchecked::check`] makes it a [`RawEvent`] with exactly the checks, in the order,
/// [`RawEvent::from_json`] applies.
pub struct Unchecked {
    event: RawEvent,
    /// The attributes' first broken bound, reported after the named fields (as `from_json` does).
    problem: Option<EventError>,
    rewrite: bool,
}

impl Unchecked {
    /// The id as read; empty when the record had none (absent or `null`).
    pub fn event_id(&self) -> &str {
        self.event.event_id()
    }

    pub fn timestamp(&self) -> DateTime<Utc> {
        self.event.timestamp
    }

    pub fn trace_id(&self) -> Option<&str> {
        self.event.trace_id()
    }

    pub fn set_event_id(&mut self, id: String) {
        self.event.event_id = Text::Owned(id.into_boxed_str());
    }

    pub fn set_trace_id(&mut self, id: String) {
        self.event.trace_id = Some(Text::Owned(id.into_boxed_str()));
    }

    /// Every check [`RawEvent::from_json`] makes, in its order.
    pub fn check(self) -> Result<RawEvent, EventError> {
        let Unchecked {
            mut event,
            problem,
            rewrite,
        } = self;
        validate_fields(&Fields {
            event_id: event.event_id(),
            service: event.service(),
            component: event.component(),
            host: event.host(),
            message: event.message(),
            trace_id: event.trace_id(),
            span_id: event.span_id(),
            timestamp: event.timestamp,
            attributes: event.entries.len(),
        })?;
        if let Some(problem) = problem {
            return Err(problem);
        }
        if rewrite {
            event.rewrite_attributes()?;
        }
        Ok(event)
    }
}
