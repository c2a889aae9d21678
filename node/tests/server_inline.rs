//! The inline connection threads of the server (`server::inline`: one thread runs a client
//! connection's protocol loop and its SQLite connection), on real nodes over TCP:
//! * a connection idle inside a write transaction on a node that lost leadership is rolled back
//!   while its client sends nothing (the periodic leadership check), so the node's follower
//!   apply goes on;
//! * a long query streams in order in many ROWS messages (the statement is stepped message by
//!   message), and INTERRUPT ends a query that has no end; the connection then works on;
//! * stopping the node closes its client connections, TCP and in-process, promptly.

mod server_support;

use std::net::SocketAddr;
use std::time::Instant;

use dqlite_node::wire::{DbId, Params, Request, Response, Schema, ValueRef, WireNodeId};
use server_support::nodes::{free_addr, init_tracing, leader_of, start_sqlite, three_sqlite_nodes, wait_for, BOUND};
use server_support::RawClient;
use sqlx_dqlite::DqlitePoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn exec(sql: &str) -> Request<'_> {
    Request::ExecSql { db: DbId(0), sql, params: Params::none(), schema: Schema::V0 }
}

fn query(sql: &str) -> Request<'_> {
    Request::QuerySql { db: DbId(0), sql, params: Params::none(), schema: Schema::V0 }
}

async fn open(c: &mut RawClient, name: &str, vfs: &str) {
    match c.request(&Request::Open { name, flags: 0, vfs }).await.decode() {
        Response::Db { .. } => {}
        other => panic!("OPEN {name}: {other:?}"),
    }
}

async fn exec_ok(c: &mut RawClient, sql: &str) {
    match c.request(&exec(sql)).await.decode() {
        Response::ExecResult { .. } => {}
        other => panic!("{sql}: {other:?}"),
    }
}

/// The single integer a one-row, one-column query returns (`Err` with the failure's code).
async fn query_int(c: &mut RawClient, sql: &str) -> Result<i64, u64> {
    match c.request(&query(sql)).await.decode() {
        Response::Rows(b) => match b.rows.as_slice() {
            [row] => match row.as_slice() {
                [ValueRef::Integer(n)] => Ok(*n),
                other => panic!("{sql}: {other:?}"),
            },
            other => panic!("{sql}: {other:?}"),
        },
        Response::Failure { code, .. } => Err(code),
        other => panic!("{sql}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_write_transaction_is_rolled_back_when_its_node_loses_leadership() {
    init_tracing();
    let (_dirs, addrs, nodes) = three_sqlite_nodes().await;
    let ids: Vec<u64> = nodes.iter().map(|n| n.id().0).collect();
    let leader = leader_of(addrs[0]).await.0;
    let old = ids.iter().position(|id| *id == leader).unwrap();
    let target = ids.iter().position(|id| *id != leader).unwrap();

    // A client on the leader takes the write lock and goes idle.
    let mut idle = RawClient::connect(addrs[old]).await;
    open(&mut idle, "idle.db", "volatile").await;
    exec_ok(&mut idle, "CREATE TABLE t (a INTEGER)").await;
    exec_ok(&mut idle, "BEGIN").await;
    exec_ok(&mut idle, "INSERT INTO t VALUES (1)").await;

    // Leadership moves; the new leader writes.
    let mut admin = RawClient::connect(addrs[old]).await;
    assert_eq!(admin.request(&Request::Transfer { id: WireNodeId(ids[target]) }).await.decode(), Response::Empty);
    let url = format!("dqlite://{}/idle.db?peers={},{}", addrs[target], addrs[old], addrs[3 - old - target]);
    let pool = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    wait_for("a write on the new leader after the transfer", || {
        let pool = &pool;
        async move { sqlx::query("INSERT INTO t VALUES (2)").execute(pool).await.is_ok() }
    })
    .await;

    // The old leader applies that write: its idle connection no longer holds the write lock,
    // though its client sent nothing since.
    let follower_reader = || async {
        let mut reader = RawClient::connect(addrs[old]).await;
        open(&mut reader, "idle.db", "volatile?read=follower&max_staleness=100").await;
        reader
    };
    wait_for("the old leader to apply the new write", || async {
        query_int(&mut follower_reader().await, "SELECT count(*) FROM t WHERE a = 2").await == Ok(1)
    })
    .await;
    let mut reader = follower_reader().await;
    assert_eq!(query_int(&mut reader, "SELECT count(*) FROM t WHERE a = 1").await, Ok(0));

    // The idle client is told, and its row never committed anywhere.
    match idle.request(&exec("INSERT INTO t VALUES (3)")).await.decode() {
        Response::Failure { code, .. } => assert!(code == 10250 || code == 10506, "code {code}"),
        other => panic!("{other:?}"),
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE a <> 2").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 0);
    pool.close().await;
    drop((idle, admin, reader));
    for n in nodes {
        n.shutdown().await;
    }
}

/// Rows of `big`: this many, each with a 200-byte blob (about 50 ROWS messages of 4 KiB per
/// 1,000 rows).
const BIG_ROWS: i64 = 20_000;

async fn single_node_with_big_table() -> (tempfile::TempDir, SocketAddr, dqlite_node::node::Node) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let n = start_sqlite(dir.path(), addr, &[]).await;
    let id = n.id().0;
    wait_for("the node to lead", || async move { leader_of(addr).await.0 == id }).await;
    let mut c = RawClient::connect(addr).await;
    open(&mut c, "big.db", "volatile").await;
    exec_ok(&mut c, "CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)").await;
    let fill = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BIG_ROWS}) \
         INSERT INTO big SELECT i, zeroblob(200) FROM n"
    );
    exec_ok(&mut c, &fill).await;
    (dir, addr, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_streams_in_order_and_interrupt_ends_it() {
    let (_dir, addr, node) = single_node_with_big_table().await;
    let mut c = RawClient::connect(addr).await;
    open(&mut c, "big.db", "volatile").await;

    // Whole: every row once, in order, over many messages.
    c.send(&query("SELECT id, b FROM big ORDER BY id")).await;
    let (mut next, mut messages) = (1i64, 0);
    loop {
        let f = c.recv().await.expect("rows");
        messages += 1;
        let Response::Rows(b) = f.decode() else { panic!("{:?}", f.decode()) };
        for row in &b.rows {
            assert_eq!(row[0], ValueRef::Integer(next));
            assert_eq!(row[1], ValueRef::Blob(&[0u8; 200]));
            next += 1;
        }
        if b.end == dqlite_node::wire::RowsEnd::Done {
            break;
        }
    }
    assert_eq!(next, BIG_ROWS + 1);
    assert!(messages > 100, "{messages} ROWS messages");
    let total = messages;

    // A query without an end (rows made up as it goes) ends only by INTERRUPT: sent after its
    // first message, the stream stops with EMPTY.
    c.send(&query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i, zeroblob(200) FROM n"))
        .await;
    let first = c.recv().await.expect("rows");
    assert!(matches!(first.decode(), Response::Rows(_)));
    c.send(&Request::Interrupt { db: DbId(0) }).await;
    let started = Instant::now();
    let mut parts = 1u64;
    loop {
        let f = c.recv().await.expect("the end of the interrupted query");
        match f.decode() {
            Response::Rows(b) => {
                assert_eq!(b.end, dqlite_node::wire::RowsEnd::Part);
                parts += 1;
            }
            Response::Empty => break,
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < BOUND, "INTERRUPT did not end the query ({parts} messages)");
    }
    println!("interrupted after {parts} ROWS messages (a whole table of {BIG_ROWS} rows: {total})");
    // The connection works on.
    assert_eq!(query_int(&mut c, "SELECT count(*) FROM big").await, Ok(BIG_ROWS));
    exec_ok(&mut c, "INSERT INTO big VALUES (0, NULL)").await;
    drop(c);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_closes_its_client_connections() {
    let (_dir, addr, node) = single_node_with_big_table().await;
    // A TCP client idle in a write transaction, one idle in autocommit, and an in-process one.
    let mut in_tx = RawClient::connect(addr).await;
    open(&mut in_tx, "big.db", "volatile").await;
    exec_ok(&mut in_tx, "BEGIN").await;
    exec_ok(&mut in_tx, "INSERT INTO big VALUES (0, NULL)").await;
    let mut idle = RawClient::connect(addr).await;
    open(&mut idle, "big.db", "volatile").await;
    assert_eq!(query_int(&mut idle, "SELECT count(*) FROM big").await, Ok(BIG_ROWS));
    let mut local = node.local_connector().expect("an in-process connector").connect();
    local.write_all(&dqlite_node::wire::ProtocolVersion::V1.word().to_le_bytes()).await.unwrap();
    local.write_all(&Request::Open { name: "big.db", flags: 0, vfs: "volatile" }.to_bytes().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(BOUND, local.read(&mut buf)).await.expect("OPEN answered").unwrap();
    assert!(n > 0);

    let started = Instant::now();
    tokio::time::timeout(BOUND, node.shutdown()).await.expect("the node stops");
    assert!(in_tx.recv().await.is_none(), "the connection in a transaction was closed");
    assert!(idle.recv().await.is_none(), "the idle connection was closed");
    let n = tokio::time::timeout(BOUND, local.read(&mut buf)).await.expect("the in-process one closes");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() < BOUND);
}
