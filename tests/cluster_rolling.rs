//! Operations on a live cluster, each test on a cluster of its own: a rolling restart of every
//! node (SIGTERM, restart, next) under a write load, and a transaction of several megabytes
//! that must commit without costing the leader its leadership.
//!
//! The rolling restart always runs against our own nodes: real dqlite 1.11 fails it (a write
//! in flight when `dqlite-demo` gets SIGTERM fails with code 7 "no more rows available", which
//! no driver can retry safely). The big transaction runs against the launcher of
//! `DQLITE_TEST_LAUNCHER` (`.ci/run` runs this file with `own` as well as the default `real`).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};
use tokio::task::block_in_place;

use common::ELECTION_BOUND;

/// Writes rows with client-chosen ids until told to stop. Every request must succeed (the
/// driver retries what is safe to retry by itself): a failure ends the writer with an error.
async fn writer(
    pool: DqlitePool,
    first_id: i64,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicU64>,
) -> Result<Vec<i64>, String> {
    let mut acked = Vec::new();
    let mut id = first_id;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            return Err("the writer ran for 300 s without being stopped".into());
        }
        match sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'rolling')").bind(id).execute(&pool).await {
            Ok(_) => {
                acked.push(id);
                acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("write {id} failed (after {} acknowledged): {e:?}", acked.len())),
        }
        id += 1;
    }
    Ok(acked)
}

async fn ids(pool: &DqlitePool) -> BTreeSet<i64> {
    sqlx::query_scalar("SELECT id FROM ledger").fetch_all(pool).await.unwrap().into_iter().collect()
}

/// Waits (bounded) until the writer got `more` further acknowledgements: the cluster serves
/// writes again.
async fn wait_for_progress(
    acked: &AtomicU64,
    more: u64,
    what: &str,
    load: &mut tokio::task::JoinHandle<Result<Vec<i64>, String>>,
) {
    let base = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + ELECTION_BOUND;
    while acked.load(Ordering::Relaxed) < base + more {
        if load.is_finished() {
            match load.await {
                Ok(Err(e)) => panic!("{what}: {e}"),
                other => panic!("{what}: the writer ended early: {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "{what}: no write acknowledged for {ELECTION_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_no_acknowledged_write() {
    common::init_tracing();
    let mut cluster = block_in_place(|| {
        dqlite::testing::launcher_by_name("own")
            .and_then(|l| l.start(3))
            .unwrap_or_else(|e| panic!("own launcher could not start 3 nodes: {e}"))
    });
    let pool = DqlitePoolOptions::new().max_connections(4).connect(&cluster.url("rolling.db")).await.unwrap();
    pool.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT NOT NULL)").await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut load = tokio::spawn(writer(pool.clone(), 1, stop.clone(), acked.clone()));
    wait_for_progress(&acked, 20, "before the restarts", &mut load).await;

    for i in 0..3 {
        let t = Instant::now();
        let code = block_in_place(|| cluster.terminate(i)).unwrap_or_else(|e| panic!("SIGTERM node {i}: {e}"));
        assert_eq!(code, 0, "node {i} exit status after SIGTERM");
        let stopped = t.elapsed();
        // The two others keep serving writes while it is down.
        wait_for_progress(&acked, 10, &format!("node {i} down"), &mut load).await;
        block_in_place(|| {
            cluster.restart(i).unwrap_or_else(|e| panic!("restart node {i}: {e}"));
            // Back as a voter in the leader's configuration, with a leader elected.
            cluster.wait_for_voters(3, ELECTION_BOUND).unwrap_or_else(|e| panic!("node {i} a voter again: {e}"));
            cluster.wait_for_leader(ELECTION_BOUND).expect("a leader after the restart");
        });
        wait_for_progress(&acked, 10, &format!("node {i} restarted"), &mut load).await;
        eprintln!("node {i}: stopped in {stopped:?}, back and serving after {:?}", t.elapsed());
    }

    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let present = ids(&pool).await;
    let lost: Vec<&i64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!("{} writes acknowledged through 3 restarts, none lost", acked.len());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_transaction_commits_and_the_leader_keeps_leading() {
    let mut cluster = block_in_place(|| common::start_cluster(3));
    let leader = block_in_place(|| cluster.wait_for_leader(ELECTION_BOUND)).expect("a leader");
    let pool = DqlitePoolOptions::new().max_connections(2).connect(&cluster.url("big.db")).await.unwrap();
    // About 600,000 rows of ~12 bytes: one commit of several megabytes of pages (one Raft
    // entry on our nodes). Before the transport encoded byte payloads in one copy, encoding
    // and decoding such an entry held the async workers for over a second, the followers'
    // election timers fired, and the commit failed with LEADERSHIP_LOST.
    pool.execute(
        "CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 600000) \
         SELECT x, x * 7919 AS y FROM c",
    )
    .await
    .expect("the big transaction commits");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM big").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 600_000);
    let now = block_in_place(|| cluster.wait_for_leader(ELECTION_BOUND)).expect("a leader");
    assert_eq!(now, leader, "the big commit cost node {leader} its leadership");
    // A small write right after commits as usual.
    pool.execute("INSERT INTO big (x, y) VALUES (0, 0)").await.unwrap();
    pool.close().await;
}
