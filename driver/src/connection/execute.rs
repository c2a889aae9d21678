//! Running one statement: choosing PREPARE/EXEC/QUERY or EXEC_SQL/QUERY_SQL, and the retry
//! rules (see the [module docs](super)).
//!
//! dqlite has separate requests for statements with and without result columns, and its
//! `PREPARE` reply does not say which kind a statement is. The driver therefore sends QUERY
//! first: dqlite checks the column count *before stepping* and rejects a statement without
//! columns with `FAILURE 1 "not an error"` — nothing ran — and the driver then sends EXEC. The
//! answer is remembered per statement (and per argument-less SQL text), so the second round
//! trip happens once.

use dqlite_wire::value::Value as WireValue;
use dqlite_wire::StmtId;
use sqlx_core::Error;

use std::sync::{Arc, OnceLock};

use super::{CachedStatement, DqliteConnection, StatementColumns};
use crate::error::DqliteError;
use crate::protocol::session::{Batch, Failure, Recovered, Target};
use crate::protocol::stream::WireError;
use crate::transaction::{settle, ControlKind, ControlOutcome, InFlight, NO_TRANSACTION};
use crate::DqliteQueryResult;
use sqlx_core::transaction::rollback_ansi_transaction_sql;

/// Attempts for a request the server did not run (each may include a leader search).
const MAX_ATTEMPTS: u32 = 3;

/// The first outcome of a statement.
pub(crate) enum Started {
    /// EXEC result.
    Done(DqliteQueryResult),
    /// First ROWS batch; more follow via [`DqliteConnection::next_batch`] unless `done`.
    Rows(Batch),
}

enum RunError {
    /// The server certainly did not run the request; the session must be replaced.
    Retry(Error),
    /// The server does not know a cached statement id (did not run it): re-prepare.
    Reprepare(Error),
    /// Report to the caller.
    Fatal(Error),
}

/// True for `SQLITE_BUSY` and its extended codes from the server (the statement did not run).
fn is_busy(e: &Error) -> bool {
    crate::dqlite_error(e).is_some_and(|d| d.is_busy() && d.reason() == crate::DqliteErrorReason::Server)
}

/// Waits between retries of a busy statement, with SQLite's busy-handler delays.
#[derive(Default)]
struct BusyWait {
    tries: usize,
    waited: std::time::Duration,
}

impl BusyWait {
    /// Sleep before the next try; false once `timeout` would be exceeded.
    async fn wait(&mut self, timeout: std::time::Duration) -> bool {
        const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
        let delay = std::time::Duration::from_millis(DELAYS_MS[self.tries.min(DELAYS_MS.len() - 1)]);
        if self.waited + delay > timeout {
            return false;
        }
        self.tries += 1;
        self.waited += delay;
        tokio::time::sleep(delay).await;
        true
    }
}

fn not_connected() -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::NotConnected, "not connected to the dqlite leader"))
}

impl DqliteConnection {
    /// Drain abandoned responses, settle a cancelled transaction-control statement, and run
    /// queued rollbacks on the current session (if any). A wire failure drops the session; it
    /// is not an error here. Cancel-safe: anything not yet settled stays recorded.
    pub(crate) async fn flush_pending(&mut self) -> Result<(), Error> {
        if self.session.is_none() {
            self.pending_rollbacks.clear();
            if let Some(in_flight) = self.control.take() {
                settle(self, in_flight, ControlOutcome::Unknown);
            }
            self.pending_rollbacks.clear();
            return Ok(());
        }
        let recovered = match self.session.as_mut() {
            Some(session) if session.is_write_incomplete() || session.needs_recovery() => {
                match session.recover().await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::info!(error = %e, "could not drain an abandoned response");
                        self.lose_session();
                        None
                    }
                }
            }
            _ => Some(Recovered::Nothing),
        };
        if let Some(in_flight) = self.control.take() {
            let outcome = match &recovered {
                None => ControlOutcome::Unknown,
                Some(Recovered::Nothing) => ControlOutcome::NotSent,
                Some(Recovered::Reply(Ok(_))) | Some(Recovered::Drained) => ControlOutcome::Done,
                Some(Recovered::Reply(Err(f))) => ControlOutcome::Failed(&f.message),
            };
            settle(self, in_flight, outcome);
        } else if let Some(Recovered::Reply(Ok(Some(stmt)))) = recovered {
            // A PREPARE whose caller went away: nobody will use the statement.
            if let Some(session) = self.session.as_mut() {
                match session.finalize(stmt).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(error = %e.into_inner(), "connection lost finalizing an orphan statement");
                        self.lose_session();
                    }
                }
            }
        }
        while let Some(&level) = self.pending_rollbacks.first() {
            let Some(session) = self.session.as_mut() else {
                self.pending_rollbacks.clear();
                break;
            };
            self.pending_rollbacks.remove(0);
            let sql = rollback_ansi_transaction_sql(level);
            self.control = Some(InFlight { kind: ControlKind::QueuedRollback, depth: level, abandoned: 0 });
            let reply = session.exec(Target::Sql(sql.as_str()), &[]).await;
            let in_flight = self.control.take().unwrap_or(InFlight {
                kind: ControlKind::QueuedRollback,
                depth: level,
                abandoned: 0,
            });
            match reply {
                Ok(Ok(_)) => tracing::debug!(sql = sql.as_str(), "ran queued rollback"),
                Ok(Err(f)) => {
                    if f.is_not_leader() {
                        self.lose_session();
                    } else {
                        if !f.message.contains(NO_TRANSACTION) {
                            tracing::warn!(code = f.code, message = %f.message, sql = sql.as_str(), "queued rollback failed");
                        }
                        settle(self, in_flight, ControlOutcome::Failed(&f.message));
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e.into_inner(), "connection lost during a queued rollback");
                    self.lose_session();
                }
            }
        }
        Ok(())
    }

    /// Make sure there is a usable session before sending a request.
    pub(crate) async fn ready(&mut self) -> Result<(), Error> {
        self.flush_pending().await?;
        if self.migration_lock.is_some() && !self.in_migrate_step && self.transaction_depth == 0 {
            // A request outside the migrator's steps: it finished without `unlock()` (an
            // early error return). Release the lock first.
            // Best effort: if it fails the lease expires on its own.
            if let Err(e) = Box::pin(self.release_migration_lock()).await {
                tracing::warn!(error = %e, "could not release the migration lock");
            }
        }
        if let Some(session) = self.session.as_mut() {
            if !session.is_idle_alive_recent() {
                tracing::info!(leader = %session.leader(), "the dqlite leader closed the idle connection");
                self.lose_session();
            }
        }
        if self.session.is_none() {
            if self.transaction_depth > 0 {
                return Err(self.transaction_lost_error());
            }
            self.reconnect().await?;
        }
        Ok(())
    }

    fn classify_failure(&mut self, f: Failure, params: usize) -> RunError {
        if f.is_unknown_statement() {
            return RunError::Reprepare(f.into_error());
        }
        if f.is_not_leader() {
            if self.options.read_mode == crate::ReadMode::Follower {
                // dqlite-rs never answers "not leader" on a follower-read connection: this
                // server does not know the option (real dqlite). Read on the leader from now on.
                self.options.followers_unsupported.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return RunError::Retry(f.into_error());
        }
        if f.code == dqlite_wire::codes::SQLITE_IOERR_FOLLOWER_STALE && self.transaction_depth == 0 {
            // Nothing ran. The next statement picks a node afresh (another follower, or the
            // leader if none is fresh).
            self.lose_session();
            return RunError::Fatal(f.into_error());
        }
        if dqlite_wire::codes::is_leadership_lost(f.code) {
            self.lose_session();
            return RunError::Fatal(f.into_error());
        }
        if f.code == dqlite_wire::codes::DQLITE_PARSE && params > 255 {
            return RunError::Fatal(Error::Database(Box::new(DqliteError::too_many_parameters(params))));
        }
        RunError::Fatal(f.into_error())
    }

    /// The connection died after a request was sent: never retried.
    fn lost_after_send(&mut self, e: Error, may_write: bool) -> Error {
        let in_txn = self.transaction_depth > 0;
        self.lose_session();
        if in_txn {
            Error::Database(Box::new(DqliteError::transaction_lost(format!(
                "connection to the dqlite leader lost inside a transaction ({e}); the \
                 transaction was not committed"
            ))))
        } else if may_write {
            Error::Database(Box::new(DqliteError::outcome_unknown(format!(
                "connection to the dqlite leader lost after the statement was sent ({e}); it \
                 may or may not have been applied"
            ))))
        } else {
            e
        }
    }

    async fn prepare_cached(&mut self, sql: &str) -> Result<CachedStatement, RunError> {
        if let Some(st) = self.statements.get_mut(sql) {
            return Ok(st.clone());
        }
        let session = self.session.as_mut().ok_or_else(|| RunError::Retry(not_connected()))?;
        match session.prepare(sql).await {
            Ok(Ok((id, params))) => {
                let st = CachedStatement { id, params, returns_rows: None, columns: Default::default() };
                if let Some(evicted) = self.statements.insert(sql, st.clone()) {
                    match session.finalize(evicted.id).await {
                        Ok(Ok(())) => {}
                        Ok(Err(f)) => tracing::warn!(code = f.code, message = %f.message,
                            "FINALIZE of an evicted statement failed"),
                        // PREPARE and FINALIZE have no effect on data: safe to retry.
                        Err(e) => return Err(RunError::Retry(e.into_inner())),
                    }
                }
                Ok(st)
            }
            Ok(Err(f)) => Err(self.classify_failure(f, 0)),
            Err(e) => Err(RunError::Retry(e.into_inner())),
        }
    }

    /// Record the result columns of a cached prepared statement (first time only).
    pub(crate) fn remember_columns(&mut self, sql: &str, columns: &StatementColumns) {
        if let Some(st) = self.statements.get_mut(sql) {
            let _ = st.columns.set((Arc::clone(&columns.0), Arc::clone(&columns.1)));
        }
    }

    fn remember(&mut self, sql: &str, prepared: bool, returns_rows: bool) {
        if prepared {
            if let Some(st) = self.statements.get_mut(sql) {
                st.returns_rows = Some(returns_rows);
            }
        } else {
            self.sql_returns_rows.insert(sql, returns_rows);
        }
    }

    async fn run_once(&mut self, sql: &str, params: &[WireValue], prepared: bool) -> Result<Started, RunError> {
        let (stmt, known): (Option<StmtId>, Option<bool>) = if prepared {
            let st = self.prepare_cached(sql).await?;
            if st.params != params.len() {
                // dqlite would bind min(declared, supplied) and ignore the rest; dqlite 1.11
                // also ignores any statement after the first in a prepared string. Refuse
                // rather than run something other than what was asked.
                return Err(RunError::Fatal(Error::InvalidArgument(format!(
                    "statement takes {} parameter(s) but {} were bound (note: a string of \
                     several statements with arguments is not supported; without arguments it \
                     runs as a batch)",
                    st.params,
                    params.len()
                ))));
            }
            (Some(st.id), st.returns_rows)
        } else {
            (None, self.sql_returns_rows.get_mut(sql).copied())
        };
        let target = match stmt {
            Some(id) => Target::Stmt(id),
            None => Target::Sql(sql),
        };

        if known != Some(false) {
            let session = self.session.as_mut().ok_or_else(|| RunError::Retry(not_connected()))?;
            match session.query(target, params).await {
                Ok(Ok(batch)) => {
                    if known.is_none() {
                        self.remember(sql, prepared, true);
                    }
                    return Ok(Started::Rows(batch));
                }
                // No result columns (not run), or (dqlite >= 1.18) several statements in
                // QUERY_SQL (rejected at prepare time, not run): send EXEC instead.
                Ok(Err(f)) if f.is_no_columns() || (stmt.is_none() && f.is_nonempty_tail()) => {
                    self.remember(sql, prepared, false);
                }
                Ok(Err(f)) => return Err(self.classify_failure(f, params.len())),
                Err(WireError::NotSent(e)) => return Err(RunError::Retry(e)),
                // A QUERY may write (`INSERT ... RETURNING`): its outcome is unknown too.
                Err(WireError::Lost(e)) => return Err(RunError::Fatal(self.lost_after_send(e, true))),
            }
        }

        let session = self.session.as_mut().ok_or_else(|| RunError::Retry(not_connected()))?;
        match session.exec(target, params).await {
            Ok(Ok((rows_affected, last_insert_rowid))) => {
                Ok(Started::Done(DqliteQueryResult { rows_affected, last_insert_rowid }))
            }
            Ok(Err(f)) => Err(self.classify_failure(f, params.len())),
            Err(WireError::NotSent(e)) => Err(RunError::Retry(e)),
            Err(WireError::Lost(e)) => Err(RunError::Fatal(self.lost_after_send(e, true))),
        }
    }

    /// Run one statement: prepared (cached) when `prepared`, else as SQL text.
    pub(crate) async fn run(&mut self, sql: &str, params: &[WireValue], prepared: bool) -> Result<Started, Error> {
        let mut attempt = 1;
        let mut busy = BusyWait::default();
        loop {
            self.ready().await?;
            match self.run_once(sql, params, prepared).await {
                Ok(started) => return Ok(started),
                Err(RunError::Fatal(e)) if self.transaction_depth == 0 && is_busy(&e) => {
                    // Another writer holds the lock; the statement did not run. Wait as
                    // SQLite's busy handler would, up to `busy_timeout`.
                    if !busy.wait(self.options.busy_timeout).await {
                        return Err(e);
                    }
                }
                Err(RunError::Fatal(e)) => return Err(e),
                Err(RunError::Reprepare(e)) => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "server forgot a prepared statement; re-preparing");
                    // The cache cannot drop one entry; its ids are suspect anyway.
                    self.statements.clear();
                    attempt += 1;
                }
                Err(RunError::Retry(e)) => {
                    self.lose_session();
                    if self.transaction_depth > 0 {
                        tracing::info!(error = %e, "leader changed inside a transaction");
                        return Err(self.transaction_lost_error());
                    }
                    if attempt >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::info!(attempt, error = %e,
                        "request was not executed by the server; retrying on the leader");
                    attempt += 1;
                }
            }
        }
    }

    /// PREPARE (cached) without executing: the parameter count, and the statement's columns
    /// cell (filled once it has returned rows on this connection).
    pub(crate) async fn prepare_only(&mut self, sql: &str) -> Result<(usize, Arc<OnceLock<StatementColumns>>), Error> {
        let mut attempt = 1;
        loop {
            self.ready().await?;
            if !self.statements.is_enabled() {
                // Prepare and finalize at once: the statement is only validated.
                let session = self.session.as_mut().ok_or_else(not_connected)?;
                match session.prepare(sql).await {
                    Ok(Ok((id, params))) => {
                        match session.finalize(id).await {
                            Ok(_) => {}
                            Err(e) => {
                                self.lose_session();
                                tracing::debug!(error = %e.into_inner(), "FINALIZE failed");
                            }
                        }
                        return Ok((params, Default::default()));
                    }
                    Ok(Err(f)) if !f.is_not_leader() => return Err(f.into_error()),
                    Ok(Err(f)) => {
                        self.lose_session();
                        if self.transaction_depth > 0 || attempt >= MAX_ATTEMPTS {
                            return Err(f.into_error());
                        }
                    }
                    Err(e) => {
                        self.lose_session();
                        if self.transaction_depth > 0 || attempt >= MAX_ATTEMPTS {
                            return Err(e.into_inner());
                        }
                    }
                }
            } else {
                match self.prepare_cached(sql).await {
                    Ok(st) => return Ok((st.params, st.columns)),
                    Err(RunError::Fatal(e) | RunError::Reprepare(e)) => return Err(e),
                    Err(RunError::Retry(e)) => {
                        self.lose_session();
                        if self.transaction_depth > 0 || attempt >= MAX_ATTEMPTS {
                            return Err(e);
                        }
                    }
                }
            }
            attempt += 1;
        }
    }

    /// The next ROWS batch of the streaming query.
    pub(crate) async fn next_batch(&mut self) -> Result<Batch, Error> {
        let session = self.session.as_mut().ok_or_else(not_connected)?;
        match session.next_batch().await {
            Ok(Ok(batch)) => Ok(batch),
            Ok(Err(f)) => {
                if f.is_not_leader() || dqlite_wire::codes::is_leadership_lost(f.code) {
                    self.lose_session();
                }
                Err(f.into_error())
            }
            // The rest of a result set was lost: a writing query's outcome is unknown.
            Err(e) => Err(self.lost_after_send(e, true)),
        }
    }

    /// Transaction control (`BEGIN`, `COMMIT`, `SAVEPOINT`, ...) via EXEC_SQL. While the
    /// request is in flight it is recorded in `self.control`, so that a dropped future is
    /// settled by the next use (see [`crate::transaction`]). A lost `COMMIT` is "outcome
    /// unknown".
    pub(crate) async fn exec_control(&mut self, sql: &str, kind: ControlKind) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            self.ready().await?;
            debug_assert!(self.control.is_none(), "ready() settles any earlier control statement");
            let depth = self.transaction_depth;
            let session = self.session.as_mut().ok_or_else(not_connected)?;
            self.control = Some(InFlight { kind, depth, abandoned: 0 });
            let reply = session.exec(Target::Sql(sql), &[]).await;
            self.control = None;
            let retry_cause = match reply {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(f)) if f.is_not_leader() => f.into_error(),
                Ok(Err(f)) => {
                    if dqlite_wire::codes::is_leadership_lost(f.code) {
                        self.lose_session();
                    }
                    return Err(f.into_error());
                }
                Err(WireError::NotSent(e)) => e,
                Err(WireError::Lost(e)) => {
                    if kind == ControlKind::Commit && depth == 1 {
                        self.lose_session();
                        return Err(Error::Database(Box::new(DqliteError::outcome_unknown(format!(
                            "connection to the dqlite leader lost after {sql} was sent ({e})"
                        )))));
                    }
                    return Err(self.lost_after_send(e, false));
                }
            };
            self.lose_session();
            if self.transaction_depth > 0 {
                tracing::info!(error = %retry_cause, sql, "leader changed inside a transaction");
                return Err(self.transaction_lost_error());
            }
            if attempt >= MAX_ATTEMPTS {
                return Err(retry_cause);
            }
            attempt += 1;
        }
    }

    /// FINALIZE one statement.
    pub(crate) async fn finalize(&mut self, id: StmtId) -> Result<(), Error> {
        self.flush_pending().await?;
        let Some(session) = self.session.as_mut() else {
            // Statements die with their session.
            return Ok(());
        };
        match session.finalize(id).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(f.into_error()),
            Err(e) => {
                self.lose_session();
                Err(e.into_inner())
            }
        }
    }
}
