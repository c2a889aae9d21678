//! Test support for the server tests: the rusqlite SQL backend, a fake cluster backend, a
//! started server, and a raw wire client.
#![allow(dead_code)]

pub mod nodes;
pub mod sqlite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dqlite_node::server::{BackendError, ClusterBackend, DumpFile, Member, Server, ServerConfig, ServerHandle};
use dqlite_node::wire::codes::{SQLITE_BUSY, SQLITE_ERROR};
use dqlite_node::wire::header;
use dqlite_node::wire::{DecodeContext, ProtocolVersion, Request, Response, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use sqlite::SqliteBackend;

/// Shared state of a [`FakeCluster`], so tests can flip leadership.
#[derive(Debug)]
pub struct ClusterState {
    pub node_id: u64,
    pub address: Mutex<String>,
    /// `Some(term)` while "we" lead.
    pub term: Mutex<Option<u64>>,
    pub leader: Mutex<Option<(u64, String)>>,
    pub voter: Mutex<bool>,
    pub members: Mutex<Vec<Member>>,
    pub weight: AtomicU64,
    pub dir: PathBuf,
}

/// A cluster backend with no Raft behind it: membership is a list, leadership a flag.
#[derive(Debug, Clone)]
pub struct FakeCluster(pub Arc<ClusterState>);

impl FakeCluster {
    pub fn leader(node_id: u64, dir: PathBuf) -> Self {
        FakeCluster(Arc::new(ClusterState {
            node_id,
            address: Mutex::new(String::new()),
            term: Mutex::new(Some(1)),
            leader: Mutex::new(None),
            voter: Mutex::new(true),
            members: Mutex::new(Vec::new()),
            weight: AtomicU64::new(0),
            dir,
        }))
    }

    /// Make this node the leader at `address`, alone in its cluster.
    pub fn set_self(&self, address: &str) {
        *self.0.address.lock().unwrap() = address.to_owned();
        *self.0.leader.lock().unwrap() = Some((self.0.node_id, address.to_owned()));
        *self.0.members.lock().unwrap() =
            vec![Member { id: self.0.node_id, address: address.to_owned(), role: Role::Voter }];
    }

    /// Lose leadership to `(id, address)`.
    pub fn follow(&self, leader: Option<(u64, String)>) {
        *self.0.term.lock().unwrap() = None;
        *self.0.leader.lock().unwrap() = leader;
    }

    /// Become leader again in `term`.
    pub fn lead(&self, term: u64) {
        *self.0.term.lock().unwrap() = Some(term);
        let a = self.0.address.lock().unwrap().clone();
        *self.0.leader.lock().unwrap() = Some((self.0.node_id, a));
    }
}

impl ClusterBackend for FakeCluster {
    fn node_id(&self) -> u64 {
        self.0.node_id
    }
    fn leader_term(&self) -> Option<u64> {
        *self.0.term.lock().unwrap()
    }
    fn leader(&self) -> Option<(u64, String)> {
        self.0.leader.lock().unwrap().clone()
    }
    fn is_voter(&self) -> bool {
        *self.0.voter.lock().unwrap()
    }
    fn members(&self) -> Vec<Member> {
        self.0.members.lock().unwrap().clone()
    }
    async fn add(&self, id: u64, address: String) -> Result<(), BackendError> {
        let mut m = self.0.members.lock().unwrap();
        if m.iter().any(|x| x.id == id || x.address == address) {
            return Err(BackendError::new(SQLITE_ERROR, "server ID or address already in use"));
        }
        m.push(Member { id, address, role: Role::Spare });
        Ok(())
    }
    async fn assign(&self, id: u64, role: Role) -> Result<(), BackendError> {
        let mut m = self.0.members.lock().unwrap();
        match m.iter_mut().find(|x| x.id == id) {
            Some(x) => {
                x.role = role;
                Ok(())
            }
            None => Err(BackendError::new(SQLITE_ERROR, "no such server")),
        }
    }
    async fn remove(&self, id: u64) -> Result<(), BackendError> {
        let mut m = self.0.members.lock().unwrap();
        let before = m.len();
        m.retain(|x| x.id != id);
        if m.len() == before {
            return Err(BackendError::new(SQLITE_ERROR, "no such server"));
        }
        Ok(())
    }
    async fn transfer(&self, id: u64) -> Result<(), BackendError> {
        let target = self.0.members.lock().unwrap().iter().find(|x| x.id == id && x.role == Role::Voter).cloned();
        match target {
            Some(t) if t.id != self.0.node_id => {
                self.follow(Some((t.id, t.address)));
                Ok(())
            }
            _ => Err(BackendError::new(SQLITE_BUSY, "leadership transfer failed")),
        }
    }
    fn describe(&self) -> (u64, u64) {
        (0, self.0.weight.load(Ordering::Relaxed))
    }
    fn set_weight(&self, weight: u64) {
        self.0.weight.store(weight, Ordering::Relaxed);
    }
    async fn dump(&self, name: String) -> Result<Vec<DumpFile>, BackendError> {
        if name.contains('/') {
            return Ok(Vec::new());
        }
        let main = self.0.dir.join(&name);
        let Ok(data) = std::fs::read(&main) else { return Ok(Vec::new()) };
        let wal = std::fs::read(self.0.dir.join(format!("{name}-wal"))).unwrap_or_default();
        Ok(vec![DumpFile { name: name.clone(), data }, DumpFile { name: format!("{name}-wal"), data: wal }])
    }
}

/// A server on 127.0.0.1 over a fresh directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub cluster: FakeCluster,
    pub dir: tempfile::TempDir,
    pub handle: Option<ServerHandle>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let cluster = FakeCluster::leader(1, dir.path().to_path_buf());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        cluster.set_self(&addr.to_string());
        let handle = Server::new(config, SqliteBackend::new(dir.path()), cluster.clone()).spawn(listener);
        TestServer { addr, cluster, dir, handle: Some(handle) }
    }

    pub fn url(&self, db: &str) -> String {
        format!("dqlite://{}/{db}", self.addr)
    }
}

/// An owned response frame.
pub struct Frame {
    pub header: dqlite_node::wire::Header,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn decode(&self) -> Response<'_> {
        Response::decode(&self.header, &self.body, &DecodeContext::default()).expect("well-formed response")
    }
}

/// A raw protocol client for byte-level tests.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        Self::connect_version(addr, ProtocolVersion::V1.word()).await
    }

    pub async fn connect_version(addr: SocketAddr, word: u64) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&word.to_le_bytes()).await.unwrap();
        RawClient { stream, buf: Vec::new() }
    }

    pub async fn send(&mut self, req: &Request<'_>) {
        let bytes = req.to_bytes().unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((msg, len)) = header::parse(&self.buf, 1 << 30).unwrap() {
                let f = Frame { header: msg.header, body: msg.body.to_vec() };
                self.buf.drain(..len);
                return Some(f);
            }
            let mut chunk = [0u8; 16 << 10];
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("a reply within the bound")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn request(&mut self, req: &Request<'_>) -> Frame {
        self.send(req).await;
        self.recv().await.expect("a reply")
    }
}
