//! Linearizable reads (`read=linearizable`, Raft ReadIndex) over TCP on three in-process nodes
//! (`Node::start_sqlite`) with our sqlx driver: a query sees every write acknowledged before it
//! started, on the same connection, on another connection, and on the new leader right after
//! the old one was killed (no handover).

mod server_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dqlite_node::db::DbConfig;
use dqlite_node::node::{DataDir, Node, NodeConfig};
use dqlite_node::wire::{NodeInfoFormat, Request, Response, Role};
use server_support::RawClient;
use sqlx::Executor;
use sqlx_dqlite::{DqliteConnectOptions, DqlitePoolOptions, ReadMode};

const BOUND: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start(dir: &Path, addr: SocketAddr, join: &[SocketAddr]) -> Node {
    let data = DataDir::open(dir).unwrap();
    let mut cfg = NodeConfig::new(addr.to_string());
    cfg.join = join.iter().map(ToString::to_string).collect();
    Node::start_sqlite(cfg, data, DbConfig::default()).await.unwrap()
}

async fn voters(addr: SocketAddr) -> usize {
    let mut c = RawClient::connect(addr).await;
    match c.request(&Request::Cluster { format: NodeInfoFormat::V1 }).await.decode() {
        Response::Servers { nodes, .. } => nodes.iter().filter(|n| n.role == Some(Role::Voter)).count(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_read_option_parses_and_round_trips() {
    let o: DqliteConnectOptions = "dqlite://127.0.0.1:9001/a.db?read=linearizable".parse().unwrap();
    assert_eq!(o.get_read_mode(), ReadMode::Linearizable);
    let o: DqliteConnectOptions = "dqlite://127.0.0.1:9001/a.db".parse().unwrap();
    assert_eq!(o.get_read_mode(), ReadMode::Leader);
    let url = sqlx::ConnectOptions::to_url_lossy(&DqliteConnectOptions::new().read_mode(ReadMode::Linearizable));
    let back: DqliteConnectOptions = url.as_str().parse().unwrap();
    assert_eq!(back.get_read_mode(), ReadMode::Linearizable);
    let err = "dqlite://127.0.0.1:9001/a.db?read=sometimes".parse::<DqliteConnectOptions>().unwrap_err();
    assert!(err.to_string().contains("read="), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_see_acknowledged_writes_also_right_after_a_failover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = vec![start(dirs[0].path(), addrs[0], &[]).await];
    nodes.push(start(dirs[1].path(), addrs[1], &[addrs[0]]).await);
    nodes.push(start(dirs[2].path(), addrs[2], &[addrs[0]]).await);
    let deadline = Instant::now() + BOUND;
    while voters(addrs[0]).await < 3 {
        assert!(Instant::now() < deadline, "three voters in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("dqlite://{}/r.db?peers={},{}&read=linearizable", addrs[0], addrs[1], addrs[2]);
    let writer = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let reader = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    let mut acked = 0i64;
    for i in 0..40 {
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(i).execute(&writer).await.unwrap();
        acked += 1;
        // The same connection and another one both see it at once.
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&writer).await.unwrap();
        assert_eq!(n, acked);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&reader).await.unwrap();
        assert_eq!(n, acked);
    }
    // A burst of acknowledged writes, then the leader dies without handing over.
    for i in 0..20 {
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(100 + i).execute(&writer).await.unwrap();
        acked += 1;
    }
    let leader = nodes.iter().position(|n| n.runtime().role().role == dqlite_node::raft::StateRole::Leader).unwrap();
    nodes[leader].runtime().kill().await;
    // (The killed node's server still answers, without naming a leader; ask the others.)
    let alive: Vec<SocketAddr> = (0..3).filter(|i| *i != leader).map(|i| addrs[i]).collect();
    let url = format!("dqlite://{}/r.db?peers={}&read=linearizable", alive[0], alive[1]);
    let fresh = DqlitePoolOptions::new().max_connections(1).connect_lazy(&url).unwrap();
    let deadline = Instant::now() + BOUND;
    // The first answer the cluster gives after the failover already holds every write.
    let n: i64 = loop {
        match sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&fresh).await {
            Ok(n) => break n,
            Err(e) => {
                let roles: Vec<_> = nodes.iter().map(|n| n.runtime().role()).collect();
                assert!(Instant::now() < deadline, "no read after the failover: {e}; roles {roles:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(n, acked, "a linearizable read after the failover missed acknowledged writes");
    writer.close().await;
    reader.close().await;
    fresh.close().await;
    for n in nodes {
        n.shutdown().await;
    }
}
