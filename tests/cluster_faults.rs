//! Cluster faults, each test on a cluster of its own: failover of a pool in use when the
//! leader is SIGKILLed, and the launcher's own kill / restart / cleanup.
//!
//! Waits are bounded and poll a condition; the test prints how long elections took.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};
use tokio::task::block_in_place;

use common::ELECTION_BOUND;

const POOL_SIZE: u32 = 4;

/// Writes rows with client-chosen ids until told to stop; returns (acknowledged, uncertain):
/// every acknowledged id must survive failover, an uncertain one (reported as "outcome
/// unknown") may or may not.
async fn background_writer(pool: DqlitePool, first_id: i64, stop: Arc<AtomicBool>) -> (Vec<i64>, Vec<i64>) {
    let (mut acked, mut uncertain) = (Vec::new(), Vec::new());
    let mut id = first_id;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'background')").bind(id).execute(&pool).await {
            Ok(_) => acked.push(id),
            Err(e) => {
                eprintln!("background write {id} failed: {e}");
                // The only write that can fail is the one in flight when the leader died, and
                // the driver must say its outcome is unknown (it never replays it).
                assert!(sqlx_dqlite::is_outcome_unknown(&e), "write {id} failed without 'outcome unknown': {e:?}");
                uncertain.push(id);
            }
        }
        id += 1;
        tokio::task::yield_now().await;
    }
    (acked, uncertain)
}

async fn ids(pool: &DqlitePool) -> BTreeSet<i64> {
    sqlx::query_scalar("SELECT id FROM ledger").fetch_all(pool).await.unwrap().into_iter().collect()
}

/// Every connection the pool can hold serves a query on its first attempt.
async fn every_pooled_connection_works(pool: &DqlitePool, leader: &str) {
    let mut conns = Vec::new();
    for _ in 0..POOL_SIZE {
        conns.push(pool.acquire().await.expect("acquire after failover"));
    }
    for conn in &mut conns {
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut **conn).await.expect("query after failover");
        assert_eq!(one, 1);
        assert_eq!(conn.leader_address().as_deref(), Some(leader), "pooled connection not on the new leader");
    }
}

async fn kill_leader_and_wait(cluster: &mut dqlite::testing::Cluster) -> (usize, usize) {
    block_in_place(|| {
        let old = cluster.wait_for_leader(ELECTION_BOUND).expect("a leader before the kill");
        let start = Instant::now();
        cluster.kill(old).expect("SIGKILL the leader");
        let new = cluster.wait_for_new_leader(old, ELECTION_BOUND).expect("a new leader after the kill");
        eprintln!("node {old} SIGKILLed; node {new} leader after {:?}", start.elapsed());
        (old, new)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_in_use_survives_leader_sigkill_twice() {
    let mut cluster = block_in_place(|| common::start_cluster(3));
    let url = cluster.url("failover.db");
    let pool = DqlitePoolOptions::new().max_connections(POOL_SIZE).connect(&url).await.unwrap();
    pool.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT NOT NULL)").await.unwrap();
    for id in 1..=20_i64 {
        sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'before')").bind(id).execute(&pool).await.unwrap();
    }
    let mut committed: BTreeSet<i64> = (1..=20).collect();
    // The background writer uses a second pool on another database: dqlite has one writer per
    // database, and the open transaction below holds `failover.db`'s write lock.
    let writer_pool =
        DqlitePoolOptions::new().max_connections(1).connect(&cluster.url("failover_writer.db")).await.unwrap();
    writer_pool.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT NOT NULL)").await.unwrap();
    let mut writer_committed = BTreeSet::new();

    for (round, first_id) in [(1, 1_000_i64), (2, 100_000)] {
        // Fill the pool: every connection is open to the current leader.
        let leader = cluster_leader(&mut cluster);
        every_pooled_connection_works(&pool, &cluster.address(leader).to_string()).await;

        // The application is busy when the leader dies: one connection checked out, one
        // transaction open, one task writing in a loop.
        let mut held = pool.acquire().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'in open transaction')")
            .bind(first_id - 1)
            .execute(&mut *tx)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(background_writer(writer_pool.clone(), first_id, stop.clone()));
        // Let the writer get some writes acknowledged by the old leader first (bounded).
        let start = Instant::now();
        while ids(&writer_pool).await.range(first_id..).count() < 5 {
            assert!(start.elapsed() < Duration::from_secs(30), "background writer made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (old, new) = kill_leader_and_wait(&mut cluster).await;
        let new_leader = cluster.address(new).to_string();
        stop.store(true, Ordering::Relaxed);
        let (acked, uncertain) = tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("background writer stops within its leader search")
            .unwrap();
        eprintln!("round {round}: killed node {old}; writer: {} acknowledged, {} failed", acked.len(), uncertain.len());

        // The open transaction is gone, and said so; never replayed.
        let commit = tx.commit().await.expect_err("a transaction open on a dead leader cannot commit");
        let lost =
            sqlx_dqlite::dqlite_error(&commit).is_some_and(|e| e.is_transaction_lost() || e.is_outcome_unknown());
        assert!(lost, "commit after the leader died must report a lost transaction: {commit:?}");

        // From here on, no application retry: each statement must succeed on its first call.
        for id in first_id + 50_000..first_id + 50_010 {
            sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'after')")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("round {round}: insert {id} after failover: {e}"));
            committed.insert(id);
        }
        // The connection the application held across the kill works too.
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ledger").fetch_one(&mut *held).await.expect("held connection");
        assert!(n >= committed.len() as i64);
        assert_eq!(held.leader_address().as_deref(), Some(new_leader.as_str()));
        drop(held);
        every_pooled_connection_works(&pool, &new_leader).await;

        // Every row acknowledged before, during or after the kill is there; the open
        // transaction left nothing.
        let present = ids(&pool).await;
        let missing: Vec<_> = committed.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged rows lost in failover: {missing:?}");
        assert_eq!(present, committed, "round {round}: rows that were never acknowledged");
        assert!(!present.contains(&(first_id - 1)), "the open transaction's row was committed");

        // The background writer's pool recovered too; its acknowledged rows survived, and
        // nothing appeared that it did not attempt.
        sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'after')")
            .bind(first_id + 90_000)
            .execute(&writer_pool)
            .await
            .unwrap_or_else(|e| panic!("round {round}: writer pool after failover: {e}"));
        writer_committed.insert(first_id + 90_000);
        writer_committed.extend(&acked);
        let present = ids(&writer_pool).await;
        let missing: Vec<_> = writer_committed.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged background writes lost: {missing:?}");
        let allowed: BTreeSet<i64> = writer_committed.iter().chain(&uncertain).copied().collect();
        let unexpected: Vec<_> = present.difference(&allowed).collect();
        assert!(unexpected.is_empty(), "round {round}: rows nobody attempted: {unexpected:?}");
        writer_committed = present;

        // Bring the killed node back so the next round again has a majority after a kill.
        block_in_place(|| {
            cluster.restart(old).expect("restart the killed node");
            cluster.wait_for_voters(3, ELECTION_BOUND).expect("3 voters again");
        });
    }
    pool.close().await;
    writer_pool.close().await;
}

fn cluster_leader(cluster: &mut dqlite::testing::Cluster) -> usize {
    block_in_place(|| cluster.wait_for_leader(ELECTION_BOUND).expect("a leader"))
}

fn refuses_connections(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

#[test]
fn launcher_kills_restarts_and_cleans_up() {
    let mut cluster = common::start_cluster(3);
    assert_eq!(cluster.len(), 3);
    assert!(cluster.url("x.db").starts_with("dqlite://127.0.0."));
    let leader = cluster.wait_for_leader(ELECTION_BOUND).unwrap();
    let follower = (leader + 1) % 3;

    // A killed follower is gone at once; the leader stays.
    let follower_addr = cluster.address(follower);
    cluster.kill(follower).unwrap();
    assert!(!cluster.is_running(follower));
    assert!(refuses_connections(follower_addr), "killed node still accepts connections");
    assert_eq!(cluster.wait_for_leader(ELECTION_BOUND).unwrap(), leader);
    assert!(cluster.kill(follower).is_err(), "killing a dead node is an error, not a no-op");

    // Restarted on the same address and data, it is a voter again.
    cluster.restart(follower).unwrap();
    assert!(cluster.is_running(follower));
    cluster.wait_for_voters(3, ELECTION_BOUND).unwrap();
    let members = cluster.members().unwrap();
    assert!(members.iter().any(|m| m.address == follower_addr.to_string()));
    assert!(cluster.restart(follower).is_err(), "restarting a running node is an error");
    assert!(cluster.kill(7).is_err(), "out-of-range node index is an error");

    // Drop kills every node.
    let addrs = cluster.addresses();
    drop(cluster);
    for addr in addrs {
        assert!(refuses_connections(addr), "{addr} still up after the cluster was dropped");
    }
}

#[test]
fn single_node_cluster() {
    let mut cluster = common::start_cluster(1);
    assert_eq!(cluster.wait_for_leader(ELECTION_BOUND).unwrap(), 0);
    let url = cluster.url("single.db");
    assert!(!url.contains("peers="), "{url}");
    let members = cluster.members().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, dqlite::testing::Role::Voter);

    // With its only node dead, a bounded wait for a leader times out, saying what it waited for.
    cluster.kill(0).unwrap();
    let err = cluster.wait_for_leader(Duration::from_millis(300)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("timed out after") && message.contains("no node reported itself as leader"), "{message}");
    assert!(message.contains("node 0"), "timeout errors show each node's log: {message}");
    // Restarted on its data, it leads again.
    cluster.restart(0).unwrap();
    assert_eq!(cluster.wait_for_leader(ELECTION_BOUND).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_data_and_the_pool_reconnects() {
    let mut cluster = block_in_place(|| common::start_cluster(3));
    let pool = DqlitePoolOptions::new().max_connections(2).connect(&cluster.url("restart.db")).await.unwrap();
    pool.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT NOT NULL)").await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for id in 1..=100_i64 {
        sqlx::query("INSERT INTO ledger (id, note) VALUES (?, 'before')").bind(id).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    // Every node dies at once, then all come back on their data.
    block_in_place(|| {
        for i in 0..3 {
            cluster.kill(i).expect("SIGKILL");
        }
        let start = Instant::now();
        for i in 0..3 {
            cluster.restart(i).expect("restart on the same data");
        }
        let leader = cluster.wait_for_leader(ELECTION_BOUND).expect("a leader after the full restart");
        eprintln!("full restart: node {leader} leader after {:?}", start.elapsed());
    });

    // First attempt, same pool: the committed transaction is all there, and writes work.
    let present = ids(&pool).await;
    assert_eq!(present, (1..=100).collect::<BTreeSet<i64>>());
    sqlx::query("INSERT INTO ledger (id, note) VALUES (101, 'after')").execute(&pool).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 101);
    pool.close().await;
}
