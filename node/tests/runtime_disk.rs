//! Group commit, metadata saves, a full disk and a failed fsync, on the in-process cluster.

mod runtime_common;

use std::time::Duration;

use dqlite_node::raft::NodeId;
use dqlite_node::replication::ProposeError;
use dqlite_node::runtime::harness::wait_until;
use runtime_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_log_syncs_and_commits_save_no_metadata() {
    let (mut c, kv) = kv_cluster(3, 11, 0, |_| {}).await;
    let ids = c.ids();
    let leader = settled_leader(&c, &ids).await;
    let before: Vec<_> = ids.iter().map(|i| c.handle(*i).unwrap().metrics()).collect();
    let ops_before = c.disk(leader).unwrap().ops();
    const N: usize = 400;
    let h = c.handle(leader).unwrap().clone();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = h.clone();
        // Blocking SQLite-like threads calling the Replicator.
        tasks.push(std::thread::spawn(move || {
            use dqlite_node::replication::Replicator;
            let mut last = 0;
            for i in 0..N / 8 {
                last = h.propose(format!("t{t}-{i}=x").into_bytes()).expect("propose").index.0;
            }
            last
        }));
    }
    let last = tasks.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    wait_applied(&kv, &ids, last).await;
    assert_converged(&kv, &ids).await;
    let li = ids.iter().position(|i| *i == leader).unwrap();
    let m = h.metrics();
    let appends = m.log_appends - before[li].log_appends;
    let ops = c.disk(leader).unwrap().ops() - ops_before;
    eprintln!("leader: {N} proposals, {appends} log appends (one fdatasync each), {ops} disk operations");
    assert_eq!(m.proposals - before[li].proposals, N as u64);
    assert!(appends < N as u64 / 2, "{appends} appends for {N} proposals: no group commit");
    // Every operation point (write, sync, ...) counted: far fewer than one sync per proposal.
    assert!(ops < N as u64, "{ops} disk operations for {N} proposals");
    for (k, id) in ids.iter().enumerate() {
        let now = c.handle(*id).unwrap().metrics();
        assert_eq!(now.meta_saves, before[k].meta_saves, "node {id} saved metadata for commits");
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_writers_small_appends_skip_the_storage_thread_and_big_ones_do_not() {
    let (mut c, kv) = kv_cluster(3, 12, 0, |_| {}).await;
    let ids = c.ids();
    settled_leader(&c, &ids).await;
    let before: Vec<_> = ids.iter().map(|i| c.handle(*i).unwrap().metrics()).collect();
    // One proposal at a time, each applied everywhere before the next: the storage threads
    // are idle whenever an entry comes, so every node's Raft task appends it itself.
    const N: u64 = 20;
    let mut last = 0;
    for i in 0..N {
        let (_, p) = c.propose(format!("k{i}=v").into_bytes(), WAIT).await.unwrap();
        last = p.index.0;
        wait_runtime_applied(&c, &ids, last).await;
    }
    for (k, id) in ids.iter().enumerate() {
        let m = c.handle(*id).unwrap().metrics();
        let inline = m.inline_appends - before[k].inline_appends;
        let appends = m.log_appends - before[k].log_appends;
        eprintln!("node {id}: {appends} appends, {inline} by the Raft task");
        assert!(inline >= N - 2, "node {id}: only {inline} of {appends} appends skipped the storage thread");
    }
    // An entry of more than the inline limit (32 KiB) goes through the storage thread.
    let mid: Vec<_> = ids.iter().map(|i| c.handle(*i).unwrap().metrics()).collect();
    let big = format!("big={}", "x".repeat(100 << 10)).into_bytes();
    let (_, p) = c.propose(big, WAIT).await.unwrap();
    wait_runtime_applied(&c, &ids, p.index.0).await;
    for (k, id) in ids.iter().enumerate() {
        let m = c.handle(*id).unwrap().metrics();
        assert!(m.log_appends > mid[k].log_appends, "node {id} did not append the big entry");
        assert_eq!(m.inline_appends, mid[k].inline_appends, "node {id} appended a 100 KiB entry on its Raft task");
    }
    let states = wait_applied(&kv, &ids, p.index.0.max(last)).await;
    assert!(states.iter().all(|s| s.map.len() as u64 == N + 1), "not every write was applied everywhere");
    assert_converged(&kv, &ids).await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_with_disk_full_and_recovers() {
    let (mut c, kv) = kv_cluster(3, 12, 0, |_| {}).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let h = c.handle(leader).unwrap().clone();
    let p = h.propose_async(b"a=1".to_vec()).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    let disk = c.disk(leader).unwrap().clone();
    disk.set_capacity(Some(disk.used_bytes()));
    // An entry larger than a segment needs a new file: ENOSPC.
    let big = h.propose_async(vec![b'b'; 100 * 1024]).await.expect("handed off");
    let refused = wait_until(WAIT, || async {
        match h.propose_async(b"c=1".to_vec()).await {
            Err(ProposeError::DiskFull { reason }) => Some(reason),
            _ => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                None
            }
        }
    })
    .await
    .expect("DiskFull while the disk is full");
    assert!(refused.contains("disk full"), "{refused}");
    let st = h.status().await.unwrap();
    assert!(st.disk_full.is_some() && st.poisoned.is_none(), "{st:?}");
    assert!(h.metrics().disk_full);
    // Reads keep working: the local state machine still serves what it has applied.
    assert_eq!(kv.slot(leader).snapshot().map.get(b"a".as_slice()), Some(&b"1".to_vec()));
    // Space returns: the held entry is written, applied everywhere, and writes go through.
    disk.set_capacity(None);
    wait_applied(&kv, &ids, big.index.0).await;
    let p = wait_until(WAIT, || async { h.propose_async(b"d=1".to_vec()).await.ok() }).await.expect("writes again");
    wait_applied(&kv, &ids, p.index.0).await;
    let s = assert_converged(&kv, &ids).await;
    assert_eq!(s.map.get(b"d".as_slice()), Some(&b"1".to_vec()));
    tokio::time::timeout(WAIT, h.read_index()).await.expect("read index in time").expect("read index");
    assert!(!h.metrics().disk_full);
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_poisons_writes_and_the_cluster_moves_on() {
    let (mut c, kv) = kv_cluster(3, 13, 0, |_| {}).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let h = c.handle(leader).unwrap().clone();
    let p = h.propose_async(b"a=1".to_vec()).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    c.disk(leader).unwrap().fail_nth_sync(1);
    let _ = h.propose_async(b"b=1".to_vec()).await;
    let reason = wait_until(WAIT, || async { h.status().await.ok().and_then(|s| s.poisoned) }).await.expect("poisoned");
    assert!(reason.contains("fsync"), "{reason}");
    assert!(h.metrics().poisoned);
    match h.propose_async(b"c=1".to_vec()).await {
        Err(ProposeError::Unavailable { reason }) => assert!(reason.contains("fsync"), "{reason}"),
        Err(ProposeError::NotLeader { .. }) => {}
        other => panic!("poisoned node took a write: {other:?}"),
    }
    // The others elect a leader and keep taking writes; the poisoned node still serves its
    // (committed) state for reads.
    let rest: Vec<NodeId> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new = wait_until(WAIT, || async {
        rest.iter().copied().find(|i| c.handle(*i).unwrap().role().role == dqlite_node::raft::StateRole::Leader)
    })
    .await
    .expect("a new leader");
    let p = wait_until(WAIT, || async { c.handle(new).unwrap().propose_async(b"d=2".to_vec()).await.ok() })
        .await
        .expect("cluster writes");
    wait_applied(&kv, &rest, p.index.0).await;
    assert!(kv.slot(leader).snapshot().map.contains_key(b"a".as_slice()));
    assert!(matches!(
        h.propose_async(b"e=1".to_vec()).await,
        Err(ProposeError::Unavailable { .. } | ProposeError::NotLeader { .. })
    ));
    c.shutdown_all().await;
}
