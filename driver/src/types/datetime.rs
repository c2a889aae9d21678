//! Lenient parsing of dqlite's ISO8601 date/time text, independent of chrono and time.
//!
//! Accepted layouts (after trimming a trailing `Z`, which means UTC), mirroring go-dqlite:
//!
//! ```text
//! YYYY-MM-DD HH:MM:SS.fffffffff+HH:MM     YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM
//! YYYY-MM-DD HH:MM:SS.fffffffff           YYYY-MM-DDTHH:MM:SS.fffffffff
//! YYYY-MM-DD HH:MM:SS                     YYYY-MM-DDTHH:MM:SS
//! YYYY-MM-DD HH:MM                        YYYY-MM-DDTHH:MM
//! YYYY-MM-DD
//! ```
//!
//! The fraction has 1–9 digits; the zone may also be `+HHMM` or `+HH`, and may follow a
//! layout without seconds or fraction.

#![cfg_attr(not(any(feature = "chrono", feature = "time")), allow(dead_code))]

/// A parsed date/time, not yet validated as a calendar date (the chrono/time layers do that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedDateTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanosecond: u32,
    /// Offset east of UTC in seconds, when the text carries a zone (`Z` counts as +00:00).
    pub offset_seconds: Option<i32>,
    /// False for a bare date.
    pub has_time: bool,
}

fn digits(s: &[u8], n: usize) -> Option<(u32, &[u8])> {
    if s.len() < n {
        return None;
    }
    let mut v = 0u32;
    for &c in &s[..n] {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some((v, &s[n..]))
}

fn expect(s: &[u8], c: u8) -> Option<&[u8]> {
    match s.split_first() {
        Some((&first, rest)) if first == c => Some(rest),
        _ => None,
    }
}

/// Parse a zone suffix: `+HH:MM`, `+HHMM`, `+HH`, `-…`.
fn zone(s: &[u8]) -> Option<i32> {
    let (sign, rest) = match s.split_first()? {
        (b'+', r) => (1, r),
        (b'-', r) => (-1, r),
        _ => return None,
    };
    let (hh, rest) = digits(rest, 2)?;
    let (mm, rest) = if rest.is_empty() {
        (0, rest)
    } else if let Some(r) = expect(rest, b':') {
        digits(r, 2)?
    } else {
        digits(rest, 2)?
    };
    if !rest.is_empty() || hh > 23 || mm > 59 {
        return None;
    }
    Some(sign * (hh * 3600 + mm * 60) as i32)
}

/// Parse a date/time text; `None` if it matches no accepted layout.
pub(crate) fn parse(text: &str) -> Option<ParsedDateTime> {
    let mut text = text.trim();
    let mut offset = None;
    if let Some(t) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        text = t;
        offset = Some(0);
    }
    let s = text.as_bytes();
    // Date: YYYY-MM-DD (a leading '-' for negative years is not supported, as in go-dqlite).
    let (year, s) = digits(s, 4)?;
    let s = expect(s, b'-')?;
    let (month, s) = digits(s, 2)?;
    let s = expect(s, b'-')?;
    let (day, s) = digits(s, 2)?;
    let mut out = ParsedDateTime {
        year: year as i32,
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        nanosecond: 0,
        offset_seconds: offset,
        has_time: false,
    };
    if s.is_empty() {
        return valid(out);
    }
    let s = match s.split_first() {
        Some((b' ' | b'T' | b't', r)) => r,
        _ => return None,
    };
    let (hour, s) = digits(s, 2)?;
    let s = expect(s, b':')?;
    let (minute, mut s) = digits(s, 2)?;
    out.hour = hour;
    out.minute = minute;
    out.has_time = true;
    if let Some(r) = expect(s, b':') {
        let (second, r) = digits(r, 2)?;
        out.second = second;
        s = r;
        if let Some(r) = expect(s, b'.') {
            let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            let (frac, r) = digits(r, n)?;
            out.nanosecond = frac * 10u32.pow(9 - n as u32);
            s = r;
        }
    }
    if !s.is_empty() {
        if out.offset_seconds.is_some() {
            // "…Z+01:00" is not a layout.
            return None;
        }
        out.offset_seconds = Some(zone(s)?);
    }
    valid(out)
}

fn valid(p: ParsedDateTime) -> Option<ParsedDateTime> {
    // Leap seconds (60) are accepted by both chrono and time only in limited ways; reject here.
    if p.month == 0 || p.month > 12 || p.day == 0 || p.day > 31 || p.hour > 23 || p.minute > 59 || p.second > 59 {
        return None;
    }
    Some(p)
}

/// Error text for an unparseable date/time.
pub(crate) fn parse_error(text: &str) -> sqlx_core::error::BoxDynError {
    format!("cannot parse {text:?} as a date/time (expected e.g. 2006-01-02 15:04:05.999999999-07:00)").into()
}

/// Format an offset in seconds as `+HH:MM`.
#[cfg_attr(not(feature = "time"), allow(dead_code))]
pub(crate) fn format_offset(offset_seconds: i32) -> String {
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let a = offset_seconds.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ParsedDateTime {
        parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn all_go_dqlite_layouts_parse() {
        let full = p("2006-01-02 15:04:05.999999999-07:00");
        assert_eq!((full.year, full.month, full.day, full.hour, full.minute, full.second), (2006, 1, 2, 15, 4, 5));
        assert_eq!(full.nanosecond, 999_999_999);
        assert_eq!(full.offset_seconds, Some(-7 * 3600));
        assert_eq!(p("2006-01-02T15:04:05.999999999-07:00"), full);
        let naive = p("2006-01-02 15:04:05.5");
        assert_eq!(naive.nanosecond, 500_000_000);
        assert_eq!(naive.offset_seconds, None);
        assert_eq!(p("2006-01-02T15:04:05.5"), naive);
        let secs = p("2006-01-02 15:04:05");
        assert_eq!((secs.second, secs.nanosecond), (5, 0));
        assert_eq!(p("2006-01-02T15:04:05"), secs);
        let mins = p("2006-01-02 15:04");
        assert_eq!((mins.hour, mins.minute, mins.second), (15, 4, 0));
        assert_eq!(p("2006-01-02T15:04"), mins);
        let date = p("2006-01-02");
        assert!(!date.has_time);
        assert_eq!((date.hour, date.minute), (0, 0));
    }

    #[test]
    fn zones() {
        assert_eq!(p("2006-01-02T15:04:05Z").offset_seconds, Some(0));
        assert_eq!(p("2006-01-02 15:04:05.123Z").nanosecond, 123_000_000);
        assert_eq!(p("2006-01-02 15:04:05+05:30").offset_seconds, Some(5 * 3600 + 1800));
        assert_eq!(p("2006-01-02 15:04:05+0530").offset_seconds, Some(5 * 3600 + 1800));
        assert_eq!(p("2006-01-02 15:04:05-02").offset_seconds, Some(-7200));
        assert_eq!(p("2006-01-02 15:04+01:00").offset_seconds, Some(3600));
    }

    #[test]
    fn garbage_is_rejected() {
        for s in [
            "",
            "yesterday",
            "2006-1-2",
            "2006-01-02 15",
            "2006-01-02 15:04:05.",
            "2006-01-02 15:04:05.1234567890",
            "2006-13-02",
            "2006-01-02 24:00:00",
            "2006-01-02 15:04:05+25:00",
            "2006-01-02 15:04:05Z+01:00",
            "2006-01-02X15:04:05",
            "2006-01-02 15:04:05 junk",
        ] {
            assert!(parse(s).is_none(), "{s:?} should not parse");
        }
    }

    #[test]
    fn offsets_format() {
        assert_eq!(format_offset(0), "+00:00");
        assert_eq!(format_offset(-7 * 3600), "-07:00");
        assert_eq!(format_offset(5 * 3600 + 1800), "+05:30");
    }
}
