//! Sans-I/O Raft consensus core for dqlite-rs.
//!
//! This crate does **not** read or write files, open sockets, spawn threads, read a clock or
//! draw randomness from the operating system. It is a pure state machine: the application feeds
//! it inputs and carries out the work it hands back in a [`Ready`].
//!
//! ```text
//!   tick() ─────────┐
//!   step(Message) ──┤                 ┌──> messages ────────────> peers (now)
//!   propose(data) ──┼──> RawNode ──> Ready ─> snapshot / entries / hard_state ──> disk (fsync)
//!   read_index() ───┤                 │       then persisted_messages ────────> peers
//!   conf changes ───┘                 ├──> committed_entries ──> state machine ──> applied()
//!                                     ├──> read_states (serve linearizable reads)
//!          persisted(i, t) <──────────┘    snapshot_requests ──> send_snapshot_chunk()
//! ```
//!
//! Features: leader election with randomized timeouts, pre-vote and check-quorum (with leader
//! lease); pipelined replication with flow control and fast back-off; commitment of current-term
//! entries only; dqlite's roles (voter, standby, spare); single-server membership changes with
//! catch-up; leadership transfer; barriers; ReadIndex reads; snapshots sent in chunks. The
//! persistence contract is in [`ready`].
//!
//! # Walkthrough: a one-node cluster
//!
//! ```
//! use dqlite_raft::{Config, Configuration, HardState, NodeId, RawNode, StateRole};
//!
//! let conf = Configuration::with_voters([NodeId(1)]);
//! let boot = RawNode::bootstrap_entry(&conf);
//! let mut node = RawNode::restore(Config::new(NodeId(1)), HardState::default(), None, vec![boot]).unwrap();
//! // Time passes until the election timeout; a lone voter elects itself. It reports itself
//! // leader once the Ready carrying its new term is persisted (`advance` says so).
//! while node.role() != StateRole::Leader {
//!     node.tick();
//!     let rd = node.ready();
//!     // ... persist rd.entries / rd.hard_state ...
//!     node.advance(&rd);
//! }
//! let index = node.propose(b"hello".to_vec()).unwrap();
//! let mut applied = Vec::new();
//! for _ in 0..3 {
//!     let rd = node.ready();
//!     // ... persist rd.entries / rd.hard_state, send messages ...
//!     node.advance(&rd);
//!     applied.extend(rd.committed_entries);
//! }
//! assert!(applied.iter().any(|e| e.index == index && e.data == b"hello"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod configuration;
mod election;
pub mod error;
pub mod log;
pub mod membership;
pub mod message;
mod node;
pub mod progress;
mod read_index;
pub mod ready;
mod replication;
#[cfg(feature = "serde")]
mod serde_bytes;
mod snapshot;
mod transfer;
pub mod types;

/// Checkers for simulation runs (linearizability, Raft safety). Test support, feature `sim`.
#[cfg(any(test, feature = "sim"))]
pub mod check;
/// Deterministic cluster simulator. Test support, feature `sim`.
#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod paper_tests;
#[cfg(test)]
mod test_harness;

pub use config::{Config, ConfigError};
pub use configuration::{Configuration, ConfigurationDecodeError, Server};
pub use error::{Error, RestoreError, Result};
pub use log::RaftLog;
pub use membership::{ConfChange, ConfChangeStatus};
pub use message::{
    AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, RejectHint, VoteRequest, VoteResponse,
};
pub use node::{RawNode, Status};
pub use progress::{Progress, ProgressState};
pub use ready::{Event, IncomingSnapshotChunk, ReadState, Ready, SnapshotChunkRequest, SnapshotInstall, StateRole};
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, SnapshotMeta, Term};
