//! Connection options: where the cluster is, how long to look for its leader, caching.

mod connect;
pub(crate) mod parse;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx_core::connection::LogSettings;

/// Default port when the URL does not name one (the port `dqlite-demo` examples use).
pub const DEFAULT_PORT: u16 = 9001;
/// Default per-node dial timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default budget for finding the leader (all sweeps over the seed list, with backoff).
pub const DEFAULT_LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default number of prepared statements kept per connection.
pub const DEFAULT_STATEMENT_CACHE_CAPACITY: usize = 100;
/// Default [`DqliteConnectOptions::busy_timeout`] (as sqlx-sqlite's).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`DqliteConnectOptions::max_staleness`] of follower reads (five heartbeat intervals
/// of a LAN cluster).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);

/// How queries read (`read=` in the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadMode {
    /// The leader answers from its local state at once (dqlite's behaviour). A leader that was
    /// just deposed without knowing it yet may answer from a state that misses the newest
    /// commits, for up to an election timeout.
    #[default]
    Leader,
    /// Linearizable: before each query the leader confirms its leadership with a quorum and
    /// waits until it has applied everything committed (Raft ReadIndex, one heartbeat round).
    /// A query then sees every write acknowledged before it started, also right after a
    /// failover. Only dqlite-rs nodes honour it (real dqlite ignores it and reads as `Leader`).
    Linearizable,
    /// Follower reads with a staleness bound ([`max_staleness`](DqliteConnectOptions::max_staleness)):
    /// each connection goes to a node that is **not** the leader when one is reachable (spread
    /// round-robin over the seeds, in URL order), else to the leader; with `data=DIR`, the
    /// embedded node itself, in process, while it leads or follows a known leader. Each query
    /// first waits until that node's state reflects every write acknowledged at least
    /// `max_staleness` (plus one message delay) before it; a node that cannot get there in
    /// time (cut off from the leader, far behind) fails the query with
    /// `SQLITE_IOERR_FOLLOWER_STALE`
    /// ([`DqliteError::is_follower_stale`](crate::DqliteError::is_follower_stale)) and the
    /// connection picks a node afresh for its next statement. Such connections are
    /// **read-only** on every node (a write fails with `SQLITE_READONLY`, code 8): use a second
    /// pool without `read=follower` for writes. Reads in an explicit (deferred) transaction
    /// see one snapshot. Real dqlite nodes do not serve reads on followers: against them the
    /// connections go to the leader (and may write there, as dqlite does not know the option).
    Follower,
}

impl ReadMode {
    fn as_str(self) -> &'static str {
        match self {
            ReadMode::Leader => "leader",
            ReadMode::Linearizable => "linearizable",
            ReadMode::Follower => "follower",
        }
    }
}

/// A `host:port` address of a dqlite node, as it is dialed and as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl NodeAddress {
    /// A node address from a host name or IP literal and a port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        // Accept "[::1]" as well as "::1".
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::to_owned).unwrap_or(host);
        NodeAddress { host, port }
    }

    /// The host part (IPv6 literals without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Options for connecting to a dqlite cluster.
///
/// # URL format
///
/// ```text
/// dqlite://HOST[:PORT]/DATABASE[?peers=HOST:PORT,HOST:PORT&option=value...]
/// ```
///
/// * `HOST[:PORT]` — the first seed node (port defaults to 9001). IPv6 literals in brackets.
/// * `DATABASE` — the database name inside the cluster (a plain file name such as `app.db`;
///   percent-encoded in the URL if needed). Required.
///
/// Query parameters (all optional; unknown parameters are an error):
///
/// | parameter | builder method | default | meaning |
/// |---|---|---|---|
/// | `peers=H:P,H:P` | [`peers`](Self::peers) / [`add_peer`](Self::add_peer) | none | more seed nodes; the leader is searched over the host and all peers |
/// | `connect_timeout=5s` | [`connect_timeout`](Self::connect_timeout) | 5 s | timeout for dialing one node and reading its LEADER reply |
/// | `leader_timeout=20s` | [`leader_timeout`](Self::leader_timeout) | 20 s | total time spent looking for the leader (sweeps over all seeds with exponential backoff 100 ms → 1 s) before giving up |
/// | `statement_cache_capacity=100` | [`statement_cache_capacity`](Self::statement_cache_capacity) | 100 | prepared statements kept per connection (0 disables the cache: statements run with `EXEC_SQL`/`QUERY_SQL`) |
/// | `request_timeout=0` | [`request_timeout`](Self::request_timeout) | 0 (off) | longest wait for one response message from the leader; on expiry the connection is dropped and the request fails (a write then has an unknown outcome). Guards against a leader host that vanished without closing TCP |
/// | `client_id=0` | [`client_id`](Self::client_id) | 0 | id sent in the `CLIENT` handshake (informational for the server) |
/// | `data=DIR` | [`data_dir`](Self::data_dir) | none | feature `embedded`: run (or attach to, if this process already runs it) a dqlite-rs node inside this process with data directory `DIR`, listening on the URL's `HOST:PORT`. A fresh `DIR` bootstraps a new cluster (or joins, with `join=`); a used one resumes. While that node leads, statements reach it through an in-process pipe (same protocol and errors, no socket); otherwise over TCP to the leader. `dqlite:///DB?data=DIR` (no host): a single node with no listening socket ([`no_socket`](Self::no_socket)) |
/// | `join=H:P,H:P` | [`join`](Self::join) | none | with `data=`: nodes a fresh embedded node joins through; they are also leader-search seeds |
/// | `read=leader` | [`read_mode`](Self::read_mode) | `leader` | `leader`: queries read the leader's local state at once (as dqlite); `linearizable`: each query first waits for a Raft ReadIndex round on the leader (one heartbeat to a quorum) so it sees every write acknowledged before it started, even right after a failover (dqlite-rs nodes; real dqlite ignores it); `follower`: connections read from a non-leader node (read-only connections; writes get `SQLITE_READONLY`), each query seeing every write acknowledged at least `max_staleness` before it, else failing with `SQLITE_IOERR_FOLLOWER_STALE` (dqlite-rs nodes; against real dqlite the connections go to the leader). See [`ReadMode`] |
/// | `max_staleness=500ms` | [`max_staleness`](Self::max_staleness) | 500 ms | with `read=follower`: how old the state a follower serves may be (measured on the follower's clock from the last message of the leader it applied) |
/// | `busy_timeout=5s` | [`busy_timeout`](Self::busy_timeout) | 5 s | how long a statement outside a transaction is retried while the server answers `SQLITE_BUSY` ("database is locked": another writer holds the lock; the statement did not run), with SQLite's busy-handler delays (1 ms … 100 ms); 0 = fail at once. sqlx-sqlite's default is the same. With `data=DIR` it is also the embedded node's busy timeout (how long its writers wait for a database's write lock), set when this URL starts the node |
///
/// Durations accept `ms`, `s` and `m` suffixes (`250ms`, `5s`, `1m`); a bare number means
/// seconds. [`to_url_lossy`](sqlx_core::connection::ConnectOptions::to_url_lossy) writes every
/// option explicitly (durations in milliseconds), and parsing that URL gives the same options back.
///
/// TLS is not supported yet (dqlite itself terminates TLS outside the protocol).
///
/// ```
/// use std::time::Duration;
/// use sqlx_dqlite::DqliteConnectOptions;
///
/// let opts: DqliteConnectOptions =
///     "dqlite://10.0.0.1:9001/app.db?peers=10.0.0.2:9001,10.0.0.3:9001&leader_timeout=30s"
///         .parse()
///         .unwrap();
/// assert_eq!(opts.get_database(), "app.db");
/// assert_eq!(opts.get_seeds().len(), 3);
///
/// let same = DqliteConnectOptions::new()
///     .host("10.0.0.1", 9001)
///     .database("app.db")
///     .add_peer("10.0.0.2", 9001)
///     .add_peer("10.0.0.3", 9001)
///     .leader_timeout(Duration::from_secs(30));
/// assert_eq!(same.get_seeds(), opts.get_seeds());
/// ```
#[derive(Clone)]
pub struct DqliteConnectOptions {
    pub(crate) host: NodeAddress,
    pub(crate) peers: Vec<NodeAddress>,
    pub(crate) database: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) leader_timeout: Duration,
    pub(crate) statement_cache_capacity: usize,
    pub(crate) client_id: u64,
    pub(crate) request_timeout: Duration,
    pub(crate) busy_timeout: Duration,
    pub(crate) read_mode: ReadMode,
    pub(crate) max_staleness: Duration,
    /// Follower reads: where the next connection starts its round over the seeds.
    pub(crate) follower_cursor: Arc<AtomicUsize>,
    /// Follower reads: set once a node refused them with "not leader" (real dqlite): from
    /// then on connections go to the leader.
    pub(crate) followers_unsupported: Arc<AtomicBool>,
    /// The leader found last by any connection made from these options (or their clones):
    /// tried first by the next leader search.
    pub(crate) leader_hint: Arc<Mutex<Option<NodeAddress>>>,
    pub(crate) log_settings: LogSettings,
    /// `data=DIR` (and `join=`): run or attach to a node of this process (feature `embedded`).
    pub(crate) embedded: Option<crate::embedded::EmbeddedSpec>,
}

impl fmt::Debug for DqliteConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DqliteConnectOptions")
            .field("host", &self.host.to_string())
            .field("peers", &self.peers.iter().map(ToString::to_string).collect::<Vec<_>>())
            .field("database", &self.database)
            .field("connect_timeout", &self.connect_timeout)
            .field("leader_timeout", &self.leader_timeout)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("client_id", &self.client_id)
            .field("request_timeout", &self.request_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .field("read_mode", &self.read_mode)
            .field("max_staleness", &self.max_staleness)
            .field("embedded", &self.embedded)
            .finish()
    }
}

impl Default for DqliteConnectOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl DqliteConnectOptions {
    /// Options for `127.0.0.1:9001`, database `db` — set at least [`host`](Self::host) and
    /// [`database`](Self::database) for real use.
    pub fn new() -> Self {
        DqliteConnectOptions {
            host: NodeAddress::new("127.0.0.1", DEFAULT_PORT),
            peers: Vec::new(),
            database: "db".to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            leader_timeout: DEFAULT_LEADER_TIMEOUT,
            statement_cache_capacity: DEFAULT_STATEMENT_CACHE_CAPACITY,
            client_id: 0,
            request_timeout: Duration::ZERO,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            read_mode: ReadMode::Leader,
            max_staleness: DEFAULT_MAX_STALENESS,
            follower_cursor: Arc::new(AtomicUsize::new(0)),
            followers_unsupported: Arc::new(AtomicBool::new(false)),
            leader_hint: Arc::new(Mutex::new(None)),
            log_settings: LogSettings::default(),
            embedded: None,
        }
    }

    /// The first seed node.
    pub fn host(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = NodeAddress::new(host, port);
        self
    }

    /// Replace the additional seed nodes (`peers=` in the URL).
    pub fn peers<I, S>(mut self, peers: I) -> Self
    where
        I: IntoIterator<Item = (S, u16)>,
        S: Into<String>,
    {
        self.peers = peers.into_iter().map(|(h, p)| NodeAddress::new(h, p)).collect();
        self
    }

    /// Add one seed node.
    pub fn add_peer(mut self, host: impl Into<String>, port: u16) -> Self {
        self.peers.push(NodeAddress::new(host, port));
        self
    }

    /// The database name inside the cluster (`/DATABASE` in the URL).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// Timeout for dialing one node and getting its answer to LEADER (`connect_timeout=`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Total time to search for the leader before failing (`leader_timeout=`).
    pub fn leader_timeout(mut self, timeout: Duration) -> Self {
        self.leader_timeout = timeout;
        self
    }

    /// Number of prepared statements cached per connection; 0 disables caching
    /// (`statement_cache_capacity=`).
    pub fn statement_cache_capacity(mut self, capacity: usize) -> Self {
        self.statement_cache_capacity = capacity;
        self
    }

    /// Id sent in the CLIENT handshake (`client_id=`).
    pub fn client_id(mut self, id: u64) -> Self {
        self.client_id = id;
        self
    }

    /// Longest wait for one response message; `Duration::ZERO` (the default) waits forever
    /// (`request_timeout=`). When it expires the connection is dropped: the request fails
    /// with an I/O error, or an "outcome unknown" error if it may have written.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The request timeout (`Duration::ZERO` = none).
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How long a statement outside a transaction is retried while the server answers
    /// `SQLITE_BUSY` (`busy_timeout=`; `Duration::ZERO` fails at once). A busy statement did
    /// not run, so retrying it is safe; inside a transaction the error is returned at once.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The busy timeout.
    pub fn get_busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// How queries read (`read=`; see [`ReadMode`]).
    pub fn read_mode(mut self, mode: ReadMode) -> Self {
        self.read_mode = mode;
        self
    }

    /// The read mode.
    pub fn get_read_mode(&self) -> ReadMode {
        self.read_mode
    }

    /// With [`ReadMode::Follower`]: how stale a follower's state may be (`max_staleness=`,
    /// default 500 ms). A read reflects every write acknowledged at least this long (plus one
    /// message delay) before it; see `docs/replication.md` ("Reads") for the exact guarantee.
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound;
        self
    }

    /// The follower-read staleness bound.
    pub fn get_max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// The vfs field of OPEN: dqlite ignores it (go-dqlite sends "volatile"); dqlite-rs reads
    /// the options after `?` (`read=linearizable`, `read=follower&max_staleness=MS`).
    pub(crate) fn open_vfs(&self) -> String {
        match self.read_mode {
            ReadMode::Leader => "volatile".to_owned(),
            ReadMode::Linearizable => "volatile?read=linearizable".to_owned(),
            ReadMode::Follower => {
                format!("volatile?read=follower&max_staleness={}", self.max_staleness.as_millis())
            }
        }
    }

    /// The database name.
    pub fn get_database(&self) -> &str {
        &self.database
    }

    /// All seed nodes in the order they are tried: the URL host first, then the peers
    /// (duplicates removed).
    pub fn get_seeds(&self) -> Vec<NodeAddress> {
        let mut out: Vec<NodeAddress> = Vec::with_capacity(1 + self.peers.len());
        let join = self.embedded.iter().flat_map(|e| e.join.iter());
        for a in std::iter::once(&self.host).chain(self.peers.iter()).chain(join) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The per-node dial timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The leader-search budget.
    pub fn get_leader_timeout(&self) -> Duration {
        self.leader_timeout
    }

    /// The statement cache capacity.
    pub fn get_statement_cache_capacity(&self) -> usize {
        self.statement_cache_capacity
    }
}
