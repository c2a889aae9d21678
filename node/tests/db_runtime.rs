//! The replicated databases on the real Raft runtime: 3 in-process nodes (memory transport,
//! MemDisk Raft storage; database files in temporary directories).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite_node::db::conn::DbHandle;
use dqlite_node::db::{Databases, DbConfig};
use dqlite_node::raft::NodeId;
use dqlite_node::replication::Replicator;
use dqlite_node::runtime::harness::{seed_from_env, Cluster};
use dqlite_node::storage::backend::CrashMode;
use dqlite_wire::Value;

const WAIT: Duration = Duration::from_secs(30);

type Slots = Arc<Mutex<HashMap<NodeId, DbHandle>>>;

type Factory = Box<dyn Fn(NodeId, Arc<dyn Replicator>) -> Databases + Send + Sync>;
type DbCluster = Cluster<Databases, Factory>;

async fn start(n: u64, seed: u64, dirs: HashMap<NodeId, PathBuf>, slots: Slots) -> DbCluster {
    let s = slots.clone();
    let factory: Factory = Box::new(move |id, replicator| {
        let mut cfg = DbConfig::default();
        cfg.checkpoint_every_entries = 25;
        let dbs = Databases::open(&dirs[&id], replicator, cfg).expect("databases open");
        s.lock().unwrap().insert(id, dbs.handle());
        dbs
    });
    Cluster::start(n, seed, factory, |o| o.network_latency = Duration::from_millis(5)).await.expect("cluster")
}

fn handle(slots: &Slots, id: NodeId) -> DbHandle {
    slots.lock().unwrap()[&id].clone()
}

fn dump_blocking(h: DbHandle, db: &str) -> String {
    let c = h.open(db).unwrap();
    let mut out = String::new();
    let tables = c
        .blocking_query_sql("SELECT name, sql FROM sqlite_master ORDER BY name", vec![])
        .unwrap()
        .blocking_collect()
        .unwrap();
    for t in tables {
        out.push_str(&format!("{t:?}\n"));
        if let Value::Text(name) = &t[0] {
            if !name.starts_with("sqlite_") {
                let rows = c.blocking_query_sql(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"), vec![]).unwrap();
                for r in rows.blocking_collect().unwrap() {
                    out.push_str(&format!("{r:?}\n"));
                }
            }
        }
    }
    let ok = c.blocking_query_sql("PRAGMA integrity_check", vec![]).unwrap().blocking_collect().unwrap();
    assert_eq!(ok, vec![vec![Value::Text("ok".into())]]);
    out
}

async fn dump(h: DbHandle, db: &'static str) -> String {
    tokio::task::spawn_blocking(move || dump_blocking(h, db)).await.unwrap()
}

async fn converge(slots: &Slots, ids: &[NodeId], db: &'static str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut dumps = Vec::new();
        for id in ids {
            dumps.push(dump(handle(slots, *id), db).await);
        }
        if dumps.iter().all(|d| *d == dumps[0]) {
            return dumps.swap_remove(0);
        }
        assert!(Instant::now() < deadline, "nodes did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_the_runtime_hold_identical_databases_across_a_crash() {
    let seed = seed_from_env("DB_RUNTIME_SEED", 7);
    println!("DB_RUNTIME_SEED={seed}");
    let tmp: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dirs: HashMap<NodeId, PathBuf> =
        (1..=3).map(|i| (NodeId(i), tmp[i as usize - 1].path().to_path_buf())).collect();
    let slots: Slots = Arc::default();
    let mut c = start(3, seed, dirs, slots.clone()).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.expect("leader");
    let h = handle(&slots, leader);
    let conn = tokio::task::spawn_blocking(move || h.open("app.db")).await.unwrap().unwrap();
    conn.exec_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB, d TEXT)", vec![]).await.unwrap();
    for _ in 0..20 {
        conn.exec_sql("INSERT INTO t(r, b, d) VALUES (random(), randomblob(64), datetime('now'))", vec![])
            .await
            .unwrap();
    }
    conn.exec_sql("BEGIN", vec![]).await.unwrap();
    conn.exec_sql("INSERT INTO t(r) VALUES (random())", vec![]).await.unwrap();
    conn.exec_sql("SAVEPOINT s; INSERT INTO t(r) VALUES (0); ROLLBACK TO s; RELEASE s;", vec![]).await.unwrap();
    conn.exec_sql("COMMIT", vec![]).await.unwrap();
    let p = conn.prepare("SELECT count(*) FROM t WHERE r = ?").await.unwrap();
    assert_eq!(p.params, 1);
    let mut rows = conn.query(p.id, vec![Value::Integer(0)]).await.unwrap();
    assert_eq!(rows.next_batch().await.unwrap().unwrap(), vec![vec![Value::Integer(0)]]);
    conn.finalize(p.id).await.unwrap();
    let d = converge(&slots, &ids, "app.db").await;
    assert_eq!(d.lines().count(), 1 + 21);
    // A follower writes nothing.
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let fh = handle(&slots, follower);
    let fc = tokio::task::spawn_blocking(move || fh.open("app.db")).await.unwrap().unwrap();
    assert_eq!(fc.exec_sql("INSERT INTO t(r) VALUES (1)", vec![]).await.unwrap_err().code(), 10250);
    drop(fc);
    // Crash the follower (its Raft storage loses what was not synced), write on, restart it.
    c.crash(follower, CrashMode::LOSE_UNSYNCED).await;
    for _ in 0..30 {
        conn.exec_sql("INSERT INTO t(r, b) VALUES (random(), randomblob(3000))", vec![]).await.unwrap();
    }
    c.restart(follower).await.expect("restart");
    let d2 = converge(&slots, &ids, "app.db").await;
    assert_eq!(d2.lines().count(), 1 + 51);
    drop(conn);
    c.shutdown_all().await;
}
