//! Failover benchmark (opt-in, not a timed assertion): SIGKILL the leader of a 3-node cluster
//! under a busy pool and measure the write unavailability, from the last write acknowledged
//! before the kill to the first write acknowledged after it, for our own nodes and for real
//! dqlite 1.11, measured the same way in the same run. Prints every run and the medians.
//!
//! ```text
//! cargo test -p dqlite --test failover_bench -- --ignored --nocapture
//! FAILOVER_RUNS=7 cargo test -p dqlite --test failover_bench -- --ignored --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite::testing::{launcher_by_name, Cluster};
use sqlx::Executor;
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};
use tokio::task::block_in_place;

use common::ELECTION_BOUND;

/// Concurrent writers through one pool (the "busy pool").
const WRITERS: usize = 4;

/// Acknowledgement instants of every writer.
type Acks = Arc<Mutex<Vec<Instant>>>;

async fn writer(pool: DqlitePool, worker: i64, stop: Arc<AtomicBool>, acks: Acks) {
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let id = worker * 1_000_000_000 + n;
        n += 1;
        // Errors are expected around the kill (outcome unknown, no leader yet): keep going.
        if sqlx::query("INSERT INTO ledger (id) VALUES (?)").bind(id).execute(&pool).await.is_ok() {
            if let Ok(mut a) = acks.lock() {
                a.push(Instant::now());
            }
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One run: a fresh cluster, the pool busy, the leader SIGKILLed; returns the unavailability.
async fn one_run(launcher: &str, run: usize) -> Duration {
    let mut cluster: Cluster = block_in_place(|| {
        launcher_by_name(launcher)
            .and_then(|l| l.start(3))
            .unwrap_or_else(|e| panic!("{launcher} launcher could not start 3 nodes: {e}"))
    });
    let url = cluster.url_with("failover_bench.db", "leader_timeout=60s");
    let pool = DqlitePoolOptions::new().max_connections(WRITERS as u32).connect(&url).await.unwrap();
    pool.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY)").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let tasks: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(writer(pool.clone(), w as i64, stop.clone(), acks.clone()))).collect();
    // Busy first: wait (bounded) for a steady stream of acknowledgements.
    let deadline = Instant::now() + ELECTION_BOUND;
    while acks.lock().map(|a| a.len()).unwrap_or(0) < 200 {
        assert!(Instant::now() < deadline, "{launcher}: the pool never got busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = block_in_place(|| {
        let leader = cluster.wait_for_leader(ELECTION_BOUND).expect("a leader");
        cluster.kill(leader).expect("SIGKILL the leader");
        Instant::now()
    });
    // Wait (bounded) for the first acknowledgement after the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_after = loop {
        let first = acks.lock().ok().and_then(|a| a.iter().copied().filter(|t| *t > killed_at).min());
        if let Some(t) = first {
            break t;
        }
        assert!(Instant::now() < deadline, "{launcher}: no write acknowledged within 60 s of the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let last_before = acks
        .lock()
        .ok()
        .and_then(|a| a.iter().copied().filter(|t| *t <= killed_at).max())
        .expect("acknowledgements before the kill");
    let gap = first_after - last_before;
    eprintln!("{launcher} run {run}: write unavailability {gap:?} (kill→first ack {:?})", first_after - killed_at);
    pool.close().await;
    gap
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn failover_write_unavailability_ours_vs_real_dqlite() {
    common::init_tracing();
    let runs: usize = std::env::var("FAILOVER_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let mut results = Vec::new();
    for launcher in ["own", "real"] {
        let mut gaps = Vec::new();
        for run in 1..=runs {
            gaps.push(one_run(launcher, run).await);
        }
        let all: Vec<String> = gaps.iter().map(|g| format!("{:.0} ms", g.as_secs_f64() * 1000.0)).collect();
        let m = median(gaps);
        eprintln!("{launcher}: median write unavailability over {runs} runs: {m:?} ({})", all.join(", "));
        results.push((launcher, m));
    }
    let (own, real) = (results[0].1, results[1].1);
    eprintln!(
        "failover medians: own {:.0} ms, real dqlite {:.0} ms (ratio own/real {:.2})",
        own.as_secs_f64() * 1000.0,
        real.as_secs_f64() * 1000.0,
        own.as_secs_f64() / real.as_secs_f64()
    );
}
