//! Linearizable reads (`read=linearizable`, Raft ReadIndex) over TCP on three in-process nodes
//! (`Node::start_sqlite`) with our sqlx driver: a query sees every write acknowledged before it
//! started, on the same connection, on another connection, and on the new leader right after
//! the old one was killed (no handover).

mod server_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dqlite_node::raft::StateRole;
use server_support::nodes::{init_tracing, start_sqlite, three_sqlite_nodes, BOUND};
use sqlx::Executor;
use sqlx_dqlite::{DqliteConnectOptions, DqlitePoolOptions, ReadMode};

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
    init_tracing();
    let (_dirs, addrs, nodes) = three_sqlite_nodes().await;
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

/// Resolves to `Some(output)` if `inner` completes within `polls` polls, else drops `inner` at
/// that await point and resolves to `None`.
struct CancelAfter<F: std::future::Future> {
    inner: std::pin::Pin<Box<F>>,
    polls_left: usize,
}

impl<F: std::future::Future> std::future::Future for CancelAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if self.polls_left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.polls_left -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// A linearizable read that names itself: `(tag, rows)`, so an answer meant for another
/// (dropped) request is told apart.
async fn count(pool: &sqlx_dqlite::DqlitePool, tag: &str) -> Result<(String, i64), sqlx::Error> {
    sqlx::query_as("SELECT ?, count(*) FROM t WHERE v >= ?").bind(tag).bind(0i64).fetch_one(pool).await
}

/// Retries `f` (bounded) while the cluster elects a leader, on the errors a client sees then
/// (not leader, connection lost, no connection yet); its first success. Any other error fails.
async fn settle<T, Fut: std::future::Future<Output = Result<T, sqlx::Error>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e @ (sqlx::Error::Database(_) | sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) => {
                assert!(Instant::now() < deadline, "{what}: {e}");
                tracing::debug!(what, error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// After a dropped request: the pool whose only connection ran it answers a linearizable read
/// with every acknowledged row and writes; a second pool agrees.
async fn still_works(pool: &sqlx_dqlite::DqlitePool, other: &sqlx_dqlite::DqlitePool, acked: &mut i64, what: &str) {
    let tag = format!("check {what}");
    let got = settle(&format!("{what}: read on the same pool"), || count(pool, &tag)).await;
    assert_eq!(got, (tag.clone(), *acked), "{what}: the same pool's read after the drop");
    let v = *acked;
    settle(&format!("{what}: write on the same pool"), || {
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(v).execute(pool)
    })
    .await;
    *acked += 1;
    assert_eq!(count(pool, &tag).await.unwrap(), (tag.clone(), *acked), "{what}: the same pool misses its own write");
    assert_eq!(
        count(other, &tag).await.unwrap(),
        (tag.clone(), *acked),
        "{what}: a second pool misses acknowledged writes"
    );
}

/// Cancel safety with `read=linearizable`: a query future dropped at each of its await points in
/// turn (polled N times, N = 0, 1, 2, … until it completes), including while the server waits for
/// its ReadIndex round, leaves the connection usable and its answers right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_query_dropped_at_each_await_point_leaves_the_connection_right() {
    init_tracing();
    let (_dirs, addrs, nodes) = three_sqlite_nodes().await;
    let url = format!("dqlite://{}/c.db?peers={},{}&read=linearizable", addrs[0], addrs[1], addrs[2]);
    let pool = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let other = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    let mut acked = 0;
    // A sweep proves something only if the query had to wait for the server (it completed
    // after more than one poll, so some drop landed while the server held it). The server can
    // answer between the request's write and the first read of one poll (a ReadIndex round
    // confirmed at once): such a sweep is run again, a bounded number of times.
    for sweep in 0..SWEEPS {
        for polls in 0..200 {
            let done = CancelAfter { inner: Box::pin(count(&pool, "dropped")), polls_left: polls }.await;
            still_works(&pool, &other, &mut acked, &format!("sweep {sweep}: query dropped after {polls} polls")).await;
            if let Some(r) = done {
                assert_eq!(r.unwrap(), ("dropped".to_string(), acked - 1), "the completed query's answer");
                if polls <= 1 {
                    eprintln!("sweep {sweep}: the query completed within {polls} poll(s); sweeping again");
                    break;
                }
                pool.close().await;
                other.close().await;
                for n in nodes {
                    n.shutdown().await;
                }
                return;
            }
            assert!(polls < 199, "the query never completed");
        }
    }
    panic!("in {SWEEPS} sweeps a linearizable query never waited for the server");
}

/// Sweeps of [`a_linearizable_query_dropped_at_each_await_point_leaves_the_connection_right`].
const SWEEPS: usize = 20;

/// Cancel safety with `read=linearizable` while the leader cannot reach a quorum: the query
/// waits in the server for its ReadIndex round; the client drops it (at two different moments
/// of the wait); the quorum comes back; the same connection (and pool) then answers right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_query_dropped_while_its_read_index_waits_for_a_quorum_leaves_the_pool_working() {
    init_tracing();
    let (dirs, addrs, nodes) = three_sqlite_nodes().await;
    let mut nodes: Vec<_> = nodes.into_iter().map(Some).collect();
    let url = format!("dqlite://{}/q.db?peers={},{}&read=linearizable", addrs[0], addrs[1], addrs[2]);
    let pool = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let other = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)").await.unwrap();
    let mut acked = 0;
    for i in 0..5 {
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(i).execute(&pool).await.unwrap();
        acked += 1;
    }
    assert_eq!(count(&pool, "before").await.unwrap(), ("before".to_string(), acked));
    // The election timeout is 1 s: a leader keeps leading that long without a quorum, and its
    // ReadIndex round waits meanwhile.
    // Round 1: one query dropped 50 ms into its wait. Round 2: one dropped at 50 ms, then the
    // next one dropped 300 ms later (while it waits behind the first: the connection is still
    // owed the first one's answer).
    let rounds = [vec![Duration::from_millis(50)], vec![Duration::from_millis(50), Duration::from_millis(300)]];
    for drops in rounds {
        let deadline = Instant::now() + BOUND;
        let leader = loop {
            let l = nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.runtime().role().role == StateRole::Leader));
            match l {
                Some(l) => break l,
                None => {
                    assert!(Instant::now() < deadline, "no leader");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // Both followers die at once: the leader cannot confirm its leadership.
        let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let (a, b) = (
            nodes[followers[0]].as_ref().unwrap().runtime().clone(),
            nodes[followers[1]].as_ref().unwrap().runtime().clone(),
        );
        tokio::join!(a.kill(), b.kill());
        let started = Instant::now();
        for (k, drop_after) in drops.iter().enumerate() {
            let r = tokio::time::timeout(*drop_after, count(&pool, &format!("dropped {k}"))).await;
            assert!(r.is_err(), "a linearizable read was answered without a quorum: {r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the drop came after the election timeout ({:?}): the leader may have stepped down first",
            started.elapsed()
        );
        // The quorum comes back (the killed nodes restart on their files and addresses).
        for f in &followers {
            if let Some(n) = nodes[*f].take() {
                n.shutdown().await;
            }
        }
        for f in &followers {
            nodes[*f] = Some(start_sqlite(dirs[*f].path(), addrs[*f], &[]).await);
        }
        still_works(&pool, &other, &mut acked, &format!("queries dropped {drops:?} into their ReadIndex wait")).await;
    }
    pool.close().await;
    other.close().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}
