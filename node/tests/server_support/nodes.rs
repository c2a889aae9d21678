//! Whole in-process nodes over TCP on 127.0.0.1 (`Node`), for the server tests: free addresses,
//! starting SQL nodes, the LEADER / CLUSTER views, and bounded waits.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dqlite_node::db::DbConfig;
use dqlite_node::node::{DataDir, Node, NodeConfig};
use dqlite_node::wire::{NodeInfoFormat, Request, Response, Role};

use super::RawClient;

/// Bound of every wait in these tests.
pub const BOUND: Duration = Duration::from_secs(30);

/// A loopback address no one listens on now.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Logs to the test's output, filtered by `RUST_LOG` (once per process).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The configuration of a node at `addr` that joins through `join` (empty: bootstrap).
pub fn node_config(addr: SocketAddr, join: &[SocketAddr]) -> NodeConfig {
    let mut cfg = NodeConfig::new(addr.to_string());
    cfg.join = join.iter().map(ToString::to_string).collect();
    cfg
}

/// Starts a replicated-SQLite node on `dir` (`Node::start_sqlite`, default `DbConfig`).
pub async fn start_sqlite(dir: &Path, addr: SocketAddr, join: &[SocketAddr]) -> Node {
    let data = DataDir::open(dir).unwrap();
    Node::start_sqlite(node_config(addr, join), data, DbConfig::default()).await.unwrap()
}

/// The configuration as `addr` reports it (CLUSTER): id, address, role.
pub async fn members(addr: SocketAddr) -> Vec<(u64, String, Role)> {
    let mut c = RawClient::connect(addr).await;
    match c.request(&Request::Cluster { format: NodeInfoFormat::V1 }).await.decode() {
        Response::Servers { nodes, .. } => {
            nodes.iter().map(|n| (n.id.0, n.address.to_owned(), n.role.unwrap())).collect()
        }
        other => panic!("{other:?}"),
    }
}

/// How many voters `addr`'s configuration has.
pub async fn voters(addr: SocketAddr) -> usize {
    members(addr).await.iter().filter(|(_, _, r)| *r == Role::Voter).count()
}

/// The leader as `addr` reports it (LEADER): id and address.
pub async fn leader_of(addr: SocketAddr) -> (u64, String) {
    let mut c = RawClient::connect(addr).await;
    match c.request(&Request::Leader).await.decode() {
        Response::Server { id, address } => (id.0, address.to_owned()),
        other => panic!("{other:?}"),
    }
}

/// Polls `f` until it is true; panics naming `what` after [`BOUND`].
pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three SQL nodes: the first bootstraps, the others join it; returns once all three are
/// voters. The directories must outlive the nodes.
pub async fn three_sqlite_nodes() -> (Vec<tempfile::TempDir>, Vec<SocketAddr>, Vec<Node>) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = vec![start_sqlite(dirs[0].path(), addrs[0], &[]).await];
    nodes.push(start_sqlite(dirs[1].path(), addrs[1], &[addrs[0]]).await);
    nodes.push(start_sqlite(dirs[2].path(), addrs[2], &[addrs[0]]).await);
    let seed = addrs[0];
    wait_for("three voters", || async move { voters(seed).await == 3 }).await;
    (dirs, addrs, nodes)
}
