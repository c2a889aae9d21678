//! # The URL swap
//!
//! One piece of ordinary sqlx application code ([`app`]) runs twice: on a local SQLite
//! database, then on a Raft-replicated dqlite cluster. Only the URL differs.
//!
//! ```text
//! cargo run --example url_swap
//! DQLITE_URL='dqlite://10.0.0.1:9001/todo.db?peers=10.0.0.2:9001,10.0.0.3:9001' cargo run --example url_swap
//! ```
//!
//! Without `DQLITE_URL` the dqlite side is a node embedded in this very process
//! (`dqlite:///todo.db?data=DIR`, a single node without a socket, its data in a temporary
//! directory): nothing to install, no other process.

use std::error::Error;

use sqlx::any::AnyPoolOptions;
use sqlx::{Executor, Row};

/// What [`app`] observed; equal on every database it runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `(id, title, done)` in id order.
    pub todos: Vec<(i64, String, bool)>,
    /// How many todos are not done.
    pub open: i64,
}

/// Application code: plain sqlx through `AnyPool`. Nothing in it knows which database is
/// behind `url`.
pub async fn app(url: &str) -> Result<Summary, sqlx::Error> {
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await?;
    pool.execute(
        "CREATE TABLE IF NOT EXISTS todo (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL UNIQUE,
            done INTEGER NOT NULL DEFAULT 0
        )",
    )
    .await?;
    pool.execute("DELETE FROM todo").await?; // so the example can run again on the same database

    // A committed transaction...
    let mut tx = pool.begin().await?;
    for (id, title) in [(1_i64, "write the driver"), (2, "test it against real dqlite"), (3, "swap the URL")] {
        sqlx::query("INSERT INTO todo (id, title) VALUES (?, ?)").bind(id).bind(title).execute(&mut *tx).await?;
    }
    tx.commit().await?;

    // ...and a rolled-back one, which leaves no trace.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO todo (id, title) VALUES (?, ?)")
        .bind(4_i64)
        .bind("never happened")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;

    sqlx::query("UPDATE todo SET done = ? WHERE title LIKE ?").bind(1_i64).bind("%driver%").execute(&pool).await?;

    let todos = sqlx::query("SELECT id, title, done FROM todo ORDER BY id")
        .fetch_all(&pool)
        .await?
        .iter()
        // (Any cannot decode SQLite's BOOLEAN type, so `done` is an INTEGER 0/1.)
        .map(|row| Ok((row.try_get("id")?, row.try_get("title")?, row.try_get::<i64, _>("done")? != 0)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM todo WHERE done = 0").fetch_one(&pool).await?;
    pool.close().await;
    Ok(Summary { todos, open })
}

fn print(url: &str, summary: &Summary) {
    println!("  {url}");
    for (id, title, done) in &summary.todos {
        println!("    [{}] {id}. {title}", if *done { "x" } else { " " });
    }
    println!("    {} open", summary.open);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Once per process: the drivers `AnyPool` may pick by URL scheme.
    sqlx::any::install_drivers(&[sqlx::sqlite::any::DRIVER, sqlx_dqlite::any::DRIVER])
        .map_err(|e| format!("installing the Any drivers: {e}"))?;

    let sqlite_url = "sqlite::memory:";
    println!("1. the application on SQLite:");
    let on_sqlite = app(sqlite_url).await?;
    print(sqlite_url, &on_sqlite);

    // Keep the temporary data directory (if we made one) until the end of main.
    let (data, dqlite_url) = match std::env::var("DQLITE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let data = tempfile::tempdir()?;
            println!("2. DQLITE_URL is not set: the dqlite node is embedded in this process");
            let url = format!("dqlite:///todo.db?data={}", data.path().join("node").display());
            (Some(data), url)
        }
    };
    println!("   the same application on dqlite:");
    let on_dqlite = app(&dqlite_url).await?;
    print(&dqlite_url, &on_dqlite);

    // Stop the embedded node (if this process runs one) before its directory goes away.
    if let Some(data) = &data {
        if let Some(node) = dqlite::node::embedded::running(&data.path().join("node")) {
            node.close().await;
        }
    }
    if on_sqlite == on_dqlite {
        println!("same results on both: only the URL changed");
        Ok(())
    } else {
        Err(format!("results differ:\n  sqlite: {on_sqlite:?}\n  dqlite: {on_dqlite:?}").into())
    }
}
