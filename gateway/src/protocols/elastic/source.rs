//! Where a source document's fields are taken from: the [`Fields`] the mapping in
//! `bulk.rs` (`document_event`) reads through, over a whole JSON object (`Map`, the plain form
//! and the tests' reference) and over [`Source`], a document read in one pass that sets each
//! field the mapping may take in a slot of its own, nested heads (`log`, `service`, `host`,
//! `event`, `trace`, `span`) included, so no tree is built for them and no map is searched.

use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields of one document, as the mapping takes them: a field is taken (removed) only when the
/// mapping can use it, otherwise it stays where it came, so `attributes` keeps it as sent.
pub trait Fields {
    /// Take the field named `dotted` (flat, or nested one level under its head) when `pick`
    /// accepts its value.
    fn take_where(&mut self, dotted: &str, pick: impl Fn(&Value) -> bool) -> Option<Value>;

    /// What is left: the event's attributes.
    fn into_attributes(self) -> Map<String, Value>;

    /// Take the field named `dotted` whatever it holds.
    fn take_value(&mut self, dotted: &str) -> Option<Value> {
        self.take_where(dotted, |_| true)
    }

    /// Take the field named `dotted` when it holds a string that `usable` accepts.
    fn take_string_if(&mut self, dotted: &str, usable: impl Fn(&str) -> bool) -> Option<String> {
        match self.take_where(dotted, |v| v.as_str().is_some_and(&usable))? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A field by its dotted ECS name in a whole object: the flat key first (`"log.level"`), else
/// nested under its head (`"log": {"level"}`); an object emptied by a take is removed too (one
/// left empty by the sender stays).
impl Fields for Map<String, Value> {
    fn take_where(&mut self, dotted: &str, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.get(dotted) {
            return if pick(v) { self.remove(dotted) } else { None };
        }
        let (head, rest) = dotted.split_once('.')?;
        let Some(Value::Object(inner)) = self.get_mut(head) else {
            return None;
        };
        if !pick(inner.get(rest)?) {
            return None;
        }
        let v = inner.remove(rest);
        if inner.is_empty() {
            self.remove(head);
        }
        v
    }

    fn into_attributes(self) -> Map<String, Value> {
        self
    }
}

/// The names the mapping takes that are not the head of a nested one (flat dotted names included).
const FLAT: [&str; 20] = [
    "@timestamp",
    "timestamp",
    "time",
    "log.level",
    "level",
    "severity",
    "PRIORITY",
    "service.name",
    "PROGRAM",
    "message",
    "msg",
    "event.original",
    "MESSAGE",
    "host.name",
    "host.hostname",
    "HOST",
    "log.logger",
    "component",
    "trace.id",
    "span.id",
];

/// The heads of nested names, each with the names the mapping takes under it.
const HEADS: [(&str, &[&str]); 6] = [
    ("log", &["level", "logger"]),
    ("service", &["name"]),
    ("host", &["name", "hostname"]),
    ("event", &["original"]),
    ("trace", &["id"]),
    ("span", &["id"]),
];

fn flat_slot(key: &str) -> Option<usize> {
    FLAT.iter().position(|n| *n == key)
}

fn head_slot(key: &str) -> Option<usize> {
    HEADS.iter().position(|(h, _)| *h == key)
}

/// A source document read in one pass: each name the mapping may take in its slot, every other
/// field straight into `rest` (the attributes).
#[derive(Debug, Default)]
pub struct Source {
    flat: [Option<Value>; FLAT.len()],
    heads: [Option<HeadValue>; HEADS.len()],
    rest: Map<String, Value>,
}

/// What a head holds: an object, read into slots for the names under it, or any other value (a
/// plain `"log": "line"` or `"host": "web-1"`).
#[derive(Debug)]
enum HeadValue {
    Object(Head),
    Other(Value),
}

#[derive(Debug, Default)]
struct Head {
    subs: [Option<Value>; 2],
    rest: Map<String, Value>,
    /// Whether a take removed something (an object emptied by the mapping is dropped; one sent
    /// empty stays).
    taken: bool,
}

impl Head {
    fn is_empty(&self) -> bool {
        self.rest.is_empty() && self.subs.iter().all(Option::is_none)
    }

    fn into_value(self, names: &[&str]) -> Value {
        let mut obj = self.rest;
        for (name, v) in names.iter().zip(self.subs) {
            if let Some(v) = v {
                obj.insert((*name).to_owned(), v);
            }
        }
        Value::Object(obj)
    }
}

impl Fields for Source {
    fn take_where(&mut self, dotted: &str, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = flat_slot(dotted) {
            if let Some(v) = &self.flat[i] {
                return if pick(v) { self.flat[i].take() } else { None };
            }
            let (head, sub) = dotted.split_once('.')?;
            let h = head_slot(head)?;
            let Some(HeadValue::Object(obj)) = &mut self.heads[h] else {
                return None;
            };
            let j = HEADS[h].1.iter().position(|n| *n == sub)?;
            if !pick(obj.subs[j].as_ref()?) {
                return None;
            }
            obj.taken = true;
            let v = obj.subs[j].take();
            if obj.is_empty() {
                self.heads[h] = None;
            }
            return v;
        }
        // A head named whole ("log", "host", "service"): taken only when it is not an object.
        let h = head_slot(dotted)?;
        match &self.heads[h] {
            Some(HeadValue::Other(v)) if pick(v) => match self.heads[h].take() {
                Some(HeadValue::Other(v)) => Some(v),
                _ => None,
            },
            _ => None,
        }
    }

    fn into_attributes(self) -> Map<String, Value> {
        let mut out = self.rest;
        for (name, v) in FLAT.iter().zip(self.flat) {
            if let Some(v) = v {
                out.insert((*name).to_owned(), v);
            }
        }
        for ((name, subs), v) in HEADS.iter().zip(self.heads) {
            let v = match v {
                None => continue,
                Some(HeadValue::Other(v)) => v,
                Some(HeadValue::Object(obj)) if obj.taken && obj.is_empty() => continue,
                Some(HeadValue::Object(obj)) => obj.into_value(subs),
            };
            out.insert((*name).to_owned(), v);
        }
        out
    }
}

/// An object key, borrowed from the body when it has no escapes (most do), so a key the mapping
/// takes costs no allocation.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = Source;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
                let mut src = Source::default();
                // A key sent twice keeps its last value, as a JSON object read whole does.
                while let Some(Key(key)) = map.next_key()? {
                    if let Some(i) = flat_slot(&key) {
                        src.flat[i] = Some(map.next_value()?);
                    } else if let Some(h) = head_slot(&key) {
                        src.heads[h] = Some(map.next_value_seed(HeadSeed(HEADS[h].1))?);
                    } else {
                        src.rest.insert(key.into_owned(), map.next_value()?);
                    }
                }
                Ok(src)
            }
        }
        d.deserialize_map(SourceVisitor)
    }
}

/// Reads a head's value: an object into slots for `names`, anything else as it is.
struct HeadSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for HeadSeed {
    type Value = HeadValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HeadValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed {
    type Value = HeadValue;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadValue, A::Error> {
        let mut head = Head::default();
        while let Some(Key(key)) = map.next_key()? {
            match self.0.iter().position(|n| *n == key) {
                Some(j) => head.subs[j] = Some(map.next_value()?),
                None => {
                    head.rest.insert(key.into_owned(), map.next_value()?);
                }
            }
        }
        Ok(HeadValue::Object(head))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<HeadValue, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(HeadValue::Other)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<HeadValue, E> {
        Ok(HeadValue::Other(Value::Null))
    }
}
