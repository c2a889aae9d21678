//! Errors: constraint violations map to sqlx's `ErrorKind`s with SQLite's extended codes,
//! and SQL errors carry the server's message.

use sqlx::error::ErrorKind;
use sqlx::Executor;

use crate::common;

fn db_error(err: &sqlx::Error) -> &dyn sqlx::error::DatabaseError {
    err.as_database_error().unwrap_or_else(|| panic!("expected a database error, got {err:?}"))
}

#[tokio::test]
async fn constraint_violations_map_to_error_kinds() {
    let pool = common::shared_pool("errors_constraints").await;
    pool.execute(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
         CREATE TABLE child (
             id INTEGER PRIMARY KEY,
             parent_id INTEGER NOT NULL REFERENCES parent (id),
             qty INTEGER CHECK (qty > 0)
         );
         INSERT INTO parent (id, email) VALUES (1, 'a@example.com');",
    )
    .await
    .unwrap();

    let unique = sqlx::query("INSERT INTO parent (id, email) VALUES (?, ?)")
        .bind(2_i64)
        .bind("a@example.com")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(db_error(&unique).kind(), ErrorKind::UniqueViolation, "{unique}");
    assert_eq!(db_error(&unique).code().as_deref(), Some("2067"));
    assert!(db_error(&unique).message().contains("UNIQUE"), "{unique}");

    let primary_key = sqlx::query("INSERT INTO parent (id) VALUES (1)").execute(&pool).await.unwrap_err();
    assert_eq!(db_error(&primary_key).kind(), ErrorKind::UniqueViolation, "{primary_key}");
    assert_eq!(db_error(&primary_key).code().as_deref(), Some("1555"));

    // dqlite runs its connections with foreign keys on.
    let foreign =
        sqlx::query("INSERT INTO child (parent_id, qty) VALUES (?, 1)").bind(99_i64).execute(&pool).await.unwrap_err();
    assert_eq!(db_error(&foreign).kind(), ErrorKind::ForeignKeyViolation, "{foreign}");
    assert_eq!(db_error(&foreign).code().as_deref(), Some("787"));

    let not_null = sqlx::query("INSERT INTO child (parent_id, qty) VALUES (NULL, 1)").execute(&pool).await.unwrap_err();
    assert_eq!(db_error(&not_null).kind(), ErrorKind::NotNullViolation, "{not_null}");
    assert_eq!(db_error(&not_null).code().as_deref(), Some("1299"));

    let check =
        sqlx::query("INSERT INTO child (parent_id, qty) VALUES (1, ?)").bind(0_i64).execute(&pool).await.unwrap_err();
    assert_eq!(db_error(&check).kind(), ErrorKind::CheckViolation, "{check}");
    assert_eq!(db_error(&check).code().as_deref(), Some("275"));

    // Nothing of the failed statements was written, and the pool still works.
    let n: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM parent) + (SELECT count(*) FROM child)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn sql_errors_carry_the_server_message() {
    let pool = common::shared_pool("errors_sql").await;
    let syntax = sqlx::query("SELEC 1").fetch_all(&pool).await.unwrap_err();
    let message = db_error(&syntax).message().to_owned();
    assert!(message.contains("syntax error"), "{message}");
    assert_eq!(db_error(&syntax).kind(), ErrorKind::Other);
    let missing = sqlx::query("SELECT * FROM no_such_table WHERE x = ?").bind(1).fetch_all(&pool).await.unwrap_err();
    assert!(db_error(&missing).message().contains("no such table"), "{missing}");
    // The connection survives both.
    let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
}
