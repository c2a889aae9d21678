//! A whole node: data directory, Raft runtime, TCP peer transport and client-protocol server on
//! one address, and (with `join` seeds) joining an existing cluster.
//!
//! ```text
//!  DataDir (DIR/node-id, DIR/cluster-id, DIR/raft/, DIR/db/)
//!     │ id, fresh?                          ┌──────────── Server (client protocol) ◄── clients
//!     ▼                                     │   SqlBackend (the SQLite layer) │ RuntimeCluster
//!  Runtime::start(storage on DIR/raft/, state machine, TcpTransport, inbox) ──► RuntimeHandle
//!                                           │                                    ▲
//!  one TcpListener on --address ────────────┴── PEER_MAGIC ──► TcpTransport ─────┘ (inbox)
//!  join seeds (fresh or not): join::join() ──ADD/ASSIGN──► the cluster's leader
//! ```
//!
//! The SQL backend and the state machine are given by the caller (the SQLite layer provides
//! both); a node of this crate is generic over them.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dqlite_raft::{Configuration, NodeId, Role, Server as RaftServer};

use crate::db::{Databases, DbConfig, DbError};
use crate::replication::{Replicator, StateMachine};
use crate::runtime::{inbox, LateReplicator, Runtime, RuntimeError, RuntimeHandle, RuntimeOptions};
use crate::server::db_backend::DbBackend;
use crate::server::join::{self, JoinOptions};
use crate::server::runtime_cluster::RuntimeCluster;
use crate::server::{Server, ServerConfig, ServerHandle, SqlBackend};
use crate::transport::{TcpTransport, TransportConfig};

/// Name of the file holding the node id (decimal, one line).
pub const NODE_ID_FILE: &str = "node-id";
/// Name of the file holding the cluster id (hex, one line).
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// The runtime's directory (Raft log, metadata, snapshots).
pub const RAFT_DIR: &str = "raft";
/// The SQLite layer's directory (one SQLite file + WAL per database).
pub const DB_DIR: &str = "db";
/// The data directory's lock file (an exclusive `flock` while a node runs on it).
pub const LOCK_FILE: &str = "lock";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A data-directory operation failed.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another node (of this or another process) holds the data directory's lock.
    #[error(
        "data directory {path} is in use by another node (its lock file {lock} is held, by this \
         or another process): one node per data directory"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A data-directory file holds something unexpected.
    #[error("data directory file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The runtime did not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The SQLite layer did not open.
    #[error("databases: {0}")]
    Db(#[from] DbError),
}

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    node_id: NodeId,
    fresh: bool,
    cluster_id: u64,
    /// The open lock file holding the directory's exclusive `flock` (released when the last
    /// clone of this `DataDir` is dropped; see [`DataDir::open`]).
    _lock: std::sync::Arc<std::fs::File>,
}

fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A random non-zero id (from the OS-seeded hasher, the clock and the process id).
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    // Keep ids within i63 so tools that print them as signed integers agree.
    (h.finish() >> 1).max(1)
}

impl DataDir {
    /// Opens `root`, creating it (and a new node id) if it holds no node yet.
    ///
    /// Takes an exclusive OS lock on `root/lock` (`flock`, non-blocking) first and holds it
    /// while this `DataDir` or a clone lives (the [`Node`] keeps one): a second open of the
    /// directory, from another process or this one, fails with [`NodeError::InUse`] before
    /// touching anything. The lock dies with the process, so a crash leaves nothing to clean.
    pub fn open(root: &Path) -> Result<DataDir, NodeError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NodeError::DataDir { path, source }
        };
        std::fs::create_dir_all(root).map_err(err(root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(err(&lock_path))?;
        #[cfg(unix)]
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(NodeError::InUse { path: root.to_path_buf(), lock: lock_path });
            }
            Err(e) => return Err(NodeError::DataDir { path: lock_path, source: e.into() }),
        }
        for sub in [RAFT_DIR, DB_DIR] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(err(&p))?;
        }
        let id_path = root.join(NODE_ID_FILE);
        let (node_id, fresh) = match std::fs::read_to_string(&id_path) {
            Ok(text) => {
                let id = text.trim().parse::<u64>().ok().filter(|id| *id != 0).ok_or_else(|| NodeError::Damaged {
                    path: id_path.clone(),
                    reason: format!("expected a non-zero decimal node id, found {:?}", text.trim()),
                })?;
                (NodeId(id), false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = random_id();
                write_atomically(&id_path, &format!("{id}\n")).map_err(err(&id_path))?;
                (NodeId(id), true)
            }
            Err(e) => return Err(NodeError::DataDir { path: id_path, source: e }),
        };
        let cid_path = root.join(CLUSTER_ID_FILE);
        let cluster_id = match std::fs::read_to_string(&cid_path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| NodeError::Damaged {
                path: cid_path.clone(),
                reason: format!("expected a hex cluster id, found {:?}", text.trim()),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(NodeError::DataDir { path: cid_path, source: e }),
        };
        Ok(DataDir { root: root.to_path_buf(), node_id, fresh, cluster_id, _lock: std::sync::Arc::new(lock) })
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// True if this directory held no node before [`DataDir::open`].
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The cluster id (0 while unknown).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Records the cluster id (once known).
    pub fn set_cluster_id(&mut self, id: u64) -> Result<(), NodeError> {
        if id == 0 || id == self.cluster_id {
            return Ok(());
        }
        let path = self.root.join(CLUSTER_ID_FILE);
        write_atomically(&path, &format!("{id:016x}\n")).map_err(|source| NodeError::DataDir { path, source })?;
        self.cluster_id = id;
        Ok(())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/raft/`.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join(RAFT_DIR)
    }

    /// `DIR/db/`.
    pub fn db_dir(&self) -> PathBuf {
        self.root.join(DB_DIR)
    }
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The address to listen on and to advertise to peers and clients (`HOST:PORT`).
    pub address: String,
    /// Nodes to join through; empty with a fresh data directory = bootstrap a new cluster.
    pub join: Vec<String>,
    /// The timing knob (heartbeat 10x, election timeout 100x; LAN default 10 ms).
    pub network_latency: Duration,
    /// Client-protocol server settings.
    pub server: ServerConfig,
    /// First members up to this many become voters, later ones standbys.
    pub max_voters: usize,
    /// Whether to listen on `address` (default true). Without a socket the node can only be a
    /// single-node cluster reached in process ([`Node::local_connector`]).
    pub listen: bool,
    /// Take a snapshot after this many entries (None: the runtime's default).
    pub snapshot_threshold: Option<u64>,
    /// Entries kept in the log behind a snapshot (None: the runtime's default).
    pub snapshot_trailing: Option<u64>,
}

impl NodeConfig {
    /// LAN defaults at `address`.
    pub fn new(address: impl Into<String>) -> Self {
        NodeConfig {
            address: address.into(),
            join: Vec::new(),
            network_latency: Duration::from_millis(10),
            server: ServerConfig::default(),
            max_voters: 3,
            listen: true,
            snapshot_threshold: None,
            snapshot_trailing: None,
        }
    }
}

/// How long a graceful stop waits for client requests already running to finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// A running node.
#[derive(Debug)]
pub struct Node {
    runtime: RuntimeHandle,
    server: Option<ServerHandle>,
    transport: TcpTransport,
    data: DataDir,
    join_task: Option<tokio::task::JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// See [`RuntimeCluster::stopping_flag`].
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Node {
    /// Starts a node on `data` with the given state machine (`sm`, driven by the runtime) and
    /// SQL backend (`sql`, serving the client protocol; built from the runtime handle, which is
    /// also the [`Replicator`](crate::replication::Replicator)).
    ///
    /// A fresh data directory without `join` seeds bootstraps a one-voter cluster; with seeds,
    /// the node starts empty and asks the seeds' leader to add it (in the background, retrying
    /// until it succeeds). A used data directory resumes (and, with seeds, makes sure it is a
    /// member).
    pub async fn start<S: StateMachine, B: SqlBackend>(
        config: NodeConfig,
        mut data: DataDir,
        sm: S,
        sql: impl FnOnce(&RuntimeHandle) -> B,
    ) -> Result<Node, NodeError> {
        let listener = if config.listen {
            Some(
                tokio::net::TcpListener::bind(&config.address)
                    .await
                    .map_err(|source| NodeError::Bind { address: config.address.clone(), source })?,
            )
        } else {
            None
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let id = data.node_id();
        let bootstrap = data.is_fresh() && config.join.is_empty();
        if bootstrap && data.cluster_id() == 0 {
            data.set_cluster_id(random_id())?;
        }
        let mut tcfg = TransportConfig::new(id);
        tcfg.cluster_id = data.cluster_id();
        tcfg.advertise = config.address.clone();
        let mut opts = RuntimeOptions::new(id, config.address.clone());
        opts.network_latency = config.network_latency;
        opts.rng_seed = random_id();
        if let Some(n) = config.snapshot_threshold {
            opts.snapshot_threshold = n;
        }
        if let Some(n) = config.snapshot_trailing {
            opts.trailing_entries = n;
        }
        if bootstrap {
            let mut conf = Configuration::new();
            conf.upsert(RaftServer { id, address: config.address.clone(), role: Role::Voter });
            opts.bootstrap = Some(conf);
            tracing::info!(node = %id, address = %config.address, "bootstrapping a new cluster");
        }
        // A frame must hold the largest entry the runtime accepts (an AppendEntries always
        // carries at least one entry) plus a full batch and a snapshot chunk.
        tcfg.max_frame_bytes =
            tcfg.max_frame_bytes.max(opts.max_entry_bytes + (2 << 20) + opts.snapshot_chunk_bytes as usize);
        let (inbox_tx, inbox_rx) = inbox(opts.inbox_queue);
        let transport = TcpTransport::new(tcfg, inbox_tx, tokio::runtime::Handle::current());
        let backend = crate::storage::backend::auto(&data.raft_dir())
            .map_err(|source| NodeError::DataDir { path: data.raft_dir(), source })?;
        let runtime = Runtime::start(opts, backend, sm, Arc::new(transport.clone()), inbox_rx).await?;
        let sql = sql(&runtime);
        let cluster = RuntimeCluster::new(runtime.clone(), data.db_dir());
        let stopping = cluster.stopping_flag();
        let server = Server::new(config.server.clone(), sql, cluster).with_peers(transport.clone());
        let server = match listener {
            Some(listener) => server.spawn(listener),
            None => server.spawn_local(),
        };
        let join_task = (!config.join.is_empty()).then(|| {
            let mut opts = JoinOptions::new(config.join.clone(), id.0, config.address.clone());
            opts.max_voters = config.max_voters;
            let transport = transport.clone();
            let mut data = data.clone();
            tokio::spawn(async move {
                join::join(&opts).await;
                // The leader's first message tells us the cluster id: keep it for restarts.
                for _ in 0..200 {
                    if transport.cluster_id() != 0 {
                        if let Err(e) = data.set_cluster_id(transport.cluster_id()) {
                            tracing::warn!(error = %e, "cannot record the cluster id");
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        tracing::info!(node = %id, address = %config.address, "node started");
        Ok(Node { runtime, server: Some(server), transport, data, join_task, local_addr, stopping })
    }

    /// Starts a node serving the SQLite layer's databases (in `DIR/db/`): what `dqlited run`
    /// runs.
    pub async fn start_sqlite(config: NodeConfig, data: DataDir, db: DbConfig) -> Result<Node, NodeError> {
        let late = LateReplicator::new();
        let root = data.root().to_path_buf();
        let rep: Arc<dyn Replicator> = late.clone();
        let dbs = tokio::task::spawn_blocking(move || Databases::open(&root, rep, db))
            .await
            .map_err(|e| NodeError::DataDir { path: data.db_dir(), source: io::Error::other(e.to_string()) })??;
        let handle = dbs.handle();
        Node::start(config, data, dbs, move |rt| {
            late.bind(Some(rt.clone()));
            DbBackend::new(handle)
        })
        .await
    }

    /// The node id.
    pub fn id(&self) -> NodeId {
        self.runtime.id()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Opens in-process client connections to this node's server (no socket).
    pub fn local_connector(&self) -> Option<crate::server::LocalConnector> {
        self.server.as_ref().map(ServerHandle::local_connector)
    }

    /// The runtime.
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    /// The transport (for its counters).
    pub fn transport(&self) -> &TcpTransport {
        &self.transport
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// Stops gracefully: a leader hands leadership over, then clients are disconnected and the
    /// runtime finishes its storage work. The transport stays up during the handover.
    pub async fn shutdown(mut self) {
        if let Some(t) = self.join_task.take() {
            t.abort();
        }
        if self.transport.cluster_id() != 0 {
            let id = self.transport.cluster_id();
            if let Err(e) = self.data.set_cluster_id(id) {
                tracing::warn!(error = %e, "cannot record the cluster id");
            }
        }
        // Clients stop seeing this node as the leader first, so they look for the next one
        // (and are told NOT_LEADER, which they retry) while leadership is handed over.
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        // Requests already running (a commit waiting for Raft) finish first, bounded.
        if let Some(server) = &self.server {
            if !server.wait_idle(SHUTDOWN_DRAIN).await {
                tracing::warn!(bound = ?SHUTDOWN_DRAIN, "client requests still running; stopping anyway");
            }
        }
        self.runtime.shutdown().await;
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        tracing::info!(node = %self.runtime.id(), "node stopped");
    }
}
