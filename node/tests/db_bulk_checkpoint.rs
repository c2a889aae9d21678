//! The bulk of a threshold checkpoint runs on a thread of its own (catalogue row M-DB9 in
//! `MUTANTS.md`).
//!
//! A threshold checkpoint used to copy the whole WAL on the apply thread with new writers held
//! back: every commit of the database waited for it (20–50 ms per 4,000 frames here, several
//! times a second under a heavy write load). Now most of the WAL is copied by a PASSIVE
//! checkpoint on its own thread and connection while entries go on being applied and writers
//! go on committing; only the short checkpoint of what came meanwhile holds writers back.
//! A snapshot point must not be fixed while the bulk may change the database file under the
//! copy: it waits for the bulk to end.
//!
//! The bulk thread is held before it checkpoints (`dqlite_node::db::pause_next_bulk`, feature
//! `harness`), so the test controls when it runs.

mod db_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use db_common::*;
use dqlite_node::db::{bulk_checkpoints, pause_next_bulk, pause_next_bulk_join, Databases};
use dqlite_node::replication::StateMachine;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn commits_go_on_during_a_bulk_checkpoint_and_a_snapshot_waits_for_it() {
    let threshold = 40u32;
    let mut cfg = config();
    cfg.checkpoint_wal_frames = threshold;
    cfg.checkpoint_every_entries = u64::MAX;
    let c = Cluster::with_config(1, cfg.clone());
    let w = c.handles[0].open("b.db").unwrap();
    w.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, b)", vec![]).unwrap();
    c.wait_all_applied();
    let pause = pause_next_bulk(&c.dir(0), "b.db").unwrap();
    let before = bulk_checkpoints();
    // Each commit adds at least one frame: the WAL passes the threshold, a bulk starts.
    let mut rows = 0;
    while !pause.wait_reached(Duration::ZERO) {
        assert!(rows < 10 * threshold, "no bulk checkpoint started after {rows} commits (threshold {threshold})");
        w.blocking_exec_sql("INSERT INTO t(b) VALUES (randomblob(200))", vec![]).unwrap();
        rows += 1;
        if rows > threshold {
            // Let the apply thread reach it (it starts on an apply past the threshold).
            pause.wait_reached(Duration::from_millis(50));
        }
    }
    // While the bulk is held, commits go on (a checkpoint on the apply thread would hold them).
    for _ in 0..100 {
        w.blocking_exec_sql("INSERT INTO t(b) VALUES (randomblob(200))", vec![]).unwrap();
        rows += 1;
    }
    c.wait_all_applied();
    assert_eq!(bulk_checkpoints(), before, "the held bulk checkpoint finished");
    // A snapshot asked for now waits for the bulk: it reaches the wait (held there by a second
    // pause), and it cannot have finished by then, since the bulk is held.
    let joining = pause_next_bulk_join(&c.dir(0), "b.db").unwrap();
    std::thread::scope(|s| {
        let finished = Arc::new(AtomicBool::new(false));
        let snap = {
            let finished = finished.clone();
            let c = &c;
            s.spawn(move || {
                let r = c.on_sm(0, move |sm| {
                    let mut out = Vec::new();
                    let r = sm.snapshot(&mut out).map(|i| (i, out)).map_err(|e| e.to_string());
                    // Read before anything else can run on the apply thread.
                    (r, bulk_checkpoints())
                });
                finished.store(true, Ordering::SeqCst);
                r
            })
        };
        wait_for("the snapshot to wait for the bulk checkpoint (or to finish)", WAIT, || {
            joining.wait_reached(Duration::ZERO) || finished.load(Ordering::SeqCst)
        });
        assert!(!finished.load(Ordering::SeqCst), "a snapshot was taken while a bulk checkpoint was under way");
        // Past that point it waits for the bulk thread, which is still held.
        joining.release();
        pause.release();
        let (r, bulks_then) = snap.join().unwrap();
        assert!(bulks_then > before, "the snapshot finished before the bulk checkpoint did");
        let (index, image) = r.expect("snapshot");
        // The image is consistent and holds every row up to its index (all of them here).
        let fresh = tempfile::tempdir().unwrap();
        let mut sm = Databases::open(fresh.path(), Arc::new(NoLog), cfg.clone()).unwrap();
        sm.restore(index, &mut image.as_slice()).unwrap();
        drop(sm);
        let conn = rusqlite::Connection::open(fresh.path().join("db").join("b.db")).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, rows as i64, "the snapshot at index {} lacks rows", index.0);
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
    });
    // After the bulk, the short checkpoint lets the WAL restart: SQLite then writes from the
    // start of the file again, so more commits do not make the file (its high-water mark) grow.
    let wal_frames = || {
        let len = std::fs::metadata(c.dir(0).join("db").join("b.db-wal")).map(|m| m.len()).unwrap_or(0);
        len.saturating_sub(32) / (4096 + 24)
    };
    let high_water = wal_frames();
    for _ in 0..(4 * threshold) {
        w.blocking_exec_sql("INSERT INTO t(b) VALUES (randomblob(200))", vec![]).unwrap();
        rows += 1;
    }
    c.wait_all_applied();
    let frames = wal_frames();
    assert!(
        frames < high_water + 2 * threshold as u64,
        "the WAL grew from {high_water} to {frames} frames over {} commits (threshold {threshold}): it is not restarted",
        4 * threshold
    );
    assert_eq!(count(&w, "SELECT count(*) FROM t"), rows as i64);
    integrity_ok(&c.handles[0], "b.db");
}
