//! The leader's delayed commit-index notice (`RuntimeOptions::commit_notice_delay`): an idle
//! follower still learns every commit without a heartbeat, and under steady writes the next
//! AppendEntries carries the commit index, so the notice (an empty AppendEntries and its
//! answer) is mostly not sent at all.

mod runtime_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dqlite_node::raft::{MessageBody, NodeId};
use dqlite_node::runtime::harness::{seed_from_env, wait_until};
use runtime_common::*;

/// An empty AppendEntries from `leader`: in the replicate state, only the commit notice.
fn is_notice(m: &dqlite_node::raft::Message, leader: NodeId) -> bool {
    m.from == leader && matches!(&m.body, MessageBody::AppendEntries(a) if a.entries.is_empty())
}

/// A 3-node cluster whose leader's first write is applied everywhere.
async fn settled(
    seed: u64,
    tune: impl Fn(&mut dqlite_node::runtime::RuntimeOptions) + Send + Sync + 'static,
) -> (KvTestCluster, dqlite_node::runtime::harness::KvCluster, Vec<NodeId>, NodeId) {
    let (c, kv) = kv_cluster(3, seed, 0, tune).await;
    let ids = c.ids();
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let (_, p) = c.propose(b"warm=1".to_vec(), WAIT).await.unwrap();
    wait_applied(&kv, &ids, p.index.0).await;
    (c, kv, ids, leader)
}

/// Counts from now on the commit notices `leader` sends; heartbeats get through only if
/// `heartbeats`.
fn count_notices(c: &KvTestCluster, leader: NodeId, heartbeats: bool) -> Arc<AtomicU64> {
    let notices = Arc::new(AtomicU64::new(0));
    let n = notices.clone();
    c.net().set_filter(Some(Box::new(move |m| {
        if is_notice(m, leader) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        heartbeats || !matches!(m.body, MessageBody::Heartbeat(_))
    })));
    notices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_follower_learns_a_commit_from_the_delayed_notice_alone() {
    let seed = seed_from_env("RUNTIME_SEED", 91);
    let (mut c, kv, ids, leader) = settled(seed, |_| {}).await;
    // From now on no heartbeat gets through: followers can learn the next commit only from
    // an AppendEntries, and no later entry is written.
    let notices = count_notices(&c, leader, false);
    let (_, p) = c.propose(b"k=1".to_vec(), WAIT).await.unwrap();
    // Well inside the election timeout (500 ms): the followers must not need one.
    let applied = wait_until(Duration::from_millis(400), || async {
        ids.iter().all(|i| kv.slot(*i).snapshot().applied >= p.index).then_some(())
    })
    .await;
    let now: Vec<(NodeId, u64)> = ids.iter().map(|i| (*i, kv.slot(*i).snapshot().applied.0)).collect();
    c.net().set_filter(None);
    assert!(applied.is_some(), "followers did not learn commit {} without heartbeats: {now:?}", p.index.0);
    assert!(notices.load(Ordering::Relaxed) >= 2, "the commit reached the followers without a notice?");
    c.shutdown_all().await;
}

/// Proposes `n` entries one after another, each once the leader applied the one before (as
/// a single client does), and counts the commit notices the leader sent meanwhile.
async fn notices_under_steady_writes(delay: Duration, seed: u64, n: u32) -> (u64, u32) {
    let (mut c, kv, ids, leader) = settled(seed, move |o| o.commit_notice_delay = delay).await;
    let notices = count_notices(&c, leader, true);
    let mut last = 0;
    for i in 0..n {
        let (at, p) = c.propose(format!("k{i}={i}").into_bytes(), WAIT).await.unwrap();
        assert_eq!(at, leader, "leadership moved during the test (seed {seed})");
        let h = c.handle(leader).unwrap();
        let ok = wait_until(WAIT, || async { (h.metrics().applied_index >= p.index.0).then_some(()) }).await;
        assert!(ok.is_some(), "entry {} not applied on the leader", p.index.0);
        last = p.index.0;
    }
    let sent = notices.load(Ordering::Relaxed);
    c.net().set_filter(None);
    // The notices delayed or not, every follower ends with every entry applied.
    wait_applied(&kv, &ids, last).await;
    assert_converged(&kv, &ids).await;
    c.shutdown_all().await;
    (sent, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_writes_carry_the_commit_index_without_notices() {
    let seed = seed_from_env("RUNTIME_SEED", 92);
    // The writer's next entry follows each commit within one poll of `wait_until` (5 ms): a
    // delay longer than that finds the followers already told, most of the time.
    let (eager, n) = notices_under_steady_writes(Duration::ZERO, seed, 60).await;
    let (lazy, _) = notices_under_steady_writes(Duration::from_millis(40), seed, 60).await;
    eprintln!("commit notices for {n} sequential writes: immediate {eager}, delayed 40 ms {lazy}");
    // Immediate: about one per follower per write.
    assert!(eager >= u64::from(n), "immediate notices: {eager} for {n} writes");
    assert!(lazy * 3 < eager, "delayed notices were not saved: {lazy} delayed vs {eager} immediate");
}

/// A follower stopped gracefully right after a commit it has not learned yet waits (bounded)
/// for the commit and applies it, so its files hold every write acknowledged before it
/// stopped (`server_node_sql` once found a stopped follower's file one row short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopping_gracefully_applies_the_commits_before_it() {
    let seed = seed_from_env("RUNTIME_SEED", 93);
    // Tick 100 ms: the follower's drain bound (4 ticks) is well past the 100 ms notice.
    let (mut c, kv, ids, leader) = settled(seed, |o| {
        o.network_latency = Duration::from_millis(20);
        o.commit_notice_delay = Duration::from_millis(100);
    })
    .await;
    let _notices = count_notices(&c, leader, false);
    let (_, p) = c.propose(b"k=1".to_vec(), WAIT).await.unwrap();
    let h = c.handle(leader).unwrap().clone();
    let ok = wait_until(WAIT, || async { (h.metrics().applied_index >= p.index.0).then_some(()) }).await;
    assert!(ok.is_some(), "entry {} not applied on the leader", p.index.0);
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let before = kv.slot(follower).snapshot().applied.0;
    c.shutdown(follower).await;
    let after = kv.slot(follower).snapshot().applied.0;
    c.net().set_filter(None);
    assert!(
        after >= p.index.0,
        "follower {follower} stopped having applied {after} (had {before}) of the committed {} (seed {seed})",
        p.index.0
    );
    c.shutdown_all().await;
}
