//! Streaming: a 10,000-row result read with `fetch` (many ROWS batches), and a stream dropped
//! half-way followed by new queries on the same connection.

use futures_util::TryStreamExt;
use sqlx::{Executor, Row};
use sqlx_dqlite::DqlitePool;

use crate::common;

const ROWS: i64 = 10_000;

async fn big_table(db: &str, max_connections: u32) -> DqlitePool {
    let pool = common::pool_for(&common::shared_url(db), max_connections).await;
    pool.execute(
        "CREATE TABLE big (n INTEGER PRIMARY KEY, payload TEXT NOT NULL);
         INSERT INTO big (n, payload)
           WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000)
           SELECT x, printf('row-%05d-%s', x, hex(randomblob(16))) FROM c;",
    )
    .await
    .unwrap();
    pool
}

#[tokio::test]
async fn ten_thousand_rows_stream_in_order() {
    let pool = big_table("stream_big", 2).await;
    let mut stream = sqlx::query("SELECT n, payload FROM big ORDER BY n").fetch(&pool);
    let mut expected = 1_i64;
    let mut payload_bytes = 0_usize;
    while let Some(row) = stream.try_next().await.unwrap() {
        let n: i64 = row.get(0);
        let payload: &str = row.get(1);
        assert_eq!(n, expected, "rows out of order or missing");
        assert!(payload.starts_with(&format!("row-{n:05}-")), "{payload}");
        payload_bytes += payload.len();
        expected += 1;
    }
    assert_eq!(expected - 1, ROWS);
    // ~460 KB of row data: far more than one ROWS message, so PART batches were followed.
    assert!(payload_bytes > 400_000, "{payload_bytes}");

    // The same through query_as with a parameter, collected.
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT n, payload FROM big WHERE n > ? ORDER BY n")
        .bind(ROWS - 2500)
        .fetch(&pool)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2500);
    assert_eq!(rows.first().map(|r| r.0), Some(ROWS - 2499));
    assert_eq!(rows.last().map(|r| r.0), Some(ROWS));
}

#[tokio::test]
async fn dropped_stream_then_new_query_on_the_same_connection() {
    let pool = big_table("stream_drop", 1).await;
    let mut conn = pool.acquire().await.unwrap();
    for round in 0..3 {
        {
            // Parameterized (prepared statement) on even rounds, plain SQL on odd ones.
            let mut stream = if round % 2 == 0 {
                sqlx::query("SELECT n, payload FROM big WHERE n >= ? ORDER BY n").bind(1_i64).fetch(&mut *conn)
            } else {
                sqlx::query("SELECT n, payload FROM big ORDER BY n").fetch(&mut *conn)
            };
            for want in 1..=10_i64 {
                let row = stream.try_next().await.unwrap().expect("10 rows available");
                assert_eq!(row.get::<i64, _>(0), want);
            }
            // dropped with ~9,990 rows still on the server side
        }
        // The very next request on this connection sees clean protocol state.
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM big").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(count, ROWS, "round {round}");
        let last: i64 =
            sqlx::query_scalar("SELECT n FROM big WHERE n = ?").bind(ROWS).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(last, ROWS);
    }
    // A write and a full read still work on it.
    sqlx::query("DELETE FROM big WHERE n > ?").bind(5000_i64).execute(&mut *conn).await.unwrap();
    let all: Vec<i64> = sqlx::query_scalar("SELECT n FROM big ORDER BY n").fetch_all(&mut *conn).await.unwrap();
    assert_eq!(all.len(), 5000);
    drop(conn);

    // Dropped on a pooled connection (released to the pool with a stream half-read): the
    // next user of the pool's only connection gets a working connection.
    {
        let mut stream = sqlx::query("SELECT n FROM big ORDER BY n").fetch(&pool);
        assert!(stream.try_next().await.unwrap().is_some());
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM big").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 5000);
}
