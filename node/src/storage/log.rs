//! The Raft log in segment files (layout: `docs/log-format.md`).
//!
//! Every call that changes the log writes exactly one *batch* at the end of the open segment
//! and `fdatasync`s it before returning (group commit: one sync per call, however many
//! entries). A conflicting suffix is not erased in place: a batch whose first index is at or
//! below the last index supersedes everything from that index on, both here and when the log is
//! replayed at open. So nothing already on disk is ever overwritten, and a crash at any point
//! leaves either the old or the new log.
//!
//! ```text
//!   open-00..07 (closed, full)   open-00..08 (open)
//!   [hdr][b1][b2]...[bN][000]    [hdr][b][b][b: truncate@40 + entries 40..42][000000 preallocated]
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use dqlite_raft::{Entry, LogIndex, Term};

use super::backend::{Backend, BackendFile, BatchFailure, OpenMode};
use super::error::{CorruptReason, InvalidRequest, Result, StorageError};
use super::format::{self, SegmentHeaderError, BATCH_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::{open_and_read, Poison};

/// Tuning for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size a segment is preallocated to (written with zeros ahead of use). Rounded up to a
    /// multiple of 4096; a batch larger than a segment gets a segment of its own size.
    pub segment_size_bytes: u64,
    /// Prepare the next segment on a background thread while the current one fills, so an
    /// append rarely waits for zeros to be written. When `false` the same files are prepared
    /// inline at rollover (deterministic, for simulation and crash tests).
    pub background_preallocation: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_size_bytes: 8 * 1024 * 1024, background_preallocation: true }
    }
}

const ALIGN: u64 = 4096;
const ZERO_CHUNK: usize = 1024 * 1024;

fn round_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

fn spare_name(seq: u64) -> String {
    format!("prealloc-{seq:020}")
}

fn open_name(seq: u64) -> String {
    format!("open-{seq:020}")
}

fn closed_name(seq: u64, first: u64, last: u64) -> String {
    format!("closed-{seq:020}-{first:020}-{last:020}")
}

/// Parses a segment file name: `(seq, is_open)`.
fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    if let Some(rest) = name.strip_prefix("open-") {
        return (rest.len() == 20).then(|| rest.parse().ok()).flatten().map(|s| (s, true));
    }
    let rest = name.strip_prefix("closed-")?;
    let mut parts = rest.split('-');
    let seq = parts.next()?;
    if seq.len() != 20 || parts.next()?.len() != 20 || parts.next()?.len() != 20 {
        return None;
    }
    if parts.next().is_some() {
        return None;
    }
    seq.parse().ok().map(|s| (s, false))
}

struct Segment {
    name: String,
    file: Box<dyn BackendFile>,
    closed: bool,
    /// Preallocated size (the file's length when it was created).
    capacity: u64,
    /// Offset just past the last valid batch.
    end: u64,
    /// Bytes `[end - end % align, end)`: the start of the block the next write rewrites.
    tail: Vec<u8>,
    /// Lowest and highest entry index ever written to it (for its closed name).
    min_index: u64,
    max_index: u64,
    /// Live entries (not truncated or compacted away) stored in it.
    live: u64,
}

#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    batch_off: u64,
    batch_len: u32,
    pos: u32,
    term: Term,
}

/// The durable Raft log.
pub struct LogStore {
    backend: Arc<dyn Backend>,
    poison: Arc<Poison>,
    opts: LogOptions,
    segments: BTreeMap<u64, Segment>,
    /// Live entries; `locs[i]` is index `first + i`.
    locs: VecDeque<Loc>,
    first: LogIndex,
    /// The index the next appended entry takes (`last_index + 1`).
    next: LogIndex,
    /// Whether any batch was ever applied (a fresh log accepts any first index).
    started: bool,
    next_seq: u64,
    scratch: Vec<u8>,
    /// The next segment, being preallocated in the background.
    spare: Option<SpareJob>,
    /// Tests: make the next index update fail after the batch was written.
    #[cfg(test)]
    fail_next_apply: bool,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("first", &self.first)
            .field("next", &self.next)
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// What applying a batch to the in-memory index can refuse.
enum ApplyError {
    Gap,
}

impl LogStore {
    /// Opens the log in `backend`'s directory, replaying and verifying every segment (see the
    /// module docs for what is repaired and what is an error).
    pub(crate) fn open(backend: Arc<dyn Backend>, poison: Arc<Poison>, opts: LogOptions) -> Result<LogStore> {
        let opts = LogOptions { segment_size_bytes: round_up(opts.segment_size_bytes.max(2 * ALIGN), ALIGN), ..opts };
        let mut log = LogStore {
            backend,
            poison,
            opts,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            first: LogIndex(1),
            next: LogIndex(1),
            started: false,
            next_seq: 1,
            scratch: Vec::new(),
            spare: None,
            #[cfg(test)]
            fail_next_apply: false,
        };
        log.recover()?;
        if log.segments.values().next_back().is_some_and(|s| !s.closed) {
            log.start_spare();
        }
        Ok(log)
    }

    fn recover(&mut self) -> Result<()> {
        let names = self.backend.list().map_err(|e| StorageError::io("list", &self.backend.describe(), e))?;
        let mut segs: Vec<(u64, bool, String)> =
            names.iter().filter_map(|n| parse_segment_name(n).map(|(s, o)| (s, o, n.clone()))).collect();
        segs.sort();
        // Spares never got into use: remove them.
        let spares: Vec<&String> = names.iter().filter(|n| n.starts_with("prealloc-")).collect();
        for n in &spares {
            self.backend.remove(n).map_err(|e| self.poison.write_error("remove", n, e))?;
        }
        if !spares.is_empty() {
            self.sync_dir()?;
        }
        let count = segs.len();
        for (i, (seq, is_open, name)) in segs.into_iter().enumerate() {
            let newest = i + 1 == count;
            self.recover_segment(seq, is_open, newest, &name)?;
            self.next_seq = self.next_seq.max(seq + 1);
        }
        tracing::debug!(first = %self.first, last = %self.last_index(), segments = self.segments.len(), "log recovered");
        Ok(())
    }

    fn recover_segment(&mut self, seq: u64, is_open: bool, newest: bool, name: &str) -> Result<()> {
        let (file, buf) = open_and_read(&*self.backend, name)?;
        let len = buf.len();
        let corrupt = |offset: u64, reason| StorageError::Corrupt { file: name.to_owned(), offset, reason };

        // The header. A torn header is only acceptable on the newest open segment, and only if
        // the file holds no batch at all (its preallocation was interrupted).
        match format::decode_segment_header(&buf) {
            Ok(s) if s == seq => {}
            Ok(_) => return Err(corrupt(0, CorruptReason::WrongSegment)),
            Err(SegmentHeaderError::Version(v)) => {
                return Err(StorageError::UnsupportedVersion { file: name.to_owned(), version: v })
            }
            Err(SegmentHeaderError::Corrupt(reason)) => {
                if newest && is_open && find_valid_batch(&buf, 0, seq).is_none() {
                    tracing::warn!(file = name, "removing a segment whose preallocation was interrupted");
                    drop(file);
                    self.backend.remove(name).map_err(|e| StorageError::io("remove", name, e))?;
                    self.backend
                        .sync_dir()
                        .map_err(|e| StorageError::io("fsync directory", &self.backend.describe(), e))?;
                    return Ok(());
                }
                return Err(corrupt(0, reason));
            }
        }

        self.segments.insert(
            seq,
            Segment {
                name: name.to_owned(),
                file,
                closed: !(is_open && newest),
                capacity: len as u64,
                end: SEGMENT_HEADER_LEN as u64,
                tail: Vec::new(),
                min_index: u64::MAX,
                max_index: 0,
                live: 0,
            },
        );
        let mut off = SEGMENT_HEADER_LEN;
        let mut damage: Option<(usize, CorruptReason)> = None;
        while off < len {
            let rest = &buf[off..];
            let head = &rest[..rest.len().min(BATCH_HEADER_LEN)];
            if head.iter().all(|&b| b == 0) {
                // End of the written part: everything after must be preallocated zeros.
                if let Some(nz) = rest.iter().position(|&b| b != 0) {
                    damage = Some((off + nz, CorruptReason::TrailingGarbage));
                }
                break;
            }
            match format::decode_batch(rest, seq) {
                Ok(info) => {
                    let batch_len = info.len;
                    if let (Some(f), Some(l), Some(s)) =
                        (info.entries.first(), info.entries.last(), self.segments.get_mut(&seq))
                    {
                        s.min_index = s.min_index.min(f.index.0);
                        s.max_index = s.max_index.max(l.index.0);
                    }
                    if self
                        .apply(
                            seq,
                            off as u64,
                            batch_len,
                            info.first_index,
                            info.flags,
                            info.entries.iter().map(|e| e.term),
                        )
                        .is_err()
                    {
                        return Err(corrupt(off as u64, CorruptReason::IndexGap));
                    }
                    off += batch_len as usize;
                }
                Err(reason) => {
                    damage = Some((off, reason));
                    break;
                }
            }
        }
        let seg = self.segments.get_mut(&seq).ok_or_else(|| corrupt(0, CorruptReason::BadLength))?;
        seg.end = off as u64;
        if let Some((at, reason)) = damage {
            // Valid data after the damage means it is not a torn tail.
            if find_valid_batch(&buf, at + 8, seq).is_some() {
                return Err(corrupt(at as u64, CorruptReason::DamageBeforeValidData));
            }
            if seg.closed {
                return Err(corrupt(at as u64, reason));
            }
            // A torn, never-acknowledged tail of the open segment: zero it.
            let garbage_end = buf.iter().rposition(|&b| b != 0).map(|p| p + 1).unwrap_or(off);
            tracing::warn!(
                file = name,
                offset = off,
                bytes = garbage_end - off,
                ?reason,
                "dropping torn tail of the open segment"
            );
            let a = (seg.file.alignment() as u64).max(1);
            let start = off as u64 - off as u64 % a;
            let stop = round_up(garbage_end as u64, a).min(len as u64);
            let mut fix = buf[start as usize..off].to_vec();
            fix.resize((stop - start) as usize, 0);
            seg.file.write_all_sync(&[(start, &fix)]).map_err(|f| match f {
                BatchFailure::Write(e) => StorageError::io("write", name, e),
                BatchFailure::Sync(e) => StorageError::SyncFailed { file: name.to_owned(), source: e },
            })?;
        }
        let a = (seg.file.alignment() as u64).max(1);
        let tail_start = (seg.end - seg.end % a) as usize;
        seg.tail = buf[tail_start..seg.end as usize].to_vec();
        Ok(())
    }

    /// Applies one batch to the in-memory index (shared by replay and by writes).
    fn apply(
        &mut self,
        seg: u64,
        batch_off: u64,
        batch_len: u32,
        first_index: LogIndex,
        flags: u32,
        terms: impl ExactSizeIterator<Item = Term>,
    ) -> Result<(), ApplyError> {
        if flags & format::FLAG_RESET != 0 || !self.started || first_index < self.first {
            self.clear_to(first_index);
        } else if first_index > self.next {
            return Err(ApplyError::Gap);
        } else {
            self.pop_back_to(first_index);
        }
        self.started = true;
        let n = terms.len();
        for (pos, term) in terms.enumerate() {
            self.locs.push_back(Loc { seg, batch_off, batch_len, pos: pos as u32, term });
        }
        if let Some(s) = self.segments.get_mut(&seg) {
            s.live += n as u64;
        }
        self.next = LogIndex(first_index.0 + n as u64);
        Ok(())
    }

    fn clear_to(&mut self, index: LogIndex) {
        while let Some(l) = self.locs.pop_back() {
            if let Some(s) = self.segments.get_mut(&l.seg) {
                s.live -= 1;
            }
        }
        self.first = index;
        self.next = index;
    }

    fn pop_back_to(&mut self, index: LogIndex) {
        while self.next > index {
            if let Some(l) = self.locs.pop_back() {
                if let Some(s) = self.segments.get_mut(&l.seg) {
                    s.live -= 1;
                }
            }
            self.next = self.next.prev();
        }
    }

    /// The index of the first entry, or `last_index() + 1` if the log is empty.
    pub fn first_index(&self) -> LogIndex {
        self.first
    }

    /// The index of the last entry (`first_index() - 1` if the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.next.prev()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    /// The term of entry `at`, if it is in the log.
    pub fn term(&self, at: LogIndex) -> Option<Term> {
        self.loc(at).map(|l| l.term)
    }

    fn loc(&self, at: LogIndex) -> Option<Loc> {
        if at < self.first || at >= self.next {
            return None;
        }
        self.locs.get((at.0 - self.first.0) as usize).copied()
    }

    /// Reads entries `range` (half-open). Every batch read is checked against its CRC.
    pub fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        for i in [range.start, range.end.prev()] {
            if i < self.first || i >= self.next {
                return Err(StorageError::OutOfRange { index: i, first: self.first, last: self.last_index() });
            }
        }
        let mut out = Vec::with_capacity((range.end.0 - range.start.0) as usize);
        let mut i = range.start;
        let mut buf = Vec::new();
        while i < range.end {
            let loc =
                self.loc(i).ok_or(StorageError::OutOfRange { index: i, first: self.first, last: self.last_index() })?;
            let seg = self.segments.get(&loc.seg).ok_or(StorageError::OutOfRange {
                index: i,
                first: self.first,
                last: self.last_index(),
            })?;
            buf.resize(loc.batch_len as usize, 0);
            seg.file.read_at(loc.batch_off, &mut buf).map_err(|e| StorageError::io("read", &seg.name, e))?;
            let info = format::decode_batch(&buf, loc.seg).map_err(|reason| StorageError::Corrupt {
                file: seg.name.clone(),
                offset: loc.batch_off,
                reason,
            })?;
            // Take every requested entry this batch holds.
            let mut pos = loc.pos as usize;
            while i < range.end && pos < info.entries.len() {
                match self.loc(i) {
                    Some(l) if l.seg == loc.seg && l.batch_off == loc.batch_off => {}
                    _ => break,
                }
                let m = info.entries[pos];
                let data = buf[m.data_offset as usize..(m.data_offset + m.data_len) as usize].to_vec();
                out.push(Entry { term: m.term, index: m.index, kind: m.kind, data });
                pos += 1;
                i = i.next();
            }
        }
        Ok(out)
    }

    /// Reads every entry in the log (e.g. to hand to `RawNode::restore` at start-up).
    pub fn read_all(&self) -> Result<Vec<Entry>> {
        self.entries(self.first..self.next)
    }

    /// Appends `entries` (consecutive indexes) durably: one batch, one `fdatasync`. If the first
    /// index is at or below the last index, the conflicting suffix from there on is replaced.
    /// Returns once the entries are on disk.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let first = entries.first().ok_or(StorageError::Invalid(InvalidRequest::EmptyAppend))?.index;
        for (i, e) in entries.iter().enumerate() {
            if e.index.0 != first.0 + i as u64 {
                return Err(StorageError::Invalid(InvalidRequest::NotConsecutive));
            }
        }
        self.check_position(first)?;
        self.write_batch(first, 0, entries)
    }

    /// Removes every entry with index `>= from` durably. No-op if `from > last_index()`.
    pub fn truncate_suffix(&mut self, from: LogIndex) -> Result<()> {
        if from >= self.next {
            return Ok(());
        }
        self.check_position(from)?;
        self.write_batch(from, 0, &[])
    }

    /// Discards the whole log durably; the next entry appended must have index `next` (used
    /// after installing a snapshot at `next - 1` that the log does not reach). Closed segments
    /// are removed.
    pub fn reset(&mut self, next: LogIndex) -> Result<()> {
        if next.0 == 0 {
            return Err(StorageError::Invalid(InvalidRequest::ZeroIndex));
        }
        self.write_batch(next, format::FLAG_RESET, &[])?;
        let closed: Vec<u64> = self.segments.iter().filter(|(_, s)| s.closed).map(|(k, _)| *k).collect();
        self.remove_segments(&closed)
    }

    /// Removes closed segments, oldest first, while every live entry in them is `<= up_to`
    /// (typically the index of a durable snapshot). Entries in the open segment stay.
    pub fn compact(&mut self, up_to: LogIndex) -> Result<()> {
        let mut remove = Vec::new();
        let mut idx = 0usize; // position in `locs` of the first entry of the next segment
        for (seq, seg) in self.segments.iter() {
            if !seg.closed {
                break;
            }
            let live = seg.live as usize;
            if live > 0 {
                let last = self.first.0 + (idx + live) as u64 - 1;
                if last > up_to.0 {
                    break;
                }
            }
            idx += live;
            remove.push(*seq);
        }
        self.remove_segments(&remove)
    }

    fn remove_segments(&mut self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.poison.check()?;
        for seq in seqs {
            let Some(seg) = self.segments.get(seq) else { continue };
            let name = seg.name.clone();
            self.backend.remove(&name).map_err(|e| self.write_err("remove", &name, e))?;
            // Live entries of removed segments are at the front of the log.
            while self.locs.front().is_some_and(|l| l.seg == *seq) {
                self.locs.pop_front();
                self.first = self.first.next();
            }
            self.segments.remove(seq);
            tracing::debug!(file = %name, "removed segment");
        }
        self.sync_dir()
    }

    fn check_position(&self, first: LogIndex) -> Result<()> {
        if first.0 == 0 {
            return Err(StorageError::Invalid(InvalidRequest::ZeroIndex));
        }
        if self.started {
            if first > self.next {
                return Err(StorageError::Invalid(InvalidRequest::Gap));
            }
            if first < self.first {
                return Err(StorageError::Invalid(InvalidRequest::BelowFirstIndex));
            }
        }
        Ok(())
    }

    fn write_err(&self, op: &'static str, file: &str, e: std::io::Error) -> StorageError {
        self.poison.write_error(op, file, e)
    }

    fn sync_dir(&self) -> Result<()> {
        let dir = self.backend.describe();
        self.backend.sync_dir().map_err(|e| self.poison.sync_error(&dir, e))
    }

    /// Encodes and durably writes one batch, rolling over to a new segment if needed, then
    /// applies it to the in-memory index.
    ///
    /// Everything that could make the in-memory index refuse the batch is checked *before* the
    /// batch is written: a batch on disk that the index does not reflect would make the two
    /// disagree (the next append would be placed wrongly, a restart would see entries the
    /// caller was told were refused). Should the index still refuse it (a broken invariant),
    /// the store is poisoned: every later write fails until reopen, and reopening replays
    /// the disk, which is the truth.
    fn write_batch(&mut self, first: LogIndex, flags: u32, entries: &[Entry]) -> Result<()> {
        self.poison.check()?;
        let len = format::batch_len(entries);
        if len > u32::MAX as usize {
            return Err(StorageError::Invalid(InvalidRequest::BatchTooLarge));
        }
        if self.would_gap(first, flags) {
            return Err(StorageError::Invalid(InvalidRequest::Gap));
        }
        let seq = self.segment_for(len as u64)?;
        let Some(seg) = self.segments.get_mut(&seq) else {
            // `segment_for` returns a segment it holds: a broken invariant, not a bad request.
            return Err(self.poison_invariant("index", &open_name(seq)));
        };
        let a = (seg.file.alignment() as u64).max(1);
        let start = seg.end - seg.end % a;
        let batch_off = seg.end;
        self.scratch.clear();
        self.scratch.extend_from_slice(&seg.tail);
        format::encode_batch(&mut self.scratch, seq, first, flags, entries);
        let new_end = batch_off + len as u64;
        let padded = (round_up(start + self.scratch.len() as u64, a) - start) as usize;
        self.scratch.resize(padded, 0);
        if let Err(f) = seg.file.write_all_sync(&[(start, &self.scratch)]) {
            let name = seg.name.clone();
            return Err(match f {
                BatchFailure::Write(e) => self.poison.write_error("write", &name, e),
                BatchFailure::Sync(e) => self.poison.sync_error(&name, e),
            });
        }
        let tail_start = (new_end - new_end % a - start) as usize;
        seg.tail.clear();
        seg.tail.extend_from_slice(&self.scratch[tail_start..(new_end - start) as usize]);
        seg.end = new_end;
        if let (Some(f), Some(l)) = (entries.first(), entries.last()) {
            seg.min_index = seg.min_index.min(f.index.0);
            seg.max_index = seg.max_index.max(l.index.0);
        }
        #[cfg(test)]
        let forced = std::mem::take(&mut self.fail_next_apply);
        #[cfg(not(test))]
        let forced = false;
        if forced || self.apply(seq, batch_off, len as u32, first, flags, entries.iter().map(|e| e.term)).is_err() {
            // `would_gap` ruled this out before writing: the batch is durable but the index
            // does not show it.
            let name = open_name(seq);
            return Err(self.poison_invariant("index", &name));
        }
        Ok(())
    }

    /// Would [`apply`](Self::apply) refuse a batch starting at `first`?
    fn would_gap(&self, first: LogIndex, flags: u32) -> bool {
        let clears = flags & format::FLAG_RESET != 0 || !self.started || first < self.first;
        !clears && first > self.next
    }

    /// Poison the store after a broken invariant (disk and index may disagree).
    fn poison_invariant(&self, op: &'static str, file: &str) -> StorageError {
        tracing::error!(op, file, first = ?self.first, next = ?self.next, "log index out of step with the disk");
        self.poison.set(op, file);
        StorageError::Poisoned { op, file: file.to_owned() }
    }

    /// The open segment with room for `len` more bytes, closing the current one and installing
    /// a preallocated new one if needed.
    fn segment_for(&mut self, len: u64) -> Result<u64> {
        if let Some((&seq, seg)) = self.segments.iter().next_back() {
            if !seg.closed && seg.end + len <= seg.capacity {
                return Ok(seq);
            }
        }
        let size = self.opts.segment_size_bytes.max(round_up(SEGMENT_HEADER_LEN as u64 + len, ALIGN));
        let seq = self.next_seq;
        let spare = spare_name(seq);
        // Preallocate first (or take the spare prepared in the background): if that fails
        // (disk full), nothing changed and the current segment stays open.
        let file = match self.take_spare(seq, size) {
            Some(f) => f,
            None => preallocate(&*self.backend, &spare, seq, size).map_err(|e| self.prealloc_err(&spare, e))?,
        };
        let name = open_name(seq);
        self.backend.rename(&spare, &name).map_err(|e| self.write_err("rename", &spare, e))?;
        self.next_seq += 1;
        if let Some((&old_seq, old)) = self.segments.iter_mut().next_back() {
            if !old.closed {
                let (first, last) = if old.max_index == 0 { (0, 0) } else { (old.min_index, old.max_index) };
                let new_name = closed_name(old_seq, first, last);
                let old_name = old.name.clone();
                old.closed = true;
                if let Err(e) = self.backend.rename(&old_name, &new_name) {
                    return Err(self.write_err("rename", &old_name, e));
                }
                if let Some(old) = self.segments.get_mut(&old_seq) {
                    old.name = new_name;
                }
            }
        }
        self.sync_dir()?;
        let a = (file.alignment() as u64).max(1);
        let tail_start = SEGMENT_HEADER_LEN as u64 - SEGMENT_HEADER_LEN as u64 % a;
        let header = encode_header_block(seq);
        self.segments.insert(
            seq,
            Segment {
                name,
                file,
                closed: false,
                capacity: size,
                end: SEGMENT_HEADER_LEN as u64,
                tail: header[tail_start as usize..SEGMENT_HEADER_LEN].to_vec(),
                min_index: u64::MAX,
                max_index: 0,
                live: 0,
            },
        );
        self.start_spare();
        Ok(seq)
    }

    fn prealloc_err(&self, name: &str, e: PreallocError) -> StorageError {
        match e {
            PreallocError::Create(e) => self.poison.write_error("create", name, e),
            PreallocError::Batch(BatchFailure::Write(e)) => {
                let err = self.poison.write_error("preallocate", name, e);
                if matches!(err, StorageError::DiskFull { .. }) && self.backend.remove(name).is_ok() {
                    // Space given back (the segment never held data). A failed directory sync
                    // poisons the store; the disk-full error is still the one to report.
                    let _ = self.sync_dir();
                }
                err
            }
            PreallocError::Batch(BatchFailure::Sync(e)) => self.poison.sync_error(name, e),
        }
    }

    /// Starts preparing the spare for the next segment in the background (if enabled).
    fn start_spare(&mut self) {
        if !self.opts.background_preallocation || self.spare.is_some() {
            return;
        }
        let seq = self.next_seq;
        let size = self.opts.segment_size_bytes;
        let backend = Arc::clone(&self.backend);
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("dqlite-log-prealloc".into()).spawn(move || {
            let name = spare_name(seq);
            let res = preallocate(&*backend, &name, seq, size);
            // The store may be gone; then the spare is removed at the next open.
            let _ = tx.send(res);
        });
        match spawned {
            Ok(handle) => self.spare = Some(SpareJob { seq, size, rx, handle }),
            Err(e) => tracing::warn!(error = %e, "could not start the preallocation thread"),
        }
    }

    /// The spare segment for `seq` if one of at least `size` bytes was prepared (waits for it
    /// if it is still being written). A failed or unsuitable spare is discarded.
    fn take_spare(&mut self, seq: u64, size: u64) -> Option<Box<dyn BackendFile>> {
        let job = self.spare.take()?;
        let res = job.rx.recv();
        let _ = job.handle.join();
        let name = spare_name(job.seq);
        match res {
            Ok(Ok(file)) if job.seq == seq && job.size >= size => return Some(file),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(file = %name, error = ?e, "background preallocation failed; retrying inline"),
            Err(_) => tracing::warn!(file = %name, "background preallocation thread died; retrying inline"),
        }
        if self.backend.remove(&name).is_ok() {
            // A failed directory sync poisons the store; the next write reports it.
            let _ = self.sync_dir();
        }
        None
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Do not leave a thread writing into the directory after the lock is released.
        if let Some(job) = self.spare.take() {
            let _ = job.rx.recv();
            let _ = job.handle.join();
        }
    }
}

/// A spare segment being prepared by a background thread.
struct SpareJob {
    seq: u64,
    size: u64,
    rx: std::sync::mpsc::Receiver<Result<Box<dyn BackendFile>, PreallocError>>,
    handle: std::thread::JoinHandle<()>,
}

/// Why preallocating a segment failed.
#[derive(Debug)]
enum PreallocError {
    Create(std::io::Error),
    Batch(BatchFailure),
}

/// Creates `name` (replacing a leftover), writes the segment header for `seq` and zeros up to
/// `size`, and syncs it. The caller renames it into place and syncs the directory.
fn preallocate(backend: &dyn Backend, name: &str, seq: u64, size: u64) -> Result<Box<dyn BackendFile>, PreallocError> {
    let mut file = match backend.open(name, OpenMode::CreateNew) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            backend.remove(name).map_err(PreallocError::Create)?;
            backend.open(name, OpenMode::CreateNew).map_err(PreallocError::Create)?
        }
        Err(e) => return Err(PreallocError::Create(e)),
    };
    let header = encode_header_block(seq);
    // 4096-aligned in memory, so an O_DIRECT backend can write it without a copy.
    let zero_buf = vec![0u8; ZERO_CHUNK + ALIGN as usize];
    let at = zero_buf.as_ptr().align_offset(ALIGN as usize).min(ALIGN as usize);
    let zeros = &zero_buf[at..at + ZERO_CHUNK];
    let mut writes: Vec<(u64, &[u8])> = vec![(0, &header[..])];
    let mut off = ALIGN;
    while off < size {
        let n = (size - off).min(ZERO_CHUNK as u64) as usize;
        writes.push((off, &zeros[..n]));
        off += n as u64;
    }
    file.write_all_sync(&writes).map_err(PreallocError::Batch)?;
    tracing::debug!(file = name, size, "preallocated segment");
    Ok(file)
}

/// The first 4096 bytes of a segment: header then zeros.
fn encode_header_block(seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; ALIGN as usize];
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&format::encode_segment_header(seq));
    b
}

/// Finds a batch of segment `seq` that verifies, at any 8-aligned offset `>= from`.
fn find_valid_batch(buf: &[u8], from: usize, seq: u64) -> Option<usize> {
    let mut off = format::pad8(from.max(SEGMENT_HEADER_LEN));
    while off + BATCH_HEADER_LEN <= buf.len() {
        if buf[off..off + 4] == format::BATCH_MAGIC
            && format::peek_batch_len(&buf[off..], buf.len() - off).is_some()
            && format::decode_batch(&buf[off..], seq).is_ok()
        {
            return Some(off);
        }
        off += 8;
    }
    None
}

#[cfg(test)]
mod tests {
    use dqlite_raft::EntryKind;

    use super::*;
    use crate::storage::backend::MemDisk;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Command, data: vec![index as u8; 10] }
    }

    fn open(disk: &MemDisk) -> LogStore {
        let opts = LogOptions { background_preallocation: false, ..LogOptions::default() };
        LogStore::open(Arc::new(disk.backend()), Arc::new(Poison::default()), opts).expect("open log")
    }

    fn image(disk: &MemDisk) -> Vec<(String, Option<Vec<u8>>)> {
        let mut names = disk.file_names();
        names.sort();
        names.into_iter().map(|n| (n.clone(), disk.read_file(&n))).collect()
    }

    #[test]
    fn a_refused_batch_writes_nothing() {
        let disk = MemDisk::new();
        let mut log = open(&disk);
        log.append(&[entry(1, 1), entry(1, 2)]).unwrap();
        let before = image(&disk);
        // A gap, below the first index, not consecutive: refused, and the disk is untouched.
        assert!(matches!(log.append(&[entry(1, 4)]), Err(StorageError::Invalid(InvalidRequest::Gap))));
        assert!(matches!(
            log.write_batch(LogIndex(5), 0, &[entry(1, 5)]),
            Err(StorageError::Invalid(InvalidRequest::Gap))
        ));
        assert!(matches!(
            log.append(&[entry(1, 3), entry(1, 5)]),
            Err(StorageError::Invalid(InvalidRequest::NotConsecutive))
        ));
        assert_eq!(image(&disk), before, "a refused request changed the disk");
        log.append(&[entry(1, 3)]).unwrap();
        drop(log);
        let log = open(&disk);
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.read_all().unwrap().len(), 3);
    }

    #[test]
    fn an_index_out_of_step_with_the_disk_poisons_the_store() {
        let disk = MemDisk::new();
        let mut log = open(&disk);
        log.append(&[entry(1, 1)]).unwrap();
        log.fail_next_apply = true;
        let err = log.append(&[entry(1, 2)]).expect_err("index refused the durable batch");
        assert!(matches!(err, StorageError::Poisoned { .. }), "{err}");
        // Every later write fails: nothing is placed against the stale index.
        assert!(matches!(log.append(&[entry(1, 2)]), Err(StorageError::Poisoned { .. })));
        assert!(matches!(log.truncate_suffix(LogIndex(1)), Err(StorageError::Poisoned { .. })));
        drop(log);
        // Reopening replays the disk, which holds the batch: disk and index agree again.
        let mut log = open(&disk);
        assert_eq!(log.last_index(), LogIndex(2));
        log.append(&[entry(1, 3)]).unwrap();
        assert_eq!(log.read_all().unwrap().iter().map(|e| e.index.0).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
