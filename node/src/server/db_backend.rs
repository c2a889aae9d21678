//! The [`SqlBackend`] of a real node: the SQLite layer's [`DbHandle`] / [`Connection`].
//!
//! Each client connection that sends OPEN gets one [`Connection`] (a dedicated SQLite thread).
//! Query results arrive from it in batches of rows; this adapter re-cuts them to the server's
//! byte budget so ROWS messages keep dqlite's size.

use std::collections::VecDeque;

use dqlite_wire::Value;

use super::backend::{BackendError, ExecResult, PrepareInfo, RowBatch, SqlBackend, SqlSession, Target};
use crate::db::conn::{Connection, DbHandle, Rows};
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
    conn: Connection,
    rows: Option<Rows>,
    pending: VecDeque<Vec<Value>>,
}

impl SqlBackend for DbBackend {
    type Session = DbSession;

    async fn open(&self, name: &str) -> Result<DbSession, BackendError> {
        let handle = self.handle.clone();
        let name = name.to_owned();
        let conn = tokio::task::spawn_blocking(move || handle.open(&name))
            .await
            .map_err(|e| BackendError::new(dqlite_wire::codes::SQLITE_IOERR, format!("open task failed: {e}")))?
            .map_err(db_failure)?;
        Ok(DbSession { conn, rows: None, pending: VecDeque::new() })
    }
}

impl DbSession {
    async fn start(&mut self, rows: Result<Rows, DbError>) -> Result<Vec<String>, BackendError> {
        let rows = rows.map_err(db_failure)?;
        let columns = rows.columns.clone();
        self.pending.clear();
        self.rows = Some(rows);
        Ok(columns)
    }
}

impl SqlSession for DbSession {
    type Stmt = u32;

    async fn prepare(&mut self, sql: &str) -> Result<(u32, PrepareInfo), BackendError> {
        if is_blank(sql) {
            return Err(empty_statement());
        }
        let p = self.conn.prepare(sql).await.map_err(db_failure)?;
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
            Target::Stmt(id) => self.conn.exec(id, params).await,
            Target::Sql(sql) => self.conn.exec_sql(sql, params).await,
        }
        .map_err(db_failure)?;
        Ok(ExecResult { last_insert_id: r.last_insert_id, rows_affected: r.rows_affected })
    }

    async fn query(&mut self, target: Target<'_, u32>, params: Vec<Value>) -> Result<Vec<String>, BackendError> {
        self.rows = None;
        if matches!(target, Target::Sql(sql) if is_blank(sql)) {
            return Err(empty_statement());
        }
        let rows = match target {
            Target::Stmt(id) => self.conn.query(id, params).await,
            Target::Sql(sql) => {
                // dqlite's semantics: QUERY_SQL runs one statement, and text with a second
                // statement after it is refused before anything runs ("nonempty statement
                // tail"), where dqlite 1.11 silently ran only the first. A tail of only
                // comments, whitespace and semicolons is fine.
                let p = self.conn.prepare(sql).await.map_err(db_failure)?;
                let finalized = self.conn.finalize(p.id).await;
                if !is_blank(sql.get(p.tail_offset as usize..).unwrap_or("")) {
                    let f = dqlite_wire::failure::NONEMPTY_STATEMENT_TAIL;
                    return Err(BackendError::new(f.code, f.message));
                }
                finalized.map_err(db_failure)?;
                self.conn.query_sql(sql, params).await
            }
        };
        self.start(rows).await
    }

    async fn next_rows(&mut self, budget_bytes: usize) -> Result<RowBatch, BackendError> {
        let mut batch = RowBatch::default();
        let mut bytes = 0usize;
        loop {
            if self.pending.is_empty() {
                let Some(rows) = self.rows.as_mut() else {
                    batch.done = true;
                    return Ok(batch);
                };
                match rows.next_batch().await {
                    Some(Ok(b)) => self.pending.extend(b),
                    Some(Err(e)) => {
                        self.rows = None;
                        return Err(db_failure(e));
                    }
                    None => {
                        self.rows = None;
                        batch.done = true;
                        return Ok(batch);
                    }
                }
                continue;
            }
            if bytes >= budget_bytes {
                return Ok(batch);
            }
            if let Some(row) = self.pending.pop_front() {
                bytes += 8 + row.iter().map(|v| v.as_ref().encoded_len()).sum::<usize>();
                batch.rows.push(row);
            }
        }
    }

    async fn close_query(&mut self) {
        // Dropping the receiver stops the worker at its next batch.
        self.rows = None;
        self.pending.clear();
    }

    async fn finalize(&mut self, stmt: u32) -> Result<(), BackendError> {
        self.conn.finalize(stmt).await.map_err(db_failure)
    }
}
