//! Follower reads on an embedded node: a `data=DIR&read=follower` pool whose node follows a
//! leader reads from that node in process (no socket), within the staleness bound; writes on
//! it are refused as read-only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dqlite::node::{EmbeddedNode, NodeBuilder};
use sqlx::Executor;
use sqlx_dqlite::DqlitePoolOptions;

const BOUND: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn tempdir(tag: &str, i: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dqlite-embedded-fread-{tag}-{}-{}-{i}",
        std::process::id(),
        dqlite::node::node::random_id() % 1_000_000
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_follower_serves_follower_reads_in_process() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let dirs: Vec<_> = (0..3).map(|i| tempdir("inproc", i)).collect();
    let mut nodes: Vec<EmbeddedNode> = Vec::new();
    for i in 0..3 {
        let mut b = NodeBuilder::new(&dirs[i]).address(addrs[i].to_string());
        if i > 0 {
            b = b.join([addrs[0].to_string()]);
        }
        let node = b.start().await.unwrap();
        node.ready(BOUND).await.unwrap();
        nodes.push(node);
    }
    let deadline = Instant::now() + BOUND;
    while nodes[0].cluster().iter().filter(|m| m.role == dqlite::node::raft::Role::Voter).count() < 3 {
        assert!(Instant::now() < deadline, "three voters in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = nodes.iter().position(EmbeddedNode::is_leader).expect("a leader");
    let follower = (leader + 1) % 3;
    let writer =
        DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{}/e.db", addrs[leader])).await.unwrap();
    writer.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
    writer.execute("INSERT INTO t VALUES (1), (2), (3)").await.unwrap();
    let url = format!(
        "dqlite://{}/e.db?data={}&read=follower&max_staleness=200ms",
        addrs[follower],
        dirs[follower].display()
    );
    let reader = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    // Past the bound, the follower's state holds the writes.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = nodes[follower].runtime().metrics().follower_reads;
    let mut conn = reader.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(n, 3);
    assert!(conn.is_in_process(), "the local follower serves the connection through the pipe");
    assert!(!nodes[follower].is_leader());
    assert!(nodes[follower].runtime().metrics().follower_reads > before, "served by the local follower");
    let e = conn.execute("INSERT INTO t VALUES (4)").await.expect_err("read-only");
    assert_eq!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("8"), "{e}");
    drop(conn);
    reader.close().await;
    writer.close().await;
    for n in &nodes {
        n.close().await;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
