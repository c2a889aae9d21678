//! The Raft runtime: drives the sans-I/O core with one tokio task, a storage thread and an apply
//! thread (design and the snapshot framing: `docs/runtime.md`).
//!
//! ```text
//!  Replicator::propose (blocking SQLite thread) ──bounded──┐
//!  RuntimeHandle (add/assign/remove/transfer/barrier/read) ┤
//!  Transport inbox (peer messages) ───────────bounded──────┼──► Raft task (owns RawNode, ticks)
//!                                                          │      │ messages ──► Transport::send (now)
//!  storage thread (Storage: one append + one fdatasync ◄───┼──────┤ persist jobs (group commit)
//!     per wake-up; term/vote only when they change)  ──────┤      │ persisted_messages after "durable"
//!  apply thread (StateMachine::apply / role_changed ◄──────┼──────┘ committed entries, role events
//!     / snapshot / restore, in log order)            ──────┘        (completions come back)
//! ```
//!
//! Start a node with [`Runtime::start`]; it returns a [`RuntimeHandle`] (cloneable) which also
//! implements [`Replicator`].
#![forbid(unsafe_code)]

mod apply_thread;
mod follower_read;
pub mod frame;
#[cfg(feature = "harness")]
pub mod harness;
mod log_bytes;
pub mod memory;
mod metrics;
mod options;
mod storage_thread;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use dqlite_raft::{
    ConfChange, ConfChangeStatus, Configuration, Entry, EntryKind, Event, LogIndex, Message, MessageBody, NodeId,
    RawNode, Ready, Role, SnapshotMeta, StateRole, Status, Term,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use follower_read::StaleReason;
pub use metrics::MetricsSnapshot;
pub use options::*;

use apply_thread::{ApplyDone, ApplyJob, ApplyThread};
use metrics::Metrics;
use storage_thread::{PersistJob, StorageDone, StorageJob, StorageThread};

use crate::replication::{ProposeError, Proposed, Replicator, StateMachine, Transport};
use crate::storage::backend::Backend;
use crate::storage::{Storage, StorageError};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The operation needs the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// The core refused the operation.
    #[error("raft: {0}")]
    Raft(dqlite_raft::Error),
    /// Leadership was lost before the operation's entry was known to be committed: its outcome
    /// is unknown here.
    #[error("leadership lost before the outcome was known")]
    LeadershipLost,
    /// A leadership transfer did not complete.
    #[error("leadership transfer to {target} aborted")]
    TransferAborted {
        /// The intended leader.
        target: NodeId,
    },
    /// A membership change waiting for the node to catch up was abandoned.
    #[error("membership change of {node} abandoned (the node did not catch up)")]
    ConfChangeAborted {
        /// The node.
        node: NodeId,
    },
    /// Opening the storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The durable state is inconsistent (the core refused it at restore).
    #[error("cannot restore the raft state: {0}")]
    Restore(dqlite_raft::Error),
    /// A stored snapshot failed its end-to-end check.
    #[error("snapshot at {index} is damaged: {source}")]
    CorruptSnapshot {
        /// The snapshot's index.
        index: LogIndex,
        /// What is wrong.
        source: frame::FrameError,
    },
    /// The state machine failed (at open or in apply).
    #[error("state machine: {0}")]
    StateMachine(String),
    /// The state machine is behind the compacted log and no snapshot can fill the gap.
    #[error(
        "state machine applied index {applied} is behind the log's first index {first} and no snapshot covers the gap"
    )]
    StateMachineBehind {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The first index in the log.
        first: LogIndex,
    },
    /// The node cannot take writes (storage poisoned, state machine failed).
    #[error("node unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The node is stopping or stopped.
    #[error("node stopped")]
    Stopped,
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// A follower read could not be served within its staleness bound.
    #[error("follower too stale: {0}")]
    FollowerStale(StaleReason),
}

fn from_raft(e: dqlite_raft::Error) -> RuntimeError {
    match e {
        dqlite_raft::Error::NotLeader { leader } => RuntimeError::NotLeader { leader },
        e => RuntimeError::Raft(e),
    }
}

/// The node's role as last reported by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoleInfo {
    /// The role.
    pub role: StateRole,
    /// The current term.
    pub term: Term,
    /// The known leader.
    pub leader: Option<NodeId>,
    /// The known leader's address (from the configuration).
    pub leader_address: Option<String>,
}

/// What [`RuntimeHandle::status`] returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeStatus {
    /// The core's view.
    pub raft: Status,
    /// The configuration in force.
    pub configuration: Configuration,
    /// The node's counters.
    pub metrics: MetricsSnapshot,
    /// Why writes wait, if the disk is full.
    pub disk_full: Option<String>,
    /// Why writes are refused for good, if storage failed.
    pub poisoned: Option<String>,
    /// Why applying stopped, if it did.
    pub apply_failed: Option<String>,
}

/// The receiving end of a node's peer-message queue: give it to [`Runtime::start`].
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
}

/// The sending end, for a transport: [`InboxSender::deliver`] never blocks.
#[derive(Debug, Clone)]
pub struct InboxSender {
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl InboxSender {
    /// Queues an incoming message; drops it (returning false) if the queue is full or the node
    /// stopped.
    pub fn deliver(&self, m: Message) -> bool {
        match self.tx.try_send(m) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// A bounded peer-message queue of `capacity` (see [`DEFAULT_INBOX_QUEUE`]).
pub fn inbox(capacity: usize) -> (InboxSender, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (InboxSender { tx, dropped: Arc::clone(&dropped) }, Inbox { rx, dropped })
}

type Waiter<T> = oneshot::Sender<Result<T, RuntimeError>>;

struct ProposeReq {
    data: Vec<u8>,
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
}

enum Control {
    ConfChange(ConfChange, Waiter<LogIndex>),
    Transfer(Option<NodeId>, Waiter<NodeId>),
    Barrier(Waiter<LogIndex>),
    ReadIndex(Waiter<LogIndex>),
    Status(oneshot::Sender<RuntimeStatus>),
    Shutdown { graceful: bool, done: oneshot::Sender<()> },
}

/// Completions from the threads.
#[derive(Debug)]
pub(crate) enum Completion {
    Storage(StorageDone),
    Apply(ApplyDone),
}

/// Starts nodes.
#[derive(Debug)]
pub struct Runtime;

/// A cloneable handle on a running node.
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    id: NodeId,
    proposals: mpsc::Sender<ProposeReq>,
    control: mpsc::Sender<Control>,
    role: watch::Receiver<RoleInfo>,
    conf: watch::Receiver<Configuration>,
    metrics: Arc<Metrics>,
    max_entry_bytes: usize,
    stopped: watch::Receiver<bool>,
    follower: watch::Receiver<follower_read::FollowerView>,
    heartbeat: Duration,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").field("id", &self.inner.id).finish()
    }
}

impl Runtime {
    /// Opens the node's storage on `backend` (for a real node: [`crate::storage::backend::auto`]
    /// on `DIR/raft/`), restores the core, replays what the state machine lacks, and starts the
    /// task and threads. Must be called inside a tokio runtime (with the time driver).
    pub async fn start<S: StateMachine, T: Transport>(
        opts: RuntimeOptions,
        backend: Arc<dyn Backend>,
        sm: S,
        transport: Arc<T>,
        inbox: Inbox,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let o = opts.clone();
        let metrics = Arc::new(Metrics::default());
        let max_buffer = metrics.snapshot_max_buffer.clone();
        let (storage, core, sm, snapshot) = tokio::task::spawn_blocking(move || open(&o, backend, sm, max_buffer))
            .await
            .map_err(|e| RuntimeError::StateMachine(format!("open task failed: {e}")))??;
        let spool = storage.snapshots.spool(metrics.snapshot_max_buffer.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel(opts.storage_queue + opts.apply_queue + 16);
        let (storage_tx, storage_rx) = sync_channel(opts.storage_queue.max(1));
        let (apply_tx, apply_rx) = sync_channel(opts.apply_queue.max(1));
        let applied0 = sm.applied_index();
        let durable0 = sm.durable_index();
        let storage = Arc::new(std::sync::Mutex::new(storage));
        let storage_pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let st = StorageThread {
            storage: storage.clone(),
            pending: storage_pending.clone(),
            jobs: storage_rx,
            done: done_tx.clone(),
            metrics: Arc::clone(&metrics),
            stop: Arc::clone(&stop),
            disk_full_retry: opts.disk_full_retry,
            id: opts.id,
            transport: transport.clone(),
        };
        let at = ApplyThread { sm, jobs: apply_rx, done: done_tx, metrics: Arc::clone(&metrics), spool, id: opts.id };
        let storage_join = std::thread::Builder::new()
            .name(format!("dqlite-storage-{}", opts.id))
            .spawn(move || st.run())
            .map_err(|e| RuntimeError::Unavailable { reason: format!("cannot spawn the storage thread: {e}") })?;
        let apply_join = std::thread::Builder::new()
            .name(format!("dqlite-apply-{}", opts.id))
            .spawn(move || at.run())
            .map_err(|e| RuntimeError::Unavailable { reason: format!("cannot spawn the apply thread: {e}") })?;
        let (prop_tx, prop_rx) = mpsc::channel(opts.proposal_queue.max(1));
        let (ctl_tx, ctl_rx) = mpsc::channel(opts.control_queue.max(1));
        let role0 = RoleInfo { role: core.role(), term: core.term(), leader: None, leader_address: None };
        let (role_tx, role_rx) = watch::channel(role0);
        let (conf_tx, conf_rx) = watch::channel(core.configuration().clone());
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let servers: Vec<(NodeId, String)> =
            core.configuration().servers().iter().map(|s| (s.id, s.address.clone())).collect();
        transport.set_peers(&servers);
        metrics.applied_index.store(applied0.0, Ordering::Relaxed);
        let last_snapshot = snapshot.map_or(LogIndex::ZERO, |s| s.index);
        let (follower, follower_rx) = follower_read::Tracker::new(applied0);
        let driver = Driver {
            id: opts.id,
            compacted: core.log().compacted_index(),
            log_bytes: log_bytes::LogBytes::from_log(core.log()),
            core,
            transport,
            storage_tx: Some(storage_tx),
            storage_overflow: VecDeque::new(),
            storage,
            storage_pending,
            inline: None,
            apply_tx: Some(apply_tx),
            apply_backlog: VecDeque::new(),
            next_seq: 0,
            waiting_persist: VecDeque::new(),
            recv_check: None,
            snapshot_in_progress: false,
            snapshot_backoff: None,
            last_snapshot,
            applied: applied0,
            follower,
            durable: durable0,
            index_waiters: BTreeMap::new(),
            committed_waiters: BTreeMap::new(),
            catching_up: HashMap::new(),
            reads: HashMap::new(),
            reads_applying: Vec::new(),
            next_read: 0,
            transfers: Vec::new(),
            disk_full: None,
            poisoned: None,
            apply_failed: None,
            stopping: None,
            shutdown_waiters: Vec::new(),
            role_tx,
            conf_tx,
            metrics: Arc::clone(&metrics),
            dropped: inbox.dropped.clone(),
            opts: opts.clone(),
            threads: vec![storage_join, apply_join],
            notice_at: None,
            stop,
            exit: false,
        };
        tokio::spawn(driver.run(inbox.rx, prop_rx, ctl_rx, done_rx, stopped_tx));
        Ok(RuntimeHandle {
            inner: Arc::new(HandleInner {
                id: opts.id,
                proposals: prop_tx,
                control: ctl_tx,
                role: role_rx,
                conf: conf_rx,
                metrics,
                max_entry_bytes: opts.max_entry_bytes,
                stopped: stopped_rx,
                follower: follower_rx,
                heartbeat: opts.raft_config().heartbeat_interval(),
            }),
        })
    }
}

/// Opens storage and rebuilds the core and the state machine (blocking; runs on a blocking
/// thread).
fn open<S: StateMachine>(
    opts: &RuntimeOptions,
    backend: Arc<dyn Backend>,
    mut sm: S,
    max_buffer: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(Storage, RawNode, S, Option<SnapshotMeta>), RuntimeError> {
    let mut storage = Storage::open(backend, opts.storage)?;
    let hs = storage.meta.load();
    let snap_info = storage.snapshots.latest().cloned();
    let empty = storage.log.is_empty() && snap_info.is_none() && hs == dqlite_raft::HardState::default();
    if empty {
        if let Some(conf) = &opts.bootstrap {
            tracing::info!(id = %opts.id, voters = conf.voter_count(), "bootstrapping a new cluster");
            storage.log.append(&[RawNode::bootstrap_entry(conf)])?;
        } else {
            tracing::info!(id = %opts.id, "empty storage and no configuration: waiting to be added");
        }
    } else if opts.bootstrap.is_some() {
        tracing::info!(id = %opts.id, "storage holds state: bootstrap configuration ignored");
    }
    let entries = storage.log.read_all()?;
    let log_first = storage.log.first_index();
    let snapshot = match &snap_info {
        Some(i) => Some(SnapshotMeta {
            index: i.index,
            term: i.term,
            configuration: Configuration::decode(&i.configuration).map_err(|source| {
                RuntimeError::Restore(dqlite_raft::Error::BadConfigurationEntry {
                    index: i.configuration_index,
                    source,
                })
            })?,
            configuration_index: i.configuration_index,
        }),
        None => None,
    };
    let mut applied = sm.applied_index();
    if let (Some(info), Some(meta)) = (&snap_info, &snapshot) {
        if applied < meta.index {
            if applied.next() < log_first || entries.is_empty() {
                // The entries the state machine lacks are gone: restore it from the snapshot.
                // Checked and restored in bounded pieces, never read whole into memory.
                let io =
                    |e: std::io::Error| RuntimeError::Storage(crate::storage::StorageError::io("read", "snapshot", e));
                let mut image = storage.snapshots.spool(max_buffer).open(info).map_err(io)?;
                let len = frame::verify_reader(&mut image)
                    .map_err(io)?
                    .map_err(|source| RuntimeError::CorruptSnapshot { index: meta.index, source })?;
                image.rewind(len);
                tracing::info!(id = %opts.id, index = %meta.index, "restoring the state machine from the snapshot");
                sm.restore(meta.index, &mut image).map_err(|e| RuntimeError::StateMachine(e.to_string()))?;
                applied = meta.index;
            }
            // Entries up to the snapshot are not handed out again by the core: apply them here.
            let from = applied;
            for e in entries.iter().filter(|e| e.index > from && e.index <= meta.index) {
                if e.kind == EntryKind::Command {
                    sm.apply(e).map_err(|e| RuntimeError::StateMachine(e.to_string()))?;
                }
                applied = e.index;
            }
        }
    } else if applied.next() < log_first {
        return Err(RuntimeError::StateMachineBehind { applied, first: log_first });
    }
    let core = RawNode::restore(opts.raft_config(), hs, snapshot.clone(), entries).map_err(RuntimeError::Restore)?;
    tracing::info!(
        id = %opts.id, term = %core.term(), last = %core.log().last_index(), applied = %applied,
        "runtime opened"
    );
    Ok((storage, core, sm, snapshot))
}

/// A persist job not yet durable: its sequence, its marker, the messages that wait for it.
type WaitingPersist = (u64, Option<(LogIndex, Term)>, Vec<Message>);

enum ApplyItem {
    Job(ApplyJob),
    /// The restore of the snapshot installed by persist job `seq` (known once stored).
    Gate(u64),
}

struct Driver<T: Transport> {
    id: NodeId,
    core: RawNode,
    transport: Arc<T>,
    storage_tx: Option<SyncSender<StorageJob>>,
    storage_overflow: VecDeque<StorageJob>,
    /// The storage, shared with the storage thread: the task appends a small batch itself when
    /// the thread has nothing to do (`storage_pending` is 0), saving two thread hand-offs.
    storage: Arc<std::sync::Mutex<crate::storage::Storage>>,
    /// Jobs sent to the storage thread and not yet done.
    storage_pending: Arc<std::sync::atomic::AtomicUsize>,
    /// A persist job this task appends itself once the peers' writer tasks it woke have run.
    inline: Option<PersistJob>,
    apply_tx: Option<SyncSender<ApplyJob>>,
    apply_backlog: VecDeque<ApplyItem>,
    next_seq: u64,
    /// Persist jobs not yet durable: (seq, marker, persisted_messages).
    waiting_persist: VecDeque<WaitingPersist>,
    /// The snapshot being received and the end-to-end check over the chunks accepted so far.
    recv_check: Option<(SnapshotMeta, frame::StreamCheck)>,
    snapshot_in_progress: bool,
    /// After a failed snapshot: not again before this instant; consecutive failures.
    snapshot_backoff: Option<(Instant, u32)>,
    last_snapshot: LogIndex,
    applied: LogIndex,
    /// What follower reads need: the last message from the leader, the applied index.
    follower: follower_read::Tracker,
    durable: LogIndex,
    compacted: LogIndex,
    /// Bytes of entry data the core holds, by index (byte thresholds for snapshots and
    /// compaction).
    log_bytes: log_bytes::LogBytes,
    /// Barrier / membership entries proposed here: index -> (term, waiter).
    index_waiters: BTreeMap<LogIndex, (Term, Waiter<LogIndex>)>,
    /// Those known committed, waiting to be applied.
    committed_waiters: BTreeMap<LogIndex, Waiter<LogIndex>>,
    catching_up: HashMap<NodeId, Waiter<LogIndex>>,
    reads: HashMap<u64, Waiter<LogIndex>>,
    /// Confirmed reads waiting for the state machine to apply their index.
    reads_applying: Vec<(LogIndex, Waiter<LogIndex>)>,
    next_read: u64,
    transfers: Vec<(NodeId, Waiter<NodeId>)>,
    disk_full: Option<String>,
    poisoned: Option<String>,
    apply_failed: Option<String>,
    stopping: Option<Instant>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    role_tx: watch::Sender<RoleInfo>,
    conf_tx: watch::Sender<Configuration>,
    metrics: Arc<Metrics>,
    dropped: Arc<AtomicU64>,
    opts: RuntimeOptions,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    exit: bool,
    /// When the delayed commit-index notice is due (`RuntimeOptions::commit_notice_delay`).
    notice_at: Option<tokio::time::Instant>,
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Largest batch of entry data the Raft task appends itself instead of the storage thread
/// (bigger ones would hold the task, and the messages it handles, for the whole write).
const INLINE_APPEND_BYTES: usize = 32 << 10;

/// Most proposals or peer messages taken in one go before the core's `Ready` is handled.
const INTAKE_BATCH: usize = 512;
/// The first wait before a failed snapshot is tried again (doubled after each failure).
const SNAPSHOT_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait before a failed snapshot is tried again.
const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(10);

impl<T: Transport> Driver<T> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Message>,
        mut proposals: mpsc::Receiver<ProposeReq>,
        mut control: mpsc::Receiver<Control>,
        mut done: mpsc::Receiver<Completion>,
        stopped: watch::Sender<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.opts.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        while !self.exit {
            let intake = self.can_take_work();
            tokio::select! {
                biased;
                Some(c) = done.recv() => {
                    self.on_completion(c);
                    while let Ok(c) = done.try_recv() {
                        self.on_completion(c);
                    }
                }
                _ = ticker.tick() => {
                    if self.poisoned.is_none() || self.core.is_leader() {
                        self.core.tick();
                    }
                }
                () = sleep_until_opt(self.notice_at) => {
                    self.notice_at = None;
                    self.core.send_commit_updates();
                }
                Some(c) = control.recv() => self.on_control(c),
                Some(m) = inbox.recv(), if intake => {
                    self.on_message(m);
                    for _ in 0..INTAKE_BATCH {
                        match inbox.try_recv() {
                            Ok(m) => self.on_message(m),
                            Err(_) => break,
                        }
                    }
                }
                Some(p) = proposals.recv(), if intake => {
                    self.on_propose(p);
                    for _ in 0..INTAKE_BATCH {
                        match proposals.try_recv() {
                            Ok(p) => self.on_propose(p),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.process_ready();
            if self.inline.is_some() {
                // The peers' writer tasks this `Ready` woke run first (woken from this task,
                // they may wait on this worker), so that the entries are on their way while
                // this task writes them here.
                tokio::task::yield_now().await;
                self.append_inline();
                self.process_ready();
            }
            self.check_stopping();
        }
        // Stop: let the threads finish their queued work, then wait for them.
        self.stop.store(true, Ordering::Relaxed);
        self.storage_tx = None;
        self.apply_tx = None;
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        // The store (and its directory lock) is shared with the storage thread since small
        // appends are made here: the last handle goes before the node reports itself stopped,
        // so a node started on the same directory after `shutdown` finds it free.
        drop(self.storage);
        tracing::info!(id = %self.id, "runtime stopped");
        let _ = stopped.send(true);
        for w in self.shutdown_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn can_take_work(&self) -> bool {
        self.storage_overflow.len() < BACKLOG_LIMIT
            && self.apply_backlog.len() < BACKLOG_LIMIT
            && self.waiting_persist.len() < BACKLOG_LIMIT
    }

    fn check_stopping(&mut self) {
        if let Some(deadline) = self.stopping {
            // Drained: everything in the log is applied. A lone voter has no one to hand over
            // to, so it stops once drained (it refuses new proposals meanwhile), not after the
            // full handover bound. A follower (or a leader that handed over) waits to be
            // drained too, within the deadline: the commit of its last entries reaches it with
            // the delayed commit notice, or the next heartbeat, and without this a stopped
            // follower's files would miss writes the cluster acknowledged a moment before (it
            // applies them from its log only at its next start).
            let drained = self.applied >= self.core.log().last_index();
            let waits = self.core.is_leader() && self.has_other_voters();
            if Instant::now() >= deadline || (drained && !waits) {
                self.exit = true;
            }
        }
    }

    /// Whether the configuration has a voter besides this node (someone to hand over to).
    fn has_other_voters(&self) -> bool {
        self.core.configuration().voters().any(|v| v != self.id)
    }

    fn write_refusal(&self) -> Option<ProposeError> {
        if let Some(r) = &self.poisoned {
            return Some(ProposeError::Unavailable { reason: format!("storage failed: {r}") });
        }
        if let Some(r) = &self.apply_failed {
            return Some(ProposeError::Unavailable { reason: format!("state machine failed: {r}") });
        }
        if let Some(r) = &self.disk_full {
            return Some(ProposeError::DiskFull { reason: r.clone() });
        }
        if self.stopping.is_some() {
            // Handing leadership over before it stops: a client retries on the next leader
            // (nothing of the refused proposal was appended).
            return Some(ProposeError::NotLeader { leader: None });
        }
        None
    }

    fn on_propose(&mut self, p: ProposeReq) {
        if p.data.len() > self.opts.max_entry_bytes {
            let _ = p
                .reply
                .send(Err(ProposeError::TooLarge { size_bytes: p.data.len(), limit_bytes: self.opts.max_entry_bytes }));
            return;
        }
        if let Some(e) = self.write_refusal() {
            let _ = p.reply.send(Err(e));
            return;
        }
        let r = match self.core.propose(p.data) {
            Ok(index) => {
                tracing::trace!(target: "dqlite::commit", index = index.0, "proposed");
                self.metrics.proposals.fetch_add(1, Ordering::Relaxed);
                Ok(Proposed { index, term: self.core.term() })
            }
            Err(dqlite_raft::Error::NotLeader { leader }) => Err(ProposeError::NotLeader { leader }),
            Err(dqlite_raft::Error::TransferInProgress) => Err(ProposeError::NotLeader { leader: None }),
            Err(e) => Err(ProposeError::Unavailable { reason: e.to_string() }),
        };
        let _ = p.reply.send(r);
    }

    fn on_message(&mut self, m: Message) {
        if self.poisoned.is_some() && !self.core.is_leader() {
            // Nothing can be made durable: take no part in replication (local reads still work).
            return;
        }
        if let MessageBody::InstallSnapshot(s) = &m.body {
            self.metrics.snapshot_max_buffer.fetch_max(s.data.len() as u64, Ordering::Relaxed);
            if s.done && !self.snapshot_image_ok(&m) {
                return;
            }
        }
        if let MessageBody::AppendEntries(a) = &m.body {
            tracing::trace!(target: "dqlite::commit", from = %m.from, n = a.entries.len(), "append entries in");
        } else {
            tracing::trace!(target: "dqlite::commit", from = %m.from, "message in");
        }
        let contact = match &m.body {
            MessageBody::AppendEntries(a) => Some((m.from, m.term, a.leader_commit)),
            MessageBody::Heartbeat(h) => Some((m.from, m.term, h.leader_commit)),
            _ => None,
        };
        if let Err(e) = self.core.step(m) {
            tracing::debug!(id = %self.id, error = %e, "message refused");
        }
        if let Some((from, term, commit)) = contact {
            self.follower.on_leader_message(&self.core, from, term, commit);
        }
    }

    /// Before the core sees the last chunk of a snapshot, checks the whole image end to end.
    /// A bad image is refused and the leader asked to send it again from the start.
    fn snapshot_image_ok(&mut self, m: &Message) -> bool {
        let MessageBody::InstallSnapshot(s) = &m.body else { return true };
        if s.meta.index <= self.core.log().committed() {
            return true; // the core acknowledges it without installing anything
        }
        // Chunks accepted so far are recorded from the core's Readys: bring them up to date.
        self.process_ready();
        let mut check = match &self.recv_check {
            Some((meta, c)) if *meta == s.meta && c.received() == s.offset => c.clone(),
            _ if s.offset == 0 => frame::StreamCheck::default(),
            _ => return true, // out of order: the core answers with the offset it expects
        };
        check.update(&s.data);
        match check.finish() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(id = %self.id, index = %s.meta.index, error = %e, "received snapshot refused: fetching it again");
                self.metrics.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                self.recv_check = None;
                let term = m.term.max(self.core.term());
                self.transport.send(Message {
                    from: self.id,
                    to: m.from,
                    term,
                    body: MessageBody::InstallSnapshotResponse(dqlite_raft::InstallSnapshotResponse {
                        snapshot_index: s.meta.index,
                        next_offset: 0,
                        done: false,
                        match_index: LogIndex::ZERO,
                    }),
                });
                false
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::ConfChange(cc, w) => {
                if let Some(r) = self.write_refusal() {
                    let _ = w.send(Err(RuntimeError::Unavailable { reason: r.to_string() }));
                    return;
                }
                let node = match &cc {
                    ConfChange::Add { id, .. } | ConfChange::Assign { id, .. } | ConfChange::Remove { id } => *id,
                };
                match self.core.propose_conf_change(cc) {
                    Ok(ConfChangeStatus::Appended(i)) => {
                        self.index_waiters.insert(i, (self.core.term(), w));
                    }
                    Ok(ConfChangeStatus::CatchingUp) => {
                        self.catching_up.insert(node, w);
                    }
                    Err(e) => {
                        let _ = w.send(Err(from_raft(e)));
                    }
                }
            }
            Control::Transfer(target, w) => match self.core.transfer_leadership(target) {
                Ok(t) => self.transfers.push((t, w)),
                Err(e) => {
                    let _ = w.send(Err(from_raft(e)));
                }
            },
            Control::Barrier(w) => match self.core.barrier() {
                Ok(i) => {
                    self.index_waiters.insert(i, (self.core.term(), w));
                }
                Err(e) => {
                    let _ = w.send(Err(from_raft(e)));
                }
            },
            Control::ReadIndex(w) => {
                self.next_read += 1;
                let id = self.next_read;
                match self.core.read_index(id.to_le_bytes().to_vec()) {
                    Ok(()) => {
                        self.reads.insert(id, w);
                    }
                    Err(e) => {
                        let _ = w.send(Err(from_raft(e)));
                    }
                }
            }
            Control::Status(reply) => {
                let _ = reply.send(RuntimeStatus {
                    raft: self.core.status(),
                    configuration: self.core.configuration().clone(),
                    metrics: self.metrics_snapshot(),
                    disk_full: self.disk_full.clone(),
                    poisoned: self.poisoned.clone(),
                    apply_failed: self.apply_failed.clone(),
                });
            }
            Control::Shutdown { graceful, done } => {
                self.shutdown_waiters.push(done);
                if !graceful {
                    self.exit = true;
                    return;
                }
                if self.stopping.is_none() {
                    // Followers learn the last commits now, not after the notice delay.
                    self.core.send_commit_updates();
                    if self.core.is_leader() && self.has_other_voters() {
                        match self.core.transfer_leadership(None) {
                            Ok(t) => tracing::info!(id = %self.id, target = %t, "shutdown: handing leadership over"),
                            Err(e) => tracing::info!(id = %self.id, error = %e, "shutdown: no leadership transfer"),
                        }
                    }
                    // A leader's bound is the handover's; a follower waits for the commit of
                    // its last entries up to two heartbeat intervals.
                    let bound =
                        if self.core.is_leader() { self.opts.election_timeout() * 2 } else { self.opts.tick() * 4 };
                    self.stopping = Some(Instant::now() + bound);
                }
            }
        }
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut m = self.metrics.snapshot();
        m.messages_dropped = self.dropped.load(Ordering::Relaxed);
        m
    }

    fn on_completion(&mut self, c: Completion) {
        match c {
            Completion::Storage(d) => self.on_storage(d),
            Completion::Apply(d) => self.on_apply(d),
        }
    }

    fn on_storage(&mut self, d: StorageDone) {
        match d {
            StorageDone::Persisted { seq } => {
                while self.waiting_persist.front().is_some_and(|w| w.0 <= seq) {
                    let Some((_, marker, msgs)) = self.waiting_persist.pop_front() else { break };
                    if let Some((i, t)) = marker {
                        tracing::trace!(target: "dqlite::commit", index = i.0, msgs = msgs.len(), "persisted");
                        self.core.persisted(i, t);
                    }
                    for m in msgs {
                        self.transport.send(m);
                    }
                }
            }
            StorageDone::Installed { seq, index, payload } => {
                let mut payload = Some(payload);
                for item in self.apply_backlog.iter_mut() {
                    if matches!(item, ApplyItem::Gate(s) if *s == seq) {
                        if let Some(p) = payload.take() {
                            *item = ApplyItem::Job(ApplyJob::Restore { index, payload: p });
                        }
                        break;
                    }
                }
                self.last_snapshot = self.last_snapshot.max(index);
                self.flush_apply();
            }
            StorageDone::DiskFull { reason } => {
                tracing::warn!(id = %self.id, %reason, "disk full: writes refused until space returns");
                self.disk_full = Some(reason);
            }
            StorageDone::DiskSpaceBack => {
                tracing::info!(id = %self.id, "disk space back: writes accepted again");
                self.disk_full = None;
            }
            StorageDone::Poisoned { reason } => {
                self.poisoned = Some(reason);
                if self.core.is_leader() {
                    let _ = self.core.transfer_leadership(None);
                }
            }
            StorageDone::SnapshotWritten { index } => {
                self.snapshot_in_progress = false;
                self.last_snapshot = self.last_snapshot.max(index);
                // One may have come due while this one was taken (checked after applies only:
                // on a node that applies nothing more it would wait for the next write, and its
                // log with it).
                self.maybe_snapshot();
                self.maybe_compact();
            }
            StorageDone::SnapshotMissing { index } => {
                tracing::info!(id = %self.id, %index, "snapshot not stored: taking a new one");
                self.snapshot_in_progress = false;
                if self.apply_failed.is_none() && self.poisoned.is_none() {
                    self.take_snapshot();
                }
            }
            StorageDone::Chunk { req, data, done } => {
                if self.core.send_snapshot_chunk(&req, data, done).is_ok() {
                    self.metrics.snapshot_chunks_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_apply(&mut self, d: ApplyDone) {
        match d {
            ApplyDone::Applied { index, durable } => {
                self.applied = self.applied.max(index);
                self.follower.on_applied(self.applied);
                self.durable = durable;
                if !self.reads_applying.is_empty() {
                    let applied = self.applied;
                    for (i, w) in std::mem::take(&mut self.reads_applying) {
                        if i <= applied {
                            let _ = w.send(Ok(i));
                        } else {
                            self.reads_applying.push((i, w));
                        }
                    }
                }
                if let Err(e) = self.core.applied(index) {
                    tracing::error!(id = %self.id, error = %e, "applied report refused");
                }
                let done: Vec<LogIndex> = self.committed_waiters.range(..=index).map(|(i, _)| *i).collect();
                for i in done {
                    if let Some(w) = self.committed_waiters.remove(&i) {
                        let _ = w.send(Ok(i));
                    }
                }
                self.maybe_snapshot();
                self.maybe_compact();
            }
            ApplyDone::Image { index, image } => match self.core.snapshot_taken(index) {
                Ok(meta) => {
                    self.snapshot_backoff = None;
                    self.send_storage(StorageJob::WriteSnapshot { meta, image })
                }
                Err(e) => {
                    tracing::warn!(id = %self.id, error = %e, "snapshot not recorded");
                    self.snapshot_in_progress = false;
                }
            },
            ApplyDone::SnapshotFailed { reason } => {
                // Not again at once (it was retried after every applied entry): back off,
                // doubling from SNAPSHOT_RETRY_MIN up to SNAPSHOT_RETRY_MAX.
                let failures = self.snapshot_backoff.map_or(0, |(_, n)| n).saturating_add(1);
                let delay = SNAPSHOT_RETRY_MIN.saturating_mul(1 << (failures - 1).min(16)).min(SNAPSHOT_RETRY_MAX);
                tracing::warn!(id = %self.id, %reason, failures, retry_ms = delay.as_millis() as u64, "snapshot not taken");
                self.snapshot_backoff = Some((Instant::now() + delay, failures));
                self.snapshot_in_progress = false;
            }
            ApplyDone::Failed(e) => {
                self.apply_failed = Some(e.to_string());
                if self.core.is_leader() {
                    let _ = self.core.transfer_leadership(None);
                }
            }
        }
    }

    /// Whether a snapshot may be started now (none running, no failure, not backing off).
    fn snapshot_allowed(&self) -> bool {
        !self.snapshot_in_progress
            && self.apply_failed.is_none()
            && self.poisoned.is_none()
            && self.snapshot_backoff.is_none_or(|(at, _)| Instant::now() >= at)
    }

    fn maybe_snapshot(&mut self) {
        if !self.snapshot_allowed() {
            return;
        }
        let entries = self.applied.0.saturating_sub(self.last_snapshot.0);
        let bytes = self.log_bytes.between(self.last_snapshot, self.applied);
        if entries >= self.opts.snapshot_threshold.max(1)
            || (entries > 0 && bytes >= self.opts.snapshot_threshold_bytes)
        {
            self.take_snapshot();
        }
    }

    fn take_snapshot(&mut self) {
        self.snapshot_in_progress = true;
        self.apply_backlog.push_back(ApplyItem::Job(ApplyJob::Snapshot));
        self.flush_apply();
    }

    fn maybe_compact(&mut self) {
        // Only up to a snapshot known to be stored (a restart needs the log contiguous after it).
        let Some(snap) = self.core.snapshot_meta().map(|s| s.index.min(self.last_snapshot)) else { return };
        // The tail kept behind the applied index: at most `trailing_entries` entries and at
        // most `trailing_bytes` bytes of them.
        let trail = LogIndex(self.applied.0.saturating_sub(self.opts.trailing_entries))
            .max(self.log_bytes.keep_at_most(self.applied, self.opts.trailing_bytes));
        let target = self.durable.min(trail).min(snap);
        if target <= self.compacted {
            return;
        }
        let c = self.core.compact(target);
        if c > self.compacted {
            self.compacted = c;
            self.metrics.compacted_index.store(c.0, Ordering::Relaxed);
            self.send_storage(StorageJob::Compact { up_to: c });
        }
    }

    fn send_storage(&mut self, job: StorageJob) {
        // Whatever this task still means to append itself goes first.
        if let Some(p) = self.inline.take() {
            self.send_storage(StorageJob::Persist(p));
        }
        if self.storage_overflow.is_empty() {
            if let Some(tx) = &self.storage_tx {
                self.storage_pending.fetch_add(1, Ordering::SeqCst);
                match tx.try_send(job) {
                    Ok(()) => return,
                    Err(TrySendError::Full(j)) => {
                        self.storage_pending.fetch_sub(1, Ordering::SeqCst);
                        self.storage_overflow.push_back(j);
                        return;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.storage_pending.fetch_sub(1, Ordering::SeqCst);
                        tracing::error!(id = %self.id, "storage thread gone");
                        return;
                    }
                }
            }
            return;
        }
        self.storage_overflow.push_back(job);
        self.flush_storage();
    }

    fn flush_storage(&mut self) {
        let Some(tx) = &self.storage_tx else { return };
        while let Some(j) = self.storage_overflow.pop_front() {
            self.storage_pending.fetch_add(1, Ordering::SeqCst);
            match tx.try_send(j) {
                Ok(()) => {}
                Err(TrySendError::Full(j)) => {
                    self.storage_pending.fetch_sub(1, Ordering::SeqCst);
                    self.storage_overflow.push_front(j);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.storage_pending.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// Whether `job` may be appended by this task itself: a plain append of at most
    /// [`INLINE_APPEND_BYTES`] with no term or vote to save, while the storage is healthy and
    /// nothing else is on its way to the disk. Two conditions each keep the order of appends
    /// and the truth of "persisted" on their own: no persist job is waiting to be reported
    /// durable (so reporting this one durable reports nothing else), and the storage thread
    /// has nothing queued or running (so it cannot write an older job after this one; it
    /// also keeps this task from waiting on the storage lock behind a compaction).
    fn may_append_inline(&self, job: &PersistJob) -> bool {
        job.chunks.is_empty()
            && self.waiting_persist.is_empty()
            && job.install.is_none()
            && job.hard_state.is_none()
            && !job.entries.is_empty()
            && self.inline.is_none()
            && self.storage_overflow.is_empty()
            && self.poisoned.is_none()
            && self.disk_full.is_none()
            && !self.metrics.poisoned.load(Ordering::SeqCst)
            && self.storage_pending.load(Ordering::SeqCst) == 0
            && job.entries.iter().map(|e| e.data.len()).sum::<usize>() <= INLINE_APPEND_BYTES
    }

    /// Appends the job held in `inline` on this task (see [`Driver::may_append_inline`]), then
    /// sends its messages and records it durable, as the storage thread would. Anything but
    /// success hands the job to the storage thread unchanged, which retries a full disk and
    /// poisons on a failure (an append that failed left the log as it was, or poisoned).
    fn append_inline(&mut self) {
        // Nothing was sent to the storage thread since `may_append_inline` (a send hands this
        // job over first) and only the thread lowers `storage_pending`: the conditions hold.
        let Some(job) = self.inline.take() else { return };
        let appended = {
            let mut st = storage_thread::lock_storage(&self.storage);
            st.log.append(&job.entries)
        };
        match appended {
            Ok(()) => {
                tracing::trace!(target: "dqlite::commit", n = job.entries.len(), "appended inline");
                self.metrics.appended(job.entries.len());
                self.metrics.inline_appends.fetch_add(1, Ordering::Relaxed);
                for m in job.messages {
                    self.transport.send(m);
                }
                self.on_storage(StorageDone::Persisted { seq: job.seq });
            }
            Err(e) => {
                tracing::debug!(id = %self.id, error = %e, "inline append failed; handing it to the storage thread");
                self.send_storage(StorageJob::Persist(job));
            }
        }
    }

    fn flush_apply(&mut self) {
        let Some(tx) = &self.apply_tx else { return };
        while let Some(item) = self.apply_backlog.pop_front() {
            match item {
                ApplyItem::Gate(s) => {
                    self.apply_backlog.push_front(ApplyItem::Gate(s));
                    return;
                }
                ApplyItem::Job(j) => match tx.try_send(j) {
                    Ok(()) => {}
                    Err(TrySendError::Full(j)) => {
                        self.apply_backlog.push_front(ApplyItem::Job(j));
                        return;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                },
            }
        }
    }

    /// Handles every `Ready` the core has, following the persistence contract of `ready.rs`.
    fn process_ready(&mut self) {
        self.flush_storage();
        self.flush_apply();
        while self.core.has_ready() {
            let rd = self.core.ready();
            self.handle_ready(rd);
        }
        if self.notice_at.is_none() && !self.opts.commit_notice_delay.is_zero() && self.core.commit_updates_pending() {
            self.notice_at = Some(tokio::time::Instant::now() + self.opts.commit_notice_delay);
        }
        self.publish();
    }

    fn handle_ready(&mut self, rd: Ready) {
        let Ready {
            messages,
            snapshot_chunks,
            snapshot,
            entries,
            hard_state,
            persisted_messages,
            committed_entries,
            read_states,
            snapshot_requests,
            events,
        } = rd;
        // 1. Messages go out now.
        if !messages.is_empty() {
            tracing::trace!(target: "dqlite::commit", n = messages.len(), "messages out");
        }
        for m in messages {
            self.transport.send(m);
        }
        // Events first: a role change reaches the state machine before the entries of its Ready.
        for ev in events {
            self.on_event(ev);
        }
        // 2-5. Persistence, on the storage thread.
        self.log_bytes.appended(&entries);
        for c in &snapshot_chunks {
            let check = match &mut self.recv_check {
                Some((meta, check)) if *meta == c.meta && c.offset != 0 => check,
                _ => {
                    self.recv_check = Some((c.meta.clone(), frame::StreamCheck::default()));
                    match &mut self.recv_check {
                        Some((_, check)) => check,
                        None => continue,
                    }
                }
            };
            check.update(&c.data);
        }
        let marker =
            entries.last().map(|e| (e.index, e.term)).or(snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)));
        let needs_persist =
            !snapshot_chunks.is_empty() || snapshot.is_some() || !entries.is_empty() || hard_state.is_some();
        if needs_persist {
            self.next_seq += 1;
            let seq = self.next_seq;
            if let Some(inst) = &snapshot {
                self.recv_check = None;
                self.apply_backlog.push_back(ApplyItem::Gate(seq));
                // Entries at or below the snapshot are now known only through it.
                let gone: Vec<LogIndex> = self.index_waiters.range(..=inst.meta.index).map(|(i, _)| *i).collect();
                for i in gone {
                    if let Some((_, w)) = self.index_waiters.remove(&i) {
                        let _ = w.send(Err(RuntimeError::LeadershipLost));
                    }
                }
            }
            let job = PersistJob {
                seq,
                chunks: snapshot_chunks,
                install: snapshot,
                entries,
                hard_state,
                messages: persisted_messages,
            };
            if self.may_append_inline(&job) {
                self.inline = Some(job);
            } else {
                self.send_storage(StorageJob::Persist(job));
            }
            // Messages of later `Ready`s with nothing to persist wait behind this job (below).
            self.waiting_persist.push_back((seq, marker, Vec::new()));
        } else if !persisted_messages.is_empty() {
            match self.waiting_persist.back_mut() {
                Some(w) => w.2.extend(persisted_messages),
                None => {
                    for m in persisted_messages {
                        self.transport.send(m);
                    }
                }
            }
        }
        // 7. Committed entries, in order, to the apply thread.
        if !committed_entries.is_empty() {
            if let Some(e) = committed_entries.last() {
                tracing::trace!(target: "dqlite::commit", index = e.index.0, "committed");
            }
            self.check_waiters(&committed_entries);
            self.apply_backlog.push_back(ApplyItem::Job(ApplyJob::Entries(committed_entries)));
        }
        // 8. Reads.
        for rs in read_states {
            if let Ok(b) = <[u8; 8]>::try_from(rs.ctx.as_slice()) {
                if let Some(w) = self.reads.remove(&u64::from_le_bytes(b)) {
                    // Safe to serve once the local state machine has applied the read index.
                    if rs.index <= self.applied {
                        let _ = w.send(Ok(rs.index));
                    } else {
                        self.reads_applying.push((rs.index, w));
                    }
                }
            }
        }
        // 9. Snapshot bytes for followers.
        for req in snapshot_requests {
            let stale = self.applied.0.saturating_sub(req.meta.index.0) >= self.opts.snapshot_threshold.max(1);
            if req.offset == 0 && stale && self.snapshot_allowed() {
                // A fresher snapshot first; `snapshot_taken` restarts the transfer with it.
                self.take_snapshot();
                continue;
            }
            self.send_storage(StorageJob::ReadChunk(req));
        }
        self.flush_apply();
    }

    fn check_waiters(&mut self, entries: &[Entry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        if self.index_waiters.is_empty() {
            return;
        }
        let keys: Vec<LogIndex> = self.index_waiters.range(first.index..=last.index).map(|(i, _)| *i).collect();
        for i in keys {
            let Some((term, w)) = self.index_waiters.remove(&i) else { continue };
            let e = &entries[(i.0 - first.index.0) as usize];
            if e.term == term {
                self.committed_waiters.insert(i, w);
            } else {
                let _ = w.send(Err(RuntimeError::LeadershipLost));
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::RoleChanged { role, term, leader } => {
                tracing::debug!(id = %self.id, ?role, %term, ?leader, "role changed");
                self.apply_backlog.push_back(ApplyItem::Job(ApplyJob::Role { role, term, leader }));
                if role != StateRole::Leader {
                    for (target, w) in self.transfers.drain(..) {
                        let _ = w.send(Ok(leader.unwrap_or(target)));
                    }
                    for (_, w) in self.catching_up.drain() {
                        let _ = w.send(Err(RuntimeError::LeadershipLost));
                    }
                }
            }
            Event::ReadIndexFailed { ctx } => {
                if let Ok(b) = <[u8; 8]>::try_from(ctx.as_slice()) {
                    if let Some(w) = self.reads.remove(&u64::from_le_bytes(b)) {
                        let _ = w.send(Err(RuntimeError::LeadershipLost));
                    }
                }
            }
            Event::ConfChangeAppended { node, index } => {
                if let Some(w) = self.catching_up.remove(&node) {
                    self.index_waiters.insert(index, (self.core.term(), w));
                }
            }
            Event::ConfChangeAborted { node } => {
                if let Some(w) = self.catching_up.remove(&node) {
                    let _ = w.send(Err(RuntimeError::ConfChangeAborted { node }));
                }
            }
            Event::TransferAborted { target } => {
                let mut keep = Vec::new();
                for (t, w) in self.transfers.drain(..) {
                    if t == target {
                        let _ = w.send(Err(RuntimeError::TransferAborted { target }));
                    } else {
                        keep.push((t, w));
                    }
                }
                self.transfers = keep;
            }
            _ => {}
        }
    }

    /// Publishes the role and configuration (and tells the transport about new members).
    fn publish(&mut self) {
        let leader = self.core.leader();
        let info = RoleInfo {
            role: self.core.role(),
            term: self.core.term(),
            leader,
            leader_address: leader.and_then(|l| self.core.configuration().get(l)).map(|s| s.address.clone()),
        };
        self.role_tx.send_if_modified(|r| {
            if *r != info {
                *r = info;
                true
            } else {
                false
            }
        });
        let conf = self.core.configuration();
        if *self.conf_tx.borrow() != *conf {
            let servers: Vec<(NodeId, String)> = conf.servers().iter().map(|s| (s.id, s.address.clone())).collect();
            self.transport.set_peers(&servers);
            let _ = self.conf_tx.send(conf.clone());
        }
        let log = self.core.log();
        self.log_bytes.sync(log.compacted_index(), log.last_index());
        self.metrics.in_memory_entries.store(log.last_index().0 - log.compacted_index().0, Ordering::Relaxed);
        self.metrics.in_memory_bytes.store(self.log_bytes.total(), Ordering::Relaxed);
    }
}

impl RuntimeHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The role, term and leader as last published.
    pub fn role(&self) -> RoleInfo {
        self.inner.role.borrow().clone()
    }

    /// The known leader and its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let r = self.inner.role.borrow();
        r.leader.map(|l| (l, r.leader_address.clone().unwrap_or_default()))
    }

    /// A watch of role changes.
    pub fn watch_role(&self) -> watch::Receiver<RoleInfo> {
        self.inner.role.clone()
    }

    /// The configuration in force (members with addresses and roles).
    pub fn configuration(&self) -> Configuration {
        self.inner.conf.borrow().clone()
    }

    /// A watch of the configuration.
    pub fn watch_configuration(&self) -> watch::Receiver<Configuration> {
        self.inner.conf.clone()
    }

    /// The node's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// True once the node has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.inner.stopped.borrow()
    }

    async fn control<R>(&self, make: impl FnOnce(Waiter<R>) -> Control) -> Result<R, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.inner.control.send(make(tx)).await.map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Adds a server (leader only). Returns once the configuration entry is applied here. A new
    /// voter is first caught up. (The node layer's policy: the first three members voters, later
    /// ones standbys.)
    pub async fn add(&self, id: NodeId, address: impl Into<String>, role: Role) -> Result<LogIndex, RuntimeError> {
        let address = address.into();
        self.control(|w| Control::ConfChange(ConfChange::Add { id, address, role }, w)).await
    }

    /// Changes a member's role (leader only).
    pub async fn assign(&self, id: NodeId, role: Role) -> Result<LogIndex, RuntimeError> {
        self.control(|w| Control::ConfChange(ConfChange::Assign { id, role }, w)).await
    }

    /// Removes a member (leader only).
    pub async fn remove(&self, id: NodeId) -> Result<LogIndex, RuntimeError> {
        self.control(|w| Control::ConfChange(ConfChange::Remove { id }, w)).await
    }

    /// Hands leadership to `target` (or the most up-to-date voter); returns once this node is
    /// no longer leader, with the new leader if known.
    pub async fn transfer(&self, target: Option<NodeId>) -> Result<NodeId, RuntimeError> {
        self.control(|w| Control::Transfer(target, w)).await
    }

    /// Appends a barrier and returns its index once it is applied here (everything before it is
    /// applied then).
    pub async fn barrier(&self) -> Result<LogIndex, RuntimeError> {
        self.control(Control::Barrier).await
    }

    /// A linearizable read point: returns an index, once the local state machine has applied
    /// it, such that reading the local state now is linearizable. Leader only.
    pub async fn read_index(&self) -> Result<LogIndex, RuntimeError> {
        self.control(Control::ReadIndex).await
    }

    /// A read point for a read on this node's local state that reflects every write
    /// acknowledged at least `max_staleness` (plus one message delay) before the call (follower
    /// reads; `docs/replication.md`, "Reads"). On a follower: waits until it heard from the
    /// leader of its term within `max_staleness` and applied the leader's commit index that
    /// message carried, at most two heartbeat intervals, then fails with
    /// [`RuntimeError::FollowerStale`]. On the leader: a [`read_index`](Self::read_index).
    pub async fn follower_read(&self, max_staleness: Duration) -> Result<LogIndex, RuntimeError> {
        let waited = follower_read::wait_fresh(
            self.inner.follower.clone(),
            self.inner.role.clone(),
            max_staleness,
            self.inner.heartbeat,
        )
        .await?;
        match waited {
            Some(index) => {
                self.inner.metrics.follower_reads.fetch_add(1, Ordering::Relaxed);
                Ok(index)
            }
            None => self.read_index().await,
        }
    }

    /// The node's full status.
    pub async fn status(&self) -> Result<RuntimeStatus, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.inner.control.send(Control::Status(tx)).await.map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// A one-line description (for logs and the DESCRIBE request).
    pub async fn describe(&self) -> Result<String, RuntimeError> {
        let s = self.status().await?;
        Ok(format!(
            "node {} {:?} term {} leader {:?} commit {} applied {} last {} members {}",
            s.raft.id,
            s.raft.role,
            s.raft.term,
            s.raft.leader,
            s.raft.committed,
            s.raft.applied,
            s.raft.last_index,
            s.configuration.servers().len()
        ))
    }

    /// Proposes from async code (the same as [`Replicator::propose`], without blocking).
    pub async fn propose_async(&self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        if data.len() > self.inner.max_entry_bytes {
            return Err(ProposeError::TooLarge { size_bytes: data.len(), limit_bytes: self.inner.max_entry_bytes });
        }
        let (tx, rx) = oneshot::channel();
        let stopped = || ProposeError::Unavailable { reason: "node stopped".into() };
        self.inner.proposals.send(ProposeReq { data, reply: tx }).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops the node gracefully: a leader hands leadership over first (bounded by two election
    /// timeouts), queued storage work is finished, the threads exit.
    pub async fn shutdown(&self) {
        self.stop(true).await
    }

    /// Stops the node at once, without handing leadership over (what a crash looks like to the
    /// peers; the harness also crashes the disk first).
    pub async fn kill(&self) {
        self.stop(false).await
    }

    async fn stop(&self, graceful: bool) {
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::Shutdown { graceful, done: tx }).await.is_ok() {
            let _ = rx.await;
        }
        let mut s = self.inner.stopped.clone();
        let _ = s.wait_for(|v| *v).await;
    }

    /// Waits until this node knows a leader (bounded by `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RuntimeError> {
        let mut w = self.inner.role.clone();
        let r = tokio::time::timeout(timeout, w.wait_for(|r| r.leader.is_some())).await;
        match r {
            Ok(Ok(r)) => r.leader.ok_or(RuntimeError::Timeout),
            Ok(Err(_)) => Err(RuntimeError::Stopped),
            Err(_) => Err(RuntimeError::Timeout),
        }
    }
}

/// A [`Replicator`] that forwards to a [`RuntimeHandle`] bound after the runtime started (the
/// state machine needs a replicator before [`Runtime::start`] returns the handle). Until bound,
/// and after the handle is unbound, proposals get [`ProposeError::Unavailable`].
#[derive(Debug, Default)]
pub struct LateReplicator {
    handle: std::sync::RwLock<Option<RuntimeHandle>>,
}

impl LateReplicator {
    /// An unbound replicator.
    pub fn new() -> Arc<LateReplicator> {
        Arc::new(LateReplicator::default())
    }

    /// Binds (or rebinds, after a restart) the node's handle; `None` unbinds.
    pub fn bind(&self, handle: Option<RuntimeHandle>) {
        *self.handle.write().unwrap_or_else(|e| e.into_inner()) = handle;
    }
}

impl Replicator for LateReplicator {
    fn propose(&self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        let h = self.handle.read().unwrap_or_else(|e| e.into_inner()).clone();
        match h {
            Some(h) => h.propose(data),
            None => Err(ProposeError::Unavailable { reason: "the node's runtime is not running".into() }),
        }
    }
}

impl Replicator for RuntimeHandle {
    /// Blocks for the hand-off to the Raft task. Must not be called from a tokio worker thread
    /// (SQLite threads are std threads); async code uses [`RuntimeHandle::propose_async`].
    fn propose(&self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        if data.len() > self.inner.max_entry_bytes {
            return Err(ProposeError::TooLarge { size_bytes: data.len(), limit_bytes: self.inner.max_entry_bytes });
        }
        let (tx, rx) = oneshot::channel();
        let stopped = || ProposeError::Unavailable { reason: "node stopped".into() };
        self.inner.proposals.blocking_send(ProposeReq { data, reply: tx }).map_err(|_| stopped())?;
        rx.blocking_recv().map_err(|_| stopped())?
    }
}
