//! Capture overhead per commit vs plain SQLite (WAL, `synchronous=OFF`), and follower apply
//! rate vs the leader's commit rate, measured in one run.
//!
//! `cargo run --release -p dqlite-node --example capture_bench [-- COMMITS]`
//!
//! The leader runs with an in-process log that commits every proposal at once (no network, no
//! fsync), so the difference to plain SQLite is the capture path itself: buffering the frames,
//! encoding the entry, the hand-off to the apply thread and the write-through.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dqlite_node::db::{Databases, DbConfig};
use dqlite_node::raft::{Entry, EntryKind, LogIndex, StateRole, Term};
use dqlite_node::replication::{ProposeError, Proposed, Replicator, StateMachine};
use dqlite_wire::Value;

struct InstantLog {
    next: Mutex<u64>,
    tx: Mutex<mpsc::Sender<Entry>>,
}

impl Replicator for InstantLog {
    fn propose(&self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let e = Entry { term: Term(1), index: LogIndex(*n), kind: EntryKind::Command, data };
        self.tx.lock().unwrap().send(e).map_err(|_| ProposeError::Unavailable { reason: "stopped".into() })?;
        Ok(Proposed { index: LogIndex(*n), term: Term(1) })
    }
}

fn main() {
    let commits: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let tmp = tempfile::tempdir().expect("tempdir");

    // Baseline: plain SQLite, WAL, synchronous=OFF.
    let plain = rusqlite::Connection::open(tmp.path().join("plain.db")).expect("open");
    plain.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; CREATE TABLE t(a, b);").expect("setup");
    let t0 = Instant::now();
    for i in 0..commits {
        plain.execute("INSERT INTO t VALUES (?1, randomblob(100))", [i as i64]).expect("insert");
    }
    let plain_s = t0.elapsed().as_secs_f64();

    // Leader with capture.
    let (tx, rx) = mpsc::channel::<Entry>();
    let log = Arc::new(InstantLog { next: Mutex::new(0), tx: Mutex::new(tx) });
    let leader_dir = tmp.path().join("leader");
    let mut leader = Databases::open(&leader_dir, log.clone(), DbConfig::default()).expect("leader");
    leader.role_changed(StateRole::Leader, Term(1), None);
    let handle = leader.handle();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let applier = std::thread::spawn(move || {
        while let Ok(e) = rx.recv() {
            leader.apply(&e).expect("leader apply");
            rec.lock().unwrap().push(e);
        }
    });
    let conn = handle.open("bench.db").expect("open");
    conn.blocking_exec_sql("CREATE TABLE t(a, b)", vec![]).expect("create");
    let t0 = Instant::now();
    for i in 0..commits {
        conn.blocking_exec_sql("INSERT INTO t VALUES (?, randomblob(100))", vec![Value::Integer(i as i64)])
            .expect("insert");
    }
    let leader_s = t0.elapsed().as_secs_f64();
    drop(conn);
    drop(handle);
    drop(log);
    // The applier ends when the log's sender is gone (the handle's node holds the replicator).
    let entries = {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let n = recorded.lock().unwrap().len() as u64;
            if n >= commits + 2 || Instant::now() > deadline {
                break recorded.lock().unwrap().clone();
            }
            std::thread::yield_now();
        }
    };
    drop(applier);

    // Follower: apply the same entries as fast as it can.
    let (ftx, _frx) = mpsc::channel();
    let flog = Arc::new(InstantLog { next: Mutex::new(0), tx: Mutex::new(ftx) });
    let mut follower = Databases::open(&tmp.path().join("follower"), flog, DbConfig::default()).expect("follower");
    follower.role_changed(StateRole::Follower, Term(1), None);
    let t0 = Instant::now();
    for e in &entries {
        follower.apply(e).expect("follower apply");
    }
    let follower_s = t0.elapsed().as_secs_f64();

    let us = |s: f64| s * 1e6 / commits as f64;
    println!("commits: {commits} (one-row autocommit INSERTs, 100-byte blob)");
    println!("plain SQLite WAL synchronous=OFF: {:8.1} us/commit", us(plain_s));
    println!("leader with capture (instant log): {:8.1} us/commit", us(leader_s));
    println!(
        "capture overhead:                  {:8.1} us/commit ({:.2}x plain)",
        us(leader_s) - us(plain_s),
        leader_s / plain_s
    );
    println!(
        "follower apply: {:.0} entries/s vs leader commit rate {:.0}/s ({:.2}x)",
        entries.len() as f64 / follower_s,
        commits as f64 / leader_s,
        (entries.len() as f64 / follower_s) / (commits as f64 / leader_s)
    );
}
