//! One simulated server: the Raft core, its disk, the application state machine, and the sim's
//! own copy of the log the core asked it to write (used by the checkers).
//!
//! The disk keeps only what a `Ready` asked to persist *and* what reached the simulated fsync.
//! A crash throws away the process (the core, the state machine, the unsynced writes); what
//! survives of the unsynced writes is chosen by the run's PRNG, as an OS may or may not have
//! written back dirty pages: each pending batch in order survives whole, survives torn (the
//! hard state and snapshot, then a prefix of its entries), or is lost, and everything after a
//! torn or lost batch is lost.

use std::collections::{BTreeSet, VecDeque};

use crate::check::safety::{digest, EntryId};
use crate::message::Message;
use crate::sim::kv::KvStore;
use crate::sim::rng::Rng;
use crate::types::{HardState, SnapshotMeta};
use crate::{Entry, LogIndex, NodeId, RawNode, Term};

/// What is durable on a server's disk.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Term, vote, commit.
    pub hard: HardState,
    /// The latest snapshot and its bytes.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Log entries, contiguous, after the compaction point.
    pub log: Vec<Entry>,
    /// The log store's checksum of each entry (as written), parallel to `log`.
    pub sums: Vec<u64>,
}

/// Why a write asked by a `Ready` cannot be done as asked (a breach of the persistence contract).
pub type ContractError = String;

impl Disk {
    /// Appends entries, first deleting every stored entry at or after the first one's index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), ContractError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.resync_sums(|e| e.index < first.index);
        let expected = match self.log.last() {
            Some(e) => e.index.next(),
            None => self.snapshot.as_ref().map_or(LogIndex(1), |s| s.0.index.next()),
        };
        if first.index > expected {
            return Err(format!("entries start at {:?} but the stored log ends before {:?}", first.index, expected));
        }
        for w in entries.windows(2) {
            if w[1].index != w[0].index.next() {
                return Err(format!("entries not contiguous at {:?}", w[1].index));
            }
        }
        self.log.extend_from_slice(entries);
        self.sums.truncate(self.log.len() - entries.len());
        self.sums.extend(entries.iter().map(|e| digest(e.kind, &e.data)));
        Ok(())
    }

    /// The first stored entry whose bytes no longer match their checksum (bit rot).
    pub fn first_corrupt(&self) -> Option<LogIndex> {
        self.log.iter().zip(&self.sums).find(|(e, s)| digest(e.kind, &e.data) != **s).map(|(e, _)| e.index)
    }

    fn resync_sums(&mut self, keep: impl Fn(&Entry) -> bool) {
        let sums = std::mem::take(&mut self.sums);
        let log = std::mem::take(&mut self.log);
        for (e, s) in log.into_iter().zip(sums) {
            if keep(&e) {
                self.log.push(e);
                self.sums.push(s);
            }
        }
    }

    /// Installs a received snapshot as the base of the log.
    pub fn install(&mut self, meta: SnapshotMeta, data: Vec<u8>, keep_log: bool) {
        if keep_log {
            self.resync_sums(|e| e.index > meta.index);
        } else {
            self.log.clear();
            self.sums.clear();
        }
        self.snapshot = Some((meta, data));
    }

    /// Stores a snapshot the application took, and drops log entries up to `compact_to`.
    pub fn take_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>, compact_to: LogIndex) {
        self.resync_sums(|e| e.index > compact_to);
        self.snapshot = Some((meta, data));
    }
}

/// Writes from one `Ready` waiting for their fsync.
#[derive(Debug)]
pub struct Batch {
    /// When the simulated fsync completes.
    pub due_ms: u64,
    /// Hard state to store.
    pub hard: Option<HardState>,
    /// Snapshot to install: metadata, bytes, keep the log after it.
    pub install: Option<(SnapshotMeta, Vec<u8>, bool)>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// What to report to `persisted` once durable.
    pub marker: Option<(LogIndex, Term)>,
    /// Messages to send once durable.
    pub messages: Vec<Message>,
    /// Log-matching observations deferred until the entries are durable: a leader's own new
    /// entries are private to it until written or sent (entry, term of its predecessor).
    pub observe: Vec<(EntryId, Term)>,
}

impl Batch {
    /// Makes the batch durable (all of it).
    pub fn write_to(&self, disk: &mut Disk) -> Result<(), ContractError> {
        if let Some(h) = self.hard {
            disk.hard = h;
        }
        if let Some((m, d, keep)) = &self.install {
            disk.install(m.clone(), d.clone(), *keep);
        }
        disk.append(&self.entries)
    }
}

/// The sim's copy of a server's log as the `Ready`s described it (durable or not).
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Index and term of the last entry covered by a snapshot (or 0).
    pub base: (LogIndex, Term),
    /// Entries after `base`.
    pub entries: Vec<Entry>,
}

impl View {
    /// The view of a disk after a restart: like the core's `restore`, entries at or before the
    /// snapshot are ignored.
    pub fn from_disk(disk: &Disk) -> View {
        let base = disk.snapshot.as_ref().map_or((LogIndex(0), Term(0)), |(m, _)| (m.index, m.term));
        let mut v = View { base, entries: Vec::new() };
        for e in &disk.log {
            if e.index > base.0 {
                v.entries.push(e.clone());
            }
        }
        v
    }

    /// The last index.
    pub fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.base.0, |e| e.index)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.base.0 {
            return None;
        }
        self.entries.get((index.0 - self.base.0 .0 - 1) as usize)
    }

    /// The term at `index`, if known.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base.0 {
            return Some(self.base.1);
        }
        self.entry(index).map(|e| e.term)
    }

    /// Appends (overwriting a suffix).
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index.0.saturating_sub(self.base.0 .0 + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Installs a snapshot as the new base.
    pub fn install(&mut self, meta: &SnapshotMeta, keep_log: bool) {
        if keep_log {
            self.entries.retain(|e| e.index > meta.index);
        } else {
            self.entries.clear();
        }
        self.base = (meta.index, meta.term);
    }

    /// Forgets entries up to `to` (compaction).
    pub fn compact(&mut self, to: LogIndex) {
        if to <= self.base.0 {
            return;
        }
        let Some(t) = self.term_at(to) else { return };
        self.entries.retain(|e| e.index > to);
        self.base = (to, t);
    }
}

/// A simulated server.
#[derive(Debug)]
pub struct Host {
    /// Its id.
    pub id: NodeId,
    /// The running core; `None` while crashed or never started.
    pub raw: Option<RawNode>,
    /// Whether it was ever started (has a disk).
    pub started: bool,
    /// Durable state.
    pub disk: Disk,
    /// Writes waiting for their fsync, oldest first.
    pub unsynced: VecDeque<Batch>,
    /// The log as written.
    pub view: View,
    /// The state machine.
    pub kv: KvStore,
    /// Last index applied to `kv`.
    pub applied: LogIndex,
    /// Index of the last snapshot this server took (or installed).
    pub last_snapshot: LogIndex,
    /// Snapshot being received: metadata, bytes so far, complete.
    pub incoming: Option<(SnapshotMeta, Vec<u8>, bool)>,
    /// Client writes proposed here and not yet answered: (client, seq).
    pub pending_props: BTreeSet<(u64, u64)>,
    /// Client reads waiting for ReadIndex here: (client, seq).
    pub pending_reads: BTreeSet<(u64, u64)>,
    /// Next tick.
    pub next_tick_ms: u64,
    /// When to restart, if crashed.
    pub restart_at_ms: Option<u64>,
    /// Frozen (a GC or VM pause) until then: no ticks, no input; messages wait.
    pub paused_until_ms: Option<u64>,
    /// The last hard state a `Ready` asked to store (durable or not).
    pub last_hard: HardState,
    /// Clients whose requests wait in the socket buffers while the server is paused.
    pub inbox: Vec<usize>,
    /// This server's tick period (its clock rate, with skew).
    pub tick_ms: u64,
    /// A snapshot being written: (fsync done at, index, state machine image). Lost in a crash.
    pub snapshot_pending: Option<(u64, LogIndex, Vec<u8>)>,
    /// Live-snapshot scenarios: the image captured for sending (volatile).
    pub serving: Option<(SnapshotMeta, Vec<u8>)>,
    /// The disk was wiped: the server stays down until the operator has removed it from the
    /// configuration, then restarts empty.
    pub wiped: bool,
    /// A stored entry was corrupted and not yet detected (no restart since).
    pub corrupt: bool,
    /// A wiped server that was removed: its id is never used again (the machine came back
    /// under a new id).
    pub retired: bool,
}

impl Host {
    /// A server that was never started.
    pub fn new(id: NodeId) -> Host {
        Host {
            id,
            raw: None,
            started: false,
            disk: Disk::default(),
            unsynced: VecDeque::new(),
            view: View::default(),
            kv: KvStore::default(),
            applied: LogIndex(0),
            last_snapshot: LogIndex(0),
            incoming: None,
            pending_props: BTreeSet::new(),
            pending_reads: BTreeSet::new(),
            next_tick_ms: 0,
            restart_at_ms: None,
            paused_until_ms: None,
            last_hard: HardState::default(),
            inbox: Vec::new(),
            tick_ms: 1,
            snapshot_pending: None,
            serving: None,
            wiped: false,
            corrupt: false,
            retired: false,
        }
    }

    /// Whether the process is running.
    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    /// Whether the process is running and not paused.
    pub fn is_live(&self) -> bool {
        self.raw.is_some() && self.paused_until_ms.is_none()
    }

    /// Loses the whole disk (and the process): the server is a blank machine again.
    pub fn wipe(&mut self) {
        let (id, tick_ms) = (self.id, self.tick_ms);
        *self = Host { tick_ms, started: true, wiped: true, ..Host::new(id) };
    }

    /// Flips one bit in a stored entry (picked by `rng`); false if no entry has a payload.
    pub fn corrupt_entry(&mut self, rng: &mut Rng) -> bool {
        let with_data: Vec<usize> = (0..self.disk.log.len()).filter(|&i| !self.disk.log[i].data.is_empty()).collect();
        let Some(&i) = rng.pick(&with_data) else { return false };
        let e = &mut self.disk.log[i];
        let byte = rng.below(e.data.len() as u64) as usize;
        e.data[byte] ^= 1 << rng.below(8);
        self.corrupt = true;
        true
    }

    /// Kills the process. Unsynced writes survive whole, torn or not at all, as `rng` decides.
    /// Returns a description of what survived, and the deferred observations of the entries
    /// that survived.
    pub fn crash(&mut self, rng: &mut Rng) -> Result<(String, Vec<(EntryId, Term)>), ContractError> {
        let mut surviving = Vec::new();
        self.raw = None;
        self.paused_until_ms = None;
        self.inbox.clear();
        let mut kept = 0;
        let mut torn = false;
        while let Some(b) = self.unsynced.pop_front() {
            match rng.below(10) {
                0..=4 => break,
                5..=7 => {
                    b.write_to(&mut self.disk)?;
                    surviving.extend(b.observe.iter().copied());
                    kept += 1;
                }
                _ => {
                    let n = rng.below(b.entries.len() as u64 + 1) as usize;
                    let partial = Batch {
                        due_ms: b.due_ms,
                        hard: b.hard,
                        install: b.install,
                        entries: b.entries[..n].to_vec(),
                        marker: None,
                        messages: Vec::new(),
                        observe: Vec::new(),
                    };
                    let last = partial.entries.last().map_or(LogIndex(0), |e| e.index);
                    surviving.extend(b.observe.iter().copied().filter(|(e, _)| e.index <= last));
                    partial.write_to(&mut self.disk)?;
                    torn = true;
                    break;
                }
            }
        }
        let lost = self.unsynced.len();
        self.unsynced.clear();
        self.incoming = None;
        self.snapshot_pending = None;
        self.serving = None;
        self.pending_props.clear();
        self.pending_reads.clear();
        self.kv = KvStore::default();
        self.view = View::from_disk(&self.disk);
        Ok((format!("unsynced batches kept whole {kept}, torn {torn}, lost {lost}+"), surviving))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    fn e(i: u64, t: u64) -> Entry {
        Entry { term: Term(t), index: LogIndex(i), kind: EntryKind::Command, data: vec![i as u8] }
    }

    #[test]
    fn disk_append_overwrites_suffix_and_rejects_gaps() {
        let mut d = Disk::default();
        d.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        d.append(&[e(2, 2)]).unwrap();
        assert_eq!(d.log.iter().map(|x| (x.index.0, x.term.0)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
        assert!(d.append(&[e(5, 2)]).is_err());
        assert!(d.append(&[e(3, 2), e(5, 2)]).is_err());
    }

    #[test]
    fn view_tracks_appends_installs_and_compaction() {
        let mut v = View::default();
        v.append(&[e(1, 1), e(2, 1), e(3, 2)]);
        assert_eq!(v.term_at(LogIndex(3)), Some(Term(2)));
        v.append(&[e(3, 3), e(4, 3)]);
        assert_eq!(v.last_index(), LogIndex(4));
        assert_eq!(v.term_at(LogIndex(3)), Some(Term(3)));
        v.compact(LogIndex(2));
        assert_eq!(v.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(v.entry(LogIndex(2)), None);
        assert_eq!(v.entry(LogIndex(4)).map(|x| x.term), Some(Term(3)));
    }
}
