//! Snapshots that scale: a follower far behind a big SQLite database catches up by snapshot
//! while writes go on, one corrupted chunk is refused and fetched again, and no node ever holds
//! more than a few MiB of snapshot bytes in one buffer (`metrics().snapshot_max_buffer`, counted
//! on every path: taking, storing, sending, receiving, checking, restoring).
//!
//! `SNAPSHOT_BIG_MIB` sets the database size (default 64; the 64 MiB and 192 MiB runs and
//! their numbers are in `docs/snapshots.md`).

#[allow(unused_imports)]
#[path = "db_common/mod.rs"]
mod db_common;
mod runtime_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite_node::db::conn::DbHandle;
use dqlite_node::db::{Databases, DbConfig};
use dqlite_node::raft::{MessageBody, NodeId};
use dqlite_node::replication::Replicator;
use dqlite_node::runtime::harness::{seed_from_env, wait_until, Cluster};
use dqlite_node::storage::backend::CrashMode;
use dqlite_wire::Value;

type Handles = Arc<Mutex<BTreeMap<NodeId, DbHandle>>>;

/// Bound on every wait (generous: a 64 MiB transfer in a debug build on a shared machine).
const WAIT: Duration = Duration::from_secs(120);
/// The database size (MiB); `SNAPSHOT_BIG_MIB` for another (e.g. 192 for the long run).
const DEFAULT_MIB: u64 = 64;
/// The buffer bound asserted: the 1 MiB chunk plus slack, far below the database size.
const MAX_BUFFER: u64 = 2 << 20;

async fn exec(handles: &Handles, id: NodeId, sql: &str, params: Vec<Value>) {
    let h = handles.lock().unwrap()[&id].clone();
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = h.open("big.db").expect("open");
        let deadline = Instant::now() + WAIT;
        loop {
            match conn.blocking_exec_sql(&sql, params.clone()) {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    })
    .await
    .unwrap();
}

/// A digest of the whole content: every row's id and a CRC32C of its columns, read one row at
/// a time, and the schema.
async fn digest(handles: &Handles, id: NodeId) -> Option<String> {
    let h = handles.lock().unwrap().get(&id)?.clone();
    tokio::task::spawn_blocking(move || {
        let c = h.open("big.db").ok()?;
        let q = |sql: &str, p: Vec<Value>| c.blocking_query_sql(sql, p).ok()?.blocking_collect().ok();
        let mut out = format!("{:?}\n", q("SELECT sql FROM sqlite_master ORDER BY name", vec![])?);
        let ids = q("SELECT id, s FROM t ORDER BY id", vec![])?;
        for row in ids {
            let r = q("SELECT b FROM t WHERE id = ?", vec![row[0].clone()])?;
            let crc = match r.first().and_then(|r| r.first()) {
                Some(Value::Blob(b)) => crc32c::crc32c(b),
                other => crc32c::crc32c(format!("{other:?}").as_bytes()),
            };
            out.push_str(&format!("{row:?} {crc:08x}\n"));
        }
        Some(out)
    })
    .await
    .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_a_big_database_catches_up_by_snapshot_with_bounded_buffers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = seed_from_env("RUNTIME_SEED", 77);
    let mib: u64 = std::env::var("SNAPSHOT_BIG_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MIB);
    let dirs: BTreeMap<NodeId, tempfile::TempDir> =
        (1..=3).map(|i| (NodeId(i), tempfile::tempdir().unwrap())).collect();
    let paths: BTreeMap<NodeId, std::path::PathBuf> = dirs.iter().map(|(i, d)| (*i, d.path().to_path_buf())).collect();
    let handles: Handles = Arc::default();
    let hs = handles.clone();
    let factory = Box::new(move |id: NodeId, replicator: Arc<dyn Replicator>| {
        let mut cfg = DbConfig::default();
        cfg.commit_timeout = Duration::from_secs(60);
        cfg.checkpoint_every_entries = 8;
        let dbs = Databases::open(&paths[&id], replicator, cfg).expect("databases open");
        hs.lock().unwrap().insert(id, dbs.handle());
        dbs
    });
    let mut c = Cluster::start(3, seed, factory, move |o| {
        o.network_latency = Duration::from_millis(5);
        // One snapshot while the database grows, taken when it holds about 3/4 of it.
        o.snapshot_threshold = (mib * 3 / 4).max(8);
        o.trailing_entries = 4;
        o.storage.log.segment_size_bytes = 8 << 20;
    })
    .await
    .expect("cluster");
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    exec(&handles, leader, "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, s TEXT)", vec![]).await;
    exec(&handles, leader, "INSERT INTO t(b, s) VALUES (randomblob(1000), 'before')", vec![]).await;
    let victim = *ids.iter().find(|i| **i != leader).unwrap();
    let victim_last = wait_until(WAIT, || {
        let m = c.handle(victim).unwrap().metrics();
        async move { (m.applied_index >= 3).then_some(m.applied_index) }
    })
    .await
    .expect("victim applied the first rows");
    handles.lock().unwrap().remove(&victim);
    c.crash(victim, CrashMode::LOSE_UNSYNCED).await;

    // The database grows to `mib` MiB while the victim is down.
    let t0 = Instant::now();
    for i in 0..mib {
        exec(
            &handles,
            leader,
            "INSERT INTO t(b, s) VALUES (randomblob(1048576), ?)",
            vec![Value::Text(format!("{i}"))],
        )
        .await;
    }
    eprintln!("wrote {mib} MiB in {:?}", t0.elapsed());
    let lh = c.handle(leader).unwrap().clone();
    let compacted = wait_until(WAIT, || {
        let m = lh.metrics();
        async move { (m.compacted_index > victim_last + 8 && m.snapshots_taken >= 1).then_some(m.compacted_index) }
    })
    .await;
    assert!(compacted.is_some(), "the leader never compacted past the victim: {:?}", lh.metrics());
    let db_len = std::fs::metadata(dirs[&leader].path().join("db/big.db")).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dirs[&leader].path().join("db/big.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(db_len >= mib << 20, "the leader's database is only {db_len} bytes");

    // One chunk on its way to the victim is damaged: the image is refused and sent again. And
    // the stream is held up mid-way (chunks past 2 MiB dropped) while writes go on.
    let damaged = Arc::new(AtomicU64::new(0));
    let stall = Arc::new(AtomicBool::new(true));
    let (d, st) = (damaged.clone(), stall.clone());
    c.net().set_filter(Some(Box::new(move |m| {
        if let MessageBody::InstallSnapshot(s) = &mut m.body {
            if m.to == victim && s.offset >= 2 << 20 && st.load(Ordering::Relaxed) {
                return false;
            }
            if m.to == victim && s.offset >= 3 << 20 && !s.data.is_empty() && d.fetch_add(1, Ordering::Relaxed) == 0 {
                s.data[100] ^= 0x01;
            }
        }
        true
    })));
    let t1 = Instant::now();
    let sent0 = lh.metrics().snapshot_chunks_sent;
    c.restart(victim).await.expect("restart");
    let streaming = wait_until(WAIT, || {
        let m = lh.metrics();
        async move { (m.snapshot_chunks_sent >= sent0 + 2).then_some(()) }
    })
    .await;
    assert!(streaming.is_some(), "the leader never started sending the snapshot: {:?}", lh.metrics());
    // Writes go on while the snapshot is being sent.
    for i in 0..20 {
        exec(
            &handles,
            leader,
            "INSERT INTO t(b, s) VALUES (randomblob(100), ?)",
            vec![Value::Text(format!("during {i}"))],
        )
        .await;
    }
    let vm = c.handle(victim).unwrap().metrics();
    assert_eq!(vm.snapshots_installed, 0, "the transfer was not held up: {vm:?}");
    stall.store(false, Ordering::Relaxed);
    let installed = wait_until(WAIT, || {
        let m = c.handle(victim).unwrap().metrics();
        async move { (m.snapshots_installed >= 1).then_some(()) }
    })
    .await;
    assert!(installed.is_some(), "no snapshot installed: {:?}", c.handle(victim).unwrap().metrics());
    let want = digest(&handles, leader).await.expect("leader digest");
    assert!(want.contains("during 19"));
    let ok = wait_until(WAIT, || {
        let (handles, want) = (handles.clone(), want.clone());
        async move { (digest(&handles, victim).await.as_deref() == Some(want.as_str())).then_some(()) }
    })
    .await;
    assert!(ok.is_some(), "the victim differs from the leader");
    eprintln!("victim caught up in {:?}", t1.elapsed());

    let vm = c.handle(victim).unwrap().metrics();
    assert!(damaged.load(Ordering::Relaxed) >= 1, "no chunk was damaged");
    assert!(vm.snapshots_refused >= 1, "the damaged image was not refused: {vm:?}");
    assert!(!vm.apply_failed, "a damaged image reached the state machine");
    for id in &ids {
        let m = c.handle(*id).unwrap().metrics();
        eprintln!(
            "node {id}: snapshot_max_buffer {} bytes, snapshots taken {} installed {}",
            m.snapshot_max_buffer, m.snapshots_taken, m.snapshots_installed
        );
        assert!(m.snapshot_max_buffer > 0 || *id != leader, "the leader's buffers were not counted: {m:?}");
        assert!(m.snapshot_max_buffer <= MAX_BUFFER, "node {id} buffered {} bytes of snapshot", m.snapshot_max_buffer);
    }
    let h = handles.lock().unwrap()[&victim].clone();
    tokio::task::spawn_blocking(move || db_common::integrity_ok(&h, "big.db")).await.unwrap();
    c.shutdown_all().await;
}
