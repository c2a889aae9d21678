//! sqlx's own SQLite driver (`sqlx` with its `sqlite` feature, bundled libsqlite3-sys) and
//! sqlx-dqlite in one binary and one test: the same rows go from a local SQLite database to
//! the dqlite cluster and back, through both drivers side by side, and through Any.

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Executor, Row};

use crate::common;

const SCHEMA: &str = "CREATE TABLE cities (name TEXT PRIMARY KEY, population INTEGER NOT NULL, area REAL)";

#[tokio::test]
async fn sqlite_and_dqlite_side_by_side() {
    let sqlite = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
    let dqlite = common::shared_pool("coexistence").await;
    sqlite.execute(SCHEMA).await.unwrap();
    dqlite.execute(SCHEMA).await.unwrap();

    let cities = [("Lyon", 522_250_i64, Some(47.87_f64)), ("Oslo", 709_037, Some(454.0)), ("Nowhere", 0, None)];
    for (name, population, area) in cities {
        sqlx::query("INSERT INTO cities VALUES (?, ?, ?)")
            .bind(name)
            .bind(population)
            .bind(area)
            .execute(&sqlite)
            .await
            .unwrap();
    }
    // Copy SQLite -> dqlite, row by row, with both pools open.
    let rows: Vec<(String, i64, Option<f64>)> =
        sqlx::query_as("SELECT name, population, area FROM cities ORDER BY name").fetch_all(&sqlite).await.unwrap();
    let mut tx = dqlite.begin().await.unwrap();
    for (name, population, area) in &rows {
        sqlx::query("INSERT INTO cities VALUES (?, ?, ?)")
            .bind(name)
            .bind(population)
            .bind(area)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let copied: Vec<(String, i64, Option<f64>)> =
        sqlx::query_as("SELECT name, population, area FROM cities ORDER BY name").fetch_all(&dqlite).await.unwrap();
    assert_eq!(copied, rows);

    // Both are SQLite underneath: the same SQL function answers on each.
    let local: String = sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&sqlite).await.unwrap();
    let remote: String = sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&dqlite).await.unwrap();
    assert!(local.starts_with("3.") && remote.starts_with("3."), "{local} / {remote}");
}

#[tokio::test]
async fn any_with_both_drivers_installed() {
    common::install_any_drivers();
    let url = common::shared_url("coexistence_any");
    for url in ["sqlite::memory:", url.as_str()] {
        let pool = AnyPoolOptions::new().max_connections(1).connect(url).await.unwrap();
        pool.execute(SCHEMA).await.unwrap();
        sqlx::query("INSERT INTO cities VALUES (?, ?, ?)")
            .bind("Lyon")
            .bind(522_250_i64)
            .bind(47.87_f64)
            .execute(&pool)
            .await
            .unwrap();
        let row = sqlx::query("SELECT name, population, area FROM cities").fetch_one(&pool).await.unwrap();
        assert_eq!(row.get::<String, _>(0), "Lyon", "{url}");
        assert_eq!(row.get::<i64, _>(1), 522_250, "{url}");
        assert_eq!(row.get::<f64, _>(2), 47.87, "{url}");
    }
}
