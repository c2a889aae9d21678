//! A leader's writer has published its commit and released the write lock, but the db layer
//! has not yet noted the release (`DbHooks::write_unlocked`: the VFS lets the next writer take
//! the lock first) when the next writer reaches its commit. The first commit must not stay
//! "unpublished": a snapshot point (or a threshold checkpoint) waits for that publication on
//! the apply thread, and the next writer's commit waits for the apply thread, so every commit
//! of the node stalled for `PUBLISH_WAIT` (5 s) and the snapshot failed (catalogue row M-DB6
//! in `MUTANTS.md`; seen as 5 s gaps ending in "a commit is still being published" in about one
//! run in forty of `runtime_snapshot_copy`). The window is held open with
//! `db::pause_next_unlock` (feature `harness`).

mod db_common;

use std::time::{Duration, Instant};

use db_common::*;
use dqlite_node::replication::StateMachine;

#[test]
fn a_snapshot_point_does_not_wait_for_a_commit_published_before_the_next_writer_took_the_lock() {
    let c = Cluster::new(2);
    let _setup = c.open_with_table_t("race.db");

    // Writer A commits; its thread stops right after the VFS released the write lock.
    let pause = dqlite_node::db::pause_next_unlock(&c.dir(0), "race.db").unwrap();
    let a = write_in_background(&c, "race.db", "INSERT INTO t VALUES (1)");
    assert!(pause.wait_reached(Duration::from_secs(10)), "writer A never released the write lock");
    assert!(a.recv_timeout(Duration::from_millis(50)).is_err(), "writer A was not held");

    // Writer B takes the free lock and reaches its commit (proposed, held by replication).
    c.hold(true);
    let before = c.last_index();
    let b = write_in_background(&c, "race.db", "INSERT INTO t VALUES (2)");
    wait_for("writer B to propose", Duration::from_secs(10), || c.last_index() != before);

    // A snapshot point now, on the apply thread (as the runtime takes one between entries).
    // A's commit is in the wal-index: nothing is left to wait for.
    let started = Instant::now();
    let r = c.on_sm(0, |sm| sm.snapshot_begin().map(|copy| copy.map(|c| c.index())).map_err(|e| e.to_string()));
    let took = started.elapsed();
    match r {
        Ok(Some(index)) => println!("snapshot point at {index} fixed in {took:?}"),
        Ok(None) => panic!("no snapshot copy"),
        Err(e) => panic!("the snapshot point failed after {took:?}: {e}"),
    }

    pause.release();
    a.recv_timeout(Duration::from_secs(10)).expect("writer A never finished").expect("writer A");
    c.hold(false);
    b.recv_timeout(Duration::from_secs(10)).expect("writer B never finished").expect("writer B");
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("race.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a IN (1, 2)"), 2, "node {i}");
    }
    assert_eq!(dump(&c.handles[0], "race.db"), dump(&c.handles[1], "race.db"));
}
