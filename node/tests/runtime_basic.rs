//! The runtime end to end on an in-process 3-node cluster (memory transport, MemDisk storage).

mod runtime_common;

use std::collections::BTreeSet;

use dqlite_node::raft::{EntryKind, NodeId, StateRole};
use dqlite_node::replication::{ProposeError, Replicator};
use dqlite_node::runtime::harness::seed_from_env;
use runtime_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_apply_the_same_sequence() {
    let seed = seed_from_env("RUNTIME_SEED", 1);
    let (mut c, kv) = kv_cluster(3, seed, 0, |_| {}).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.expect("a leader");
    let mut last = 0;
    for i in 0..50u32 {
        let (_, p) = c.propose(format!("k{}=v{i}", i % 7).into_bytes(), WAIT).await.expect("proposed");
        last = p.index.0;
    }
    let states = wait_applied(&kv, &ids, last).await;
    assert_eq!(states[0].commands, 50);
    let s = assert_converged(&kv, &ids).await;
    assert_eq!(s.map.len(), 7);
    assert_eq!(s.map[&b"k0".to_vec()], b"v49".to_vec());
    // Every node saw the leader in its role events, before the entries it applied as leader.
    for id in &ids {
        let roles = kv.slot(*id).roles();
        assert!(roles.iter().any(|r| r.2 == Some(leader)), "{id}: {roles:?}");
    }
    let lr = kv.slot(leader).roles();
    assert!(lr.iter().any(|r| r.0 == StateRole::Leader));
    // Handle views.
    let h = c.handle(leader).unwrap();
    assert_eq!(h.leader().map(|l| l.0), Some(leader));
    assert_eq!(h.leader().map(|l| l.1), Some(format!("mem://{leader}")));
    assert_eq!(h.configuration().voters().collect::<BTreeSet<_>>(), ids.iter().copied().collect());
    let st = h.status().await.unwrap();
    assert_eq!(st.raft.role, StateRole::Leader);
    assert!(h.describe().await.unwrap().contains("Leader"));
    // Barrier and read index on the leader; NotLeader elsewhere.
    let b = h.barrier().await.expect("barrier");
    assert!(b.0 > last);
    let r = h.read_index().await.expect("read index");
    assert!(r >= b);
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let f = c.handle(follower).unwrap().clone();
    assert!(
        matches!(f.propose_async(b"x".to_vec()).await, Err(ProposeError::NotLeader { leader: Some(l) }) if l == leader)
    );
    assert!(f.read_index().await.is_err());
    // The blocking Replicator API from a std thread.
    let lh = h.clone();
    let p = std::thread::spawn(move || lh.propose(b"blocking=1".to_vec())).join().unwrap().expect("blocking propose");
    wait_applied(&kv, &ids, p.index.0).await;
    let _ = EntryKind::Command;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_proposal_is_refused() {
    let (mut c, _kv) = kv_cluster(1, 3, 0, |o| o.max_entry_bytes = 16).await;
    let l = c.wait_for_leader(WAIT).await.unwrap();
    let h = c.handle(l).unwrap();
    assert!(matches!(
        h.propose_async(vec![0; 17]).await,
        Err(ProposeError::TooLarge { size_bytes: 17, limit_bytes: 16 })
    ));
    h.propose_async(vec![1; 16]).await.unwrap();
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_leadership_over() {
    let (mut c, kv) = kv_cluster(3, 4, 0, |_| {}).await;
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let (_, p) = c.propose(b"a=1".to_vec(), WAIT).await.unwrap();
    wait_applied(&kv, &c.ids(), p.index.0).await;
    let t0 = std::time::Instant::now();
    c.shutdown(leader).await;
    let rest: Vec<NodeId> = c.ids().into_iter().filter(|i| *i != leader).collect();
    let new = c.wait_for_leader_among(&rest, WAIT).await.unwrap();
    assert_ne!(new, leader);
    // A handover, not an election timeout (election timeout is 500 ms here).
    eprintln!("handover took {:?}", t0.elapsed());
    let (_, p) = c.propose(b"b=2".to_vec(), WAIT).await.unwrap();
    wait_applied(&kv, &rest, p.index.0).await;
    c.shutdown_all().await;
}

/// `shutdown` returns only once the node let go of its store: a node started at once on the
/// same disk finds the directory lock free (the Raft task shares the store with the storage
/// thread, and its handle used to outlive the "stopped" signal by a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_on_its_disk_right_after_shutdown() {
    let (mut c, kv) = kv_cluster(1, 5, 0, |_| {}).await;
    let id = c.wait_for_leader(WAIT).await.unwrap();
    let mut last = 0;
    for round in 0..10 {
        let (_, p) = c.propose(format!("k={round}").into_bytes(), WAIT).await.unwrap();
        last = p.index.0;
        c.shutdown(id).await;
        c.restart(id).await.unwrap_or_else(|e| panic!("restart {round} right after shutdown: {e}"));
        c.wait_for_leader(WAIT).await.unwrap();
    }
    wait_applied(&kv, &[id], last).await;
    c.shutdown_all().await;
}
