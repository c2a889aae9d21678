//! Our sqlx driver (`sqlx-dqlite`) against our server with the rusqlite test backend: CRUD,
//! transactions, savepoints, 10,000 streamed rows, both parameter schemas, constraint errors,
//! the prepared-statement cache, multi-statement EXEC_SQL.

mod server_support;

use futures_util::TryStreamExt;
use server_support::TestServer;
use sqlx::{AssertSqlSafe, Connection, Executor, Row};
use sqlx_dqlite::{DqliteConnection, DqlitePool, DqlitePoolOptions};

async fn pool(s: &TestServer, db: &str, n: u32) -> DqlitePool {
    DqlitePoolOptions::new().max_connections(n).connect(&s.url(db)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_constraint_errors() {
    let s = TestServer::start().await;
    let pool = pool(&s, "crud.db", 4).await;
    pool.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INTEGER)").await.unwrap();
    let mut ids = Vec::new();
    for (name, age) in [("ada", 36), ("bob", 41), ("cy", 29)] {
        let r = sqlx::query("INSERT INTO users (name, age) VALUES (?, ?)")
            .bind(name)
            .bind(age)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(r.rows_affected(), 1);
        ids.push(r.last_insert_rowid());
    }
    assert_eq!(ids, [1, 2, 3]);
    let rows: Vec<(i64, String, Option<i64>)> =
        sqlx::query_as("SELECT id, name, age FROM users ORDER BY id").fetch_all(&pool).await.unwrap();
    assert_eq!(rows[1], (2, "bob".into(), Some(41)));
    let r = sqlx::query("UPDATE users SET age = age + 1 WHERE age > ?").bind(30).execute(&pool).await.unwrap();
    assert_eq!(r.rows_affected(), 2);
    let r = sqlx::query("DELETE FROM users WHERE name = ?").bind("cy").execute(&pool).await.unwrap();
    assert_eq!(r.rows_affected(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 2);

    // Constraint errors carry SQLite's extended code and map to sqlx's kinds.
    let err = sqlx::query("INSERT INTO users (name) VALUES (?)").bind("ada").execute(&pool).await.unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("2067"));
    assert_eq!(db.kind(), sqlx::error::ErrorKind::UniqueViolation);
    let err = sqlx::query("INSERT INTO users (name) VALUES (NULL)").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().unwrap().kind(), sqlx::error::ErrorKind::NotNullViolation);
    let err = sqlx::query("SELEC 1").fetch_all(&pool).await.unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    // Nothing of the failed statements was written.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_savepoints() {
    let s = TestServer::start().await;
    let pool = pool(&s, "tx.db", 2).await;
    pool.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (3)").execute(&mut *tx).await.unwrap();
        // dropped: rolled back
    }
    // Nested: savepoints.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (10)").execute(&mut *tx).await.unwrap();
    {
        let mut inner = tx.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (11)").execute(&mut *inner).await.unwrap();
        inner.rollback().await.unwrap();
    }
    {
        let mut inner = tx.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (12)").execute(&mut *inner).await.unwrap();
        inner.commit().await.unwrap();
    }
    tx.commit().await.unwrap();
    let xs: Vec<i64> = sqlx::query_scalar("SELECT x FROM t ORDER BY x").fetch_all(&pool).await.unwrap();
    assert_eq!(xs, [1, 10, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_stream_and_a_dropped_stream_leaves_the_connection_usable() {
    let s = TestServer::start().await;
    let mut conn = DqliteConnection::connect(&s.url("big.db")).await.unwrap();
    // Multi-statement EXEC_SQL (both statements run).
    conn.execute(
        "CREATE TABLE big (n INTEGER PRIMARY KEY, payload TEXT NOT NULL);
         INSERT INTO big (n, payload)
           WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000)
           SELECT x, printf('row-%05d-%s', x, hex(randomblob(16))) FROM c;",
    )
    .await
    .unwrap();
    let mut expected = 1_i64;
    {
        let mut stream = sqlx::query("SELECT n, payload FROM big ORDER BY n").fetch(&mut conn);
        while let Some(row) = stream.try_next().await.unwrap() {
            let n: i64 = row.get(0);
            let payload: &str = row.get(1);
            assert_eq!(n, expected);
            assert!(payload.starts_with(&format!("row-{n:05}-")));
            expected += 1;
        }
    }
    assert_eq!(expected, 10_001);
    {
        // Abandon a stream after a few rows: INTERRUPT + drain on the next request.
        let mut stream = sqlx::query("SELECT n FROM big").fetch(&mut conn);
        for _ in 0..5 {
            stream.try_next().await.unwrap().unwrap();
        }
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM big").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 10_000);
    conn.close().await.unwrap();
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_parameter_schemas() {
    let s = TestServer::start().await;
    for options in ["", "?statement_cache_capacity=0"] {
        let pool = DqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}{options}", s.url("params.db")))
            .await
            .unwrap();
        pool.execute("CREATE TABLE IF NOT EXISTS sink (x INTEGER)").await.unwrap();
        pool.execute("DELETE FROM sink").await.unwrap();
        // 255 fits a schema-0 tuple; 256 and 1000 need schema 1 (params32), which our server
        // speaks (dqlite >= 1.15.1 behaviour).
        for n in [1_usize, 255, 256, 1000] {
            let mut q = sqlx::query(AssertSqlSafe(format!("SELECT {}", placeholders(n))));
            for i in 0..n as i64 {
                q = q.bind(i * 3);
            }
            let row = q.fetch_one(&pool).await.unwrap();
            assert_eq!(row.len(), n);
            assert_eq!(row.get::<i64, _>(n - 1), (n as i64 - 1) * 3, "{n} params ({options})");
            let rows = vec!["(?)"; n].join(", ");
            let mut q = sqlx::query(AssertSqlSafe(format!("INSERT INTO sink (x) VALUES {rows}")));
            for i in 0..n as i64 {
                q = q.bind(i);
            }
            assert_eq!(q.execute(&pool).await.unwrap().rows_affected(), n as u64);
        }
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM sink").fetch_one(&pool).await.unwrap();
        assert_eq!(total, 1 + 255 + 256 + 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_cache_reuses_statements() {
    let s = TestServer::start().await;
    let mut conn = DqliteConnection::connect(&s.url("cache.db")).await.unwrap();
    conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)").await.unwrap();
    for i in 0..50_i64 {
        sqlx::query("INSERT INTO kv VALUES (?, ?)").bind(format!("k{i}")).bind(i).execute(&mut conn).await.unwrap();
    }
    assert_eq!(conn.cached_statements_size(), 1, "one PREPARE served 50 EXECs");
    for i in 0..50_i64 {
        let v: i64 = sqlx::query_scalar("SELECT v FROM kv WHERE k = ?")
            .bind(format!("k{i}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    assert_eq!(conn.cached_statements_size(), 2);
    conn.clear_cached_statements().await.unwrap();
    assert_eq!(conn.cached_statements_size(), 0);
    let v: i64 = sqlx::query_scalar("SELECT sum(v) FROM kv").fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, (0..50).sum::<i64>());
    // Multi-statement batch through EXEC_SQL, and its effect.
    conn.execute("UPDATE kv SET v = 0 WHERE k = 'k1'; DELETE FROM kv WHERE k = 'k2'; INSERT INTO kv VALUES ('z', 9)")
        .await
        .unwrap();
    let v: i64 = sqlx::query_scalar("SELECT sum(v) FROM kv").fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, (0..50).sum::<i64>() - 1 - 2 + 9);
}
