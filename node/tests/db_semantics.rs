//! Visibility, concurrency, refusals, damaged entries, leadership loss, restart, snapshots.

mod db_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use db_common::*;
use dqlite_node::raft::{Entry, EntryKind, LogIndex, Term};
use dqlite_node::replication::StateMachine;
use dqlite_wire::Value;

#[test]
fn a_leader_reader_never_sees_a_commit_before_it_is_acknowledged() {
    let c = Cluster::new(2);
    let w = c.handles[0].open("v.db").unwrap();
    w.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let h = c.handles[0].clone();
    let writer = std::thread::spawn(move || {
        let w = h.open("v.db").unwrap();
        w.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap();
        Instant::now()
    });
    let r = c.handles[0].open("v.db").unwrap();
    // The entry is proposed but held: nobody sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.last_index() < 3 {
        assert!(Instant::now() < deadline, "no proposal");
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..50 {
        assert_eq!(count(&r, "SELECT count(*) FROM t"), 0);
    }
    assert!(!writer.is_finished());
    c.hold(false);
    writer.join().unwrap();
    assert_eq!(count(&r, "SELECT count(*) FROM t"), 1);
}

#[test]
fn follower_readers_never_see_a_partial_entry() {
    let c = Cluster::new(2);
    let w = c.handles[0].open("p.db").unwrap();
    w.blocking_exec_sql(
        "CREATE TABLE a(x); CREATE TABLE b(x); INSERT INTO a VALUES (0); INSERT INTO b VALUES (0);",
        vec![],
    )
    .unwrap();
    c.wait_all_applied();
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let h = c.handles[1].clone();
        let (stop, checks) = (stop.clone(), checks.clone());
        readers.push(std::thread::spawn(move || {
            let r = h.open("p.db").unwrap();
            while !stop.load(Ordering::Relaxed) {
                // Invariant: both tables always hold the same sum (every entry updates both).
                let rows = r
                    .blocking_query_sql(
                        "SELECT (SELECT sum(x) FROM a), (SELECT sum(x) FROM b), (SELECT count(*) FROM a)",
                        vec![],
                    )
                    .unwrap()
                    .blocking_collect()
                    .unwrap();
                assert_eq!(rows[0][0], rows[0][1], "partial entry visible: {rows:?}");
                checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for i in 1..=300 {
        w.blocking_exec_sql(
            "BEGIN; INSERT INTO a VALUES (?); INSERT INTO b VALUES (?); COMMIT;",
            vec![Value::Integer(i), Value::Integer(i)],
        )
        .unwrap();
    }
    c.wait_all_applied();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(checks.load(Ordering::Relaxed) > 10);
    assert_eq!(dump(&c.handles[0], "p.db"), dump(&c.handles[1], "p.db"));
}

#[test]
fn sixteen_concurrent_writers_never_get_busy() {
    let c = Cluster::new(2);
    c.handles[0].open("w.db").unwrap().blocking_exec_sql("CREATE TABLE t(w, i)", vec![]).unwrap();
    let mut ts = Vec::new();
    for w in 0..16 {
        let h = c.handles[0].clone();
        ts.push(std::thread::spawn(move || {
            let conn = h.open("w.db").unwrap();
            for i in 0..20 {
                if i % 2 == 0 {
                    conn.blocking_exec_sql("INSERT INTO t VALUES (?, ?)", vec![Value::Integer(w), Value::Integer(i)])
                        .unwrap();
                } else {
                    conn.blocking_exec_sql(
                        "BEGIN IMMEDIATE; INSERT INTO t VALUES (?, ?); COMMIT;",
                        vec![Value::Integer(w), Value::Integer(i)],
                    )
                    .unwrap();
                }
            }
        }));
    }
    for t in ts {
        t.join().unwrap();
    }
    c.wait_all_applied();
    let r = c.handles[1].open("w.db").unwrap();
    assert_eq!(count(&r, "SELECT count(*) FROM t"), 320);
}

#[test]
fn what_would_break_replication_is_refused_with_its_reason() {
    let c = Cluster::new(1);
    let conn = c.handles[0].open("r.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a); INSERT INTO t VALUES (1);", vec![]).unwrap();
    for sql in [
        "PRAGMA journal_mode=DELETE",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=OFF",
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA page_size=8192",
        "PRAGMA writable_schema=ON",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA mmap_size=1000000",
        "PRAGMA query_only=0",
        "ATTACH 'other.db' AS o",
        "VACUUM INTO 'copy.db'",
        "SELECT load_extension('x')",
    ] {
        let e = conn.blocking_exec_sql(sql, vec![]).unwrap_err();
        assert_eq!(e.code() & 0xff, 23, "{sql}: {e}");
        assert!(e.to_string().contains("refused"), "{sql}: {e}");
    }
    // Reading settings and VACUUM are fine.
    let mode = conn.blocking_query_sql("PRAGMA journal_mode", vec![]).unwrap().blocking_collect().unwrap();
    assert_eq!(mode, vec![vec![Value::Text("wal".into())]]);
    conn.blocking_exec_sql("VACUUM", vec![]).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 1);
    assert!(c.handles[0].open("../escape").is_err());
    assert!(c.handles[0].open(".hidden").is_err());
}

#[test]
fn a_damaged_entry_stops_apply_naming_its_index() {
    let c = Cluster::new(2);
    let conn = c.handles[0].open("d.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let h = c.handles[0].clone();
    let t = std::thread::spawn(move || h.open("d.db").unwrap().blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let index = loop {
        let n = c.last_index();
        if n >= 3 {
            break n;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    };
    {
        let mut st = c.shared.st.lock().unwrap();
        let e = &mut st.entries[index as usize - 1];
        let mid = e.data.len() / 2;
        e.data[mid] ^= 0xff;
    }
    c.hold(false);
    let err = c.wait_error(1);
    assert!(err.contains(&format!("entry {index}")), "{err}");
    // The leader's own check fails too: the damaged bytes are what Raft committed.
    let _ = c.wait_error(0);
    let r = c.handles[1].open("d.db").unwrap();
    assert_eq!(count(&r, "SELECT count(*) FROM t"), 0);
    drop(t);
}

#[test]
fn leadership_lost_while_pending_then_the_entry_commits() {
    let c = Cluster::new(2);
    let conn = c.handles[0].open("l.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let h = c.handles[0].clone();
    let t = std::thread::spawn(move || h.open("l.db").unwrap().blocking_exec_sql("INSERT INTO t VALUES (42)", vec![]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.last_index() < 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    c.elect(None);
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.code(), 10506, "{e}");
    // The entry does commit: every node applies it, the old leader as a follower would.
    c.hold(false);
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("l.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 42"), 1, "node {i}");
    }
    // A new leader (node 1) writes on top of it.
    c.elect(Some(1));
    // Node 1 learns it leads (and applies its barrier) on its own apply thread: until then a
    // write gets "not leader", as a client would see it during an election.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.handles[1].open("l.db").unwrap().blocking_exec_sql("INSERT INTO t VALUES (7)", vec![]) {
            Ok(_) => break,
            Err(e) if e.code() == 10250 && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("write on the new leader: {e}"),
        }
    }
    c.wait_all_applied();
    assert_eq!(dump(&c.handles[0], "l.db"), dump(&c.handles[1], "l.db"));
}

#[test]
fn several_databases_share_one_log() {
    let c = Cluster::new(2);
    for round in 0..5 {
        for db in ["one.db", "two.db", "three.db"] {
            let conn = c.handles[0].open(db).unwrap();
            conn.blocking_exec_sql("CREATE TABLE IF NOT EXISTS t(a, db)", vec![]).unwrap();
            conn.blocking_exec_sql("INSERT INTO t VALUES (?, ?)", vec![Value::Integer(round), Value::Text(db.into())])
                .unwrap();
        }
    }
    c.wait_all_applied();
    for db in ["one.db", "two.db", "three.db"] {
        let d = dump(&c.handles[0], db);
        assert_eq!(d, dump(&c.handles[1], db));
        assert!(d.contains(db) && !d.contains(if db == "one.db" { "two.db" } else { "one.db\"" }));
    }
}

fn write_load(c: &Cluster, db: &str, n: i64) {
    let conn = c.handles[0].open(db).unwrap();
    conn.blocking_exec_sql("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, r, b)", vec![]).unwrap();
    for _ in 0..n {
        conn.blocking_exec_sql("INSERT INTO t(r, b) VALUES (random(), randomblob(500))", vec![]).unwrap();
    }
}

#[test]
fn restart_rebuilds_the_committed_state_from_the_files() {
    let seed: u64 = std::env::var("DB_RESTART_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("DB_RESTART_SEED={seed}");
    let rounds: u64 = std::env::var("DB_RESTART_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut cfg = config();
    cfg.checkpoint_every_entries = 7;
    cfg.checkpoint_wal_frames = 40;
    let mut c = Cluster::with_config(2, cfg);
    for round in 0..rounds {
        write_load(&c, "a.db", 5 + (rnd() % 30) as i64);
        write_load(&c, "b.db", 1 + (rnd() % 10) as i64);
        c.wait_all_applied();
        c.stop_node(1);
        // Lose part of the follower's unsynced WAL tail (the OS dropped it), or not.
        let wal = c.dir(1).join("db/a.db-wal");
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        match rnd() % 3 {
            0 if len > 32 => {
                let cut = 32 + rnd() % (len - 32);
                std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(cut).unwrap();
            }
            1 if len > 4000 => {
                // A torn write in the tail.
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
                f.write_all_at(&[0xAB; 100], len - 3000).unwrap();
            }
            _ => {}
        }
        c.restart_all_or_rebuild();
        c.wait_all_applied();
        for db in ["a.db", "b.db"] {
            assert_eq!(dump(&c.handles[0], db), dump(&c.handles[1], db), "round {round} db {db} seed {seed}");
            integrity_ok(&c.handles[1], db);
        }
    }
}

#[test]
fn restart_refuses_a_foreign_wal_naming_the_file() {
    let mut c = Cluster::new(2);
    write_load(&c, "a.db", 20);
    c.wait_all_applied();
    c.stop_node(1);
    // Replace the follower's WAL by one whose commits do not match the log.
    let other = Cluster::new(1);
    write_load(&other, "a.db", 20);
    other.wait_all_applied();
    drop(other.handles[0].open("a.db").unwrap());
    let src = other.dir(0).join("db/a.db-wal");
    let dst = c.dir(1).join("db/a.db-wal");
    std::fs::copy(&src, &dst).unwrap();
    // The foreign WAL has other salts than the sidecar: refused at open, naming the WAL.
    let rep = Arc::new(NodeReplicator { shared: c.shared.clone(), id: 1 });
    let err = dqlite_node::db::Databases::open(&c.dir(1), rep, config()).unwrap_err();
    assert!(err.to_string().contains("a.db-wal"), "{err}");
}

#[test]
fn snapshot_then_restore_on_a_fresh_node_gives_identical_content() {
    let c = Cluster::new(1);
    write_load(&c, "s1.db", 50);
    write_load(&c, "s2.db", 5);
    c.wait_all_applied();
    let (index, image) = c.on_sm(0, |sm| {
        let mut out = Vec::new();
        let i = sm.snapshot(&mut out).unwrap();
        (i, out)
    });
    assert_eq!(index.0, c.last_index());
    // A corrupted image is refused.
    let fresh = tempfile::tempdir().unwrap();
    let rep = Arc::new(NodeReplicator { shared: c.shared.clone(), id: 5 });
    let mut sm = dqlite_node::db::Databases::open(fresh.path(), rep, config()).unwrap();
    let mut bad = image.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(sm.restore(index, &mut bad.as_slice()).is_err());
    sm.restore(index, &mut image.as_slice()).unwrap();
    assert_eq!(sm.applied_index(), index);
    let h = sm.handle();
    for db in ["s1.db", "s2.db"] {
        assert_eq!(dump(&h, db), dump(&c.handles[0], db));
        integrity_ok(&h, db);
    }
    // It goes on applying later entries.
    let e = Entry { term: Term(1), index: LogIndex(index.0 + 1), kind: EntryKind::Barrier, data: vec![] };
    sm.apply(&e).unwrap();
}

/// Copies a follower's database files at random moments while it applies (a crash image: the
/// WAL first, then the database file, then the sidecars, as a crash could leave them), then
/// starts a node on each copy and replays the log into it: identical content, or a refusal
/// naming a file of the copy.
#[test]
fn crash_images_taken_while_applying_recover_or_refuse() {
    let seed: u64 = std::env::var("DB_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("DB_CRASH_SEED={seed}");
    let images: usize = std::env::var("DB_CRASH_IMAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut cfg = config();
    cfg.checkpoint_every_entries = 9;
    cfg.checkpoint_wal_frames = 30;
    let c = Cluster::with_config(2, cfg);
    let h = c.handles[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let conn = h.open("c.db").unwrap();
        conn.blocking_exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, r, b)", vec![]).unwrap();
        while !s2.load(Ordering::Relaxed) {
            conn.blocking_exec_sql("INSERT INTO t(r, b) VALUES (random(), randomblob(700))", vec![]).unwrap();
        }
    });
    let mut copies = Vec::new();
    for _ in 0..images {
        // The leader's files (frames written through after commit) or the follower's.
        let src = c.dir((rnd() % 2) as usize).join("db");
        std::thread::sleep(Duration::from_millis(5 + rnd() % 40));
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dst.path().join("db")).unwrap();
        for name in ["c.db-wal", "c.db", "c.db-dqlite", ".applied-base"] {
            let _ = std::fs::copy(src.join(name), dst.path().join("db").join(name));
        }
        copies.push(dst);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    c.wait_all_applied();
    let expected = dump(&c.handles[0], "c.db");
    let entries = c.shared.st.lock().unwrap().entries.clone();
    let (mut recovered, mut refused) = (0, 0);
    for copy in &copies {
        match dqlite_node::db::Databases::open(copy.path(), Arc::new(NoLog), config()) {
            Ok(mut sm) => {
                sm.role_changed(dqlite_node::raft::StateRole::Follower, Term(1), None);
                let from = sm.applied_index().0 as usize;
                for e in &entries[from..] {
                    sm.apply(e).unwrap_or_else(|err| panic!("seed {seed}: replay failed: {err}"));
                }
                let h = sm.handle();
                assert_eq!(dump(&h, "c.db"), expected, "seed {seed}");
                integrity_ok(&h, "c.db");
                recovered += 1;
            }
            Err(e) => {
                let dir = copy.path().join("db").canonicalize().unwrap();
                assert!(e.to_string().contains(dir.to_str().unwrap()), "seed {seed}: refusal names no file: {e}");
                refused += 1;
            }
        }
    }
    println!("crash images: {recovered} recovered, {refused} refused");
    assert!(recovered > 0, "seed {seed}: no image recovered");
}

/// An idle write transaction on a node that lost leadership holds the write lock the follower
/// apply needs: it is rolled back at once, apply proceeds, and the client's next statement is told
/// LEADERSHIP_LOST.
#[test]
fn an_idle_write_transaction_is_rolled_back_when_leadership_is_lost() {
    let c = Cluster::new(2);
    let conn = c.handles[0].open("idle.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    conn.blocking_exec_sql("BEGIN", vec![]).unwrap();
    conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap();
    // Leadership moves while the transaction is idle; the new leader writes.
    c.elect(Some(1));
    let started = Instant::now();
    let c1 = c.handles[1].open("idle.db").unwrap();
    // Node 1 learns its role through its apply thread; it may take a moment.
    while let Err(e) = c1.blocking_exec_sql("INSERT INTO t VALUES (2)", vec![]) {
        assert_eq!(e.code(), 10250, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "node 1 never took the write: {e}");
        std::thread::sleep(Duration::from_millis(2));
    }
    c.wait_all_applied();
    assert!(started.elapsed() < Duration::from_secs(5), "apply waited {:?}", started.elapsed());
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (3)", vec![]).unwrap_err();
    assert_eq!(e.code(), 10506, "{e}");
    // The transaction is gone: the connection is back in autocommit, read-only on a follower.
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (4)", vec![]).unwrap_err();
    assert_eq!(e.code(), 10250, "{e}");
    assert_eq!(count(&conn, "SELECT count(*) FROM t WHERE a = 2"), 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM t WHERE a <> 2"), 0);
    assert_eq!(dump(&c.handles[0], "idle.db"), dump(&c.handles[1], "idle.db"));
}

/// No quorum: the commit fails with the clear timeout error; while its fate is unknown a second
/// writer waits (bounded by its busy timeout) instead of failing; once the entry commits it is
/// applied as a follower would, and the second writer proceeds on top of it.
#[test]
fn a_commit_timeout_is_reported_then_the_entry_is_applied_when_it_commits() {
    let mut cfg = config();
    cfg.commit_timeout = Duration::from_millis(300);
    let c = Cluster::with_config(2, cfg);
    let conn = c.handles[0].open("to.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    assert_eq!(e.code(), dqlite_node::db::SQLITE_IOERR_COMMIT_TIMEOUT, "{e}");
    assert!(e.to_string().contains("not confirmed by Raft"), "{e}");
    // The second writer reads what it updates: it must run after entry 1's fate is known.
    let second = write_in_background(&c, "to.db", "INSERT INTO t SELECT count(*) + 10 FROM t");
    assert!(
        second.recv_timeout(Duration::from_millis(300)).is_err(),
        "the second writer did not wait for the unknown outcome"
    );
    c.hold(false);
    let r = second.recv_timeout(Duration::from_secs(10)).expect("the second writer never finished");
    r.expect("the second writer fails after the entry committed");
    c.wait_all_applied();
    conn.blocking_exec_sql("INSERT INTO t VALUES (3)", vec![]).unwrap();
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("to.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 1"), 1, "node {i}");
        // It saw entry 1: one row before it.
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 11"), 1, "node {i}");
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 3"), 1, "node {i}");
        assert_eq!(count(&r, "SELECT count(*) FROM t"), 3, "node {i}");
    }
    assert_eq!(dump(&c.handles[0], "to.db"), dump(&c.handles[1], "to.db"));
}

/// The same, but the entry whose fate was unknown never commits (a new term overwrites it):
/// the waiting writer proceeds once that is known, and the entry is nowhere.
#[test]
fn a_writer_waiting_on_an_unknown_outcome_proceeds_when_the_entry_is_lost() {
    let mut cfg = config();
    cfg.commit_timeout = Duration::from_millis(300);
    let c = Cluster::with_config(2, cfg);
    let conn = c.handles[0].open("lost.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    assert_eq!(e.code(), dqlite_node::db::SQLITE_IOERR_COMMIT_TIMEOUT, "{e}");
    let second = write_in_background(&c, "lost.db", "INSERT INTO t SELECT count(*) + 10 FROM t");
    assert!(second.recv_timeout(Duration::from_millis(300)).is_err(), "the second writer did not wait");
    // A new term (same leader) overwrites the uncommitted entry; its first write proposes the
    // term's barrier at that index, which decides the fate of the lost entry.
    c.truncate_uncommitted();
    c.elect(Some(0));
    c.hold(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = conn.blocking_exec_sql("INSERT INTO t VALUES (3)", vec![]) {
        assert!(Instant::now() < deadline, "writes never resumed: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = second.recv_timeout(Duration::from_secs(10)).expect("the second writer never finished");
    r.expect("the second writer fails after the entry was lost");
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("lost.db").unwrap();
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 1"), 0, "node {i}");
        assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a IN (3, 10, 11)"), 2, "node {i}");
    }
    assert_eq!(dump(&c.handles[0], "lost.db"), dump(&c.handles[1], "lost.db"));
}

/// A writer waiting on an unknown outcome that is not decided within its busy timeout gets
/// SQLITE_BUSY (nothing was proposed), and the connection keeps working afterwards.
#[test]
fn a_writer_waiting_on_an_unknown_outcome_gives_up_after_its_busy_timeout() {
    let mut cfg = config();
    cfg.commit_timeout = Duration::from_millis(200);
    cfg.busy_timeout = Duration::from_millis(300);
    let c = Cluster::with_config(2, cfg);
    let conn = c.handles[0].open("busy.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    c.hold(true);
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    assert_eq!(e.code(), dqlite_node::db::SQLITE_IOERR_COMMIT_TIMEOUT, "{e}");
    let started = Instant::now();
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (2)", vec![]).unwrap_err();
    assert_eq!(e.code() & 0xff, libsqlite3_sys::SQLITE_BUSY, "{e}");
    assert!(started.elapsed() >= Duration::from_millis(250), "gave up early: {:?}", started.elapsed());
    // Reads are not held back.
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 0);
    c.hold(false);
    c.wait_all_applied();
    conn.blocking_exec_sql("INSERT INTO t VALUES (3)", vec![]).unwrap();
    c.wait_all_applied();
    let r = c.handles[1].open("busy.db").unwrap();
    assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a = 2"), 0);
    assert_eq!(count(&r, "SELECT count(*) FROM t WHERE a IN (1, 3)"), 2);
}

/// `interrupt` stops a long query with SQLITE_INTERRUPT; the connection keeps working.
#[test]
fn interrupt_stops_a_long_query() {
    let c = Cluster::new(1);
    let conn = Arc::new(c.handles[0].open("int.db").unwrap());
    let q = conn.clone();
    let t = std::thread::spawn(move || {
        q.blocking_query_sql(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            vec![],
        )
        .and_then(|r| r.blocking_collect())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "the query was not interrupted");
        std::thread::sleep(Duration::from_millis(20));
        conn.interrupt();
    }
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.code(), 9, "{e}");
    assert_eq!(count(&conn, "SELECT 41 + 1"), 42);
}

/// The log's disk is full: a write gets SQLITE_FULL and loses nothing; reads go on; writes work
/// again once space returns.
#[test]
fn a_full_disk_answers_sqlite_full_then_writes_resume() {
    let c = Cluster::new(2);
    let conn = c.handles[0].open("full.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    conn.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap();
    c.wait_all_applied();
    c.shared.st.lock().unwrap().disk_full = true;
    let e = conn.blocking_exec_sql("INSERT INTO t VALUES (2)", vec![]).unwrap_err();
    assert_eq!(e.code() & 0xff, 13, "{e}");
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 1);
    let other = c.handles[0].open("full.db").unwrap();
    assert_eq!(count(&other, "SELECT count(*) FROM t"), 1);
    c.shared.st.lock().unwrap().disk_full = false;
    conn.blocking_exec_sql("INSERT INTO t VALUES (3)", vec![]).unwrap();
    c.wait_all_applied();
    for i in 0..2 {
        let r = c.handles[i].open("full.db").unwrap();
        assert_eq!(count(&r, "SELECT group_concat(a) = '1,3' FROM t"), 1, "node {i}");
    }
}

/// A connection opened before a snapshot install does not keep reading the old files: it fails
/// with a clear error so the client reconnects.
#[test]
fn a_connection_opened_before_restore_gets_a_clear_error() {
    let c = Cluster::new(1);
    write_load(&c, "r.db", 20);
    c.wait_all_applied();
    let (index, image) = c.on_sm(0, |sm| {
        let mut out = Vec::new();
        let i = sm.snapshot(&mut out).unwrap();
        (i, out)
    });
    let fresh = tempfile::tempdir().unwrap();
    let rep = Arc::new(NodeReplicator { shared: c.shared.clone(), id: 5 });
    let mut sm = dqlite_node::db::Databases::open(fresh.path(), rep, config()).unwrap();
    let h = sm.handle();
    let old = h.open("r.db").unwrap();
    old.blocking_exec_sql("SELECT 1", vec![]).unwrap();
    sm.restore(index, &mut image.as_slice()).unwrap();
    let want = dump(&c.handles[0], "r.db");
    assert_eq!(dump(&h, "r.db"), want);
    let e = old.blocking_query_sql("SELECT count(*) FROM t", vec![]).and_then(|r| r.blocking_collect()).unwrap_err();
    assert_eq!(e.code(), 4, "{e}");
    assert!(e.to_string().contains("reopen the connection"), "{e}");
    assert_eq!(old.blocking_prepare("SELECT 1").unwrap_err().code(), 4);
    // A new connection reads the restored state.
    assert_eq!(count(&h.open("r.db").unwrap(), "SELECT count(*) FROM t"), 20);
}
