//! Helpers shared by the cross-crate test binaries.
//!
//! Clusters come from [`dqlite::testing::launcher_from_env`] (`DQLITE_TEST_LAUNCHER`, default
//! `real` = C dqlite 1.11 via Debian's `dqlite-demo`), so the same tests run against any
//! dqlite-protocol implementation. A missing `dqlite-demo` fails every test that needs a
//! cluster, with the install command in the message; nothing is skipped.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use dqlite::testing::{launcher_from_env, Cluster};
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};

/// Bound for a new leader after the old one was killed (dqlite 1.11: ~4–6 s here).
pub const ELECTION_BOUND: Duration = Duration::from_secs(30);

/// Routes `tracing` output (the launcher, the driver) to the test's captured output;
/// `RUST_LOG=debug` shows it.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Starts a fresh cluster of `n` nodes for one test (dropped = killed and deleted), panicking
/// with the launcher's full message if it cannot.
pub fn start_cluster(n: usize) -> Cluster {
    init_tracing();
    let launcher = launcher_from_env().unwrap_or_else(|e| panic!("no cluster launcher: {e}"));
    launcher.start(n).unwrap_or_else(|e| panic!("{} launcher could not start {n} nodes: {e}", launcher.name()))
}

/// The 3-node cluster shared by every test of one test binary (each test uses its own
/// database in it). Started on first use; its nodes die with the test process.
///
/// Also sets `DATABASE_URL` to it (before any test can read it: every test that uses the
/// variable reaches it through this function first), for `#[sqlx::test]`.
pub fn shared_cluster() -> MutexGuard<'static, Cluster> {
    static SHARED: OnceLock<Result<Mutex<Cluster>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        init_tracing();
        let launcher = launcher_from_env().map_err(|e| format!("no cluster launcher: {e}"))?;
        let cluster = launcher
            .start(3)
            .map_err(|e| format!("{} launcher could not start the shared cluster: {e}", launcher.name()))?;
        std::env::set_var("DATABASE_URL", cluster.url("sqlx_test_default"));
        Ok(Mutex::new(cluster))
    });
    match shared {
        // A test that panicked while holding the guard leaves the cluster itself intact.
        Ok(cluster) => cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        Err(message) => panic!("{message}"),
    }
}

/// `dqlite://` URL of `database` on the shared cluster.
///
/// The name gets a `.db` suffix (unless it has one) so that no test's database name is a
/// prefix of another's: dqlite 1.11 opens an existing database `abc_x` when asked for `abc`
/// (observed with Debian's libdqlite0 1.11.1), which would make tests share tables.
pub fn shared_url(database: &str) -> String {
    shared_cluster().url(&db_name(database))
}

/// `name` with a `.db` suffix; see [`shared_url`].
pub fn db_name(name: &str) -> String {
    assert!(!name.contains(".db") || name.ends_with(".db"), "{name}: `.db` only as a suffix");
    if name.ends_with(".db") {
        name.to_owned()
    } else {
        format!("{name}.db")
    }
}

/// A pool on `database` in the shared cluster.
pub async fn shared_pool(database: &str) -> DqlitePool {
    pool_for(&shared_url(database), 4).await
}

/// A pool of at most `max_connections` on `url`.
pub async fn pool_for(url: &str, max_connections: u32) -> DqlitePool {
    DqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting a pool to {url}: {e}"))
}

/// Installs the Any drivers this workspace's tests use (dqlite and sqlite), once per process.
pub fn install_any_drivers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        sqlx::any::install_drivers(&[sqlx_dqlite::any::DRIVER, sqlx::sqlite::any::DRIVER])
            .expect("Any drivers are installed once per test process");
    });
}
