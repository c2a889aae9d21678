//! Network faults through the memory transport: drops and delays, a partitioned leader whose
//! pending proposal is overwritten (its state machine hears the role change first).

mod runtime_common;

use std::time::Duration;

use dqlite_node::raft::{NodeId, StateRole};
use dqlite_node::runtime::harness::{seed_from_env, wait_until};
use runtime_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_network_still_replicates_identically() {
    let seed = seed_from_env("RUNTIME_SEED", 61);
    let (mut c, kv) = kv_cluster(3, seed, 5, |_| {}).await;
    let ids = c.ids();
    c.net().set_drop_rate(0.1);
    c.net().set_delay(Duration::from_millis(1), Duration::from_millis(4));
    let mut last = 0;
    for i in 0..60u32 {
        let (_, p) = c.propose(format!("k{}={i}", i % 6).into_bytes(), WAIT).await.expect("proposal");
        last = p.index.0;
    }
    wait_applied(&kv, &ids, last).await;
    let s = assert_converged(&kv, &ids).await;
    assert!(s.commands >= 60);
    assert!(c.net().stats().dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_hears_of_its_demotion_before_its_entry_is_overwritten() {
    let seed = seed_from_env("RUNTIME_SEED", 62);
    let (mut c, kv) = kv_cluster(3, seed, 0, |_| {}).await;
    let ids = c.ids();
    let old = c.wait_for_leader(WAIT).await.unwrap();
    let (_, p) = c.propose(b"base=1".to_vec(), WAIT).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    let old_term = c.handle(old).unwrap().role().term;
    c.net().isolate(old);
    // Accepted by the isolated leader, never committed.
    let lost = c.handle(old).unwrap().propose_async(b"lost=1".to_vec()).await.expect("handed off");
    let rest: Vec<NodeId> = ids.iter().copied().filter(|i| *i != old).collect();
    let new = c.wait_for_leader_among(&rest, WAIT).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        let h = c.handle(new).unwrap();
        last = h.propose_async(format!("new{i}=1").into_bytes()).await.unwrap().index.0;
    }
    assert!(last >= lost.index.0);
    c.net().heal();
    wait_applied(&kv, &ids, last).await;
    let s = assert_converged(&kv, &ids).await;
    assert!(!s.map.contains_key(b"lost".as_slice()), "an uncommitted entry was applied");
    // The old leader's state machine was told it no longer leads before anything at the lost
    // proposal's index was applied.
    let roles = kv.slot(old).roles();
    let demoted = roles
        .iter()
        .find(|r| r.0 != StateRole::Leader && r.1 >= old_term && r.3 < lost.index)
        .unwrap_or_else(|| panic!("no demotion before index {}: {roles:?}", lost.index));
    assert!(demoted.3 < lost.index);
    let lead = wait_until(WAIT, || async { c.handle(old).unwrap().leader() }).await.unwrap();
    assert_ne!(lead.0, old);
    c.shutdown_all().await;
}
