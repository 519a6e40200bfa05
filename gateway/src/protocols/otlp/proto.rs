//! The OTLP logs messages logpipe reads and writes, from `opentelemetry-proto`'s
//! `collector/logs/v1`, `logs/v1`, `common/v1` and `resource/v1` (field numbers as there; fields
//! logpipe does not map are left out, and protobuf skips them on decode). One set of types serves
//! both encodings: protobuf through `prost`, and OTLP/JSON through `serde` (lowerCamelCase names,
//! the proto names accepted too; 64-bit integers as strings or numbers; ids as hex; enums as
//! integers or their names).

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    #[serde(default, alias = "resource_logs")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default, alias = "scope_logs")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default, alias = "log_records")]
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    #[serde(default, alias = "time_unix_nano", deserialize_with = "u64_text")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "11")]
    #[serde(
        default,
        alias = "observed_time_unix_nano",
        deserialize_with = "u64_text"
    )]
    pub observed_time_unix_nano: u64,
    #[prost(int32, tag = "2")]
    #[serde(default, alias = "severity_number", deserialize_with = "severity")]
    pub severity_number: i32,
    #[prost(string, tag = "3")]
    #[serde(default, alias = "severity_text")]
    pub severity_text: String,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
    #[prost(bytes = "vec", tag = "9")]
    #[serde(default, alias = "trace_id", deserialize_with = "hex_bytes")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    #[serde(default, alias = "span_id", deserialize_with = "hex_bytes")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "12")]
    #[serde(default, alias = "event_name")]
    pub event_name: String,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub value: Option<AnyValue>,
}

/// One value: `{"stringValue": "x"}`, `{"intValue": "5"}`, `{"kvlistValue": {"values": [...]}}`...
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    Kvlist(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub values: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLogsServiceResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLogsPartialSuccess {
    /// A JSON number: the spec's int64-as-string rule is for readers to accept, and every
    /// OTLP/JSON reader takes numbers too.
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`: the body of every OTLP/HTTP error answer.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnyVisitor;
        impl<'de> Visitor<'de> for AnyVisitor {
            type Value = AnyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an OTLP AnyValue object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    value = Some(match key.as_ref() {
                        "stringValue" | "string_value" => Value::String(map.next_value()?),
                        "boolValue" | "bool_value" => Value::Bool(map.next_value()?),
                        "intValue" | "int_value" => Value::Int(map.next_value::<I64Text>()?.0),
                        "doubleValue" | "double_value" => {
                            Value::Double(map.next_value::<F64Text>()?.0)
                        }
                        "arrayValue" | "array_value" => Value::Array(map.next_value()?),
                        "kvlistValue" | "kvlist_value" => Value::Kvlist(map.next_value()?),
                        "bytesValue" | "bytes_value" => {
                            let text: std::borrow::Cow<'de, str> = map.next_value()?;
                            Value::Bytes(base64_any(&text).map_err(de::Error::custom)?)
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    });
                }
                Ok(AnyValue { value })
            }
        }
        d.deserialize_map(AnyVisitor)
    }
}

/// A protobuf-JSON 64-bit integer: a number or a decimal string.
struct I64Text(i64);

impl<'de> Deserialize<'de> for I64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            N(i64),
            S(std::borrow::Cow<'a, str>),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(I64Text(n)),
            Either::S(s) => s
                .trim()
                .parse()
                .map(I64Text)
                .map_err(|_| de::Error::custom(format!("{s:?} is not a 64-bit integer"))),
        }
    }
}

/// A protobuf-JSON double: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` or a decimal string.
struct F64Text(f64);

impl<'de> Deserialize<'de> for F64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            N(f64),
            S(std::borrow::Cow<'a, str>),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(F64Text(n)),
            Either::S(s) => match s.as_ref() {
                "NaN" => Ok(F64Text(f64::NAN)),
                "Infinity" => Ok(F64Text(f64::INFINITY)),
                "-Infinity" => Ok(F64Text(f64::NEG_INFINITY)),
                other => other
                    .trim()
                    .parse()
                    .map(F64Text)
                    .map_err(|_| de::Error::custom(format!("{other:?} is not a number"))),
            },
        }
    }
}

fn u64_text<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        N(u64),
        S(std::borrow::Cow<'a, str>),
    }
    match Either::deserialize(d)? {
        Either::N(n) => Ok(n),
        Either::S(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("{s:?} is not an unsigned 64-bit integer"))),
    }
}

/// A severity number, or its enum name (`SEVERITY_NUMBER_WARN`), which some senders write.
fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        N(i32),
        S(std::borrow::Cow<'a, str>),
    }
    match Either::deserialize(d)? {
        Either::N(n) => Ok(n),
        Either::S(s) => severity_by_name(&s)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not a severity number"))),
    }
}

fn severity_by_name(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("SEVERITY_NUMBER_")?;
    let (base, step) = match rest.char_indices().find(|(_, c)| c.is_ascii_digit()) {
        Some((i, _)) => (&rest[..i], rest[i..].parse::<i32>().ok()?),
        None => (rest, 1),
    };
    if !(1..=4).contains(&step) {
        return None;
    }
    let first = match base {
        "UNSPECIFIED" if step == 1 => return Some(0),
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        _ => return None,
    };
    Some(first + step - 1)
}

/// Trace and span ids are hex in OTLP/JSON (unlike other bytes fields, which are base64).
fn hex_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(de::Error::custom(format!("{s:?} is not a hex id")));
    }
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked hex"))
        .collect())
}

/// Base64, standard or URL-safe alphabet, padded or not (protobuf-JSON readers accept either).
fn base64_any(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let t = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(t).ok())
        .ok_or_else(|| format!("bytesValue {t:?} is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_names_map_to_their_numbers() {
        assert_eq!(severity_by_name("SEVERITY_NUMBER_INFO"), Some(9));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_WARN3"), Some(15));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_FATAL4"), Some(24));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_UNSPECIFIED"), Some(0));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_INFO5"), None);
        assert_eq!(severity_by_name("INFO"), None);
    }
}
