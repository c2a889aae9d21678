//! The replicated engine of dqlite-rs.
pub use dqlite_raft as raft;
pub use dqlite_wire as wire;

pub mod db;
pub mod embedded;
pub mod node;
pub mod replication;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod transport;
pub mod vfs;

pub use embedded::{EmbeddedError, EmbeddedNode, NodeBuilder};
pub use node::{Node, NodeConfig};
