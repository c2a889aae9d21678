//! A local writer gives up on its commit (commit timeout) while the apply thread is applying
//! that very entry: past `resolve_unresolved`, before `apply_frames` matched it against the
//! writer's pending commit. The entry committed, so once its frames are applied its outcome is
//! known and the write gate must open again, without waiting for some later entry (catalogue
//! row M-DB5 in `MUTANTS.md`; found as a 30 s "database is locked" in `db_cluster_crash` seed
//! 2121027795). The window is held open with `db::pause_next_apply` (feature `harness`).

mod db_common;

use std::time::{Duration, Instant};

use db_common::*;

#[test]
fn a_commit_timeout_during_the_apply_of_its_own_entry_reopens_writes_once_applied() {
    let mut cfg = config();
    // Long enough for the apply thread to reach the entry (and the pause) first even on a busy
    // machine: the writer must give up while the apply thread is held there.
    cfg.commit_timeout = Duration::from_secs(1);
    // The next write waits at most this long at the write gate (then SQLITE_BUSY): far below
    // the 30 s of the original failure.
    cfg.busy_timeout = Duration::from_secs(3);
    let c = Cluster::with_config(2, cfg);
    let conn = c.open_with_table_t("late.db");

    // The entry commits at once (replication not held); node 0's apply thread stops on it.
    let pause = dqlite_node::db::pause_next_apply(&c.dir(0), "late.db").unwrap();
    let started = Instant::now();
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    let gave_up_after = started.elapsed();
    assert!(
        pause.wait_reached(Duration::ZERO),
        "the apply thread did not reach the entry before the writer gave up (window not exercised): {e}"
    );
    // (a) The writer was told the outcome is unknown.
    assert_eq!(e.code(), dqlite_node::db::SQLITE_IOERR_COMMIT_TIMEOUT, "{e}");
    assert!(e.to_string().contains("outcome is unknown"), "{e}");
    assert!(gave_up_after >= Duration::from_millis(900), "gave up before its commit timeout: {gave_up_after:?}");
    let last = c.last_index();
    assert_eq!(c.shared.st.lock().unwrap().commit, last, "the entry is committed");

    pause.release();
    c.wait_all_applied();
    // (b) The entry's row is there, on the leader (applied as a follower would) and elsewhere.
    for i in 0..2 {
        let r = c.handles[i].open("late.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 1"), 1, "node {i}");
    }

    // (c) The next write on that database goes through the gate with no other entry applied
    // in between (nothing else was proposed: the log still ends at the entry).
    assert_eq!(c.last_index(), last, "an entry was proposed in between");
    let started = Instant::now();
    let r = conn.blocking_exec_sql("INSERT INTO t VALUES (2)", vec![]);
    let took = started.elapsed();
    if let Err(e) = r {
        panic!("the next write failed after {took:?} (the write gate stayed closed): {e}");
    }
    println!("the next write took {took:?}");
    assert_eq!(c.last_index(), last + 1, "the next write is the only entry after the given-up one");
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("late.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a IN (1, 2)"), 2, "node {i}");
        assert_eq!(count(&r, "SELECT count(*) FROM t"), 2, "node {i}");
    }
    assert_eq!(dump(&c.handles[0], "late.db"), dump(&c.handles[1], "late.db"));
}
