//! The dqlite client-protocol server (PROTOCOL.md), on the node's one address.
//!
//! ```text
//!  TcpListener ── accept ──► first word ─┬─ 1 / legacy ──► connection::serve  (one thread per client, inline)
//!   (bounded: max_connections)           │                  read ─► header::check ─► Request::decode
//!                                        │                  ─► dispatch ─► SqlBackend / ClusterBackend
//!                                        │                  ─► Response::encode / ROWS batches ─► write
//!                                        ├─ PEER_MAGIC ───► TcpTransport::serve_inbound (Raft traffic)
//!                                        └─ anything else ─► closed
//! ```
//!
//! The server owns the protocol's semantics: one request at a time per connection, leader
//! checks (`10250 "not leader"`), `db_id` 0 and the OPEN-before-SQL rule, per-connection
//! statement ids, PREPARE's statement tail, ROWS batching with PART/DONE and INTERRUPT, and
//! the FAILURE codes and messages of [`messages`]. The work is done by the two backends of
//! [`backend`]: an SQL backend (databases and statements) and a cluster backend (leadership
//! and membership), which the node implements over its SQLite layer and Raft runtime.
//!
//! Robustness: a request whose header announces more than
//! [`ServerConfig::max_request_bytes`] gets `FAILURE 1001 "request too large"` and the
//! connection is closed (its body is never read); a request that does not decode gets
//! `FAILURE 1005` with the decoder's reason and the connection goes on. Nothing reaches a
//! backend unless the request decoded completely. No input panics the server.
//!
//! Threads: each client connection (TCP or in-process) is served on a thread of its own
//! ([`inline`]): the protocol loop runs on a `current_thread` tokio runtime there, and the SQL
//! backend's blocking work runs on that same thread, so a request crosses no thread hand-off.
//!
//! Memory per connection is bounded: one request (at most `max_request_bytes`) and one ROWS
//! batch (about [`ServerConfig::rows_budget_bytes`]); the next batch is produced only after the
//! previous one was written to the socket (backpressure).

pub mod backend;
mod connection;
pub mod db_backend;
mod inline;
pub mod join;
pub mod messages;
pub mod runtime_cluster;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dqlite_wire::ProtocolVersion;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

pub use self::backend::{
    BackendError, ClusterBackend, DumpFile, ExecResult, Member, PrepareInfo, RowBatch, SqlBackend, SqlSession, Target,
};
use crate::transport::frame::PEER_MAGIC;
use crate::transport::TcpTransport;

/// Settings of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (bigger: FAILURE and the connection is closed).
    pub max_request_bytes: usize,
    /// Target size of one ROWS message (dqlite: 4096 bytes, header included).
    pub rows_budget_bytes: usize,
    /// The value of WELCOME's heartbeat timeout (dqlite's default: 15 s).
    pub heartbeat_timeout_ms: u64,
    /// Bound on receiving the first word of a connection.
    pub handshake_timeout: Duration,
    /// Client and peer connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_bytes: dqlite_wire::DEFAULT_MAX_BODY_BYTES,
            rows_budget_bytes: dqlite_wire::rows::DEFAULT_ROWS_BUDGET_BYTES,
            heartbeat_timeout_ms: 15_000,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

pub(crate) struct Shared<S, C> {
    pub(crate) sql: S,
    pub(crate) cluster: C,
    pub(crate) config: ServerConfig,
    /// Client requests being handled right now (see [`ServerHandle::wait_idle`]).
    pub(crate) in_flight: Arc<AtomicUsize>,
}

/// Counts one request in [`Shared::in_flight`] while alive (also when its task is dropped).
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client-protocol server over an SQL backend `S` and a cluster backend `C`.
pub struct Server<S, C> {
    shared: Arc<Shared<S, C>>,
    peers: Option<TcpTransport>,
}

impl<S: SqlBackend, C: ClusterBackend> Server<S, C> {
    /// A server over the two backends. Peer connections are refused until
    /// [`with_peers`](Self::with_peers) gives it a transport.
    pub fn new(config: ServerConfig, sql: S, cluster: C) -> Self {
        Server { shared: Arc::new(Shared { sql, cluster, config, in_flight: Arc::default() }), peers: None }
    }

    /// Hands peer (Raft) connections on the same address to `transport`.
    pub fn with_peers(mut self, transport: TcpTransport) -> Self {
        self.peers = Some(transport);
        self
    }

    /// Binds `address` and serves in a background task until the handle is shut down or dropped.
    pub async fn bind(self, address: SocketAddr) -> io::Result<ServerHandle> {
        let listener = TcpListener::bind(address).await?;
        Ok(self.spawn(listener))
    }

    /// Serves `listener` in a background task.
    pub fn spawn(self, listener: TcpListener) -> ServerHandle {
        let local_addr = listener.local_addr().ok();
        let (tx, rx) = watch::channel(false);
        let local = LocalConnector::new(self.shared.clone(), rx.clone());
        let in_flight = self.shared.in_flight.clone();
        let task = tokio::spawn(self.serve(listener, rx));
        ServerHandle { local_addr, shutdown: tx, task: Some(task), local, in_flight }
    }

    /// A server without a listening socket: only [`ServerHandle::connect_local`] reaches it
    /// (an embedded single node).
    pub fn spawn_local(self) -> ServerHandle {
        let (tx, rx) = watch::channel(false);
        let local = LocalConnector::new(self.shared.clone(), rx);
        ServerHandle { local_addr: None, shutdown: tx, task: None, local, in_flight: self.shared.in_flight.clone() }
    }

    /// The accept loop: runs until `shutdown` turns true (or its sender is dropped), then
    /// stops accepting and closes every connection it serves.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        // Every client connection's thread holds a clone: once all are dropped, all are closed.
        let (alive, mut closed) = mpsc::channel::<()>(1);
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            // Reap finished connections so the set stays as big as the live ones.
            while tasks.try_join_next().is_some() {}
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let peers = self.peers.clone();
            let client = ClientSlot { permit, shutdown: shutdown.clone(), alive: alive.clone() };
            tasks.spawn(route(stream, remote, shared, peers, client));
        }
        tracing::debug!(connections = tasks.len(), "server stopping");
        tasks.shutdown().await;
        // Client threads see the shutdown signal at their next wait; one in the middle of a
        // request (a commit waiting for Raft) finishes it first. Wait for them, bounded.
        drop(alive);
        if tokio::time::timeout(CLIENT_CLOSE_BOUND, closed.recv()).await.is_err() {
            tracing::warn!("client connections still closing after {CLIENT_CLOSE_BOUND:?}");
        }
    }
}

/// How long a stopping server waits for its client connections' threads.
const CLIENT_CLOSE_BOUND: Duration = Duration::from_secs(2);

/// What an accepted connection carries to its client thread: the connection permit, the
/// shutdown signal, and the liveness token the stopping server waits on.
struct ClientSlot {
    permit: OwnedSemaphorePermit,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

async fn route<S: SqlBackend, C: ClusterBackend>(
    mut stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared<S, C>>,
    peers: Option<TcpTransport>,
    client: ClientSlot,
) {
    let _ = stream.set_nodelay(true);
    let mut word = [0u8; 8];
    match tokio::time::timeout(shared.config.handshake_timeout, stream.read_exact(&mut word)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection closed before the handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "no handshake in time; closed");
            return;
        }
    }
    let word = u64::from_le_bytes(word);
    if word == PEER_MAGIC {
        match peers {
            Some(t) => {
                let _ = t.serve_inbound(stream).await;
            }
            None => tracing::warn!(%remote, "peer connection refused: this server has no transport"),
        }
        return;
    }
    let version = match word {
        ProtocolVersion::V1_WORD => ProtocolVersion::V1,
        ProtocolVersion::LEGACY_WORD => ProtocolVersion::Legacy,
        other => {
            tracing::debug!(%remote, word = format_args!("{other:#x}"), "unknown protocol version; closed");
            return;
        }
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "cannot move the client connection to its thread; closed");
            return;
        }
    };
    let ClientSlot { permit, shutdown, alive } = client;
    inline::spawn_client(move || TcpStream::from_std(stream), Some(version), shared, shutdown, (permit, alive));
}

/// Serves one client connection: reads the handshake word first unless `version` is known.
async fn serve_client<S: SqlBackend, C: ClusterBackend, T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: T,
    version: Option<ProtocolVersion>,
    shared: Arc<Shared<S, C>>,
) -> io::Result<()> {
    let version = match version {
        Some(v) => v,
        None => {
            let mut word = [0u8; 8];
            stream.read_exact(&mut word).await?;
            match u64::from_le_bytes(word) {
                ProtocolVersion::V1_WORD => ProtocolVersion::V1,
                ProtocolVersion::LEGACY_WORD => ProtocolVersion::Legacy,
                other => {
                    tracing::debug!(
                        word = format_args!("{other:#x}"),
                        "in-process client: unknown protocol version; closed"
                    );
                    return Ok(());
                }
            }
        }
    };
    connection::serve(stream, version, shared).await
}

/// Size of an in-process connection's pipe in each direction (a ROWS batch is ~4 KiB).
pub const LOCAL_PIPE_BYTES: usize = 64 << 10;

/// Opens in-process client connections to a server: a [`tokio::io::DuplexStream`] whose other
/// end is served exactly like an accepted TCP client (handshake word, then the protocol), so
/// semantics and errors are those of the wire, without a socket.
#[derive(Clone)]
pub struct LocalConnector {
    open: Arc<dyn Fn() -> tokio::io::DuplexStream + Send + Sync>,
}

impl std::fmt::Debug for LocalConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalConnector")
    }
}

impl LocalConnector {
    fn new<S: SqlBackend, C: ClusterBackend>(shared: Arc<Shared<S, C>>, shutdown: watch::Receiver<bool>) -> Self {
        let open = move || {
            let (client, server) = tokio::io::duplex(LOCAL_PIPE_BYTES);
            inline::spawn_client(move || Ok(server), None, shared.clone(), shutdown.clone(), ());
            client
        };
        LocalConnector { open: Arc::new(open) }
    }

    /// A new in-process connection (the caller sends the protocol handshake first).
    pub fn connect(&self) -> tokio::io::DuplexStream {
        (self.open)()
    }
}

/// A running server. Dropping it stops the server too.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    local: LocalConnector,
    in_flight: Arc<AtomicUsize>,
}

impl ServerHandle {
    /// Opens an in-process client connection (see [`LocalConnector`]).
    pub fn connect_local(&self) -> tokio::io::DuplexStream {
        self.local.connect()
    }

    /// The in-process connector (clonable, usable after the handle moved).
    pub fn local_connector(&self) -> LocalConnector {
        self.local.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Waits (at most `bound`) until no client request is being handled; returns whether that
    /// happened. A graceful stop calls it once new requests are refused, so that requests
    /// already running (a commit waiting for Raft) get their answer before connections close.
    pub async fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops accepting, closes every connection, and waits until that is done.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
