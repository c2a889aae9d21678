//! Driver smoke tests against one real dqlite 1.11 node (`dqlite-demo` from Debian's
//! `go-dqlite`). The cross-crate suite in the workspace's `tests/` covers 3-node clusters and
//! failover; these check the driver's protocol handling on the reference server quickly.
//!
//! A missing `dqlite-demo` is a test failure, never a skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use futures_util::TryStreamExt;
use sqlx_core::connection::Connection;
use sqlx_core::error::ErrorKind;
use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_core::query_as::query_as;
use sqlx_core::query_scalar::query_scalar;
use sqlx_core::row::Row;
use sqlx_dqlite::{DqliteConnectOptions, DqliteConnection, DqlitePoolOptions};

struct Node {
    child: Child,
    dir: PathBuf,
    db_addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

/// Start a single-node cluster; panics if dqlite-demo is missing.
fn start_node() -> Node {
    let bin = std::env::var("DQLITE_DEMO").unwrap_or_else(|_| "dqlite-demo".into());
    if Command::new(&bin).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        panic!("{bin} not found: these tests need real dqlite nodes (apt-get install -y go-dqlite)");
    }
    let db_port = free_port();
    let api_port = free_port();
    let dir = std::env::temp_dir().join(format!("sqlx-dqlite-test-{}-{db_port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create node dir");
    let db_addr = format!("127.0.0.1:{db_port}");
    let child = Command::new(&bin)
        .args(["--api", &format!("127.0.0.1:{api_port}"), "--db", &db_addr, "-D"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dqlite-demo");
    Node { child, dir, db_addr }
}

fn url(node: &Node, db: &str) -> String {
    format!("dqlite://{}/{db}?leader_timeout=20s", node.db_addr)
}

async fn connect(node: &Node, db: &str) -> DqliteConnection {
    // The node needs a moment to elect itself: the driver's leader search waits for it
    // (bounded by leader_timeout).
    let opts: DqliteConnectOptions = url(node, db).parse().expect("url");
    DqliteConnection::connect_with(&opts).await.expect("connect")
}

#[tokio::test]
async fn crud_types_and_errors() {
    let node = start_node();
    let mut conn = connect(&node, "crud.db").await;

    conn.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score REAL, \
         data BLOB, flag BOOLEAN, at DATETIME, CHECK (score >= 0))",
    )
    .await
    .expect("create via the QUERY→EXEC fallback");

    let r = query("INSERT INTO t (name, score, data, flag, at) VALUES (?, ?, ?, ?, ?)")
        .bind("alice")
        .bind(1.5f64)
        .bind(vec![0u8, 1, 2, 255])
        .bind(true)
        .bind("2024-01-02 03:04:05")
        .execute(&mut conn)
        .await
        .expect("insert");
    assert_eq!(r.rows_affected(), 1);
    assert_eq!(r.last_insert_rowid(), 1);
    // Same statement again: served from the statement cache, known to return no rows.
    let r = query("INSERT INTO t (name, score, data, flag, at) VALUES (?, ?, ?, ?, ?)")
        .bind("bob")
        .bind(None::<f64>)
        .bind(None::<Vec<u8>>)
        .bind(false)
        .bind(None::<String>)
        .execute(&mut conn)
        .await
        .expect("insert 2");
    assert_eq!(r.last_insert_rowid(), 2);
    assert_eq!(conn.cached_statements_size(), 1);

    let row = query("SELECT id, name, score, data, flag, at FROM t WHERE name = ?")
        .bind("alice")
        .fetch_one(&mut conn)
        .await
        .expect("select");
    assert_eq!(row.get::<i64, _>("id"), 1);
    assert_eq!(row.get::<String, _>("name"), "alice");
    assert_eq!(row.get::<f64, _>("score"), 1.5);
    assert_eq!(row.get::<Vec<u8>, _>("data"), vec![0, 1, 2, 255]);
    assert!(row.get::<bool, _>("flag"));
    assert_eq!(row.get::<String, _>("at"), "2024-01-02 03:04:05");

    let (score, data, at): (Option<f64>, Option<Vec<u8>>, Option<String>) =
        query_as("SELECT score, data, at FROM t WHERE name = 'bob'").fetch_one(&mut conn).await.expect("nulls");
    assert_eq!((score, data, at), (None, None, None), "\"\" in a DATETIME column is NULL");

    let err = query("INSERT INTO t (name) VALUES (?)").bind("alice").execute(&mut conn).await.expect_err("duplicate");
    let db = err.as_database_error().expect("database error");
    assert_eq!(db.kind(), ErrorKind::UniqueViolation, "{db}");
    assert_eq!(db.code().as_deref(), Some("2067"));

    let err = query("INSERT INTO t (name, score) VALUES ('carol', -1)").execute(&mut conn).await.expect_err("check");
    assert_eq!(err.as_database_error().unwrap().kind(), ErrorKind::CheckViolation);
    let err = query("INSERT INTO t (name) VALUES (NULL)").execute(&mut conn).await.expect_err("not null");
    assert_eq!(err.as_database_error().unwrap().kind(), ErrorKind::NotNullViolation);

    let err = conn.execute("SELEC 1").await.expect_err("syntax");
    assert!(err.to_string().contains("syntax error"), "{err}");

    // More than 255 parameters on a server without params32 tuples: a clear error, decided
    // before sending (dqlite 1.11 would read 256 or 512 values as none and run the statement).
    conn.execute("CREATE TABLE sink (x INTEGER)").await.unwrap();
    for n in [256usize, 300, 512] {
        // (Not coalesce(): SQLite functions take at most 127 arguments.)
        let sql = format!("INSERT INTO sink (x) VALUES ({})", vec!["?"; n].join(" + "));
        let mut q = query(sqlx_core::sql_str::AssertSqlSafe(sql));
        for i in 0..n as i64 {
            q = q.bind(i + 1);
        }
        let err = q.execute(&mut conn).await.expect_err("too many params");
        assert!(err.to_string().contains("more than 255 parameters"), "{n}: unexpected error: {err}");
    }
    let written: i64 = query_scalar("SELECT count(*) FROM sink").fetch_one(&mut conn).await.unwrap();
    assert_eq!(written, 0, "nothing was written");
    // 255 works.
    let sql = format!("SELECT {}", vec!["?"; 255].join(", "));
    let mut q = query(sqlx_core::sql_str::AssertSqlSafe(sql.clone()));
    for i in 0..255i64 {
        q = q.bind(i);
    }
    let row = q.fetch_one(&mut conn).await.expect("255 params");
    assert_eq!(row.get::<i64, _>(254), 254);

    // Several statements with arguments: split by the driver, arguments bound across them.
    let r = query("INSERT INTO t (name) VALUES (?); INSERT INTO t (name) VALUES (?)")
        .bind("x1")
        .bind("x2")
        .execute(&mut conn)
        .await
        .expect("multi-statement with arguments");
    assert_eq!(r.rows_affected(), 2);
    let n: i64 = query_scalar("SELECT count(*) FROM t WHERE name LIKE 'x%'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 2);
    // Too many arguments for the statements: refused before anything runs.
    let err = query("INSERT INTO t (name) VALUES (?); INSERT INTO t (name) VALUES ('x4')")
        .bind("x3")
        .bind("x5")
        .execute(&mut conn)
        .await
        .expect_err("argument no statement uses");
    assert!(matches!(err, sqlx_core::Error::InvalidArgument(_)), "{err}");
    let n: i64 = query_scalar("SELECT count(*) FROM t WHERE name LIKE 'x%'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 2, "nothing ran");

    conn.ping().await.expect("ping");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn streaming_interrupt_and_transactions() {
    let node = start_node();
    let mut conn = connect(&node, "stream.db").await;

    // A multi-statement batch without arguments (as migrations send).
    conn.execute(
        "CREATE TABLE n (i INTEGER PRIMARY KEY, pad TEXT); \
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) \
         INSERT INTO n SELECT x, 'padding-padding' FROM c;",
    )
    .await
    .expect("batch");

    // 10,000 rows across many PART batches.
    let mut s = query("SELECT i, pad FROM n ORDER BY i").fetch(&mut conn);
    let mut expect = 1i64;
    while let Some(row) = s.try_next().await.expect("row") {
        assert_eq!(row.get::<i64, _>(0), expect);
        expect += 1;
    }
    drop(s);
    assert_eq!(expect, 10_001);

    // Drop a stream after a few rows; the connection must stay usable.
    {
        let mut s = query("SELECT i FROM n ORDER BY i").fetch(&mut conn);
        for _ in 0..3 {
            s.try_next().await.expect("row").expect("some");
        }
    }
    let n: i64 = query_scalar("SELECT count(*) FROM n").fetch_one(&mut conn).await.expect("query after dropped stream");
    assert_eq!(n, 10_000);

    // Transactions: commit, rollback, savepoints, rollback on drop.
    {
        let mut tx = conn.begin().await.expect("begin");
        tx.execute("DELETE FROM n WHERE i > 10").await.expect("delete");
        {
            let mut sp = tx.begin().await.expect("savepoint");
            sp.execute("DELETE FROM n").await.expect("delete all");
            sp.rollback().await.expect("rollback to savepoint");
        }
        let inner: i64 = query_scalar("SELECT count(*) FROM n").fetch_one(&mut *tx).await.expect("count in tx");
        assert_eq!(inner, 10);
        tx.rollback().await.expect("rollback");
    }
    let n: i64 = query_scalar("SELECT count(*) FROM n").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 10_000);
    {
        let mut tx = conn.begin().await.expect("begin");
        tx.execute("DELETE FROM n WHERE i > 100").await.expect("delete");
        // dropped without commit
    }
    let n: i64 = query_scalar("SELECT count(*) FROM n").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 10_000, "dropped transaction rolled back");
    {
        let mut tx = conn.begin().await.expect("begin");
        tx.execute("DELETE FROM n WHERE i > 100").await.expect("delete");
        tx.commit().await.expect("commit");
    }
    let n: i64 = query_scalar("SELECT count(*) FROM n").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 100);
}

#[tokio::test]
async fn pool_reuses_connections() {
    let node = start_node();
    let pool = DqlitePoolOptions::new().max_connections(3).connect(&url(&node, "pool.db")).await.expect("pool");
    pool.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)").await.unwrap();
    for i in 0..20i64 {
        query("INSERT INTO kv VALUES (?, ?)").bind(format!("k{i}")).bind(i).execute(&pool).await.unwrap();
    }
    let sum: i64 = query_scalar("SELECT sum(v) FROM kv").fetch_one(&pool).await.unwrap();
    assert_eq!(sum, 190);
    // fetch_optional leaves the rest of a result to be drained lazily.
    let first: Option<(String,)> = query_as("SELECT k FROM kv ORDER BY k").fetch_optional(&pool).await.unwrap();
    assert_eq!(first.unwrap().0, "k0");
    let n: i64 = query_scalar("SELECT count(*) FROM kv").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 20);
    pool.close().await;
}

#[tokio::test]
async fn migrations_and_database_lifecycle() {
    use sqlx_core::migrate::{MigrateDatabase, Migration, MigrationType, Migrator};
    use sqlx_core::sql_str::SqlStr;
    use sqlx_dqlite::Dqlite;

    let node = start_node();
    let url = url(&node, "migrate.db");
    assert!(!Dqlite::database_exists(&url).await.unwrap(), "fresh database does not exist");
    Dqlite::create_database(&url).await.unwrap();
    assert!(Dqlite::database_exists(&url).await.unwrap());

    let migrator = Migrator::with_migrations(vec![
        Migration::new(
            1,
            "users".into(),
            MigrationType::Simple,
            SqlStr::from_static(
                "-- first migration\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n\
                 CREATE INDEX users_name ON users (name);\n\
                 INSERT INTO users (name) VALUES ('root');",
            ),
            false,
        ),
        Migration::new(
            2,
            "posts".into(),
            MigrationType::Simple,
            SqlStr::from_static(
                "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id)); \
                 CREATE VIEW v AS SELECT * FROM posts;",
            ),
            false,
        ),
    ]);
    let pool = DqlitePoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    migrator.run(&pool).await.expect("first run");
    migrator.run(&pool).await.expect("second run is a no-op");
    let applied: i64 =
        query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, 2);
    let users: i64 = query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(users, 1, "second run did not re-apply");
    pool.close().await;

    Dqlite::drop_database(&url).await.unwrap();
    let mut conn = connect(&node, "migrate.db").await;
    let objects: i64 = query_scalar("SELECT count(*) FROM sqlite_master").fetch_one(&mut conn).await.unwrap();
    assert_eq!(objects, 0, "drop_database empties the database");
}

#[tokio::test]
async fn any_driver() {
    use sqlx_core::any::driver::install_drivers;
    use sqlx_core::any::AnyConnection;

    let node = start_node();
    // Other tests in this binary do not install drivers; ignore "already installed".
    let _ = install_drivers(&[sqlx_dqlite::any::DRIVER]);
    let mut conn = AnyConnection::connect(&url(&node, "any.db")).await.expect("any connect");
    assert_eq!(conn.backend_name(), "dqlite");
    conn.execute("CREATE TABLE a (x INTEGER, y TEXT, f BOOLEAN)").await.unwrap();
    query("INSERT INTO a VALUES (?, ?, ?)").bind(5i64).bind("five").bind(true).execute(&mut conn).await.unwrap();
    let row = query("SELECT x, y, f FROM a").fetch_one(&mut conn).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), 5);
    assert_eq!(row.get::<String, _>(1), "five");
    assert!(row.get::<bool, _>(2));
}

/// What `#[sqlx::test]` expands to, without the macro: `TestSupport` gives each test its own
/// (emptied) database from `DATABASE_URL`.
#[test]
fn test_support_runs_a_pool_test() {
    use sqlx_core::pool::Pool;
    use sqlx_core::testing::{TestArgs, TestFn};
    use sqlx_dqlite::Dqlite;

    let node = start_node();
    // Only this test in the binary reads DATABASE_URL.
    std::env::set_var("DATABASE_URL", url(&node, "unused.db"));

    async fn body(pool: Pool<Dqlite>) -> Result<(), sqlx_core::Error> {
        pool.execute("CREATE TABLE only_in_test (x INTEGER)").await?;
        let db: String = query_scalar("SELECT name FROM pragma_database_list").fetch_one(&pool).await?;
        assert_eq!(db, "main");
        Ok(())
    }
    let f: fn(Pool<Dqlite>) -> _ = body;
    // Twice: the second run must find the database emptied again.
    for _ in 0..2 {
        let r: Result<(), sqlx_core::Error> = f.run_test(TestArgs::new("real_node::test_support_runs_a_pool_test"));
        r.expect("test body");
    }
}
