//! A snapshot of the SQLite state machine is copied off the apply thread: under continuous
//! writers the leader's snapshot is taken (its point fixed without the write lock), and while
//! its copy is held mid-way commits go on being acknowledged and applied; the image, finished
//! later, installs on a follower that fell behind the compaction point.

#[allow(unused_imports)]
#[path = "db_common/mod.rs"]
mod db_common;
mod runtime_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_node::db::conn::DbHandle;
use dqlite_node::db::{Databases, DbConfig};
use dqlite_node::raft::NodeId;
use dqlite_node::replication::Replicator;
use dqlite_node::runtime::harness::{seed_from_env, wait_until, Cluster};
use dqlite_node::storage::backend::CrashMode;
use dqlite_wire::Value;
use runtime_common::WAIT;

type Handles = Arc<Mutex<BTreeMap<NodeId, DbHandle>>>;

fn handle(handles: &Handles, id: NodeId) -> DbHandle {
    handles.lock().unwrap()[&id].clone()
}

/// Runs `sql` on node `id`, retrying while the node is not yet ready to write.
fn exec(handles: &Handles, id: NodeId, sql: &str, params: Vec<Value>) {
    let conn = handle(handles, id).open("app.db").expect("open");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match conn.blocking_exec_sql(sql, params.clone()) {
            Ok(_) => return,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_while_a_snapshot_is_copied_and_the_copy_installs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = seed_from_env("RUNTIME_SEED", 43);
    let dirs: BTreeMap<NodeId, tempfile::TempDir> =
        (1..=3).map(|i| (NodeId(i), tempfile::tempdir().unwrap())).collect();
    let paths: BTreeMap<NodeId, std::path::PathBuf> = dirs.iter().map(|(i, d)| (*i, d.path().to_path_buf())).collect();
    let handles: Handles = Arc::default();
    let factory = {
        let (paths, handles) = (paths.clone(), handles.clone());
        Box::new(move |id: NodeId, replicator: Arc<dyn Replicator>| {
            let mut cfg = DbConfig::default();
            cfg.commit_timeout = Duration::from_secs(10);
            // Above the snapshot threshold: the first round comes due while the copy is held
            // (and is skipped then), so only the idle upkeep after the copy can run it once
            // the writers stopped (`StateMachine::idle`).
            cfg.checkpoint_every_entries = 40;
            let dbs = Databases::open(&paths[&id], replicator, cfg).expect("databases open");
            handles.lock().unwrap().insert(id, dbs.handle());
            dbs
        }) as Box<dyn Fn(NodeId, Arc<dyn Replicator>) -> Databases + Send + Sync>
    };
    let mut c = Cluster::start(3, seed, factory, |o| {
        o.network_latency = Duration::from_millis(5);
        o.snapshot_threshold = 32;
        o.trailing_entries = 8;
    })
    .await
    .expect("cluster");
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let victim = *c.ids().iter().find(|i| **i != leader).unwrap();
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
    {
        let h = handles.clone();
        blocking(Box::new(move || {
            exec(&h, leader, "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB, s TEXT)", vec![]);
            // A few MiB, so that the copy has pieces to hold between.
            for _ in 0..8 {
                exec(&h, leader, "INSERT INTO t(r, b) VALUES (random(), randomblob(262144))", vec![]);
            }
        }))
        .await
        .unwrap();
    }
    // A follower falls behind: it will need a snapshot.
    handles.lock().unwrap().remove(&victim);
    let victim_last = c.handle(victim).unwrap().metrics().applied_index;
    c.crash(victim, CrashMode::LOSE_UNSYNCED).await;

    // The leader's next snapshot copy stops after its first piece, its point fixed.
    let gate = dqlite_node::db::hold_snapshot_copies(&paths[&leader]);
    // Continuous writers on the leader (group commit shares their entries).
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (h, stop, committed, failed) =
                (handle(&handles, leader), stop.clone(), committed.clone(), failed.clone());
            std::thread::spawn(move || {
                let conn = h.open("app.db").expect("open");
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = conn.blocking_exec_sql(
                        "INSERT INTO t(r, s) VALUES (random(), ?)",
                        vec![Value::Text(format!("writer {w} row {n}"))],
                    );
                    match r {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::SeqCst);
                            n += 1;
                        }
                        Err(e) => {
                            failed.lock().unwrap().push(e.to_string());
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
        })
        .collect();
    let lh = c.handle(leader).unwrap().clone();
    let held = tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_held(WAIT)
    })
    .await
    .unwrap();
    let Some(point) = held else {
        let status = lh.status().await;
        let failed = failed.lock().unwrap().clone();
        panic!(
            "no snapshot taken under continuous writers: {} commits, {} failed (first {:?}); {:?}; {status:?}",
            committed.load(Ordering::SeqCst),
            failed.len(),
            failed.first(),
            lh.metrics()
        );
    };
    let (m0, c0) = (lh.metrics(), committed.load(Ordering::SeqCst));
    // While the copy is held, commits are acknowledged and entries applied (by counting).
    let more = wait_until(WAIT, || {
        let n = committed.load(Ordering::SeqCst);
        async move { (n >= c0 + 200).then_some(n) }
    })
    .await;
    let m1 = lh.metrics();
    assert!(more.is_some(), "commits stalled while a snapshot was copied: {} then, {:?}", c0, m1);
    assert!(m1.applied_index >= point.0 + 50, "the apply thread stalled during the copy: point {point}, {m1:?}");
    assert_eq!(m1.snapshots_taken, m0.snapshots_taken, "the held copy finished");
    // The writers stop before the copy is let go: no entry follows it, and the checkpoint
    // round that came due during the copy must still run (the durable index, and so the
    // compaction below, would wait for the next write otherwise).
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        tokio::task::spawn_blocking(move || w.join()).await.unwrap().unwrap();
    }
    gate.release();
    let taken = wait_until(WAIT, || {
        let m = lh.metrics();
        async move { (m.snapshots_taken > m0.snapshots_taken).then_some(()) }
    })
    .await;
    assert!(taken.is_some(), "the copy was not recorded after its release: {:?}", lh.metrics());
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} commits failed, first: {:?}", failed.len(), failed.first());

    // The follower comes back behind the compaction point and installs a snapshot.
    let compacted = wait_until(WAIT, || {
        let m = lh.metrics();
        async move { (m.compacted_index > victim_last).then_some(()) }
    })
    .await;
    assert!(compacted.is_some(), "no compaction past {victim_last}: {:?}", lh.metrics());
    c.restart(victim).await.expect("restart");
    let want = {
        let h = handle(&handles, leader);
        tokio::task::spawn_blocking(move || db_common::dump(&h, "app.db")).await.unwrap()
    };
    let same = wait_until(WAIT, || {
        let h = handles.lock().unwrap().get(&victim).cloned();
        let want = want.clone();
        async move {
            let h = h?;
            let got = tokio::task::spawn_blocking(move || db_common::try_dump(&h, "app.db")).await.ok()?.ok()?;
            (got == want).then_some(())
        }
    })
    .await;
    let vm = c.handle(victim).unwrap().metrics();
    assert!(same.is_some(), "the follower differs from the leader: {vm:?}");
    assert!(vm.snapshots_installed >= 1, "the follower did not install a snapshot: {vm:?}");
    for id in c.ids() {
        let h = handle(&handles, id);
        tokio::task::spawn_blocking(move || db_common::integrity_ok(&h, "app.db")).await.unwrap();
    }
    c.shutdown_all().await;
}
