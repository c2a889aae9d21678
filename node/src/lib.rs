//! The replicated engine of dqlite-rs.
pub use dqlite_raft as raft;
pub use dqlite_wire as wire;

pub mod replication;
pub mod storage;
pub mod runtime;
pub mod vfs;
pub mod db;
pub mod transport;
pub mod server;
pub mod node;
pub mod embedded;

pub use embedded::{EmbeddedError, EmbeddedNode, NodeBuilder};
pub use node::{Node, NodeConfig};
