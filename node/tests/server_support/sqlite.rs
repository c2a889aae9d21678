//! A test SQL backend over plain rusqlite: one thread per session, fed by commands with oneshot
//! replies (blocking SQLite never runs on a tokio worker). Test support, not shipped.
//!
//! Semantics follow `dqlite_node::server::SqlSession`'s contract: dqlite's, except that
//! multi-statement QUERY_SQL runs every statement (the last one's rows are returned).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use dqlite_node::server::messages;
use dqlite_node::server::{BackendError, ExecResult, PrepareInfo, RowBatch, SqlBackend, SqlSession, Target};
use dqlite_node::wire::Value;
use rusqlite::types::ValueRef as SqlRef;
use rusqlite::{Connection, Statement};
use tokio::sync::oneshot;

/// Databases are files in one directory.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pub dir: PathBuf,
}

impl SqliteBackend {
    pub fn new(dir: &Path) -> Self {
        SqliteBackend { dir: dir.to_path_buf() }
    }
}

type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

enum Cmd {
    Prepare(String, Reply<(u32, PrepareInfo)>),
    Exec(TargetOwned, Vec<Value>, Reply<ExecResult>),
    Query(TargetOwned, Vec<Value>, Reply<Vec<String>>),
    NextRows(usize, Reply<RowBatch>),
    CloseQuery(oneshot::Sender<()>),
    Finalize(u32, Reply<()>),
}

enum TargetOwned {
    Stmt(u32),
    Sql(String),
}

pub struct SqliteSession {
    tx: std_mpsc::Sender<Cmd>,
}

fn gone() -> BackendError {
    BackendError::new(10, "session thread gone")
}

impl SqlBackend for SqliteBackend {
    type Session = SqliteSession;

    async fn open(&self, name: &str) -> Result<SqliteSession, BackendError> {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(BackendError::new(14, format!("invalid database name {name:?}")));
        }
        let path = self.dir.join(name);
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("sqlite:{name}"))
            .spawn(move || {
                let conn = match Connection::open(&path)
                    .and_then(|c| c.pragma_update(None, "journal_mode", "WAL").map(|_| c))
                    .and_then(|c| c.pragma_update(None, "foreign_keys", "ON").map(|_| c))
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(to_backend(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                session_thread(conn, rx);
            })
            .map_err(|e| BackendError::new(10, e.to_string()))?;
        ready_rx.await.map_err(|_| gone())??;
        Ok(SqliteSession { tx })
    }
}

async fn call<T>(tx: &std_mpsc::Sender<Cmd>, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, BackendError> {
    let (rtx, rrx) = oneshot::channel();
    tx.send(make(rtx)).map_err(|_| gone())?;
    rrx.await.map_err(|_| gone())?
}

fn owned(t: Target<'_, u32>) -> TargetOwned {
    match t {
        Target::Stmt(s) => TargetOwned::Stmt(s),
        Target::Sql(s) => TargetOwned::Sql(s.to_owned()),
    }
}

impl SqlSession for SqliteSession {
    type Stmt = u32;

    async fn prepare(&mut self, sql: &str) -> Result<(u32, PrepareInfo), BackendError> {
        call(&self.tx, |r| Cmd::Prepare(sql.to_owned(), r)).await
    }
    async fn exec(&mut self, target: Target<'_, u32>, params: Vec<Value>) -> Result<ExecResult, BackendError> {
        let t = owned(target);
        call(&self.tx, |r| Cmd::Exec(t, params, r)).await
    }
    async fn query(&mut self, target: Target<'_, u32>, params: Vec<Value>) -> Result<Vec<String>, BackendError> {
        let t = owned(target);
        call(&self.tx, |r| Cmd::Query(t, params, r)).await
    }
    async fn next_rows(&mut self, budget_bytes: usize) -> Result<RowBatch, BackendError> {
        call(&self.tx, |r| Cmd::NextRows(budget_bytes, r)).await
    }
    async fn close_query(&mut self) {
        let (rtx, rrx) = oneshot::channel();
        if self.tx.send(Cmd::CloseQuery(rtx)).is_ok() {
            let _ = rrx.await;
        }
    }
    async fn finalize(&mut self, stmt: u32) -> Result<(), BackendError> {
        call(&self.tx, |r| Cmd::Finalize(stmt, r)).await
    }
}

fn to_backend(e: rusqlite::Error) -> BackendError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let message = msg.unwrap_or_else(|| f.to_string());
            BackendError::new(f.extended_code as u64, message)
        }
        rusqlite::Error::SqlInputError { error, msg, .. } => BackendError::new(error.extended_code as u64, msg),
        rusqlite::Error::InvalidParameterCount(..) | rusqlite::Error::InvalidParameterName(_) => {
            BackendError::new(1, messages::BIND_PARAMETERS)
        }
        rusqlite::Error::ExecuteReturnedResults => BackendError::new(1, messages::ROWS_YIELDED),
        other => BackendError::new(1, other.to_string()),
    }
}

/// Only whitespace and comments?
fn is_blank(sql: &str) -> bool {
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

/// The byte length of the first statement of `sql` (which is not blank).
fn first_statement_len(conn: &Connection, sql: &str) -> Result<usize, BackendError> {
    let err = match conn.prepare(sql) {
        Ok(_) => return Ok(sql.len()),
        Err(e) => e,
    };
    // Several statements (or the tail fails to prepare on its own, e.g. it uses a table the
    // first statement creates): the first cut at a ';' whose prefix prepares alone.
    for (i, _) in sql.match_indices(';') {
        if conn.prepare(&sql[..=i]).is_ok() {
            return Ok(i + 1);
        }
    }
    Err(to_backend(err))
}

fn bind(stmt: &mut Statement<'_>, params: &[Value], strict: bool) -> Result<usize, BackendError> {
    let declared = stmt.parameter_count();
    if strict && params.len() > declared {
        return Err(BackendError::new(1, messages::BIND_PARAMETERS));
    }
    let n = declared.min(params.len());
    for (i, v) in params.iter().take(n).enumerate() {
        let idx = i + 1;
        let r = match v {
            Value::Integer(x) => stmt.raw_bind_parameter(idx, x),
            Value::Float(x) => stmt.raw_bind_parameter(idx, x),
            Value::Text(x) | Value::Iso8601(x) => stmt.raw_bind_parameter(idx, x),
            Value::Blob(x) => stmt.raw_bind_parameter(idx, x),
            Value::Null => stmt.raw_bind_parameter(idx, rusqlite::types::Null),
            Value::Boolean(x) => stmt.raw_bind_parameter(idx, i64::from(*x)),
            Value::UnixTime(_) => return Err(BackendError::new(1, messages::BIND_PARAMETERS)),
        };
        r.map_err(to_backend)?;
    }
    Ok(n)
}

#[derive(Clone, Copy)]
enum Decl {
    Plain,
    DateTime,
    Boolean,
}

fn decls(stmt: &Statement<'_>) -> Vec<Decl> {
    stmt.columns()
        .iter()
        .map(|c| match c.decl_type().map(str::to_ascii_uppercase).as_deref() {
            Some("DATETIME") | Some("DATE") | Some("TIMESTAMP") => Decl::DateTime,
            Some("BOOLEAN") => Decl::Boolean,
            _ => Decl::Plain,
        })
        .collect()
}

fn wire_value(decl: Decl, v: SqlRef<'_>) -> Value {
    match (decl, v) {
        (Decl::DateTime, SqlRef::Integer(x)) => Value::UnixTime(x),
        (Decl::DateTime, SqlRef::Text(t)) => Value::Iso8601(String::from_utf8_lossy(t).into_owned()),
        (Decl::DateTime, SqlRef::Null) => Value::Iso8601(String::new()),
        (Decl::Boolean, SqlRef::Integer(x)) => Value::Boolean(x != 0),
        (Decl::Boolean, SqlRef::Null) => Value::Boolean(false),
        (_, SqlRef::Integer(x)) => Value::Integer(x),
        (_, SqlRef::Real(x)) => Value::Float(x),
        (_, SqlRef::Text(t)) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        (_, SqlRef::Blob(b)) => Value::Blob(b.to_vec()),
        (_, SqlRef::Null) => Value::Null,
    }
}

/// Steps a statement that must not yield rows.
fn exec_stmt(conn: &Connection, stmt: &mut Statement<'_>) -> Result<ExecResult, BackendError> {
    let mut rows = stmt.raw_query();
    match rows.next() {
        Ok(None) => {}
        Ok(Some(_)) => return Err(BackendError::new(1, messages::ROWS_YIELDED)),
        Err(e) => return Err(to_backend(e)),
    }
    drop(rows);
    Ok(ExecResult { last_insert_id: conn.last_insert_rowid(), rows_affected: conn.changes() })
}

fn session_thread(conn: Connection, rx: std_mpsc::Receiver<Cmd>) {
    let mut stmts: HashMap<u32, String> = HashMap::new();
    let mut next_id = 0u32;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Prepare(sql, reply) => {
                let r = (|| {
                    if is_blank(&sql) {
                        return Err(BackendError::new(0, messages::EMPTY_STATEMENT));
                    }
                    let len = first_statement_len(&conn, &sql)?;
                    let first = &sql[..len];
                    let stmt = conn.prepare_cached(first).map_err(to_backend)?;
                    let params = stmt.parameter_count() as u64;
                    let readonly = stmt.readonly();
                    drop(stmt);
                    let id = next_id;
                    next_id += 1;
                    stmts.insert(id, first.to_owned());
                    Ok((
                        id,
                        PrepareInfo { params, tail_offset: len as u64, has_tail: !is_blank(&sql[len..]), readonly },
                    ))
                })();
                let _ = reply.send(r);
            }
            Cmd::Finalize(id, reply) => {
                let r = stmts.remove(&id).map(|_| ()).ok_or_else(|| BackendError::new(12, messages::NO_STATEMENT));
                let _ = reply.send(r);
            }
            Cmd::Exec(target, params, reply) => {
                let r = match target {
                    TargetOwned::Stmt(id) => match stmts.get(&id) {
                        None => Err(BackendError::new(12, messages::NO_STATEMENT)),
                        Some(sql) => conn.prepare_cached(sql).map_err(to_backend).and_then(|mut stmt| {
                            bind(&mut stmt, &params, false)?;
                            let r = exec_stmt(&conn, &mut stmt);
                            stmt.clear_bindings();
                            r
                        }),
                    },
                    TargetOwned::Sql(sql) => exec_sql(&conn, &sql, &params),
                };
                let _ = reply.send(r);
            }
            Cmd::Query(target, params, reply) => {
                let sql = match target {
                    TargetOwned::Stmt(id) => match stmts.get(&id) {
                        Some(sql) => sql.clone(),
                        None => {
                            let _ = reply.send(Err(BackendError::new(12, messages::NO_STATEMENT)));
                            continue;
                        }
                    },
                    TargetOwned::Sql(sql) => match run_all_but_last(&conn, &sql) {
                        Ok(last) => last,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    },
                };
                serve_query(&conn, &sql, &params, reply, &rx);
            }
            Cmd::NextRows(_, reply) => {
                let _ = reply.send(Err(BackendError::new(1, "no query is running")));
            }
            Cmd::CloseQuery(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// EXEC_SQL: every statement in order; remaining parameters carry over.
fn exec_sql(conn: &Connection, sql: &str, params: &[Value]) -> Result<ExecResult, BackendError> {
    let mut rest = sql;
    let mut params = params;
    let mut last = ExecResult::default();
    while !is_blank(rest) {
        let len = first_statement_len(conn, rest)?;
        let mut stmt = conn.prepare(&rest[..len]).map_err(to_backend)?;
        let used = bind(&mut stmt, params, false)?;
        params = &params[used..];
        last = exec_stmt(conn, &mut stmt)?;
        rest = &rest[len..];
    }
    Ok(last)
}

/// QUERY_SQL with several statements: runs all but the last (rows discarded) and returns the
/// last one's SQL. The first statement is checked for result columns before anything runs.
fn run_all_but_last(conn: &Connection, sql: &str) -> Result<String, BackendError> {
    if is_blank(sql) {
        return Err(BackendError::new(0, messages::EMPTY_STATEMENT));
    }
    let mut rest = sql;
    let mut first = true;
    loop {
        let len = first_statement_len(conn, rest)?;
        let (this, tail) = rest.split_at(len);
        if is_blank(tail) {
            return Ok(this.to_owned());
        }
        let mut stmt = conn.prepare(this).map_err(to_backend)?;
        if first && stmt.column_count() == 0 {
            return Err(BackendError::new(1, messages::NO_COLUMNS));
        }
        first = false;
        let mut rows = stmt.raw_query();
        loop {
            match rows.next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(to_backend(e)),
            }
        }
        rest = tail;
    }
}

/// Runs one query, serving NextRows/CloseQuery until it is over.
fn serve_query(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    reply: Reply<Vec<String>>,
    rx: &std_mpsc::Receiver<Cmd>,
) {
    let mut stmt = match conn.prepare_cached(sql) {
        Ok(s) => s,
        Err(e) => {
            let _ = reply.send(Err(to_backend(e)));
            return;
        }
    };
    if stmt.column_count() == 0 {
        let _ = reply.send(Err(BackendError::new(1, messages::NO_COLUMNS)));
        return;
    }
    if let Err(e) = bind(&mut stmt, params, true) {
        stmt.clear_bindings();
        let _ = reply.send(Err(e));
        return;
    }
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let decls = decls(&stmt);
    let _ = reply.send(Ok(names));
    let mut rows = stmt.raw_query();
    loop {
        let Ok(cmd) = rx.recv() else { return };
        match cmd {
            Cmd::NextRows(budget, reply) => {
                let mut batch = RowBatch::default();
                let mut bytes = 0usize;
                let result = loop {
                    match rows.next() {
                        Ok(Some(row)) => {
                            let values: Vec<Value> =
                                (0..decls.len()).map(|i| wire_value(decls[i], row.get_ref_unwrap(i))).collect();
                            bytes += 8 + values.iter().map(|v| v.as_ref().encoded_len()).sum::<usize>();
                            batch.rows.push(values);
                            if bytes >= budget {
                                break Ok(());
                            }
                        }
                        Ok(None) => {
                            batch.done = true;
                            break Ok(());
                        }
                        Err(e) => break Err(to_backend(e)),
                    }
                };
                let finished = batch.done || result.is_err();
                let _ = reply.send(result.map(|()| batch));
                if finished {
                    return;
                }
            }
            Cmd::CloseQuery(done) => {
                let _ = done.send(());
                return;
            }
            Cmd::Prepare(_, r) => drop(r.send(Err(BackendError::new(1, "query running")))),
            Cmd::Exec(_, _, r) => drop(r.send(Err(BackendError::new(1, "query running")))),
            Cmd::Query(_, _, r) => drop(r.send(Err(BackendError::new(1, "query running")))),
            Cmd::Finalize(_, r) => drop(r.send(Err(BackendError::new(1, "query running")))),
        }
    }
}
