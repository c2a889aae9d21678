//! The [`SqlBackend`] of a real node: the SQLite layer's [`DbHandle`] / [`Connection`].
//!
//! Each client connection that sends OPEN gets one [`InlineConnection`], served on the client
//! connection's own thread (`server::inline`): every call is an [`offload`] job that runs the
//! SQLite work synchronously on that thread, outside its tokio runtime. A query's rows are
//! stepped only when the server asks for the next ROWS message (about `budget_bytes`).

use std::cell::RefCell;
use std::rc::Rc;

use dqlite_wire::Value;

use super::backend::{BackendError, ExecResult, PrepareInfo, RowBatch, SqlBackend, SqlSession, Target};
use super::inline::offload;
use crate::db::conn::{DbHandle, InlineConnection};
use crate::db::DbError;

/// The FAILURE a db-layer error becomes: SQL errors keep SQLite's extended code and message.
pub fn db_failure(e: DbError) -> BackendError {
    match e {
        DbError::Sql { code, message } => BackendError::new(code as u32 as u64, message),
        DbError::InvalidName(name) => {
            BackendError::new(dqlite_wire::codes::SQLITE_ERROR, format!("invalid database name {name:?}"))
        }
        other => BackendError::new(dqlite_wire::codes::SQLITE_IOERR, other.to_string()),
    }
}

fn empty_statement() -> BackendError {
    let f = dqlite_wire::failure::EMPTY_STATEMENT;
    BackendError::new(f.code, f.message)
}

/// Whether `sql` holds only whitespace, comments and semicolons.
pub(crate) fn is_blank(sql: &str) -> bool {
    let mut s = sql.trim_start();
    loop {
        if s.is_empty() {
            return true;
        }
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map(|i| &rest[i + 1..]).unwrap_or("").trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map(|i| &rest[i + 2..]).unwrap_or("").trim_start();
        } else if let Some(rest) = s.strip_prefix(';') {
            s = rest.trim_start();
        } else {
            return false;
        }
    }
}

/// The SQL backend over the node's databases.
#[derive(Debug, Clone)]
pub struct DbBackend {
    handle: DbHandle,
}

impl DbBackend {
    /// A backend opening connections through `handle`.
    pub fn new(handle: DbHandle) -> Self {
        DbBackend { handle }
    }
}

/// One client connection's database.
#[derive(Debug)]
pub struct DbSession {
    /// Shared with the offload job running a call (never two at once).
    conn: Rc<RefCell<InlineConnection>>,
}

impl SqlBackend for DbBackend {
    type Session = DbSession;

    async fn open(&self, name: &str) -> Result<DbSession, BackendError> {
        let handle = self.handle.clone();
        let name = name.to_owned();
        let conn = offload(move || handle.open_inline(&name)).await.map_err(db_failure)?;
        Ok(DbSession { conn: Rc::new(RefCell::new(conn)) })
    }
}

impl DbSession {
    /// Runs `f` on the connection as an offload job.
    async fn call<R: 'static>(&self, f: impl FnOnce(&mut InlineConnection) -> R + 'static) -> R {
        let conn = self.conn.clone();
        offload(move || f(&mut conn.borrow_mut())).await
    }
}

fn exec_result(r: crate::db::conn::ExecResult) -> ExecResult {
    ExecResult { last_insert_id: r.last_insert_id, rows_affected: r.rows_affected }
}

impl SqlSession for DbSession {
    type Stmt = u32;

    async fn prepare(&mut self, sql: &str) -> Result<(u32, PrepareInfo), BackendError> {
        if is_blank(sql) {
            return Err(empty_statement());
        }
        let text = sql.to_owned();
        let p = self.call(move |c| c.prepare(&text)).await.map_err(db_failure)?;
        let tail = sql.get(p.tail_offset as usize..).unwrap_or("");
        Ok((
            p.id,
            PrepareInfo {
                params: p.params,
                tail_offset: p.tail_offset,
                has_tail: !is_blank(tail),
                readonly: p.readonly,
            },
        ))
    }

    async fn exec(&mut self, target: Target<'_, u32>, params: Vec<Value>) -> Result<ExecResult, BackendError> {
        let r = match target {
            Target::Stmt(id) => self.call(move |c| c.exec(id, params)).await,
            Target::Sql(sql) => {
                let sql = sql.to_owned();
                self.call(move |c| c.exec_sql(&sql, params)).await
            }
        };
        r.map(exec_result).map_err(db_failure)
    }

    async fn query(&mut self, target: Target<'_, u32>, params: Vec<Value>) -> Result<Vec<String>, BackendError> {
        match target {
            Target::Stmt(id) => self.call(move |c| c.query(id, params)).await.map_err(db_failure),
            Target::Sql(sql) => {
                if is_blank(sql) {
                    return Err(empty_statement());
                }
                let sql = sql.to_owned();
                self.call(move |c| {
                    // dqlite's semantics: QUERY_SQL runs one statement, and text with a second
                    // statement after it is refused before anything runs ("nonempty statement
                    // tail"), where dqlite 1.11 silently ran only the first. A tail of only
                    // comments, whitespace and semicolons is fine.
                    let p = c.prepare(&sql).map_err(db_failure)?;
                    let finalized = c.finalize(p.id);
                    if !is_blank(sql.get(p.tail_offset as usize..).unwrap_or("")) {
                        let f = dqlite_wire::failure::NONEMPTY_STATEMENT_TAIL;
                        return Err(BackendError::new(f.code, f.message));
                    }
                    finalized.map_err(db_failure)?;
                    c.query_sql(&sql, params).map_err(db_failure)
                })
                .await
            }
        }
    }

    async fn next_rows(&mut self, budget_bytes: usize) -> Result<RowBatch, BackendError> {
        let (rows, done) = self.call(move |c| c.next_rows(budget_bytes)).await.map_err(db_failure)?;
        Ok(RowBatch { rows, done })
    }

    async fn close_query(&mut self) {
        self.call(InlineConnection::close_query).await;
    }

    async fn finalize(&mut self, stmt: u32) -> Result<(), BackendError> {
        self.call(move |c| c.finalize(stmt)).await.map_err(db_failure)
    }

    fn idle_poll(&self) -> Option<std::time::Duration> {
        self.conn.borrow().idle_poll()
    }

    async fn idle(&mut self) {
        self.call(InlineConnection::idle).await;
    }
}
