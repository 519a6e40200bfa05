//! Syslog over TCP, split into messages (RFC 6587): octet counting (`LEN SP MSG`, what rsyslog's
//! `omfwd` with `TCP_Framing="octet-counted"` and syslog-ng's `syslog()` send) and non-transparent
//! framing (one message per line, what `omfwd`'s default and most others send), chosen per message
//! by its first byte as the RFC says: a digit starts an octet count. A digit run not followed by a
//! space is a line, so a stray text line cannot break the stream.
//!
//! Memory is bounded by the largest message: a longer one keeps its first `max` bytes (marked
//! truncated) and the rest is skipped as it arrives, never buffered. Pure: bytes in, frames out.

use bytes::{Buf, Bytes, BytesMut};

/// One message read off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message, at most the framer's `max` bytes.
    pub bytes: Bytes,
    /// The message was longer than `max`: `bytes` is its head, the rest was skipped.
    pub truncated: bool,
}

/// What the framer skips before going on with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// The rest of an octet-counted message past its kept head.
    Bytes(usize),
    /// The rest of an over-long line, up to its newline.
    Line,
}

/// Splits a TCP stream into frames; feed it what was read, ask for frames until `None`.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    skip: Skip,
}

/// The most digits an octet count may have (RFC 6587's MSG-LEN is a `NONZERO-DIGIT *DIGIT`; ten
/// digits is more than any message a framer holds).
const MAX_COUNT_DIGITS: usize = 10;

fn separator(b: u8) -> bool {
    matches!(b, b'\n' | b'\r' | b'\0' | b' ' | b'\t')
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            max: max.max(1),
            skip: Skip::Nothing,
        }
    }

    /// The next whole frame in `buf` (consumed from it), or `None` when more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            if !self.skip_pending(buf) {
                return None;
            }
            // Between messages: the newline after a counted message, NULs some senders use.
            match buf.iter().position(|&b| !separator(b)) {
                Some(i) => buf.advance(i),
                None => {
                    buf.clear();
                    return None;
                }
            }
            match self.octet_count(buf) {
                Count::Counted { header, len } => return self.counted(buf, header, len),
                Count::NeedMore => return None,
                Count::Empty { header } => buf.advance(header),
                Count::NotCounted => return self.line(buf),
            }
        }
    }

    /// The stream ended: what is left is a last line without its newline, or a counted message
    /// cut short (`Err` with the bytes it had and the length it announced).
    pub fn finish(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Truncated> {
        if let Some(frame) = self.next(buf) {
            return Ok(Some(frame));
        }
        if self.skip != Skip::Nothing || buf.is_empty() {
            buf.clear();
            return Ok(None);
        }
        let rest = buf.split().freeze();
        if let Count::Counted { header, len } = octet_count_of(&rest, true).with_len() {
            return Err(Truncated {
                had: rest.len() - header,
                announced: len,
            });
        }
        Ok(Some(Frame {
            bytes: trim_cr(rest),
            truncated: false,
        }))
    }

    /// Skips what an earlier over-long message left; false when `buf` ran out first.
    fn skip_pending(&mut self, buf: &mut BytesMut) -> bool {
        match self.skip {
            Skip::Nothing => true,
            Skip::Bytes(n) => {
                let k = n.min(buf.len());
                buf.advance(k);
                self.skip = if k < n {
                    Skip::Bytes(n - k)
                } else {
                    Skip::Nothing
                };
                self.skip == Skip::Nothing
            }
            Skip::Line => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    buf.advance(i + 1);
                    self.skip = Skip::Nothing;
                    true
                }
                None => {
                    buf.clear();
                    false
                }
            },
        }
    }

    fn octet_count(&self, buf: &[u8]) -> Count {
        octet_count_of(buf, false)
    }

    fn counted(&mut self, buf: &mut BytesMut, header: usize, len: usize) -> Option<Frame> {
        if len > self.max {
            // Keep the head once it is here; skip the rest as it arrives.
            if buf.len() < header + self.max {
                return None;
            }
            buf.advance(header);
            let head = buf.split_to(self.max).freeze();
            self.skip = Skip::Bytes(len - self.max);
            return Some(Frame {
                bytes: head,
                truncated: true,
            });
        }
        if buf.len() < header + len {
            return None;
        }
        buf.advance(header);
        Some(Frame {
            bytes: buf.split_to(len).freeze(),
            truncated: false,
        })
    }

    fn line(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let scan = buf.len().min(self.max + 1);
        match buf[..scan].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = buf.split_to(i).freeze();
                buf.advance(1);
                Some(Frame {
                    bytes: trim_cr(line),
                    truncated: false,
                })
            }
            // No newline within `max` bytes (a CR before it may be the one byte over).
            None if buf.len() > self.max => {
                let head = buf.split_to(self.max).freeze();
                self.skip = Skip::Line;
                Some(Frame {
                    bytes: head,
                    truncated: true,
                })
            }
            None => None,
        }
    }
}

/// A counted message the stream ended inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection closed {had} bytes into a message announced as {announced} bytes")]
pub struct Truncated {
    pub had: usize,
    pub announced: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// `LEN SP`: `header` bytes, then `len` bytes of message.
    Counted {
        header: usize,
        len: usize,
    },
    /// `0 SP`: nothing to read.
    Empty {
        header: usize,
    },
    /// Digits so far, nothing after them yet.
    NeedMore,
    NotCounted,
}

impl Count {
    /// `Empty` as a counted message of length 0 (for the end-of-stream check).
    fn with_len(self) -> Count {
        match self {
            Count::Empty { header } => Count::Counted { header, len: 0 },
            other => other,
        }
    }
}

/// Whether `buf` starts with an octet count. `at_end`: no more bytes will come, so digits with
/// nothing after them are a (short) line, not a count still arriving.
fn octet_count_of(buf: &[u8], at_end: bool) -> Count {
    let digits = buf
        .iter()
        .take(MAX_COUNT_DIGITS + 1)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > MAX_COUNT_DIGITS {
        return Count::NotCounted;
    }
    match buf.get(digits) {
        None if at_end => Count::NotCounted,
        None => Count::NeedMore,
        Some(b' ') => {
            let len: usize = std::str::from_utf8(&buf[..digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .expect("at most ten ASCII digits fit a usize");
            if len == 0 {
                Count::Empty { header: digits + 1 }
            } else {
                Count::Counted {
                    header: digits + 1,
                    len,
                }
            }
        }
        Some(_) => Count::NotCounted,
    }
}

fn trim_cr(mut line: Bytes) -> Bytes {
    while line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Everything `input` splits into when it arrives in pieces of `chunk` bytes.
    fn frames(max: usize, input: &[u8], chunk: usize) -> (Vec<Frame>, Result<(), Truncated>) {
        let mut framer = Framer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(f) = framer.next(&mut buf) {
                out.push(f);
            }
            assert!(
                buf.len() <= max + MAX_COUNT_DIGITS + 1 + chunk.max(1),
                "the buffer holds at most one message and one read: {}",
                buf.len()
            );
        }
        let end = framer.finish(&mut buf).map(|last| out.extend(last));
        (out, end)
    }

    fn texts(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .collect()
    }

    #[test]
    fn octet_counted_and_newline_framed_messages_mix_on_one_stream() {
        let input = b"<13>1 - h a - - - one\n12 <13>two\nlast\n<13>three\r\n7 <1>four<1>five";
        let (out, end) = frames(1000, input, 5);
        assert_eq!(end, Ok(()));
        assert_eq!(
            texts(&out),
            [
                "<13>1 - h a - - - one",
                "<13>two\nlast",
                "<13>three",
                "<1>four",
                "<1>five"
            ]
        );
    }

    #[test]
    fn a_digit_run_without_a_space_is_a_line_not_a_count() {
        let (out, _) = frames(100, b"2024-01-01 started\n12345678901 x\n", 3);
        assert_eq!(texts(&out), ["2024-01-01 started", "12345678901 x"]);
    }

    #[test]
    fn an_over_long_message_keeps_its_head_and_the_next_one_is_read_whole() {
        let long = "x".repeat(50);
        let input = format!("50 {long}<1>after\n{long}\n<2>next\n");
        let (out, end) = frames(10, input.as_bytes(), 7);
        assert_eq!(end, Ok(()));
        assert_eq!(
            texts(&out),
            ["xxxxxxxxxx", "<1>after", "xxxxxxxxxx", "<2>next"]
        );
        assert_eq!(
            out.iter().map(|f| f.truncated).collect::<Vec<_>>(),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_count_larger_than_what_follows_ends_as_truncated_at_close() {
        let (out, end) = frames(1000, b"<1>a\n500 <13>only this", 4);
        assert_eq!(texts(&out), ["<1>a"]);
        assert_eq!(
            end,
            Err(Truncated {
                had: 13,
                announced: 500
            })
        );
    }

    #[test]
    fn a_huge_count_is_skipped_without_being_buffered() {
        let mut framer = Framer::new(16);
        let mut buf = BytesMut::from(&b"9999999999 "[..]);
        buf.extend_from_slice(&[b'a'; 64]);
        let head = framer.next(&mut buf).unwrap();
        assert!(head.truncated);
        for _ in 0..100 {
            buf.extend_from_slice(&[b'b'; 4096]);
            assert_eq!(framer.next(&mut buf), None);
            assert!(buf.is_empty());
        }
    }

    /// A message as a sender frames it.
    fn encode(messages: &[(Vec<u8>, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (m, counted) in messages {
            if *counted {
                out.extend_from_slice(format!("{} ", m.len()).as_bytes());
                out.extend_from_slice(m);
            } else {
                out.extend_from_slice(m);
                out.push(b'\n');
            }
        }
        out
    }

    fn message() -> impl Strategy<Value = (Vec<u8>, bool)> {
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..80)).prop_map(
            |(counted, mut m)| {
                if !counted {
                    // A line: starts as syslog does and holds no newline.
                    m.retain(|&b| b != b'\n' && b != b'\r');
                    m.insert(0, b'<');
                }
                (m, counted)
            },
        )
    }

    proptest! {
        /// Whatever the messages and however the stream is cut into reads, the framer gives back
        /// exactly what was sent, in order.
        #[test]
        fn every_message_comes_back_whole_whatever_the_reads(
            messages in proptest::collection::vec(message(), 0..20),
            chunk in 1usize..64,
        ) {
            let (out, end) = frames(100, &encode(&messages), chunk);
            prop_assert_eq!(end, Ok(()));
            let sent: Vec<&[u8]> = messages.iter().map(|(m, _)| m.as_slice()).collect();
            let got: Vec<&[u8]> = out.iter().map(|f| f.bytes.as_ref()).collect();
            prop_assert_eq!(got, sent);
        }

        /// Any bytes at all: no panic, bounded memory, no frame over the limit.
        #[test]
        fn any_bytes_frame_within_the_limit(
            input in proptest::collection::vec(any::<u8>(), 0..2000),
            max in 1usize..64,
            chunk in 1usize..100,
        ) {
            let (out, _) = frames(max, &input, chunk);
            for f in out {
                prop_assert!(!f.bytes.is_empty() || !f.truncated);
                prop_assert!(f.bytes.len() <= max);
            }
        }
    }
}
