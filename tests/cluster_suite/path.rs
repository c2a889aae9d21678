//! Which path the suite's connections take: with the `embedded` launcher (nodes in this
//! process, URLs with node 0's `data=DIR`) they reach the leader through the in-process pipe,
//! so every other test of this binary checks that path; with the other launchers, TCP.

use sqlx::{Acquire, Connection};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_take_the_in_process_path_exactly_with_embedded_nodes() {
    let (url, launcher, leader_is_node_0) = {
        let mut cluster = common::shared_cluster();
        let leader = cluster.wait_for_leader(common::ELECTION_BOUND).unwrap();
        (cluster.url(&common::db_name("path")), cluster.launcher(), leader == 0)
    };
    let pool = common::pool_for(&url, 2).await;
    let mut conn = pool.acquire().await.unwrap();
    let conn = conn.acquire().await.unwrap();
    conn.ping().await.unwrap();
    // The embedded launcher leaves node 0 (the one the URL names) leading, and nothing in this
    // binary moves leadership.
    let in_process = launcher == "embedded";
    assert!(!in_process || leader_is_node_0, "the embedded launcher's node 0 leads");
    assert_eq!(conn.is_in_process(), in_process, "launcher {launcher}, url {url}");
    // Both ways, the connection talks to the leader.
    let leader: i64 = sqlx::query_scalar("SELECT 41 + 1").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(leader, 42);
    assert!(conn.leader_address().is_some());
}
