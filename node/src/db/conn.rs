//! The SQL connection API used by the protocol server and the embedded driver.
//!
//! ```text
//!  DbHandle (Clone + Send + Sync) ── open("name") ──► Connection ── Command ──► worker thread
//!                                                      (async or blocking)      owns one SQLite
//!                                                      ◄── oneshot reply ──     connection
//! ```
//!
//! * [`DbHandle::open`] is dqlite's OPEN: it creates the database if needed (names: 1 to 200
//!   bytes of `[A-Za-z0-9._-]`, not starting with `.`) and starts one thread that owns one
//!   SQLite connection (sqlx-sqlite's `worker.rs` pattern), so no tokio worker ever blocks.
//! * Requests go through a bounded queue ([`COMMAND_QUEUE_BOUND`]); each has a oneshot reply.
//!   Every method exists as `async fn` and as `blocking_*` for non-async callers.
//! * [`DbHandle::open_inline`] → [`InlineConnection`]: the same requests served synchronously on
//!   the caller's thread, by the same worker code (the protocol server's connection threads run
//!   their SQLite connection this way: no hand-off between threads).
//! * [`Connection::prepare`] → [`Prepared`] (statement id, parameter count, tail offset);
//!   [`Connection::exec`] / [`Connection::exec_sql`] → [`ExecResult`] (last insert id, rows
//!   affected of the last statement); [`Connection::query`] / [`Connection::query_sql`] →
//!   [`Rows`]: column names, then batches of at most [`QUERY_BATCH_ROWS`] rows through a
//!   channel of [`QUERY_BATCHES_IN_FLIGHT`] batches (the worker waits while it is full:
//!   backpressure); [`Connection::finalize`]; [`Connection::interrupt`] (works while a query
//!   runs). `exec_sql` runs every statement of a multi-statement string in turn (dqlite 1.11
//!   stopped after the first); remaining parameters carry over to the next statement.
//! * Errors are [`DbError::Sql`] with SQLite's extended code and message. A write on a node
//!   that is not the leader fails with `SQLITE_IOERR_NOT_LEADER` (10250); a commit whose
//!   leadership was lost with `SQLITE_IOERR_LEADERSHIP_LOST` (10506); a commit Raft did not
//!   confirm in time with [`super::SQLITE_IOERR_COMMIT_TIMEOUT`]. SQL that would break
//!   replication (see [`refusal`]) fails with `SQLITE_AUTH` and a message naming the reason.
//! * Value types follow dqlite: a column declared `DATETIME`/`DATE`/`TIMESTAMP` yields
//!   `UnixTime` (integer storage) or `Iso8601` (text; NULL as `""`), `BOOLEAN` yields `Boolean`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use dqlite_wire::Value;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::batch::{self, BatchStatement};
use super::{lock, DbError, DbShared, NodeShared, SQLITE_IOERR_LEADERSHIP_LOST, SQLITE_IOERR_NOT_LEADER};
use crate::raft::Term;
use crate::vfs::VfsConnection;

/// Commands queued to one connection's worker at most.
pub const COMMAND_QUEUE_BOUND: usize = 16;
/// Rows per batch of a query result.
pub const QUERY_BATCH_ROWS: usize = 256;
/// Batches a query may have produced ahead of its reader.
pub const QUERY_BATCHES_IN_FLIGHT: usize = 2;

/// A cloneable, thread-safe handle for opening connections to this node's databases.
#[derive(Clone)]
pub struct DbHandle {
    node: Arc<NodeShared>,
}

impl std::fmt::Debug for DbHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbHandle").field("dir", &self.node.dir).finish()
    }
}

/// A statement prepared on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Its id on this connection (small integers from 0).
    pub id: u32,
    /// Its parameter count.
    pub params: u64,
    /// Byte offset in the SQL where the unprepared remainder starts.
    pub tail_offset: u64,
    /// `sqlite3_stmt_readonly`: the statement makes no direct change to the database.
    pub readonly: bool,
}

/// The outcome of an EXEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecResult {
    /// `sqlite3_last_insert_rowid`.
    pub last_insert_id: i64,
    /// `sqlite3_changes`.
    pub rows_affected: u64,
}

/// A query's result: column names, then rows in batches.
#[derive(Debug)]
pub struct Rows {
    /// Column names (`sqlite3_column_name`).
    pub columns: Vec<String>,
    batches: tmpsc::Receiver<Result<Vec<Vec<Value>>, DbError>>,
}

impl Rows {
    /// The next batch, `None` after the last.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Vec<Value>>, DbError>> {
        self.batches.recv().await
    }

    /// The next batch, blocking.
    pub fn blocking_next_batch(&mut self) -> Option<Result<Vec<Vec<Value>>, DbError>> {
        self.batches.blocking_recv()
    }

    /// Every remaining row, blocking.
    pub fn blocking_collect(mut self) -> Result<Vec<Vec<Value>>, DbError> {
        let mut all = Vec::new();
        while let Some(b) = self.blocking_next_batch() {
            all.extend(b?);
        }
        Ok(all)
    }
}

type Reply<T> = oneshot::Sender<Result<T, DbError>>;

enum Command {
    Prepare(String, Reply<Prepared>),
    Exec(u32, Vec<Value>, Reply<ExecResult>),
    Query(u32, Vec<Value>, Reply<Rows>),
    Finalize(u32, Reply<()>),
    ExecSql(String, Vec<Value>, Reply<ExecResult>),
    QuerySql(String, Vec<Value>, Reply<Rows>),
}

/// One SQLite connection owned by a worker thread.
pub struct Connection {
    tx: mpsc::SyncSender<Command>,
    interrupt: rusqlite::InterruptHandle,
    db: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("db", &self.db).finish()
    }
}

/// Why SQL was refused: `None` if the action is allowed.
pub fn refusal(action: &AuthAction<'_>) -> Option<String> {
    match action {
        AuthAction::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            let always = [
                "writable_schema",
                "wal_checkpoint",
                "temp_store_directory",
                "data_store_directory",
                "key",
                "rekey",
                "hexkey",
                "hexrekey",
                "textkey",
                "textrekey",
            ];
            let when_set = [
                "journal_mode",
                "synchronous",
                "locking_mode",
                "page_size",
                "mmap_size",
                "wal_autocheckpoint",
                "journal_size_limit",
                "query_only",
                "busy_timeout",
                "cache_size",
                "cache_spill",
                "temp_store",
                "schema_version",
                "soft_heap_limit",
                "hard_heap_limit",
                "threads",
            ];
            if always.contains(&name.as_str()) {
                Some(format!("PRAGMA {name} is refused: it would break replication or escape the data directory"))
            } else if pragma_value.is_some() && when_set.contains(&name.as_str()) {
                Some(format!("changing PRAGMA {name} is refused: replication depends on the node's setting"))
            } else {
                None
            }
        }
        AuthAction::Attach { filename } if !filename.is_empty() => {
            Some("ATTACH (and VACUUM INTO) is refused: only the replicated database is reachable".into())
        }
        AuthAction::Detach { database_name } if *database_name != "vacuum_db" => Some("DETACH is refused".into()),
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Some("load_extension is refused".into())
        }
        _ => None,
    }
}

struct Worker<'c> {
    vc: &'c VfsConnection,
    db: Arc<DbShared>,
    node: Arc<NodeShared>,
    stmts: HashMap<u32, rusqlite::Statement<'c>>,
    next_id: u32,
    refused: Arc<std::sync::Mutex<Option<String>>>,
    internal: Arc<AtomicBool>,
    query_only: bool,
    /// The leader term in which this connection's open write transaction took the write lock.
    write_term: Option<Term>,
    /// The open write transaction was rolled back because leadership was lost: the next
    /// statement is told so (once).
    lost: bool,
    /// What the authorizer saw during the last prepare (group commit eligibility).
    elig: Arc<std::sync::Mutex<batch::Eligibility>>,
    /// Prepared statements that may run in a group commit, with their SQL.
    batchable: HashMap<u32, String>,
    /// Prepared statements that call `changes()`.
    uses_changes: std::collections::HashSet<u32>,
    /// `changes()` this connection owes its client: its last write ran in a group commit on
    /// another connection.
    changes_owed: Option<u64>,
    /// The temp table [`Worker::pay_changes`] uses exists.
    changes_table: bool,
    /// The query whose rows are being read ([`Worker::next_rows`]).
    query: Option<RunningQuery<'c>>,
}

/// A query between its start and its last row.
struct RunningQuery<'c> {
    stmt: rusqlite::Statement<'c>,
    /// The prepared statement's id (it goes back there after the query); `None` for QUERY_SQL.
    id: Option<u32>,
    /// Declared column types (value types follow them).
    decl: Vec<Option<String>>,
}

/// What a query runs.
#[derive(Clone, Copy)]
enum QueryTarget<'a> {
    /// A prepared statement.
    Stmt(u32),
    /// The first statement of SQL text.
    Sql(&'a str),
}

/// What kind of request a connection serves (what [`Worker::refuse`] lets through).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// PREPARE.
    Prepare,
    /// A statement that runs: EXEC, QUERY and their SQL forms.
    Run,
    /// FINALIZE.
    Finalize,
}

fn no_statement() -> DbError {
    DbError::sql(libsqlite3_sys::SQLITE_NOTFOUND, "no statement with the given id")
}

/// One row's values, typed by the declared column types.
fn row_values(row: &rusqlite::Row<'_>, decl: &[Option<String>]) -> rusqlite::Result<Vec<Value>> {
    let mut vals = Vec::with_capacity(decl.len());
    for (i, d) in decl.iter().enumerate() {
        vals.push(from_sql(row.get_ref(i)?, d.as_deref()));
    }
    Ok(vals)
}

/// How often an idle connection holding the write lock checks that its node still leads.
const LEADERSHIP_POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub(crate) fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Integer(i) | Value::UnixTime(i) => V::Integer(*i),
        Value::Float(f) => V::Real(*f),
        Value::Text(s) | Value::Iso8601(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
        Value::Null => V::Null,
        Value::Boolean(b) => V::Integer(i64::from(*b)),
    }
}

fn from_sql(v: ValueRef<'_>, decltype: Option<&str>) -> Value {
    let dt = decltype.map(str::to_ascii_uppercase);
    match dt.as_deref() {
        Some("DATETIME" | "DATE" | "TIMESTAMP") => match v {
            ValueRef::Integer(i) => return Value::UnixTime(i),
            ValueRef::Text(t) => return Value::Iso8601(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Null => return Value::Iso8601(String::new()),
            _ => {}
        },
        Some("BOOLEAN") => match v {
            ValueRef::Integer(i) => return Value::Boolean(i != 0),
            ValueRef::Null => return Value::Boolean(false),
            _ => {}
        },
        _ => {}
    }
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl<'c> Worker<'c> {
    fn internal<T>(&self, f: impl FnOnce() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        self.internal.store(true, Ordering::SeqCst);
        let r = f();
        self.internal.store(false, Ordering::SeqCst);
        r
    }

    /// An open write transaction of a node that no longer leads (in the term it began in) holds
    /// the write lock that the follower apply needs: roll it back now, and tell the client at
    /// its next statement.
    fn check_leadership(&mut self) {
        if !self.vc.holds_write_lock() {
            self.write_term = None;
            return;
        }
        let now = self.node.leader_term();
        if now.is_some() && (self.write_term.is_none() || self.write_term == now) {
            return;
        }
        let c = self.vc.conn();
        match self.internal(|| c.execute_batch("ROLLBACK")) {
            Ok(()) => tracing::debug!(db = self.db.name, "leadership lost: open write transaction rolled back"),
            Err(e) => tracing::warn!(db = self.db.name, error = %e, "leadership lost: rollback failed"),
        }
        self.vc.end_statement();
        self.write_term = None;
        self.lost = true;
    }

    /// Records the leader term of a write transaction that just took the write lock.
    fn note_write_term(&mut self) {
        if !self.vc.holds_write_lock() {
            self.write_term = None;
        } else if self.write_term.is_none() {
            self.write_term = self.node.leader_term();
            if self.write_term.is_none() {
                self.check_leadership();
            }
        }
    }

    /// After a rollback for lost leadership, the next statement fails with LEADERSHIP_LOST; once a
    /// snapshot install replaced this database's files, every request but finalize fails with a
    /// clear error (the client reconnects).
    fn refuse(&mut self, op: Op) -> Result<(), DbError> {
        let current = lock(&self.node.dbs).get(&self.db.name).is_some_and(|d| Arc::ptr_eq(d, &self.db));
        if !current {
            if op == Op::Finalize {
                return Ok(());
            }
            return Err(DbError::sql(
                libsqlite3_sys::SQLITE_ABORT,
                "the database was replaced by a snapshot install; reopen the connection",
            ));
        }
        if self.lost && op == Op::Run {
            self.lost = false;
            return Err(DbError::sql(
                SQLITE_IOERR_LEADERSHIP_LOST,
                "leadership lost: the open transaction was rolled back; reconnect to the leader",
            ));
        }
        Ok(())
    }

    /// Serves one request: an abandoned query is closed, the leadership check runs before it,
    /// the refusals apply, and the write term is noted after it (once no query runs).
    fn request<T>(&mut self, op: Op, f: impl FnOnce(&mut Self) -> Result<T, DbError>) -> Result<T, DbError> {
        self.close_query();
        self.check_leadership();
        let r = self.refuse(op).and_then(|()| f(self));
        if self.query.is_none() {
            self.note_write_term();
        }
        r
    }

    /// While the connection waits for its next request: the periodic leadership check of a
    /// connection holding the write lock ([`LEADERSHIP_POLL`]).
    fn idle(&mut self) {
        if self.query.is_none() {
            self.check_leadership();
        }
    }

    /// How long the connection may wait for its next request before [`Worker::idle`] must run.
    fn idle_poll(&self) -> Option<std::time::Duration> {
        self.vc.holds_write_lock().then_some(LEADERSHIP_POLL)
    }

    /// Followers' connections are read-only (`query_only`), leaders' read-write.
    fn sync_role(&mut self) {
        let leader = self.node.is_leader();
        if leader == self.query_only {
            let c = self.vc.conn();
            let q = !leader;
            if self.internal(|| c.execute_batch(if q { "PRAGMA query_only=1" } else { "PRAGMA query_only=0" })).is_ok()
            {
                self.query_only = q;
            }
        }
    }

    /// Turns a rusqlite error into ours, with the replication layer's reason where it has one.
    fn error(&self, e: rusqlite::Error) -> DbError {
        self.vc.end_statement();
        if let Some(f) = self.db.take_failure(self.vc.id()) {
            return DbError::sql(f.code, f.message);
        }
        if let Some(reason) = lock(&self.refused).take() {
            return DbError::sql(libsqlite3_sys::SQLITE_AUTH, reason);
        }
        let err = DbError::from(e);
        if err.code() & 0xff == libsqlite3_sys::SQLITE_READONLY && self.query_only {
            return DbError::sql(SQLITE_IOERR_NOT_LEADER, "not leader");
        }
        err
    }

    fn prepare_one(&mut self, sql: &str) -> Result<Option<(rusqlite::Statement<'c>, usize)>, DbError> {
        self.sync_role();
        lock(&self.refused).take();
        let c: &'c rusqlite::Connection = self.vc.conn();
        // Find where the first statement ends (rusqlite prepares exactly one).
        let trimmed_start = sql.len() - sql.trim_start().len();
        if sql[trimmed_start..].is_empty() {
            return Ok(None);
        }
        let end = first_statement_end(sql);
        {
            let mut e = lock(&self.elig);
            e.alone = false;
            e.uses_changes = false;
        }
        let stmt = match c.prepare(&sql[..end]) {
            Ok(s) => s,
            // A new leader that has not yet applied everything committed before its term may
            // lack the schema the statement names ("no such table" for a table an entry it has
            // not applied yet created): wait until it is ready, then prepare again.
            Err(_) if self.node.leader_catching_up() => {
                self.node.ensure_write_ready(self.node.config().commit_timeout)?;
                c.prepare(&sql[..end]).map_err(|e| self.error(e))?
            }
            Err(e) => return Err(self.error(e)),
        };
        if !stmt.readonly() {
            self.node.ensure_write_ready(self.node.config().commit_timeout)?;
        }
        Ok(Some((stmt, end)))
    }

    fn bind(&self, stmt: &mut rusqlite::Statement<'c>, params: &[Value]) -> Result<usize, DbError> {
        let n = stmt.parameter_count().min(params.len());
        stmt.clear_bindings();
        for (i, v) in params[..n].iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, to_sql(v)).map_err(|e| self.error(e))?;
        }
        Ok(n)
    }

    fn run_exec(&self, stmt: &mut rusqlite::Statement<'c>) -> Result<ExecResult, DbError> {
        let c = self.vc.conn();
        let r = stmt.raw_execute();
        self.vc.end_statement();
        match r {
            Ok(_) | Err(rusqlite::Error::ExecuteReturnedResults) => {}
            Err(e) => return Err(self.error(e)),
        }
        Ok(ExecResult { last_insert_id: c.last_insert_rowid(), rows_affected: c.changes() })
    }

    /// PREPARE.
    fn prepare_req(&mut self, sql: &str) -> Result<Prepared, DbError> {
        self.request(Op::Prepare, |w| {
            let (stmt, end) =
                w.prepare_one(sql)?.ok_or_else(|| DbError::sql(libsqlite3_sys::SQLITE_OK, "empty statement"))?;
            let id = w.next_id;
            w.next_id += 1;
            let params = stmt.parameter_count() as u64;
            let readonly = stmt.readonly();
            let text = &sql[..end];
            let eligible =
                !lock(&w.elig).alone && !stmt.readonly() && stmt.column_count() == 0 && batch::dml_keyword(text);
            if eligible {
                w.batchable.insert(id, text.to_string());
            } else {
                w.batchable.remove(&id);
            }
            if lock(&w.elig).uses_changes {
                w.uses_changes.insert(id);
            } else {
                w.uses_changes.remove(&id);
            }
            w.stmts.insert(id, stmt);
            Ok(Prepared { id, params, tail_offset: end as u64, readonly })
        })
    }

    /// EXEC of a prepared statement.
    fn exec_req(&mut self, id: u32, params: Vec<Value>) -> Result<ExecResult, DbError> {
        self.request(Op::Run, |w| {
            let mut stmt = w.stmts.remove(&id).ok_or_else(no_statement)?;
            w.sync_role();
            let r = if !stmt.readonly() { w.node.ensure_write_ready(w.node.config().commit_timeout) } else { Ok(()) };
            let r = match r {
                Err(e) => Err(e),
                Ok(()) => match w.batch_sql(id) {
                    Some(sql) => {
                        let db = w.db.clone();
                        let alone = db.try_alone();
                        let r = match alone {
                            None => w.run_batched(sql, params),
                            Some(_) => {
                                let r = w.bind(&mut stmt, &params).and_then(|_| w.run_exec(&mut stmt));
                                w.ran_itself(&stmt);
                                r
                            }
                        };
                        drop(alone);
                        r
                    }
                    None => {
                        if w.uses_changes.contains(&id) {
                            w.pay_changes();
                        }
                        let r = w.bind(&mut stmt, &params).and_then(|_| w.run_exec(&mut stmt));
                        w.ran_itself(&stmt);
                        r
                    }
                },
            };
            w.stmts.insert(id, stmt);
            r
        })
    }

    /// EXEC_SQL.
    fn exec_sql_req(&mut self, sql: &str, params: Vec<Value>) -> Result<ExecResult, DbError> {
        self.request(Op::Run, |w| w.exec_sql(sql, &params))
    }

    /// FINALIZE.
    fn finalize_req(&mut self, id: u32) -> Result<(), DbError> {
        self.request(Op::Finalize, |w| {
            w.batchable.remove(&id);
            w.uses_changes.remove(&id);
            w.stmts.remove(&id).map(drop).ok_or_else(no_statement)
        })
    }

    /// QUERY / QUERY_SQL: binds and checks the statement (nothing runs yet) and returns its
    /// column names; its rows then come from [`Worker::next_rows`].
    fn query_req(&mut self, target: QueryTarget<'_>, params: Vec<Value>) -> Result<Vec<String>, DbError> {
        self.request(Op::Run, |w| {
            let (mut stmt, id) = match target {
                QueryTarget::Stmt(id) => {
                    let stmt = w.stmts.remove(&id).ok_or_else(no_statement)?;
                    w.sync_role();
                    if w.uses_changes.contains(&id) {
                        w.pay_changes();
                    }
                    (stmt, Some(id))
                }
                QueryTarget::Sql(sql) => match w.prepare_one(sql)? {
                    Some((stmt, _)) => {
                        if lock(&w.elig).uses_changes {
                            w.pay_changes();
                        }
                        w.ran_itself(&stmt);
                        (stmt, None)
                    }
                    None => return Err(DbError::sql(libsqlite3_sys::SQLITE_OK, "empty statement")),
                },
            };
            // dqlite rejects a QUERY of a statement without result columns before stepping it
            // (the driver then sends EXEC): nothing may run here.
            let checked = w.bind(&mut stmt, &params).and_then(|_| {
                if stmt.column_count() == 0 {
                    let f = dqlite_wire::failure::NOT_AN_ERROR;
                    return Err(DbError::sql(f.code as std::os::raw::c_int, f.message));
                }
                Ok(())
            });
            if let Err(e) = checked {
                if let Some(id) = id {
                    w.stmts.insert(id, stmt);
                }
                return Err(e);
            }
            let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
            let decl = stmt.columns().iter().map(|c| c.decl_type().map(str::to_string)).collect();
            w.query = Some(RunningQuery { stmt, id, decl });
            Ok(columns)
        })
    }

    /// The next rows of the running query: at most `max_rows`, stopping once their encoding
    /// reaches `max_bytes` (at least one row if any remain); `true` once the query is over.
    /// Nothing runs ahead: the statement is stepped only here (the memory bound).
    fn next_rows(&mut self, max_rows: usize, max_bytes: usize) -> Result<(Vec<Vec<Value>>, bool), DbError> {
        let Some(mut q) = self.query.take() else { return Ok((Vec::new(), true)) };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut rows = q.stmt.raw_query();
        let end = loop {
            match rows.next() {
                Ok(Some(row)) => match row_values(row, &q.decl) {
                    Ok(vals) => {
                        bytes += 8 + vals.iter().map(|v| v.as_ref().encoded_len()).sum::<usize>();
                        batch.push(vals);
                        if batch.len() >= max_rows || bytes >= max_bytes {
                            // More rows may follow: leave the statement where it is. Dropping
                            // `rows` would reset it (rusqlite's `Rows` resets on drop);
                            // forgetting it leaks nothing (it holds only a reference to the
                            // statement), and the next `raw_query` steps on from this row.
                            std::mem::forget(rows);
                            self.query = Some(q);
                            return Ok((batch, false));
                        }
                    }
                    Err(e) => break Err(DbError::from(e)),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(self.error(e)),
            }
        };
        drop(rows);
        self.finish_query(q);
        end.map(|()| (batch, true))
    }

    /// Abandons the running query, if any (resets its statement).
    fn close_query(&mut self) {
        if let Some(mut q) = self.query.take() {
            drop(q.stmt.raw_query());
            self.finish_query(q);
        }
    }

    /// After a query's last row or its abandonment: a prepared statement goes back to its id.
    fn finish_query(&mut self, q: RunningQuery<'c>) {
        self.vc.end_statement();
        if let Some(id) = q.id {
            self.stmts.insert(id, q.stmt);
        }
        self.note_write_term();
    }

    /// A threaded [`Connection`]'s query: the column names through `reply`, then batches of
    /// [`QUERY_BATCH_ROWS`] rows through a channel of [`QUERY_BATCHES_IN_FLIGHT`] (this thread
    /// waits while it is full); a dropped receiver abandons the query.
    fn stream_query(&mut self, target: QueryTarget<'_>, params: Vec<Value>, reply: Reply<Rows>) {
        let columns = match self.query_req(target, params) {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (tx, rx) = tmpsc::channel(QUERY_BATCHES_IN_FLIGHT);
        if reply.send(Ok(Rows { columns, batches: rx })).is_err() {
            self.close_query();
            return;
        }
        loop {
            match self.next_rows(QUERY_BATCH_ROWS, usize::MAX) {
                Ok((batch, done)) => {
                    if !batch.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
                        self.close_query();
                        return;
                    }
                    if done {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    }

    /// A threaded [`Connection`]'s request.
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Prepare(sql, reply) => {
                let _ = reply.send(self.prepare_req(&sql));
            }
            Command::Exec(id, params, reply) => {
                let _ = reply.send(self.exec_req(id, params));
            }
            Command::Query(id, params, reply) => self.stream_query(QueryTarget::Stmt(id), params, reply),
            Command::Finalize(id, reply) => {
                let _ = reply.send(self.finalize_req(id));
            }
            Command::ExecSql(sql, params, reply) => {
                let _ = reply.send(self.exec_sql_req(&sql, params));
            }
            Command::QuerySql(sql, params, reply) => self.stream_query(QueryTarget::Sql(&sql), params, reply),
        }
    }

    /// The SQL of prepared statement `id` if it runs in a group commit now: it is eligible, this
    /// connection never set a PRAGMA, is in autocommit mode, and its node leads.
    fn batch_sql(&self, id: u32) -> Option<String> {
        if !self.node.config().group_commit
            || lock(&self.elig).tainted
            || self.query_only
            || !self.vc.conn().is_autocommit()
        {
            return None;
        }
        self.batchable.get(&id).cloned()
    }

    /// Runs one autocommit statement in the database's next group commit (`batch.rs`), and
    /// gives this connection the `last_insert_rowid()` it would have had running it itself.
    fn run_batched(&mut self, sql: String, params: Vec<Value>) -> Result<ExecResult, DbError> {
        let c = self.vc.conn();
        let before = c.last_insert_rowid();
        let out = self.db.submit_batched(BatchStatement { sql, params, last_insert_rowid: before });
        if out.last_insert_rowid != before {
            self.vc.set_last_insert_rowid(out.last_insert_rowid);
        }
        if out.changes.is_some() {
            self.changes_owed = out.changes;
        }
        out.result
    }

    /// After a statement ran on this connection: a write sets `changes()` itself.
    fn ran_itself(&mut self, stmt: &rusqlite::Statement<'c>) {
        if !stmt.readonly() {
            self.changes_owed = None;
        }
    }

    /// Before a statement that calls `changes()`: if this connection's last write ran in a group
    /// commit, make `changes()` return that write's count (an INSERT of that many rows into a
    /// temp table of this connection; `last_insert_rowid()` is kept).
    fn pay_changes(&mut self) {
        let Some(n) = self.changes_owed.take() else { return };
        let c = self.vc.conn();
        let rowid = c.last_insert_rowid();
        let make = !self.changes_table;
        let r = self.internal(|| {
            if make {
                c.execute_batch("CREATE TEMP TABLE IF NOT EXISTS _dqlite_changes(x)")?;
            }
            c.execute_batch("DELETE FROM temp._dqlite_changes")?;
            c.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                 INSERT INTO temp._dqlite_changes(x) SELECT i FROM n",
                [n as i64],
            )
        });
        self.vc.end_statement();
        match r {
            Ok(_) => self.changes_table = true,
            Err(e) => tracing::debug!(db = self.db.name, error = %e, "cannot report a batched statement's changes()"),
        }
        self.vc.set_last_insert_rowid(rowid);
    }

    fn exec_sql(&mut self, sql: &str, params: &[Value]) -> Result<ExecResult, DbError> {
        let mut rest = sql;
        let mut params = params;
        let mut last = ExecResult::default();
        loop {
            let Some((mut stmt, end)) = self.prepare_one(rest)? else { return Ok(last) };
            if lock(&self.elig).uses_changes {
                self.pay_changes();
            }
            // A string holding one batchable statement runs in the group commit, as a
            // prepared one does.
            let text = &rest[..end];
            let only = std::ptr::eq(rest, sql) && rest[end..].trim().is_empty();
            if only
                && self.node.config().group_commit
                && !lock(&self.elig).alone
                && !lock(&self.elig).tainted
                && !self.query_only
                && self.vc.conn().is_autocommit()
                && !stmt.readonly()
                && stmt.column_count() == 0
                && batch::dml_keyword(text)
            {
                let db = self.db.clone();
                if let Some(alone) = db.try_alone() {
                    let r = self.bind(&mut stmt, params).and_then(|_| self.run_exec(&mut stmt));
                    self.ran_itself(&stmt);
                    drop(alone);
                    return r;
                }
                let n = stmt.parameter_count().min(params.len());
                let text = text.to_string();
                drop(stmt);
                return self.run_batched(text, params[..n].to_vec());
            }
            let used = self.bind(&mut stmt, params)?;
            params = &params[used..];
            let r = self.run_exec(&mut stmt);
            self.ran_itself(&stmt);
            last = r?;
            rest = &rest[end..];
            if rest.trim().is_empty() || end == 0 {
                return Ok(last);
            }
        }
    }
}

/// The byte offset just past the first complete statement of `sql`.
fn first_statement_end(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b';' && crate::vfs::is_complete_sql(&sql[..=i]) {
            return i + 1;
        }
    }
    sql.len()
}

impl DbHandle {
    pub(crate) fn new(node: Arc<NodeShared>) -> Self {
        DbHandle { node }
    }

    /// Runs `stmts` on database `name` as one group commit, in this order, exactly as
    /// concurrent autocommit writes are batched (`batch.rs`): one transaction, one savepoint
    /// each, one Raft entry. Each statement must be batchable (a single INSERT/UPDATE/DELETE
    /// on the main database; the caller's responsibility). For tests and benchmarks.
    pub fn run_batch(&self, name: &str, stmts: Vec<BatchStatement>) -> Result<Vec<batch::BatchOutcome>, DbError> {
        let db = self.node.db(name)?;
        db.run_batch_now(stmts)
    }

    /// Statements submitted to the group commit of database `name` and not yet answered (those
    /// queued and those in the running batch). For tests.
    pub fn batch_pending(&self, name: &str) -> Result<usize, DbError> {
        Ok(self.node.db(name)?.batch_pending())
    }

    /// Opens a connection to the database `name` (dqlite's OPEN), creating it if needed.
    pub fn open(&self, name: &str) -> Result<Connection, DbError> {
        let (vc, parts) = self.open_parts(name)?;
        let interrupt = vc.conn().get_interrupt_handle();
        let (tx, rx) = mpsc::sync_channel::<Command>(COMMAND_QUEUE_BOUND);
        std::thread::Builder::new()
            .name(format!("dqlite-conn-{name}"))
            .spawn(move || {
                let mut w = Worker::new(&vc, parts);
                loop {
                    let cmd = match w.idle_poll() {
                        Some(poll) => match rx.recv_timeout(poll) {
                            Ok(cmd) => cmd,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                w.idle();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                        None => match rx.recv() {
                            Ok(cmd) => cmd,
                            Err(_) => break,
                        },
                    };
                    w.handle(cmd);
                }
                drop(w);
                drop(vc);
            })
            .map_err(|e| DbError::Io { path: self.node.dir.clone(), source: e })?;
        Ok(Connection { tx, interrupt, db: name.to_string() })
    }

    /// Opens a connection to the database `name` as [`open`](Self::open) does, served on the
    /// calling thread: see [`InlineConnection`].
    pub fn open_inline(&self, name: &str) -> Result<InlineConnection, DbError> {
        let (vc, parts) = self.open_parts(name)?;
        let cell = WorkerCell::new(vc, |vc| Worker::new(vc, parts));
        Ok(InlineConnection { cell, db: name.to_string() })
    }

    /// The database, a new SQLite connection to it with the authorizer installed, and what a
    /// [`Worker`] over it shares with that authorizer.
    fn open_parts(&self, name: &str) -> Result<(VfsConnection, WorkerParts), DbError> {
        let db = self.node.db(name)?;
        let vc = self.node.open_conn(&db, false, self.node.config().busy_timeout)?;
        let refused = Arc::new(std::sync::Mutex::new(None::<String>));
        let internal = Arc::new(AtomicBool::new(false));
        let elig = Arc::new(std::sync::Mutex::new(batch::Eligibility::default()));
        {
            let refused = refused.clone();
            let internal = internal.clone();
            let elig = elig.clone();
            vc.conn()
                .authorizer(Some(move |ctx: AuthContext<'_>| {
                    if internal.load(Ordering::SeqCst) {
                        return Authorization::Allow;
                    }
                    lock(&elig).note(&ctx);
                    match refusal(&ctx.action) {
                        None => Authorization::Allow,
                        Some(reason) => {
                            *lock(&refused) = Some(reason);
                            Authorization::Deny
                        }
                    }
                }))
                .map_err(DbError::from)?;
        }
        Ok((vc, WorkerParts { db, node: self.node.clone(), refused, internal, elig }))
    }
}

/// What a [`Worker`] needs besides its SQLite connection.
struct WorkerParts {
    db: Arc<DbShared>,
    node: Arc<NodeShared>,
    refused: Arc<std::sync::Mutex<Option<String>>>,
    internal: Arc<AtomicBool>,
    elig: Arc<std::sync::Mutex<batch::Eligibility>>,
}

impl<'c> Worker<'c> {
    fn new(vc: &'c VfsConnection, p: WorkerParts) -> Self {
        let mut w = Worker {
            vc,
            db: p.db,
            node: p.node,
            stmts: HashMap::new(),
            next_id: 0,
            refused: p.refused,
            internal: p.internal,
            query_only: false,
            write_term: None,
            lost: false,
            elig: p.elig,
            batchable: HashMap::new(),
            uses_changes: std::collections::HashSet::new(),
            changes_owed: None,
            changes_table: false,
            query: None,
        };
        w.sync_role();
        w
    }
}

self_cell::self_cell!(
    /// A [`Worker`] together with the SQLite connection its statements borrow.
    struct WorkerCell {
        owner: VfsConnection,
        #[covariant]
        dependent: Worker,
    }
);

/// One SQLite connection served on its caller's thread: the requests of [`Connection`], run
/// synchronously by the same [`Worker`] code, without a worker thread, channel or oneshot (the
/// protocol server's connection threads, `server::inline`).
///
/// A commit blocks the calling thread until Raft answers (as on a [`Connection`]'s thread): call
/// these methods from a plain thread, never from inside a tokio runtime.
///
/// Queries: [`query`](Self::query) / [`query_sql`](Self::query_sql) return the column names;
/// [`next_rows`](Self::next_rows) steps the statement for the next rows only (nothing runs ahead);
/// [`close_query`](Self::close_query) abandons it (so does any other request).
pub struct InlineConnection {
    cell: WorkerCell,
    db: String,
}

impl std::fmt::Debug for InlineConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineConnection").field("db", &self.db).finish()
    }
}

impl InlineConnection {
    /// The database name.
    pub fn db(&self) -> &str {
        &self.db
    }
    /// Prepares the first statement of `sql`.
    pub fn prepare(&mut self, sql: &str) -> Result<Prepared, DbError> {
        self.cell.with_dependent_mut(|_, w| w.prepare_req(sql))
    }
    /// Runs a prepared statement.
    pub fn exec(&mut self, id: u32, params: Vec<Value>) -> Result<ExecResult, DbError> {
        self.cell.with_dependent_mut(|_, w| w.exec_req(id, params))
    }
    /// Runs every statement of `sql` in turn.
    pub fn exec_sql(&mut self, sql: &str, params: Vec<Value>) -> Result<ExecResult, DbError> {
        self.cell.with_dependent_mut(|_, w| w.exec_sql_req(sql, params))
    }
    /// Starts a prepared query: its column names (rows: [`next_rows`](Self::next_rows)).
    pub fn query(&mut self, id: u32, params: Vec<Value>) -> Result<Vec<String>, DbError> {
        self.cell.with_dependent_mut(|_, w| w.query_req(QueryTarget::Stmt(id), params))
    }
    /// Starts the first statement of `sql` as a query: its column names.
    pub fn query_sql(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<String>, DbError> {
        self.cell.with_dependent_mut(|_, w| w.query_req(QueryTarget::Sql(sql), params))
    }
    /// The running query's next rows, stopping once their encoding reaches about
    /// `budget_bytes` (at least one row if any remain); `true` once the query is over.
    pub fn next_rows(&mut self, budget_bytes: usize) -> Result<(Vec<Vec<Value>>, bool), DbError> {
        self.cell.with_dependent_mut(|_, w| w.next_rows(usize::MAX, budget_bytes))
    }
    /// Abandons the running query (resets its statement).
    pub fn close_query(&mut self) {
        self.cell.with_dependent_mut(|_, w| w.close_query())
    }
    /// Drops a prepared statement.
    pub fn finalize(&mut self, id: u32) -> Result<(), DbError> {
        self.cell.with_dependent_mut(|_, w| w.finalize_req(id))
    }
    /// `Some(period)` while the connection holds the write lock: the caller, waiting for the
    /// next request, must call [`idle`](Self::idle) at least that often (a node that lost
    /// leadership then rolls the transaction back and releases the lock).
    pub fn idle_poll(&self) -> Option<std::time::Duration> {
        self.cell.borrow_dependent().idle_poll()
    }
    /// The periodic check of an idle connection (see [`idle_poll`](Self::idle_poll)).
    pub fn idle(&mut self) {
        self.cell.with_dependent_mut(|_, w| w.idle())
    }
}

macro_rules! request {
    ($self:ident, $variant:ident $(, $arg:expr)*) => {{
        let (tx, rx) = oneshot::channel();
        $self.tx.send(Command::$variant($($arg,)* tx)).map_err(|_| DbError::Closed)?;
        rx
    }};
}

impl Connection {
    /// The database name.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// Prepares the first statement of `sql`.
    pub async fn prepare(&self, sql: &str) -> Result<Prepared, DbError> {
        request!(self, Prepare, sql.to_string()).await.map_err(|_| DbError::Closed)?
    }
    /// Runs a prepared statement.
    pub async fn exec(&self, id: u32, params: Vec<Value>) -> Result<ExecResult, DbError> {
        request!(self, Exec, id, params).await.map_err(|_| DbError::Closed)?
    }
    /// Runs a prepared query.
    pub async fn query(&self, id: u32, params: Vec<Value>) -> Result<Rows, DbError> {
        request!(self, Query, id, params).await.map_err(|_| DbError::Closed)?
    }
    /// Drops a prepared statement.
    pub async fn finalize(&self, id: u32) -> Result<(), DbError> {
        request!(self, Finalize, id).await.map_err(|_| DbError::Closed)?
    }
    /// Runs every statement of `sql` in turn.
    pub async fn exec_sql(&self, sql: &str, params: Vec<Value>) -> Result<ExecResult, DbError> {
        request!(self, ExecSql, sql.to_string(), params).await.map_err(|_| DbError::Closed)?
    }
    /// Runs the first statement of `sql` as a query.
    pub async fn query_sql(&self, sql: &str, params: Vec<Value>) -> Result<Rows, DbError> {
        request!(self, QuerySql, sql.to_string(), params).await.map_err(|_| DbError::Closed)?
    }

    /// Blocking [`prepare`](Self::prepare).
    pub fn blocking_prepare(&self, sql: &str) -> Result<Prepared, DbError> {
        request!(self, Prepare, sql.to_string()).blocking_recv().map_err(|_| DbError::Closed)?
    }
    /// Blocking [`exec`](Self::exec).
    pub fn blocking_exec(&self, id: u32, params: Vec<Value>) -> Result<ExecResult, DbError> {
        request!(self, Exec, id, params).blocking_recv().map_err(|_| DbError::Closed)?
    }
    /// Blocking [`query`](Self::query).
    pub fn blocking_query(&self, id: u32, params: Vec<Value>) -> Result<Rows, DbError> {
        request!(self, Query, id, params).blocking_recv().map_err(|_| DbError::Closed)?
    }
    /// Blocking [`finalize`](Self::finalize).
    pub fn blocking_finalize(&self, id: u32) -> Result<(), DbError> {
        request!(self, Finalize, id).blocking_recv().map_err(|_| DbError::Closed)?
    }
    /// Blocking [`exec_sql`](Self::exec_sql).
    pub fn blocking_exec_sql(&self, sql: &str, params: Vec<Value>) -> Result<ExecResult, DbError> {
        request!(self, ExecSql, sql.to_string(), params).blocking_recv().map_err(|_| DbError::Closed)?
    }
    /// Blocking [`query_sql`](Self::query_sql).
    pub fn blocking_query_sql(&self, sql: &str, params: Vec<Value>) -> Result<Rows, DbError> {
        request!(self, QuerySql, sql.to_string(), params).blocking_recv().map_err(|_| DbError::Closed)?
    }

    /// Interrupts the statement running now (`sqlite3_interrupt`).
    pub fn interrupt(&self) {
        self.interrupt.interrupt();
    }
}
