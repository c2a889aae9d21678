//! The sqlx compatibility suite against one 3-node dqlite cluster shared by every test in this
//! binary (each test uses its own database). The cluster comes from the launcher selected by
//! `DQLITE_TEST_LAUNCHER` (default `real`: C dqlite 1.11 via Debian's `dqlite-demo`).
//!
//! Failover needs a cluster of its own: see `tests/cluster_faults.rs`.

#[path = "../common/mod.rs"]
mod common;

mod any;
mod cancel;
#[cfg(feature = "cli")]
mod cli;
mod coexistence;
mod crud;
mod errors;
mod example;
mod failures;
mod migrate;
mod migrate_lock;
mod params_limit;
mod path;
mod sqlite_compat;
mod sqlx_test_attr;
mod streaming;
mod transactions;
mod types;
