//! Snapshots and compaction: memory stays bounded, a follower behind the compaction point
//! catches up by snapshot, a corrupted chunk is refused and the image fetched again.

mod runtime_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dqlite_node::raft::{MessageBody, NodeId};
use dqlite_node::runtime::harness::wait_until;
use dqlite_node::storage::backend::CrashMode;
use runtime_common::*;

fn tune(o: &mut dqlite_node::runtime::RuntimeOptions) {
    o.snapshot_threshold = 32;
    o.trailing_entries = 8;
    o.snapshot_chunk_bytes = 64;
}

async fn lagging_follower(seed: u64, corrupt: bool) {
    let (mut c, kv) = kv_cluster(3, seed, 4, tune).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let victim = *ids.iter().find(|i| **i != leader).unwrap();
    c.crash(victim, CrashMode::LOSE_UNSYNCED).await;
    let mut last = 0;
    for i in 0..300u32 {
        let (_, p) = c.propose(format!("k{}=v{i}", i % 40).into_bytes(), WAIT).await.unwrap();
        last = p.index.0;
    }
    let live: Vec<NodeId> = ids.iter().copied().filter(|i| *i != victim).collect();
    wait_applied(&kv, &live, last).await;
    // Memory does not grow with the write history: once the writes are applied, the leader
    // holds about snapshot_threshold + trailing_entries entries, not 300.
    let lm = wait_until(WAIT, || async {
        let m = c.handle(leader).unwrap().metrics();
        (m.compacted_index > 200 && m.in_memory_entries <= 32 + 8 + 16).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("leader did not compact: {:?}", c.handle(leader).unwrap().metrics()));
    assert!(lm.snapshots_taken >= 1);
    let refused_chunks = Arc::new(AtomicU64::new(0));
    if corrupt {
        let n = refused_chunks.clone();
        c.net().set_filter(Some(Box::new(move |m| {
            if let MessageBody::InstallSnapshot(s) = &mut m.body {
                if m.to == victim && s.offset > 0 && !s.data.is_empty() && n.fetch_add(1, Ordering::Relaxed) == 0 {
                    s.data[0] ^= 0x40;
                }
            }
            true
        })));
    }
    c.restart(victim).await.unwrap();
    wait_applied(&kv, &ids, last).await;
    let s = assert_converged(&kv, &ids).await;
    assert_eq!(s.commands, 300);
    let vm = c.handle(victim).unwrap().metrics();
    assert!(vm.snapshots_installed >= 1, "{vm:?}");
    assert!(kv.slot(victim).restores() >= 1);
    assert!(!vm.apply_failed, "a damaged image reached the state machine");
    if corrupt {
        assert!(refused_chunks.load(Ordering::Relaxed) >= 1, "no chunk was corrupted");
        assert_eq!(vm.snapshots_refused, 1, "{vm:?}");
    } else {
        assert_eq!(vm.snapshots_refused, 0);
    }
    // The cluster keeps going after the transfer, and a restart of the victim rebuilds from its
    // own files (snapshot + log + checkpoint).
    let (_, p) = c.propose(b"after=1".to_vec(), WAIT).await.unwrap();
    c.crash(victim, CrashMode::LOSE_UNSYNCED).await;
    c.restart(victim).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    assert_converged(&kv, &ids).await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_the_compaction_point_catches_up_by_snapshot() {
    lagging_follower(31, false).await;
}

/// Large entries: the entry-count thresholds are never reached, so only the byte thresholds
/// (`snapshot_threshold_bytes`, `trailing_bytes`) bound the log the core holds in memory.
/// Without them every node held the whole write history (a 32-worker kvwrite run grew a node to
/// 573 MiB in 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_trigger_snapshots_and_compaction_by_bytes() {
    const VALUE: usize = 4096;
    let (mut c, kv) = kv_cluster(3, 34, 4, |o| {
        o.snapshot_threshold = 1_000_000;
        o.trailing_entries = 1_000_000;
        o.snapshot_threshold_bytes = 64 << 10;
        o.trailing_bytes = 16 << 10;
    })
    .await;
    let ids = c.ids();
    c.wait_for_leader(WAIT).await.unwrap();
    let value = "x".repeat(VALUE);
    let mut last = 0;
    for i in 0..300u32 {
        let (_, p) = c.propose(format!("k{}={value}", i % 40).into_bytes(), WAIT).await.unwrap();
        last = p.index.0;
    }
    wait_applied(&kv, &ids, last).await;
    // Every node (each snapshots on its own applied bytes): at most 64 KiB since the snapshot
    // plus 16 KiB behind the applied index, a few entries of slack: ~20 entries, not 300.
    let bound_entries = (64 + 16) * 1024 / VALUE as u64 + 8;
    for id in &ids {
        let m = wait_until(WAIT, || async {
            let m = c.handle(*id).unwrap().metrics();
            (m.compacted_index > 200 && m.in_memory_entries <= bound_entries).then_some(m)
        })
        .await
        .unwrap_or_else(|| panic!("node {id} did not compact by bytes: {:?}", c.handle(*id).unwrap().metrics()));
        assert!(m.snapshots_taken >= 1, "{m:?}");
        assert!(m.in_memory_bytes <= (64 + 16 + 8 * 5) << 10, "{m:?}");
        assert!(m.in_memory_bytes >= m.in_memory_entries.saturating_sub(2) * VALUE as u64, "{m:?}");
    }
    let s = assert_converged(&kv, &ids).await;
    assert_eq!(s.commands, 300);
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_snapshot_chunk_is_refused_and_fetched_again() {
    lagging_follower(32, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_after_compaction() {
    let (mut c, kv) = kv_cluster(3, 33, 5, tune).await;
    let ids = c.ids();
    c.wait_for_leader(WAIT).await.unwrap();
    let mut last = 0;
    for i in 0..150u32 {
        let (_, p) = c.propose(format!("k{}=v{i}", i % 9).into_bytes(), WAIT).await.unwrap();
        last = p.index.0;
    }
    wait_applied(&kv, &ids, last).await;
    let before = assert_converged(&kv, &ids).await;
    for id in &ids {
        c.crash(*id, CrashMode::LOSE_UNSYNCED).await;
    }
    for id in &ids {
        c.restart(*id).await.unwrap();
    }
    c.wait_for_leader(WAIT).await.unwrap();
    let (_, p) = c.propose(b"z=1".to_vec(), WAIT).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    let after = assert_converged(&kv, &ids).await;
    for (k, v) in &before.map {
        if k != b"z" {
            assert_eq!(after.map.get(k), Some(v));
        }
    }
    assert_eq!(after.commands, before.commands + 1);
    c.shutdown_all().await;
}
