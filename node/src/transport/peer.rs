//! One outbound connection to one peer: connect, handshake, write queued messages coalesced,
//! reconnect with exponential back-off and jitter.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use dqlite_raft::{Message, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::frame::{self, Hello, HelloReply, HelloStatus, FORMAT_VERSION, HELLO_REPLY_LEN, PEER_MAGIC};
use super::{bump, resolve, Shared};

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("refused by the peer: {0:?}")]
    Refused(HelloStatus),
    #[error("peer answered for node {0}")]
    OtherNode(NodeId),
    #[error("peer's cluster id {0} differs from ours")]
    OtherCluster(u64),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
}

/// A small xorshift generator for back-off jitter (no need for anything stronger).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter((seed ^ t) | 1)
    }

    /// A duration uniformly in `[d/2, d]`.
    fn apply(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let frac = (self.0 % 1024) as f64 / 1024.0;
        d.mul_f64(0.5 + frac / 2.0)
    }
}

async fn connect(shared: &Shared, to: NodeId, address: &str) -> Result<TcpStream, ConnectError> {
    let cfg = &shared.config;
    let work = async {
        let addr = resolve(address).await?;
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let hello = Hello {
            format_version: FORMAT_VERSION,
            cluster_id: shared.cluster_id.load(std::sync::atomic::Ordering::Acquire),
            from: cfg.node_id,
            to,
            max_frame_bytes: cfg.max_frame_bytes as u64,
            address: cfg.advertise.clone(),
        };
        let mut first = Vec::with_capacity(8 + frame::HELLO_LEN);
        first.extend_from_slice(&PEER_MAGIC.to_le_bytes());
        first.extend_from_slice(&hello.encode());
        stream.write_all(&first).await?;
        let mut reply = [0u8; HELLO_REPLY_LEN];
        stream.read_exact(&mut reply).await?;
        let reply = HelloReply::decode(&reply)?;
        if reply.status != HelloStatus::Accepted {
            return Err(ConnectError::Refused(reply.status));
        }
        if reply.node_id != to {
            return Err(ConnectError::OtherNode(reply.node_id));
        }
        if !shared.reconcile_cluster(reply.cluster_id) {
            return Err(ConnectError::OtherCluster(reply.cluster_id));
        }
        Ok(stream)
    };
    tokio::time::timeout(cfg.connect_timeout, work).await.map_err(|_| ConnectError::Timeout)?
}

/// The writer task of one peer; ends when its queue is closed (peer removed, transport dropped).
pub(super) async fn run(shared: Arc<Shared>, to: NodeId, address: String, mut queue: mpsc::Receiver<Message>) {
    let cfg = shared.config.clone();
    let mut jitter = Jitter::new(cfg.node_id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ to.0);
    let mut backoff = cfg.backoff_min;
    let mut buf = Vec::with_capacity(cfg.coalesce_bytes.min(1 << 20));
    // Wait for something to send before connecting at all.
    let Some(mut pending) = queue.recv().await else { return };
    loop {
        let mut stream = match connect(&shared, to, &address).await {
            Ok(s) => {
                bump(&shared.stats.connects);
                tracing::debug!(peer = %to, %address, "connected to peer");
                backoff = cfg.backoff_min;
                s
            }
            Err(e) => {
                bump(&shared.stats.connect_failures);
                let delay = jitter.apply(backoff);
                tracing::debug!(peer = %to, %address, error = %e, ?delay, "cannot reach peer; retrying");
                // Messages queued while the peer is down are stale by the time it is back:
                // drop them (Raft retransmits) so the queue does not replay old traffic.
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        m = queue.recv() => match m {
                            Some(m) => {
                                bump(&shared.stats.dropped_connection_lost);
                                pending = m;
                            }
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        // Connected: write `pending` plus whatever else is queued, in one write, repeatedly.
        loop {
            buf.clear();
            let mut batch = 0u64;
            let mut next = Some(pending);
            while let Some(msg) = next.take() {
                let encoded = if frame::payload_bytes(&msg) >= frame::BLOCKING_CODEC_BYTES {
                    // A big entry or snapshot chunk: off the async workers (the Raft task
                    // shares them and must keep ticking).
                    let max = cfg.max_frame_bytes;
                    let mut out = std::mem::take(&mut buf);
                    let job = tokio::task::spawn_blocking(move || {
                        let t = std::time::Instant::now();
                        let r = frame::encode_frame(&msg, max, &mut out);
                        tracing::debug!(peer = %msg.to, bytes = frame::payload_bytes(&msg), took = ?t.elapsed(), "big frame encoded");
                        (out, r)
                    });
                    match job.await {
                        Ok((out, r)) => {
                            buf = out;
                            r
                        }
                        Err(e) => {
                            // The blocking pool is shutting down (the runtime stops): give up.
                            tracing::debug!(peer = %to, error = %e, "encoding a frame failed");
                            return;
                        }
                    }
                } else {
                    frame::encode_frame(&msg, cfg.max_frame_bytes, &mut buf)
                };
                match encoded {
                    Ok(()) => batch += 1,
                    Err(e) => {
                        bump(&shared.stats.dropped_too_large);
                        tracing::warn!(peer = %to, error = %e, "message not sent");
                    }
                }
                if buf.len() >= cfg.coalesce_bytes {
                    break;
                }
                next = queue.try_recv().ok();
            }
            let t = std::time::Instant::now();
            let written = if buf.is_empty() { Ok(()) } else { stream.write_all(&buf).await };
            if buf.len() >= frame::BLOCKING_CODEC_BYTES {
                tracing::debug!(peer = %to, bytes = buf.len(), took = ?t.elapsed(), queued = queue.len(), "big write done");
            }
            // Do not keep a big entry's buffer around for the small messages that follow.
            if buf.capacity() > 4 * cfg.coalesce_bytes.max(64 << 10) {
                buf = Vec::with_capacity(cfg.coalesce_bytes.min(1 << 20));
            }
            match written {
                Ok(()) => {
                    shared.stats.sent.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    shared.stats.dropped_connection_lost.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(peer = %to, error = %e, "peer connection broke");
                    break;
                }
            }
            // Wait for the next message; the peer never writes after its reply, so a readable
            // socket means it closed (or broke the protocol): reconnect.
            let mut probe = [0u8; 1];
            tokio::select! {
                m = queue.recv() => match m {
                    Some(m) => pending = m,
                    None => return,
                },
                r = stream.read(&mut probe) => {
                    tracing::debug!(peer = %to, result = ?r, "peer closed the connection");
                    break;
                }
            }
        }
        // Reconnect for the next message.
        pending = match queue.recv().await {
            Some(m) => m,
            None => return,
        };
    }
}
