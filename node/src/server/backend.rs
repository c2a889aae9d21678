//! What the server needs from the rest of the node: an SQL backend and a cluster backend.
//!
//! The server owns the protocol (framing, request decoding, leader checks, statement ids,
//! ROWS batching, failure replies); the backends own the work. The node plugs its SQLite layer
//! and its Raft runtime in with small adapters; tests plug in plain SQLite and a fake cluster.

use std::future::Future;

use dqlite_wire::{Role, Value};

/// A failure to report to the client: a SQLite extended result code (or a dqlite code from
/// [`dqlite_wire::codes`]) and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("({code}) {message}")]
pub struct BackendError {
    /// The code sent in the FAILURE response.
    pub code: u64,
    /// The message sent in the FAILURE response.
    pub message: String,
}

impl BackendError {
    /// A failure with `code` and `message`.
    pub fn new(code: u64, message: impl Into<String>) -> Self {
        BackendError { code, message: message.into() }
    }
}

/// What PREPARE learnt about a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareInfo {
    /// Number of parameters (`sqlite3_bind_parameter_count`).
    pub params: u64,
    /// Byte offset in the SQL where the unprepared remainder starts (the SQL's length if the
    /// remainder holds no statement).
    pub tail_offset: u64,
    /// Whether the remainder holds another statement (not only whitespace and comments).
    pub has_tail: bool,
    /// `sqlite3_stmt_readonly`: the statement makes no direct change to the database
    /// (transaction control counts as read-only). Connections opened for follower reads run
    /// only such statements.
    pub readonly: bool,
}

/// The outcome of EXEC / EXEC_SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecResult {
    /// `sqlite3_last_insert_rowid`.
    pub last_insert_id: i64,
    /// `sqlite3_changes`.
    pub rows_affected: u64,
}

/// Some rows of a running query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowBatch {
    /// Rows, each with one value per column, typed as the wire wants them (UNIXTIME, ISO8601
    /// and BOOLEAN by declared column type, PROTOCOL.md 3.1).
    pub rows: Vec<Vec<Value>>,
    /// True if the statement has no more rows (the query is over).
    pub done: bool,
}

/// What a statement-running request targets.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a, S> {
    /// A statement prepared on this session.
    Stmt(S),
    /// SQL text, possibly several statements.
    Sql(&'a str),
}

/// Opens databases. One [`SqlSession`] per client connection that sent OPEN.
///
/// Each client connection is served on a thread of its own (a `current_thread` runtime, see
/// `server::inline`), so neither sessions nor the futures of `open` and of sessions need to be
/// `Send`: a session may hold its SQLite connection directly.
pub trait SqlBackend: Send + Sync + 'static {
    /// The session type.
    type Session: SqlSession;

    /// Opens (creating on first write) the database `name` for one client connection.
    fn open(&self, name: &str) -> impl Future<Output = Result<Self::Session, BackendError>>;
}

/// One client connection's database: statements and queries, one call at a time.
///
/// Semantics the server relies on (dqlite's, PROTOCOL.md 4 and 6):
/// * `exec` runs a statement to completion; one that yields a row fails with
///   [`messages::ROWS_YIELDED`](super::messages::ROWS_YIELDED) (code 1). With [`Target::Sql`]
///   every statement runs in order, the remaining parameters carrying over to the next one,
///   and the result is the last statement's.
/// * `query` checks the column count **before stepping**: a statement without result columns
///   fails with code 1 [`messages::NO_COLUMNS`](super::messages::NO_COLUMNS) and nothing runs
///   (the driver then sends EXEC). With several statements in [`Target::Sql`], all run in order
///   and the last one's rows are returned; supplied-but-unused parameters are an error.
/// * After `query` succeeds, rows are fetched with `next_rows` until `done`, or the result set
///   is abandoned with `close_query`. No other call comes in between.
/// * Dropping the session releases everything (an open transaction rolls back).
pub trait SqlSession: 'static {
    /// A prepared statement's handle.
    type Stmt: Copy + Send + Sync + 'static;

    /// Prepares the first statement of `sql`.
    fn prepare(&mut self, sql: &str) -> impl Future<Output = Result<(Self::Stmt, PrepareInfo), BackendError>>;

    /// Runs a statement or SQL text for its effect.
    fn exec(
        &mut self,
        target: Target<'_, Self::Stmt>,
        params: Vec<Value>,
    ) -> impl Future<Output = Result<ExecResult, BackendError>>;

    /// Starts a query; returns its column names.
    fn query(
        &mut self,
        target: Target<'_, Self::Stmt>,
        params: Vec<Value>,
    ) -> impl Future<Output = Result<Vec<String>, BackendError>>;

    /// The next rows of the running query: stops once their encoding reaches about
    /// `budget_bytes` (at least one row if any remain).
    fn next_rows(&mut self, budget_bytes: usize) -> impl Future<Output = Result<RowBatch, BackendError>>;

    /// Abandons the running query (resets the statement).
    fn close_query(&mut self) -> impl Future<Output = ()>;

    /// Finalizes a statement.
    fn finalize(&mut self, stmt: Self::Stmt) -> impl Future<Output = Result<(), BackendError>>;

    /// `Some(period)` while the session needs [`idle`](SqlSession::idle) called at least that
    /// often while the client sends nothing (the node's sessions: while they hold the write
    /// lock, so that a node that lost leadership rolls the transaction back). The default:
    /// never.
    fn idle_poll(&self) -> Option<std::time::Duration> {
        None
    }

    /// The periodic work of an idle session (see [`idle_poll`](SqlSession::idle_poll)).
    fn idle(&mut self) -> impl Future<Output = ()> {
        async {}
    }
}

/// A cluster member as CLUSTER reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Client (and peer) address.
    pub address: String,
    /// Role.
    pub role: Role,
}

/// One file of a DUMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpFile {
    /// File name (`<db>`, `<db>-wal`).
    pub name: String,
    /// Content.
    pub data: Vec<u8>,
}

/// This node's place in the cluster and the membership operations.
///
/// The membership operations are called only on the leader (the server checks
/// [`leader_term`](ClusterBackend::leader_term) first) and reply once the change is committed.
pub trait ClusterBackend: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;

    /// `Some(term)` while this node is the leader (in that term), else `None`.
    fn leader_term(&self) -> Option<u64>;

    /// The leader as this node knows it: `(id, address)`, `None` if unknown.
    fn leader(&self) -> Option<(u64, String)>;

    /// Whether this node is a voter (only voters report the leader, as in dqlite).
    fn is_voter(&self) -> bool;

    /// The members of the latest configuration.
    fn members(&self) -> Vec<Member>;

    /// Adds a node as spare.
    fn add(&self, id: u64, address: String) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Changes a member's role.
    fn assign(&self, id: u64, role: Role) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes a member.
    fn remove(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Transfers leadership to `id` (0: a voter of the backend's choice); returns once it moved.
    fn transfer(&self, id: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// `(failure_domain, weight)` of this node.
    fn describe(&self) -> (u64, u64);

    /// Sets this node's weight.
    fn set_weight(&self, weight: u64);

    /// The files of database `name` (main file, then WAL).
    fn dump(&self, name: String) -> impl Future<Output = Result<Vec<DumpFile>, BackendError>> + Send;

    /// Waits until a read of the local state started now is linearizable (ReadIndex: this
    /// node's leadership confirmed by a quorum after the call, and the local state machine has
    /// applied the commit index of that moment). The default has nothing to wait for (a
    /// backend without replication).
    fn read_barrier(&self) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }

    /// Waits until a read of the local state started now reflects every write acknowledged at
    /// least `max_staleness` before (follower reads, also on a non-leader; see
    /// `RuntimeHandle::follower_read`), or fails with
    /// [`SQLITE_IOERR_FOLLOWER_STALE`](dqlite_wire::codes::SQLITE_IOERR_FOLLOWER_STALE). The
    /// default has nothing to wait for (a backend without replication).
    fn follower_read(
        &self,
        max_staleness: std::time::Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = max_staleness;
        async { Ok(()) }
    }
}
