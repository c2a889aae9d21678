//! The seam between the SQLite layer (`vfs`, `db`) and the Raft runtime (`runtime`).
//!
//! Neither side knows the other's internals; both code against the two traits here.
//!
//! ```text
//!   SQLite thread (leader, inside the VFS's WAL xSync)
//!      │ Replicator::propose(entry bytes) ──► runtime: RawNode::propose ──► log + peers
//!      │ (blocks until its entry's fate is known, bounded by a timeout)
//!      ▼
//!   runtime apply thread ── StateMachine::apply(entry) in log order ──► db layer
//!                        ── StateMachine::role_changed(...)          ──► db layer
//! ```
//!
//! # Contract
//!
//! * [`Replicator::propose`] may be called from any thread (it blocks briefly for the hand-off
//!   to the Raft task, never for replication). It returns the `(index, term)` the entry was
//!   appended at, or [`ProposeError::NotLeader`].
//! * The runtime calls the [`StateMachine`] from **one** thread, never concurrently, and never
//!   from a tokio worker: every committed [`EntryKind::Command`](dqlite_raft::EntryKind) entry
//!   exactly once and in log order through [`StateMachine::apply`], interleaved in order with
//!   [`StateMachine::role_changed`] events. Configuration and barrier entries are not passed to
//!   `apply` (the runtime handles them) but their index still counts as applied.
//! * An entry this node proposed is applied like any other: the db layer recognises its own
//!   pending proposal by `(index, term)` and completes the local commit instead of re-applying
//!   the frames. If the node loses leadership while a proposal is pending, `role_changed`
//!   arrives first; the proposal's fate is then learnt from the entry that is eventually
//!   applied at its index (same term: it committed; another term: it did not).
//! * On restart the runtime asks [`StateMachine::applied_index`] and replays from the log only
//!   the committed entries after it.
//! * The runtime compacts its log only up to [`StateMachine::durable_index`].
//! * Snapshots: [`StateMachine::snapshot`] writes a consistent image of every database at the
//!   applied index; [`StateMachine::restore`] replaces all state with a received image.
//!   [`StateMachine::snapshot_begin`] may instead fix the point and return a [`SnapshotCopy`]
//!   that writes the same image on another thread while entries go on being applied.

use std::io::{Read, Write};

use dqlite_raft::{Entry, LogIndex, NodeId, StateRole, Term};

/// Why a proposal was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader (the known leader, if any, is given).
    #[error("not leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// The entry is larger than the runtime accepts.
    #[error("entry of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The entry's size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The disk is full: nothing was appended. The node keeps serving reads and takes writes
    /// again once space returns (the db layer answers `SQLITE_FULL`).
    #[error("disk full: {reason}")]
    DiskFull {
        /// What the storage reported.
        reason: String,
    },
    /// The runtime is shutting down or its storage is poisoned.
    #[error("node is stopping or its storage failed: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Where a proposal landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// The entry's index.
    pub index: LogIndex,
    /// The term it was appended in.
    pub term: Term,
}

/// Appends entries to the replicated log (implemented by the runtime).
pub trait Replicator: Send + Sync + 'static {
    /// Appends `data` as a command entry if this node is the leader.
    fn propose(&self, data: Vec<u8>) -> Result<Proposed, ProposeError>;
}

/// An error the state machine cannot recover from by itself: the runtime stops applying and
/// reports it (naming the entry).
#[derive(Debug, thiserror::Error)]
#[error("cannot apply entry {index}: {reason}")]
pub struct ApplyError {
    /// The entry that failed.
    pub index: LogIndex,
    /// Why.
    pub reason: String,
}

/// The replicated databases of one node (implemented by the db layer).
pub trait StateMachine: Send + 'static {
    /// Applies one committed command entry (called in log order).
    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError>;

    /// The node's role, term or leader changed (ordered with `apply`).
    fn role_changed(&mut self, role: StateRole, term: Term, leader: Option<NodeId>);

    /// The last log index whose effects are in the local state (recovered from files at open).
    fn applied_index(&self) -> LogIndex;

    /// The last log index whose effects are durable without the log (checkpointed into the
    /// database files, or in a snapshot): the log may be compacted up to here.
    fn durable_index(&self) -> LogIndex;

    /// Writes a consistent image of all databases at [`applied_index`](Self::applied_index).
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<LogIndex, ApplyError>;

    /// Replaces all state with an image written by `snapshot` (at `index`).
    fn restore(&mut self, index: LogIndex, data: &mut dyn Read) -> Result<(), ApplyError>;

    /// Fixes the point of a snapshot at [`applied_index`](Self::applied_index) without writing
    /// it: the returned copy writes the image on another thread while `apply` goes on. `None`
    /// (the default): the runtime calls [`snapshot`](Self::snapshot) on the apply thread.
    fn snapshot_begin(&mut self) -> Result<Option<Box<dyn SnapshotCopy>>, ApplyError> {
        Ok(None)
    }

    /// Called on the apply thread when no work came for a while ([`IDLE_UPKEEP`]): upkeep
    /// that was due but deferred (e.g. a checkpoint round skipped while a snapshot copy ran)
    /// may run now. Returns whether [`durable_index`](Self::durable_index) may have moved.
    fn idle(&mut self) -> Result<bool, ApplyError> {
        Ok(false)
    }
}

/// How long the apply thread waits for work before it calls [`StateMachine::idle`].
pub const IDLE_UPKEEP: std::time::Duration = std::time::Duration::from_millis(200);

/// A snapshot whose point is fixed ([`StateMachine::snapshot_begin`]).
pub trait SnapshotCopy: Send + 'static {
    /// The applied index the image is at.
    fn index(&self) -> LogIndex;

    /// Writes the image: the bytes [`StateMachine::snapshot`] would have written at
    /// [`index`](Self::index). Runs on a thread of its own, concurrently with `apply`.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<(), ApplyError>;
}

/// Carries Raft messages to other nodes (in memory in tests, TCP in production; implemented by
/// `runtime` and `transport`). Incoming messages are handed to the runtime through the inbox it
/// gave the transport when it was built.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for `msg.to`. Never blocks: when the peer is unreachable or its bounded queue
    /// is full the message is dropped (and counted); Raft retransmits.
    fn send(&self, msg: dqlite_raft::Message);

    /// The addresses of the current members (from the latest configuration), so the transport
    /// knows where `NodeId`s live. Called whenever the configuration changes.
    fn set_peers(&self, peers: &[(NodeId, String)]);
}
