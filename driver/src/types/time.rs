//! `time` crate date/time types (feature `time`). See the table in [`crate::types`].

use dqlite_wire::value::{Value as WireValue, ValueRef as WireValueRef};
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::datetime::{format_offset, parse, parse_error};
use crate::type_info::DataType;
use crate::value::mismatch;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

fn datetime_compatible(ty: &DqliteTypeInfo) -> bool {
    matches!(ty.0, DataType::Iso8601 | DataType::Text | DataType::UnixTime | DataType::Integer)
}

fn decode_parts(value: &DqliteValueRef<'_>) -> Result<(PrimitiveDateTime, Option<i32>), BoxDynError> {
    match value.value {
        WireValueRef::UnixTime(s) | WireValueRef::Integer(s) => {
            let dt = OffsetDateTime::from_unix_timestamp(s)?;
            Ok((PrimitiveDateTime::new(dt.date(), dt.time()), Some(0)))
        }
        WireValueRef::Text(t) | WireValueRef::Iso8601(t) => {
            let p = parse(t).ok_or_else(|| parse_error(t))?;
            let month = Month::try_from(p.month as u8).map_err(|_| parse_error(t))?;
            let date = Date::from_calendar_date(p.year, month, p.day as u8).map_err(|_| parse_error(t))?;
            let time = Time::from_hms_nano(p.hour as u8, p.minute as u8, p.second as u8, p.nanosecond)
                .map_err(|_| parse_error(t))?;
            Ok((PrimitiveDateTime::new(date, time), p.offset_seconds))
        }
        other => Err(mismatch("a date/time", &other)),
    }
}

fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn fmt_time(t: Time) -> String {
    let mut s = format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    if t.nanosecond() != 0 {
        let frac = format!("{:09}", t.nanosecond());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

impl Type<Dqlite> for OffsetDateTime {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        datetime_compatible(ty)
    }
}

impl Encode<'_, Dqlite> for OffsetDateTime {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Iso8601(format!(
            "{} {}{}",
            fmt_date(self.date()),
            fmt_time(self.time()),
            format_offset(self.offset().whole_seconds())
        )));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for OffsetDateTime {
    /// A text without a zone is taken as UTC.
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let (dt, offset) = decode_parts(&value)?;
        let off = UtcOffset::from_whole_seconds(offset.unwrap_or(0))?;
        Ok(dt.assume_offset(off))
    }
}

impl Type<Dqlite> for PrimitiveDateTime {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        datetime_compatible(ty)
    }
}

impl Encode<'_, Dqlite> for PrimitiveDateTime {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Iso8601(format!("{} {}", fmt_date(self.date()), fmt_time(self.time()))));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for PrimitiveDateTime {
    /// The wall-clock time as written; a zone in the text is dropped, UNIXTIME is taken as UTC.
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(decode_parts(&value)?.0)
    }
}

impl Type<Dqlite> for Date {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Iso8601 | DataType::Text | DataType::UnixTime)
    }
}

impl Encode<'_, Dqlite> for Date {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Iso8601(fmt_date(*self)));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Date {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(decode_parts(&value)?.0.date())
    }
}

impl Type<Dqlite> for Time {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text | DataType::Iso8601)
    }
}

impl Encode<'_, Dqlite> for Time {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Text(fmt_time(*self)));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Time {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let t = value.text()?;
        let p = parse(&format!("2000-01-01 {t}"))
            .filter(|p| p.has_time && p.offset_seconds.is_none())
            .ok_or_else(|| format!("cannot parse {t:?} as a time of day (expected HH:MM:SS.f)"))?;
        Ok(Time::from_hms_nano(p.hour as u8, p.minute as u8, p.second as u8, p.nanosecond)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use sqlx_core::value::Value as _;
    use time::macros::{date, datetime, offset, time};

    #[test]
    fn time_round_trips() {
        let odt = datetime!(2024-02-29 23:59:58.123456789 -07:00);
        assert_eq!(round_trip(odt), odt);
        assert_eq!(round_trip(odt).offset(), offset!(-07:00));
        let pdt = datetime!(1999-12-31 01:02:03.000004);
        assert_eq!(round_trip(pdt), pdt);
        assert_eq!(round_trip(date!(2020 - 06 - 01)), date!(2020 - 06 - 01));
        assert_eq!(round_trip(time!(12:30:00.25)), time!(12:30:00.25));
        assert_eq!(round_trip(time!(00:00)), time!(00:00));
        assert_eq!(round_trip(None::<OffsetDateTime>), None);
    }

    #[test]
    fn decodes_dqlite_wire_forms() {
        let want = datetime!(2006-01-02 15:04:05 UTC);
        let t = DqliteValue::new(WireValue::UnixTime(1_136_214_245));
        assert_eq!(decode::<OffsetDateTime>(&t), want);
        for text in ["2006-01-02 15:04:05", "2006-01-02T15:04:05Z", "2006-01-02 08:04:05-07:00"] {
            let v = DqliteValue::new(WireValue::Iso8601(text.into()));
            assert_eq!(decode::<OffsetDateTime>(&v), want, "{text}");
        }
        let empty = DqliteValue::new(WireValue::Iso8601(String::new()));
        assert_eq!(decode::<Option<OffsetDateTime>>(&empty), None);
        let bad = DqliteValue::new(WireValue::Text("2006-02-30".into()));
        assert!(bad.try_decode::<Date>().is_err());
    }
}
