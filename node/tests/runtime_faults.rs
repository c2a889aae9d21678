//! Crashes on the in-process cluster: a leader crash loses nothing acknowledged; followers
//! crashed at random points under load (unsynced data lost, kept or torn) catch up to identical
//! state. Seeded: `RUNTIME_SEED` replays one seed, `RUNTIME_SEEDS` sets how many run.

mod runtime_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite_node::raft::NodeId;
use dqlite_node::runtime::harness::{seed_from_env, wait_until, TestRng};
use dqlite_node::storage::backend::CrashMode;
use runtime_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_loses_no_acknowledged_proposal() {
    let seed = seed_from_env("RUNTIME_SEED", 21);
    let (mut c, kv) = kv_cluster(3, seed, 7, |_| {}).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let h = c.handle(leader).unwrap().clone();
    // Load: proposals go on while the leader crashes.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (h, stop, sent) = (h.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if h.propose_async(format!("p{i}=1").into_bytes()).await.is_err() {
                    break;
                }
                i += 1;
                sent.store(i, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    wait_until(WAIT, || async { (kv.slot(leader).snapshot().commands >= 50).then_some(()) }).await.unwrap();
    // Acknowledged = applied on the leader (committed) before the crash.
    let acked = kv.slot(leader).snapshot();
    let t0 = Instant::now();
    c.crash(leader, CrashMode::LOSE_UNSYNCED).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let rest: Vec<NodeId> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new = c.wait_for_leader_among(&rest, WAIT).await.unwrap();
    eprintln!("leader {leader} crashed: new leader {new} after {:?} (election timeout 500 ms)", t0.elapsed());
    assert_ne!(new, leader);
    let (_, p) = c.propose(b"after=1".to_vec(), WAIT).await.unwrap();
    c.restart(leader).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    let s = assert_converged(&kv, &ids).await;
    for (k, v) in &acked.map {
        assert_eq!(s.map.get(k), Some(v), "acknowledged {:?} lost", String::from_utf8_lossy(k));
    }
    assert!(acked.commands >= 50 && s.commands > acked.commands);
    c.shutdown_all().await;
}

/// One seed: 3 nodes under a write load; a random follower crashes at a random disk operation
/// (or at once), comes back with unsynced data lost, kept or torn, and catches up.
async fn follower_crash_run(seed: u64) {
    let mut rng = TestRng::new(seed);
    let compact = rng.below(2) == 0;
    let (mut c, kv) = kv_cluster(3, seed, 1 + rng.below(8), move |o| {
        o.network_latency = Duration::from_millis(2);
        if compact {
            o.snapshot_threshold = 8;
            o.trailing_entries = 2;
        }
    })
    .await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let followers: Vec<NodeId> = ids.iter().copied().filter(|i| *i != leader).collect();
    let victim = followers[rng.below(2) as usize];
    let h = c.handle(leader).unwrap().clone();
    let total = 20 + rng.below(30);
    let load = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..total {
            match h.propose_async(format!("k{}={i}", i % 5).into_bytes()).await {
                Ok(p) => last = p.index.0,
                Err(e) => panic!("seed {seed}: proposal {i}: {e}"),
            }
            if i % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        last
    });
    let disk = c.disk(victim).unwrap().clone();
    let at = disk.ops() + 1 + rng.below(40);
    disk.crash_at(at);
    // Bounded: if the load ends first, crash now.
    let _ = wait_until(Duration::from_secs(2), || async { disk.has_crashed().then_some(()) }).await;
    let mode = match rng.below(3) {
        0 => CrashMode::LOSE_UNSYNCED,
        1 => CrashMode::KEEP_UNSYNCED,
        _ => CrashMode { keep_unsynced: rng.below(2) == 0, tear_inflight: Some(rng.below(200) as usize) },
    };
    c.crash(victim, mode).await;
    if rng.below(2) == 0 {
        tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
    }
    c.restart(victim).await.unwrap_or_else(|e| panic!("seed {seed}: restart of {victim} after {mode:?}: {e}"));
    let last = load.await.unwrap();
    wait_applied(&kv, &ids, last).await;
    let s = assert_converged(&kv, &ids).await;
    assert_eq!(s.commands, total, "seed {seed}");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_crashed_at_random_points_catch_up_to_identical_state() {
    let base = seed_from_env("RUNTIME_SEED", 1000);
    let n: u64 = std::env::var("RUNTIME_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let t0 = Instant::now();
    for seed in base..base + n {
        follower_crash_run(seed).await;
    }
    eprintln!("{n} seeds from {base} in {:?}", t0.elapsed());
}

/// Opt-in (`RUNTIME_LONG=1`): write unavailability after a leader crash with the LAN defaults
/// (heartbeat 100 ms, election timeout 1 s): from the crash to the first write acknowledged by
/// the new leader, median of 5 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_write_unavailability_with_lan_defaults() {
    if std::env::var("RUNTIME_LONG").is_err() {
        eprintln!("skipped: set RUNTIME_LONG=1");
        return;
    }
    let mut times = Vec::new();
    for run in 0..5u64 {
        let kv = dqlite_node::runtime::harness::KvCluster::new(0);
        let f: KvFactory = Box::new(kv.factory());
        let mut c = dqlite_node::runtime::harness::Cluster::start(3, 100 + run, f, |_| {}).await.unwrap();
        let leader = c.wait_for_leader(WAIT).await.unwrap();
        c.propose(b"a=1".to_vec(), WAIT).await.unwrap();
        let t0 = Instant::now();
        c.crash(leader, CrashMode::LOSE_UNSYNCED).await;
        c.propose(b"b=1".to_vec(), WAIT).await.unwrap();
        let p = c.propose(b"c=1".to_vec(), WAIT).await.unwrap();
        wait_applied(&kv, &[p.0], p.1.index.0).await;
        times.push(t0.elapsed());
        c.shutdown_all().await;
    }
    times.sort();
    eprintln!("write unavailability after a leader crash (LAN defaults): median {:?}, all {times:?}", times[2]);
}
