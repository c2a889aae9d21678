//! Rough driver benchmark against one local `dqlite-demo` node (started by this program).
//!
//! ```text
//! cargo run -p sqlx-dqlite --example bench [-- N]
//! ```
//!
//! Prints wall-clock times and ratios against baselines measured in the same run:
//! point queries with the statement cache vs without it (QUERY_SQL each time), autocommit
//! inserts vs the same inserts in one transaction, and rows/s for a streamed 10,000-row query.
//! On one node every commit is a local Raft round; with three nodes commits add a network
//! round trip, so the ratios, not the absolute numbers, are what carries over.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx_core::connection::{ConnectOptions, Connection};
use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_dqlite::{DqliteConnectOptions, DqliteConnection};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn point_queries(conn: &mut DqliteConnection, n: i64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let v: i64 = query_scalar("SELECT v FROM kv WHERE k = ?").bind(i % 100).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(v, (i % 100) * 2);
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("sqlx-dqlite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("127.0.0.1:{}", free_port());
    let mut node = Command::new("dqlite-demo")
        .args(["--api", &format!("127.0.0.1:{}", free_port()), "--db", &db, "-D"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dqlite-demo (apt-get install go-dqlite)");

    let opts: DqliteConnectOptions = format!("dqlite://{db}/bench.db").parse().unwrap();
    let mut cached = opts.connect().await.unwrap();
    let mut uncached = opts.clone().statement_cache_capacity(0).connect().await.unwrap();

    cached
        .execute(
            "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER); \
             WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < 99) \
             INSERT INTO kv SELECT x, x * 2 FROM c; \
             CREATE TABLE big (i INTEGER PRIMARY KEY, pad TEXT); \
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) \
             INSERT INTO big SELECT x, 'padding-padding-padding' FROM c; \
             CREATE TABLE w (i INTEGER);",
        )
        .await
        .unwrap();

    // Warm up both connections.
    point_queries(&mut cached, 10).await;
    point_queries(&mut uncached, 10).await;

    // Alternate the two in rounds so machine noise hits both alike.
    let (mut base, mut prepared) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..4 {
        prepared += point_queries(&mut cached, n / 4).await;
        base += point_queries(&mut uncached, n / 4).await;
    }
    let n = n / 4 * 4;
    println!(
        "point query x{n}: QUERY_SQL {:?} ({:.0}/s), cached PREPARE+QUERY {:?} ({:.0}/s), ratio {:.2}x",
        base,
        n as f64 / base.as_secs_f64(),
        prepared,
        n as f64 / prepared.as_secs_f64(),
        base.as_secs_f64() / prepared.as_secs_f64()
    );

    // The same through a one-connection pool (sqlx pings on release and before acquire).
    let pool = sqlx_dqlite::DqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        let v: i64 = query_scalar("SELECT v FROM kv WHERE k = ?").bind(i % 100).fetch_one(&pool).await.unwrap();
        assert_eq!(v, (i % 100) * 2);
    }
    let pooled = start.elapsed();
    println!(
        "point query x{n} through a pool: {:?} ({:.0}/s), {:.2}x the direct connection's time",
        pooled,
        n as f64 / pooled.as_secs_f64(),
        pooled.as_secs_f64() / prepared.as_secs_f64()
    );
    pool.close().await;

    let writes = n.min(1000);
    let start = Instant::now();
    for i in 0..writes {
        query("INSERT INTO w (i) VALUES (?)").bind(i).execute(&mut cached).await.unwrap();
    }
    let autocommit = start.elapsed();
    let start = Instant::now();
    let mut tx = cached.begin().await.unwrap();
    for i in 0..writes {
        query("INSERT INTO w (i) VALUES (?)").bind(i).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let batched = start.elapsed();
    println!(
        "insert x{writes}: autocommit {:?} ({:.0}/s), one transaction {:?} ({:.0}/s), ratio {:.2}x",
        autocommit,
        writes as f64 / autocommit.as_secs_f64(),
        batched,
        writes as f64 / batched.as_secs_f64(),
        autocommit.as_secs_f64() / batched.as_secs_f64()
    );

    let start = Instant::now();
    let mut rows = 0u64;
    let mut s = query("SELECT i, pad FROM big").fetch(&mut cached);
    while s.try_next().await.unwrap().is_some() {
        rows += 1;
    }
    drop(s);
    let t = start.elapsed();
    println!(
        "stream {rows} rows: {t:?} ({:.0} rows/s; {:.1}x the point-query rate)",
        rows as f64 / t.as_secs_f64(),
        (rows as f64 / t.as_secs_f64()) / (n as f64 / prepared.as_secs_f64())
    );

    cached.close().await.unwrap();
    uncached.close().await.unwrap();
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
