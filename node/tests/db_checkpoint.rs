//! Checkpoints and the durable index inside the window between the apply of a local commit and
//! its publication (docs/replication.md, "Checkpoints and the durable index"; catalogue row
//! M-DB4 in `MUTANTS.md`).
//!
//! On a leader, the apply thread applies the writer's own entry by marking it committed; the
//! writer then writes its frames to the WAL, publishes them in the wal-index and releases the
//! write lock. That window lasts microseconds, so a crash landing in it with a checkpoint just
//! before is never reached by chance: these tests hold the writer in it on purpose
//! (`dqlite_node::db::pause_next_commit`, feature `harness`), checkpoint (and snapshot) there,
//! take a crash image of the data directory, and restart a node from that image with the log
//! compacted up to the durable index the node reported: it must hold the commit (invariants L
//! and R).

mod db_common;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use db_common::*;
use dqlite_node::db::{pause_next_commit, CommitPause, Databases, DbConfig, DbError};
use dqlite_node::raft::{LogIndex, StateRole, Term};
use dqlite_node::replication::StateMachine;
use dqlite_wire::Value;

const WAIT: Duration = Duration::from_secs(30);

/// No checkpoint unless the test asks for one.
fn quiet_config() -> DbConfig {
    let mut c = config();
    c.checkpoint_every_entries = u64::MAX;
    c.checkpoint_wal_frames = u32::MAX;
    c
}

/// Copies every file of `src`'s `db/` directory but the wal-index (rebuilt at open), as a
/// process crash at this instant leaves them.
fn crash_image(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    let (from, to) = (src.join("db"), dst.path().join("db"));
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_file() && !name.ends_with("-shm") {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
    dst
}

/// Starts a follower on `image` and replays the log after its applied index; the log holds
/// only the entries after `compacted` (the runtime compacts up to the durable index). Returns
/// the node, or why it could not rebuild the committed state.
fn restart_on(image: &Path, c: &Cluster, compacted: LogIndex) -> Result<Databases, String> {
    let mut sm = Databases::open(image, Arc::new(NoLog), quiet_config()).map_err(|e| format!("refused: {e}"))?;
    sm.role_changed(StateRole::Follower, Term(1), None);
    let from = sm.applied_index();
    if from < compacted {
        return Err(format!("the node restarts at index {} but the log was compacted up to {}", from.0, compacted.0));
    }
    let entries = c.shared.st.lock().unwrap().entries.clone();
    for e in entries.iter().filter(|e| e.index > from) {
        sm.apply(e).map_err(|err| format!("replay failed: {err}"))?;
    }
    Ok(sm)
}

fn held_row(sm: &Databases) -> i64 {
    let conn = sm.handle().open("m.db").unwrap();
    count(&conn, "SELECT count(*) FROM t WHERE v = 'held'")
}

/// Inserts the row 'held' on node 0 from another thread and holds its writer in the window
/// (after the apply of its entry `j`, before the publish). Returns the pause, the writer and
/// `j`.
fn hold_a_local_commit(c: &Cluster) -> (CommitPause, JoinHandle<Result<u64, DbError>>, LogIndex) {
    let pause = pause_next_commit(&c.dir(0), "m.db").unwrap();
    let h = c.handles[0].clone();
    let writer = std::thread::spawn(move || {
        let w = h.open("m.db").unwrap();
        w.blocking_exec_sql("INSERT INTO t(v) VALUES ('held')", vec![]).map(|r| r.rows_affected)
    });
    assert!(pause.wait_reached(WAIT), "the writer never reached the window");
    // The writer's entry is applied (that is what let it out of the commit wait).
    c.wait_all_applied();
    (pause, writer, LogIndex(c.last_index()))
}

/// M-DB4: a checkpoint that runs while the writer of the entry just applied has not yet written
/// its frames must not count that commit as durable; a node crashing right then, restarted
/// with its log compacted up to the durable index it reported, still holds the commit.
#[test]
fn a_checkpoint_between_the_apply_and_the_publish_of_a_local_commit_keeps_it_off_the_durable_index() {
    let c = Cluster::with_config(1, quiet_config());
    let w = c.handles[0].open("m.db").unwrap();
    w.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]).unwrap();
    for i in 0..5 {
        w.blocking_exec_sql("INSERT INTO t(v) VALUES (?)", vec![Value::Text(format!("row {i}"))]).unwrap();
    }
    c.wait_all_applied();
    // A first checkpoint: the durable index moves to everything applied so far.
    let before = c.on_sm(0, |sm| {
        sm.checkpoint_all().unwrap();
        sm.durable_index()
    });
    assert_eq!(before.0, c.last_index(), "an idle node's checkpoint covers everything applied");

    let (pause, writer, j) = hold_a_local_commit(&c);
    // In the window: checkpoint, note the durable index (the runtime compacts up to it).
    let durable = c.on_sm(0, |sm| {
        sm.checkpoint_all().unwrap();
        sm.durable_index()
    });
    // A crash now.
    let image = crash_image(&c.dir(0));
    pause.release();
    assert_eq!(writer.join().unwrap().unwrap(), 1);
    assert_eq!(count(&w, "SELECT count(*) FROM t WHERE v = 'held'"), 1);

    let sm = restart_on(image.path(), &c, durable)
        .unwrap_or_else(|e| panic!("crash in the window (entry {} applied, durable index {}): {e}", j.0, durable.0));
    assert_eq!(held_row(&sm), 1, "the restarted node lost the commit of entry {}", j.0);
    integrity_ok(&sm.handle(), "m.db");
    assert_eq!(dump(&sm.handle(), "m.db"), dump(&c.handles[0], "m.db"));
    assert!(durable < j, "the unpublished commit {} was counted as durable ({})", j.0, durable.0);

    // Once the writer has published, a checkpoint covers it.
    let after = c.on_sm(0, |sm| {
        sm.checkpoint_all().unwrap();
        sm.durable_index()
    });
    assert_eq!(after, j, "after the publish the checkpoint covers the commit");
}

/// A snapshot asked for in the same window is refused (the writer holds the write lock), or, if
/// one is produced, it holds the commit its index covers.
#[test]
fn a_snapshot_between_the_apply_and_the_publish_of_a_local_commit_holds_it_or_is_refused() {
    let c = Cluster::with_config(1, quiet_config());
    let w = c.handles[0].open("m.db").unwrap();
    w.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]).unwrap();
    w.blocking_exec_sql("INSERT INTO t(v) VALUES ('before')", vec![]).unwrap();
    c.wait_all_applied();
    let (pause, writer, j) = hold_a_local_commit(&c);
    let snap = c.on_sm(0, |sm| {
        let mut out = Vec::new();
        sm.snapshot(&mut out).map(|i| (i, out)).map_err(|e| e.to_string())
    });
    pause.release();
    assert_eq!(writer.join().unwrap().unwrap(), 1);
    match snap {
        // Refused while the writer holds the lock ("being written") or while its commit is
        // still being published (the snapshot's point must wait for the publication).
        Err(e) => assert!(
            e.contains("being written") || e.contains("being published"),
            "a snapshot in the window failed for another reason: {e}"
        ),
        Ok((index, image)) => {
            let fresh = tempfile::tempdir().unwrap();
            let mut sm = Databases::open(fresh.path(), Arc::new(NoLog), quiet_config()).unwrap();
            sm.restore(index, &mut image.as_slice()).unwrap();
            if index >= j {
                assert_eq!(held_row(&sm), 1, "a snapshot at index {} lacks the commit of entry {}", index.0, j.0);
            }
        }
    }
}
