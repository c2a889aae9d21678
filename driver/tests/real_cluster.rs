//! Failover against a real 3-node dqlite 1.11 cluster (`dqlite-demo` processes).
//!
//! Runs in CI with the rest of `cargo test --workspace` (about 10 s: dqlite 1.11 needs several
//! seconds to elect a new leader after a SIGKILL). The workspace's cross-crate suite runs more
//! failover scenarios through its cluster launcher; this one exercises the driver alone.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx_core::connection::Connection;
use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_dqlite::{DqliteConnection, DqlitePoolOptions};

struct Proc {
    child: Child,
    db_addr: String,
}

struct Cluster {
    nodes: Vec<Option<Proc>>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut().flatten() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(dir: &std::path::Path, i: usize, join: Option<&str>) -> Proc {
    let db_addr = format!("127.0.0.1:{}", free_port());
    let api = format!("127.0.0.1:{}", free_port());
    let d = dir.join(i.to_string());
    std::fs::create_dir_all(&d).unwrap();
    let mut cmd = Command::new("dqlite-demo");
    cmd.args(["--api", &api, "--db", &db_addr, "-D"]).arg(&d);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Proc { child, db_addr }
}

/// Three real dqlite nodes, all voters, with table `t (id, v TEXT)` in database `db`; the
/// cluster and the nodes' addresses.
async fn three_voters(tag: &str, db: &str) -> (Cluster, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("sqlx-dqlite-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = spawn(&dir, 1, None);
    let seed = first.db_addr.clone();
    let mut cluster = Cluster { nodes: vec![Some(first)], dir };
    // Join only once the first node answers, then wait until all three are voters.
    let url0 = format!("dqlite://{seed}/{db}");
    let mut c = DqliteConnection::connect(&url0).await.expect("first node");
    for i in 2..=3 {
        cluster.nodes.push(Some(spawn(&cluster.dir, i, Some(&seed))));
    }
    let peers: Vec<String> = cluster.nodes.iter().flatten().map(|p| p.db_addr.clone()).collect();
    c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)").await.unwrap();
    // dqlite-demo promotes joiners to voters on its own: wait (bounded) until the `dqlite`
    // shell lists three voters.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("dqlite")
            .args(["-s", &peers.join(","), db, ".cluster"])
            .output()
            .expect("dqlite shell (go-dqlite package)");
        let voters = String::from_utf8_lossy(&out.stdout).matches("|voter").count();
        if voters == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "cluster did not reach 3 voters");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);
    (cluster, peers)
}

#[tokio::test]
async fn pool_survives_leader_sigkill() {
    let (mut cluster, peers) = three_voters("failover", "failover.db").await;
    let url = format!("dqlite://{}/failover.db?peers={}&leader_timeout=30s", peers[0], peers[1..].join(","));

    let pool = DqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&url)
        .await
        .unwrap();
    for i in 0..10 {
        query("INSERT INTO t (v) VALUES (?)").bind(format!("before-{i}")).execute(&pool).await.unwrap();
    }
    let leader = {
        let conn = pool.acquire().await.unwrap();
        conn.leader_address().unwrap()
    };
    let idx = cluster
        .nodes
        .iter()
        .position(|p| p.as_ref().is_some_and(|p| p.db_addr == leader))
        .expect("leader is one of ours");
    // A bare connection (no pool checks) held across the kill must reconnect on its own.
    let mut bare = DqliteConnection::connect(&url).await.unwrap();
    assert_eq!(bare.leader_address().unwrap(), leader);
    let mut victim = cluster.nodes[idx].take().unwrap();
    let killed_at = Instant::now();
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();

    // The same pool serves new queries once a new leader is elected.
    query("INSERT INTO t (v) VALUES (?)").bind("after").execute(&pool).await.expect("write after failover");
    let n: i64 = query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 11);

    let new_leader = pool.acquire().await.unwrap().leader_address().unwrap();
    assert_ne!(new_leader, leader);
    bare.execute("INSERT INTO t (v) VALUES ('bare')").await.expect("bare connection reconnects");
    assert_ne!(bare.leader_address().unwrap(), leader);
    eprintln!("failover: first write on the new leader {:?} after SIGKILL", killed_at.elapsed());
    pool.close().await;
}

/// `read=follower` against real dqlite 1.11, which serves no reads on followers (and ignores
/// OPEN's vfs options): every connection ends up on the leader, reads and writes work as with
/// `read=leader`, and nothing fails on the way.
#[tokio::test]
async fn follower_reads_go_to_the_leader_on_real_dqlite() {
    let (_cluster, peers) = three_voters("follower", "follower.db").await;
    let base = format!("dqlite://{}/follower.db?peers={}&leader_timeout=30s", peers[0], peers[1..].join(","));
    let leader = DqliteConnection::connect(&base).await.unwrap().leader_address().unwrap();
    // Start on a follower so the first connection has to find out.
    let follower = peers.iter().find(|p| **p != leader.to_string()).unwrap();
    let url = format!("dqlite://{follower}/follower.db?peers={}&leader_timeout=30s&read=follower", peers.join(","));
    let pool = DqlitePoolOptions::new().max_connections(3).connect(&url).await.unwrap();
    for i in 0..5 {
        query("INSERT INTO t (v) VALUES (?)").bind(format!("f-{i}")).execute(&pool).await.unwrap();
        let n: i64 = query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
        assert_eq!(n, i + 1, "reads see the writes (they are served by the leader)");
    }
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = pool.acquire().await.unwrap();
        let n: i64 = query_scalar("SELECT count(*) FROM t").fetch_one(&mut *c).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!(c.leader_address().unwrap(), leader, "a follower-read connection stayed on a real dqlite follower");
        conns.push(c);
    }
    drop(conns);
    pool.close().await;
}
