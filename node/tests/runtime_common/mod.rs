//! Shared helpers of the runtime tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use dqlite_node::raft::NodeId;
use dqlite_node::replication::Replicator;
use dqlite_node::runtime::harness::{Cluster, KvCluster, KvState, KvStateMachine};
use dqlite_node::runtime::RuntimeOptions;

/// Bound on every wait in these tests (generous: CI machines are shared).
pub const WAIT: Duration = Duration::from_secs(20);

pub type KvFactory = Box<dyn Fn(NodeId, Arc<dyn Replicator>) -> KvStateMachine + Send + Sync>;
pub type KvTestCluster = Cluster<KvStateMachine, KvFactory>;

/// Starts `n` KV nodes with a fast timing (5 ms latency: heartbeat 50 ms, election 500 ms).
pub async fn kv_cluster(
    n: u64,
    seed: u64,
    checkpoint_every: u64,
    tune: impl Fn(&mut RuntimeOptions) + Send + Sync + 'static,
) -> (KvTestCluster, KvCluster) {
    let kv = KvCluster::new(checkpoint_every);
    let f = kv.factory();
    let factory: KvFactory = Box::new(f);
    let c = Cluster::start(n, seed, factory, move |o| {
        o.network_latency = Duration::from_millis(5);
        tune(o)
    })
    .await
    .expect("cluster starts");
    (c, kv)
}

/// Waits until every id in `ids` has applied at least `index`; returns their states.
pub async fn wait_applied(kv: &KvCluster, ids: &[NodeId], index: u64) -> Vec<KvState> {
    let got = dqlite_node::runtime::harness::wait_until(WAIT, || async {
        let states: Vec<KvState> = ids.iter().map(|i| kv.slot(*i).snapshot()).collect();
        states.iter().all(|s| s.applied.0 >= index).then_some(states)
    })
    .await;
    match got {
        Some(s) => s,
        None => {
            let now: Vec<(NodeId, u64)> = ids.iter().map(|i| (*i, kv.slot(*i).snapshot().applied.0)).collect();
            panic!("nodes did not apply {index} in time: {now:?}");
        }
    }
}

/// Asserts that the nodes' states are identical (map, digest, command count) once all of
/// them have applied the same index.
pub async fn assert_converged(kv: &KvCluster, ids: &[NodeId]) -> KvState {
    let got = dqlite_node::runtime::harness::wait_until(WAIT, || async {
        let states: Vec<KvState> = ids.iter().map(|i| kv.slot(*i).snapshot()).collect();
        let first = states[0].clone();
        states.iter().all(|s| *s == first).then_some(first)
    })
    .await;
    match got {
        Some(s) => s,
        None => {
            let now: Vec<(NodeId, u64, u64, usize)> = ids
                .iter()
                .map(|i| {
                    let s = kv.slot(*i).snapshot();
                    (*i, s.applied.0, s.digest, s.map.len())
                })
                .collect();
            panic!("nodes did not converge: {now:?}");
        }
    }
}

/// Waits until every running node in `ids` reports (runtime metrics) applied index `>= index`.
pub async fn wait_runtime_applied(c: &KvTestCluster, ids: &[NodeId], index: u64) {
    let ok = dqlite_node::runtime::harness::wait_until(WAIT, || async {
        ids.iter().all(|i| c.handle(*i).is_some_and(|h| h.metrics().applied_index >= index)).then_some(())
    })
    .await;
    if ok.is_none() {
        let now: Vec<(NodeId, u64)> =
            ids.iter().map(|i| (*i, c.handle(*i).map_or(0, |h| h.metrics().applied_index))).collect();
        panic!("runtime did not apply {index} in time: {now:?}");
    }
}

/// Waits for a leader and for the barrier it then commits to be applied by the runtime of
/// every node in `ids` (the leader's first entry of its term is committed everywhere).
pub async fn settled_leader(c: &KvTestCluster, ids: &[NodeId]) -> NodeId {
    let leader = c.wait_for_leader(WAIT).await.expect("a leader");
    let b = c.handle(leader).expect("leader handle").barrier().await.expect("barrier");
    wait_runtime_applied(c, ids, b.0).await;
    leader
}
