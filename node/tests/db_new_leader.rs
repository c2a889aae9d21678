//! A new leader whose state machine still lags the commit index serves statements on the
//! schema the cluster committed, not on its stale local schema.
//!
//! Found by `db_cluster_crash` (seed 2121027042, not replayable by its timing): right after a
//! failover a client's `INSERT` into an existing table failed with "no such table", because
//! the statement was prepared before the new leader had applied the entry that created it
//! (its readiness was checked only after a successful prepare).

mod db_common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use db_common::*;

/// Blocks node `i`'s apply thread until the returned sender is used (or dropped).
fn block_apply(c: &Cluster, i: usize) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut st = c.shared.st.lock().unwrap();
    st.jobs[i].push_back(Box::new(move |_| {
        let _ = rx.recv();
    }));
    c.shared.cv.notify_all();
    tx
}

#[test]
fn a_new_leader_that_has_not_applied_a_create_table_yet_still_runs_an_insert_into_it() {
    let c = Cluster::new(2);
    // Node 1 applies nothing from here on until released.
    let first = block_apply(&c, 1);
    {
        let conn = c.handles[0].open("n.db").unwrap();
        conn.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]).unwrap();
        conn.blocking_exec_sql("INSERT INTO t(v) VALUES ('one')", vec![]).unwrap();
    }
    // Node 1 becomes leader of a new term; a second block holds its apply right after it
    // learnt its role (roles are handled before jobs and entries).
    let second = block_apply(&c, 1);
    c.elect(Some(1));
    drop(first);
    let entries_before = c.last_index();
    let h = c.handles[1].clone();
    let client = std::thread::spawn(move || {
        let conn = h.open("n.db").unwrap();
        conn.blocking_exec_sql("INSERT INTO t(v) VALUES ('two')", vec![])
    });
    // The client waits for the new leader's barrier (proposed, not yet applied): only then
    // let node 1 apply the table's creation, the first row and the barrier.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.last_index() == entries_before {
        assert!(!client.is_finished(), "the insert finished before the new leader was ready: {:?}", client.join());
        assert!(Instant::now() < deadline, "the new leader never proposed its barrier");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(second);
    let r = client.join().unwrap();
    assert_eq!(r.map(|x| x.rows_affected).map_err(|e| e.to_string()), Ok(1));
    c.wait_all_applied();
    let conn = c.handles[1].open("n.db").unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 2);
    assert_eq!(dump(&c.handles[0], "n.db"), dump(&c.handles[1], "n.db"));
}
