//! Counters the runtime keeps (readable at any time through [`RuntimeHandle::metrics`](super::RuntimeHandle::metrics)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters, shared by the task and threads of one node.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) log_appends: AtomicU64,
    pub(crate) inline_appends: AtomicU64,
    pub(crate) entries_appended: AtomicU64,
    pub(crate) meta_saves: AtomicU64,
    pub(crate) proposals: AtomicU64,
    pub(crate) entries_applied: AtomicU64,
    pub(crate) applied_index: AtomicU64,
    pub(crate) snapshots_taken: AtomicU64,
    pub(crate) snapshots_installed: AtomicU64,
    pub(crate) snapshot_chunks_sent: AtomicU64,
    pub(crate) snapshots_refused: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) follower_reads: AtomicU64,
    pub(crate) compacted_index: AtomicU64,
    pub(crate) in_memory_entries: AtomicU64,
    pub(crate) in_memory_bytes: AtomicU64,
    /// The largest single buffer of snapshot bytes held in memory (shared with the spool).
    pub(crate) snapshot_max_buffer: std::sync::Arc<AtomicU64>,
    pub(crate) disk_full: AtomicBool,
    pub(crate) poisoned: AtomicBool,
    pub(crate) apply_failed: AtomicBool,
}

/// A copy of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Log appends written (each is one write + one `fdatasync`).
    pub log_appends: u64,
    /// Those of them the Raft task wrote itself (small batches while the storage thread was
    /// idle), without a hand-off to the storage thread and back.
    pub inline_appends: u64,
    /// Entries written by those appends.
    pub entries_appended: u64,
    /// Term/vote saves (each one write + one `fdatasync` of a metadata file).
    pub meta_saves: u64,
    /// Proposals accepted by the core on this node.
    pub proposals: u64,
    /// Command entries passed to `StateMachine::apply`.
    pub entries_applied: u64,
    /// The applied index.
    pub applied_index: u64,
    /// Snapshots taken and written locally.
    pub snapshots_taken: u64,
    /// Snapshots received and installed.
    pub snapshots_installed: u64,
    /// Snapshot chunks sent to followers.
    pub snapshot_chunks_sent: u64,
    /// Received snapshot images refused for a bad checksum (then fetched again).
    pub snapshots_refused: u64,
    /// Inbound messages dropped because the inbox was full.
    pub messages_dropped: u64,
    /// Reads this node served as a follower within a staleness bound
    /// ([`RuntimeHandle::follower_read`](super::RuntimeHandle::follower_read)).
    pub follower_reads: u64,
    /// The core's in-memory log is compacted up to here.
    pub compacted_index: u64,
    /// Entries the core holds in memory.
    pub in_memory_entries: u64,
    /// Bytes of entry data the core holds in memory (bounded by
    /// `RuntimeOptions::snapshot_threshold_bytes` + `trailing_bytes` + what is not yet applied).
    pub in_memory_bytes: u64,
    /// The largest single buffer of snapshot bytes this node held in memory while taking,
    /// storing, sending, receiving, checking or restoring a snapshot (bytes).
    pub snapshot_max_buffer: u64,
    /// Appends are waiting for disk space.
    pub disk_full: bool,
    /// A storage failure poisoned writes.
    pub poisoned: bool,
    /// The state machine refused an entry or a snapshot.
    pub apply_failed: bool,
}

impl Metrics {
    /// Counts one log append of `entries` entries (by the storage thread or the Raft task).
    pub(crate) fn appended(&self, entries: usize) {
        self.log_appends.fetch_add(1, Ordering::Relaxed);
        self.entries_appended.fetch_add(entries as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            log_appends: l(&self.log_appends),
            inline_appends: l(&self.inline_appends),
            entries_appended: l(&self.entries_appended),
            meta_saves: l(&self.meta_saves),
            proposals: l(&self.proposals),
            entries_applied: l(&self.entries_applied),
            applied_index: l(&self.applied_index),
            snapshots_taken: l(&self.snapshots_taken),
            snapshots_installed: l(&self.snapshots_installed),
            snapshot_chunks_sent: l(&self.snapshot_chunks_sent),
            snapshots_refused: l(&self.snapshots_refused),
            messages_dropped: l(&self.messages_dropped),
            follower_reads: l(&self.follower_reads),
            compacted_index: l(&self.compacted_index),
            in_memory_entries: l(&self.in_memory_entries),
            in_memory_bytes: l(&self.in_memory_bytes),
            snapshot_max_buffer: l(&self.snapshot_max_buffer),
            disk_full: b(&self.disk_full),
            poisoned: b(&self.poisoned),
            apply_failed: b(&self.apply_failed),
        }
    }
}
