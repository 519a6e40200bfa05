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

/// A JSON number or string, read as it comes: no buffering, and no error built for the variant
/// that does not fit (an untagged enum did both for every timestamp, which OTLP/JSON writes as a
/// string; that was a tenth of the decode).
enum Scalar<'a> {
    U(u64),
    I(i64),
    F(f64),
    S(std::borrow::Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, or a string holding one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::U(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::I(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::F(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::S(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::S(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

impl Scalar<'_> {
    /// An integer, from a JSON integer or a decimal string; a fraction is not one.
    fn integer<T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr>(&self) -> Option<T> {
        match self {
            Scalar::U(n) => T::try_from(*n).ok(),
            Scalar::I(n) => T::try_from(*n).ok(),
            Scalar::F(_) => None,
            Scalar::S(s) => s.trim().parse().ok(),
        }
    }
}

impl std::fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::U(n) => write!(f, "{n}"),
            Scalar::I(n) => write!(f, "{n}"),
            Scalar::F(n) => write!(f, "{n}"),
            Scalar::S(s) => write!(f, "{s:?}"),
        }
    }
}

/// A protobuf-JSON 64-bit integer: a number or a decimal string.
struct I64Text(i64);

impl<'de> Deserialize<'de> for I64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Scalar::deserialize(d)?;
        v.integer()
            .map(I64Text)
            .ok_or_else(|| de::Error::custom(format!("{v} is not a 64-bit integer")))
    }
}

/// A protobuf-JSON double: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` or a decimal string.
struct F64Text(f64);

impl<'de> Deserialize<'de> for F64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::U(n) => Ok(F64Text(n as f64)),
            Scalar::I(n) => Ok(F64Text(n as f64)),
            Scalar::F(n) => Ok(F64Text(n)),
            Scalar::S(s) => match s.as_ref() {
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
    let v = Scalar::deserialize(d)?;
    v.integer()
        .ok_or_else(|| de::Error::custom(format!("{v} is not an unsigned 64-bit integer")))
}

/// A severity number, or its enum name (`SEVERITY_NUMBER_WARN`), which some senders write.
fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let v = Scalar::deserialize(d)?;
    let n = match &v {
        Scalar::S(s) => severity_by_name(s),
        // A number written as a number; a string is a name, as before.
        number => number.integer(),
    };
    n.ok_or_else(|| de::Error::custom(format!("{v} is not a severity number")))
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

    #[derive(Debug, Deserialize)]
    struct Fields {
        #[serde(default, deserialize_with = "u64_text")]
        t: u64,
        #[serde(default, deserialize_with = "severity")]
        sev: i32,
        #[serde(default)]
        i: Option<I64Text>,
        #[serde(default)]
        f: Option<F64Text>,
    }

    impl std::fmt::Debug for I64Text {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    impl std::fmt::Debug for F64Text {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    fn read(json: &str) -> Result<Fields, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn protobuf_json_numbers_read_as_numbers_or_decimal_strings_and_nothing_else() {
        let f = read(
            r#"{"t":"1733486400000000000","sev":"SEVERITY_NUMBER_WARN2","i":"-5","f":"Infinity"}"#,
        )
        .unwrap();
        assert_eq!(
            (f.t, f.sev, f.i.unwrap().0),
            (1_733_486_400_000_000_000, 14, -5)
        );
        assert!(f.f.unwrap().0.is_infinite());
        let f =
            read(r#"{"t":18446744073709551615,"sev":9,"i":-9223372036854775808,"f":2}"#).unwrap();
        assert_eq!((f.t, f.sev, f.i.unwrap().0), (u64::MAX, 9, i64::MIN));
        assert_eq!(f.f.unwrap().0, 2.0);
        assert_eq!(read(r#"{"t":" 7 "}"#).unwrap().t, 7);
        for (bad, says) in [
            (r#"{"t":1.5}"#, "1.5 is not an unsigned"),
            (r#"{"t":-1}"#, "-1 is not an unsigned"),
            (r#"{"t":"12x"}"#, "\"12x\" is not an unsigned"),
            (r#"{"t":null}"#, "a number, or a string"),
            (r#"{"t":true}"#, "a number, or a string"),
            (
                r#"{"i":9223372036854775808}"#,
                "9223372036854775808 is not a 64-bit",
            ),
            (r#"{"sev":"9"}"#, "\"9\" is not a severity"),
            (r#"{"sev":4294967296}"#, "4294967296 is not a severity"),
            (r#"{"f":"fast"}"#, "\"fast\" is not a number"),
        ] {
            let e = read(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        /// Any 64-bit integer reads back the same, written as a number or as a (padded) string.
        #[test]
        fn any_integer_reads_back_as_a_number_or_a_string(
            t in proptest::prelude::any::<u64>(),
            i in proptest::prelude::any::<i64>(),
            sev in 0i32..=24,
            quoted in proptest::prelude::any::<bool>(),
            pad in "[ ]{0,2}",
        ) {
            let q = |v: String| if quoted { format!("\"{pad}{v}{pad}\"") } else { v };
            let json = format!(r#"{{"t":{},"sev":{sev},"i":{}}}"#, q(t.to_string()), q(i.to_string()));
            let f = read(&json).unwrap();
            proptest::prop_assert_eq!((f.t, f.sev, f.i.unwrap().0), (t, sev, i));
        }

        /// Any string or float in an integer field is read exactly when it is an integer, and
        /// otherwise refused with a message naming what it is not; never a panic.
        #[test]
        fn any_text_or_float_in_an_integer_field_is_read_or_refused_by_name(
            text in "\\PC{0,24}|-?[0-9]{1,21}",
            x in proptest::prelude::any::<f64>(),
        ) {
            let json = format!(r#"{{"t":{}}}"#, serde_json::to_string(&text).unwrap());
            match (read(&json), text.trim().parse::<u64>()) {
                (Ok(f), Ok(n)) => proptest::prop_assert_eq!(f.t, n),
                (Err(e), Err(_)) => proptest::prop_assert!(e.contains("is not an unsigned"), "{}", e),
                (got, want) => proptest::prop_assert!(false, "{:?} read as {:?}, expected {:?}", text, got.map(|f| f.t), want),
            }
            if x.is_finite() {
                let json = format!(r#"{{"i":{x:?}}}"#);
                let e = read(&json).unwrap_err();
                proptest::prop_assert!(e.contains("is not a 64-bit integer"), "{}", e);
            }
        }
    }
}
