//! Embedded nodes: the builder's one-node-per-directory rule, `data=` URLs (with and without a
//! socket), and pools, `migrate!` and `AnyPool` over the in-process path.

use std::time::Duration;

use dqlite::node::{EmbeddedError, NodeBuilder};
use sqlx::{FromRow, Row};
use sqlx_dqlite::{DqliteConnectOptions, DqlitePoolOptions};

#[derive(Debug, FromRow, PartialEq)]
struct Note {
    id: i64,
    author: String,
    body: String,
    stars: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_directory_in_use_is_a_clear_error() {
    let dir = tempfile_dir("second-open");
    let node = NodeBuilder::new(&dir).start().await.expect("first start");
    node.ready(Duration::from_secs(20)).await.expect("ready");
    assert_eq!(node.cluster().len(), 1);
    assert_eq!(node.leader().map(|l| l.0), Some(node.id()));
    assert!(node.describe().await.unwrap().contains("Leader"), "{}", node.describe().await.unwrap());
    let err = NodeBuilder::new(&dir).start().await.expect_err("second start on the same directory");
    assert!(matches!(err, EmbeddedError::AlreadyRunning { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("already in use") && message.contains("second-open"), "{message}");
    // The first node is unharmed, and after close the directory can be used again.
    assert!(node.is_leader());
    let id = node.id();
    node.close().await;
    let again = NodeBuilder::new(&dir).start().await.expect("start after close");
    assert_eq!(again.id(), id, "the node resumes from its data directory");
    again.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_socket_url_runs_migrate_query_as_and_any() {
    let dir = tempfile_dir("no-socket");
    let url = format!("dqlite:///notes.db?data={}", dir.display());
    let opts: DqliteConnectOptions = url.parse().unwrap();
    assert_eq!(opts.get_data_dir(), Some(dir.as_path()));
    let pool = DqlitePoolOptions::new().max_connections(3).connect(&url).await.unwrap();
    sqlx::migrate!("examples/migrations").run(&pool).await.unwrap();
    sqlx::query("INSERT INTO notes (author, body, stars) VALUES (?, ?, ?)")
        .bind("ada")
        .bind("in process")
        .bind(2)
        .execute(&pool)
        .await
        .unwrap();
    let notes: Vec<Note> = sqlx::query_as("SELECT id, author, body, stars FROM notes").fetch_all(&pool).await.unwrap();
    assert_eq!(notes, [Note { id: 1, author: "ada".into(), body: "in process".into(), stars: 2 }]);
    // SQL errors are those of the wire.
    let err = sqlx::query("INSERT INTO nope VALUES (1)").execute(&pool).await.unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
    // A second URL on the same directory attaches to the running node.
    let node = dqlite::node::embedded::running(&dir).expect("the URL started a node");
    assert_eq!(node.address(), None, "no listening socket");
    let pool2 = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&pool2).await.unwrap();
    assert_eq!(n, 1);
    // AnyPool on the same URL.
    let _ = sqlx::any::install_drivers(&[sqlx_dqlite::any::DRIVER]);
    let any = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let row = sqlx::query("SELECT author FROM notes").fetch_one(&any).await.unwrap();
    assert_eq!(row.get::<String, _>(0), "ada");
    any.close().await;
    pool2.close().await;
    pool.close().await;
    node.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_url_options_are_checked() {
    let bad = |url: &str| url.parse::<DqliteConnectOptions>().expect_err(url).to_string();
    assert!(bad("dqlite:///db").contains("no host"));
    assert!(bad("dqlite:///db?data=/tmp/x&join=127.0.0.1:1").contains("needs a listening node"));
    assert!(bad("dqlite://127.0.0.1:1/db?join=127.0.0.2:1").contains("needs `data=DIR`"));
    assert!(bad("dqlite://127.0.0.1:1/db?data=").contains("names no directory"));
    let o: DqliteConnectOptions = "dqlite://127.0.0.1:7001/db?data=/tmp/n1&join=127.0.0.2:7001".parse().unwrap();
    let again: DqliteConnectOptions =
        sqlx::ConnectOptions::to_url_lossy(&o).as_str().parse().expect("to_url_lossy parses back");
    assert_eq!(format!("{o:?}"), format!("{again:?}"));
    assert_eq!(o.get_seeds().len(), 2);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dqlite-embedded-{tag}-{}-{}", std::process::id(), rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u64 {
    dqlite::node::node::random_id() % 1_000_000
}

/// The `embedded` test launcher (`DQLITE_TEST_LAUNCHER=embedded`): three nodes in this
/// process, node 0 leading, in-process connections on the cluster URL, and `kill`/`restart`
/// as the failover tests use them.
#[test]
fn the_embedded_launcher_runs_a_cluster_in_process() {
    use dqlite::testing::{EmbeddedDqlite, Launcher};
    let mut cluster = EmbeddedDqlite::new().start(3).expect("three embedded nodes");
    assert_eq!(cluster.launcher(), "embedded");
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(30)).unwrap(), 0, "node 0 leads");
    let url = cluster.url("launcher.db");
    assert!(url.contains("data=") && url.contains("peers="), "{url}");
    assert!(!cluster.remote_url("launcher.db").contains("data="));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pool = rt.block_on(async {
        let pool = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut *conn).await.unwrap();
        assert!(conn.is_in_process(), "node 0 leads: the pipe, not a socket");
        drop(conn);
        pool
    });
    // A follower dies and comes back; the leader keeps committing meanwhile.
    cluster.kill(2).unwrap();
    assert!(!cluster.is_running(2));
    rt.block_on(sqlx::query("INSERT INTO t VALUES (1)").execute(&pool)).unwrap();
    cluster.restart(2).unwrap();
    cluster.wait_for_voters(3, Duration::from_secs(30)).unwrap();
    // The leader dies: another node takes over, reached over TCP.
    rt.block_on(pool.close());
    cluster.kill(0).unwrap();
    let new = cluster.wait_for_new_leader(0, Duration::from_secs(30)).unwrap();
    assert_ne!(new, 0);
    let remote = cluster.remote_url("launcher.db");
    let n: i64 = rt.block_on(async {
        let pool = DqlitePoolOptions::new().max_connections(1).connect(&remote).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        assert!(!conn.is_in_process());
        sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *conn).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *conn).await.unwrap()
    });
    assert_eq!(n, 2, "the acknowledged write survived the leader's death");
    cluster.restart(0).unwrap();
    cluster.wait_for_voters(3, Duration::from_secs(30)).unwrap();
}

/// The child of [`a_second_process_on_a_directory_in_use_is_a_clear_error`]: runs a node on
/// `$EMBEDDED_HOLD_DIR`, says so on stdout, and holds it until its stdin closes.
#[test]
#[ignore = "a child process of a_second_process_on_a_directory_in_use_is_a_clear_error"]
fn data_dir_holder_process() {
    let dir = std::env::var("EMBEDDED_HOLD_DIR").expect("started by its parent test");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(NodeBuilder::new(&dir).start()).expect("the child starts its node");
    rt.block_on(node.ready(Duration::from_secs(20))).unwrap();
    println!("holding {dir}");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    rt.block_on(node.close());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_directory_in_use_is_a_clear_error() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile_dir("other-process");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "data_dir_holder_process", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("EMBEDDED_HOLD_DIR", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) for the child to say it holds the directory.
    let stdout = child.stdout.take().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints "test NAME ... " before the test's own output on the same line.
            if line.contains("holding ") {
                let _ = said.send(());
            }
        }
    });
    if heard.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("the child did not report holding {} within 60 s (or exited)", dir.display());
    }
    // From this process: the builder and a URL both fail, clearly, and touch nothing.
    let id_before = std::fs::read_to_string(dir.join("node-id")).unwrap();
    let err = NodeBuilder::new(&dir).start().await.expect_err("the directory is in use by the child");
    assert!(
        matches!(&err, EmbeddedError::Start { source: dqlite::node::node::NodeError::InUse { .. }, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("in use by another node") && message.contains("lock"), "{message}");
    let url = format!("dqlite:///x.db?data={}", dir.display());
    let err = DqlitePoolOptions::new().max_connections(1).connect(&url).await.expect_err("URL on a locked dir");
    assert!(err.to_string().contains("in use by another node"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("node-id")).unwrap(), id_before);
    assert!(dqlite::node::embedded::running(&dir).is_none());
    // The child is SIGKILLed (a crash): the OS drops its lock, and the directory opens here.
    child.kill().unwrap();
    child.wait().unwrap();
    let node = NodeBuilder::new(&dir).start().await.expect("the lock died with the child");
    assert_eq!(node.id().0.to_string(), id_before.trim());
    node.ready(Duration::from_secs(20)).await.unwrap();
    // And a second open in this process is refused too (the registry, before the lock).
    let again = NodeBuilder::new(&dir).start().await.expect_err("same process");
    assert!(matches!(again, EmbeddedError::AlreadyRunning { .. }), "{again:?}");
    node.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `busy_timeout=` on an embedded URL is the node's busy timeout too: a writer blocked by
/// another connection's write transaction gets SQLITE_BUSY after about that long, not after
/// the node's 5 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urls_busy_timeout_reaches_the_embedded_node() {
    let dir = tempfile_dir("busy");
    let url = format!("dqlite:///busy.db?data={}&busy_timeout=200ms", dir.display());
    let pool = DqlitePoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let node = dqlite::node::embedded::running(&dir).expect("the URL started a node");
    assert_eq!(node.busy_timeout(), Duration::from_millis(200));
    sqlx::query("CREATE TABLE t (x INTEGER)").execute(&pool).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *holder).await.unwrap();
    let started = std::time::Instant::now();
    let err = sqlx::query("INSERT INTO t VALUES (2)").execute(&pool).await.expect_err("the write lock is held");
    let waited = started.elapsed();
    assert!(err.to_string().contains("locked") || err.to_string().contains("busy"), "{err}");
    // Node (200 ms) plus driver retries (200 ms); the node's 5 s default alone would wait longer.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}: the node did not take busy_timeout=200ms");
    holder.commit().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (2)").execute(&pool).await.unwrap();
    pool.close().await;
    node.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `NodeBuilder::page_size` sets the page size of the databases the node creates; a value that
/// is not a power of two from 512 to 65536 is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_page_size_reaches_new_databases() {
    let bad = tempfile_dir("page-size-bad");
    let err = NodeBuilder::new(&bad).page_size(3000).start().await.expect_err("page size 3000");
    assert!(err.to_string().contains("invalid page size 3000"), "{err}");
    let _ = std::fs::remove_dir_all(&bad);
    let dir = tempfile_dir("page-size");
    let node = NodeBuilder::new(&dir).page_size(16384).start().await.expect("start");
    node.ready(Duration::from_secs(20)).await.expect("ready");
    let url = format!("dqlite:///ps.db?data={}", dir.display());
    let pool = DqlitePoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (x BLOB)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO t VALUES (randomblob(50000))").execute(&pool).await.unwrap();
    let size: i64 = sqlx::query("PRAGMA page_size").fetch_one(&pool).await.unwrap().get(0);
    assert_eq!(size, 16384);
    pool.close().await;
    node.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
