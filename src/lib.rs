//! # dqlite
//!
//! A Raft-replicated SQLite with an sqlx driver. This facade re-exports the driver
//! ([`sqlx_dqlite`]) and the replicated engine ([`dqlite_node`]).
#![forbid(unsafe_code)]

pub use dqlite_node as node;
pub use sqlx_dqlite as driver;

/// Throw-away dqlite clusters for tests and examples (real C dqlite via `dqlite-demo` today).
pub mod testing;
