//! The SQLite state machine (`db::Databases`) on the runtime: a 3-node in-process cluster with
//! the memory transport. Rows written with random()/randomblob()/datetime('now') end up
//! identical on every node.

#[allow(unused_imports)]
#[path = "db_common/mod.rs"]
mod db_common;
mod runtime_common;

use std::collections::BTreeMap;
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

type Factory = Box<dyn Fn(NodeId, Arc<dyn Replicator>) -> Databases + Send + Sync>;

struct Sql {
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    handles: Arc<Mutex<BTreeMap<NodeId, DbHandle>>>,
}

fn factory(sql: &Sql) -> Factory {
    let dirs: BTreeMap<NodeId, std::path::PathBuf> =
        sql.dirs.iter().map(|(i, d)| (*i, d.path().to_path_buf())).collect();
    let handles = sql.handles.clone();
    Box::new(move |id, replicator| {
        let mut cfg = DbConfig::default();
        cfg.commit_timeout = Duration::from_secs(10);
        // Checkpoints move durable_index, so the runtime compacts behind them.
        cfg.checkpoint_every_entries = 16;
        let dbs = Databases::open(&dirs[&id], replicator, cfg).expect("databases open");
        handles.lock().unwrap().insert(id, dbs.handle());
        dbs
    })
}

/// Runs `sql` on node `id`'s database, retrying while the node is not yet ready to write.
async fn exec(handles: &Arc<Mutex<BTreeMap<NodeId, DbHandle>>>, id: NodeId, sql: &str, params: Vec<Value>) {
    let h = handles.lock().unwrap()[&id].clone();
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = h.open("app.db").expect("open");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match conn.blocking_exec_sql(&sql, params.clone()) {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() < deadline => {
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

async fn dump(handles: &Arc<Mutex<BTreeMap<NodeId, DbHandle>>>, id: NodeId) -> String {
    let h = handles.lock().unwrap()[&id].clone();
    tokio::task::spawn_blocking(move || db_common::dump(&h, "app.db"))
        .await
        .unwrap_or_else(|e| panic!("dump of node {id}: {e}"))
}

/// A dump while the node may still be catching up: `None` if it failed (a snapshot install
/// replaced the database under the connection reading it).
async fn try_dump(handles: &Arc<Mutex<BTreeMap<NodeId, DbHandle>>>, id: NodeId) -> Option<String> {
    let h = handles.lock().unwrap().get(&id)?.clone();
    let r = tokio::task::spawn_blocking(move || db_common::try_dump(&h, "app.db")).await.ok()?;
    r.map_err(|e| tracing::debug!(node = id.0, error = e, "dump failed; retrying")).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_machine_on_three_runtime_nodes_holds_identical_content() {
    three_nodes_crash_a_follower_and_converge(false).await;
}

/// The same run, and the restarted follower must catch up by snapshot: the leader's
/// checkpoints must move its durable index although its own writers hold the write lock
/// (a checkpoint that waited for the lock was skipped after nearly every local commit, and
/// the leader never compacted past the crashed follower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_follower_behind_the_compaction_point_catches_up_by_snapshot() {
    three_nodes_crash_a_follower_and_converge(true).await;
}

async fn three_nodes_crash_a_follower_and_converge(require_snapshot: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = seed_from_env("RUNTIME_SEED", 41);
    let sql =
        Sql { dirs: (1..=3).map(|i| (NodeId(i), tempfile::tempdir().unwrap())).collect(), handles: Arc::default() };
    let handles = sql.handles.clone();
    let mut c = Cluster::start(3, seed, factory(&sql), |o| {
        o.network_latency = Duration::from_millis(5);
        o.snapshot_threshold = 64;
        o.trailing_entries = 8;
    })
    .await
    .expect("cluster");
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    exec(&handles, leader, "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB, d TEXT, s TEXT)", vec![]).await;
    for i in 0..40 {
        exec(
            &handles,
            leader,
            "INSERT INTO t(r, b, d, s) VALUES (random(), randomblob(64), datetime('now'), ?)",
            vec![Value::Text(format!("row {i}"))],
        )
        .await;
    }
    exec(&handles, leader, "BEGIN; INSERT INTO t(r) VALUES (random()); SAVEPOINT a; INSERT INTO t(r) VALUES (1); ROLLBACK TO a; RELEASE a; COMMIT;", vec![]).await;
    // Everything the leader holds reaches the followers.
    let want = dump(&handles, leader).await;
    assert!(want.contains("row 39"));
    let ok = wait_until(WAIT, || {
        let handles = handles.clone();
        let want = want.clone();
        let ids = ids.clone();
        async move {
            for id in ids {
                if try_dump(&handles, id).await.as_ref() != Some(&want) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    assert!(ok.is_some(), "followers differ from the leader");
    // A follower crashes (unsynced Raft data lost) and comes back: it converges too.
    let victim = *ids.iter().find(|i| **i != leader).unwrap();
    // The old incarnation's handle must go with it (a real crash ends the process): two
    // instances of the db layer on the same files in one process would corrupt them.
    handles.lock().unwrap().remove(&victim);
    let victim_last = c.handle(victim).unwrap().metrics().applied_index;
    c.crash(victim, CrashMode::LOSE_UNSYNCED).await;
    // Enough writes that the leader compacts past the victim: it catches up by snapshot.
    for i in 0..300 {
        exec(&handles, leader, "INSERT INTO t(r, s) VALUES (random(), ?)", vec![Value::Text(format!("late {i}"))])
            .await;
    }
    // The leader compacts once its databases are checkpointed and a snapshot is stored, which
    // happens on its own schedule: wait (bounded) until it has compacted past the victim.
    let lh = c.handle(leader).unwrap().clone();
    let compacted = if !require_snapshot {
        Some(0)
    } else {
        wait_until(WAIT, || {
            let m = lh.metrics();
            async move { (m.compacted_index > victim_last).then_some(m.compacted_index) }
        })
        .await
    };
    assert!(
        compacted.is_some(),
        "the leader never compacted past the victim's index {victim_last}: {:?}",
        lh.metrics()
    );
    c.restart(victim).await.expect("restart");
    let want = dump(&handles, leader).await;
    let ok = wait_until(WAIT, || {
        let handles = handles.clone();
        let want = want.clone();
        async move { (try_dump(&handles, victim).await == Some(want)).then_some(()) }
    })
    .await;
    if ok.is_none() {
        let got = try_dump(&handles, victim).await;
        let (w, g) = (want.lines().count(), got.as_ref().map(|g| g.lines().count()));
        let failed = match c.handle(victim) {
            Some(h) => h.status().await.ok().and_then(|s| s.apply_failed),
            None => None,
        };
        panic!(
            "restarted follower differs: leader dump {w} lines, victim {g:?}; victim apply failure {failed:?}; victim {:?}; leader {:?}",
            c.handle(victim).map(|h| h.metrics()),
            c.handle(leader).map(|h| h.metrics())
        );
    }
    let vm = c.handle(victim).unwrap().metrics();
    assert!(!require_snapshot || vm.snapshots_installed >= 1, "the victim did not need a snapshot: {vm:?}");
    for id in &ids {
        let h = handles.lock().unwrap()[id].clone();
        tokio::task::spawn_blocking(move || db_common::integrity_ok(&h, "app.db")).await.unwrap();
    }
    c.shutdown_all().await;
}
