//! One client connection: read a request, dispatch it, write the reply; strictly one at a time.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use dqlite_wire::codes::{
    DQLITE_NOTFOUND, DQLITE_PARSE, DQLITE_PROTO, SQLITE_BUSY, SQLITE_ERROR, SQLITE_IOERR_NOT_LEADER, SQLITE_NOTFOUND,
    SQLITE_READONLY,
};
use dqlite_wire::header::{self, FrameStatus, Header, HEADER_LEN};
use dqlite_wire::{
    DbId, DecodeError, File, NodeInfo, NodeInfoFormat, Params, ProtocolVersion, Request, RequestType, Response,
    RowsEnd, RowsWriter, Schema, StmtId, Value, ValueType, WireNodeId,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::{BackendError, ClusterBackend, SqlBackend, SqlSession, Target};
use super::{messages, Shared};

/// How much to read at once when the buffer holds no whole message.
const READ_CHUNK: usize = 16 << 10;

struct OpenDb<Sess: SqlSession> {
    session: Sess,
    /// The leader term the database was used in as leader (`None` while opened on a follower):
    /// a session does not survive a change of leadership term.
    term: Option<u64>,
    /// Statement handles by wire id (ids are reused smallest-first, as dqlite does).
    stmts: Vec<Option<Sess::Stmt>>,
    /// How queries read ([`read_mode`]).
    read: ReadMode,
}

/// How a connection's queries read (OPEN's vfs options, [`read_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// The leader's local state at once (dqlite's behaviour).
    Leader,
    /// A ReadIndex round first.
    Linearizable,
    /// Any node's local state, within a staleness bound; the connection is read-only.
    Follower {
        /// The bound.
        max_staleness: Duration,
    },
}

/// The bound a follower-read connection gets when OPEN names none (the driver always sends
/// one).
pub(crate) const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);

/// The read mode a client asked for in OPEN's vfs field (dqlite ignores that field; go-dqlite
/// sends "volatile"). dqlite-rs reads `&`-separated options after a `?`:
/// * `read=linearizable`: every QUERY / QUERY_SQL waits for a ReadIndex round first;
/// * `read=follower` (with `max_staleness=MS`, milliseconds, default 500): the connection may
///   be served by any node; every query waits until this node's state reflects every write
///   acknowledged at least `MS` ms before it (`RuntimeHandle::follower_read`), else fails with
///   `SQLITE_IOERR_FOLLOWER_STALE`; only read-only statements run.
///
/// Anything else, or no option, reads the leader's local state at once, as dqlite does.
pub(crate) fn read_mode(vfs: &str) -> ReadMode {
    let Some((_, opts)) = vfs.split_once('?') else { return ReadMode::Leader };
    let mut mode = ReadMode::Leader;
    let mut max_staleness = DEFAULT_MAX_STALENESS;
    for kv in opts.split('&') {
        match kv.split_once('=') {
            Some(("read", "linearizable")) => mode = ReadMode::Linearizable,
            Some(("read", "follower")) => mode = ReadMode::Follower { max_staleness },
            Some(("max_staleness", ms)) => {
                if let Ok(ms) = ms.parse::<u64>() {
                    max_staleness = Duration::from_millis(ms);
                }
            }
            _ => {}
        }
    }
    match mode {
        ReadMode::Follower { .. } => ReadMode::Follower { max_staleness },
        other => other,
    }
}

struct Conn<S: SqlBackend, C, T> {
    stream: T,
    version: ProtocolVersion,
    shared: Arc<Shared<S, C>>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    db: Option<OpenDb<S::Session>>,
    /// Set when the connection must close after the current reply.
    closing: bool,
}

/// What a request handler decided.
enum Outcome {
    /// `wbuf` holds the reply.
    Replied,
    /// A query started: stream its rows.
    Rows(Vec<String>),
}

fn failure(code: u64, message: &str) -> BackendError {
    BackendError::new(code, message)
}

fn not_leader() -> BackendError {
    failure(SQLITE_IOERR_NOT_LEADER, messages::NOT_LEADER)
}

fn no_database() -> BackendError {
    failure(SQLITE_NOTFOUND, messages::NO_DATABASE)
}

pub(crate) async fn serve<S: SqlBackend, C: ClusterBackend, T: AsyncRead + AsyncWrite + Unpin>(
    stream: T,
    version: ProtocolVersion,
    shared: Arc<Shared<S, C>>,
) -> io::Result<()> {
    let mut conn = Conn {
        stream,
        version,
        shared,
        rbuf: Vec::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(8 << 10),
        db: None,
        closing: false,
    };
    conn.run().await
}

impl<S: SqlBackend, C: ClusterBackend, T: AsyncRead + AsyncWrite + Unpin> Conn<S, C, T> {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(frame) = self.read_request().await? else { return Ok(()) };
            let _in_flight = super::InFlight::enter(&self.shared.in_flight);
            tracing::trace!(target: "dqlite::commit", bytes = frame.len(), "request in");
            self.handle(&frame).await?;
            tracing::trace!(target: "dqlite::commit", "request done");
            if self.closing {
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
        }
    }

    /// The next whole request (header + body), or `None` at a clean end of stream.
    async fn read_request(&mut self) -> io::Result<Option<Vec<u8>>> {
        let max = self.shared.config.max_request_bytes;
        loop {
            match header::check(&self.rbuf, max) {
                Ok(FrameStatus::Complete { len }) => {
                    let rest = self.rbuf.split_off(len);
                    return Ok(Some(std::mem::replace(&mut self.rbuf, rest)));
                }
                Ok(FrameStatus::Incomplete { needed }) => {
                    let want = needed.max(READ_CHUNK);
                    self.rbuf.reserve(want);
                    // A session that must be looked after while the client is idle (it holds
                    // the write lock) gets its `idle` call every `poll`; `read_buf` is
                    // cancel-safe (bytes land in `rbuf` only when a read completes).
                    let poll = self.db.as_ref().and_then(|open| open.session.idle_poll());
                    let mut limited = (&mut self.stream).take(want as u64);
                    let read = limited.read_buf(&mut self.rbuf);
                    let n = match poll {
                        None => read.await?,
                        Some(poll) => match tokio::time::timeout(poll, read).await {
                            Ok(n) => n?,
                            Err(_) => {
                                if let Some(open) = self.db.as_mut() {
                                    open.session.idle().await;
                                }
                                continue;
                            }
                        },
                    };
                    if n == 0 {
                        if !self.rbuf.is_empty() {
                            tracing::debug!(bytes = self.rbuf.len(), "client closed mid-request");
                        }
                        return Ok(None);
                    }
                }
                Err(e) => {
                    // Oversized: its body is never read; say why, then close.
                    tracing::info!(error = %e, "request over the size limit; closing the connection");
                    self.wbuf.clear();
                    let _ = Response::Failure { code: DQLITE_PROTO, message: messages::REQUEST_TOO_LARGE }
                        .encode(&mut self.wbuf);
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Ok(None);
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r
    }

    fn reply(&mut self, resp: &Response<'_>) {
        self.wbuf.clear();
        if let Err(e) = resp.encode(&mut self.wbuf) {
            tracing::warn!(error = %e, "cannot encode a reply; sending a failure instead");
            self.wbuf.clear();
            let msg = format!("cannot encode the reply: {e}").replace('\0', " ");
            let _ = Response::Failure { code: SQLITE_ERROR, message: &msg }.encode(&mut self.wbuf);
        }
    }

    fn reply_failure(&mut self, e: &BackendError) {
        // A NUL cannot travel in a text field.
        let message = e.message.replace('\0', " ");
        self.reply(&Response::Failure { code: e.code, message: &message });
    }

    async fn handle(&mut self, frame: &[u8]) -> io::Result<()> {
        let header = match Header::decode(frame) {
            Ok(h) => h,
            Err(_) => return Ok(()), // cannot happen: read_request returned a whole message
        };
        let body = &frame[HEADER_LEN..];
        let outcome = match Request::decode(&header, body) {
            Ok(req) => {
                let sql = matches!(
                    req,
                    Request::Prepare { .. }
                        | Request::Exec { .. }
                        | Request::ExecSql { .. }
                        | Request::Query { .. }
                        | Request::QuerySql { .. }
                );
                let r = self.dispatch(req).await;
                if sql {
                    self.follower_errors(r)
                } else {
                    r
                }
            }
            Err(DecodeError::UnknownRequestType(t)) => {
                tracing::debug!(request_type = t, "unknown request type");
                Err(failure(DQLITE_PARSE, messages::UNRECOGNIZED_REQUEST))
            }
            Err(e) => {
                tracing::debug!(request_type = header.message_type, error = %e, "malformed request");
                Err(failure(DQLITE_PARSE, &e.to_string()))
            }
        };
        match outcome {
            Ok(Outcome::Replied) => self.flush().await,
            Ok(Outcome::Rows(columns)) => self.stream_rows(columns).await,
            Err(e) => {
                self.reply_failure(&e);
                self.flush().await
            }
        }
    }

    /// The open database, for a request that runs SQL: this node must lead, in the term the
    /// session was used in as leader (dqlite closes its leader connections on leadership loss).
    fn sql_db(&mut self, db: DbId) -> Result<&mut OpenDb<S::Session>, BackendError> {
        let term = self.shared.cluster.leader_term().ok_or_else(not_leader)?;
        if let Some(open) = &self.db {
            if open.term.is_some_and(|t| t != term) {
                tracing::info!("leadership changed since this database was used: closing it");
                self.db = None;
                return Err(no_database());
            }
        }
        let open = self.open_db(db)?;
        open.term = Some(term);
        Ok(open)
    }

    /// The open database, for a request that needs no leader (PREPARE, FINALIZE: dqlite 1.11
    /// serves them on followers).
    fn open_db(&mut self, db: DbId) -> Result<&mut OpenDb<S::Session>, BackendError> {
        match (&mut self.db, db) {
            (Some(open), DbId(0)) => Ok(open),
            _ => Err(no_database()),
        }
    }

    /// Before a query on a connection that asked for linearizable reads: wait for a ReadIndex
    /// round (the leader checks are `sql_db`'s, after it).
    async fn read_barrier(&mut self, db: DbId) -> Result<(), BackendError> {
        let wants = self.sql_db(db)?.read == ReadMode::Linearizable;
        if wants {
            self.shared.cluster.read_barrier().await?;
        }
        Ok(())
    }

    /// The staleness bound of the open database's connection if it was opened for follower
    /// reads.
    fn follower_mode(&self) -> Option<Duration> {
        match self.db.as_ref()?.read {
            ReadMode::Follower { max_staleness } => Some(max_staleness),
            _ => None,
        }
    }

    /// On a follower-read connection a "not leader" from the SQL layer (a write refused on a
    /// follower) is reported as the read-only refusal it is: the driver must not go looking
    /// for the leader with it. (SQL requests only: membership requests still need the leader.)
    fn follower_errors(&self, r: Result<Outcome, BackendError>) -> Result<Outcome, BackendError> {
        match r {
            Err(e) if self.follower_mode().is_some() && dqlite_wire::codes::is_not_leader(e.code) => {
                Err(failure(SQLITE_READONLY, messages::FOLLOWER_READ_ONLY))
            }
            other => other,
        }
    }

    /// Follower-read connections run only read-only statements: checks every statement of
    /// `sql` (preparing each and finalizing it again).
    async fn check_read_only_sql(&mut self, db: DbId, sql: &str) -> Result<(), BackendError> {
        let open = self.open_db(db)?;
        let mut rest = sql;
        while !super::db_backend::is_blank(rest) {
            let (stmt, info) = open.session.prepare(rest).await?;
            let _ = open.session.finalize(stmt).await;
            if !info.readonly {
                return Err(failure(SQLITE_READONLY, messages::FOLLOWER_READ_ONLY));
            }
            let offset = usize::try_from(info.tail_offset).unwrap_or(usize::MAX);
            match rest.get(offset..) {
                Some(tail) if offset > 0 => rest = tail,
                _ => break,
            }
        }
        Ok(())
    }

    /// The open database for a request on a follower-read connection: any node serves it;
    /// queries first wait until this node is fresh enough.
    async fn follower_db(
        &mut self,
        db: DbId,
        max_staleness: Duration,
        query: bool,
    ) -> Result<&mut OpenDb<S::Session>, BackendError> {
        self.open_db(db)?;
        if query {
            self.shared.cluster.follower_read(max_staleness).await?;
        }
        self.open_db(db)
    }

    fn require_leader(&self) -> Result<(), BackendError> {
        self.shared.cluster.leader_term().map(|_| ()).ok_or_else(not_leader)
    }

    async fn dispatch(&mut self, req: Request<'_>) -> Result<Outcome, BackendError> {
        let cluster = &self.shared.cluster;
        match req {
            Request::Leader => {
                let (id, address) = if cluster.is_voter() {
                    cluster.leader().unwrap_or((0, String::new()))
                } else {
                    (0, String::new())
                };
                match self.version {
                    ProtocolVersion::V1 => self.reply(&Response::Server { id: WireNodeId(id), address: &address }),
                    ProtocolVersion::Legacy => self.reply(&Response::ServerLegacy { address: &address }),
                }
            }
            Request::Client { .. } => {
                let ms = self.shared.config.heartbeat_timeout_ms;
                self.reply(&Response::Welcome { heartbeat_timeout_ms: ms });
            }
            Request::Heartbeat { .. } => return Err(failure(DQLITE_PARSE, messages::UNRECOGNIZED_REQUEST)),
            Request::Open { name, vfs, .. } if matches!(read_mode(vfs), ReadMode::Follower { .. }) => {
                // Served by any node; the session lives as long as the client connection.
                if self.db.is_some() {
                    return Err(failure(SQLITE_BUSY, messages::ALREADY_OPEN));
                }
                let session = self.shared.sql.open(name).await?;
                self.db = Some(OpenDb { session, term: None, stmts: Vec::new(), read: read_mode(vfs) });
                self.reply(&Response::Db { id: DbId(0) });
            }
            Request::Open { name, vfs, .. } => {
                // dqlite 1.11 opens on followers too; statements then fail with NOT_LEADER.
                let term = cluster.leader_term();
                if let Some(open) = &self.db {
                    let stale = matches!((open.term, term), (Some(a), Some(b)) if a != b);
                    if !stale {
                        return Err(failure(SQLITE_BUSY, messages::ALREADY_OPEN));
                    }
                    self.db = None;
                }
                let session = self.shared.sql.open(name).await?;
                self.db = Some(OpenDb { session, term, stmts: Vec::new(), read: read_mode(vfs) });
                self.reply(&Response::Db { id: DbId(0) });
            }
            Request::Prepare { db, sql, schema } => {
                let follower = self.follower_mode().is_some();
                let open = self.open_db(db)?;
                let (stmt, info) = open.session.prepare(sql).await?;
                if follower && !info.readonly {
                    let _ = open.session.finalize(stmt).await;
                    return Err(failure(SQLITE_READONLY, messages::FOLLOWER_READ_ONLY));
                }
                if schema == Schema::V0 && info.has_tail {
                    let _ = open.session.finalize(stmt).await;
                    return Err(failure(SQLITE_ERROR, messages::NONEMPTY_TAIL));
                }
                let id = match open.stmts.iter().position(Option::is_none) {
                    Some(free) => {
                        open.stmts[free] = Some(stmt);
                        free
                    }
                    None => {
                        open.stmts.push(Some(stmt));
                        open.stmts.len() - 1
                    }
                };
                let id = StmtId(u32::try_from(id).map_err(|_| failure(SQLITE_ERROR, "too many statements"))?);
                let tail_offset = (schema == Schema::V1).then_some(info.tail_offset);
                self.reply(&Response::Stmt { db, id, params: info.params, tail_offset });
            }
            Request::Exec { db, stmt, params, .. } => {
                let params = owned_params(&params)?;
                // (A follower-read connection prepared only read-only statements.)
                let open = match self.follower_mode() {
                    Some(bound) => self.follower_db(db, bound, false).await?,
                    None => self.sql_db(db)?,
                };
                let handle = lookup(open, stmt)?;
                let r = open.session.exec(Target::Stmt(handle), params).await?;
                self.reply_exec(r);
            }
            Request::ExecSql { db, sql, params, .. } => {
                let params = owned_params(&params)?;
                let open = match self.follower_mode() {
                    Some(bound) => {
                        self.check_read_only_sql(db, sql).await?;
                        self.follower_db(db, bound, false).await?
                    }
                    None => self.sql_db(db)?,
                };
                let r = open.session.exec(Target::Sql(sql), params).await?;
                self.reply_exec(r);
            }
            Request::Query { db, stmt, params, .. } => {
                let params = owned_params(&params)?;
                let open = match self.follower_mode() {
                    Some(bound) => self.follower_db(db, bound, true).await?,
                    None => {
                        self.read_barrier(db).await?;
                        self.sql_db(db)?
                    }
                };
                let handle = lookup(open, stmt)?;
                let columns = open.session.query(Target::Stmt(handle), params).await?;
                return Ok(Outcome::Rows(columns));
            }
            Request::QuerySql { db, sql, params, .. } => {
                let params = owned_params(&params)?;
                let open = match self.follower_mode() {
                    Some(bound) => {
                        self.check_read_only_sql(db, sql).await?;
                        self.follower_db(db, bound, true).await?
                    }
                    None => {
                        self.read_barrier(db).await?;
                        self.sql_db(db)?
                    }
                };
                let columns = open.session.query(Target::Sql(sql), params).await?;
                return Ok(Outcome::Rows(columns));
            }
            Request::Finalize { db, stmt } => {
                let open = self.open_db(db)?;
                let handle = lookup(open, stmt)?;
                open.stmts[stmt.0 as usize] = None;
                open.session.finalize(handle).await?;
                self.reply(&Response::Empty);
            }
            Request::Interrupt { .. } => {
                // No query is streaming between requests: nothing to interrupt.
                self.reply(&Response::Empty);
            }
            Request::Connect { id, .. } => {
                tracing::warn!(node = id.0, "dqlite CONNECT (C Raft peer) refused");
                self.closing = true;
                return Err(failure(DQLITE_PROTO, messages::CONNECT_UNSUPPORTED));
            }
            Request::Add { id, address } => {
                self.require_leader()?;
                cluster.add(id.0, address.to_owned()).await?;
                self.reply(&Response::Empty);
            }
            Request::Assign { id, role } => {
                self.require_leader()?;
                cluster.assign(id.0, role).await?;
                self.reply(&Response::Empty);
            }
            Request::Remove { id } => {
                self.require_leader()?;
                cluster.remove(id.0).await?;
                self.reply(&Response::Empty);
            }
            Request::Transfer { id } => {
                self.require_leader()?;
                cluster.transfer(id.0).await?;
                self.reply(&Response::Empty);
            }
            Request::Dump { name } => {
                let files = cluster.dump(name.to_owned()).await?;
                if files.is_empty() {
                    return Err(failure(DQLITE_NOTFOUND, messages::NO_SUCH_DATABASE));
                }
                let files: Vec<File<'_>> = files.iter().map(|f| File { name: &f.name, data: &f.data }).collect();
                self.reply(&Response::Files { files });
            }
            Request::Cluster { format } => {
                let members = cluster.members();
                let nodes = members
                    .iter()
                    .map(|m| NodeInfo {
                        id: WireNodeId(m.id),
                        address: &m.address,
                        role: (format == NodeInfoFormat::V1).then_some(m.role),
                    })
                    .collect();
                self.reply(&Response::Servers { format, nodes });
            }
            Request::Describe { format } => {
                if format != 0 {
                    return Err(failure(DQLITE_PARSE, messages::UNRECOGNIZED_FORMAT));
                }
                let (failure_domain, weight) = cluster.describe();
                self.reply(&Response::Metadata { failure_domain, weight });
            }
            Request::Weight { weight } => {
                cluster.set_weight(weight);
                self.reply(&Response::Empty);
            }
        }
        Ok(Outcome::Replied)
    }

    fn reply_exec(&mut self, r: super::ExecResult) {
        self.reply(&Response::ExecResult { last_insert_id: r.last_insert_id as u64, rows_affected: r.rows_affected });
    }

    /// Streams the running query's rows as ROWS messages (PART ... DONE), one batch in memory
    /// at a time. An INTERRUPT that arrives meanwhile ends the stream early with EMPTY.
    async fn stream_rows(&mut self, columns: Vec<String>) -> io::Result<()> {
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let budget = self.shared.config.rows_budget_bytes;
        loop {
            let Some(open) = self.db.as_mut() else { return Ok(()) };
            let batch = match open.session.next_rows(budget).await {
                Ok(b) => b,
                Err(e) => {
                    self.reply_failure(&e);
                    return self.flush().await;
                }
            };
            self.wbuf.clear();
            let encoded = encode_rows(&mut self.wbuf, &names, &batch.rows, batch.done);
            if let Err(e) = encoded {
                if let Some(open) = self.db.as_mut() {
                    open.session.close_query().await;
                }
                self.reply_failure(&failure(SQLITE_ERROR, &format!("cannot encode a row: {e}")));
                return self.flush().await;
            }
            self.flush().await?;
            if batch.done {
                return Ok(());
            }
            // Let the runtime's reactor see what the client sent meanwhile: on a connection
            // thread the SQLite work runs outside the runtime, so while rows stream nothing
            // else polls the socket's readiness (this costs one zero-timeout poll).
            tokio::task::yield_now().await;
            if self.interrupt_arrived()? {
                if let Some(open) = self.db.as_mut() {
                    open.session.close_query().await;
                }
                self.reply(&Response::Empty);
                return self.flush().await;
            }
        }
    }

    /// Reads what the client already sent, without waiting; true if it is an INTERRUPT (which
    /// is consumed). Any other request while rows stream breaks the protocol: the connection
    /// is closed after a FAILURE.
    fn interrupt_arrived(&mut self) -> io::Result<bool> {
        loop {
            self.rbuf.reserve(READ_CHUNK);
            match try_read_buf(&mut self.stream, &mut self.rbuf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed during a query")),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let len = match header::check(&self.rbuf, self.shared.config.max_request_bytes) {
            Ok(FrameStatus::Complete { len }) => len,
            Ok(FrameStatus::Incomplete { .. }) => return Ok(false),
            Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "oversized request during a query")),
        };
        let is_interrupt =
            Header::decode(&self.rbuf).map(|h| h.message_type == RequestType::Interrupt.code()).unwrap_or(false);
        if !is_interrupt {
            tracing::info!("request while rows were streaming; closing the connection");
            return Err(io::Error::new(io::ErrorKind::InvalidData, messages::REQUEST_WHILE_STREAMING));
        }
        self.rbuf.drain(..len);
        Ok(true)
    }
}

/// Reads what is already available without waiting (`WouldBlock` if nothing is), for any
/// stream: a TCP socket or an in-process duplex pipe. Polling with a no-op waker is fine here:
/// the next real `.await` on the stream registers the task's waker again.
fn try_read_buf<T: AsyncRead + Unpin>(stream: &mut T, buf: &mut Vec<u8>) -> io::Result<usize> {
    use std::task::{Context, Poll, Waker};
    let mut tmp = [0u8; 4096];
    let mut rb = tokio::io::ReadBuf::new(&mut tmp);
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(stream).poll_read(&mut cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(rb.filled());
            Ok(rb.filled().len())
        }
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Err(io::Error::new(io::ErrorKind::WouldBlock, "no data yet")),
    }
}

fn lookup<Sess: SqlSession>(open: &OpenDb<Sess>, stmt: StmtId) -> Result<Sess::Stmt, BackendError> {
    open.stmts.get(stmt.0 as usize).copied().flatten().ok_or_else(|| failure(SQLITE_NOTFOUND, messages::NO_STATEMENT))
}

/// Owned parameters; UNIXTIME is server→client only.
fn owned_params(params: &Params<'_>) -> Result<Vec<Value>, BackendError> {
    let values = params.to_values();
    if values.iter().any(|v| v.value_type() == ValueType::UnixTime) {
        return Err(failure(SQLITE_ERROR, messages::BIND_PARAMETERS));
    }
    Ok(values)
}

fn encode_rows(
    out: &mut Vec<u8>,
    names: &[&str],
    rows: &[Vec<Value>],
    done: bool,
) -> Result<(), dqlite_wire::EncodeError> {
    let mut w = RowsWriter::begin(out, names, usize::MAX)?;
    let mut refs = Vec::with_capacity(names.len());
    for row in rows {
        refs.clear();
        refs.extend(row.iter().map(Value::as_ref));
        w.push_row(&refs)?;
    }
    w.finish(if done { RowsEnd::Done } else { RowsEnd::Part })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_modes_from_the_vfs_field() {
        assert_eq!(read_mode("volatile"), ReadMode::Leader);
        assert_eq!(read_mode(""), ReadMode::Leader);
        assert_eq!(read_mode("volatile?read=linearizable"), ReadMode::Linearizable);
        assert_eq!(
            read_mode("volatile?read=follower&max_staleness=250"),
            ReadMode::Follower { max_staleness: Duration::from_millis(250) }
        );
        // Either order; a missing or unreadable bound is the default.
        assert_eq!(
            read_mode("volatile?max_staleness=7&read=follower"),
            ReadMode::Follower { max_staleness: Duration::from_millis(7) }
        );
        assert_eq!(read_mode("volatile?read=follower"), ReadMode::Follower { max_staleness: DEFAULT_MAX_STALENESS });
        assert_eq!(
            read_mode("volatile?read=follower&max_staleness=soon"),
            ReadMode::Follower { max_staleness: DEFAULT_MAX_STALENESS }
        );
        assert_eq!(read_mode("volatile?read=sometimes&max_staleness=5"), ReadMode::Leader);
    }
}
