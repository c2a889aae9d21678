//! Whole nodes in-process over real TCP: `Node` = data directory + runtime + TCP transport +
//! client-protocol server (with the runtime's cluster backend) + join. One node bootstraps, the
//! others join through any node (started before the cluster exists: they retry), the first
//! three are voters and the fourth a standby; LEADER and CLUSTER agree everywhere; TRANSFER and
//! a graceful shutdown move leadership; a restart with the same data directory resumes.
//!
//! The state machine is the runtime harness's key-value machine and the SQL backend the test
//! rusqlite one (not replicated): this checks the networking and membership, not SQL.

mod server_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dqlite_node::node::{DataDir, Node};
use dqlite_node::runtime::harness::{KvSlot, KvStateMachine};
use dqlite_node::wire::{Request, Response, Role, WireNodeId};
use server_support::nodes::{free_addr, init_tracing, leader_of, members, node_config, wait_for};
use server_support::{RawClient, SqliteBackend};

async fn start(dir: &Path, addr: SocketAddr, join: &[SocketAddr]) -> Node {
    let data = DataDir::open(dir).unwrap();
    let db_dir = data.db_dir();
    Node::start(node_config(addr, join), data, KvStateMachine::open(KvSlot::default(), 0), move |_| {
        SqliteBackend::new(&db_dir)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_bootstrap_join_in_any_order_and_hand_over() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();

    // Node 3 starts first and asks nodes 1 and 2, which do not exist yet: it keeps retrying.
    let n3 = start(dirs[2].path(), addrs[2], &[addrs[0], addrs[1]]).await;
    let n1 = start(dirs[0].path(), addrs[0], &[]).await;
    let n2 = start(dirs[1].path(), addrs[1], &[addrs[2], addrs[0]]).await;
    let ids = [n1.id().0, n2.id().0, n3.id().0];

    wait_for("three voters", || async {
        let m = members(addrs[0]).await;
        m.len() == 3 && m.iter().all(|(_, _, r)| *r == Role::Voter)
    })
    .await;
    let m = members(addrs[0]).await;
    for (i, id) in ids.iter().enumerate() {
        assert!(m.contains(&(*id, addrs[i].to_string(), Role::Voter)), "{m:?}");
    }
    // Every node names the same leader (node 1, the bootstrapper, still leads).
    for a in &addrs[..3] {
        wait_for("the leader known everywhere", || async { leader_of(*a).await.0 == ids[0] }).await;
    }
    assert_eq!(leader_of(addrs[1]).await, (ids[0], addrs[0].to_string()));

    // A fourth node becomes a standby.
    let n4 = start(dirs[3].path(), addrs[3], &[addrs[1]]).await;
    let id4 = n4.id().0;
    wait_for("a standby", || async { members(addrs[0]).await.contains(&(id4, addrs[3].to_string(), Role::Standby)) })
        .await;
    // A standby does not report the leader (as in dqlite).
    assert_eq!(leader_of(addrs[3]).await, (0, String::new()));

    // TRANSFER to node 2.
    let mut c = RawClient::connect(addrs[0]).await;
    assert_eq!(c.request(&Request::Transfer { id: WireNodeId(ids[1]) }).await.decode(), Response::Empty);
    wait_for("node 2 leads", || async { leader_of(addrs[2]).await.0 == ids[1] }).await;
    // Now node 1 answers NOT_LEADER to membership changes.
    let f = c.request(&Request::Remove { id: WireNodeId(id4) }).await;
    assert!(matches!(f.decode(), Response::Failure { code: 10250, .. }));

    // Graceful shutdown of the leader hands leadership over.
    n2.shutdown().await;
    wait_for("a new leader after the shutdown", || async {
        let l = leader_of(addrs[0]).await.0;
        l != 0 && l != ids[1]
    })
    .await;

    // Restart node 2 on the same data directory: same id, still a voter, no re-join needed.
    let n2 = start(dirs[1].path(), addrs[1], &[]).await;
    assert_eq!(n2.id().0, ids[1]);
    wait_for("node 2 follows again", || async { leader_of(addrs[1]).await.0 != 0 }).await;
    assert!(n2.data_dir().cluster_id() != 0 || n1.data_dir().cluster_id() != 0);
    assert_eq!(members(addrs[1]).await.len(), 4);

    for n in [n1, n2, n3, n4] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_at_the_same_moment_make_exactly_three_voters() {
    init_tracing();
    // One bootstrapped node, then five nodes started at once, all joining through it: each
    // reads CLUSTER, sees fewer than three voters and asks for a voter seat; a node that finds
    // more than three voters right after its promotion steps back to standby. The
    // configuration must settle at exactly three voters and three standbys.
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..6).map(|_| free_addr()).collect();
    let n0 = start(dirs[0].path(), addrs[0], &[]).await;
    wait_for("the first node leads", || async { leader_of(addrs[0]).await.0 == n0.id().0 }).await;
    let seed = [addrs[0]];
    let joiners = futures_util::future::join_all((1..6).map(|i| start(dirs[i].path(), addrs[i], &seed))).await;
    let settled = |m: &[(u64, String, Role)]| {
        m.len() == 6
            && m.iter().filter(|(_, _, r)| *r == Role::Voter).count() == 3
            && m.iter().filter(|(_, _, r)| *r == Role::Standby).count() == 3
    };
    wait_for("three voters and three standbys", || async { settled(&members(addrs[0]).await) }).await;
    // And it stays so (no node keeps flipping its role): checked over a few heartbeats.
    for _ in 0..10 {
        let m = members(addrs[0]).await;
        assert!(settled(&m), "the configuration changed after settling: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in joiners {
        n.shutdown().await;
    }
    n0.shutdown().await;
}
