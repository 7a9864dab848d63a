//! Temporal literals (PROTOCOL-EXTENSIONS.md §3.2): `YYYY-MM-DD`, RFC 3339
//! with or without a fraction, and a zone-less `YYYY-MM-DDTHH:MM:SS[.frac]`
//! read as UTC.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A parsed temporal literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Temporal {
    /// The instant (a date-only literal is midnight UTC of that date).
    pub at: OffsetDateTime,
    /// Whether the literal named only a calendar date.
    pub date_only: bool,
}

impl Temporal {
    /// The UTC calendar date of the instant.
    pub fn utc_date(&self) -> Date {
        self.at.to_offset(UtcOffset::UTC).date()
    }
}

fn digits(s: &[u8], from: usize, n: usize) -> Option<u32> {
    let part = s.get(from..from + n)?;
    let mut v: u32 = 0;
    for b in part {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    Some(v)
}

fn parse_date(s: &[u8]) -> Option<Date> {
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') {
        return None;
    }
    let y = i32::try_from(digits(s, 0, 4)?).ok()?;
    let m = u8::try_from(digits(s, 5, 2)?).ok()?;
    let d = u8::try_from(digits(s, 8, 2)?).ok()?;
    Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()
}

/// Parses a temporal literal; `None` when the text is not one.
pub(crate) fn parse(text: &str) -> Option<Temporal> {
    let s = text.as_bytes();
    let date = parse_date(s)?;
    if s.len() == 10 {
        return Some(Temporal {
            at: date.midnight().assume_utc(),
            date_only: true,
        });
    }
    if !matches!(s.get(10), Some(b'T') | Some(b't')) {
        return None;
    }
    if s.get(13) != Some(&b':') || s.get(16) != Some(&b':') {
        return None;
    }
    let hh = u8::try_from(digits(s, 11, 2)?).ok()?;
    let mm = u8::try_from(digits(s, 14, 2)?).ok()?;
    let ss = u8::try_from(digits(s, 17, 2)?).ok()?;
    let mut i = 19;
    let mut nanos: u32 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(b) = s.get(i).filter(|b| b.is_ascii_digit()) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let time = Time::from_hms_nano(hh, mm, ss, nanos).ok()?;
    let local = PrimitiveDateTime::new(date, time);
    let offset = match s.get(i..)? {
        [] => UtcOffset::UTC,
        [b'Z'] | [b'z'] => UtcOffset::UTC,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest.get(2) == Some(&b':') => {
            let oh = i8::try_from(digits(rest, 0, 2)?).ok()?;
            let om = i8::try_from(digits(rest, 3, 2)?).ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let k = if *sign == b'-' { -1 } else { 1 };
            UtcOffset::from_hms(k * oh, k * om, 0).ok()?
        }
        _ => return None,
    };
    Some(Temporal {
        at: local.assume_offset(offset),
        date_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse() {
        let d = parse("2025-01-02").unwrap();
        assert!(d.date_only);
        assert_eq!(d.at.unix_timestamp(), 1_735_776_000);
        let a = parse("2025-01-02T00:00:00Z").unwrap();
        assert!(!a.date_only);
        assert_eq!(a.at, d.at);
        assert_eq!(parse("2025-01-02T01:00:00+01:00").unwrap().at, d.at);
        assert_eq!(parse("2025-01-01T19:00:00-05:00").unwrap().at, d.at);
        assert_eq!(parse("2025-01-02T00:00:00").unwrap().at, d.at);
        let f = parse("2025-01-02T00:00:00.5Z").unwrap();
        assert_eq!(f.at.nanosecond(), 500_000_000);
        let f = parse("2025-01-02T00:00:00.123456789123").unwrap();
        assert_eq!(f.at.nanosecond(), 123_456_789);
    }

    #[test]
    fn garbage_is_not_temporal() {
        for s in [
            "",
            "2025",
            "2025-13-01",
            "2025-02-30",
            "2025-01-02T",
            "2025-01-02T25:00:00Z",
            "2025-01-02T00:00:00.Z",
            "2025-01-02T00:00:00+1:00",
            "2025-01-02 00:00:00",
            "2025-01-02T00:00:00Zjunk",
            "yesterday",
            "12",
            "٢٠٢٥-01-02",
            "2025-01-02T00:00:00+24:00",
        ] {
            assert!(parse(s).is_none(), "{s}");
        }
    }
}
