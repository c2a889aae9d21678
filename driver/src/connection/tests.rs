//! Client behaviour against the in-process fake node: discovery, streaming, INTERRUPT/drain,
//! and the retry rules on leader changes and connection loss.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx_core::connection::{ConnectOptions, Connection};
use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_core::row::Row;

use crate::protocol::fake::{FakeNode, Fault, BATCH_ROWS};
use crate::{dqlite_error, is_outcome_unknown, DqliteConnectOptions, DqliteConnection};

fn opts(nodes: &[&FakeNode]) -> DqliteConnectOptions {
    let mut o = DqliteConnectOptions::new()
        .database("test.db")
        .leader_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2));
    let (h, p) = nodes[0].addr.rsplit_once(':').unwrap();
    o = o.host(h, p.parse().unwrap());
    for n in &nodes[1..] {
        let (h, p) = n.addr.rsplit_once(':').unwrap();
        o = o.add_peer(h, p.parse().unwrap());
    }
    o
}

/// Wait (bounded) until the client notices the server closed its idle socket.
async fn wait_until_closed(conn: &mut DqliteConnection) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.session.as_mut().is_some_and(|s| s.is_idle_alive()) {
        assert!(tokio::time::Instant::now() < deadline, "client never saw the close");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn discovery_follows_the_redirect() {
    let leader = FakeNode::leader().await;
    let follower = FakeNode::start().await;
    follower.set_leader(&leader.addr, false);
    let conn = opts(&[&follower]).connect().await.expect("connect");
    assert_eq!(conn.leader_address().unwrap(), leader.addr);
    assert_eq!(follower.count("LEADER"), 1);
    assert_eq!(follower.count("OPEN"), 0);
    assert_eq!(leader.log(), ["LEADER", "CLIENT", "OPEN test.db"]);

    // The next connection from the same options asks the last known leader first.
    let o = opts(&[&follower]);
    let _first = o.connect().await.unwrap();
    let _second = o.connect().await.unwrap();
    assert_eq!(follower.count("LEADER"), 2, "only the first search asked the follower");
    assert_eq!(leader.count("OPEN"), 3);
}

#[tokio::test]
async fn discovery_retries_until_a_leader_is_known_and_gives_up_after_the_budget() {
    let node = FakeNode::leader().await;
    node.state.leader_unknown_for.store(3, std::sync::atomic::Ordering::SeqCst);
    let conn = opts(&[&node]).connect().await.expect("connect after retries");
    assert_eq!(conn.leader_address().unwrap(), node.addr);
    assert_eq!(node.count("LEADER"), 4);

    let lost = FakeNode::start().await; // never knows a leader
    let err = opts(&[&lost]).leader_timeout(Duration::from_millis(400)).connect().await.expect_err("no leader");
    assert!(err.to_string().contains("no available dqlite leader"), "{err}");
}

#[tokio::test]
async fn rows_stream_across_part_batches_and_are_read_on_demand() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let base = conn.session.as_ref().unwrap().frames_received();
    let n = BATCH_ROWS * 5 + 3;
    {
        let mut s = query(sqlx_core::sql_str::AssertSqlSafe(format!("SELECT {n}"))).fetch(&mut conn);
        let first = s.try_next().await.unwrap().unwrap();
        assert_eq!(first.get::<i64, _>(0), 0);
        drop(s);
    }
    // Only the first ROWS message was read although the server sent all six.
    assert_eq!(conn.session.as_ref().unwrap().frames_received(), base + 1);
    assert!(conn.session.as_ref().unwrap().needs_recovery());

    // The next request interrupts and drains the abandoned result first.
    let rows = query("SELECT 25").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 25);
    assert_eq!(rows[24].get::<i64, _>("n"), 24);
    let log = node.log();
    let i = log.iter().position(|l| l == "INTERRUPT").expect("INTERRUPT sent");
    assert_eq!(log[i + 1], "QUERY_SQL SELECT 25");

    // A fully consumed stream needs no recovery.
    let all: Vec<_> =
        query(sqlx_core::sql_str::AssertSqlSafe(format!("SELECT {n}"))).fetch(&mut conn).try_collect().await.unwrap();
    assert_eq!(all.len(), n);
    assert!(!conn.session.as_ref().unwrap().needs_recovery());
}

#[tokio::test]
async fn statements_without_columns_fall_back_to_exec_once() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    for _ in 0..3 {
        let r = query("INSERT INTO t VALUES (?)").bind(1i64).execute(&mut conn).await.unwrap();
        assert_eq!((r.rows_affected(), r.last_insert_rowid()), (1, 7));
    }
    assert_eq!(node.count("PREPARE"), 1);
    assert_eq!(node.count("QUERY #0"), 1, "QUERY tried once, then remembered");
    assert_eq!(node.count("EXEC #0"), 3);
    conn.execute("CREATE TABLE x (a)").await.unwrap();
    conn.execute("CREATE TABLE x (a)").await.unwrap();
    assert_eq!(node.count("QUERY_SQL CREATE"), 1);
    assert_eq!(node.count("EXEC_SQL CREATE"), 2);
}

#[tokio::test]
async fn not_leader_is_retried_on_the_new_leader_outside_transactions() {
    let a = FakeNode::leader().await;
    let b = FakeNode::leader().await;
    let mut conn = opts(&[&a, &b]).connect().await.unwrap();
    assert_eq!(conn.leader_address().unwrap(), a.addr);
    // Leadership moves to b.
    a.set_leader(&b.addr, false);
    let rows = query("SELECT 3").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(conn.leader_address().unwrap(), b.addr);
    assert_eq!(a.count("QUERY_SQL SELECT 3"), 1);
    assert_eq!(b.count("QUERY_SQL SELECT 3"), 1);
}

#[tokio::test]
async fn not_leader_inside_a_transaction_is_not_retried() {
    let a = FakeNode::leader().await;
    let b = FakeNode::leader().await;
    let mut conn = opts(&[&a, &b]).connect().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    a.set_leader(&b.addr, false);
    let err = tx.execute("INSERT INTO t VALUES (1)").await.expect_err("lost");
    assert!(dqlite_error(&err).unwrap().is_transaction_lost(), "{err}");
    assert_eq!(b.count("QUERY_SQL INSERT") + b.count("EXEC_SQL INSERT"), 0);
    // Further statements fail too; rollback succeeds and the connection recovers.
    let err = tx.execute("INSERT INTO t VALUES (2)").await.expect_err("still lost");
    assert!(dqlite_error(&err).unwrap().is_transaction_lost());
    tx.rollback().await.expect("rollback of a lost transaction");
    assert_eq!(conn.transaction_depth, 0);
    conn.execute("INSERT INTO t VALUES (3)").await.expect("works on the new leader");
    assert_eq!(b.count("EXEC_SQL INSERT INTO t VALUES (3)"), 1);
}

#[tokio::test]
async fn idle_connection_closed_by_the_server_reconnects_before_sending() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    conn.execute("INSERT INTO t VALUES (1)").await.unwrap();
    node.kill_connections();
    wait_until_closed(&mut conn).await;
    conn.execute("INSERT INTO t VALUES (2)").await.expect("transparent reconnect");
    assert_eq!(node.state.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Each statement reached the server exactly once.
    assert_eq!(node.count("EXEC_SQL INSERT INTO t VALUES (2)"), 1);
}

#[tokio::test]
async fn a_pooled_request_probes_the_socket_once_and_a_stale_probe_is_repeated() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let probes = |c: &DqliteConnection| c.session.as_ref().map_or(0, |s| s.probes());
    // What a pool does per request: ping on release, ping on acquire, then the request.
    // A long trust makes the count independent of the machine's speed.
    conn.session.as_mut().unwrap().set_probe_trust(Duration::from_secs(60));
    conn.ping().await.unwrap();
    conn.ping().await.unwrap();
    conn.execute("INSERT INTO t VALUES (1)").await.unwrap();
    assert_eq!(probes(&conn), 1, "one kernel probe for release, acquire and the request");
    // A probe older than the trust is repeated: every check asks the kernel again.
    conn.session.as_mut().unwrap().set_probe_trust(Duration::ZERO);
    conn.ping().await.unwrap();
    conn.ping().await.unwrap();
    conn.execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(probes(&conn), 4);
    // A close is noticed by the next check once the trusted probe is stale, and stays noticed.
    node.kill_connections();
    wait_until_closed(&mut conn).await;
    conn.session.as_mut().unwrap().set_probe_trust(Duration::from_secs(60));
    assert!(!conn.session.as_mut().unwrap().is_idle_alive_recent(), "a failed probe is not forgotten");
    conn.execute("INSERT INTO t VALUES (3)").await.expect("transparent reconnect");
    assert_eq!(node.count("EXEC_SQL INSERT INTO t VALUES (3)"), 1);
}

#[tokio::test]
async fn ping_detects_dead_and_deposed_connections() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    conn.ping().await.expect("ping");
    assert_eq!(node.count("QUERY_SQL SELECT 1"), 0, "fresh connection: no round trip");
    conn.ping_fresh = Duration::ZERO;
    conn.ping().await.expect("ping");
    assert_eq!(node.count("QUERY_SQL SELECT 1"), 1);
    node.set_leader("", false);
    assert!(conn.ping().await.is_err(), "deposed leader");
    node.set_leader(&node.addr.clone(), true);
    let mut conn = opts(&[&node]).connect().await.unwrap();
    node.kill_connections();
    wait_until_closed(&mut conn).await;
    assert!(conn.ping().await.is_err(), "dead socket");
}

#[tokio::test]
async fn leadership_lost_during_commit_is_outcome_unknown_and_not_replayed() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)").await.unwrap();
    node.fault("EXEC_SQL COMMIT", Fault::Fail(10506, "leadership lost"));
    let err = tx.commit().await.expect_err("outcome unknown");
    assert!(is_outcome_unknown(&err), "{err}");
    assert_eq!(err.as_database_error().unwrap().kind(), sqlx_core::error::ErrorKind::Other);
    assert_eq!(node.count("EXEC_SQL COMMIT"), 1);
    assert_eq!(conn.transaction_depth, 0);
    // The connection reconnects for the next statement; no ROLLBACK/COMMIT is replayed.
    conn.execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(node.count("EXEC_SQL COMMIT"), 1);
    assert_eq!(node.count("EXEC_SQL ROLLBACK"), 0);
}

#[tokio::test]
async fn connection_lost_after_commit_was_sent_is_outcome_unknown() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let tx = conn.begin().await.unwrap();
    node.fault("EXEC_SQL COMMIT", Fault::Close);
    let err = tx.commit().await.expect_err("outcome unknown");
    assert!(is_outcome_unknown(&err), "{err}");
    assert_eq!(node.count("EXEC_SQL COMMIT"), 1);
}

#[tokio::test]
async fn autocommit_write_lost_after_send_is_not_retried() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    conn.execute("DELETE FROM t").await.unwrap(); // learn: no columns
    node.fault("EXEC_SQL DELETE FROM t", Fault::Close);
    let err = conn.execute("DELETE FROM t").await.expect_err("lost");
    assert!(is_outcome_unknown(&err), "{err}");
    assert_eq!(node.count("EXEC_SQL DELETE FROM t"), 2);
    // A QUERY lost after send may have written (`INSERT ... RETURNING`): outcome unknown too,
    // and not retried either.
    node.fault("QUERY_SQL SELECT 5", Fault::Close);
    let err = query("SELECT 5").fetch_all(&mut conn).await.expect_err("lost");
    assert!(is_outcome_unknown(&err), "{err}");
    assert_eq!(node.count("QUERY_SQL SELECT 5"), 1);
}

#[tokio::test]
async fn too_many_parameters_on_an_old_server_is_refused_before_sending() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    for n in [256usize, 300, 512] {
        let sql = format!("INSERT INTO t VALUES ({})", vec!["?"; n].join(","));
        let mut q = query(sqlx_core::sql_str::AssertSqlSafe(sql));
        for i in 0..n as i64 {
            q = q.bind(i);
        }
        let err = q.execute(&mut conn).await.expect_err("too many");
        let e = dqlite_error(&err).expect("dqlite error");
        assert_eq!(e.reason(), crate::DqliteErrorReason::TooManyParameters);
        assert!(err.to_string().contains("more than 255 parameters"));
    }
    // dqlite 1.11 would misread a params32 tuple: nothing with more than 255 values was sent,
    // and the capability was probed once, side-effect free.
    assert!(node.log().iter().all(|l| !l.starts_with("EXEC #") && !l.starts_with("QUERY #")));
    assert_eq!(node.count("PREPARE/1 SELECT 1"), 1);
    assert_eq!(node.count("FINALIZE"), 1);
}

#[tokio::test]
async fn more_than_255_parameters_use_params32_on_a_new_server() {
    let node = FakeNode::leader().await;
    node.state.params32.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let sql = format!("INSERT INTO t VALUES ({})", vec!["?"; 300].join(","));
    let mut q = query(sqlx_core::sql_str::AssertSqlSafe(sql));
    for i in 0..300i64 {
        q = q.bind(i);
    }
    q.execute(&mut conn).await.expect("params32 accepted");
    assert_eq!(node.count("EXEC #0 (300)"), 1, "{:?}", node.log());
}

#[tokio::test]
async fn dropped_transaction_rolls_back_before_the_next_request() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    {
        let mut tx = conn.begin().await.unwrap();
        let mut sp = tx.begin().await.unwrap();
        sp.execute("INSERT INTO t VALUES (1)").await.unwrap();
    }
    assert_eq!(conn.transaction_depth, 0);
    assert!(conn.should_flush());
    conn.execute("INSERT INTO t VALUES (2)").await.unwrap();
    let log = node.log();
    let tail: Vec<_> = log.iter().rev().take(4).rev().cloned().collect();
    assert_eq!(
        tail,
        [
            "EXEC_SQL ROLLBACK TO SAVEPOINT _sqlx_savepoint_1",
            "EXEC_SQL ROLLBACK",
            // Unknown argument-less SQL: QUERY_SQL first, refused without running, then EXEC.
            "QUERY_SQL INSERT INTO t VALUES (2)",
            "EXEC_SQL INSERT INTO t VALUES (2)"
        ]
    );
}

#[tokio::test]
async fn request_timeout_drops_a_silent_leader_and_reports_the_write_unknown() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).request_timeout(Duration::from_millis(200)).connect().await.unwrap();
    conn.execute("UPDATE t SET x = 1").await.unwrap();
    node.fault("EXEC_SQL UPDATE", Fault::Hang);
    let err = conn.execute("UPDATE t SET x = 1").await.expect_err("timed out");
    assert!(is_outcome_unknown(&err), "{err}");
    assert!(conn.session.is_none(), "the silent connection is dropped");
    // The next statement runs on a fresh connection.
    conn.execute("UPDATE t SET x = 2").await.unwrap();
    assert_eq!(node.state.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_forgotten_statement_is_prepared_again() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let q = || query("SELECT 2 WHERE ? = ?").bind(1i64).bind(1i64);
    assert_eq!(q().fetch_all(&mut conn).await.unwrap().len(), 2);
    node.fault("QUERY #0", Fault::Fail(12, "no statement with the given id"));
    assert_eq!(q().fetch_all(&mut conn).await.unwrap().len(), 2);
    assert_eq!(node.count("PREPARE"), 2);
    assert_eq!(node.state.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn argument_count_must_match_the_prepared_statement() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    let err = query("INSERT INTO t VALUES (?)").bind(1i64).bind(2i64).execute(&mut conn).await.expect_err("mismatch");
    assert!(matches!(err, sqlx_core::Error::InvalidArgument(_)), "{err}");
    assert_eq!(node.count("EXEC") + node.count("QUERY #"), 0, "nothing ran");
}

#[tokio::test]
async fn busy_statements_outside_a_transaction_wait_for_the_lock() {
    let node = FakeNode::leader().await;
    let mut conn = opts(&[&node]).connect().await.unwrap();
    conn.execute("DELETE FROM t").await.unwrap(); // learn: no columns
    node.fault("EXEC_SQL DELETE FROM t", Fault::Fail(5, "database is locked"));
    node.fault("EXEC_SQL DELETE FROM t", Fault::Fail(5, "database is locked"));
    conn.execute("DELETE FROM t").await.expect("retried until the lock was free");
    assert_eq!(node.count("EXEC_SQL DELETE FROM t"), 4);
    // Inside a transaction the error is the caller's.
    let mut tx = sqlx_core::connection::Connection::begin(&mut conn).await.unwrap();
    node.fault("EXEC_SQL DELETE FROM t", Fault::Fail(5, "database is locked"));
    let err = tx.execute("DELETE FROM t").await.expect_err("busy inside a transaction");
    assert!(dqlite_error(&err).unwrap().is_busy(), "{err}");
    tx.rollback().await.unwrap();
    // busy_timeout = 0: fail at once.
    let mut conn = opts(&[&node]).busy_timeout(Duration::ZERO).connect().await.unwrap();
    conn.execute("DELETE FROM t").await.unwrap();
    node.fault("EXEC_SQL DELETE FROM t", Fault::Fail(5, "database is locked"));
    let err = conn.execute("DELETE FROM t").await.expect_err("no waiting");
    assert!(dqlite_error(&err).unwrap().is_busy(), "{err}");
}
