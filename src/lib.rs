//! # dqlite
//!
//! A Raft-replicated SQLite with an sqlx driver. This facade re-exports the driver
//! ([`sqlx_dqlite`], as [`driver`]) and the replicated engine ([`dqlite_node`], as [`node`]).
//!
//! **What it is:** SQLite databases replicated by Raft across a few nodes, reached through
//! [sqlx](https://docs.rs/sqlx) with dqlite's client wire protocol. The driver also talks to
//! Canonical's C dqlite clusters; a node can run inside your application (`data=DIR` URLs), and
//! then queries on a local leader cross no socket. Databases are ordinary SQLite files on disk.
//!
//! **What it is not:** a distributed SQL database that shards or scales writes (one leader
//! commits every write; followers hold full copies), a drop-in for Canonical's `libdqlite` C
//! API, or a way to use sqlx's compile-time `query!` macros (they only know sqlx's built-in
//! drivers).
//!
//! ```text
//!   your code ── sqlx (Pool, query_as, migrate!) ── sqlx-dqlite
//!                                                   │ leader local?     │ otherwise
//!                                         in-process pipe         TCP (dqlite wire v1)
//!                                                   ▼                   ▼
//!   node: client-protocol server ── SQLite layer (VFS: WAL frames → Raft entries)
//!                                         │ propose / apply
//!                                  Raft runtime ── log on disk (io_uring / pwrite)
//!                                         │ AppendEntries over TCP
//!                                  other nodes (same stack), each with its own SQLite files
//! ```
//!
//! ## Walkthrough: an embedded node, a migration, `query_as` with `FromRow`
//!
//! ```
//! use sqlx::FromRow;
//! use sqlx_dqlite::DqlitePoolOptions;
//!
//! #[derive(Debug, FromRow, PartialEq)]
//! struct Note { id: i64, author: String, body: String, stars: i64 }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("dqlite-doc-{}", std::process::id()));
//! // A single node inside this process, no listening socket; `dir` holds its data.
//! let url = format!("dqlite:///notes.db?data={}", dir.display());
//! let pool = DqlitePoolOptions::new().connect(&url).await?;
//!
//! sqlx::migrate!("examples/migrations").run(&pool).await?;
//! sqlx::query("INSERT INTO notes (author, body, stars) VALUES (?, ?, ?)")
//!     .bind("ada").bind("hello, Raft").bind(3)
//!     .execute(&pool).await?;
//!
//! let notes: Vec<Note> = sqlx::query_as("SELECT id, author, body, stars FROM notes")
//!     .fetch_all(&pool).await?;
//! assert_eq!(notes, [Note { id: 1, author: "ada".into(), body: "hello, Raft".into(), stars: 3 }]);
//!
//! pool.close().await;
//! if let Some(node) = dqlite::node::embedded::running(&dir) {
//!     node.close().await;
//! }
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! To join several nodes, give each a listening address and the others to join:
//! `dqlite://127.0.0.2:9001/notes.db?data=/var/lib/app&join=127.0.0.1:9001` (see the README and
//! [`sqlx_dqlite::DqliteConnectOptions`] for every option), or start nodes from code with
//! [`node::NodeBuilder`].
#![forbid(unsafe_code)]

pub use dqlite_node as node;
pub use sqlx_dqlite as driver;

/// Throw-away dqlite clusters for tests and examples (real C dqlite via `dqlite-demo` today).
pub mod testing;
