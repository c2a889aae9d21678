//! The apply thread: the only caller of the [`StateMachine`], in log order.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use dqlite_raft::{Entry, EntryKind, LogIndex, NodeId, StateRole, Term};
use tokio::sync::mpsc::Sender;

use super::frame::FramedWriter;
use super::metrics::Metrics;
use super::Completion;
use crate::replication::{ApplyError, SnapshotCopy, StateMachine, IDLE_UPKEEP};
use crate::storage::{SnapshotReader, SnapshotSpool, SnapshotWriter};

/// Work for the apply thread, in the order it must happen.
#[derive(Debug)]
pub(crate) enum ApplyJob {
    /// Committed entries, in log order.
    Entries(Vec<Entry>),
    /// The role, term or leader changed.
    Role { role: StateRole, term: Term, leader: Option<NodeId> },
    /// Replace all state with a received image (reads the payload, without its trailer, from
    /// the stored snapshot: checked end to end before this job was queued).
    Restore { index: LogIndex, payload: SnapshotReader },
    /// Take a snapshot image (its point fixed here; the copy may run on a thread of its own).
    Snapshot,
}

/// What the apply thread reports.
#[derive(Debug)]
pub(crate) enum ApplyDone {
    /// Everything up to `index` is applied; the state machine is durable up to `durable`.
    Applied { index: LogIndex, durable: LogIndex },
    /// A framed snapshot image of the state at `index`, streamed into a snapshot file.
    Image { index: LogIndex, image: SnapshotWriter },
    /// Taking a snapshot failed.
    SnapshotFailed { reason: String },
    /// The state machine refused an entry: applying stopped.
    Failed(ApplyError),
}

pub(crate) struct ApplyThread<S: StateMachine> {
    pub(crate) sm: S,
    pub(crate) jobs: Receiver<ApplyJob>,
    pub(crate) done: Sender<Completion>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) spool: SnapshotSpool,
    pub(crate) id: NodeId,
}

impl<S: StateMachine> ApplyThread<S> {
    pub(crate) fn run(mut self) {
        let mut applied = self.sm.applied_index();
        let mut failed = false;
        loop {
            let job = match self.jobs.recv_timeout(IDLE_UPKEEP) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if !failed {
                        self.idle(applied, &mut failed);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if failed {
                continue;
            }
            match job {
                ApplyJob::Entries(entries) => {
                    let Some(last) = entries.last().map(|e| e.index) else { continue };
                    for e in &entries {
                        if e.index <= applied {
                            continue;
                        }
                        if e.kind == EntryKind::Command {
                            if let Err(err) = self.sm.apply(e) {
                                tracing::error!(id = %self.id, error = %err, "apply failed: applying stopped");
                                self.metrics.apply_failed.store(true, Ordering::Relaxed);
                                failed = true;
                                self.send(ApplyDone::Failed(err));
                                break;
                            }
                            self.metrics.entries_applied.fetch_add(1, Ordering::Relaxed);
                        }
                        applied = e.index;
                    }
                    if failed {
                        continue;
                    }
                    // Skipped entries (already in the state machine at open) count as applied.
                    applied = applied.max(last);
                    self.metrics.applied_index.store(applied.0, Ordering::Relaxed);
                    self.send(ApplyDone::Applied { index: last, durable: self.sm.durable_index() });
                }
                ApplyJob::Role { role, term, leader } => self.sm.role_changed(role, term, leader),
                ApplyJob::Restore { index, mut payload } => match self.sm.restore(index, &mut payload) {
                    Ok(()) => {
                        applied = index;
                        self.metrics.applied_index.store(applied.0, Ordering::Relaxed);
                        self.send(ApplyDone::Applied { index, durable: self.sm.durable_index() });
                    }
                    Err(err) => {
                        tracing::error!(id = %self.id, error = %err, "snapshot restore failed: applying stopped");
                        self.metrics.apply_failed.store(true, Ordering::Relaxed);
                        failed = true;
                        self.send(ApplyDone::Failed(err));
                    }
                },
                ApplyJob::Snapshot => match self.sm.snapshot_begin() {
                    // The point is fixed; the copy runs on its own thread while entries go on.
                    Ok(Some(copy)) => self.spawn_copy(copy),
                    Ok(None) => {
                        // Streamed into the snapshot file as the state machine writes it:
                        // memory does not grow with the image.
                        let r =
                            self.spool.create().map_err(|e| format!("creating the snapshot file: {e}")).and_then(|f| {
                                let mut w = FramedWriter::new(f);
                                let index = self.sm.snapshot(&mut w).map_err(|e| e.to_string())?;
                                let mut image = w.finish().map_err(|e| format!("writing the snapshot file: {e}"))?;
                                image.sync().map_err(|e| format!("syncing the snapshot file: {e}"))?;
                                Ok((index, image))
                            });
                        self.report_image(r);
                    }
                    Err(e) => self.report_image(Err(e.to_string())),
                },
            }
        }
    }

    /// Deferred upkeep of the state machine ([`StateMachine::idle`]); reports a durable index
    /// that moved, so the runtime may compact.
    fn idle(&mut self, applied: LogIndex, failed: &mut bool) {
        match self.sm.idle() {
            Ok(false) => {}
            Ok(true) => self.send(ApplyDone::Applied { index: applied, durable: self.sm.durable_index() }),
            Err(err) => {
                tracing::error!(id = %self.id, error = %err, "upkeep failed: applying stopped");
                self.metrics.apply_failed.store(true, Ordering::Relaxed);
                *failed = true;
                self.send(ApplyDone::Failed(err));
            }
        }
    }

    /// Writes `copy` into a new snapshot file on a thread of its own and reports the image.
    fn spawn_copy(&self, copy: Box<dyn SnapshotCopy>) {
        let (spool, done, id) = (self.spool.clone(), self.done.clone(), self.id);
        let spawned = std::thread::Builder::new().name("dqlite-snapshot".into()).spawn(move || {
            let index = copy.index();
            let r = spool.create().map_err(|e| format!("creating the snapshot file: {e}")).and_then(|f| {
                let mut w = FramedWriter::new(f);
                copy.write_to(&mut w).map_err(|e| e.to_string())?;
                let mut image = w.finish().map_err(|e| format!("writing the snapshot file: {e}"))?;
                // Synced here, not on the storage thread; `write_to` consumed the copy, so the
                // database files are let go (checkpoints go on) while the sync runs.
                image.sync().map_err(|e| format!("syncing the snapshot file: {e}"))?;
                Ok((index, image))
            });
            let _ = done.blocking_send(Completion::Apply(image_done(id, r)));
        });
        if let Err(e) = spawned {
            // The copy (dropped with the closure) released the files.
            self.report_image(Err(format!("cannot start the snapshot thread: {e}")));
        }
    }

    fn report_image(&self, r: Result<(LogIndex, SnapshotWriter), String>) {
        self.send(image_done(self.id, r));
    }

    fn send(&self, d: ApplyDone) {
        let _ = self.done.blocking_send(Completion::Apply(d));
    }
}

fn image_done(id: NodeId, r: Result<(LogIndex, SnapshotWriter), String>) -> ApplyDone {
    match r {
        Ok((index, image)) => ApplyDone::Image { index, image },
        Err(reason) => {
            tracing::warn!(%id, %reason, "snapshot failed");
            ApplyDone::SnapshotFailed { reason }
        }
    }
}
