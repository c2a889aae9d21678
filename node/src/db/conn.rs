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
    fn refuse_if_lost(&mut self, cmd: Command) -> Option<Command> {
        let current = lock(&self.node.dbs).get(&self.db.name).is_some_and(|d| Arc::ptr_eq(d, &self.db));
        if !current {
            let err = || {
                DbError::sql(
                    libsqlite3_sys::SQLITE_ABORT,
                    "the database was replaced by a snapshot install; reopen the connection",
                )
            };
            match cmd {
                Command::Prepare(_, reply) => {
                    let _ = reply.send(Err(err()));
                }
                Command::Exec(_, _, reply) | Command::ExecSql(_, _, reply) => {
                    let _ = reply.send(Err(err()));
                }
                Command::Query(_, _, reply) | Command::QuerySql(_, _, reply) => {
                    let _ = reply.send(Err(err()));
                }
                other => return Some(other),
            }
            return None;
        }
        if !self.lost {
            return Some(cmd);
        }
        let err = || {
            DbError::sql(
                SQLITE_IOERR_LEADERSHIP_LOST,
                "leadership lost: the open transaction was rolled back; reconnect to the leader",
            )
        };
        match cmd {
            Command::Exec(_, _, reply) | Command::ExecSql(_, _, reply) => {
                self.lost = false;
                let _ = reply.send(Err(err()));
                None
            }
            Command::Query(_, _, reply) | Command::QuerySql(_, _, reply) => {
                self.lost = false;
                let _ = reply.send(Err(err()));
                None
            }
            other => Some(other),
        }
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
        let stmt = c.prepare(&sql[..end]);
        let stmt = stmt.map_err(|e| self.error(e))?;
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

    fn run_query(&self, stmt: &mut rusqlite::Statement<'c>, reply: Reply<Rows>) {
        // dqlite rejects a QUERY of a statement without result columns before stepping it (the
        // driver then sends EXEC): nothing may run here.
        if stmt.column_count() == 0 {
            let f = dqlite_wire::failure::NOT_AN_ERROR;
            let _ = reply.send(Err(DbError::sql(f.code as std::os::raw::c_int, f.message)));
            return;
        }
        let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
        let decl: Vec<Option<String>> = stmt.columns().iter().map(|c| c.decl_type().map(str::to_string)).collect();
        let (tx, rx) = tmpsc::channel(QUERY_BATCHES_IN_FLIGHT);
        if reply.send(Ok(Rows { columns, batches: rx })).is_err() {
            return;
        }
        let n = decl.len();
        let mut rows = stmt.raw_query();
        let mut batch = Vec::with_capacity(QUERY_BATCH_ROWS);
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let mut vals = Vec::with_capacity(n);
                    for (i, d) in decl.iter().enumerate() {
                        match row.get_ref(i) {
                            Ok(v) => vals.push(from_sql(v, d.as_deref())),
                            Err(e) => {
                                let _ = tx.blocking_send(Err(DbError::from(e)));
                                return;
                            }
                        }
                    }
                    batch.push(vals);
                    if batch.len() == QUERY_BATCH_ROWS
                        && tx
                            .blocking_send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(QUERY_BATCH_ROWS))))
                            .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => {
                    if !batch.is_empty() {
                        let _ = tx.blocking_send(Ok(batch));
                    }
                    break;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(self.error(e)));
                    break;
                }
            }
        }
        drop(rows);
        self.vc.end_statement();
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Prepare(sql, reply) => {
                let r = self.prepare_one(&sql).and_then(|p| {
                    let (stmt, end) = p.ok_or_else(|| DbError::sql(libsqlite3_sys::SQLITE_OK, "empty statement"))?;
                    let id = self.next_id;
                    self.next_id += 1;
                    let params = stmt.parameter_count() as u64;
                    let readonly = stmt.readonly();
                    let text = &sql[..end];
                    let eligible = !lock(&self.elig).alone
                        && !stmt.readonly()
                        && stmt.column_count() == 0
                        && batch::dml_keyword(text);
                    if eligible {
                        self.batchable.insert(id, text.to_string());
                    } else {
                        self.batchable.remove(&id);
                    }
                    if lock(&self.elig).uses_changes {
                        self.uses_changes.insert(id);
                    } else {
                        self.uses_changes.remove(&id);
                    }
                    self.stmts.insert(id, stmt);
                    Ok(Prepared { id, params, tail_offset: end as u64, readonly })
                });
                let _ = reply.send(r);
            }
            Command::Exec(id, params, reply) => {
                let r = match self.stmts.remove(&id) {
                    None => Err(DbError::sql(libsqlite3_sys::SQLITE_NOTFOUND, "no statement with the given id")),
                    Some(mut stmt) => {
                        self.sync_role();
                        let r = if !stmt.readonly() {
                            self.node.ensure_write_ready(self.node.config().commit_timeout)
                        } else {
                            Ok(())
                        };
                        let r = match r {
                            Err(e) => Err(e),
                            Ok(()) => match self.batch_sql(id) {
                                Some(sql) => {
                                    let db = self.db.clone();
                                    let alone = db.try_alone();
                                    let r = match alone {
                                        None => self.run_batched(sql, params),
                                        Some(_) => {
                                            let r =
                                                self.bind(&mut stmt, &params).and_then(|_| self.run_exec(&mut stmt));
                                            self.ran_itself(&stmt);
                                            r
                                        }
                                    };
                                    drop(alone);
                                    r
                                }
                                None => {
                                    if self.uses_changes.contains(&id) {
                                        self.pay_changes();
                                    }
                                    let r = self.bind(&mut stmt, &params).and_then(|_| self.run_exec(&mut stmt));
                                    self.ran_itself(&stmt);
                                    r
                                }
                            },
                        };
                        self.stmts.insert(id, stmt);
                        r
                    }
                };
                let _ = reply.send(r);
            }
            Command::Query(id, params, reply) => match self.stmts.remove(&id) {
                None => {
                    let _ = reply
                        .send(Err(DbError::sql(libsqlite3_sys::SQLITE_NOTFOUND, "no statement with the given id")));
                }
                Some(mut stmt) => {
                    self.sync_role();
                    if self.uses_changes.contains(&id) {
                        self.pay_changes();
                    }
                    match self.bind(&mut stmt, &params) {
                        Ok(_) => self.run_query(&mut stmt, reply),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    self.stmts.insert(id, stmt);
                }
            },
            Command::Finalize(id, reply) => {
                self.batchable.remove(&id);
                self.uses_changes.remove(&id);
                let r = match self.stmts.remove(&id) {
                    Some(_) => Ok(()),
                    None => Err(DbError::sql(libsqlite3_sys::SQLITE_NOTFOUND, "no statement with the given id")),
                };
                let _ = reply.send(r);
            }
            Command::ExecSql(sql, params, reply) => {
                let _ = reply.send(self.exec_sql(&sql, &params));
            }
            Command::QuerySql(sql, params, reply) => match self.prepare_one(&sql) {
                Ok(Some((mut stmt, _))) => {
                    if lock(&self.elig).uses_changes {
                        self.pay_changes();
                    }
                    match self.bind(&mut stmt, &params) {
                        Ok(_) => self.run_query(&mut stmt, reply),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                    self.ran_itself(&stmt);
                }
                Ok(None) => {
                    let _ = reply.send(Err(DbError::sql(libsqlite3_sys::SQLITE_OK, "empty statement")));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
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

    /// Opens a connection to the database `name` (dqlite's OPEN), creating it if needed.
    pub fn open(&self, name: &str) -> Result<Connection, DbError> {
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
        let interrupt = vc.conn().get_interrupt_handle();
        let (tx, rx) = mpsc::sync_channel::<Command>(COMMAND_QUEUE_BOUND);
        let node = self.node.clone();
        std::thread::Builder::new()
            .name(format!("dqlite-conn-{name}"))
            .spawn(move || {
                let mut w = Worker {
                    vc: &vc,
                    db,
                    node,
                    stmts: HashMap::new(),
                    next_id: 0,
                    refused,
                    internal,
                    query_only: false,
                    write_term: None,
                    lost: false,
                    elig,
                    batchable: HashMap::new(),
                    uses_changes: std::collections::HashSet::new(),
                    changes_owed: None,
                    changes_table: false,
                };
                w.sync_role();
                loop {
                    let cmd = if w.vc.holds_write_lock() {
                        match rx.recv_timeout(LEADERSHIP_POLL) {
                            Ok(cmd) => cmd,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                w.check_leadership();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(cmd) => cmd,
                            Err(_) => break,
                        }
                    };
                    w.check_leadership();
                    if let Some(cmd) = w.refuse_if_lost(cmd) {
                        w.handle(cmd);
                    }
                    w.note_write_term();
                }
                drop(w);
                drop(vc);
            })
            .map_err(|e| DbError::Io { path: self.node.dir.clone(), source: e })?;
        Ok(Connection { tx, interrupt, db: name.to_string() })
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
