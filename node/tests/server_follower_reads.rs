//! Follower reads with a staleness bound (`read=follower&max_staleness=…`) over TCP on three
//! in-process nodes (`Node::start_sqlite`) with our sqlx driver:
//! * a follower-read pool is served by followers (their `follower_reads` counters move, the
//!   leader's stays at 0), and every write acknowledged at least `max_staleness` before a read
//!   started is visible to it, while a writer keeps writing;
//! * such connections are read-only (writes, DDL: `SQLITE_READONLY`), read transactions work;
//! * a follower cut off from the leader (the other two nodes' runtimes killed) fails reads with
//!   `SQLITE_IOERR_FOLLOWER_STALE` once the bound has passed, and never returns data after that.

mod server_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dqlite_node::db::DbConfig;
use dqlite_node::node::{DataDir, Node, NodeConfig};
use dqlite_node::raft::StateRole;
use dqlite_node::wire::{NodeInfoFormat, Request, Response, Role};
use server_support::RawClient;
use sqlx::Executor;
use sqlx_dqlite::{DqliteConnectOptions, DqlitePoolOptions, ReadMode};

const BOUND: Duration = Duration::from_secs(30);
const MAX_STALENESS: Duration = Duration::from_millis(200);
/// One message delay (leader → follower) on a loaded machine, on top of the bound.
const MESSAGE_DELAY: Duration = Duration::from_millis(50);

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

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    addrs: Vec<SocketAddr>,
    nodes: Vec<Node>,
}

async fn cluster() -> Cluster {
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
    Cluster { _dirs: dirs, addrs, nodes }
}

impl Cluster {
    fn leader(&self) -> usize {
        self.nodes.iter().position(|n| n.runtime().role().role == StateRole::Leader).expect("a leader")
    }

    fn seeds(&self) -> String {
        format!("{}/f.db?peers={},{}", self.addrs[0], self.addrs[1], self.addrs[2])
    }

    async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

#[test]
fn the_follower_options_parse_and_round_trip() {
    let o: DqliteConnectOptions = "dqlite://127.0.0.1:9001/a.db?read=follower&max_staleness=250ms".parse().unwrap();
    assert_eq!(o.get_read_mode(), ReadMode::Follower);
    assert_eq!(o.get_max_staleness(), Duration::from_millis(250));
    let o: DqliteConnectOptions = "dqlite://127.0.0.1:9001/a.db?read=follower".parse().unwrap();
    assert_eq!(o.get_max_staleness(), sqlx_dqlite::DEFAULT_MAX_STALENESS);
    let built = DqliteConnectOptions::new().read_mode(ReadMode::Follower).max_staleness(Duration::from_secs(2));
    let back: DqliteConnectOptions = sqlx::ConnectOptions::to_url_lossy(&built).as_str().parse().unwrap();
    assert_eq!((back.get_read_mode(), back.get_max_staleness()), (ReadMode::Follower, Duration::from_secs(2)));
    let err = "dqlite://127.0.0.1:9001/a.db?read=follower&max_staleness=soon".parse::<DqliteConnectOptions>();
    assert!(err.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_come_from_followers_and_see_every_write_acknowledged_max_staleness_before() {
    let c = cluster().await;
    let writer = DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{}", c.seeds())).await.unwrap();
    let url = format!("dqlite://{}&read=follower&max_staleness={}ms", c.seeds(), MAX_STALENESS.as_millis());
    let reader = DqlitePoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    writer.execute("INSERT INTO t (v) VALUES (0)").await.unwrap();
    let leader = c.leader();
    // A follower read right now may miss the table (it is younger than the bound); once the
    // bound has passed it may not.
    tokio::time::sleep(MAX_STALENESS + MESSAGE_DELAY).await;

    // A writer acknowledging one row after another, recording when each was acknowledged.
    let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let writing = {
        let (writer, acks) = (writer.clone(), acks.clone());
        tokio::spawn(async move {
            for v in 1..=150i64 {
                sqlx::query("INSERT INTO t (v) VALUES (?)").bind(v).execute(&writer).await.unwrap();
                acks.lock().unwrap().push((v, Instant::now()));
            }
        })
    };
    let mut reads = 0u64;
    let mut checked = 0u64;
    // Reads go on until the writer is done and at least one read started late enough to be
    // checked against the bound (fast writes may all be acknowledged within one bound).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writing.is_finished() || reads < 20 || checked == 0 {
        assert!(Instant::now() < deadline, "no read could be checked within 60 s ({reads} reads)");
        let started = Instant::now();
        let seen: i64 = sqlx::query_scalar("SELECT max(v) FROM t").fetch_one(&reader).await.unwrap();
        reads += 1;
        // Every write acknowledged at least max_staleness (+ one message delay) before the read
        // started is in what it saw.
        let must = acks
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, at)| *at + MAX_STALENESS + MESSAGE_DELAY <= started)
            .map(|(v, _)| *v);
        if let Some(must) = must {
            checked += 1;
            assert!(seen >= must, "a follower read saw max(v) = {seen}, but v = {must} was acknowledged in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writing.await.unwrap();
    assert!(checked > 0, "no read started late enough to check the bound");
    // Once the bound has passed, a read sees the last write.
    tokio::time::sleep(MAX_STALENESS + MESSAGE_DELAY).await;
    let seen: i64 = sqlx::query_scalar("SELECT max(v) FROM t").fetch_one(&reader).await.unwrap();
    assert_eq!(seen, 150);
    reads += 1;
    // Followers served them; the leader served none.
    let served: Vec<u64> = c.nodes.iter().map(|n| n.runtime().metrics().follower_reads).collect();
    assert_eq!(served[leader], 0, "the leader served follower reads: {served:?}");
    assert!(served.iter().sum::<u64>() >= reads, "{reads} reads, follower counters {served:?}");
    writer.close().await;
    reader.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_read_connections_are_read_only_and_keep_read_transactions() {
    let c = cluster().await;
    let writer = DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{}", c.seeds())).await.unwrap();
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    writer.execute("INSERT INTO t (v) VALUES (1), (2)").await.unwrap();
    tokio::time::sleep(MAX_STALENESS + MESSAGE_DELAY).await;
    // One follower-read pool served by a follower, one by the leader (its only seed).
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    for (who, host) in [("follower", c.addrs[follower]), ("leader", c.addrs[leader])] {
        let url = format!("dqlite://{host}/f.db?read=follower&max_staleness=200ms");
        let reader = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        for (what, r) in [
            ("prepared insert", sqlx::query("INSERT INTO t (v) VALUES (?)").bind(3).execute(&reader).await.map(|_| ())),
            ("unprepared insert", reader.execute("INSERT INTO t (v) VALUES (4)").await.map(|_| ())),
            ("DDL", reader.execute("CREATE TABLE u (a)").await.map(|_| ())),
            ("RETURNING", sqlx::query("DELETE FROM t RETURNING id").fetch_all(&reader).await.map(|_| ())),
        ] {
            let e = r.expect_err(&format!("{what} on a follower-read connection ({who}) must fail"));
            assert_eq!(code(&e).as_deref(), Some("8"), "{what} ({who}): {e}");
            assert!(e.to_string().contains("read=follower"), "{what} ({who}): {e}");
        }
        if who == "follower" {
            // The write lock stays with the follower's apply: an immediate transaction is a
            // write intent, refused there.
            let e = reader.execute("BEGIN IMMEDIATE").await.expect_err("BEGIN IMMEDIATE on a follower");
            assert_eq!(code(&e).as_deref(), Some("8"), "{e}");
        }
        // Reads, also in a transaction.
        let mut tx = reader.begin().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *tx).await.unwrap();
        let s: i64 = sqlx::query_scalar("SELECT sum(v) FROM t").fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!((n, s), (2, 3), "{who}");
        reader.close().await;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&writer).await.unwrap();
    assert_eq!(n, 2, "nothing was written");
    assert_eq!(c.nodes[leader].runtime().metrics().follower_reads, 0);
    assert!(c.nodes[follower].runtime().metrics().follower_reads > 0);
    writer.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_leader_fails_reads_after_the_bound() {
    let c = cluster().await;
    let writer = DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{}", c.seeds())).await.unwrap();
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)").await.unwrap();
    for _ in 0..10 {
        writer.execute("INSERT INTO t DEFAULT VALUES").await.unwrap();
    }
    tokio::time::sleep(MAX_STALENESS + MESSAGE_DELAY).await;
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    // A reader that knows only the follower (so it cannot move elsewhere).
    let url = format!(
        "dqlite://{}/f.db?read=follower&max_staleness={}ms&leader_timeout=500ms",
        c.addrs[follower],
        MAX_STALENESS.as_millis()
    );
    let reader = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    // Wait until the follower has the rows (bounded), then cut it off.
    let deadline = Instant::now() + BOUND;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&reader).await.unwrap();
        if n == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up");
    }
    writer.close().await;
    c.nodes[leader].runtime().kill().await;
    c.nodes[other].runtime().kill().await;
    // No message from a leader arrives after this.
    let cut = Instant::now();
    // A read started after the bound has passed must fail with the staleness error (it waits
    // for the next heartbeat at most two heartbeat intervals = 200 ms), well before the
    // follower's election timer (at least 1 s) would make it forget its leader. So the bound
    // itself stops it, and no read returns data after that.
    let fails_by = cut + MAX_STALENESS + Duration::from_millis(100);
    let mut first_stale: Option<Instant> = None;
    while Instant::now() < cut + Duration::from_secs(3) {
        let started = Instant::now();
        match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t").fetch_one(&reader).await {
            Ok(n) => {
                assert_eq!(n, 10);
                assert!(first_stale.is_none(), "a read succeeded after a staleness error");
                assert!(started < fails_by, "a cut-off follower still served a read {:?} after the cut", started - cut);
            }
            Err(e) => {
                if first_stale.is_none() {
                    assert_eq!(code(&e).as_deref(), Some("11018"), "the first failure is the staleness error: {e}");
                    assert!(
                        started < cut + MAX_STALENESS + Duration::from_millis(600),
                        "the staleness error came only {:?} after the cut",
                        started - cut
                    );
                    let d = e.as_database_error().unwrap().try_downcast_ref::<sqlx_dqlite::DqliteError>().unwrap();
                    assert!(d.is_follower_stale());
                    assert!(Instant::now() >= cut + MAX_STALENESS, "failed before the bound had passed");
                    first_stale = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first_stale.is_some(), "the cut-off follower never reported the staleness error");
    reader.close().await;
    c.shutdown().await;
}

/// Opt-in measurement (`--ignored --nocapture`; no assertion on time): point selects per second
/// through pools of 4 connections with `read=leader`, `read=linearizable` and `read=follower`
/// on the same three in-process nodes, in one run, printed as ratios to `read=leader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn measure_point_selects_by_read_mode() {
    let c = cluster().await;
    let writer = DqlitePoolOptions::new().max_connections(1).connect(&format!("dqlite://{}", c.seeds())).await.unwrap();
    writer.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").await.unwrap();
    writer.execute("INSERT INTO kv SELECT value, 'v' || value FROM generate_series(1, 1000)").await.ok();
    for k in 1..=200i64 {
        sqlx::query("INSERT OR IGNORE INTO kv VALUES (?, ?)")
            .bind(k)
            .bind(format!("v{k}"))
            .execute(&writer)
            .await
            .unwrap();
    }
    tokio::time::sleep(MAX_STALENESS + MESSAGE_DELAY).await;
    let secs: u64 = std::env::var("FOLLOWER_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut results = Vec::new();
    for mode in ["leader", "linearizable", "follower"] {
        let url = format!("dqlite://{}&read={mode}&max_staleness=500ms", c.seeds());
        let pool = DqlitePoolOptions::new().max_connections(4).connect(&url).await.unwrap();
        let until = Instant::now() + Duration::from_secs(secs);
        let mut workers = Vec::new();
        for w in 0..4i64 {
            let pool = pool.clone();
            workers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let k = 1 + (n as i64 * 7 + w) % 200;
                    let _: String =
                        sqlx::query_scalar("SELECT v FROM kv WHERE k = ?").bind(k).fetch_one(&pool).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0u64;
        for w in workers {
            total += w.await.unwrap();
        }
        pool.close().await;
        results.push((mode, total as f64 / secs as f64));
    }
    let base = results[0].1;
    for (mode, rate) in &results {
        println!("read={mode:<13} {rate:>9.0} point selects/s  ({:.2}x read=leader)", rate / base);
    }
    writer.close().await;
    c.shutdown().await;
}
