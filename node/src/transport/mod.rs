//! The TCP peer transport: Raft messages between nodes, on the node's one client address.
//!
//! ```text
//!  runtime ── Transport::send(msg) ──► per-peer bounded queue ──► writer task ══ TCP ══╗
//!             (never blocks; full queue or unknown peer: dropped + counted)            ║
//!                                                                                      ▼
//!  runtime ◄── inbox (bounded, given at construction) ◄── serve_inbound ◄── server accept
//!                                                                 loop (first word = PEER_MAGIC)
//! ```
//!
//! Each node keeps **two outbound connections per peer** ([`Lane`]): log entries and snapshot
//! chunks on one, everything else (heartbeats, votes, answers) on the other, so no heartbeat
//! waits behind a multi-megabyte entry. Answers come back over the peer's own outbound
//! connections, so every connection carries traffic in one direction only. The connection starts with [`frame::PEER_MAGIC`]
//! (which the client-protocol server recognises and hands to [`TcpTransport::serve_inbound`]),
//! then a hello/reply handshake that checks the format version, the cluster id and that the
//! acceptor is the node the sender meant, then length-prefixed, checksummed postcard frames.
//! The byte layout is in `docs/peer-protocol.md`.
//!
//! What it does not do: retransmit. A message dropped anywhere (full queue, broken connection,
//! peer down) is gone; Raft retransmits. It also does not interpret messages beyond checking
//! that each one really is from the connection's sender and for this node.
//!
//! Bounds: the per-peer queues ([`TransportConfig::queue_messages`], each lane), the frame size
//! ([`TransportConfig::max_frame_bytes`], on both sides), the bytes coalesced into one write
//! ([`TransportConfig::coalesce_bytes`]), the inbox (its capacity, chosen by the runtime); a
//! message that finds the inbox full is dropped and counted (the inbox never blocks the socket
//! reader, like the runtime's own [`InboxSender`](crate::runtime::InboxSender)).

pub mod frame;
mod peer;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_raft::{Message, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use self::frame::{FrameError, Hello, HelloReply, HelloStatus, FORMAT_VERSION, HELLO_LEN, PEER_MAGIC};
use crate::replication::Transport;

/// Settings of a [`TcpTransport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster's id, if known (0 = unknown: adopted from the first peer that knows one).
    pub cluster_id: u64,
    /// This node's address as peers reach it, sent in the hello (a joining node learns where
    /// the leader is from the leader's hello before it has the configuration).
    pub advertise: String,
    /// Largest frame payload sent or accepted. Must hold an AppendEntries of the runtime's
    /// `max_append_bytes` and an InstallSnapshot chunk, plus encoding overhead.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before new ones are dropped.
    pub queue_messages: usize,
    /// Bytes of frames gathered into one socket write.
    pub coalesce_bytes: usize,
    /// First reconnect delay (doubles per failure, with jitter).
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Bound on connecting plus the handshake.
    pub connect_timeout: Duration,
}

impl TransportConfig {
    /// Defaults for `node_id`: 8 MiB frames (1 MiB appends and snapshot chunks with room to
    /// spare), 1024 queued messages per peer, 256 KiB writes, back-off 50 ms to 2 s.
    pub fn new(node_id: NodeId) -> Self {
        TransportConfig {
            node_id,
            cluster_id: 0,
            advertise: String::new(),
            max_frame_bytes: 8 << 20,
            queue_messages: 1024,
            coalesce_bytes: 256 << 10,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of a [`TcpTransport`] (monotonic).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages written to a socket.
    pub sent: AtomicU64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because the recipient has no known address.
    pub dropped_unknown_peer: AtomicU64,
    /// Messages dropped because they encode larger than the frame limit.
    pub dropped_too_large: AtomicU64,
    /// Messages lost with a connection that broke while they were queued or being written.
    pub dropped_connection_lost: AtomicU64,
    /// Outbound connections established.
    pub connects: AtomicU64,
    /// Outbound connection attempts that failed (connect, handshake or refusal).
    pub connect_failures: AtomicU64,
    /// Messages received and delivered to the inbox.
    pub received: AtomicU64,
    /// Messages received but dropped because the inbox was full (or the runtime stopped).
    pub dropped_inbox_full: AtomicU64,
    /// Inbound connections refused at the handshake.
    pub refused: AtomicU64,
    /// Inbound connections closed on a malformed frame.
    pub malformed: AtomicU64,
}

/// A point-in-time copy of [`TransportStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub sent: u64,
    pub dropped_queue_full: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_too_large: u64,
    pub dropped_connection_lost: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub received: u64,
    pub dropped_inbox_full: u64,
    pub refused: u64,
    pub malformed: u64,
}

impl TransportStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            sent: r(&self.sent),
            dropped_queue_full: r(&self.dropped_queue_full),
            dropped_unknown_peer: r(&self.dropped_unknown_peer),
            dropped_too_large: r(&self.dropped_too_large),
            dropped_connection_lost: r(&self.dropped_connection_lost),
            connects: r(&self.connects),
            connect_failures: r(&self.connect_failures),
            received: r(&self.received),
            dropped_inbox_full: r(&self.dropped_inbox_full),
            refused: r(&self.refused),
            malformed: r(&self.malformed),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why an inbound peer connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The socket failed.
    #[error("peer connection I/O: {0}")]
    Io(#[from] io::Error),
    /// The handshake was refused.
    #[error("refused peer (node {from}): {status:?}")]
    Refused {
        /// Who claimed to connect.
        from: NodeId,
        /// Why.
        status: HelloStatus,
    },
    /// A frame was malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message's sender or recipient does not match the handshake.
    #[error("message from {from} to {to} on a connection from {expected_from} to {me}")]
    Misaddressed {
        /// The message's sender.
        from: NodeId,
        /// The message's recipient.
        to: NodeId,
        /// The handshake's sender.
        expected_from: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The handshake did not complete in time.
    #[error("peer handshake timed out")]
    Timeout,
}

struct PeerEntry {
    address: String,
    /// Heartbeats, votes and every answer.
    queue: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
    /// AppendEntries and InstallSnapshot, on their own connection (see [`Lane`]).
    bulk: mpsc::Sender<Message>,
    bulk_task: tokio::task::JoinHandle<()>,
}

/// Which of a peer's two outbound connections a message takes. Log entries and snapshot
/// chunks (possibly megabytes) go on the bulk connection, so that a heartbeat or a vote never
/// waits behind one: with one connection, a multi-megabyte entry held every heartbeat behind
/// it long enough for the followers' election timers to fire. Each connection keeps its own
/// order (AppendEntries stay in order among themselves); Raft needs nothing more: a
/// heartbeat's commit index is capped at what the follower matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Heartbeats, votes, answers.
    Control,
    /// AppendEntries, InstallSnapshot.
    Bulk,
}

impl Lane {
    /// The lane `msg` travels on.
    pub fn of(msg: &Message) -> Lane {
        match msg.body {
            dqlite_raft::MessageBody::AppendEntries(_) | dqlite_raft::MessageBody::InstallSnapshot(_) => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) cluster_id: AtomicU64,
    pub(crate) stats: TransportStats,
}

impl Shared {
    /// Adopt `theirs` if we know no cluster id yet; false if both are known and differ.
    pub(crate) fn reconcile_cluster(&self, theirs: u64) -> bool {
        if theirs == 0 {
            return true;
        }
        match self.cluster_id.compare_exchange(0, theirs, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                tracing::info!(cluster_id = theirs, "adopted the cluster id of a peer");
                true
            }
            Err(ours) => ours == theirs,
        }
    }
}

/// The TCP implementation of [`Transport`]. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct TcpTransport {
    shared: Arc<Shared>,
    peers: Arc<Mutex<HashMap<NodeId, PeerEntry>>>,
    /// Addresses peers gave in their hellos (kept while the configuration does not name them).
    learned: Arc<Mutex<HashMap<NodeId, String>>>,
    inbox: Arc<dyn InboundSink>,
    runtime: tokio::runtime::Handle,
}

/// Where received messages go: never blocks; `false` means the message was dropped (full or
/// closed queue).
pub trait InboundSink: Send + Sync + 'static {
    /// Hands over one received message.
    fn deliver(&self, msg: Message) -> bool;

    /// True once the receiver is gone for good (the connection is then closed).
    fn is_closed(&self) -> bool {
        false
    }
}

impl InboundSink for crate::runtime::InboxSender {
    fn deliver(&self, msg: Message) -> bool {
        crate::runtime::InboxSender::deliver(self, msg)
    }
}

impl InboundSink for mpsc::Sender<Message> {
    fn deliver(&self, msg: Message) -> bool {
        self.try_send(msg).is_ok()
    }

    fn is_closed(&self) -> bool {
        mpsc::Sender::is_closed(self)
    }
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport").field("node_id", &self.shared.config.node_id).finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport that spawns its writer tasks on `runtime` and delivers received messages to
    /// `inbox`.
    pub fn new(config: TransportConfig, inbox: impl InboundSink, runtime: tokio::runtime::Handle) -> Self {
        let cluster_id = AtomicU64::new(config.cluster_id);
        TcpTransport {
            shared: Arc::new(Shared { config, cluster_id, stats: TransportStats::default() }),
            peers: Arc::new(Mutex::new(HashMap::new())),
            learned: Arc::new(Mutex::new(HashMap::new())),
            inbox: Arc::new(inbox),
            runtime,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// The cluster id (0 while unknown).
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id.load(Ordering::Acquire)
    }

    /// Sets the cluster id once it is known (e.g. read from the data directory or created at
    /// bootstrap). Has no effect if one is already known.
    pub fn set_cluster_id(&self, id: u64) {
        let _ = self.shared.reconcile_cluster(id);
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Serves one inbound peer connection whose first word ([`PEER_MAGIC`]) was already read:
    /// handshake, then every frame into the inbox until the peer disconnects or misbehaves.
    /// Cancel-safe: dropping the future closes the connection.
    pub async fn serve_inbound(&self, mut stream: TcpStream) -> Result<(), InboundError> {
        let _ = stream.set_nodelay(true);
        let cfg = &self.shared.config;
        let read_hello = async {
            let mut bytes = vec![0u8; HELLO_LEN];
            stream.read_exact(&mut bytes).await?;
            let len = Hello::address_len(&bytes)?;
            bytes.resize(HELLO_LEN + len, 0);
            stream.read_exact(&mut bytes[HELLO_LEN..]).await?;
            Ok::<_, InboundError>(bytes)
        };
        let hello_bytes =
            tokio::time::timeout(cfg.connect_timeout, read_hello).await.map_err(|_| InboundError::Timeout)??;
        let hello = Hello::decode(&hello_bytes)?;
        let status = if hello.format_version != FORMAT_VERSION {
            HelloStatus::UnsupportedVersion
        } else if hello.to != cfg.node_id {
            HelloStatus::WrongNode
        } else if hello.from == NodeId(0) || hello.from == cfg.node_id {
            HelloStatus::BadSender
        } else if !self.shared.reconcile_cluster(hello.cluster_id) {
            HelloStatus::WrongCluster
        } else {
            HelloStatus::Accepted
        };
        let reply =
            HelloReply { format_version: FORMAT_VERSION, status, cluster_id: self.cluster_id(), node_id: cfg.node_id };
        stream.write_all(&reply.encode()).await?;
        if status != HelloStatus::Accepted {
            bump(&self.shared.stats.refused);
            tracing::warn!(from = %hello.from, to = %hello.to, cluster = hello.cluster_id, ?status, "refused a peer connection");
            return Err(InboundError::Refused { from: hello.from, status });
        }
        tracing::debug!(from = %hello.from, address = %hello.address, "peer connected");
        if !hello.address.is_empty() {
            self.learn(hello.from, &hello.address);
        }
        let result = self.read_frames(&mut stream, hello.from).await;
        if let Err(e) = &result {
            if !matches!(e, InboundError::Io(_)) {
                bump(&self.shared.stats.malformed);
            }
            tracing::info!(from = %hello.from, error = %e, "peer connection closed");
        }
        result
    }

    async fn read_frames(&self, stream: &mut TcpStream, from: NodeId) -> Result<(), InboundError> {
        let max = self.shared.config.max_frame_bytes;
        let me = self.shared.config.node_id;
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        loop {
            // Deliver every whole frame in the buffer.
            let mut used = 0;
            while let frame::FrameStatus::Complete(total) = frame::check_frame(&buf[used..], max)? {
                // How far `used` moves: the frame's length, or 0 when it was taken out of `buf`.
                let (decoded, inline) = if total >= frame::BLOCKING_CODEC_BYTES {
                    // A big frame: checksum and decode it on a blocking thread (see
                    // `BLOCKING_CODEC_BYTES`), moving its bytes there and back.
                    let rest = buf.split_off(used + total);
                    let mut whole = std::mem::replace(&mut buf, rest);
                    let job = tokio::task::spawn_blocking(move || {
                        let t = std::time::Instant::now();
                        let r = frame::decode_frame(&whole[used..], max);
                        tracing::debug!(%from, bytes = total, took = ?t.elapsed(), "big frame decoded");
                        whole.truncate(used);
                        (whole, r)
                    });
                    let (mut head, r) = job.await.map_err(|e| InboundError::Io(io::Error::other(e)))?;
                    // `head` is the prefix of already-delivered frames: put it back in front.
                    head.extend_from_slice(&buf);
                    buf = head;
                    (r?, false)
                } else {
                    (frame::decode_frame(&buf[used..], max)?, true)
                };
                let Some((msg, len)) = decoded else { break };
                if inline {
                    used += len;
                }
                if msg.from != from || msg.to != me {
                    return Err(InboundError::Misaddressed { from: msg.from, to: msg.to, expected_from: from, me });
                }
                if self.inbox.deliver(msg) {
                    bump(&self.shared.stats.received);
                } else if self.inbox.is_closed() {
                    tracing::debug!("inbox closed; dropping the peer connection");
                    return Ok(());
                } else {
                    bump(&self.shared.stats.dropped_inbox_full);
                }
            }
            buf.drain(..used);
            // Do not keep a big frame's buffer around for the small frames that follow.
            if buf.capacity() > (4 << 20) && buf.len() < (64 << 10) {
                buf.shrink_to(64 << 10);
            }
            // Read at most what the next frame still needs, so the buffer stays bounded; into
            // spare capacity (no zero-filling of a multi-megabyte tail on every read).
            let want = match frame::check_frame(&buf, max)? {
                frame::FrameStatus::Incomplete(n) => n.max(64 << 10).min(max + frame::FRAME_HEADER_LEN),
                frame::FrameStatus::Complete(_) => continue,
            };
            buf.reserve(want);
            let n = (&mut *stream).take(want as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(InboundError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed mid-frame")))
                };
            }
        }
    }

    /// Accepts connections on `listener` and serves the peer ones, refusing anything else. For
    /// a transport without a client-protocol server in front (tests, tools); a node uses its
    /// server's accept loop, which routes by the first word.
    pub async fn serve_listener(self, listener: TcpListener) {
        // Connections live in this set: dropping the future closes them all.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let (mut stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let me = self.clone();
            conns.spawn(async move {
                let mut word = [0u8; 8];
                let read = tokio::time::timeout(me.shared.config.connect_timeout, stream.read_exact(&mut word)).await;
                if !matches!(read, Ok(Ok(_))) || u64::from_le_bytes(word) != PEER_MAGIC {
                    tracing::debug!(%remote, "not a peer connection; closed");
                    return;
                }
                let _ = me.serve_inbound(stream).await;
            });
        }
    }

    /// A peer introduced itself with its address: reach it there until the configuration says
    /// otherwise (a joining node must answer the leader before it has the configuration).
    fn learn(&self, id: NodeId, address: &str) {
        let Ok(mut map) = self.peers.lock() else { return };
        if let Ok(mut learned) = self.learned.lock() {
            learned.insert(id, address.to_owned());
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
            tracing::debug!(peer = %id, %address, "learned a peer's address from its hello");
            slot.insert(self.spawn_peer(id, address.to_owned()));
        }
    }

    fn spawn_peer(&self, id: NodeId, address: String) -> PeerEntry {
        let (tx, rx) = mpsc::channel(self.shared.config.queue_messages.max(1));
        let task = self.runtime.spawn(peer::run(self.shared.clone(), id, address.clone(), rx));
        let (bulk, bulk_rx) = mpsc::channel(self.shared.config.queue_messages.max(1));
        let bulk_task = self.runtime.spawn(peer::run(self.shared.clone(), id, address.clone(), bulk_rx));
        PeerEntry { address, queue: tx, task, bulk, bulk_task }
    }
}

impl Transport for TcpTransport {
    fn send(&self, msg: Message) {
        let stats = &self.shared.stats;
        let Ok(peers) = self.peers.lock() else {
            bump(&stats.dropped_unknown_peer);
            return;
        };
        let Some(peer) = peers.get(&msg.to) else {
            bump(&stats.dropped_unknown_peer);
            tracing::trace!(to = %msg.to, "no address for the recipient; message dropped");
            return;
        };
        let queue = match Lane::of(&msg) {
            Lane::Control => &peer.queue,
            Lane::Bulk => &peer.bulk,
        };
        match queue.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                bump(&stats.dropped_queue_full);
                tracing::trace!(to = %m.to, "peer queue full; message dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => bump(&stats.dropped_connection_lost),
        }
    }

    fn set_peers(&self, peers: &[(NodeId, String)]) {
        let me = self.shared.config.node_id;
        let Ok(mut map) = self.peers.lock() else { return };
        let mut wanted: HashMap<NodeId, &String> =
            peers.iter().filter(|(id, _)| *id != me).map(|(id, a)| (*id, a)).collect();
        let learned = self.learned.lock().map(|l| l.clone()).unwrap_or_default();
        for (id, address) in &learned {
            wanted.entry(*id).or_insert(address);
        }
        map.retain(|id, entry| {
            let keep = wanted.get(id).is_some_and(|a| **a == entry.address);
            if !keep {
                tracing::debug!(peer = %id, "peer removed or moved; closing its connection");
                entry.task.abort();
                entry.bulk_task.abort();
            }
            keep
        });
        for (id, address) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
                tracing::debug!(peer = %id, %address, "new peer");
                slot.insert(self.spawn_peer(id, address.clone()));
            }
        }
    }
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.task.abort();
        self.bulk_task.abort();
    }
}

/// Resolves `address` (`HOST:PORT`) to a socket address.
pub(crate) async fn resolve(address: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {address}")))
}
