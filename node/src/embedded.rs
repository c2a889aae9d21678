//! Embedding a node in an application: a builder, a clonable handle, and the process-wide
//! registry that makes "one node per data directory per process" hold and lets the driver
//! attach to a node this process already runs.
//!
//! ```text
//!  NodeBuilder::new(DIR).address(..).join(..)... ──start()──► EmbeddedNode (Arc; clones share it)
//!        │  refuses a DIR this process already runs (EmbeddedError::AlreadyRunning)      │
//!        ▼                                                                               ▼
//!  Node::start_sqlite (data dir, runtime, TCP transport, server)   ready / describe / cluster /
//!        │                                                         leader / connect_local / close
//!  registry: canonical DIR ──► EmbeddedNode   (attach_or_start: the driver's `data=DIR` URLs)
//! ```
//!
//! Nodes started through [`attach_or_start`] run on a process-wide engine runtime (a few tokio
//! worker threads named `dqlite-engine`), so they outlive the async runtime of whoever opened
//! the first connection (`#[tokio::test]` and `#[sqlx::test]` make one runtime per test).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dqlite_raft::{NodeId, Role, StateRole};

use crate::db::DbConfig;
use crate::node::{DataDir, Node, NodeConfig, NodeError};
use crate::runtime::RuntimeHandle;
use crate::server::LocalConnector;

/// The address a node without a listening socket advertises (it is never dialed).
pub const NO_SOCKET_ADDRESS: &str = "in-process";

/// Why an embedded node could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// This process already runs a node on that data directory.
    #[error(
        "data directory {dir} is already in use by a node of this process (one node per data \
         directory; attach to it instead of starting a second one)"
    )]
    AlreadyRunning {
        /// The data directory (canonical path).
        dir: PathBuf,
    },
    /// A `data=DIR` URL names a running node with a different address.
    #[error("the node on {dir} runs at {running}, not at {requested}")]
    AddressMismatch {
        /// The data directory.
        dir: PathBuf,
        /// Its address.
        running: String,
        /// The address asked for.
        requested: String,
    },
    /// The node did not start.
    #[error("cannot start the node on {dir}: {source}")]
    Start {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The node has been closed.
    #[error("the node has been closed")]
    Closed,
}

/// A member of the cluster as [`EmbeddedNode::cluster`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Address.
    pub address: String,
    /// Voter, standby or spare.
    pub role: Role,
}

/// Builds and starts an embedded node.
///
/// ```no_run
/// # async fn demo() -> Result<(), dqlite_node::embedded::EmbeddedError> {
/// use std::time::Duration;
/// use dqlite_node::embedded::NodeBuilder;
///
/// let node = NodeBuilder::new("/var/lib/app/node")
///     .address("127.0.0.1:9001")
///     .join(["127.0.0.2:9001", "127.0.0.3:9001"])
///     .network_latency(Duration::from_millis(10))
///     .start()
///     .await?;
/// node.ready(Duration::from_secs(10)).await?;
/// println!("{}", node.describe().await?);
/// node.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    data: PathBuf,
    config: NodeConfig,
    db: DbConfig,
}

impl NodeBuilder {
    /// A node on data directory `data` (created if missing), without a listening socket until
    /// [`address`](Self::address) is set: a single-node cluster reachable only in process.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        let mut config = NodeConfig::new(NO_SOCKET_ADDRESS);
        config.listen = false;
        NodeBuilder { data: data.into(), config, db: DbConfig::default() }
    }

    /// Listen on (and advertise) `HOST:PORT` for peers and remote clients.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.config.address = address.into();
        self.config.listen = true;
        self
    }

    /// Nodes to join through (an empty fresh node without them bootstraps a new cluster).
    pub fn join<I: IntoIterator<Item = S>, S: Into<String>>(mut self, seeds: I) -> Self {
        self.config.join = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The timing knob: heartbeat 10x, election timeout 100x (default 10 ms).
    pub fn network_latency(mut self, latency: Duration) -> Self {
        self.config.network_latency = latency;
        self
    }

    /// Take a Raft snapshot after `entries` entries, keeping `trailing` entries behind it.
    pub fn snapshot(mut self, entries: u64, trailing: u64) -> Self {
        self.config.snapshot_threshold = Some(entries);
        self.config.snapshot_trailing = Some(trailing);
        self
    }

    /// Checkpoint the WAL after `entries` applied entries, or when it holds `wal_frames` frames.
    pub fn checkpoint(mut self, entries: u64, wal_frames: u32) -> Self {
        self.db.checkpoint_every_entries = entries;
        self.db.checkpoint_wal_frames = wal_frames;
        self
    }

    /// How long a writer waits for a database's write lock (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.db.busy_timeout = timeout;
        self
    }

    /// Page size of the databases this node creates (a power of two from 512 to 65536; default
    /// 4096). An existing database keeps its own, and a database the node receives from the
    /// leader follows the leader's. Another value makes [`NodeBuilder::start`] fail.
    pub fn page_size(mut self, bytes: u32) -> Self {
        self.db.page_size = bytes;
        self
    }

    /// First members up to this many become voters, later ones standbys (default 3).
    pub fn max_voters(mut self, n: usize) -> Self {
        self.config.max_voters = n;
        self
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The busy timeout the node will start with.
    pub fn get_busy_timeout(&self) -> Duration {
        self.db.busy_timeout
    }

    /// The address (`None` without a socket).
    pub fn get_address(&self) -> Option<&str> {
        self.config.listen.then_some(self.config.address.as_str())
    }

    /// Starts the node on the current tokio runtime (its tasks live there). Fails with
    /// [`EmbeddedError::AlreadyRunning`] if this process already runs a node on the directory.
    pub async fn start(self) -> Result<EmbeddedNode, EmbeddedError> {
        let dir = canonical(&self.data)?;
        // Reserve the directory first: nothing of a second node touches a directory in use.
        {
            let mut reg = registry();
            if reg.contains_key(&dir) {
                return Err(EmbeddedError::AlreadyRunning { dir });
            }
            reg.insert(dir.clone(), Slot::Starting);
        }
        match self.start_reserved(&dir).await {
            Ok(node) => {
                registry().insert(dir, Slot::Running(node.clone()));
                Ok(node)
            }
            Err(e) => {
                registry().remove(&dir);
                Err(e)
            }
        }
    }

    async fn start_reserved(self, dir: &Path) -> Result<EmbeddedNode, EmbeddedError> {
        let start_err = |source| EmbeddedError::Start { dir: dir.to_path_buf(), source };
        let data = DataDir::open(dir).map_err(start_err)?;
        let address = self.config.listen.then(|| self.config.address.clone());
        let db = self.db.clone();
        let node = Node::start_sqlite(self.config, data, db).await.map_err(start_err)?;
        let local = node.local_connector().ok_or(EmbeddedError::Closed)?;
        let runtime = node.runtime().clone();
        let bound = node.local_addr().map(|a| a.to_string());
        let busy_timeout = self.db.busy_timeout;
        Ok(EmbeddedNode {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                address: address.map(|a| if a.ends_with(":0") { bound.unwrap_or(a) } else { a }),
                runtime,
                local,
                busy_timeout,
                node: tokio::sync::Mutex::new(Some(node)),
            }),
        })
    }
}

fn canonical(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let err = |source| EmbeddedError::Start {
        dir: dir.to_path_buf(),
        source: NodeError::DataDir { path: dir.to_path_buf(), source },
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    dir.canonicalize().map_err(err)
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    address: Option<String>,
    runtime: RuntimeHandle,
    local: LocalConnector,
    busy_timeout: Duration,
    node: tokio::sync::Mutex<Option<Node>>,
}

/// A running embedded node. Clones share the node; [`close`](Self::close) stops it for all.
#[derive(Debug, Clone)]
pub struct EmbeddedNode {
    inner: Arc<Inner>,
}

impl EmbeddedNode {
    /// The node id.
    pub fn id(&self) -> NodeId {
        self.inner.runtime.id()
    }

    /// The address it listens on (`None`: no socket).
    pub fn address(&self) -> Option<&str> {
        self.inner.address.as_deref()
    }

    /// The data directory (canonical path).
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How long a writer waits for a database's write lock on this node (set at start:
    /// [`NodeBuilder::busy_timeout`], or the driver's `busy_timeout=` URL option).
    pub fn busy_timeout(&self) -> Duration {
        self.inner.busy_timeout
    }

    /// The Raft runtime.
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.inner.runtime
    }

    /// Whether this node is the leader right now.
    pub fn is_leader(&self) -> bool {
        !self.inner.runtime.is_stopped() && self.inner.runtime.role().role == StateRole::Leader
    }

    /// The known leader (id, address).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.inner.runtime.leader()
    }

    /// The members of the configuration in force.
    pub fn cluster(&self) -> Vec<MemberInfo> {
        self.inner
            .runtime
            .configuration()
            .servers()
            .iter()
            .map(|s| MemberInfo { id: s.id, address: s.address.clone(), role: s.role })
            .collect()
    }

    /// A one-line description of the node's Raft state.
    pub async fn describe(&self) -> Result<String, EmbeddedError> {
        self.inner.runtime.describe().await.map_err(|_| EmbeddedError::Closed)
    }

    /// Waits (bounded by `timeout`) until a leader is known and this node has applied every
    /// entry it knows to be committed.
    pub async fn ready(&self, timeout: Duration) -> Result<(), EmbeddedError> {
        let start = Instant::now();
        let left = || timeout.saturating_sub(start.elapsed());
        self.inner
            .runtime
            .wait_for_leader(left())
            .await
            .map_err(|_| EmbeddedError::Timeout { what: "a leader", waited: start.elapsed() })?;
        loop {
            let status = self.inner.runtime.status().await.map_err(|_| EmbeddedError::Closed)?;
            if status.raft.leader.is_some() && status.raft.applied >= status.raft.committed {
                return Ok(());
            }
            if left().is_zero() {
                return Err(EmbeddedError::Timeout { what: "the local state to catch up", waited: start.elapsed() });
            }
            tokio::time::sleep(Duration::from_millis(5).min(left())).await;
        }
    }

    /// A new in-process client connection to this node's server (see [`LocalConnector`]).
    pub fn connect_local(&self) -> tokio::io::DuplexStream {
        self.inner.local.connect()
    }

    /// Whether [`close`](Self::close) or [`kill`](Self::kill) ran.
    pub fn is_closed(&self) -> bool {
        self.inner.runtime.is_stopped()
    }

    /// Stops the node gracefully: a leader hands leadership over first. The data directory is
    /// free again afterwards (a new node may start on it).
    pub async fn close(&self) {
        let node = self.inner.node.lock().await.take();
        if let Some(node) = node {
            node.shutdown().await;
        }
        self.unregister();
    }

    /// Stops the node abruptly (no handover; what a crash looks like to its peers), for tests.
    pub async fn kill(&self) {
        let node = self.inner.node.lock().await.take();
        if let Some(node) = node {
            node.runtime().kill().await;
            node.shutdown().await;
        }
        self.unregister();
    }

    fn unregister(&self) {
        let mut reg = registry();
        if let Some(Slot::Running(n)) = reg.get(&self.inner.dir) {
            if Arc::ptr_eq(&n.inner, &self.inner) {
                reg.remove(&self.inner.dir);
            }
        }
    }
}

#[derive(Debug)]
enum Slot {
    Starting,
    Running(EmbeddedNode),
}

fn registry() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Slot>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Slot>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// The running node of this process on `dir`, if any.
pub fn running(dir: &Path) -> Option<EmbeddedNode> {
    let dir = dir.canonicalize().ok()?;
    match registry().get(&dir) {
        Some(Slot::Running(n)) => Some(n.clone()),
        _ => None,
    }
}

/// The process-wide runtime that nodes started by [`attach_or_start`] run on.
pub fn engine_runtime() -> &'static tokio::runtime::Handle {
    static ENGINE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("dqlite-engine".into()).spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("dqlite-engine")
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Runs for the life of the process.
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        match spawned.map_err(|e| e.to_string()).and_then(|_| rx.recv().map_err(|e| e.to_string())) {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => panic!("cannot build the dqlite engine runtime: {e}"),
            Err(e) => panic!("cannot start the dqlite engine thread: {e}"),
        }
    })
}

/// Runs `fut` on the engine runtime and waits for it from async code on any runtime.
pub async fn on_engine<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, EmbeddedError> {
    engine_runtime().spawn(fut).await.map_err(|_| EmbeddedError::Closed)
}

/// Runs `fut` on the engine runtime and blocks the calling thread until it finishes (for
/// blocking code such as test launchers; not from inside an async task).
pub fn block_on_engine<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, EmbeddedError> {
    let (tx, rx) = std::sync::mpsc::channel();
    engine_runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| EmbeddedError::Closed)
}

/// The node this process runs on the builder's data directory, or a new one started from the
/// builder on the [`engine_runtime`]. Concurrent callers for one directory get the same node.
pub async fn attach_or_start(builder: NodeBuilder) -> Result<EmbeddedNode, EmbeddedError> {
    static STARTING: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    let dir = canonical(&builder.data)?;
    let check_address = |n: EmbeddedNode| match (builder.get_address(), n.address()) {
        (Some(want), Some(have)) if want != have && !want.ends_with(":0") => Err(EmbeddedError::AddressMismatch {
            dir: dir.clone(),
            running: have.to_owned(),
            requested: want.to_owned(),
        }),
        _ => Ok(n),
    };
    let check = |n: EmbeddedNode| {
        if n.busy_timeout() != builder.get_busy_timeout() {
            tracing::warn!(
                dir = %dir.display(),
                running = ?n.busy_timeout(),
                requested = ?builder.get_busy_timeout(),
                "attaching to a running node whose busy timeout differs (it is set when the node starts)"
            );
        }
        check_address(n)
    };
    if let Some(n) = running(&dir) {
        return check(n);
    }
    let _guard = STARTING.get_or_init(|| tokio::sync::Mutex::new(())).lock().await;
    if let Some(n) = running(&dir) {
        return check(n);
    }
    let b = builder.clone();
    on_engine(b.start()).await?
}
