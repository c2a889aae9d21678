//! Sans-I/O Raft consensus core.
#![forbid(unsafe_code)]

pub mod types;
pub use types::{Entry, EntryKind, LogIndex, NodeId, Term};
