//! Conversions between Rust types and dqlite values.
//!
//! | Rust type | encoded as (wire type) | decodes from |
//! |---|---|---|
//! | `bool` | BOOLEAN (11) | BOOLEAN, INTEGER (nonzero = true) |
//! | `i8`, `i16`, `i32`, `i64` | INTEGER (1) | INTEGER, BOOLEAN, UNIXTIME (range-checked) |
//! | `u8`, `u16`, `u32` | INTEGER (1) | INTEGER, BOOLEAN (range-checked) |
//! | `u64` (decode only, as in sqlx-sqlite) | — | INTEGER, BOOLEAN (negative values fail) |
//! | `f32`, `f64` | FLOAT (2) | FLOAT, INTEGER |
//! | `&str`, `String`, `Box<str>`, `Cow<str>`, `Arc<str>`, `Rc<str>` (encode) | TEXT (3) | TEXT, ISO8601 |
//! | `sqlx::types::Text<T>` (`T: Display + FromStr`) | TEXT | TEXT, ISO8601 |
//! | `&[u8]`, `Vec<u8>`, `Box<[u8]>`, `Cow<[u8]>`, `Arc<[u8]>`, `Rc<[u8]>` (encode) | BLOB (4) | BLOB, TEXT |
//! | `Option<T>` | NULL (5) when `None` | NULL, and `""` in a date/time column |
//! | **feature `chrono`** | | |
//! | `chrono::DateTime<Utc>`, `DateTime<FixedOffset>`, `DateTime<Local>` | ISO8601 (10) `YYYY-MM-DD HH:MM:SS.f+HH:MM` | ISO8601, TEXT, UNIXTIME, INTEGER (Unix seconds) |
//! | `chrono::NaiveDateTime` | ISO8601 `YYYY-MM-DD HH:MM:SS.f` | same as above |
//! | `chrono::NaiveDate` | ISO8601 `YYYY-MM-DD` | ISO8601, TEXT, UNIXTIME |
//! | `chrono::NaiveTime` | TEXT `HH:MM:SS.f` | TEXT |
//! | **feature `time`** | | |
//! | `time::OffsetDateTime` | ISO8601 `YYYY-MM-DD HH:MM:SS.f+HH:MM` | ISO8601, TEXT, UNIXTIME, INTEGER |
//! | `time::PrimitiveDateTime` | ISO8601 `YYYY-MM-DD HH:MM:SS.f` | same |
//! | `time::Date` | ISO8601 `YYYY-MM-DD` | ISO8601, TEXT, UNIXTIME |
//! | `time::Time` | TEXT `HH:MM:SS.f` | TEXT |
//! | **feature `uuid`** | | |
//! | `uuid::Uuid` | BLOB (16 bytes) | BLOB (16 bytes), TEXT (any uuid format) |
//! | `uuid::fmt::Hyphenated`, `uuid::fmt::Simple` | TEXT | TEXT |
//! | **feature `json`** | | |
//! | `sqlx::types::Json<T>`, `serde_json::Value`, `&serde_json::value::RawValue` | TEXT | TEXT, BLOB |
//!
//! Date/time text is parsed leniently, like go-dqlite: with or without `T`, with or without a
//! zone (`Z`, `+HH:MM`), with or without a fraction, with or without seconds, or a bare date.
//! A value without a zone is taken as UTC where a zone is needed.
//!
//! dqlite reports types per value. For a column declared `BOOLEAN` the server sends BOOLEAN and
//! turns a NULL into `false` (a server limitation). For columns declared `DATETIME`, `DATE` or
//! `TIMESTAMP` it sends UNIXTIME for integers and ISO8601 for text, with NULL as `""` — which
//! this driver decodes as NULL.

mod bool;
mod bytes;
pub(crate) mod datetime;
mod float;
mod int;
mod str;
mod uint;

#[cfg(feature = "chrono")]
mod chrono;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "time")]
mod time;
#[cfg(feature = "uuid")]
mod uuid;

#[cfg(test)]
pub(crate) mod test_util {
    use sqlx_core::arguments::Arguments;
    use sqlx_core::decode::Decode;
    use sqlx_core::encode::Encode;
    use sqlx_core::types::Type;
    use sqlx_core::value::Value;

    use crate::{Dqlite, DqliteArguments, DqliteValue};

    /// Encode `v` as an argument, then decode it back through a [`DqliteValue`].
    pub(crate) fn round_trip<T>(v: T) -> T
    where
        T: for<'q> Encode<'q, Dqlite> + for<'r> Decode<'r, Dqlite> + Type<Dqlite>,
    {
        let value = encode(v);
        decode::<T>(&value)
    }

    pub(crate) fn encode<T>(v: T) -> DqliteValue
    where
        T: for<'q> Encode<'q, Dqlite> + Type<Dqlite>,
    {
        let mut args = DqliteArguments::default();
        args.add(v).expect("encode");
        assert_eq!(args.len(), 1);
        DqliteValue::new(args.values()[0].clone())
    }

    pub(crate) fn decode<T>(value: &DqliteValue) -> T
    where
        T: for<'r> Decode<'r, Dqlite> + Type<Dqlite>,
    {
        value.try_decode::<T>().expect("decode")
    }
}
