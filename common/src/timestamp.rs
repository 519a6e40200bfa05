//! Event timestamps read fast in the form nearly every emitter writes (`2026-12-06T08:00:00.123Z`:
//! UTC, `T`, `Z`, up to nine fraction digits), and by chrono in every other form it reads. The
//! fast path gives what chrono gives or steps aside (the property test below holds it to that);
//! chrono's RFC 3339 parser was a tenth of the collector's reading of a record.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

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

/// `YYYY-MM-DDTHH:MM:SS[.F{1,9}]Z` exactly, or `None`. A leap second (`:60`) is left to chrono.
fn fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let sec = digits(&b[17..19])?;
    if sec >= 60 {
        return None;
    }
    let nanos = match &b[19..b.len() - 1] {
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
    Some(date.and_time(time).and_utc())
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
        ] {
            assert_eq!(fast(s), chrono_reads(s), "{s}");
            assert!(fast(s).is_some(), "{s} takes the fast path");
        }
        for s in [
            "2026-12-06T23:59:60Z",
            "2026-12-06t08:00:00z",
            "2026-12-06 08:00:00Z",
            "2026-12-06T08:00:00+02:00",
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

        #[test]
        fn any_text_reads_as_chrono_reads_it(s in "\\PC{0,32}") {
            prop_assert_eq!(parse_utc(&s).ok(), chrono_reads(&s));
        }
    }
}
