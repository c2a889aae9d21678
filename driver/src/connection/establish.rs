//! Opening a connection: leader discovery, CLIENT, OPEN.

use sqlx_core::common::StatementCache;
use sqlx_core::Error;

use super::DqliteConnection;
use crate::protocol::discovery::connect_leader;
use crate::DqliteConnectOptions;

/// `ping()` trusts a leader that answered more recently than this (see `Connection::ping`).
const PING_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Capacity of the per-connection "does this SQL return rows?" memo for argument-less SQL.
const SQL_KIND_CACHE_CAPACITY: usize = 256;

impl DqliteConnection {
    pub(crate) async fn establish(options: &DqliteConnectOptions) -> Result<Self, Error> {
        let session = connect_leader(options).await?;
        Ok(DqliteConnection {
            options: options.clone(),
            session: Some(session),
            statements: StatementCache::new(options.statement_cache_capacity),
            sql_returns_rows: StatementCache::new(SQL_KIND_CACHE_CAPACITY),
            transaction_depth: 0,
            transaction_lost: false,
            pending_rollbacks: Vec::new(),
            control: None,
            begin_failed_at: None,
            migration_lock: None,
            in_migrate_step: false,
            ping_fresh: PING_FRESH,
        })
    }

    /// Find the leader again and re-open the database (outside a transaction only).
    pub(crate) async fn reconnect(&mut self) -> Result<(), Error> {
        debug_assert!(self.session.is_none());
        debug_assert_eq!(self.transaction_depth, 0);
        tracing::info!(database = %self.options.database, "reconnecting to the dqlite leader");
        self.statements.clear();
        let session = connect_leader(&self.options).await?;
        self.session = Some(session);
        self.transaction_lost = false;
        Ok(())
    }
}
