//! sqlx's own SQLite tests (`tests/sqlite/sqlite.rs` in sqlx 0.9), ported to real dqlite:
//! empty queries, parameters bound across several statements, interleaved reads and writes,
//! rows affected per statement, a custom begin that opens no transaction, prepared statement
//! columns, and the types sqlx-sqlite maps that dqlite needed too.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::{Column, Connection, Either, Executor, Row, SqlSafeStr, Statement};
use sqlx_dqlite::DqliteConnection;

use crate::common;

async fn conn(db: &str) -> DqliteConnection {
    let url = common::shared_url(db);
    DqliteConnection::connect(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

#[tokio::test]
async fn it_handles_empty_queries() {
    let mut conn = conn("compat_empty").await;
    for sql in ["", ";", " ; ; ", "-- only a comment", "/* c */", "-- a\n;\n/* b */"] {
        let done = conn.execute(sql).await.unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert_eq!(done.rows_affected(), 0);
        let rows = conn.fetch_all(sql).await.unwrap();
        assert!(rows.is_empty());
        assert!(sqlx::query(sql).fetch_optional(&mut conn).await.unwrap().is_none());
        assert!(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.is_ok());
    }
}

#[tokio::test]
async fn it_binds_parameters_within_and_across_statements() {
    let mut conn = conn("compat_bind").await;
    let v: i32 = sqlx::query_scalar("select 1 + ?1").bind(5_i32).fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, 6);
    let values: Vec<i32> =
        sqlx::query_scalar("select ?; select ?").bind(5_i32).bind(15_i32).fetch_all(&mut conn).await.unwrap();
    assert_eq!(values, [5, 15]);
    let values: Vec<i32> = sqlx::query_scalar("select ?1; select ?1").bind(25_i32).fetch_all(&mut conn).await.unwrap();
    assert_eq!(values, [25, 25]);
    let row: (i32, i32, i32, i32) = sqlx::query_as("select ?1, ?1, ?3, ?2")
        .bind(5_i32)
        .bind(500_i32)
        .bind(1020_i32)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row, (5, 5, 1020, 500));
    let v: (i32, i32) = sqlx::query_as("SELECT ?1, ?").bind(10_i32).fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, (10, 10));
    let v: (i32, i32) = sqlx::query_as("SELECT $1, $2").bind(10_i32).bind(11_i32).fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, (10, 11));
    // Not persistent (QUERY_SQL with parameters) across statements too.
    let values: Vec<i32> = sqlx::query_scalar("select ?; select ? + 1")
        .bind(1_i32)
        .bind(2_i32)
        .persistent(false)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(values, [1, 3]);
    // Literals, comments and identifiers holding `;` and `?` do not split or bind.
    let v: (String, String, i32) = sqlx::query_as("SELECT 'a;?', \"b;\" || '' -- ; ?\n , ? /* ; ? */")
        .bind(7_i32)
        .fetch_one(&mut conn)
        .await
        .map(|(a, b, c): (String, Option<String>, i32)| (a, b.unwrap_or_default(), c))
        .unwrap();
    assert_eq!(v, ("a;?".to_owned(), "b;".to_owned(), 7));
}

#[tokio::test]
#[allow(deprecated)] // sqlx deprecates several statements in one query; the driver supports it
async fn it_can_execute_multiple_statements() {
    let mut conn = conn("compat_multi").await;
    let done = conn
        .execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, other INTEGER);
             INSERT INTO users DEFAULT VALUES;",
        )
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    for index in 2..5_i32 {
        let (id, other): (i32, i32) = sqlx::query_as(
            "INSERT INTO users (other) VALUES (?);
             SELECT id, other FROM users WHERE id = last_insert_rowid();",
        )
        .bind(index)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!((id, other), (index, index));
    }
    // Rows affected per statement, one result per statement from fetch_many.
    let results: Vec<u64> = sqlx::query(
        "UPDATE users SET other = 0 WHERE id <= 2; SELECT 1; DELETE FROM users WHERE id > ?; INSERT INTO users DEFAULT VALUES",
    )
    .bind(2_i32)
    .fetch_many(&mut conn)
    .try_filter_map(|step| async move {
        Ok(match step {
            Either::Left(r) => Some(r.rows_affected()),
            Either::Right(_) => None,
        })
    })
    .try_collect()
    .await
    .unwrap();
    assert_eq!(results, [2, 0, 2, 1]);
    let total = sqlx::query("DELETE FROM users WHERE id = ?; DELETE FROM users WHERE id = ?")
        .bind(1_i32)
        .bind(2_i32)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(total.rows_affected(), 2);
}

#[tokio::test]
async fn it_interleaves_reads_and_writes() {
    let mut conn = conn("compat_interleave").await;
    let mut cursor = conn.fetch(
        "
CREATE TABLE IF NOT EXISTS _sqlx_test (
    id INT PRIMARY KEY,
    text TEXT NOT NULL
);

SELECT 'Hello World' as _1;

INSERT INTO _sqlx_test (text) VALUES ('this is a test');

SELECT id, text FROM _sqlx_test;
    ",
    );
    let row = cursor.try_next().await.unwrap().unwrap();
    assert_eq!("Hello World", row.try_get::<&str, _>("_1").unwrap());
    let row = cursor.try_next().await.unwrap().unwrap();
    // `id INT PRIMARY KEY` is not a rowid alias: NULL (sqlx-sqlite reads it as 0).
    let id: Option<i64> = row.try_get("id").unwrap();
    assert_eq!(id, None);
    assert_eq!("this is a test", row.try_get::<&str, _>("text").unwrap());
    assert!(cursor.try_next().await.unwrap().is_none());
}

#[tokio::test]
async fn triggers_with_semicolons_in_their_body() {
    let mut conn = conn("compat_trigger").await;
    conn.execute(
        "CREATE TABLE t (a INTEGER);
         CREATE TABLE log (msg TEXT);
         CREATE TRIGGER tr AFTER INSERT ON t BEGIN
             INSERT INTO log VALUES ('inserted; ' || new.a);
             INSERT INTO log VALUES (CASE WHEN new.a > 1 THEN 'big' ELSE 'small' END);
         END;
         INSERT INTO t VALUES (1);",
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO t VALUES (?)").bind(2_i32).execute(&mut conn).await.unwrap();
    let msgs: Vec<String> =
        sqlx::query_scalar("SELECT msg FROM log ORDER BY rowid").fetch_all(&mut conn).await.unwrap();
    assert_eq!(msgs, ["inserted; 1", "small", "inserted; 2", "big"]);
}

#[tokio::test]
async fn it_fails_to_parse_and_reports_argument_mismatches() {
    let mut conn = conn("compat_parse").await;
    let err = sqlx::raw_sql("SEELCT 1").execute(&mut conn).await.unwrap_err();
    assert_eq!(err.to_string(), "error returned from database: (code: 1) near \"SEELCT\": syntax error");
    // The second statement fails: the first one ran (as in sqlx-sqlite).
    conn.execute("CREATE TABLE p (a)").await.unwrap();
    let err = conn.execute("INSERT INTO p VALUES (1); INSERT INTO nope VALUES (1)").await.unwrap_err();
    assert!(err.to_string().contains("no such table: nope"), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM p").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 1);
    // A named parameter cannot be bound from positional arguments: refused before running.
    let err = sqlx::query("SELECT :a").bind(1_i32).fetch_one(&mut conn).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn it_can_recover_from_bad_transaction_begin() {
    let mut conn = conn("compat_begin_with").await;
    // This statement doesn't actually start a transaction.
    let err = conn.begin_with("SELECT 1").await.unwrap_err();
    assert!(matches!(err, sqlx::Error::BeginFailed), "{err}");
    assert_eq!(conn.transaction_depth(), 0);
    // Transaction state bookkeeping was reset: a real custom begin works.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let value: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(value, 1);
    assert_eq!(tx.transaction_depth(), 1);
    tx.commit().await.unwrap();
    assert_eq!(conn.transaction_depth(), 0);
    // And the server is really outside a transaction: BEGIN works.
    conn.execute("BEGIN").await.unwrap();
    conn.execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn prepared_statement_columns_are_known_once_it_ran() {
    let mut conn = conn("compat_prepare").await;
    conn.execute("CREATE TABLE tweet (id INTEGER PRIMARY KEY, text TEXT NOT NULL, is_sent BOOLEAN)").await.unwrap();
    conn.execute("INSERT INTO tweet (id, text, is_sent) VALUES (2, 'Hello, World', TRUE)").await.unwrap();
    let statement = conn.prepare("SELECT * FROM tweet WHERE id = ?1".into_sql_str()).await.unwrap();
    assert_eq!(statement.parameters(), Some(Either::Right(1)));
    let row = statement.query().bind(2_i32).fetch_one(&mut conn).await.unwrap();
    assert_eq!(row.try_get::<&str, _>("text").unwrap(), "Hello, World");
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "text", "is_sent"]);
    // Preparing it again hands out the columns at once.
    let again = conn.prepare("SELECT * FROM tweet WHERE id = ?1".into_sql_str()).await.unwrap();
    assert_eq!(again.columns().len(), 3);
    assert_eq!(again.column("text").ordinal(), 1);
}

#[tokio::test]
async fn types_sqlx_sqlite_maps() {
    let mut conn = conn("compat_types").await;
    conn.execute("CREATE TABLE v (t TEXT, b BLOB, i INTEGER)").await.unwrap();
    let text = sqlx::types::Text(std::net::Ipv4Addr::new(192, 168, 0, 1));
    let rc: Rc<str> = "rc".into();
    sqlx::query("INSERT INTO v VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?)")
        .bind(text)
        .bind(Cow::Borrowed(&b"cow"[..]))
        .bind(i64::MAX)
        .bind(rc)
        .bind(Arc::<[u8]>::from(&b"arc"[..]))
        .bind(0_i64)
        .bind(uuid::Uuid::nil().simple())
        .bind(Rc::<[u8]>::from(&b"rc"[..]))
        .bind(7_i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT t, b, i FROM v ORDER BY rowid").fetch_all(&mut conn).await.unwrap();
    let ip: sqlx::types::Text<std::net::Ipv4Addr> = rows[0].get(0);
    assert_eq!(ip.0, std::net::Ipv4Addr::new(192, 168, 0, 1));
    assert_eq!(rows[0].get::<Vec<u8>, _>(1), b"cow");
    assert_eq!(rows[0].get::<u64, _>(2), i64::MAX as u64);
    assert_eq!(rows[1].get::<String, _>(0), "rc");
    assert_eq!(rows[1].get::<Vec<u8>, _>(1), b"arc");
    let simple: uuid::fmt::Simple = rows[2].get(0);
    assert_eq!(simple, uuid::Uuid::nil().simple());
    assert_eq!(rows[2].get::<Vec<u8>, _>(1), b"rc");
    let hyphenated: uuid::fmt::Hyphenated =
        sqlx::query_scalar("SELECT ?").bind(uuid::Uuid::nil().hyphenated()).fetch_one(&mut conn).await.unwrap();
    assert_eq!(hyphenated, uuid::Uuid::nil().hyphenated());
    assert!(sqlx::query_scalar::<_, u64>("SELECT -1").fetch_one(&mut conn).await.is_err());
}
