//! Transactions: `BEGIN`/`COMMIT`/`ROLLBACK`, nested savepoints, rollback on drop, and what
//! happens when any of those is cancelled.

use sqlx_core::sql_str::SqlStr;
use sqlx_core::transaction::{
    begin_ansi_transaction_sql, commit_ansi_transaction_sql, rollback_ansi_transaction_sql, TransactionManager,
};
use sqlx_core::Error;

use crate::{Dqlite, DqliteConnection};

/// Transaction manager for dqlite.
///
/// Depth 0 → `BEGIN`; deeper → `SAVEPOINT _sqlx_savepoint_N`. Commit → `COMMIT` /
/// `RELEASE SAVEPOINT`; rollback → `ROLLBACK` / `ROLLBACK TO SAVEPOINT`. A dropped transaction
/// queues its rollback, which runs before the connection's next request (or in the pool's
/// release check).
///
/// A custom `begin_with` statement must open a transaction: the driver checks (a `BEGIN` that
/// fails inside a transaction) and otherwise returns [`Error::BeginFailed`].
///
/// Cancellation: every control statement is recorded as *in flight* until its reply is read.
/// If the future is dropped after the request went out, the next use of the connection (or
/// the pool's release check) reads the reply first and settles what the server did: a `BEGIN`
/// that succeeded unacknowledged is rolled back (nobody holds its transaction), a `COMMIT`
/// that succeeded is not rolled back by the dropped transaction, one that failed is. So the
/// depth the driver reports always matches the server.
///
/// Failover: if the connection to the leader is lost inside a transaction, the transaction is
/// gone on the server (nothing of it was committed): statements fail with a "transaction lost"
/// [`DqliteError`](crate::DqliteError), `rollback()` succeeds, `commit()` fails. If it is lost
/// *during* `COMMIT`, or the server reports leadership lost, the outcome is unknown and
/// `commit()` fails with [`DqliteError::is_outcome_unknown`](crate::DqliteError::is_outcome_unknown);
/// it is never replayed.
#[derive(Debug)]
pub struct DqliteTransactionManager;

/// SQLite's message when `BEGIN` runs inside a transaction.
const NESTED_BEGIN: &str = "cannot start a transaction within a transaction";
/// SQLite's message when `ROLLBACK` runs outside a transaction.
pub(crate) const NO_TRANSACTION: &str = "no transaction is active";

/// A transaction-control statement, as recorded while it is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlKind {
    /// `BEGIN` / `SAVEPOINT` (or a custom begin statement) opening level `depth + 1`.
    Begin,
    /// The `BEGIN` that checks whether a custom begin statement opened a transaction.
    BeginCheck,
    /// `COMMIT` / `RELEASE` of level `depth`.
    Commit,
    /// `ROLLBACK` / `ROLLBACK TO` of level `depth` by `rollback()`.
    Rollback,
    /// A queued rollback of level `depth` (its level was already left).
    QueuedRollback,
}

/// A control statement whose reply has not been read yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    pub kind: ControlKind,
    /// Transaction depth when it was sent (for `QueuedRollback`: the level rolled back).
    pub depth: usize,
    /// `start_rollback` calls made while it was in flight (the dropped `Transaction`s).
    pub abandoned: usize,
}

/// What the server did with an in-flight control statement.
#[derive(Debug)]
pub(crate) enum ControlOutcome<'a> {
    /// It was never (completely) sent.
    NotSent,
    /// It succeeded.
    Done,
    /// It failed with this message.
    Failed(&'a str),
    /// Unknown: the connection was lost (the server discards an open transaction with it).
    Unknown,
}

impl TransactionManager for DqliteTransactionManager {
    type Database = Dqlite;

    async fn begin(conn: &mut DqliteConnection, statement: Option<SqlStr>) -> Result<(), Error> {
        conn.begin_failed_at = None;
        let depth = conn.transaction_depth;
        let custom = statement.is_some();
        let sql = match statement {
            None => begin_ansi_transaction_sql(depth),
            Some(_) if depth != 0 => {
                conn.begin_failed_at = Some(depth);
                return Err(Error::InvalidSavePointStatement);
            }
            Some(s) => s,
        };
        if let Err(e) = conn.exec_control(sql.as_str(), ControlKind::Begin).await {
            // A custom statement that returns rows ran (EXEC reports SQLITE_ROW): whether it
            // opened a transaction is checked below.
            let returned_rows =
                custom && crate::dqlite_error(&e).is_some_and(|d| d.code_u64() == dqlite_wire::codes::SQLITE_ROW);
            if !returned_rows {
                conn.begin_failed_at = Some(depth);
                return Err(e);
            }
        }
        if custom {
            // Did it open a transaction? A second BEGIN fails inside one and opens one outside.
            match conn.exec_control("BEGIN", ControlKind::BeginCheck).await {
                Err(e) if e.as_database_error().is_some_and(|d| d.message().contains(NESTED_BEGIN)) => {}
                other => {
                    // Not in a transaction (or the check itself failed): roll back whatever is
                    // open and report the begin as failed.
                    conn.pending_rollbacks.push(1);
                    conn.flush_pending().await?;
                    conn.begin_failed_at = Some(depth);
                    return Err(match other {
                        Ok(()) => Error::BeginFailed,
                        Err(e) => e,
                    });
                }
            }
        }
        conn.transaction_depth = depth + 1;
        Ok(())
    }

    async fn commit(conn: &mut DqliteConnection) -> Result<(), Error> {
        let depth = conn.transaction_depth;
        if depth == 0 {
            return Ok(());
        }
        if conn.transaction_lost {
            return Err(conn.transaction_lost_error());
        }
        let sql = commit_ansi_transaction_sql(depth);
        match conn.exec_control(sql.as_str(), ControlKind::Commit).await {
            Ok(()) => {
                leave_level(conn, depth);
                Ok(())
            }
            Err(e) => {
                if depth == 1 && conn.session.is_none() {
                    // The transaction is over on the server either way (committed or not:
                    // the error says which is known).
                    conn.transaction_depth = 0;
                    conn.transaction_lost = false;
                }
                Err(e)
            }
        }
    }

    async fn rollback(conn: &mut DqliteConnection) -> Result<(), Error> {
        let depth = conn.transaction_depth;
        if depth == 0 {
            return Ok(());
        }
        if !conn.transaction_lost {
            let sql = rollback_ansi_transaction_sql(depth);
            if let Err(e) = conn.exec_control(sql.as_str(), ControlKind::Rollback).await {
                if !conn.transaction_lost {
                    return Err(e);
                }
                // Lost the connection while rolling back: the server discards the
                // transaction with it, which is what we asked for.
            }
        }
        leave_level(conn, depth);
        Ok(())
    }

    fn start_rollback(conn: &mut DqliteConnection) {
        if let Some(in_flight) = conn.control.as_mut() {
            // The transaction was dropped while its BEGIN/COMMIT/ROLLBACK was in flight: what
            // to do depends on the reply, which the next use of the connection reads.
            in_flight.abandoned += 1;
            return;
        }
        let depth = conn.transaction_depth;
        if conn.begin_failed_at.take() == Some(depth) {
            // The `Transaction` whose begin failed: its level was never entered.
            return;
        }
        if depth == 0 {
            return;
        }
        if !conn.transaction_lost && conn.session.is_some() {
            conn.pending_rollbacks.push(depth);
        }
        leave_level(conn, depth);
    }

    fn get_transaction_depth(conn: &DqliteConnection) -> usize {
        conn.transaction_depth
    }
}

/// Leave transaction level `depth`; leaving the outermost level also clears the "lost" mark
/// (a new transaction starts clean).
fn leave_level(conn: &mut DqliteConnection, depth: usize) {
    conn.transaction_depth = depth - 1;
    if conn.transaction_depth == 0 {
        conn.transaction_lost = false;
    }
}

/// Queue the rollback of level `depth` (the current innermost) and leave it.
fn queue_rollback(conn: &mut DqliteConnection, depth: usize) {
    if depth == 0 {
        return;
    }
    if !conn.transaction_lost && conn.session.is_some() {
        conn.pending_rollbacks.push(depth);
    }
    leave_level(conn, depth);
}

/// Apply what the server did with a control statement whose future was dropped.
pub(crate) fn settle(conn: &mut DqliteConnection, in_flight: InFlight, outcome: ControlOutcome<'_>) {
    use ControlKind::*;
    use ControlOutcome::*;
    let d = in_flight.depth;
    tracing::debug!(?in_flight, ?outcome, "settling a cancelled transaction-control statement");
    // Dropped transactions beyond the one that owned the in-flight statement (outer levels).
    let mut extra = in_flight.abandoned.saturating_sub(1);
    match (in_flight.kind, outcome) {
        // Level d+1 is open but nobody holds it: roll it back.
        (Begin, Done) => conn.pending_rollbacks.push(d + 1),
        (Begin, NotSent | Failed(_) | Unknown) => {}
        // Whatever the check found, the custom begin never completed: roll back what is open.
        (BeginCheck, NotSent | Done | Failed(_)) => conn.pending_rollbacks.push(1),
        (BeginCheck, Unknown) => {}
        (Commit | Rollback, Done) => leave_level(conn, d),
        (Commit, NotSent | Failed(_)) | (Rollback, NotSent) => {
            if in_flight.abandoned > 0 {
                queue_rollback(conn, d);
            } else {
                // Called outside a `Transaction`: level d is still open for its caller.
                extra = in_flight.abandoned;
            }
        }
        (Rollback, Failed(_)) => {
            leave_level(conn, d);
            conn.lose_session();
        }
        (Commit | Rollback, Unknown) => {
            // The server discarded (or committed) the transaction with the connection.
            conn.transaction_depth = d;
            conn.transaction_lost = true;
            leave_level(conn, d);
        }
        (QueuedRollback, NotSent) => conn.pending_rollbacks.insert(0, d),
        (QueuedRollback, Done | Unknown) => {}
        (QueuedRollback, Failed(message)) => {
            if !message.contains(NO_TRANSACTION) {
                // The server may still be inside the transaction the driver left.
                conn.lose_session();
            }
        }
    }
    for _ in 0..extra {
        let depth = conn.transaction_depth;
        queue_rollback(conn, depth);
    }
}
