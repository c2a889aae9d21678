//! Leader discovery (PROTOCOL.md §8): sweep the seed list asking LEADER, follow one redirect,
//! then CLIENT + OPEN on the leader. Sweeps repeat with exponential backoff (100 ms doubling,
//! capped at 1 s) until the leader-search budget is spent.
//!
//! Follower reads (`read=follower`) first make one sweep over the seeds, starting one seed
//! further for each new connection (round robin), for a node that names another node as
//! leader; the first such node serves the connection. Without one (a single-node cluster,
//! every follower unreachable or knowing no leader) the connection goes to the leader.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dqlite_wire::{Request, Response};
use sqlx_core::Error;
use tokio::time::Instant;

use super::session::Session;
use super::stream::{WireError, WireStream};
use crate::options::parse::parse_host_port;
use crate::options::{DqliteConnectOptions, NodeAddress, ReadMode};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

enum Probe {
    /// This node is the leader; the stream is ready for CLIENT.
    Leader(WireStream),
    /// This node names another node as leader.
    Redirect(NodeAddress),
    /// This node does not know a leader.
    NoLeader,
}

/// Dials `addr` and asks it for the leader: the stream and the leader's address as that node
/// reports it (empty if it knows none).
async fn ask_leader(addr: &NodeAddress, timeout: Duration) -> Result<(WireStream, String), Error> {
    let work = async {
        let mut stream = WireStream::connect(addr, timeout).await?;
        stream.send(&Request::Leader).await.map_err(WireError::into_inner)?;
        let frame = stream.recv().await?;
        let leader = match frame.decode(stream.ctx())? {
            Response::Server { address, .. } | Response::ServerLegacy { address } => address.to_owned(),
            Response::Failure { code, message } => {
                return Err(Error::Protocol(format!("LEADER failed on {addr}: ({code}) {message}")))
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected reply to LEADER from {addr}: {:?}",
                    other.response_type()
                )))
            }
        };
        Ok((stream, leader))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("dqlite node {addr} did not answer LEADER within {timeout:?}"),
        ))
    })?
}

async fn probe(addr: &NodeAddress, timeout: Duration) -> Result<Probe, Error> {
    let (stream, leader) = ask_leader(addr, timeout).await?;
    if leader.is_empty() {
        return Ok(Probe::NoLeader);
    }
    if leader == addr.to_string() {
        return Ok(Probe::Leader(stream));
    }
    Ok(Probe::Redirect(
        parse_host_port(&leader)
            .map_err(|_| Error::Protocol(format!("node {addr} reported an invalid leader address {leader:?}")))?,
    ))
}

/// Follower reads: one sweep over the seeds (each connection starting one seed further) for a
/// node that names another node as leader, and OPEN on it. `Ok(None)`: no follower found, or
/// the cluster does not serve follower reads (real dqlite refuses OPEN on a follower with "not
/// leader"; remembered in the options, so later connections go straight to the leader).
async fn connect_follower(opts: &DqliteConnectOptions) -> Result<Option<Session>, Error> {
    let seeds = opts.get_seeds();
    if seeds.is_empty() {
        return Ok(None);
    }
    let start = opts.follower_cursor.fetch_add(1, Ordering::Relaxed) % seeds.len();
    let deadline = Instant::now() + opts.leader_timeout;
    for seed in seeds.iter().cycle().skip(start).take(seeds.len()) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let (stream, leader) = match ask_leader(seed, opts.connect_timeout.min(remaining)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%seed, error = %e, "follower probe failed");
                continue;
            }
        };
        if leader.is_empty() || leader == seed.to_string() {
            continue; // knows no leader, or is the leader
        }
        match open_on_leader(stream, opts).await {
            Ok(Some(mut session)) => {
                session.set_request_timeout(opts.request_timeout);
                tracing::debug!(node = %seed, %leader, "connected to a follower for follower reads");
                return Ok(Some(session));
            }
            Ok(None) => {
                tracing::info!(node = %seed, "the cluster does not serve follower reads: reading on the leader");
                opts.followers_unsupported.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e @ Error::Database(_)) => return Err(e),
            Err(e) => tracing::debug!(node = %seed, error = %e, "follower OPEN failed"),
        }
    }
    Ok(None)
}

/// CLIENT handshake then OPEN. `Ok(None)` if the node turned out not to be the leader.
async fn open_on_leader(mut stream: WireStream, opts: &DqliteConnectOptions) -> Result<Option<Session>, Error> {
    let work = async {
        stream.send(&Request::Client { id: opts.client_id }).await.map_err(WireError::into_inner)?;
        let frame = stream.recv().await?;
        match frame.decode(stream.ctx())? {
            Response::Welcome { .. } => {}
            Response::Failure { code, message } => {
                return Err(Error::Protocol(format!("CLIENT failed: ({code}) {message}")))
            }
            other => return Err(Error::Protocol(format!("unexpected reply to CLIENT: {:?}", other.response_type()))),
        }
        match Session::open(stream, &opts.database, &opts.open_vfs()).await? {
            Ok(session) => Ok(Some(session)),
            Err(f) if f.is_not_leader() => Ok(None),
            Err(f) => Err(f.into_error()),
        }
    };
    tokio::time::timeout(opts.connect_timeout, work).await.map_err(|_| {
        Error::Io(io::Error::new(io::ErrorKind::TimedOut, "dqlite leader did not answer CLIENT/OPEN in time"))
    })?
}

fn leader_hint(opts: &DqliteConnectOptions) -> Option<NodeAddress> {
    opts.leader_hint.lock().ok().and_then(|h| h.clone())
}

fn set_leader_hint(opts: &DqliteConnectOptions, leader: Option<NodeAddress>) {
    if let Ok(mut h) = opts.leader_hint.lock() {
        *h = leader;
    }
}

/// Find the leader among the seeds and open the database on it.
///
/// The leader last found through these options (shared by their clones, e.g. a pool's
/// connections) is asked first; then every seed in order.
pub(crate) async fn connect_leader(opts: &DqliteConnectOptions) -> Result<Session, Error> {
    if let Some(spec) = &opts.embedded {
        #[cfg(not(feature = "embedded"))]
        return Err(crate::embedded::unavailable(spec));
        #[cfg(feature = "embedded")]
        if let Some(session) = connect_local(opts, spec).await? {
            return Ok(session);
        }
    }
    if opts.read_mode == ReadMode::Follower && !opts.followers_unsupported.load(Ordering::Relaxed) {
        if let Some(session) = connect_follower(opts).await? {
            return Ok(session);
        }
    }
    let mut seeds = opts.get_seeds();
    if let Some(hint) = leader_hint(opts) {
        seeds.retain(|s| *s != hint);
        seeds.insert(0, hint);
    }
    let deadline = Instant::now() + opts.leader_timeout;
    let mut backoff = BACKOFF_START;
    let mut last_error: Option<Error> = None;
    let mut sweeps = 0u32;

    loop {
        sweeps += 1;
        for seed in &seeds {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let timeout = opts.connect_timeout.min(remaining);
            let candidate = match probe(seed, timeout).await {
                Ok(Probe::Leader(stream)) => Some(stream),
                Ok(Probe::Redirect(leader)) => {
                    tracing::debug!(%seed, %leader, "redirected to the leader");
                    match probe(&leader, timeout).await {
                        Ok(Probe::Leader(stream)) => Some(stream),
                        Ok(_) => None,
                        Err(e) => {
                            last_error = Some(e);
                            None
                        }
                    }
                }
                Ok(Probe::NoLeader) => {
                    tracing::debug!(%seed, "node knows no leader");
                    None
                }
                Err(e) => {
                    tracing::debug!(%seed, error = %e, "probe failed");
                    last_error = Some(e);
                    None
                }
            };
            if let Some(stream) = candidate {
                let leader = stream.peer().clone();
                match open_on_leader(stream, opts).await {
                    Ok(Some(mut session)) => {
                        session.set_request_timeout(opts.request_timeout);
                        set_leader_hint(opts, Some(leader.clone()));
                        tracing::debug!(%leader, sweeps, "connected to the dqlite leader");
                        return Ok(session);
                    }
                    Ok(None) => tracing::debug!(%leader, "leader stepped down before OPEN"),
                    // A database-level OPEN failure is not going to change on retry.
                    Err(e @ Error::Database(_)) => return Err(e),
                    Err(e) => last_error = Some(e),
                }
            }
        }
        let now = Instant::now();
        if now + backoff >= deadline {
            let detail = last_error.map(|e| format!("; last error: {e}")).unwrap_or_default();
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "no available dqlite leader found among {} after {sweeps} sweep(s) in {:?}{detail}",
                    seeds.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    opts.leader_timeout
                ),
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The embedded node's session if it leads (in process, no socket), or, for follower reads,
/// if it follows a known leader; `None` if another node leads (the caller then searches over
/// TCP). A node without a socket is the only member:
/// it waits for it to lead, bounded by the leader timeout.
#[cfg(feature = "embedded")]
async fn connect_local(
    opts: &DqliteConnectOptions,
    spec: &crate::embedded::EmbeddedSpec,
) -> Result<Option<Session>, Error> {
    let node = crate::embedded::node(opts, spec).await?;
    let deadline = Instant::now() + opts.leader_timeout;
    let peer = match node.address() {
        Some(a) => parse_host_port(a).unwrap_or_else(|_| opts.host.clone()),
        None => NodeAddress::new(dqlite_node::embedded::NO_SOCKET_ADDRESS, 0),
    };
    let mut role = node.runtime().watch_role();
    let follower_reads = opts.read_mode == ReadMode::Follower;
    loop {
        // Follower reads are served by the local node too while it follows a known leader.
        let local_follower = follower_reads && node.leader().is_some_and(|(id, _)| id != node.id());
        if node.is_leader() || local_follower {
            let stream = WireStream::local(node.connect_local(), peer.clone()).await?;
            match open_on_leader(stream, opts).await {
                Ok(Some(mut session)) => {
                    session.set_request_timeout(opts.request_timeout);
                    tracing::debug!(node = %peer, local_follower, "connected to the embedded node in process");
                    return Ok(Some(session));
                }
                Ok(None) => tracing::debug!("embedded node stepped down before OPEN"),
                Err(e) => return Err(e),
            }
        } else if spec.listen && node.leader().is_some_and(|(id, _)| id != node.id()) {
            return Ok(None);
        }
        if node.is_closed() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the embedded dqlite node on {} has been closed", spec.data.display()),
            )));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "the embedded dqlite node on {} found no leader within {:?}",
                    spec.data.display(),
                    opts.leader_timeout
                ),
            )));
        }
        // Woken by a role change; re-checked at least every 50 ms.
        let _ = tokio::time::timeout(remaining.min(Duration::from_millis(50)), role.changed()).await;
    }
}
