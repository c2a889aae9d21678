//! `AnyPool` with a `dqlite://` URL after `sqlx::any::install_drivers`.

use sqlx::any::AnyPoolOptions;
use sqlx::{Executor, Row};

use crate::common;

#[tokio::test]
async fn any_pool_on_a_dqlite_url() {
    common::install_any_drivers();
    let url = common::shared_url("any");
    let pool = AnyPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    assert_eq!(pool.connect_options().database_url.scheme(), "dqlite");

    pool.execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, score REAL, raw BLOB, pinned BOOLEAN)",
    )
    .await
    .unwrap();
    let done = sqlx::query("INSERT INTO notes (body, score, raw, pinned) VALUES (?, ?, ?, ?)")
        .bind("first")
        .bind(1.5_f64)
        .bind(vec![1_u8, 2, 3])
        .bind(true)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    assert_eq!(done.last_insert_id(), Some(1));
    sqlx::query("INSERT INTO notes (body, score, raw, pinned) VALUES (?, ?, ?, ?)")
        .bind("second")
        .bind(None::<f64>)
        .bind(None::<Vec<u8>>)
        .bind(false)
        .execute(&pool)
        .await
        .unwrap();

    let rows =
        sqlx::query("SELECT id, body, score, raw, pinned FROM notes ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<i64, _>("id"), 1);
    assert_eq!(rows[0].get::<String, _>("body"), "first");
    assert_eq!(rows[0].get::<Option<f64>, _>("score"), Some(1.5));
    assert_eq!(rows[0].get::<Option<Vec<u8>>, _>("raw"), Some(vec![1, 2, 3]));
    assert!(rows[0].get::<bool, _>("pinned"));
    assert_eq!(rows[1].get::<Option<f64>, _>("score"), None);
    assert_eq!(rows[1].get::<Option<Vec<u8>>, _>("raw"), None);
    assert!(!rows[1].get::<bool, _>("pinned"));

    // Transactions through Any.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM notes").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM notes").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 2);

    // Errors keep their kind through Any.
    let err = sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'dup')").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().map(|e| e.kind()), Some(sqlx::error::ErrorKind::UniqueViolation), "{err}");
}

#[tokio::test]
async fn any_migrations_on_a_dqlite_url() {
    common::install_any_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(&common::shared_url("any_migrate")).await.unwrap();
    let migrator = sqlx::migrate!("tests/migrations");
    migrator.run(&pool).await.unwrap();
    migrator.run(&pool).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 3);
}
