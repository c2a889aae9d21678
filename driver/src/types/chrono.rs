//! `chrono` date/time types (feature `chrono`). See the table in [`crate::types`].

use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use dqlite_wire::value::{Value as WireValue, ValueRef as WireValueRef};
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use super::datetime::{parse, parse_error};
use crate::type_info::DataType;
use crate::value::mismatch;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

fn datetime_compatible(ty: &DqliteTypeInfo) -> bool {
    matches!(ty.0, DataType::Iso8601 | DataType::Text | DataType::UnixTime | DataType::Integer)
}

/// The wall-clock time and, if known, its offset east of UTC in seconds.
fn decode_parts(value: &DqliteValueRef<'_>) -> Result<(NaiveDateTime, Option<i32>), BoxDynError> {
    match value.value {
        WireValueRef::UnixTime(s) | WireValueRef::Integer(s) => {
            let dt = DateTime::from_timestamp(s, 0).ok_or_else(|| format!("Unix time {s} is out of range"))?;
            Ok((dt.naive_utc(), Some(0)))
        }
        WireValueRef::Text(t) | WireValueRef::Iso8601(t) => {
            let p = parse(t).ok_or_else(|| parse_error(t))?;
            let date = NaiveDate::from_ymd_opt(p.year, p.month, p.day).ok_or_else(|| parse_error(t))?;
            let time =
                NaiveTime::from_hms_nano_opt(p.hour, p.minute, p.second, p.nanosecond).ok_or_else(|| parse_error(t))?;
            Ok((NaiveDateTime::new(date, time), p.offset_seconds))
        }
        other => Err(mismatch("a date/time", &other)),
    }
}

fn to_utc(value: &DqliteValueRef<'_>) -> Result<DateTime<Utc>, BoxDynError> {
    let (naive, offset) = decode_parts(value)?;
    let off = FixedOffset::east_opt(offset.unwrap_or(0)).ok_or("invalid zone offset")?;
    off.from_local_datetime(&naive)
        .single()
        .map(|dt| dt.with_timezone(&Utc))
        .ok_or_else(|| "date/time out of range".into())
}

impl<Tz: TimeZone> Type<Dqlite> for DateTime<Tz> {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        datetime_compatible(ty)
    }
}

impl<Tz: TimeZone> Encode<'_, Dqlite> for DateTime<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let off = self.offset().fix();
        let text = self.with_timezone(&off).format("%Y-%m-%d %H:%M:%S%.f%:z").to_string();
        buf.push(WireValue::Iso8601(text));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for DateTime<Utc> {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        to_utc(&value)
    }
}

impl<'r> Decode<'r, Dqlite> for DateTime<Local> {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(to_utc(&value)?.with_timezone(&Local))
    }
}

impl<'r> Decode<'r, Dqlite> for DateTime<FixedOffset> {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let (naive, offset) = decode_parts(&value)?;
        let off = FixedOffset::east_opt(offset.unwrap_or(0)).ok_or("invalid zone offset")?;
        off.from_local_datetime(&naive).single().ok_or_else(|| "date/time out of range".into())
    }
}

impl Type<Dqlite> for NaiveDateTime {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        datetime_compatible(ty)
    }
}

impl Encode<'_, Dqlite> for NaiveDateTime {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Iso8601(self.format("%Y-%m-%d %H:%M:%S%.f").to_string()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for NaiveDateTime {
    /// The wall-clock time as written; a zone in the text is dropped, UNIXTIME is taken as UTC.
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(decode_parts(&value)?.0)
    }
}

impl Type<Dqlite> for NaiveDate {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::ISO8601
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Iso8601 | DataType::Text | DataType::UnixTime)
    }
}

impl Encode<'_, Dqlite> for NaiveDate {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Iso8601(self.format("%Y-%m-%d").to_string()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for NaiveDate {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(decode_parts(&value)?.0.date())
    }
}

impl Type<Dqlite> for NaiveTime {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text | DataType::Iso8601)
    }
}

impl Encode<'_, Dqlite> for NaiveTime {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Text(self.format("%H:%M:%S%.f").to_string()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for NaiveTime {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let t = value.text()?;
        // A time of day: reuse the date/time grammar on a dummy date.
        let p = parse(&format!("2000-01-01 {t}"))
            .filter(|p| p.has_time && p.offset_seconds.is_none())
            .ok_or_else(|| format!("cannot parse {t:?} as a time of day (expected HH:MM:SS.f)"))?;
        NaiveTime::from_hms_nano_opt(p.hour, p.minute, p.second, p.nanosecond).ok_or_else(|| parse_error(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use sqlx_core::value::Value as _;

    #[test]
    fn chrono_round_trips() {
        let utc = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap() + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(round_trip(utc), utc);
        let fixed = FixedOffset::east_opt(-7 * 3600).unwrap().with_ymd_and_hms(2006, 1, 2, 15, 4, 5).unwrap();
        assert_eq!(round_trip(fixed), fixed);
        assert_eq!(round_trip(fixed).offset().local_minus_utc(), -7 * 3600);
        let naive = NaiveDate::from_ymd_opt(1999, 12, 31).unwrap().and_hms_micro_opt(1, 2, 3, 4).unwrap();
        assert_eq!(round_trip(naive), naive);
        let date = NaiveDate::from_ymd_opt(2020, 6, 1).unwrap();
        assert_eq!(round_trip(date), date);
        let time = NaiveTime::from_hms_milli_opt(12, 30, 0, 250).unwrap();
        assert_eq!(round_trip(time), time);
        let local = Local.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(round_trip(local), local);
        assert_eq!(round_trip(None::<DateTime<Utc>>), None);
    }

    #[test]
    fn decodes_dqlite_wire_forms() {
        let t = DqliteValue::new(WireValue::UnixTime(1_136_214_245));
        let want = Utc.with_ymd_and_hms(2006, 1, 2, 15, 4, 5).unwrap();
        assert_eq!(decode::<DateTime<Utc>>(&t), want);
        for text in [
            "2006-01-02 15:04:05",
            "2006-01-02T15:04:05Z",
            "2006-01-02 08:04:05-07:00",
            "2006-01-02T08:04:05.000000000-07:00",
        ] {
            let v = DqliteValue::new(WireValue::Iso8601(text.into()));
            assert_eq!(decode::<DateTime<Utc>>(&v), want, "{text}");
        }
        let d = DqliteValue::new(WireValue::Iso8601("2006-01-02".into()));
        assert_eq!(decode::<NaiveDate>(&d), NaiveDate::from_ymd_opt(2006, 1, 2).unwrap());
        // "" in a DATETIME column is NULL.
        let empty = DqliteValue::new(WireValue::Iso8601(String::new()));
        assert!(empty.is_null());
        assert_eq!(decode::<Option<DateTime<Utc>>>(&empty), None);
        let bad = DqliteValue::new(WireValue::Iso8601("not a date".into()));
        assert!(bad.try_decode::<DateTime<Utc>>().is_err());
    }
}
