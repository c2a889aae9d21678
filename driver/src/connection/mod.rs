//! A connection to the leader of a dqlite cluster.
//!
//! The connection owns a [`Session`] (a socket with the database OPENed on the leader), or none
//! after the connection was lost. Before every request it makes sure the session is usable:
//!
//! 1. a response still owed from an abandoned request or dropped result stream is drained
//!    (`INTERRUPT` + read up to `EMPTY` for a query);
//! 2. an idle socket the server closed (e.g. the leader was killed) is detected without
//!    blocking, before anything is sent (a non-blocking `MSG_PEEK`; one that found the socket
//!    open less than 1 ms earlier, e.g. `ping()`'s on acquiring from the pool, is trusted);
//! 3. with no session and outside a transaction, the leader is searched again and the database
//!    re-opened (prepared statements are re-prepared on demand); inside a transaction the
//!    transaction is reported lost instead;
//! 4. rollbacks queued by dropped [`Transaction`](sqlx_core::transaction::Transaction)s run.
//!
//! Retries follow one rule: only a request the server certainly did not run is retried (it was
//! not completely written, or the server answered "not leader"/"no database opened"), and only
//! outside a transaction.

mod establish;
mod execute;
mod executor;
#[cfg(test)]
mod tests;

use std::fmt::{self, Debug, Formatter};
use std::future::Future;
use std::sync::{Arc, OnceLock};

use dqlite_wire::StmtId;
use sqlx_core::common::StatementCache;
use sqlx_core::connection::Connection;
use sqlx_core::ext::ustr::UStr;
use sqlx_core::transaction::Transaction;
use sqlx_core::Error;
use sqlx_core::HashMap;

use crate::error::DqliteError;
use crate::protocol::session::Session;
use crate::transaction::InFlight;
use crate::{Dqlite, DqliteColumn, DqliteConnectOptions};

pub(crate) use execute::Started;

/// Result columns of a statement, with the name → ordinal map.
pub(crate) type StatementColumns = (Arc<Vec<DqliteColumn>>, Arc<HashMap<UStr, usize>>);

/// A prepared statement on the current session.
#[derive(Debug, Clone)]
pub(crate) struct CachedStatement {
    pub id: StmtId,
    pub params: usize,
    /// Learned on first execution: does the statement return columns?
    pub returns_rows: Option<bool>,
    /// Learned when it first returns rows; shared with the [`DqliteStatement`](crate::DqliteStatement)s
    /// handed out for it, whose `columns()` then show them.
    pub columns: Arc<OnceLock<StatementColumns>>,
}

/// A connection to a dqlite cluster's leader. See the [crate docs](crate) for the data flow.
pub struct DqliteConnection {
    pub(crate) options: DqliteConnectOptions,
    pub(crate) session: Option<Session>,
    /// Prepared statements of the current session, by SQL.
    pub(crate) statements: StatementCache<CachedStatement>,
    /// Whether argument-less SQL returns rows (QUERY_SQL vs EXEC_SQL), by SQL.
    pub(crate) sql_returns_rows: StatementCache<bool>,
    pub(crate) transaction_depth: usize,
    /// The session died inside a transaction: the transaction is gone on the server.
    pub(crate) transaction_lost: bool,
    /// Levels whose rollback was queued by dropped transactions, run before the next request.
    pub(crate) pending_rollbacks: Vec<usize>,
    /// A transaction-control statement whose reply has not been read (its future may have
    /// been dropped); settled before the next request.
    pub(crate) control: Option<InFlight>,
    /// `begin()` failed at this depth: the dropped `Transaction`'s `start_rollback` must not
    /// roll back the level below.
    pub(crate) begin_failed_at: Option<usize>,
    /// Holder id of the migration lock this connection holds (see [`crate::migrate`]).
    pub(crate) migration_lock: Option<String>,
    /// A `Migrate` method is running: its requests do not release the migration lock.
    pub(crate) in_migrate_step: bool,
    /// `ping()` skips its round trip if the leader answered more recently than this.
    pub(crate) ping_fresh: std::time::Duration,
}

impl Debug for DqliteConnection {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.debug_struct("DqliteConnection")
            .field("database", &self.options.database)
            .field("leader", &self.session.as_ref().map(|s| s.leader().to_string()))
            .field("transaction_depth", &self.transaction_depth)
            .field("cached_statements", &self.statements.len())
            .finish()
    }
}

impl DqliteConnection {
    /// The address of the leader this connection currently talks to (`None` after the
    /// connection was lost; the next request reconnects).
    pub fn leader_address(&self) -> Option<String> {
        self.session.as_ref().map(|s| s.leader().to_string())
    }

    /// Whether this connection currently reaches its leader through an in-process pipe (an
    /// embedded node of this process that leads; no socket) rather than over TCP. `false` after
    /// the connection was lost.
    pub fn is_in_process(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.is_in_process())
    }

    /// Transaction depth as the server sees it: 0 outside a transaction, 1 inside one, more
    /// inside savepoints (cancelled control statements are settled by the next use first).
    pub fn transaction_depth(&self) -> usize {
        self.transaction_depth
    }

    /// The options this connection was made with.
    pub fn options(&self) -> &DqliteConnectOptions {
        &self.options
    }

    /// Drop the session after a connection failure or a "not leader" answer.
    pub(crate) fn lose_session(&mut self) {
        if let Some(s) = self.session.take() {
            tracing::info!(leader = %s.leader(), in_transaction = self.transaction_depth > 0,
                "dropping the connection to the dqlite leader");
        }
        self.statements.clear();
        // The server discards an open transaction with the connection.
        self.pending_rollbacks.clear();
        if self.transaction_depth > 0 {
            self.transaction_lost = true;
        }
    }

    pub(crate) fn transaction_lost_error(&self) -> Error {
        Error::Database(Box::new(DqliteError::transaction_lost(
            "the connection to the dqlite leader was lost inside a transaction; the \
             transaction was not committed — roll it back and retry",
        )))
    }
}

impl Connection for DqliteConnection {
    type Database = Dqlite;
    type Options = DqliteConnectOptions;

    async fn close(mut self) -> Result<(), Error> {
        if let Some(s) = self.session.take() {
            s.close().await;
        }
        Ok(())
    }

    fn close_hard(self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        // Dropping the socket closes it.
        drop(self);
        async { Ok(()) }
    }

    /// Checks that the connection still talks to the leader: drains abandoned results, runs
    /// queued rollbacks, checks the socket is open, then runs `SELECT 1` (which fails with
    /// "not leader" on a deposed leader). Does not reconnect: a pool discards a connection
    /// whose ping fails.
    ///
    /// The `SELECT 1` round trip is skipped when the leader answered on this connection less
    /// than a second ago (sqlx pings on every pool release and acquire; that would triple the
    /// round trips of a pooled query). A leader deposed within that second is still handled:
    /// its "not leader" answer to the next request is retried on the new leader outside a
    /// transaction, and a closed socket is always detected (the socket check is shared with
    /// the one before the next request when they are less than 1 ms apart).
    async fn ping(&mut self) -> Result<(), Error> {
        self.flush_pending().await?;
        if self.migration_lock.is_some() {
            // Back in the pool with the migration lock: the migrator gave up or was dropped.
            self.in_migrate_step = false;
            self.release_migration_lock().await?;
        }
        let alive = self.session.as_mut().is_some_and(Session::is_idle_alive_recent);
        let fresh = self.session.as_ref().is_some_and(|s| s.since_last_response() < self.ping_fresh);
        if alive && fresh {
            return Ok(());
        }
        let session = match self.session.as_mut() {
            Some(s) if alive => s,
            _ => {
                self.lose_session();
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "connection to the dqlite leader is closed",
                )));
            }
        };
        match session.query(crate::protocol::session::Target::Sql("SELECT 1"), &[]).await {
            Ok(Ok(batch)) if batch.done => Ok(()),
            Ok(Ok(_)) => Err(Error::Protocol("SELECT 1 returned more than one batch".into())),
            Ok(Err(f)) => {
                if f.is_not_leader() {
                    self.lose_session();
                }
                Err(f.into_error())
            }
            Err(e) => {
                self.lose_session();
                Err(e.into_inner())
            }
        }
    }

    fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_, Dqlite>, Error>> + Send + '_ {
        Transaction::begin(self, None)
    }

    fn cached_statements_size(&self) -> usize {
        self.statements.len()
    }

    async fn clear_cached_statements(&mut self) -> Result<(), Error> {
        while let Some(stmt) = self.statements.remove_lru() {
            self.finalize(stmt.id).await?;
        }
        Ok(())
    }

    fn shrink_buffers(&mut self) {}

    fn flush(&mut self) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.flush_pending()
    }

    fn should_flush(&self) -> bool {
        !self.pending_rollbacks.is_empty()
            || self.control.is_some()
            || self.session.as_ref().is_some_and(Session::needs_recovery)
    }
}
