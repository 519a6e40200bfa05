//! Event timestamps read fast in the forms nearly every emitter writes (`2026-12-06T08:00:00.123Z`,
//! or `+00:00` and other offsets as Python's `isoformat` and chrono's `to_rfc3339` write them: `T`,
//! up to nine fraction digits), and by chrono in every other form it reads; and written fast,
//! byte for byte as chrono's `Serialize` writes them. Each fast path gives what chrono gives or
//! steps aside (the property tests below hold them to that): chrono's RFC 3339 parser was a tenth
//! of the collector's reading of a record, and its parser and writer together a quarter of the
//! gateway's reading and writing of one.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc};

/// A timestamp as `DateTime<Utc>`'s `FromStr` reads it, faster in the common form.
pub fn parse_utc(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match fast(s) {
        Some(t) => Ok(t),
        None => s.parse(),
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.F{1,9}]` then `Z` or `±HH:MM` (hours below 24, minutes below 60)
/// exactly, or `None`. A leap second (`:60`) is left to chrono.
fn fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (rest, offset_secs) = match b[b.len() - 1] {
        b'Z' => (&b[19..b.len() - 1], 0),
        _ if b.len() >= 25 => {
            let (rest, zone) = b[19..].split_at(b.len() - 25);
            let sign = match zone[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = (digits(&zone[1..3])?, digits(&zone[4..6])?);
            if zone[3] != b':' || hours >= 24 || minutes >= 60 {
                return None;
            }
            (rest, sign * i64::from(hours * 3600 + minutes * 60))
        }
        _ => return None,
    };
    let sec = digits(&b[17..19])?;
    if sec >= 60 {
        return None;
    }
    let nanos = match rest {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )?;
    let time = NaiveTime::from_hms_nano_opt(digits(&b[11..13])?, digits(&b[14..16])?, sec, nanos)?;
    let local = date.and_time(time);
    let utc = local.checked_sub_signed(chrono::Duration::seconds(offset_secs))?;
    Some(utc.and_utc())
}

/// How a timestamp is written: RFC 3339 in UTC with `Z`, and the fraction in 0, 3, 6 or 9 digits,
/// the fewest that hold it (chrono's `SecondsFormat::AutoSi`, what its `Serialize` writes).
/// `None` outside years 0..=9999 and for a leap second, which chrono writes.
fn format_utc(t: &DateTime<Utc>) -> Option<([u8; 30], usize)> {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = [0u8; 30];
    let mut put = |at: usize, mut n: u32, width: usize| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    let len = match nanos {
        0 => 19,
        n if n % 1_000_000 == 0 => {
            put(20, n / 1_000_000, 3);
            23
        }
        n if n % 1_000 == 0 => {
            put(20, n / 1_000, 6);
            26
        }
        n => {
            put(20, n, 9);
            29
        }
    };
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = c;
    }
    out[len] = b'Z';
    Some((out, len + 1))
}

/// `serialize_with` for a `DateTime<Utc>`: the same text chrono's `Serialize` writes, faster.
pub fn serialize_utc<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match format_utc(t) {
        Some((buf, len)) => s.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII")),
        None => serde::Serialize::serialize(t, s),
    }
}

/// A timestamp that serializes with [`serialize_utc`] (for fields written by hand).
pub struct Rfc3339<'a>(pub &'a DateTime<Utc>);

impl serde::Serialize for Rfc3339<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_utc(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_reads(s: &str) -> Option<DateTime<Utc>> {
        s.parse().ok()
    }

    #[test]
    fn the_common_forms_read_as_chrono_reads_them() {
        for s in [
            "2026-12-06T08:00:00Z",
            "2026-12-06T08:00:00.1Z",
            "2026-12-06T08:00:00.123456789Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2024-02-29T12:00:00Z",
            "2026-12-06T08:00:00+02:00",
            "2026-12-06T08:00:00.123456+00:00",
            "2026-12-06T23:30:00-05:30",
            "0000-01-01T00:30:00+01:00",
        ] {
            assert_eq!(fast(s), chrono_reads(s), "{s}");
            assert!(fast(s).is_some(), "{s} takes the fast path");
        }
        for s in [
            "2026-12-06T23:59:60Z",
            "2026-12-06t08:00:00z",
            "2026-12-06 08:00:00Z",
            "2026-12-06T08:00:00+24:00",
            "2026-12-06T08:00:00.1234567891Z",
            "2023-02-29T12:00:00Z",
        ] {
            assert_eq!(fast(s), None, "{s} is left to chrono");
            assert_eq!(parse_utc(s).ok(), chrono_reads(s), "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Text shaped like a timestamp, with any digits, separators and fraction: read as
        /// chrono reads it, always.
        #[test]
        fn any_timestamp_shaped_text_reads_as_chrono_reads_it(
            date in "[0-9+-]{4,6}-[0-9]{1,2}-[0-9]{1,3}",
            sep in "[Tt _]",
            time in "[0-9]{2}:[0-9]{2}:[0-9]{2}",
            fraction in "(\\.[0-9]{0,11})?",
            zone in "Z|z|[+-][0-9]{2}:[0-9]{2}|",
        ) {
            let s = format!("{date}{sep}{time}{fraction}{zone}");
            prop_assert_eq!(parse_utc(&s).ok(), chrono_reads(&s), "{}", s);
        }

        /// Any instant chrono can hold in years 0..=9999, with any fraction (whole, milli, micro
        /// or nanoseconds): written byte for byte as chrono's `Serialize` writes it.
        #[test]
        fn any_timestamp_is_written_as_chrono_writes_it(
            secs in -62_167_219_200i64..253_402_300_800,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1000), 0u32..1_000_000_000],
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut fast = Vec::new();
            serialize_utc(&t, &mut serde_json::Serializer::new(&mut fast)).unwrap();
            let chrono = serde_json::to_vec(&t).unwrap();
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(chrono).unwrap());
        }

        #[test]
        fn any_text_reads_as_chrono_reads_it(s in "\\PC{0,32}") {
            prop_assert_eq!(parse_utc(&s).ok(), chrono_reads(&s));
        }
    }
}
