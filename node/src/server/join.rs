//! Joining an existing cluster through the client protocol (what `dqlited run --join` does).
//!
//! ```text
//!  for each seed (until one answers):  LEADER ──► leader address (follow it once)
//!     on the leader:  CLUSTER ──► already a member?  ──yes──► ASSIGN the wanted role if needed
//!                                     │ no
//!                                     ▼
//!                     ADD id address (as spare) ──► ASSIGN voter (fewer than `max_voters`
//!                                                   voters) or standby
//!                     after ASSIGN voter: CLUSTER again; more than `max_voters` voters (a
//!                     concurrent join read the same CLUSTER) ──► ASSIGN standby, retry later
//!  nobody answered / NOT_LEADER / BUSY: sleep (exponential back-off with jitter), sweep again
//! ```
//!
//! A standby that finds fewer than `max_voters` voters on a later sweep takes the free seat, so
//! nodes that stepped back at the same moment do not leave the cluster short of voters.
//!
//! The joining node must already be running (its runtime receives the log as soon as ADD is
//! committed; promotion to voter waits for it to catch up). Joining is idempotent: a node that
//! restarts, or whose ADD was committed but whose reply was lost, finds itself in CLUSTER.

use std::io;
use std::time::Duration;

use dqlite_wire::codes::is_not_leader;
use dqlite_wire::header;
use dqlite_wire::{DecodeContext, NodeInfoFormat, ProtocolVersion, Request, Response, Role, WireNodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How to join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Addresses of nodes to ask (any member will do: non-leaders redirect).
    pub seeds: Vec<String>,
    /// The joining node's id.
    pub node_id: u64,
    /// The joining node's address.
    pub address: String,
    /// The first members up to this many voters become voters, later ones standbys.
    pub max_voters: usize,
    /// First retry delay (doubling, with jitter, up to `backoff_max`).
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Bound on one connection + request.
    pub request_timeout: Duration,
}

impl JoinOptions {
    /// Defaults: 3 voters, back-off 100 ms to 2 s, 5 s per request.
    pub fn new(seeds: Vec<String>, node_id: u64, address: String) -> Self {
        JoinOptions {
            seeds,
            node_id,
            address,
            max_voters: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why one join attempt did not complete (the caller retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// A socket failed or timed out.
    #[error("{address}: {source}")]
    Io {
        /// The node.
        address: String,
        /// The error.
        source: io::Error,
    },
    /// No seed knows a leader.
    #[error("no listed node knows a leader")]
    NoLeader,
    /// The leader refused (busy with another change, or lost leadership).
    #[error("{address} refused {request}: ({code}) {message}")]
    Refused {
        /// The node.
        address: String,
        /// Which request.
        request: &'static str,
        /// The FAILURE code.
        code: u64,
        /// The FAILURE message.
        message: String,
    },
    /// Joins at the same moment made more voters than wanted: this node went back to
    /// standby and tries again later (see the module docs).
    #[error("{voters} voters after a concurrent join (at most {max} wanted): back to standby")]
    TooManyVoters {
        /// Voters seen after this node's promotion.
        voters: usize,
        /// The wanted bound.
        max: usize,
    },
    /// A node answered something that is not the protocol.
    #[error("{address}: unexpected reply: {detail}")]
    Protocol {
        /// The node.
        address: String,
        /// What was wrong.
        detail: String,
    },
}

struct Client {
    stream: TcpStream,
    address: String,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    async fn connect(address: &str, timeout: Duration) -> Result<Client, JoinError> {
        let io_err = |source| JoinError::Io { address: address.to_owned(), source };
        let work = async {
            let mut stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            stream.write_all(&ProtocolVersion::V1.encode()).await?;
            Ok::<_, io::Error>(stream)
        };
        let stream = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| io_err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(io_err)?;
        Ok(Client { stream, address: address.to_owned(), buf: Vec::new(), timeout })
    }

    /// Sends `req` and returns the reply frame's header and body.
    async fn call(&mut self, req: &Request<'_>) -> Result<(dqlite_wire::Header, Vec<u8>), JoinError> {
        let address = self.address.clone();
        let io_err = |source| JoinError::Io { address: address.clone(), source };
        let bytes =
            req.to_bytes().map_err(|e| JoinError::Protocol { address: self.address.clone(), detail: e.to_string() })?;
        let work = async {
            self.stream.write_all(&bytes).await?;
            loop {
                match header::parse(&self.buf, 1 << 20) {
                    Ok(Some((msg, len))) => {
                        let out = (msg.header, msg.body.to_vec());
                        self.buf.drain(..len);
                        return Ok(out);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| io_err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")))?
            .map_err(io_err)
    }

    fn refused(&self, request: &'static str, code: u64, message: &str) -> JoinError {
        JoinError::Refused { address: self.address.clone(), request, code, message: message.to_owned() }
    }

    fn unexpected(&self, resp: &Response<'_>) -> JoinError {
        JoinError::Protocol { address: self.address.clone(), detail: format!("{:?}", resp.response_type()) }
    }

    async fn leader(&mut self) -> Result<String, JoinError> {
        let (h, body) = self.call(&Request::Leader).await?;
        match decode(&self.address, &h, &body, NodeInfoFormat::V1)? {
            Response::Server { address, .. } => Ok(address.to_owned()),
            Response::Failure { code, message } => Err(self.refused("LEADER", code, message)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn members(&mut self) -> Result<Vec<(u64, String, Role)>, JoinError> {
        let (h, body) = self.call(&Request::Cluster { format: NodeInfoFormat::V1 }).await?;
        match decode(&self.address, &h, &body, NodeInfoFormat::V1)? {
            Response::Servers { nodes, .. } => {
                Ok(nodes.iter().map(|n| (n.id.0, n.address.to_owned(), n.role.unwrap_or(Role::Spare))).collect())
            }
            Response::Failure { code, message } => Err(self.refused("CLUSTER", code, message)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn empty(&mut self, what: &'static str, req: &Request<'_>) -> Result<(), JoinError> {
        let (h, body) = self.call(req).await?;
        match decode(&self.address, &h, &body, NodeInfoFormat::V1)? {
            Response::Empty => Ok(()),
            Response::Failure { code, message } => Err(self.refused(what, code, message)),
            other => Err(self.unexpected(&other)),
        }
    }
}

fn decode<'b>(
    address: &str,
    h: &dqlite_wire::Header,
    body: &'b [u8],
    format: NodeInfoFormat,
) -> Result<Response<'b>, JoinError> {
    let ctx = DecodeContext { node_info_format: format, ..Default::default() };
    Response::decode(h, body, &ctx)
        .map_err(|e| JoinError::Protocol { address: address.to_owned(), detail: e.to_string() })
}

/// One sweep over the seeds: `Ok(role)` once this node is a member with its role.
pub async fn join_once(opts: &JoinOptions) -> Result<Role, JoinError> {
    let mut last = JoinError::NoLeader;
    for seed in &opts.seeds {
        match join_via(opts, seed).await {
            Ok(role) => return Ok(role),
            Err(e) => {
                tracing::debug!(%seed, error = %e, "join attempt failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn join_via(opts: &JoinOptions, seed: &str) -> Result<Role, JoinError> {
    let mut client = Client::connect(seed, opts.request_timeout).await?;
    let leader = client.leader().await?;
    if leader.is_empty() {
        return Err(JoinError::NoLeader);
    }
    if leader != seed {
        client = Client::connect(&leader, opts.request_timeout).await?;
    }
    let members = client.members().await?;
    let voters = members.iter().filter(|(id, _, role)| *role == Role::Voter && *id != opts.node_id).count();
    let wanted = if voters < opts.max_voters { Role::Voter } else { Role::Standby };
    match members.iter().find(|(id, _, _)| *id == opts.node_id) {
        Some((_, address, role)) => {
            if *address != opts.address {
                return Err(JoinError::Protocol {
                    address: leader,
                    detail: format!("node id {} is a member with another address ({address})", opts.node_id),
                });
            }
            // A standby takes a free voter seat (one left by a concurrent join that stepped
            // back, or by a removed voter); any other role is kept.
            if *role != Role::Spare && !(*role == Role::Standby && wanted == Role::Voter) {
                return Ok(*role);
            }
        }
        None => {
            tracing::info!(leader = %leader, id = opts.node_id, address = %opts.address, "asking the leader to add this node");
            client.empty("ADD", &Request::Add { id: WireNodeId(opts.node_id), address: &opts.address }).await?;
        }
    }
    client.empty("ASSIGN", &Request::Assign { id: WireNodeId(opts.node_id), role: wanted }).await?;
    if wanted == Role::Voter {
        // Another node may have read the same CLUSTER and been promoted too: count again.
        // Every node that sees too many voters right after its own promotion steps back to
        // standby and retries after its (jittered) back-off, when it finds the seat taken or
        // free again; so the voters converge to `max_voters`.
        let voters = client.members().await?.iter().filter(|(_, _, role)| *role == Role::Voter).count();
        if voters > opts.max_voters {
            tracing::info!(leader = %leader, voters, max = opts.max_voters, "too many voters after a concurrent join: back to standby");
            client.empty("ASSIGN", &Request::Assign { id: WireNodeId(opts.node_id), role: Role::Standby }).await?;
            return Err(JoinError::TooManyVoters { voters, max: opts.max_voters });
        }
    }
    tracing::info!(leader = %leader, role = ?wanted, "joined the cluster");
    Ok(wanted)
}

/// Joins, retrying with exponential back-off (with jitter) until a listed node's leader adds
/// this node. Runs until it succeeds; cancel the future to give up.
pub async fn join(opts: &JoinOptions) -> Role {
    let mut backoff = opts.backoff_min;
    let mut seed = opts.node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    loop {
        match join_once(opts).await {
            Ok(role) => return role,
            Err(e) => {
                let level_info = !matches!(&e, JoinError::Refused { code, .. } if is_not_leader(*code));
                if level_info {
                    tracing::info!(error = %e, ?backoff, "cannot join yet; retrying");
                }
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let jittered = backoff.mul_f64(0.5 + (seed % 1000) as f64 / 2000.0);
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}
