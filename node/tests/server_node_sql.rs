//! Three real nodes in-process (`Node::start_sqlite`: SQLite layer + runtime + TCP transport +
//! server) and our sqlx driver: writes go through Raft, every node's database file ends up with
//! the same content, and the driver follows a leadership transfer.

mod server_support;

use std::time::{Duration, Instant};

use dqlite_node::wire::{Request, Response, WireNodeId};
use server_support::nodes::{free_addr, init_tracing, leader_of, start_sqlite, three_sqlite_nodes, wait_for, BOUND};
use server_support::RawClient;
use sqlx::{Executor, Row};
use sqlx_dqlite::DqlitePoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_replicates_across_three_tcp_nodes() {
    init_tracing();
    let (dirs, addrs, nodes) = three_sqlite_nodes().await;
    let [n1, n2, n3]: [_; 3] = nodes.try_into().ok().unwrap();

    let url = format!("dqlite://{}/app.db?peers={},{}", addrs[1], addrs[0], addrs[2]);
    let pool = DqlitePoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)").await.unwrap();
    for i in 0..50 {
        let r = sqlx::query("INSERT INTO t (v) VALUES (?)").bind(format!("v{i}")).execute(&pool).await.unwrap();
        assert_eq!(r.rows_affected(), 1);
    }
    let err = sqlx::query("INSERT INTO t (v) VALUES ('v1')").execute(&pool).await.unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().as_deref(), Some("2067"));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t (v) VALUES ('in-tx')").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 51);

    // Leadership moves; the pool follows it.
    let leader = leader_of(addrs[0]).await.0;
    let target = [n1.id().0, n2.id().0, n3.id().0].into_iter().find(|id| *id != leader).unwrap();
    let leader_addr = addrs[[n1.id().0, n2.id().0, n3.id().0].iter().position(|id| *id == leader).unwrap()];
    let mut c = RawClient::connect(leader_addr).await;
    assert_eq!(c.request(&Request::Transfer { id: WireNodeId(target) }).await.decode(), Response::Empty);
    let deadline = Instant::now() + BOUND;
    loop {
        match sqlx::query("INSERT INTO t (v) VALUES ('after-transfer')").execute(&pool).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no write after the transfer: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let row = sqlx::query("SELECT count(*), max(v) FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<i64, _>(0), 52);
    pool.close().await;

    for n in [n1, n2, n3] {
        n.shutdown().await;
    }
    // Every node's file holds the same rows.
    let mut contents = Vec::new();
    for d in &dirs {
        let conn = rusqlite::Connection::open(d.path().join("db").join("app.db")).unwrap();
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
        let vs: Vec<String> = conn
            .prepare("SELECT v FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        contents.push(vs);
    }
    assert_eq!(contents[0].len(), 52);
    assert_eq!(contents[0], contents[1]);
    assert_eq!(contents[0], contents[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_sql_with_a_second_statement_is_refused_and_runs_nothing() {
    use dqlite_node::wire::{DbId, Params, Schema, ValueRef};
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let n = start_sqlite(dir.path(), addr, &[]).await;
    let id = n.id().0;
    wait_for("the node to lead", || async move { leader_of(addr).await.0 == id }).await;
    let mut c = RawClient::connect(addr).await;
    assert!(matches!(
        c.request(&Request::Open { name: "multi.db", flags: 0, vfs: "volatile" }).await.decode(),
        Response::Db { .. }
    ));
    let exec = |sql: &'static str| Request::ExecSql { db: DbId(0), sql, params: Params::none(), schema: Schema::V0 };
    let query = |sql: &'static str| Request::QuerySql { db: DbId(0), sql, params: Params::none(), schema: Schema::V0 };
    assert!(matches!(c.request(&exec("CREATE TABLE t (x INTEGER)")).await.decode(), Response::ExecResult { .. }));
    // Two SELECTs, and a write followed by a SELECT: refused as dqlite does, nothing runs.
    for sql in [
        "SELECT 1; SELECT 2",
        "INSERT INTO t VALUES (7); SELECT x FROM t",
        "INSERT INTO t VALUES (8) RETURNING x; SELECT 1",
    ] {
        match c.request(&query(sql)).await.decode() {
            Response::Failure { code, message } => {
                assert_eq!((code, message), (1, "nonempty statement tail"), "{sql}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    // A tail of comments and semicolons is not a statement.
    match c.request(&query("SELECT count(*) FROM t; -- nothing else\n ; /* done */")).await.decode() {
        Response::Rows(b) => assert_eq!(b.rows, vec![vec![ValueRef::Integer(0)]], "nothing was written"),
        other => panic!("{other:?}"),
    }
    // The connection is still usable and statement ids were not leaked into errors.
    assert!(matches!(c.request(&exec("INSERT INTO t VALUES (9)")).await.decode(), Response::ExecResult { .. }));
    match c.request(&query("SELECT x FROM t")).await.decode() {
        Response::Rows(b) => assert_eq!(b.rows, vec![vec![ValueRef::Integer(9)]]),
        other => panic!("{other:?}"),
    }
    drop(c);
    n.shutdown().await;
}
