//! An event's `attributes` kept as the JSON text they arrived in: one pass over that text checks
//! the bounds [`crate::event`] states (entries, depth, bytes, no NUL) without building a tree, and
//! finds where each top-level entry lies, so a reader takes the one value it wants.
//!
//! The text has already been read as JSON by serde_json (as a `RawValue`), which checks syntax
//! but not what a string decodes to: this pass also refuses lone UTF-16 surrogates, which
//! PostgreSQL's jsonb refuses too (one such row would refuse the whole batch).

use std::borrow::Cow;

use crate::event::{EventError, MAX_ATTRIBUTES_BYTES, MAX_ATTRIBUTES_DEPTH};

/// Numbers stored as written must be ones PostgreSQL's numeric takes (it refuses exponents past
/// about ±16,383 and 131,071 digits): a token this long or shorter, with an exponent of at most
/// three digits, always is. Any other finite number is stored as serde_json writes an `f64`.
const MAX_VERBATIM_NUMBER_BYTES: usize = 40;

/// Where one top-level entry lies in the attributes text: the key between its quotes (escapes
/// left as written) and the value's JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    key: (u32, u32),
    key_escaped: bool,
    value: (u32, u32),
}

/// What one pass over the attributes found.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub entries: Vec<Entry>,
    /// The first bound the attributes break, in the order written (reported after the named
    /// fields' checks, as `LogEvent::validate` orders them).
    pub problem: Option<EventError>,
    /// A number must be rewritten before PostgreSQL may see it (see [`MAX_VERBATIM_NUMBER_BYTES`]).
    pub rewrite: bool,
}

/// One path step, formatted only when a NUL is found.
enum Step {
    Key(u32, u32),
    Index(usize),
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
    bytes: usize,
    path: Vec<Step>,
    out: Scanned,
}

fn json_error(message: impl Into<String>) -> EventError {
    EventError::Json(message.into())
}

/// Check the attributes' JSON text: `Err` is what serde_json would refuse when reading them into a
/// map (not an object, a number out of range, a lone surrogate); a broken bound is
/// `Scanned::problem`, the one `LogEvent::validate` would name first when keys are in order.
pub(crate) fn scan(text: &str) -> Result<Scanned, EventError> {
    let mut s = Scanner {
        text,
        at: 0,
        bytes: 0,
        path: Vec::new(),
        out: Scanned::default(),
    };
    s.ws();
    if s.peek() != Some(b'{') {
        let kind = match s.peek() {
            Some(b'n') => "null",
            Some(b'[') => "sequence",
            Some(b'"') => "string",
            Some(b't' | b'f') => "boolean",
            _ => "number",
        };
        return Err(json_error(format!(
            "invalid type: {kind}, expected a map (field `attributes`)"
        )));
    }
    s.at += 1;
    while let Some(key) = s.next_key()? {
        let value_start = s.at;
        s.member(1, Some(key))?;
        s.out.entries.push(Entry {
            key: (key.start, key.end),
            key_escaped: key.escaped,
            value: (value_start as u32, s.at as u32),
        });
    }
    Ok(s.out)
}

fn unexpected(b: u8) -> EventError {
    json_error(format!(
        "unexpected {:?} in field `attributes`",
        char::from(b)
    ))
}

/// A string as read: where its text lies (between the quotes), its decoded length, and what it
/// holds.
#[derive(Debug, Clone, Copy)]
struct Read {
    start: u32,
    end: u32,
    decoded: usize,
    escaped: bool,
    nul: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Result<u8, EventError> {
        let b = self
            .peek()
            .ok_or_else(|| json_error("EOF while parsing field `attributes`"))?;
        self.at += 1;
        Ok(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn note(&mut self, problem: EventError) {
        self.out.problem.get_or_insert(problem);
    }

    /// The next key of an object and its colon, or `None` at the object's end.
    fn next_key(&mut self) -> Result<Option<Read>, EventError> {
        loop {
            self.ws();
            match self.next()? {
                b'}' => return Ok(None),
                b',' => continue,
                b'"' => break,
                other => return Err(unexpected(other)),
            }
        }
        let key = self.string()?;
        self.ws();
        match self.next()? {
            b':' => {}
            other => return Err(unexpected(other)),
        }
        self.ws();
        Ok(Some(key))
    }

    /// One member (a key and its value, or an array item) at `depth`, a top-level entry's being
    /// 1, its checks in `event::check_attribute`'s order: depth, the key's bytes and NUL, the
    /// value (a string counts its decoded bytes, any other scalar 8), then the running total.
    fn member(&mut self, depth: usize, key: Option<Read>) -> Result<(), EventError> {
        if depth > MAX_ATTRIBUTES_DEPTH {
            self.note(EventError::TooDeep);
        }
        let pushed = match key {
            Some(k) => {
                self.bytes += k.decoded;
                self.path.push(Step::Key(k.start, k.end));
                if k.nul {
                    self.nul();
                }
                true
            }
            None => false,
        };
        self.value(depth)?;
        if pushed {
            self.path.pop();
        }
        if self.bytes > MAX_ATTRIBUTES_BYTES {
            self.note(EventError::TooLong {
                field: "attributes",
                len: self.bytes,
                max: MAX_ATTRIBUTES_BYTES,
            });
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<(), EventError> {
        match self.next()? {
            b'"' => {
                let s = self.string()?;
                self.bytes += s.decoded;
                if s.nul {
                    self.nul();
                }
            }
            b'{' => {
                while let Some(key) = self.next_key()? {
                    self.member(depth + 1, Some(key))?;
                }
            }
            b'[' => {
                let mut index = 0;
                loop {
                    self.ws();
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            break;
                        }
                        Some(b',') => {
                            self.at += 1;
                            continue;
                        }
                        _ => {}
                    }
                    self.path.push(Step::Index(index));
                    self.member(depth + 1, None)?;
                    self.path.pop();
                    index += 1;
                }
            }
            b't' | b'f' | b'n' => {
                while self.peek().is_some_and(|b| b.is_ascii_lowercase()) {
                    self.at += 1;
                }
                self.bytes += 8;
            }
            b'-' | b'0'..=b'9' => self.number()?,
            other => return Err(unexpected(other)),
        }
        self.ws();
        Ok(())
    }

    fn number(&mut self) -> Result<(), EventError> {
        let start = self.at - 1;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        let token = &self.text[start..self.at];
        self.bytes += 8;
        // Most numbers are small integers: finite, and numeric takes them as written.
        let digits = token.strip_prefix('-').unwrap_or(token);
        if digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(());
        }
        // serde_json's own reading, so the same numbers are refused as when the attributes were
        // read into a map (an `f64` overflow is "number out of range").
        serde_json::from_str::<f64>(token).map_err(|e| json_error(e.to_string()))?;
        let exponent_digits = token
            .find(['e', 'E'])
            .map_or(0, |at| token[at + 1..].trim_start_matches(['+', '-']).len());
        if token.len() > MAX_VERBATIM_NUMBER_BYTES || exponent_digits > 3 {
            self.out.rewrite = true;
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, EventError> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or_else(|| json_error("EOF while parsing a string in field `attributes`"))?;
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|_| json_error("invalid escape"))
    }

    /// A string after its opening quote, up to and past its closing one.
    fn string(&mut self) -> Result<Read, EventError> {
        let bytes = self.text.as_bytes();
        let mut read = Read {
            start: self.at as u32,
            end: 0,
            decoded: 0,
            escaped: false,
            nul: false,
        };
        loop {
            let rest = &bytes[self.at.min(bytes.len())..];
            let run = memchr::memchr2(b'"', b'\\', rest)
                .ok_or_else(|| json_error("EOF while parsing a string in field `attributes`"))?;
            read.decoded += run;
            self.at += run + 1;
            if rest[run] == b'"' {
                read.end = (self.at - 1) as u32;
                return Ok(read);
            }
            read.escaped = true;
            read.decoded += match self.next()? {
                b'u' => match self.hex4()? {
                    0 => {
                        read.nul = true;
                        1
                    }
                    0xDC00..=0xDFFF => {
                        return Err(json_error("lone leading surrogate in hex escape"))
                    }
                    0xD800..=0xDBFF => {
                        if self.text.get(self.at..self.at + 2) != Some("\\u") {
                            return Err(json_error("unexpected end of hex escape"));
                        }
                        self.at += 2;
                        if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                            return Err(json_error("lone leading surrogate in hex escape"));
                        }
                        4
                    }
                    0x01..=0x7F => 1,
                    0x80..=0x7FF => 2,
                    _ => 3,
                },
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 1,
                other => return Err(unexpected(other)),
            };
        }
    }

    fn nul(&mut self) {
        if self.out.problem.is_some() {
            return;
        }
        let mut path = String::from("attributes");
        for step in &self.path {
            match *step {
                Step::Key(a, b) => {
                    path.push('.');
                    path.push_str(&decode_key(&self.text[a as usize..b as usize]));
                }
                Step::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        self.note(EventError::NulCharacter(path));
    }
}

/// A key's text between its quotes, decoded when it holds escapes.
fn decode_key(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    serde_json::from_str::<String>(&format!("\"{raw}\""))
        .map(Cow::Owned)
        .unwrap_or(Cow::Borrowed(raw))
}

impl Entry {
    /// Whether this entry's key is `key` (decoded: `"a\u0062"` is `ab`).
    pub(crate) fn is(&self, text: &str, key: &str) -> bool {
        let raw = &text[self.key.0 as usize..self.key.1 as usize];
        if self.key_escaped {
            decode_key(raw) == key
        } else {
            raw == key
        }
    }

    pub(crate) fn value<'t>(&self, text: &'t str) -> &'t str {
        &text[self.value.0 as usize..self.value.1 as usize]
    }
}

/// jsonb's order of an object's keys: shorter first, then bytewise (PostgreSQL's
/// `lengthCompareJsonbStringValue`).
fn jsonb_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Write the attributes' `text` with its top-level entries in the order jsonb stores them, so
/// PostgreSQL's jsonb input finds them sorted (its sort of an object's keys is about a third of
/// its input of the generator's six attributes: BENCHMARKS.md). Entries with equal keys keep their
/// order, so jsonb keeps the same last one. Text already in that order, or with an escaped key
/// (ordered by what it decodes to), is written as it is; nested objects always are.
pub(crate) fn write_in_jsonb_order(text: &str, entries: &[Entry], out: &mut Vec<u8>) {
    const MAX_SORTED: usize = 64;
    let key = |e: &Entry| &text[e.key.0 as usize..e.key.1 as usize];
    let in_order = entries
        .windows(2)
        .all(|w| jsonb_key_order(key(&w[0]), key(&w[1])).is_le());
    if in_order || entries.len() > MAX_SORTED || entries.iter().any(|e| e.key_escaped) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut order = [0u8; MAX_SORTED];
    let order = &mut order[..entries.len()];
    for (i, slot) in order.iter_mut().enumerate() {
        *slot = i as u8;
    }
    // Stable, so equal keys stay in the order written.
    order.sort_by(|&a, &b| jsonb_key_order(key(&entries[a as usize]), key(&entries[b as usize])));
    out.push(b'{');
    for (n, &i) in order.iter().enumerate() {
        let e = &entries[i as usize];
        if n > 0 {
            out.push(b',');
        }
        // The key with its quotes, then the value as written.
        out.extend_from_slice(&text.as_bytes()[e.key.0 as usize - 1..e.key.1 as usize + 1]);
        out.push(b':');
        let value = e.value(text).trim_end_matches([' ', '\t', '\n', '\r']);
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
}

/// One attribute's value, as the JSON text it arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a>(&'a str);

impl<'a> Attribute<'a> {
    pub(crate) fn new(json: &'a str) -> Self {
        Attribute(json.trim_end())
    }

    /// The value's JSON text, exactly as it arrived.
    pub fn json(&self) -> &'a str {
        self.0
    }

    /// The string, decoded, when the value is a string.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let inner = self.0.strip_prefix('"')?.strip_suffix('"')?;
        if inner.contains('\\') {
            serde_json::from_str::<String>(self.0).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(inner))
        }
    }

    /// The number, when the value is one (as `serde_json::Value::as_f64` reads it).
    pub fn as_f64(&self) -> Option<f64> {
        match self.0.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => serde_json::from_str::<f64>(self.0).ok(),
            _ => None,
        }
    }

    /// The value as serde_json writes it back (numbers as their `f64` or integer form): what
    /// filters compare a number or a boolean against.
    pub fn to_json_string(&self) -> String {
        serde_json::from_str::<serde_json::Value>(self.0)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| self.0.to_owned())
    }
}
