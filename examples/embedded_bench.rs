//! Point selects, one client, in one run: an embedded dqlite-rs leader reached in process
//! (`data=DIR` URL, no socket crossed) vs sqlx-sqlite on a local file (WAL,
//! `synchronous=FULL`) vs the same node over loopback TCP. Prints ops/s and the ratios.
//!
//! ```text
//! cargo run --release --example embedded_bench -- [OPS]     # default 20000 selects per target
//! ```

use std::str::FromStr;
use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Pool};

const ROWS: i64 = 1000;

async fn point_selects<DB>(pool: &Pool<DB>, ops: u64) -> Result<f64, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    // Warm up (statement cache, page cache).
    for id in 0..200 {
        let _: (i64,) = sqlx::query_as("SELECT v FROM kv WHERE id = ?").bind(id % ROWS + 1).fetch_one(pool).await?;
    }
    let start = Instant::now();
    for i in 0..ops as i64 {
        let (v,): (i64,) =
            sqlx::query_as("SELECT v FROM kv WHERE id = ?").bind((i * 7919) % ROWS + 1).fetch_one(pool).await?;
        assert_eq!(v, ((i * 7919) % ROWS + 1) * 10);
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

async fn fill<DB>(pool: &Pool<DB>) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
{
    pool.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await?;
    // ROWS rows: (id, id * 10).
    pool.execute(
        "INSERT INTO kv WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) \
         SELECT x, x * 10 FROM c",
    )
    .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ops: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let base = std::env::temp_dir().join(format!("dqlite-embedded-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;

    let sqlite_opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", base.join("bench.sqlite").display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let sqlite = SqlitePoolOptions::new().max_connections(1).connect_with(sqlite_opts).await?;
    fill(&sqlite).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let embedded_url = format!("dqlite://{addr}/bench.db?data={}", base.join("node").display());
    let embedded = sqlx_dqlite::DqlitePoolOptions::new().max_connections(1).connect(&embedded_url).await?;
    fill(&embedded).await?;
    let tcp =
        sqlx_dqlite::DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{addr}/bench.db")).await?;

    // Interleave the three so that machine noise hits them alike; best of 3 rounds each.
    let (mut s, mut e, mut t) = (0f64, 0f64, 0f64);
    for round in 0..3 {
        s = s.max(point_selects(&sqlite, ops).await?);
        e = e.max(point_selects(&embedded, ops).await?);
        t = t.max(point_selects(&tcp, ops).await?);
        println!("round {round}: sqlx-sqlite {s:.0}/s, embedded in-process {e:.0}/s, same node over TCP {t:.0}/s");
    }
    println!("point selects, 1 client, {ops} per round, best of 3:");
    println!("  sqlx-sqlite (local file, WAL, synchronous=FULL): {s:>9.0} ops/s");
    println!("  dqlite-rs embedded leader, in process:           {e:>9.0} ops/s   {:.2}x sqlx-sqlite", e / s);
    println!("  dqlite-rs same node over loopback TCP:           {t:>9.0} ops/s   {:.2}x sqlx-sqlite", t / s);
    println!("  in process / TCP: {:.2}x", e / t);

    tcp.close().await;
    embedded.close().await;
    sqlite.close().await;
    if let Some(node) = dqlite::node::embedded::running(&base.join("node")) {
        node.close().await;
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
