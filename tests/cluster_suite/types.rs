//! Every type the driver maps, written through a bound parameter into a declared column and
//! read back; plus dqlite's own value types (UNIXTIME, ISO8601, BOOLEAN) that the server
//! chooses for columns declared DATETIME/DATE/TIMESTAMP and BOOLEAN.

use std::fmt::Debug;

use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Decode, Encode, Executor, Row, Type};
use sqlx_dqlite::{Dqlite, DqlitePool};

use crate::common;

/// Inserts every value into a fresh table `name` whose column `v` is declared `decl`, reads
/// them back in order and compares.
async fn round_trip<T>(pool: &DqlitePool, name: &str, decl: &str, values: &[T])
where
    T: for<'q> Encode<'q, Dqlite> + for<'r> Decode<'r, Dqlite> + Type<Dqlite>,
    T: Clone + PartialEq + Debug + Send + Sync + Unpin + 'static,
{
    let create = format!("CREATE TABLE rt_{name} (i INTEGER PRIMARY KEY, v {decl})");
    pool.execute(AssertSqlSafe(create)).await.unwrap();
    let insert = format!("INSERT INTO rt_{name} (i, v) VALUES (?, ?)");
    for (i, value) in values.iter().enumerate() {
        sqlx::query(AssertSqlSafe(insert.clone()))
            .bind(i as i64)
            .bind(value.clone())
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: inserting {value:?}: {e}"));
    }
    let select = format!("SELECT v FROM rt_{name} ORDER BY i");
    let back: Vec<T> = sqlx::query_scalar(AssertSqlSafe(select))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: reading back: {e}"));
    assert_eq!(back, values, "{name} ({decl}) did not round-trip");

    // The same values as parameters of a query, read back without a declared type.
    for value in values {
        let echoed: T = sqlx::query_scalar("SELECT ?")
            .bind(value.clone())
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: SELECT ? of {value:?}: {e}"));
        assert_eq!(&echoed, value, "{name}: SELECT ? did not echo the value");
    }
}

#[tokio::test]
async fn core_types_round_trip() {
    let pool = common::shared_pool("types_core").await;
    round_trip(&pool, "bool", "BOOLEAN", &[true, false]).await;
    round_trip(&pool, "bool_int", "INTEGER", &[true, false]).await;
    round_trip(&pool, "i8", "INTEGER", &[i8::MIN, -1, 0, 1, i8::MAX]).await;
    round_trip(&pool, "i16", "INTEGER", &[i16::MIN, -1, 0, i16::MAX]).await;
    round_trip(&pool, "i32", "INTEGER", &[i32::MIN, -1, 0, i32::MAX]).await;
    round_trip(&pool, "i64", "INTEGER", &[i64::MIN, -1, 0, i64::MAX]).await;
    round_trip(&pool, "u8", "INTEGER", &[0_u8, 1, u8::MAX]).await;
    round_trip(&pool, "u16", "INTEGER", &[0_u16, u16::MAX]).await;
    round_trip(&pool, "u32", "INTEGER", &[0_u32, u32::MAX]).await;
    round_trip(&pool, "f32", "REAL", &[0.0_f32, -1.5, f32::MAX, f32::MIN_POSITIVE, f32::INFINITY]).await;
    round_trip(&pool, "f64", "REAL", &[0.0_f64, -0.1, std::f64::consts::PI, f64::MAX, f64::NEG_INFINITY]).await;
    round_trip(
        &pool,
        "string",
        "TEXT",
        &[
            String::new(),
            "plain".to_owned(),
            "ünïcødé ✓ 日本語 🦀".to_owned(),
            "quote ' and \" and \\ and newline\n".to_owned(),
            "7 bytes".to_owned(), // 7 bytes + NUL fill exactly one wire word
            "x".repeat(200_000),
        ],
    )
    .await;
    round_trip(
        &pool,
        "bytes",
        "BLOB",
        &[Vec::new(), vec![0_u8], (0..=255_u8).collect::<Vec<u8>>(), vec![0xAB; 100_000]],
    )
    .await;
    round_trip(&pool, "opt_i64", "INTEGER", &[Some(7_i64), None, Some(i64::MIN)]).await;
    round_trip(&pool, "opt_string", "TEXT", &[None, Some("x".to_owned()), Some(String::new())]).await;
    round_trip(&pool, "opt_bytes", "BLOB", &[Some(vec![1_u8, 2]), None]).await;
    round_trip(&pool, "opt_f64", "REAL", &[None, Some(2.5_f64)]).await;

    // Borrowed forms encode too.
    pool.execute("CREATE TABLE borrowed (s TEXT, b BLOB)").await.unwrap();
    let (s, b): (&str, &[u8]) = ("borrowed", &[9, 8, 7]);
    sqlx::query("INSERT INTO borrowed (s, b) VALUES (?, ?)").bind(s).bind(b).execute(&pool).await.unwrap();
    let row = sqlx::query("SELECT s, b FROM borrowed").fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<&str, _>(0), "borrowed");
    assert_eq!(row.get::<&[u8], _>(1), &[9, 8, 7]);
}

#[tokio::test]
async fn out_of_range_integers_are_decode_errors() {
    let pool = common::shared_pool("types_range").await;
    let too_big = sqlx::query_scalar::<_, i8>("SELECT 300").fetch_one(&pool).await;
    assert!(too_big.is_err(), "300 must not decode as i8: {too_big:?}");
    let negative = sqlx::query_scalar::<_, u32>("SELECT -1").fetch_one(&pool).await;
    assert!(negative.is_err(), "-1 must not decode as u32: {negative:?}");
    let null = sqlx::query_scalar::<_, i64>("SELECT NULL").fetch_one(&pool).await;
    assert!(null.is_err(), "NULL must not decode as a non-Option i64: {null:?}");
}

#[tokio::test]
async fn chrono_types_round_trip() {
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
    let pool = common::shared_pool("types_chrono").await;
    let date = NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
    let naive: NaiveDateTime = date.and_hms_micro_opt(13, 14, 15, 123_456).unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    round_trip(&pool, "chrono_naive_dt", "DATETIME", &[naive, epoch]).await;
    round_trip(&pool, "chrono_naive_dt_text", "TEXT", &[naive]).await;
    round_trip(&pool, "chrono_utc", "TIMESTAMP", &[Utc.from_utc_datetime(&naive), Utc.from_utc_datetime(&epoch)]).await;
    let plus_two = FixedOffset::east_opt(2 * 3600).unwrap();
    let with_offset: DateTime<FixedOffset> = plus_two.from_local_datetime(&naive).unwrap();
    round_trip(&pool, "chrono_fixed", "DATETIME", &[with_offset]).await;
    round_trip(&pool, "chrono_date", "DATE", &[date, NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()]).await;
    round_trip(&pool, "chrono_time", "TEXT", &[NaiveTime::from_hms_micro_opt(23, 59, 58, 999_999).unwrap()]).await;
    round_trip(&pool, "chrono_opt", "DATETIME", &[Some(naive), None]).await;
}

#[tokio::test]
async fn time_types_round_trip() {
    use time::macros::{date, datetime, offset, time};
    use time::{OffsetDateTime, PrimitiveDateTime};
    let pool = common::shared_pool("types_time").await;
    let primitive: PrimitiveDateTime = datetime!(2026-02-28 13:14:15.123456);
    round_trip(&pool, "time_primitive", "DATETIME", &[primitive, datetime!(1970-01-01 0:00)]).await;
    let odt: OffsetDateTime = datetime!(2026-02-28 13:14:15.5 +2);
    round_trip(&pool, "time_offset", "TIMESTAMP", &[odt, datetime!(2000-01-01 0:00 UTC)]).await;
    assert_eq!(odt.offset(), offset!(+2));
    round_trip(&pool, "time_date", "DATE", &[date!(2026 - 02 - 28)]).await;
    round_trip(&pool, "time_time", "TEXT", &[time!(23:59:58.25)]).await;
    round_trip(&pool, "time_opt", "DATETIME", &[None, Some(primitive)]).await;
}

#[tokio::test]
async fn uuid_round_trip() {
    let pool = common::shared_pool("types_uuid").await;
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::nil(), uuid::Uuid::max()];
    round_trip(&pool, "uuid", "BLOB", &ids).await;
    round_trip(&pool, "uuid_opt", "BLOB", &[Some(ids[0]), None]).await;
    // A uuid stored as text (e.g. by another client) decodes too.
    let text = ids[0].hyphenated().to_string();
    let back: uuid::Uuid = sqlx::query_scalar("SELECT ?").bind(text).fetch_one(&pool).await.unwrap();
    assert_eq!(back, ids[0]);
}

#[tokio::test]
async fn json_round_trip() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        name: String,
        tags: Vec<String>,
        score: Option<f64>,
    }
    let pool = common::shared_pool("types_json").await;
    let doc = Doc { name: "d".into(), tags: vec!["a".into(), "ü".into()], score: Some(1.5) };
    round_trip(
        &pool,
        "json_struct",
        "TEXT",
        &[Json(doc.clone()), Json(Doc { name: String::new(), tags: vec![], score: None })],
    )
    .await;
    let value = serde_json::json!({"k": [1, 2, {"n": null}], "s": "x"});
    round_trip(&pool, "json_value", "TEXT", std::slice::from_ref(&value)).await;
    // SQLite's JSON functions see valid JSON text.
    let kind: String =
        sqlx::query_scalar("SELECT json_type(?, '$.k')").bind(Json(&value)).fetch_one(&pool).await.unwrap();
    assert_eq!(kind, "array");
}

/// dqlite picks the wire type from the declared column type: DATETIME with integer storage is
/// sent as UNIXTIME, with text storage as ISO8601 (NULL as ""), and BOOLEAN as BOOLEAN.
#[tokio::test]
async fn dqlite_unixtime_iso8601_and_boolean_values() {
    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    let pool = common::shared_pool("types_dqlite").await;
    pool.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, day DATE, flag BOOLEAN);
         INSERT INTO events VALUES (1, 1767225600, '2026-01-01', 1);
         INSERT INTO events VALUES (2, '2026-01-01 00:00:00', 1767225600, 0);
         INSERT INTO events VALUES (3, '2026-01-01T00:00:00Z', NULL, 7);
         INSERT INTO events VALUES (4, NULL, '2026-01-01T00:00:00+00:00', NULL);",
    )
    .await
    .unwrap();
    let new_year = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();

    // UNIXTIME (row 1) and ISO8601 with and without 'T'/zone (rows 2, 3) decode to the same instant.
    let ats: Vec<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT at FROM events ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(ats, vec![Some(new_year), Some(new_year), Some(new_year), None]);
    // UNIXTIME also decodes as the integer it is.
    let secs: i64 = sqlx::query_scalar("SELECT at FROM events WHERE id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(secs, 1_767_225_600);
    // ISO8601 also decodes as the text it is.
    let text: String = sqlx::query_scalar("SELECT at FROM events WHERE id = 2").fetch_one(&pool).await.unwrap();
    assert_eq!(text, "2026-01-01 00:00:00");
    // DATE columns: text and integer storage.
    let days: Vec<Option<NaiveDate>> =
        sqlx::query_scalar("SELECT day FROM events ORDER BY id").fetch_all(&pool).await.unwrap();
    let d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    assert_eq!(days, vec![Some(d), Some(d), None, Some(d)]);
    // time crate from the same UNIXTIME / ISO8601 values.
    let odts: Vec<Option<time::OffsetDateTime>> =
        sqlx::query_scalar("SELECT at FROM events ORDER BY id").fetch_all(&pool).await.unwrap();
    let expected = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    assert_eq!(odts, vec![Some(expected), Some(expected), Some(expected), None]);

    // BOOLEAN: nonzero is true. dqlite 1.11 sends a NULL in a BOOLEAN column as false
    // (a server limitation, PROTOCOL.md 3.1), so Option<bool> reads Some(false) there.
    let flags: Vec<Option<bool>> =
        sqlx::query_scalar("SELECT flag FROM events ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(&flags[..3], &[Some(true), Some(false), Some(true)]);
    assert!(matches!(flags[3], None | Some(false)), "NULL boolean read as {:?}", flags[3]);
    // And BOOLEAN decodes as an integer too.
    let as_int: i64 = sqlx::query_scalar("SELECT flag FROM events WHERE id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(as_int, 1);
}
