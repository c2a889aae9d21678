//! **sqlx-dqlite**: an [sqlx](https://docs.rs/sqlx) driver for [dqlite], the Raft-replicated
//! SQLite, speaking dqlite's client wire protocol v1 over TCP.
//!
//! Point existing sqlx code at a dqlite cluster by changing its URL:
//! `dqlite://HOST:PORT/DATABASE?peers=HOST:PORT,HOST:PORT` (see [`DqliteConnectOptions`] for
//! every option). The driver finds the cluster's leader, opens the database there, and keeps
//! following the leader when it changes.
//!
//! # What it does not do
//!
//! * **No compile-time checked queries.** sqlx's `query!`/`query_as!` macros only know the
//!   drivers built into sqlx; they cannot know a third-party driver. Use the functions
//!   (`sqlx::query`, `query_as`, `query_scalar`, `#[derive(FromRow)]`).
//! * **No TLS** (dqlite terminates TLS outside the protocol), no authentication (dqlite has
//!   none).
//! * **No blind replays.** A write whose outcome is unknown (leadership lost during `COMMIT`,
//!   or the connection dropped after the request was sent) is reported as such
//!   ([`DqliteError::is_outcome_unknown`], [`is_outcome_unknown`]); deciding what to do is the
//!   application's job.
//! * **No SQL parsing.** Whether a statement returns rows is learned from the server (see
//!   below), never guessed from its text.
//! * Reads and writes all go to the leader (dqlite serves no follower reads).
//! * The `sqlx` CLI does not know this driver; the facade crate ships a CLI built on
//!   `sqlx-cli` for `migrate`/`database` commands on `dqlite://` URLs.
//!
//! # Data flow
//!
//! ```text
//!  sqlx::query(..).fetch(&pool) / Transaction / migrate!()
//!            │
//!  DqliteConnection ── statement cache (SQL → stmt id, "returns rows?")
//!            │  Executor: PREPARE once, then QUERY (rows) or EXEC (no rows);
//!            │            EXEC_SQL / QUERY_SQL for SQL without arguments
//!            ▼
//!  protocol::Session ── one request in flight; ROWS batches read on demand
//!            │          (dropped stream → INTERRUPT + drain before the next request)
//!            ▼
//!  protocol::WireStream ── dqlite-wire framing over tokio TCP
//!            │
//!            ▼
//!  leader node  ◀── discovery: LEADER on each seed, follow redirect, CLIENT, OPEN
//! ```
//!
//! # Failover and retries
//!
//! A request is retried on the (new) leader only when the server certainly did not run it —
//! it answered "not leader" / "no database opened", or the connection was found closed (or
//! failed) before the request was completely written — and only outside a transaction. A
//! pooled connection whose leader died therefore reconnects transparently on its next use.
//! Inside a transaction, losing the leader fails the transaction ("transaction lost"). The
//! driver needs the tokio runtime.
//!
//! # Example
//!
//! ```no_run
//! use sqlx_core::executor::Executor;
//! use sqlx_core::query_as::query_as;
//! use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};
//!
//! # async fn run() -> Result<(), sqlx_core::Error> {
//! let pool: DqlitePool = DqlitePoolOptions::new()
//!     .max_connections(4)
//!     .connect("dqlite://127.0.0.1:9001/app.db?peers=127.0.0.1:9002,127.0.0.1:9003")
//!     .await?;
//!
//! pool.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER)").await?;
//! sqlx_core::query::query("INSERT INTO kv (k, v) VALUES (?, ?)")
//!     .bind("answer")
//!     .bind(42_i64)
//!     .execute(&pool)
//!     .await?;
//! let (v,): (i64,) = query_as("SELECT v FROM kv WHERE k = ?")
//!     .bind("answer")
//!     .fetch_one(&pool)
//!     .await?;
//! assert_eq!(v, 42);
//! # Ok(()) }
//! ```
//!
//! (Applications normally write `sqlx::query(...)`; `sqlx` re-exports the same items.)
//!
//! [dqlite]: https://dqlite.io

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
extern crate sqlx_core;

mod arguments;
mod column;
mod connection;
mod database;
mod embedded;
mod error;
mod options;
mod protocol;
mod query_result;
mod row;
mod split;
mod statement;
mod transaction;
mod type_info;
pub mod types;
mod value;

#[cfg(feature = "any")]
pub mod any;
#[cfg(feature = "migrate")]
pub mod migrate;
#[cfg(feature = "migrate")]
mod testing;

pub use arguments::{DqliteArgumentBuffer, DqliteArguments};
pub use column::DqliteColumn;
pub use connection::DqliteConnection;
pub use database::Dqlite;
pub use error::{code, dqlite_error, is_outcome_unknown, DqliteError, DqliteErrorReason};
pub use options::DEFAULT_MAX_STALENESS;
pub use options::{
    DqliteConnectOptions, NodeAddress, ReadMode, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LEADER_TIMEOUT, DEFAULT_PORT,
    DEFAULT_STATEMENT_CACHE_CAPACITY,
};
pub use query_result::DqliteQueryResult;
pub use row::DqliteRow;
pub use statement::DqliteStatement;
pub use transaction::DqliteTransactionManager;
pub use type_info::DqliteTypeInfo;
pub use value::{DqliteValue, DqliteValueRef};

/// The wire codec, re-exported: custom [`Encode`](sqlx_core::encode::Encode) impls push
/// [`wire::Value`]s into a [`DqliteArgumentBuffer`].
pub use dqlite_wire as wire;

/// A pool of connections to a dqlite cluster.
pub type DqlitePool = sqlx_core::pool::Pool<Dqlite>;

/// Options for a [`DqlitePool`].
pub type DqlitePoolOptions = sqlx_core::pool::PoolOptions<Dqlite>;

/// An alias for [`Executor<'_, Database = Dqlite>`](sqlx_core::executor::Executor).
pub trait DqliteExecutor<'c>: sqlx_core::executor::Executor<'c, Database = Dqlite> {}
impl<'c, T: sqlx_core::executor::Executor<'c, Database = Dqlite>> DqliteExecutor<'c> for T {}

/// A transaction on a dqlite connection.
pub type DqliteTransaction<'c> = sqlx_core::transaction::Transaction<'c, Dqlite>;

impl_into_arguments_for_arguments!(DqliteArguments);
impl_column_index_for_row!(DqliteRow);
impl_column_index_for_statement!(DqliteStatement);
impl_acquire!(Dqlite, DqliteConnection);
impl_encode_for_option!(Dqlite);
