//! A session: an OPENed database on the leader, with typed request/response primitives.
//!
//! One request is in flight at a time. `outstanding` records a request whose response has not
//! been fully consumed (a cancelled future, or a result stream dropped before DONE); the next
//! request first calls [`Session::recover`], which reads the missing response — for a query,
//! after sending INTERRUPT, every remaining ROWS batch up to the EMPTY reply (PROTOCOL.md §5.2).

use dqlite_wire::failure;
use dqlite_wire::value::Value as WireValue;
use dqlite_wire::{DbId, Params, Request, Response, RowsEnd, Schema, StmtId};
use sqlx_core::Error;

use super::stream::{Frame, WireError, WireStream};
use crate::error::DqliteError;
use crate::options::NodeAddress;

/// A FAILURE response.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub code: u64,
    pub message: String,
}

impl Failure {
    /// The failure as the caller sees it: an [`Error::Database`] holding a [`DqliteError`].
    pub fn into_error(self) -> Error {
        Error::Database(Box::new(DqliteError::new(self.code, self.message)))
    }

    /// QUERY of a statement without result columns: dqlite rejects it (before stepping it)
    /// with SQLITE_ERROR and SQLite's "not an error" message.
    pub fn is_no_columns(&self) -> bool {
        failure::NOT_AN_ERROR.matches(self.code, &self.message)
    }

    /// The prepared statement id is unknown to the server (the request did not run).
    pub fn is_unknown_statement(&self) -> bool {
        failure::NO_STATEMENT.matches(self.code, &self.message)
    }

    /// The server did not run the request because this connection no longer has a database
    /// on a leader: not leader, or (after leadership loss) "no database opened".
    pub fn is_not_leader(&self) -> bool {
        dqlite_wire::codes::is_not_leader(self.code) || failure::NO_DATABASE_OPENED.matches(self.code, &self.message)
    }

    /// dqlite >= 1.18: QUERY_SQL of several statements, refused before running anything.
    pub fn is_nonempty_tail(&self) -> bool {
        failure::NONEMPTY_STATEMENT_TAIL.matches(self.code, &self.message)
    }
}

/// A decoded ROWS message with owned values.
#[derive(Debug)]
pub(crate) struct Batch {
    pub columns: Vec<String>,
    pub rows: Vec<Box<[WireValue]>>,
    pub done: bool,
}

/// What a request targets: a prepared statement or SQL text.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Stmt(StmtId),
    Sql(&'a str),
}

/// Whether a statement is run for its effect (EXEC) or its rows (QUERY).
#[derive(Debug, Clone, Copy)]
enum Run {
    Exec,
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outstanding {
    None,
    /// One response message is owed.
    Single,
    /// A query is streaming: ROWS messages up to DONE (or a FAILURE) are owed.
    Rows,
    /// INTERRUPT was sent for an abandoned query: its remaining ROWS (or a FAILURE) and then
    /// INTERRUPT's EMPTY are owed. (Never sent twice: a second EMPTY would answer the next
    /// request.)
    Interrupting,
}

/// What [`Session::recover`] found an abandoned request had done.
#[derive(Debug)]
pub(crate) enum Recovered {
    /// Nothing was owed.
    Nothing,
    /// The owed single reply: success (with the statement id if it was a STMT reply, so the
    /// caller can finalize a statement nobody will use) or a FAILURE.
    Reply(Result<Option<StmtId>, Failure>),
    /// An abandoned result set was interrupted and drained.
    Drained,
}

/// Result of a request: `Ok(Ok(_))` success, `Ok(Err(failure))` a FAILURE reply (the server
/// answered; the connection is fine), `Err(_)` the connection failed.
pub(crate) type Reply<T> = Result<Result<T, Failure>, WireError>;

#[derive(Debug)]
pub(crate) struct Session {
    stream: WireStream,
    db: DbId,
    outstanding: Outstanding,
    /// Whether the server understands schema-1 (params32) tuples; probed on first need.
    params32: Option<bool>,
}

fn unexpected(what: &str, resp: &Response<'_>) -> Error {
    Error::Protocol(format!("unexpected dqlite response to {what}: {:?}", resp.response_type()))
}

fn schema_for(params: usize) -> Schema {
    if params > Schema::V0.max_params() {
        Schema::V1
    } else {
        Schema::V0
    }
}

impl Session {
    /// Wrap a stream connected to the leader (after CLIENT) and OPEN `database` (`vfs`: see
    /// `DqliteConnectOptions::open_vfs`).
    pub async fn open(mut stream: WireStream, database: &str, vfs: &str) -> Result<Result<Self, Failure>, Error> {
        stream.send(&Request::Open { name: database, flags: 0, vfs }).await.map_err(WireError::into_inner)?;
        let frame = stream.recv().await?;
        match frame.decode(stream.ctx())? {
            Response::Db { id } => Ok(Ok(Session { stream, db: id, outstanding: Outstanding::None, params32: None })),
            Response::Failure { code, message } => Ok(Err(Failure { code, message: message.to_owned() })),
            other => Err(unexpected("OPEN", &other)),
        }
    }

    #[cfg(test)]
    pub fn frames_received(&self) -> u64 {
        self.stream.frames_received()
    }

    /// Socket probes that asked the kernel so far.
    #[cfg(test)]
    pub fn probes(&self) -> u64 {
        self.stream.probes()
    }

    #[cfg(test)]
    pub fn set_probe_trust(&mut self, trust: std::time::Duration) {
        self.stream.set_probe_trust(trust);
    }

    pub fn set_request_timeout(&mut self, timeout: std::time::Duration) {
        self.stream.set_request_timeout(timeout);
    }

    /// Time since the server last answered on this session.
    pub fn since_last_response(&self) -> std::time::Duration {
        self.stream.since_last_received()
    }

    pub fn leader(&self) -> &NodeAddress {
        self.stream.peer()
    }

    /// Whether this session runs over an in-process pipe to a node of this process.
    pub fn is_in_process(&self) -> bool {
        self.stream.is_in_process()
    }

    /// Is there nothing owed and the socket still open? (Non-blocking; always asks the kernel.)
    #[cfg(test)]
    pub fn is_idle_alive(&mut self) -> bool {
        self.outstanding == Outstanding::None && self.stream.is_idle_alive()
    }

    /// [`is_idle_alive`](Self::is_idle_alive), trusting a probe made less than
    /// [`PROBE_TRUST`](super::stream::PROBE_TRUST) ago.
    pub fn is_idle_alive_recent(&mut self) -> bool {
        self.outstanding == Outstanding::None && self.stream.is_idle_alive_recent()
    }

    pub fn needs_recovery(&self) -> bool {
        self.outstanding != Outstanding::None
    }

    /// Consume whatever an abandoned request still owes, so the next request starts clean, and
    /// say what the server did with it. Cancel-safe: if this future is dropped, what is still
    /// owed stays recorded and the next call continues.
    pub async fn recover(&mut self) -> Result<Recovered, Error> {
        if self.stream.is_write_incomplete() {
            return Err(Error::Protocol("connection unusable: a request was cancelled while being written".into()));
        }
        match self.outstanding {
            Outstanding::None => Ok(Recovered::Nothing),
            Outstanding::Single => {
                let frame = self.stream.recv().await?;
                self.outstanding = Outstanding::None;
                let reply = match frame.decode(self.stream.ctx())? {
                    Response::Failure { code, message } => {
                        tracing::debug!(code, message, "failure of an abandoned request");
                        Err(Failure { code, message: message.to_owned() })
                    }
                    Response::Stmt { id, .. } => Ok(Some(id)),
                    _ => Ok(None),
                };
                Ok(Recovered::Reply(reply))
            }
            Outstanding::Rows | Outstanding::Interrupting => {
                if self.outstanding == Outstanding::Rows {
                    tracing::debug!("interrupting an abandoned result set and draining it");
                    self.stream.send(&Request::Interrupt { db: self.db }).await.map_err(WireError::into_inner)?;
                    self.outstanding = Outstanding::Interrupting;
                }
                let mut discarded = 0usize;
                loop {
                    let frame = self.stream.recv().await?;
                    match frame.decode(self.stream.ctx())? {
                        Response::Empty => break,
                        Response::Rows(_) | Response::Failure { .. } => discarded += 1,
                        other => return Err(unexpected("INTERRUPT", &other)),
                    }
                }
                tracing::debug!(discarded, "result set drained");
                self.outstanding = Outstanding::None;
                Ok(Recovered::Drained)
            }
        }
    }

    /// True if the last request was cancelled while being written (the session is unusable).
    pub fn is_write_incomplete(&self) -> bool {
        self.stream.is_write_incomplete()
    }

    /// Send a request that has exactly one response message, and read it.
    async fn single(&mut self, req: &Request<'_>) -> Result<Frame, WireError> {
        debug_assert_eq!(self.outstanding, Outstanding::None);
        self.stream.send(req).await?;
        self.outstanding = Outstanding::Single;
        let frame = self.stream.recv().await.map_err(WireError::Lost)?;
        self.outstanding = Outstanding::None;
        Ok(frame)
    }

    fn failure(resp: &Response<'_>) -> Option<Failure> {
        match resp {
            Response::Failure { code, message } => Some(Failure { code: *code, message: (*message).to_owned() }),
            _ => None,
        }
    }

    /// PREPARE: `(statement id, parameter count)`.
    pub async fn prepare(&mut self, sql: &str) -> Reply<(StmtId, usize)> {
        let frame = self.single(&Request::Prepare { db: self.db, sql, schema: Schema::V0 }).await?;
        let resp = frame.decode(self.stream.ctx()).map_err(WireError::Lost)?;
        if let Some(f) = Self::failure(&resp) {
            return Ok(Err(f));
        }
        match resp {
            Response::Stmt { id, params, .. } => Ok(Ok((id, params as usize))),
            other => Err(WireError::Lost(unexpected("PREPARE", &other))),
        }
    }

    /// FINALIZE a prepared statement.
    pub async fn finalize(&mut self, stmt: StmtId) -> Reply<()> {
        let frame = self.single(&Request::Finalize { db: self.db, stmt }).await?;
        let resp = frame.decode(self.stream.ctx()).map_err(WireError::Lost)?;
        if let Some(f) = Self::failure(&resp) {
            return Ok(Err(f));
        }
        match resp {
            Response::Empty => Ok(Ok(())),
            other => Err(WireError::Lost(unexpected("FINALIZE", &other))),
        }
    }

    /// Does the server understand schema-1 (params32) tuples (dqlite >= 1.15.1)?
    ///
    /// It must be known *before* sending one: dqlite 1.11 ignores the schema byte of
    /// EXEC/QUERY and reads a params32 tuple as a params tuple whose count is the low byte of
    /// the u32 — 256 parameters run the statement with none (all NULL), without an error.
    /// The probe is side-effect free: `PREPARE` in schema 1 of `SELECT 1`. A server with
    /// schema 1 answers STMT schema 1 (with the tail offset); an older one answers STMT
    /// schema 0 or a FAILURE. The probe statement is finalized.
    async fn supports_params32(&mut self) -> Result<bool, WireError> {
        if let Some(known) = self.params32 {
            return Ok(known);
        }
        let frame = self.single(&Request::Prepare { db: self.db, sql: "SELECT 1", schema: Schema::V1 }).await?;
        let resp = frame.decode(self.stream.ctx()).map_err(WireError::Lost)?;
        let (supported, stmt) = match resp {
            Response::Stmt { id, tail_offset, .. } => (tail_offset.is_some(), Some(id)),
            Response::Failure { .. } => (false, None),
            other => return Err(WireError::Lost(unexpected("PREPARE", &other))),
        };
        if let Some(id) = stmt {
            if let Ok(Err(f)) = self.finalize(id).await.map_err(|e| e.into_inner()) {
                tracing::debug!(code = f.code, message = %f.message, "FINALIZE of the probe failed");
            }
        }
        tracing::debug!(supported, "probed schema-1 (params32) support");
        self.params32 = Some(supported);
        Ok(supported)
    }

    /// A FAILURE standing in for a params32 request the server would misread.
    async fn check_param_count(&mut self, n: usize) -> Result<Option<Failure>, WireError> {
        if n <= Schema::V0.max_params() || self.supports_params32().await? {
            return Ok(None);
        }
        Ok(Some(Failure {
            code: dqlite_wire::codes::DQLITE_PARSE,
            message: format!(
                "server does not support more than 255 parameters ({n} given; params32 \
                 tuples need dqlite >= 1.15.1)"
            ),
        }))
    }

    /// The EXEC, EXEC_SQL, QUERY or QUERY_SQL request running `target` with `params`, in the
    /// smallest params schema that holds them.
    fn statement_request<'r>(&self, run: Run, target: Target<'r>, params: &'r [WireValue]) -> Request<'r> {
        let db = self.db;
        let schema = schema_for(params.len());
        let params = Params::from_values(params);
        match (run, target) {
            (Run::Exec, Target::Stmt(stmt)) => Request::Exec { db, stmt, params, schema },
            (Run::Exec, Target::Sql(sql)) => Request::ExecSql { db, sql, params, schema },
            (Run::Query, Target::Stmt(stmt)) => Request::Query { db, stmt, params, schema },
            (Run::Query, Target::Sql(sql)) => Request::QuerySql { db, sql, params, schema },
        }
    }

    /// EXEC / EXEC_SQL: `(rows affected, last insert rowid)`.
    pub async fn exec(&mut self, target: Target<'_>, params: &[WireValue]) -> Reply<(u64, i64)> {
        if let Some(f) = self.check_param_count(params.len()).await? {
            return Ok(Err(f));
        }
        let req = self.statement_request(Run::Exec, target, params);
        let frame = self.single(&req).await?;
        let resp = frame.decode(self.stream.ctx()).map_err(WireError::Lost)?;
        if let Some(f) = Self::failure(&resp) {
            return Ok(Err(f));
        }
        match resp {
            Response::ExecResult { last_insert_id, rows_affected } => Ok(Ok((rows_affected, last_insert_id as i64))),
            other => Err(WireError::Lost(unexpected("EXEC", &other))),
        }
    }

    /// QUERY / QUERY_SQL: send and read the first ROWS batch. If it is not the last one the
    /// session stays in the streaming state until [`next_batch`](Self::next_batch) sees DONE.
    pub async fn query(&mut self, target: Target<'_>, params: &[WireValue]) -> Reply<Batch> {
        debug_assert_eq!(self.outstanding, Outstanding::None);
        if let Some(f) = self.check_param_count(params.len()).await? {
            return Ok(Err(f));
        }
        let req = self.statement_request(Run::Query, target, params);
        self.stream.send(&req).await?;
        self.outstanding = Outstanding::Rows;
        self.read_batch().await.map_err(WireError::Lost)
    }

    /// Read the next ROWS batch of a streaming query. Only call while streaming.
    pub async fn next_batch(&mut self) -> Result<Result<Batch, Failure>, Error> {
        if self.outstanding != Outstanding::Rows {
            return Err(Error::Protocol("no result set is streaming".into()));
        }
        self.read_batch().await
    }

    async fn read_batch(&mut self) -> Result<Result<Batch, Failure>, Error> {
        let frame = self.stream.recv().await?;
        let resp = frame.decode(self.stream.ctx())?;
        if let Some(f) = Self::failure(&resp) {
            self.outstanding = Outstanding::None;
            return Ok(Err(f));
        }
        match resp {
            Response::Rows(batch) => {
                let done = batch.end == RowsEnd::Done;
                if done {
                    self.outstanding = Outstanding::None;
                }
                let n = batch.columns.len();
                let mut rows = Vec::with_capacity(batch.rows.len());
                for row in batch.rows {
                    if row.len() != n {
                        return Err(Error::Protocol(format!("row with {} values for {n} columns", row.len())));
                    }
                    rows.push(row.iter().map(|v| v.to_owned()).collect());
                }
                Ok(Ok(Batch { columns: batch.columns.iter().map(|c| (*c).to_owned()).collect(), rows, done }))
            }
            other => Err(unexpected("QUERY", &other)),
        }
    }

    /// Close the socket.
    pub async fn close(mut self) {
        self.stream.shutdown().await;
    }
}
