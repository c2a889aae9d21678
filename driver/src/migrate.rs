//! `Migrate` and `MigrateDatabase`, so `sqlx::migrate!().run(&pool)` works.
//!
//! dqlite has no `CREATE DATABASE`/`DROP DATABASE`: a database comes into existence on its
//! first write and cannot be deleted through the protocol. So, for a `dqlite://` URL:
//!
//! * `create_database` commits a write (creates and drops a scratch table in one transaction)
//!   so the database exists on the cluster; calling it again is harmless.
//! * `database_exists` is true once the database's schema was ever changed
//!   (`PRAGMA schema_version > 0`): by `create_database`, a migration or any DDL. (dqlite
//!   initialises every database it OPENs, so the page count says nothing.)
//! * `drop_database` (and `force_drop_database`) **empties** the database: drops every view,
//!   trigger, table (with its indexes) in one transaction and resets `user_version`. The
//!   empty database remains, so `database_exists` stays true afterwards.
//!
//! Migrations run like sqlx-sqlite's: each in a transaction (unless `-- no-transaction`),
//! recorded in `_sqlx_migrations`. A migration file may hold many statements, including ones
//! that return rows (they are read and discarded).
//!
//! # The migration lock
//!
//! Several application instances may start together and each run `sqlx::migrate!().run(&pool)`
//! on the same database. dqlite has no advisory locks, so `lock()` takes a **lease row** in
//! `_sqlx_dqlite_migration_lock` (one row: holder id, expiry in the leader's clock):
//!
//! ```text
//!  lock():   CREATE TABLE IF NOT EXISTS …; INSERT … ON CONFLICT DO UPDATE … WHERE expired
//!            (1 row changed = ours; else wait 50–500 ms and try again, up to 10 minutes;
//!             "database is locked" from concurrent writers is retried the same way)
//!  apply():  renews the lease before each migration (fails if it was lost)
//!  unlock(): DELETE … WHERE holder = us
//! ```
//!
//! The lease ([`MIGRATION_LOCK_LEASE`]) bounds how long a crashed holder blocks the others.
//! The lock is also released when a migration fails, and when sqlx gives up half-way (its
//! migrator returns early without `unlock()`, or its future is dropped): the connection
//! releases it on its next request or pool check. Every instance therefore succeeds, and each
//! migration is applied exactly once.

use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use sqlx_core::connection::{ConnectOptions, Connection};
use sqlx_core::migrate::{AppliedMigration, Migrate, MigrateDatabase, MigrateError, Migration};
use sqlx_core::query::query;
use sqlx_core::query_as::query_as;
use sqlx_core::query_scalar::query_scalar;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_core::Error;

use crate::connection::Started;
use crate::{Dqlite, DqliteConnectOptions, DqliteConnection};

/// How long a migration lock stays valid without renewal (renewed before each migration).
pub const MIGRATION_LOCK_LEASE: Duration = Duration::from_secs(60);
/// How long `lock()` waits for another instance's migrations before giving up.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(600);
const LOCK_TABLE: &str = "_sqlx_dqlite_migration_lock";
/// The leader's clock in Unix milliseconds (evaluated by SQLite on the leader).
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// A process-unique holder id for the migration lock.
fn new_holder() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn is_busy(e: &Error) -> bool {
    crate::dqlite_error(e).is_some_and(|d| d.is_busy())
}

impl DqliteConnection {
    /// Take the migration lock (see the module docs), waiting for another holder.
    async fn take_migration_lock(&mut self) -> Result<(), Error> {
        let holder = new_holder();
        let deadline = Instant::now() + MIGRATION_LOCK_WAIT;
        let mut pause = Duration::from_millis(50);
        let upsert = format!(
            "INSERT INTO {LOCK_TABLE} (id, holder, expires_at) VALUES (1, ?1, {NOW_MS} + ?2) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE {LOCK_TABLE}.expires_at < {NOW_MS} OR {LOCK_TABLE}.holder = excluded.holder"
        );
        loop {
            let attempt = async {
                self.exec_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), \
                     holder TEXT NOT NULL, expires_at INTEGER NOT NULL)"
                ))
                .await?;
                let lease_ms = MIGRATION_LOCK_LEASE.as_millis() as i64;
                // Recorded before the request goes out: if this future is dropped after the
                // server took the lock for us, the connection still releases it.
                self.migration_lock = Some(holder.clone());
                let r = query(AssertSqlSafe(upsert.clone())).bind(&holder).bind(lease_ms).execute(&mut *self).await;
                let taken = matches!(&r, Ok(r) if r.rows_affected() == 1);
                if !taken {
                    self.migration_lock = None;
                }
                r.map(|_| taken)
            };
            match attempt.await {
                Ok(true) => {
                    tracing::info!(holder, database = %self.options.database, "took the migration lock");
                    return Ok(());
                }
                Ok(false) => tracing::debug!("migration lock held by another instance; waiting"),
                Err(e) if is_busy(&e) => tracing::debug!(error = %e, "migration lock: database busy; retrying"),
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(Error::Protocol(format!(
                    "timed out after {MIGRATION_LOCK_WAIT:?} waiting for the migration lock ({LOCK_TABLE})"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Renew the lease of the migration lock this connection holds; fails if it was lost.
    async fn renew_migration_lock(&mut self) -> Result<(), Error> {
        let Some(holder) = self.migration_lock.clone() else {
            return Ok(());
        };
        let r = query(AssertSqlSafe(format!(
            "UPDATE {LOCK_TABLE} SET expires_at = {NOW_MS} + ?2 WHERE id = 1 AND holder = ?1"
        )))
        .bind(&holder)
        .bind(MIGRATION_LOCK_LEASE.as_millis() as i64)
        .execute(&mut *self)
        .await?;
        if r.rows_affected() != 1 {
            self.migration_lock = None;
            return Err(Error::Protocol(format!(
                "the migration lock's lease ({MIGRATION_LOCK_LEASE:?}) expired and another instance took it"
            )));
        }
        Ok(())
    }

    /// Release the migration lock if this connection holds it (best effort on failure paths).
    pub(crate) async fn release_migration_lock(&mut self) -> Result<(), Error> {
        let Some(holder) = self.migration_lock.take() else {
            return Ok(());
        };
        query(AssertSqlSafe(format!("DELETE FROM {LOCK_TABLE} WHERE id = 1 AND holder = ?1")))
            .bind(&holder)
            .execute(&mut *self)
            .await?;
        tracing::info!(holder, "released the migration lock");
        Ok(())
    }

    /// End a `Migrate` step: on its failure the lock (if held) is released before the error
    /// is returned (sqlx's migrator returns early without `unlock()`).
    async fn end_step<T>(&mut self, result: Result<T, MigrateError>) -> Result<T, MigrateError> {
        self.in_migrate_step = false;
        if result.is_err() {
            if let Err(e) = self.release_migration_lock().await {
                tracing::warn!(error = %e, "could not release the migration lock after a failure");
            }
        }
        result
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl DqliteConnection {
    /// Run SQL without arguments, statement by statement (rows a statement returns are read and
    /// discarded).
    pub(crate) async fn exec_batch(&mut self, sql: &str) -> Result<(), Error> {
        for piece in crate::split::split(sql) {
            if let Started::Rows(mut batch) = self.run(piece.sql, &[], false).await? {
                // A statement that returns rows (e.g. a PRAGMA in a migration): read them all.
                while !batch.done {
                    batch = self.next_batch().await?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn drop_all_objects(&mut self) -> Result<(), Error> {
        let objects: Vec<(String, String)> = query_as(
            "SELECT type, name FROM sqlite_master \
             WHERE type IN ('view', 'trigger', 'table') AND name NOT LIKE 'sqlite_%' \
             ORDER BY CASE type WHEN 'view' THEN 0 WHEN 'trigger' THEN 1 ELSE 2 END",
        )
        .fetch_all(&mut *self)
        .await?;
        let mut sql = String::from("PRAGMA foreign_keys = OFF; BEGIN;");
        for (ty, name) in &objects {
            let kind = match ty.as_str() {
                "view" => "VIEW",
                "trigger" => "TRIGGER",
                _ => "TABLE",
            };
            sql.push_str(&format!(" DROP {kind} IF EXISTS {};", quote_ident(name)));
        }
        sql.push_str(" PRAGMA user_version = 0; COMMIT; PRAGMA foreign_keys = ON;");
        let result = self.exec_batch(&sql).await;
        if result.is_err() {
            // Leave no transaction open on the connection.
            let _ = self.exec_batch("ROLLBACK; PRAGMA foreign_keys = ON;").await;
        }
        tracing::info!(objects = objects.len(), database = %self.options.database,
            "dropped all schema objects");
        result
    }
}

impl MigrateDatabase for Dqlite {
    async fn create_database(url: &str) -> Result<(), Error> {
        let opts: DqliteConnectOptions = url.parse()?;
        let mut conn = opts.connect().await?;
        conn.exec_batch(
            "BEGIN; CREATE TABLE IF NOT EXISTS _sqlx_dqlite_create (x INTEGER); \
             DROP TABLE _sqlx_dqlite_create; COMMIT;",
        )
        .await?;
        conn.close().await
    }

    async fn database_exists(url: &str) -> Result<bool, Error> {
        let opts: DqliteConnectOptions = url.parse()?;
        let mut conn = opts.connect().await?;
        let version: i64 = query_scalar("PRAGMA schema_version").fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(version > 0)
    }

    async fn drop_database(url: &str) -> Result<(), Error> {
        let opts: DqliteConnectOptions = url.parse()?;
        let mut conn = opts.connect().await?;
        conn.drop_all_objects().await?;
        conn.close().await
    }

    async fn force_drop_database(url: &str) -> Result<(), Error> {
        // There are no server-side sessions to terminate: same as drop.
        Self::drop_database(url).await
    }
}

impl Migrate for DqliteConnection {
    fn create_schema_if_not_exists<'e>(&'e mut self, schema_name: &'e str) -> BoxFuture<'e, Result<(), MigrateError>> {
        Box::pin(async move {
            let version: Option<i64> =
                query_scalar(AssertSqlSafe(format!("PRAGMA {}.schema_version", quote_ident(schema_name))))
                    .fetch_optional(&mut *self)
                    .await?;
            if version.is_some() {
                return Ok(());
            }
            Err(MigrateError::CreateSchemasNotSupported(format!(
                "cannot create schema {schema_name}: dqlite has one database per connection"
            )))
        })
    }

    fn ensure_migrations_table<'e>(&'e mut self, table_name: &'e str) -> BoxFuture<'e, Result<(), MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                self.exec_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {table_name} (
        version BIGINT PRIMARY KEY,
        description TEXT NOT NULL,
        installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        success BOOLEAN NOT NULL,
        checksum BLOB NOT NULL,
        execution_time BIGINT NOT NULL
    );"
                ))
                .await?;
                Ok(())
            }
            .await;
            self.end_step(result).await
        })
    }

    fn dirty_version<'e>(&'e mut self, table_name: &'e str) -> BoxFuture<'e, Result<Option<i64>, MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                let row: Option<(i64,)> = query_as(AssertSqlSafe(format!(
                    "SELECT version FROM {table_name} WHERE success = 0 ORDER BY version LIMIT 1"
                )))
                .fetch_optional(&mut *self)
                .await?;
                Ok(row.map(|r| r.0))
            }
            .await;
            self.end_step(result).await
        })
    }

    fn list_applied_migrations<'e>(
        &'e mut self,
        table_name: &'e str,
    ) -> BoxFuture<'e, Result<Vec<AppliedMigration>, MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                let rows: Vec<(i64, Vec<u8>)> =
                    query_as(AssertSqlSafe(format!("SELECT version, checksum FROM {table_name} ORDER BY version")))
                        .fetch_all(&mut *self)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(version, checksum)| AppliedMigration { version, checksum: checksum.into() })
                    .collect())
            }
            .await;
            self.end_step(result).await
        })
    }

    fn lock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = self.take_migration_lock().await.map_err(MigrateError::from);
            self.end_step(result).await
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = false;
            self.release_migration_lock().await?;
            Ok(())
        })
    }

    fn apply<'e>(
        &'e mut self,
        table_name: &'e str,
        migration: &'e Migration,
    ) -> BoxFuture<'e, Result<Duration, MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                self.renew_migration_lock().await?;
                let start = Instant::now();
                run_migration(self, table_name, migration, Direction::Apply).await?;
                let elapsed = start.elapsed();
                let nanos = i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX);
                query(AssertSqlSafe(format!("UPDATE {table_name} SET execution_time = ?1 WHERE version = ?2")))
                    .bind(nanos)
                    .bind(migration.version)
                    .execute(&mut *self)
                    .await?;
                Ok(elapsed)
            }
            .await;
            self.end_step(result).await
        })
    }

    fn revert<'e>(
        &'e mut self,
        table_name: &'e str,
        migration: &'e Migration,
    ) -> BoxFuture<'e, Result<Duration, MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                self.renew_migration_lock().await?;
                let start = Instant::now();
                run_migration(self, table_name, migration, Direction::Revert).await?;
                Ok(start.elapsed())
            }
            .await;
            self.end_step(result).await
        })
    }

    fn skip<'e>(
        &'e mut self,
        table_name: &'e str,
        migration: &'e Migration,
    ) -> BoxFuture<'e, Result<(), MigrateError>> {
        Box::pin(async move {
            self.in_migrate_step = true;
            let result = async {
                record_migration(self, table_name, migration).await?;
                Ok(())
            }
            .await;
            self.end_step(result).await
        })
    }
}

async fn record_migration(conn: &mut DqliteConnection, table_name: &str, migration: &Migration) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "INSERT INTO {table_name} (version, description, success, checksum, execution_time) \
         VALUES (?1, ?2, TRUE, ?3, -1)"
    )))
    .bind(migration.version)
    .bind(&*migration.description)
    .bind(&*migration.checksum)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether a migration's SQL moves the schema forward (and records the version) or back
/// (and forgets it).
#[derive(Clone, Copy)]
enum Direction {
    Apply,
    Revert,
}

/// Run `migration` in `direction`, inside one transaction unless the migration says
/// `-- no-transaction`.
async fn run_migration(
    conn: &mut DqliteConnection,
    table_name: &str,
    migration: &Migration,
    direction: Direction,
) -> Result<(), MigrateError> {
    if migration.no_tx {
        migration_steps(conn, table_name, migration, direction).await
    } else {
        let mut tx = conn.begin().await?;
        migration_steps(&mut tx, table_name, migration, direction).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The migration's SQL, then the bookkeeping row: inserted on apply, deleted on revert.
async fn migration_steps(
    conn: &mut DqliteConnection,
    table_name: &str,
    migration: &Migration,
    direction: Direction,
) -> Result<(), MigrateError> {
    conn.exec_batch(migration.sql.as_str()).await.map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
    match direction {
        Direction::Apply => record_migration(conn, table_name, migration).await?,
        Direction::Revert => {
            query(AssertSqlSafe(format!("DELETE FROM {table_name} WHERE version = ?1")))
                .bind(migration.version)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("t"), "\"t\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
