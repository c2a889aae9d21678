//! Options of one node's runtime; every queue bound is named here.

use std::time::Duration;

use dqlite_raft::{Config, Configuration, NodeId};

use crate::storage::StorageOptions;

/// Default bound of the proposal queue (blocking `Replicator::propose` callers beyond it wait).
pub const DEFAULT_PROPOSAL_QUEUE: usize = 1024;
/// Default bound of the inbound peer-message queue (messages beyond it are dropped; Raft
/// retransmits).
pub const DEFAULT_INBOX_QUEUE: usize = 4096;
/// Default bound of the control queue (membership, transfer, barrier, reads, status).
pub const DEFAULT_CONTROL_QUEUE: usize = 256;
/// Default bound of the storage thread's job queue (`Ready`s waiting for the disk).
pub const DEFAULT_STORAGE_QUEUE: usize = 256;
/// Default bound of the apply thread's job queue.
pub const DEFAULT_APPLY_QUEUE: usize = 256;
/// Most jobs the Raft task holds back when a thread's queue is full; beyond it the task stops
/// taking proposals and peer messages until the thread catches up (backpressure).
pub const BACKLOG_LIMIT: usize = 1024;
/// Default largest entry accepted by `propose`.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 64 << 20;
/// Default number of applied entries between two snapshots.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 4096;
/// Default number of applied entries kept in the log behind the compaction point.
pub const DEFAULT_TRAILING_ENTRIES: u64 = 1024;
/// Default bytes of applied entry data after which a snapshot is taken even if fewer than
/// [`DEFAULT_SNAPSHOT_THRESHOLD`] entries were applied (the core holds the log in memory up to
/// its compaction point: this bounds that memory under large entries).
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 48 << 20;
/// Default most bytes of applied entry data kept behind the compaction point.
pub const DEFAULT_TRAILING_BYTES: u64 = 16 << 20;

/// Default delay of the leader's commit-index notice to idle followers.
pub const DEFAULT_COMMIT_NOTICE_DELAY: Duration = Duration::from_millis(1);

/// How one node's runtime is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// This node.
    pub id: NodeId,
    /// Where peers and clients reach it (stored in the configuration).
    pub address: String,
    /// The one timing knob: heartbeat = 10x, election timeout = 100x (LAN default 10 ms gives
    /// heartbeat 100 ms and election timeout 1 s). A tick is 5x.
    pub network_latency: Duration,
    /// Seed for the core's election-timeout PRNG (mixed with the id).
    pub rng_seed: u64,
    /// A new cluster's configuration: used only when the storage is empty (bootstrap). `None`
    /// starts a node that waits to be added by an existing cluster.
    pub bootstrap: Option<Configuration>,
    /// See [`DEFAULT_PROPOSAL_QUEUE`].
    pub proposal_queue: usize,
    /// See [`DEFAULT_INBOX_QUEUE`].
    pub inbox_queue: usize,
    /// See [`DEFAULT_CONTROL_QUEUE`].
    pub control_queue: usize,
    /// See [`DEFAULT_STORAGE_QUEUE`].
    pub storage_queue: usize,
    /// See [`DEFAULT_APPLY_QUEUE`].
    pub apply_queue: usize,
    /// See [`DEFAULT_MAX_ENTRY_BYTES`].
    pub max_entry_bytes: usize,
    /// See [`DEFAULT_SNAPSHOT_THRESHOLD`].
    pub snapshot_threshold: u64,
    /// See [`DEFAULT_SNAPSHOT_THRESHOLD_BYTES`]: a snapshot is taken after
    /// `snapshot_threshold` applied entries or this many bytes of them, whichever comes first.
    pub snapshot_threshold_bytes: u64,
    /// See [`DEFAULT_TRAILING_ENTRIES`]. The log is compacted up to
    /// `min(StateMachine::durable_index(), applied - tail, latest snapshot)`, where the tail
    /// kept is at most `trailing_entries` entries and at most `trailing_bytes` bytes.
    pub trailing_entries: u64,
    /// See [`DEFAULT_TRAILING_BYTES`].
    pub trailing_bytes: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// How often the storage thread retries an append refused for a full disk.
    pub disk_full_retry: Duration,
    /// Storage tuning.
    pub storage: StorageOptions,
    /// How long the leader waits before telling followers with nothing in flight about a new
    /// commit index (an empty AppendEntries, answered by each); see
    /// [`DEFAULT_COMMIT_NOTICE_DELAY`]. An AppendEntries sent meanwhile carries the index and
    /// makes the notice unnecessary: under steady writes followers learn each commit with the
    /// next entry, and the notice and its answer are not sent at all. `Duration::ZERO` sends
    /// the notice at once (the core's eager mode). Followers apply (and serve follower reads
    /// of) a commit at most this much later than they would with an immediate notice.
    pub commit_notice_delay: Duration,
}

impl RuntimeOptions {
    /// LAN defaults for node `id` at `address`.
    pub fn new(id: NodeId, address: impl Into<String>) -> RuntimeOptions {
        RuntimeOptions {
            id,
            address: address.into(),
            network_latency: Duration::from_millis(10),
            rng_seed: 0,
            bootstrap: None,
            proposal_queue: DEFAULT_PROPOSAL_QUEUE,
            inbox_queue: DEFAULT_INBOX_QUEUE,
            control_queue: DEFAULT_CONTROL_QUEUE,
            storage_queue: DEFAULT_STORAGE_QUEUE,
            apply_queue: DEFAULT_APPLY_QUEUE,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            snapshot_threshold: DEFAULT_SNAPSHOT_THRESHOLD,
            snapshot_threshold_bytes: DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            trailing_entries: DEFAULT_TRAILING_ENTRIES,
            trailing_bytes: DEFAULT_TRAILING_BYTES,
            snapshot_chunk_bytes: 1 << 20,
            disk_full_retry: Duration::from_millis(50),
            storage: StorageOptions::default(),
            commit_notice_delay: DEFAULT_COMMIT_NOTICE_DELAY,
        }
    }

    /// The Raft core's configuration derived from these options.
    pub fn raft_config(&self) -> Config {
        let mut c = Config::new(self.id);
        c.network_latency = self.network_latency;
        c.tick = self.tick();
        c.rng_seed = self.rng_seed;
        c.snapshot_chunk_bytes = self.snapshot_chunk_bytes.max(1);
        c.eager_commit_updates = self.commit_notice_delay.is_zero();
        c
    }

    /// How often the core is ticked: `5 x network_latency` (at least 1 ms).
    pub fn tick(&self) -> Duration {
        self.network_latency.saturating_mul(5).max(Duration::from_millis(1))
    }

    /// The minimum election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.raft_config().election_timeout()
    }
}
