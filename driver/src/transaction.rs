//! Transactions: `BEGIN`/`COMMIT`/`ROLLBACK`, nested savepoints, rollback on drop.

use sqlx_core::sql_str::SqlStr;
use sqlx_core::transaction::{
    begin_ansi_transaction_sql, commit_ansi_transaction_sql, rollback_ansi_transaction_sql,
    TransactionManager,
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
/// Failover: if the connection to the leader is lost inside a transaction, the transaction is
/// gone on the server (nothing of it was committed): statements fail with a "transaction lost"
/// [`DqliteError`](crate::DqliteError), `rollback()` succeeds, `commit()` fails. If it is lost
/// *during* `COMMIT`, or the server reports leadership lost, the outcome is unknown and
/// `commit()` fails with [`DqliteError::is_outcome_unknown`](crate::DqliteError::is_outcome_unknown);
/// it is never replayed.
#[derive(Debug)]
pub struct DqliteTransactionManager;

impl TransactionManager for DqliteTransactionManager {
    type Database = Dqlite;

    async fn begin(conn: &mut DqliteConnection, statement: Option<SqlStr>) -> Result<(), Error> {
        let depth = conn.transaction_depth;
        let sql = match statement {
            None => begin_ansi_transaction_sql(depth),
            Some(_) if depth != 0 => return Err(Error::InvalidSavePointStatement),
            Some(s) => s,
        };
        conn.exec_control(sql.as_str(), false).await?;
        conn.transaction_depth += 1;
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
        match conn.exec_control(sql.as_str(), depth == 1).await {
            Ok(()) => {
                conn.transaction_depth = depth - 1;
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
            if let Err(e) = conn.exec_control(sql.as_str(), false).await {
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
        let depth = conn.transaction_depth;
        if depth == 0 {
            return;
        }
        if !conn.transaction_lost && conn.session.is_some() {
            conn.pending_rollbacks
                .push(rollback_ansi_transaction_sql(depth).as_str().to_owned());
        }
        leave_level(conn, depth);
    }

    fn get_transaction_depth(conn: &DqliteConnection) -> usize {
        conn.transaction_depth
    }
}

/// Leave transaction level `depth` after a rollback; leaving the outermost level also clears
/// the "lost" mark (a new transaction starts clean).
fn leave_level(conn: &mut DqliteConnection, depth: usize) {
    conn.transaction_depth = depth - 1;
    if conn.transaction_depth == 0 {
        conn.transaction_lost = false;
    }
}
