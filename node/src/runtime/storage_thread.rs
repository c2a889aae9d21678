//! The storage thread: owns [`Storage`] and turns the Raft task's persistence work into as few
//! writes and syncs as possible.
//!
//! When it wakes it takes **every** job queued, concatenates the entries of consecutive persist
//! jobs into one [`LogStore::append`](crate::storage::LogStore::append) (one write, one
//! `fdatasync`: group commit across proposals and `Ready`s), saves the hard state only when the
//! term or the vote changed, and then reports the highest job sequence that is durable.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dqlite_raft::{
    Entry, HardState, IncomingSnapshotChunk, LogIndex, Message, NodeId, SnapshotChunkRequest, SnapshotInstall,
    SnapshotMeta, Term,
};
use tokio::sync::mpsc::Sender;

use super::frame;
use super::metrics::Metrics;
use crate::replication::Transport;
use crate::storage::{SnapshotInfo, SnapshotReader, SnapshotWriter, Storage, StorageError};

/// Work for the storage thread.
#[derive(Debug)]
pub(crate) enum StorageJob {
    /// Steps 2–5 of one `Ready`.
    Persist(PersistJob),
    /// Commit a snapshot image taken locally (already streamed into its file).
    WriteSnapshot { meta: SnapshotMeta, image: SnapshotWriter },
    /// Read bytes of the current snapshot for a follower.
    ReadChunk(SnapshotChunkRequest),
    /// Remove log segments wholly at or below `up_to`.
    Compact { up_to: LogIndex },
}

/// The persistence part of one `Ready`.
#[derive(Debug, Default)]
pub(crate) struct PersistJob {
    pub(crate) seq: u64,
    pub(crate) chunks: Vec<IncomingSnapshotChunk>,
    pub(crate) install: Option<SnapshotInstall>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) hard_state: Option<HardState>,
    /// Messages that may go out only once this job is durable (the core's
    /// `persisted_messages`): the storage thread sends them itself right after the sync, before
    /// it reports the job, so a follower's acknowledgement does not wait for a hand-off to the
    /// Raft task first (Raft tolerates any reordering against the task's own sends).
    pub(crate) messages: Vec<Message>,
}

/// What the storage thread reports to the Raft task.
#[derive(Debug)]
pub(crate) enum StorageDone {
    /// Every persist job up to `seq` is durable.
    Persisted { seq: u64 },
    /// A received snapshot was stored and verified; `payload` reads the state machine's image.
    Installed { seq: u64, index: LogIndex, payload: SnapshotReader },
    /// The disk is full: appends are retried until space returns.
    DiskFull { reason: String },
    /// Space came back; appends go through again.
    DiskSpaceBack,
    /// Storage failed for good (failed fsync, I/O error): writes are poisoned.
    Poisoned { reason: String },
    /// A locally taken snapshot is durable.
    SnapshotWritten { index: LogIndex },
    /// A locally taken snapshot could not be written (disk full), or a chunk was asked of a
    /// snapshot no longer stored: a new one is needed.
    SnapshotMissing { index: LogIndex },
    /// Bytes for a follower's snapshot.
    Chunk { req: SnapshotChunkRequest, data: Vec<u8>, done: bool },
}

pub(crate) struct StorageThread {
    /// Shared with the Raft task, which appends small batches itself when this thread has
    /// nothing queued or running ([`StorageThread::pending`]).
    pub(crate) storage: Arc<Mutex<Storage>>,
    /// Jobs sent to this thread and not yet wholly done (the Raft task increments it before
    /// each send; this thread decrements it after each job).
    pub(crate) pending: Arc<AtomicUsize>,
    pub(crate) jobs: Receiver<StorageJob>,
    pub(crate) done: Sender<super::Completion>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) disk_full_retry: Duration,
    pub(crate) id: NodeId,
    /// Where [`PersistJob::messages`] go.
    pub(crate) transport: Arc<dyn Transport>,
}

enum Flush {
    Ok,
    Poisoned,
    Stopped,
}

/// Locks the shared storage (a panic elsewhere while it was held leaves it usable: every
/// write checks the log's own poison state).
pub(crate) fn lock_storage(m: &Mutex<Storage>) -> MutexGuard<'_, Storage> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StorageThread {
    fn st(&self) -> MutexGuard<'_, Storage> {
        lock_storage(&self.storage)
    }

    pub(crate) fn run(mut self) {
        let mut saved = {
            let hs = self.st().meta.load();
            (hs.term, hs.vote)
        };
        let mut poisoned = false;
        loop {
            let first = match self.jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            tracing::trace!(target: "dqlite::commit", "storage job");
            let mut jobs = vec![first];
            while let Ok(j) = self.jobs.try_recv() {
                jobs.push(j);
            }
            // Group the consecutive persist jobs; other jobs are ordering points.
            let mut batch: Vec<Entry> = Vec::new();
            let mut hard: Option<HardState> = None;
            let mut last_seq: Option<u64> = None;
            let mut msgs: Vec<Message> = Vec::new();
            let n_jobs = jobs.len();
            for job in jobs {
                match job {
                    StorageJob::Persist(p) if !poisoned => {
                        if !p.chunks.is_empty() || p.install.is_some() {
                            match self.flush(&mut batch, &mut hard, &mut saved, &mut last_seq, &mut msgs) {
                                Flush::Ok => {}
                                Flush::Poisoned => poisoned = true,
                                Flush::Stopped => return,
                            }
                            if poisoned {
                                continue;
                            }
                            if let Err(e) = self.snapshot_part(&p) {
                                self.poison(format!("storing a received snapshot: {e}"));
                                poisoned = true;
                                continue;
                            }
                        }
                        merge(&mut batch, p.entries);
                        if let Some(hs) = p.hard_state {
                            hard = Some(hs);
                        }
                        msgs.extend(p.messages);
                        last_seq = Some(p.seq);
                    }
                    StorageJob::Persist(_) => {}
                    other => {
                        if !poisoned {
                            match self.flush(&mut batch, &mut hard, &mut saved, &mut last_seq, &mut msgs) {
                                Flush::Ok => {}
                                Flush::Poisoned => poisoned = true,
                                Flush::Stopped => return,
                            }
                        }
                        self.other(other, poisoned);
                    }
                }
            }
            if !poisoned {
                match self.flush(&mut batch, &mut hard, &mut saved, &mut last_seq, &mut msgs) {
                    Flush::Ok => {}
                    Flush::Poisoned => poisoned = true,
                    Flush::Stopped => return,
                }
            }
            // Everything taken is done (and reported): the Raft task may append by itself.
            self.pending.fetch_sub(n_jobs, Ordering::SeqCst);
        }
    }

    fn send(&self, d: StorageDone) {
        // The Raft task is gone only when the node stops; nothing is left to tell.
        let _ = self.done.blocking_send(super::Completion::Storage(d));
    }

    fn poison(&self, reason: String) {
        tracing::error!(id = %self.id, %reason, "storage failed: writes are poisoned");
        self.metrics.poisoned.store(true, Ordering::Relaxed);
        self.send(StorageDone::Poisoned { reason });
    }

    /// Writes the pending entries (one append) and hard state, then sends `msgs` and reports
    /// `last_seq`.
    fn flush(
        &mut self,
        batch: &mut Vec<Entry>,
        hard: &mut Option<HardState>,
        saved: &mut (Term, Option<NodeId>),
        last_seq: &mut Option<u64>,
        msgs: &mut Vec<Message>,
    ) -> Flush {
        let mut full = false;
        if !batch.is_empty() {
            loop {
                match self.st().log.append(batch) {
                    Ok(()) => break,
                    Err(StorageError::DiskFull { op, file }) => {
                        if !full {
                            full = true;
                            self.metrics.disk_full.store(true, Ordering::Relaxed);
                            self.send(StorageDone::DiskFull { reason: format!("disk full while {op} {file}") });
                        }
                        if !self.wait_retry() {
                            return Flush::Stopped;
                        }
                    }
                    Err(e) => {
                        self.poison(format!("log append: {e}"));
                        return Flush::Poisoned;
                    }
                }
            }
            tracing::trace!(target: "dqlite::commit", n = batch.len(), "appended");
            self.metrics.appended(batch.len());
            batch.clear();
        }
        if let Some(hs) = hard.take() {
            if (hs.term, hs.vote) != *saved {
                loop {
                    match self.st().meta.save(&hs) {
                        Ok(()) => break,
                        Err(StorageError::DiskFull { op, file }) => {
                            if !full {
                                full = true;
                                self.metrics.disk_full.store(true, Ordering::Relaxed);
                                self.send(StorageDone::DiskFull { reason: format!("disk full while {op} {file}") });
                            }
                            if !self.wait_retry() {
                                return Flush::Stopped;
                            }
                        }
                        Err(e) => {
                            self.poison(format!("saving term and vote: {e}"));
                            return Flush::Poisoned;
                        }
                    }
                }
                *saved = (hs.term, hs.vote);
                self.metrics.meta_saves.fetch_add(1, Ordering::Relaxed);
            }
        }
        if full {
            self.metrics.disk_full.store(false, Ordering::Relaxed);
            self.send(StorageDone::DiskSpaceBack);
        }
        for m in msgs.drain(..) {
            self.transport.send(m);
        }
        if let Some(seq) = last_seq.take() {
            self.send(StorageDone::Persisted { seq });
        }
        Flush::Ok
    }

    fn wait_retry(&self) -> bool {
        std::thread::sleep(self.disk_full_retry);
        !self.stop.load(Ordering::Relaxed)
    }

    /// Steps 2 and 3: store received chunks, then install the snapshot they complete.
    fn snapshot_part(&mut self, p: &PersistJob) -> Result<(), String> {
        for c in &p.chunks {
            let info = info_of(&c.meta);
            self.st().snapshots.receive_chunk(&info, c.offset, &c.data).map_err(|e| e.to_string())?;
        }
        let Some(install) = &p.install else { return Ok(()) };
        let info = self.st().snapshots.finish_receive().map_err(|e| e.to_string())?;
        if info.index != install.meta.index || info.term != install.meta.term {
            return Err(format!(
                "received snapshot {}/{} but asked to install {}/{}",
                info.index, info.term, install.meta.index, install.meta.term
            ));
        }
        // Checked again as stored, read back in bounded pieces; the apply thread then reads the
        // payload from the file (never whole in memory).
        let mut image = self
            .st()
            .snapshots
            .spool(self.metrics.snapshot_max_buffer.clone())
            .open(&info)
            .map_err(|e| format!("opening stored snapshot {}: {e}", info.index))?;
        let len = frame::verify_reader(&mut image)
            .map_err(|e| format!("reading stored snapshot {}: {e}", info.index))?
            .map_err(|e| format!("stored snapshot {}: {e}", info.index))?;
        image.rewind(len);
        let index = install.meta.index;
        if install.keep_log {
            self.st().log.compact(index).map_err(|e| e.to_string())?;
        } else {
            self.st().log.reset(index.next()).map_err(|e| e.to_string())?;
        }
        self.metrics.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        self.send(StorageDone::Installed { seq: p.seq, index, payload: image });
        Ok(())
    }

    fn other(&mut self, job: StorageJob, poisoned: bool) {
        match job {
            StorageJob::Persist(_) => {}
            StorageJob::WriteSnapshot { meta, image } => {
                if poisoned {
                    return;
                }
                match self.st().snapshots.commit_local(info_of(&meta), image) {
                    Ok(_) => {
                        self.metrics.snapshots_taken.fetch_add(1, Ordering::Relaxed);
                        self.send(StorageDone::SnapshotWritten { index: meta.index });
                    }
                    Err(StorageError::DiskFull { .. }) => {
                        tracing::warn!(id = %self.id, index = %meta.index, "disk full: snapshot not written");
                        self.send(StorageDone::SnapshotMissing { index: meta.index });
                    }
                    Err(e) => self.poison(format!("writing snapshot {}: {e}", meta.index)),
                }
            }
            StorageJob::ReadChunk(req) => {
                let info = self
                    .st()
                    .snapshots
                    .list()
                    .iter()
                    .find(|s| s.index == req.meta.index && s.term == req.meta.term)
                    .cloned();
                let Some(info) = info else {
                    tracing::debug!(id = %self.id, index = %req.meta.index, "chunk asked of a snapshot no longer stored");
                    self.send(StorageDone::SnapshotMissing { index: req.meta.index });
                    return;
                };
                let mut buf = vec![0u8; req.max_bytes.min(info.data_len.saturating_sub(req.offset)) as usize];
                self.metrics.snapshot_max_buffer.fetch_max(buf.len() as u64, Ordering::Relaxed);
                match self.st().snapshots.read_chunk(&info, req.offset, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        let done = req.offset + n as u64 >= info.data_len;
                        self.send(StorageDone::Chunk { req, data: buf, done });
                    }
                    Err(e) => tracing::warn!(id = %self.id, error = %e, "reading a snapshot chunk failed"),
                }
            }
            StorageJob::Compact { up_to } => {
                if poisoned {
                    return;
                }
                if let Err(e) = self.st().log.compact(up_to) {
                    match e {
                        StorageError::DiskFull { .. } => tracing::warn!(id = %self.id, "disk full: compaction skipped"),
                        e => self.poison(format!("compacting the log: {e}")),
                    }
                }
            }
        }
    }
}

pub(crate) fn info_of(meta: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo::new(meta.index, meta.term, meta.configuration_index, meta.configuration.encode())
}

/// Appends `next` to `batch`, replacing the suffix it overwrites.
fn merge(batch: &mut Vec<Entry>, next: Vec<Entry>) {
    let Some(first) = next.first() else { return };
    let first = first.index;
    if let Some(pos) = batch.iter().position(|e| e.index >= first) {
        batch.truncate(pos);
    }
    if let Some(last) = batch.last() {
        if last.index.next() != first {
            // Cannot be contiguous (never produced by the core): write what we have separately.
            tracing::error!(last = %last.index, %first, "non-contiguous entries in one group");
        }
    }
    batch.extend(next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite_raft::EntryKind;

    fn e(i: u64, t: u64) -> Entry {
        Entry { term: Term(t), index: LogIndex(i), kind: EntryKind::Command, data: vec![] }
    }

    #[test]
    fn merge_replaces_overwritten_suffix() {
        let mut b = vec![e(1, 1), e(2, 1), e(3, 1)];
        merge(&mut b, vec![e(2, 2), e(3, 2)]);
        assert_eq!(b.iter().map(|x| (x.index.0, x.term.0)).collect::<Vec<_>>(), vec![(1, 1), (2, 2), (3, 2)]);
        merge(&mut b, vec![e(4, 2)]);
        assert_eq!(b.len(), 4);
        merge(&mut b, vec![]);
        assert_eq!(b.len(), 4);
    }
}
