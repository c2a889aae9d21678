//! Snapshot install of the SQLite state machine (`db::Databases`): a crash at any step of the
//! install leaves either the old or the new state (never a mix), and a damaged image is refused
//! with the old state untouched.

#[path = "db_common/mod.rs"]
mod db_common;

use std::sync::Arc;

use db_common::{dump, integrity_ok, Cluster, NodeReplicator};
use dqlite_node::db::Databases;
use dqlite_node::raft::LogIndex;
use dqlite_node::replication::StateMachine;

const DBS: [&str; 2] = ["app.db", "other.db"];

fn exec(c: &Cluster, db: &str, sql: &str) {
    let conn = c.handles[0].open(db).unwrap();
    conn.blocking_exec_sql(sql, vec![]).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn dumps(h: &dqlite_node::db::conn::DbHandle) -> Vec<String> {
    DBS.iter().map(|db| dump(h, db)).collect()
}

/// Opens node `i`'s files outside the cluster (no apply thread: nothing is applied after the
/// open) and returns what a restart finds.
fn state_after_restart(c: &Cluster, i: usize) -> (LogIndex, Vec<String>) {
    let rep = Arc::new(NodeReplicator { shared: c.shared.clone(), id: 99 });
    let dbs = Databases::open(&c.dir(i), rep, c.config.clone()).expect("reopen after the crash");
    let h = dbs.handle();
    for db in DBS {
        integrity_ok(&h, db);
    }
    let r = (dbs.applied_index(), dumps(&h));
    drop(dbs);
    r
}

#[test]
fn a_crash_at_any_step_of_a_snapshot_install_leaves_the_old_or_the_new_state() {
    let mut c = Cluster::new(2);
    for db in DBS {
        exec(&c, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB)");
        for _ in 0..20 {
            exec(&c, db, "INSERT INTO t(r, b) VALUES (random(), randomblob(3000))");
        }
    }
    c.wait_all_applied();
    // Image A of node 0.
    let (index_a, image_a) = c.on_sm(0, |dbs| {
        let mut img = Vec::new();
        let i = dbs.snapshot(&mut img).expect("snapshot");
        (i, img)
    });
    let dump_a = dumps(&c.handles[0]);
    // Later writes: state B everywhere.
    for db in DBS {
        exec(&c, db, "CREATE TABLE u(x)");
        exec(&c, db, "INSERT INTO u VALUES (randomblob(50000))");
        exec(&c, db, "DELETE FROM t WHERE id % 3 = 0");
    }
    c.wait_all_applied();
    let dump_b = dumps(&c.handles[0]);
    let index_b = c.on_sm(1, |dbs| dbs.applied_index());
    assert_ne!(dump_a, dump_b);
    assert!(index_a < index_b);

    // A damaged image is refused and nothing changes.
    let mut bad = image_a.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    let e = c.on_sm(1, move |dbs| dbs.restore(index_a, &mut &bad[..])).expect_err("damaged image installed");
    assert!(e.reason.contains("checksum"), "{e}");
    assert_eq!(dumps(&c.handles[1]), dump_b);

    // A crash at each step, then a restart: old state (B) or new state (A), consistent with the
    // applied index, integrity ok; after the restart the node catches up with the log again.
    for point in 0..=dqlite_node::db::RESTORE_CRASH_POINTS {
        let img = image_a.clone();
        let r = c.on_sm(1, move |dbs| {
            dqlite_node::db::inject_restore_crash(point);
            let r = dbs.restore(index_a, &mut &img[..]);
            dqlite_node::db::inject_restore_crash(0);
            r
        });
        assert_eq!(r.is_ok(), point == 0, "crash point {point}: {r:?}");
        c.stop_node(1);
        let (index, content) = state_after_restart(&c, 1);
        // Before the first rename the old state stays; from it on the new one is installed.
        if point != 0 && point < 4 {
            // (A restart may report less than B applied: entries the WAL holds are re-applied.)
            assert!(index <= index_b, "crash point {point}: {index}");
            assert!(content == dump_b, "crash point {point}: not the old state");
        } else {
            assert_eq!(index, index_a, "crash point {point}");
            assert!(content == dump_a, "crash point {point}: not the new state");
        }
        for suffix in [".restore", ".old"] {
            let leftover = c.dir(1).join(format!("db{suffix}"));
            assert!(!leftover.exists(), "crash point {point}: {leftover:?} left behind");
        }
        c.restart_all();
        c.wait_all_applied();
        assert_eq!(dumps(&c.handles[1]), dump_b, "crash point {point}: did not catch up after the restart");
    }
    // Still a working pair.
    exec(&c, "app.db", "INSERT INTO t(r) VALUES (1)");
    c.wait_all_applied();
    assert_eq!(dumps(&c.handles[1]), dumps(&c.handles[0]));
}

/// A page size other than 4096, chosen before the databases are created: it replicates, every
/// node's file uses it, a snapshot of it installs, and changing it with a PRAGMA stays refused.
#[test]
fn databases_created_with_another_page_size_replicate_and_snapshot() {
    for page_size in [1024u32, 8192, 65536] {
        let mut cfg = db_common::config();
        cfg.page_size = page_size;
        let c = Cluster::with_config(2, cfg);
        exec(&c, "app.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB)");
        for _ in 0..30 {
            exec(&c, "app.db", "INSERT INTO t(r, b) VALUES (random(), randomblob(5000))");
        }
        c.wait_all_applied();
        let q = |i: usize, sql: &str| {
            let conn = c.handles[i].open("app.db").unwrap();
            conn.blocking_query_sql(sql, vec![]).unwrap().blocking_collect().unwrap()
        };
        for i in 0..2 {
            assert_eq!(q(i, "PRAGMA page_size"), vec![vec![dqlite_wire::Value::Integer(page_size as i64)]], "node {i}");
            integrity_ok(&c.handles[i], "app.db");
        }
        assert_eq!(dump(&c.handles[1], "app.db"), dump(&c.handles[0], "app.db"));
        let conn = c.handles[0].open("app.db").unwrap();
        let e = conn.blocking_exec_sql("PRAGMA page_size=4096", vec![]).expect_err("page_size change accepted");
        assert!(e.to_string().contains("page_size"), "{e}");
        // The files on disk have it too after a checkpoint (header bytes 16..18; 1 means 65536).
        for i in 0..2 {
            c.on_sm(i, |dbs| dbs.checkpoint_all()).expect("checkpoint");
            let hdr = std::fs::read(c.dir(i).join("db/app.db")).unwrap();
            assert!(hdr.len() >= 100 && hdr.len() % page_size as usize == 0, "node {i}: {} bytes", hdr.len());
            let raw = u16::from_be_bytes([hdr[16], hdr[17]]) as u32;
            assert_eq!(if raw == 1 { 65536 } else { raw }, page_size, "node {i}");
        }
        // A snapshot of it installs on the other node.
        let (index, image) = c.on_sm(0, |dbs| {
            let mut img = Vec::new();
            let i = dbs.snapshot(&mut img).expect("snapshot");
            (i, img)
        });
        c.on_sm(1, move |dbs| dbs.restore(index, &mut &image[..])).expect("restore");
        assert_eq!(q(1, "PRAGMA page_size"), vec![vec![dqlite_wire::Value::Integer(page_size as i64)]]);
        assert_eq!(dump(&c.handles[1], "app.db"), dump(&c.handles[0], "app.db"));
    }
    let mut cfg = db_common::config();
    cfg.page_size = 3000;
    let dir = tempfile::tempdir().unwrap();
    let shared = Cluster::new(1).shared.clone();
    let e = Databases::open(dir.path(), Arc::new(NodeReplicator { shared, id: 0 }), cfg).expect_err("page size 3000");
    assert!(e.to_string().contains("invalid page size 3000"), "{e}");
}

/// Hooks of a database outside any cluster: commits go straight through.
struct Plain;

impl dqlite_node::vfs::DbHooks for Plain {
    fn commit(&self, _: dqlite_node::vfs::ConnId, _: dqlite_node::vfs::Capture) -> Result<(), std::ffi::c_int> {
        Ok(())
    }
    fn wal_header(&self, _: dqlite_node::vfs::ConnId, _: &[u8; 32]) -> Result<(), std::ffi::c_int> {
        Ok(())
    }
}

/// The SIGBUS of `runtime_sqlite` (issue 8): a connection opened on a database's files before a
/// snapshot install swapped them, whose first read came after the swap, made SQLite open the
/// *new* files' `-shm` by path as another database inode and truncate it (it took itself for
/// the first user: POSIX locks do not conflict within a process) under the connections of the
/// new files. Such a connection must get an error and leave the new files alone.
#[test]
fn a_connection_opened_before_the_files_were_replaced_never_maps_the_new_wal_index() {
    use dqlite_node::vfs::{self, ConnOptions, VfsConnection};
    vfs::register().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let dir = root.join("db");
    let staging = root.join("db.restore");
    let path = |d: &std::path::Path| d.join("app.db").to_str().unwrap().to_string();
    let opts = ConnOptions { priority: false, busy_timeout: std::time::Duration::from_secs(1), read_only: false };
    // Old files (1 row) and new files (2 rows), both WAL databases with a non-empty WAL.
    for (d, rows) in [(&dir, 1), (&staging, 2)] {
        std::fs::create_dir_all(d).unwrap();
        let c = rusqlite::Connection::open(path(d)).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);").unwrap();
        for i in 0..rows {
            c.execute("INSERT INTO t VALUES (?)", [i]).unwrap();
        }
        // Keep the WAL when this plain connection closes.
        c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
    }
    let old_entry = vfs::register_db(&path(&dir), Arc::new(Plain));
    // Opened on the old files; it has not read anything yet (no wal-index mapped).
    let stale = VfsConnection::open(&old_entry, opts).unwrap();
    vfs::replace_dir(dir.to_str().unwrap(), || {
        std::fs::rename(&dir, root.join("db.old")).unwrap();
        std::fs::rename(&staging, &dir).unwrap();
    });
    let new_entry = vfs::register_db(&path(&dir), Arc::new(Plain));
    let fresh = VfsConnection::open(&new_entry, opts).unwrap();
    let count = |c: &VfsConnection| c.conn().query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
    assert_eq!(count(&fresh).unwrap(), 2);
    let shm = dir.join("app.db-shm");
    let shm_len = std::fs::metadata(&shm).unwrap().len();
    let e = count(&stale).expect_err("a connection of the replaced files read through the new wal-index");
    assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::SystemIoFailure), "{e}");
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), shm_len, "the new files' -shm was truncated");
    drop(stale);
    assert_eq!(count(&fresh).unwrap(), 2);
    let ok: String = fresh.conn().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

/// The WAL length each database has in an image (format: docs/data-directory.md).
fn wal_lengths(img: &[u8]) -> Vec<u64> {
    let u = |o: usize, n: usize| img[o..o + n].iter().rev().fold(0u64, |a, b| a << 8 | *b as u64);
    let count = u(16, 4) as usize;
    let mut off = 20;
    let mut out = Vec::new();
    for _ in 0..count {
        let name_len = u(off, 2) as usize;
        off += 2 + name_len;
        let (db, wal) = (u(off, 8), u(off + 8, 8));
        out.push(wal);
        off += 16 + (db + wal) as usize;
    }
    out
}

/// A snapshot's point is fixed on the apply thread and its bytes written later on another
/// thread (`StateMachine::snapshot_begin`): writes, applies and checkpoint rounds go on
/// meanwhile (a checkpoint would rewrite the database file, and a WAL restart after it the
/// WAL), yet the copy holds exactly the bytes an immediate snapshot at that point holds.
#[test]
fn a_snapshot_copy_written_later_holds_exactly_the_state_at_its_point() {
    let mut cfg = db_common::config();
    // Frequent checkpoint rounds: any that ran during the copy would change the files under it.
    cfg.checkpoint_every_entries = 3;
    let mut c = Cluster::with_config(2, cfg);
    for db in DBS {
        exec(&c, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB)");
        for _ in 0..10 {
            exec(&c, db, "INSERT INTO t(r, b) VALUES (random(), randomblob(20000))");
        }
    }
    // A point where a WAL still holds frames not backfilled (so the copy reads both files).
    let mut tries = 0;
    let (now, copy) = loop {
        c.wait_all_applied();
        let (now, copy) = c.on_sm(0, |dbs| {
            let mut now = Vec::new();
            dbs.snapshot(&mut now).expect("snapshot");
            // Same point: nothing was applied since.
            (now, dbs.snapshot_begin().expect("snapshot_begin").expect("the db layer copies off the apply thread"))
        });
        if wal_lengths(&now).iter().any(|l| *l > 0) {
            break (now, copy);
        }
        drop(copy);
        tries += 1;
        assert!(tries < 20, "every WAL was backfilled at each point");
        exec(&c, "app.db", "INSERT INTO t(r) VALUES (random())");
    };
    let index = copy.index();
    let dump_at = dumps(&c.handles[0]);
    // The copy is pending: writes go on (shrinking and growing the files), entries are applied.
    for db in DBS {
        exec(&c, db, "DELETE FROM t WHERE id % 2 = 0");
        exec(&c, db, "VACUUM");
        for _ in 0..12 {
            exec(&c, db, "INSERT INTO t(r, b) VALUES (random(), randomblob(30000))");
        }
    }
    c.wait_all_applied();
    assert!(c.on_sm(0, |dbs| dbs.applied_index()).0 > index.0 + 20);
    let e = c.on_sm(0, |dbs| dbs.checkpoint_all()).expect_err("checkpoint during a snapshot copy");
    assert!(e.to_string().contains("snapshot copy"), "{e}");
    // Written on this thread, not the apply thread.
    let mut later = Vec::new();
    copy.write_to(&mut later).expect("write the copy");
    assert!(later == now, "the copy changed: {} bytes vs {} bytes at the point", later.len(), now.len());
    c.on_sm(0, |dbs| dbs.checkpoint_all()).expect("checkpoints resume after the copy");
    // It installs, giving the state at its point.
    c.on_sm(1, move |dbs| dbs.restore(index, &mut &later[..])).expect("restore");
    assert_eq!(dumps(&c.handles[1]), dump_at);
    for db in DBS {
        integrity_ok(&c.handles[1], db);
    }
    // And the node catches up with the log from there.
    c.stop_node(1);
    c.restart_all();
    c.wait_all_applied();
    assert_eq!(dumps(&c.handles[1]), dumps(&c.handles[0]));
}
