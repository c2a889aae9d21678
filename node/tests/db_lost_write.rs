//! A committed transaction that the leader cannot write to its own WAL (disk full, I/O error
//! in the write-through after Raft committed its entry) loses nothing.
//!
//! SQLite rolls the transaction back locally when the write-through fails, but its entry is
//! committed: the other nodes apply it. The leader must then (a) tell its client that the
//! commit is in the log, not that it failed, (b) never count the entry as in its files (no
//! durable point at or past it, so the log keeps it), (c) stop its state machine at once so it
//! steps down instead of serving a state that lacks a committed write, and (d) after a restart
//! apply the entry again from the log and hold exactly what the others hold. Found while
//! changing the write-through (writes larger than the unix VFS takes in one call failed with
//! SQLITE_FULL after the commit); catalogue row M-DB7 in `MUTANTS.md`.

mod db_common;

use db_common::*;
use dqlite_node::raft::LogIndex;
use dqlite_node::replication::StateMachine;
use dqlite_node::vfs::fault::fail_next_write_through;

const SQLITE_IOERR_LEADERSHIP_LOST: i32 = 10506;

#[test]
fn a_commit_the_leader_cannot_write_to_its_wal_is_kept_by_the_cluster_and_reapplied_at_restart() {
    // A short busy timeout: a refused write below gives up quickly.
    let mut config = config();
    config.busy_timeout = std::time::Duration::from_millis(300);
    let mut c = Cluster::with_config(3, config);
    {
        let conn = c.handles[0].open("m.db").unwrap();
        conn.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]).unwrap();
        for i in 0..5 {
            conn.blocking_exec_sql(&format!("INSERT INTO t(v) VALUES ('before {i}')"), vec![]).unwrap();
        }
    }
    c.wait_all_applied();
    let before = c.last_index();

    fail_next_write_through(&c.dir(0), "m.db").unwrap();
    let conn = c.handles[0].open("m.db").unwrap();
    let err = conn.blocking_exec_sql("INSERT INTO t(v) VALUES ('lost here')", vec![]).unwrap_err();
    match &err {
        dqlite_node::db::DbError::Sql { code, message } => {
            assert_eq!(*code, SQLITE_IOERR_LEADERSHIP_LOST, "{err}");
            assert!(message.contains("in the Raft log"), "the client is not told the commit is in the log: {message}");
        }
        other => panic!("unexpected error: {other}"),
    }
    drop(conn);
    // The entry is in the log and committed (the harness commits what it appends), followed by
    // the barrier that makes the leader's state machine stop now.
    let lost = LogIndex(before + 1);
    assert!(c.last_index() > lost.0, "no barrier after the lost write: log ends at {}", c.last_index());
    let e = c.wait_error(0);
    assert!(e.contains("could not be written to the local WAL"), "unexpected apply error: {e}");

    // The followers hold the row.
    for i in 1..3 {
        wait_for(&format!("node {i} to apply the committed row"), std::time::Duration::from_secs(30), || {
            count(&c.handles[i].open("m.db").unwrap(), "SELECT count(*) FROM t WHERE v = 'lost here'") == 1
        });
    }

    // The leader lacks it, and no checkpoint counts it as in its files: the log keeps it.
    let n = count(&c.handles[0].open("m.db").unwrap(), "SELECT count(*) FROM t WHERE v = 'lost here'");
    assert_eq!(n, 0, "the leader's SQLite kept a transaction whose write-through failed");
    let durable = c.on_sm(0, |sm| {
        sm.checkpoint_all().expect("checkpoint");
        sm.durable_index()
    });
    assert!(durable < lost, "durable index {durable:?} covers the entry the leader's files lack ({lost:?})");
    // Writes to that database stay refused on this node.
    let conn = c.handles[0].open("m.db").unwrap();
    assert!(conn.blocking_exec_sql("INSERT INTO t(v) VALUES ('after, refused')", vec![]).is_err());
    drop(conn);

    // A restart (as after space is freed) applies the entry again from the log.
    c.stop_node(0);
    c.shared.st.lock().unwrap().errors.retain(|(n, _)| *n != 0);
    c.restart_all();
    c.wait_all_applied();
    let d0 = dump(&c.handles[0], "m.db");
    assert!(d0.contains("lost here"), "the restarted leader lacks the committed row:\n{d0}");
    for i in 1..3 {
        assert_eq!(dump(&c.handles[i], "m.db"), d0, "node {i} differs from the restarted node");
        integrity_ok(&c.handles[i], "m.db");
    }
    integrity_ok(&c.handles[0], "m.db");
    let conn = c.handles[0].open("m.db").unwrap();
    conn.blocking_exec_sql("INSERT INTO t(v) VALUES ('after restart')", vec![]).unwrap();
    drop(conn);
    c.wait_all_applied();
    assert_eq!(count(&c.handles[2].open("m.db").unwrap(), "SELECT count(*) FROM t"), 7);
}
