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
    /// Prepare the next segment on a background thread while the current one fills (zeros or
    /// a recycled file, its name, the directory sync, and the previous segment's rename), so an
    /// append at rollover does no file-system metadata work. When `false` the same steps run
    /// inline at rollover (deterministic, for simulation and crash tests).
    pub background_preallocation: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_size_bytes: 8 * 1024 * 1024, background_preallocation: true }
    }
}

const ALIGN: u64 = 4096;
const ZERO_CHUNK: usize = 512 * 1024;

fn round_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

fn spare_name(seq: u64) -> String {
    format!("prealloc-{seq:020}")
}

fn recycle_name(seq: u64) -> String {
    format!("recycle-{seq:020}")
}

/// The old sequence number in a `recycle-<seq>` name.
fn parse_recycle_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("recycle-")?;
    (rest.len() == 20).then(|| rest.parse().ok()).flatten()
}

fn open_name(seq: u64) -> String {
    format!("open-{seq:020}")
}

fn closed_name(seq: u64, first: u64, last: u64) -> String {
    format!("closed-{seq:020}-{first:020}-{last:020}")
}

/// The `(first, last)` entry indexes a `closed-<seq>-<first>-<last>` name records.
fn parse_closed_range(name: &str) -> Option<(u64, u64)> {
    let mut parts = name.strip_prefix("closed-")?.split('-').skip(1);
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
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
    /// A recycled segment (header version 2): stale bytes may follow the end marker, so every
    /// write also zeroes the [`format::END_MARKER_LEN`] bytes after its batch.
    recycled: bool,
}

#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    batch_off: u64,
    batch_len: u32,
    pos: u32,
    term: Term,
}

/// How many freed segment files are kept for reuse.
const RECYCLE_POOL: usize = 2;

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
    /// The next segment, already named `open-<seq>` with its header and the directory durable.
    ready: Option<Ready>,
    /// Freed segment files (`recycle-<old seq>`) waiting to be reused.
    pool: Vec<Recyclable>,
    /// The background preparer, while it is working on the next segment.
    worker: Option<Worker>,
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

/// Damage at the end of an `open-` segment found during recovery: a torn tail if no later
/// segment holds data, an error otherwise.
struct PendingTail {
    seq: u64,
    name: String,
    /// Offset of the damage and what it is.
    at: u64,
    reason: CorruptReason,
    /// End of the valid data.
    off: u64,
    /// The write that repairs it: `(offset, bytes)`.
    fix: (u64, Vec<u8>),
}

/// What recovering one segment found.
struct SegmentScan {
    /// At least one valid batch.
    has_batches: bool,
    /// Damage at its end, if it is an `open-` segment.
    tail: Option<PendingTail>,
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
            ready: None,
            pool: Vec::new(),
            worker: None,
            #[cfg(test)]
            fail_next_apply: false,
        };
        log.recover()?;
        log.start_preparing(None);
        Ok(log)
    }

    fn recover(&mut self) -> Result<()> {
        let names = self.backend.list().map_err(|e| StorageError::io("list", &self.backend.describe(), e))?;
        let mut segs: Vec<(u64, bool, String)> =
            names.iter().filter_map(|n| parse_segment_name(n).map(|(s, o)| (s, o, n.clone()))).collect();
        segs.sort();
        let mut dir_changed = false;
        // Spares never got into use: remove them.
        for n in names.iter().filter(|n| n.starts_with("prealloc-")) {
            self.backend.remove(n).map_err(|e| self.poison.write_error("remove", n, e))?;
            dir_changed = true;
        }
        // Freed segments kept for reuse: adopt a few, remove the rest.
        // Sequences are never reused, not even those of files waiting for reuse.
        for n in &names {
            if let Some(seq) =
                parse_recycle_name(n).or_else(|| n.strip_prefix("prealloc-").and_then(|r| r.parse().ok()))
            {
                self.next_seq = self.next_seq.max(seq + 1);
            }
        }
        for n in names.iter().filter(|n| parse_recycle_name(n).is_some()) {
            if self.pool.len() < RECYCLE_POOL {
                if let Ok(file) = self.backend.open(n, OpenMode::Existing) {
                    if let Ok(size) = file.len() {
                        if size >= self.opts.segment_size_bytes && size % ALIGN == 0 {
                            self.pool.push(Recyclable { name: n.clone(), file, size });
                            continue;
                        }
                    }
                }
            }
            self.backend.remove(n).map_err(|e| self.poison.write_error("remove", n, e))?;
            dir_changed = true;
        }
        let count = segs.len();
        let mut pending: Option<PendingTail> = None;
        for (i, (seq, is_open, name)) in segs.into_iter().enumerate() {
            let newest = i + 1 == count;
            let scan = self.recover_segment(seq, is_open, newest, &name)?;
            self.next_seq = self.next_seq.max(seq + 1);
            if let Some(p) = pending.take() {
                // Damage followed by data in a later segment is not a torn tail.
                if scan.has_batches || !is_open || scan.tail.is_some() {
                    return Err(StorageError::Corrupt { file: p.name, offset: p.at, reason: p.reason });
                }
                pending = Some(p);
            }
            if scan.tail.is_some() {
                pending = scan.tail;
            }
        }
        if let Some(p) = pending {
            // A torn, never-acknowledged tail of the segment being written at the crash.
            tracing::warn!(file = %p.name, offset = p.off, reason = ?p.reason, "dropping torn tail of the open segment");
            let Some(seg) = self.segments.get_mut(&p.seq) else {
                return Err(StorageError::Corrupt { file: p.name, offset: p.at, reason: p.reason });
            };
            seg.file.write_all_sync(&[(p.fix.0, &p.fix.1)]).map_err(|f| match f {
                BatchFailure::Write(e) => StorageError::io("write", &p.name, e),
                BatchFailure::Sync(e) => StorageError::SyncFailed { file: p.name.clone(), source: e },
            })?;
        }
        // Every `open-` segment but the newest is full (its rename to `closed-` was still
        // pending at the crash): give it its closed name now.
        let target = self.segments.iter().next_back().filter(|(_, s)| !s.closed).map(|(k, _)| *k);
        let mut renames = Vec::new();
        for (seq, seg) in &self.segments {
            if Some(*seq) != target && seg.name.starts_with("open-") {
                let (first, last) = if seg.max_index == 0 { (0, 0) } else { (seg.min_index, seg.max_index) };
                renames.push((*seq, seg.name.clone(), closed_name(*seq, first, last)));
            }
        }
        for (seq, from, to) in renames {
            self.backend.rename(&from, &to).map_err(|e| self.poison.write_error("rename", &from, e))?;
            dir_changed = true;
            if let Some(s) = self.segments.get_mut(&seq) {
                s.name = to;
                s.closed = true;
            }
        }
        if dir_changed {
            self.sync_dir()?;
        }
        tracing::debug!(first = %self.first, last = %self.last_index(), segments = self.segments.len(), "log recovered");
        Ok(())
    }

    fn recover_segment(&mut self, seq: u64, is_open: bool, newest: bool, name: &str) -> Result<SegmentScan> {
        let (file, buf) = open_and_read(&*self.backend, name)?;
        let len = buf.len();
        let corrupt = |offset: u64, reason| StorageError::Corrupt { file: name.to_owned(), offset, reason };
        let mut scan = SegmentScan { has_batches: false, tail: None };

        // The header. A torn header is only acceptable on the newest open segment, and only if
        // the file holds no batch at all (its preallocation was interrupted).
        let recycled = match format::decode_segment_header_version(&buf) {
            Ok((s, v)) if s == seq => v == format::SEGMENT_VERSION_RECYCLED,
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
                    return Ok(scan);
                }
                return Err(corrupt(0, reason));
            }
        };

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
                recycled,
            },
        );
        let mut off = SEGMENT_HEADER_LEN;
        let mut damage: Option<(usize, CorruptReason)> = None;
        while off < len {
            let rest = &buf[off..];
            let head = &rest[..rest.len().min(BATCH_HEADER_LEN)];
            if head.iter().all(|&b| b == 0) {
                // End of the written part. A pre-zeroed segment must be zero to its end; in a
                // recycled one, stale bytes of the file's earlier use may follow the end marker
                // (they belong to older segment sequences), but no batch of this segment may.
                if !recycled {
                    if let Some(nz) = rest.iter().position(|&b| b != 0) {
                        damage = Some((off + nz, CorruptReason::TrailingGarbage));
                    }
                } else if find_valid_batch(&buf, off + 8, seq).is_some() {
                    return Err(corrupt(off as u64, CorruptReason::DamageBeforeValidData));
                }
                break;
            }
            match format::decode_batch(rest, seq) {
                Ok(info) => {
                    let batch_len = info.len;
                    scan.has_batches = true;
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
        let a = (seg.file.alignment() as u64).max(1);
        // A closed segment's name records the lowest and highest index ever written into it:
        // its batches must reach both. This catches a lost or zeroed batch at the end of a
        // recycled segment, where the zeros look like the end marker and stale bytes follow.
        if damage.is_none() && !is_open {
            let found = if seg.max_index == 0 { (0, 0) } else { (seg.min_index, seg.max_index) };
            if parse_closed_range(name).is_some_and(|recorded| recorded != found) {
                return Err(corrupt(off as u64, CorruptReason::MissingRecordedEntries));
            }
        }
        if let Some((at, reason)) = damage {
            // Valid data after the damage means it is not a torn tail.
            if find_valid_batch(&buf, at + 8, seq).is_some() {
                return Err(corrupt(at as u64, CorruptReason::DamageBeforeValidData));
            }
            if !is_open {
                return Err(corrupt(at as u64, reason));
            }
            // Possibly a torn, never-acknowledged tail of the segment written at the crash
            // (decided once the later segments are read): zero it, or, in a recycled segment,
            // write the end marker.
            let garbage_end = if recycled {
                (off + format::END_MARKER_LEN).min(len)
            } else {
                buf.iter().rposition(|&b| b != 0).map(|p| p + 1).unwrap_or(off)
            };
            let start = off as u64 - off as u64 % a;
            let stop = round_up(garbage_end as u64, a).min(len as u64);
            let mut fix = buf[start as usize..off].to_vec();
            fix.resize((stop - start) as usize, 0);
            scan.tail = Some(PendingTail {
                seq,
                name: name.to_owned(),
                at: at as u64,
                reason,
                off: off as u64,
                fix: (start, fix),
            });
        }
        let tail_start = (seg.end - seg.end % a) as usize;
        seg.tail = buf[tail_start..seg.end as usize].to_vec();
        Ok(scan)
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

    /// Takes closed segments out of the log: a few are kept for reuse (renamed
    /// `recycle-<seq>`, see [`RECYCLE_POOL`]), the rest are removed; then the directory is
    /// synced once.
    fn remove_segments(&mut self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.poison.check()?;
        // A pending rename of one of them must land first.
        self.settle()?;
        for seq in seqs {
            let Some(seg) = self.segments.get(seq) else { continue };
            let name = seg.name.clone();
            let keep = self.pool.len() < RECYCLE_POOL
                && seg.capacity >= self.opts.segment_size_bytes
                && seg.capacity % ALIGN == 0;
            let recycled_as = recycle_name(*seq);
            if keep {
                self.backend.rename(&name, &recycled_as).map_err(|e| self.write_err("rename", &name, e))?;
            } else {
                self.backend.remove(&name).map_err(|e| self.write_err("remove", &name, e))?;
            }
            // Live entries of removed segments are at the front of the log.
            while self.locs.front().is_some_and(|l| l.seg == *seq) {
                self.locs.pop_front();
                self.first = self.first.next();
            }
            if let Some(seg) = self.segments.remove(seq) {
                if keep {
                    self.pool.push(Recyclable { name: recycled_as, size: seg.capacity, file: seg.file });
                }
            }
            tracing::debug!(file = %name, recycled = keep, "removed segment");
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
        // In a recycled segment the batch is followed by the end marker (zeros over stale
        // bytes), written in the same write; a pre-zeroed segment already has it.
        let want_end = if seg.recycled {
            (new_end + format::END_MARKER_LEN as u64).min(seg.capacity.max(new_end))
        } else {
            new_end
        };
        let padded = (round_up(want_end, a) - start) as usize;
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

    /// The open segment with room for `len` more bytes.
    ///
    /// At rollover the next segment is normally the one prepared ahead: already named
    /// `open-<seq>`, with its header, its zeros (or recycled blocks) and its directory entry
    /// durable. Switching to it is an in-memory step: no file is created or renamed and the
    /// directory is not synced on the commit path. The previous segment's rename to
    /// `closed-…` goes to the preparer with the next preparation. Without background
    /// preparation, or when nothing suitable is ready, the same steps run inline.
    fn segment_for(&mut self, len: u64) -> Result<u64> {
        if let Some((&seq, seg)) = self.segments.iter().next_back() {
            if !seg.closed && seg.end + len <= seg.capacity {
                return Ok(seq);
            }
        }
        let need = self.opts.segment_size_bytes.max(round_up(SEGMENT_HEADER_LEN as u64 + len, ALIGN));
        self.settle()?;
        let ready = match self.ready.take() {
            Some(r) if r.size >= need => r,
            Some(r) => {
                // Too small for this batch: keep the file for reuse, prepare a big one inline.
                self.shelve(r)?;
                self.prepare_inline(need)?
            }
            None => self.prepare_inline(need)?,
        };
        // The previous open segment is now full. If preparing failed above (disk full),
        // nothing changed and it stays open.
        let close = match self.segments.iter_mut().next_back() {
            Some((&old_seq, old)) if !old.closed => {
                old.closed = true;
                let (first, last) = if old.max_index == 0 { (0, 0) } else { (old.min_index, old.max_index) };
                Some(Close { seq: old_seq, from: old.name.clone(), to: closed_name(old_seq, first, last) })
            }
            _ => None,
        };
        let seq = ready.seq;
        let a = (ready.file.alignment() as u64).max(1);
        let tail_start = SEGMENT_HEADER_LEN as u64 - SEGMENT_HEADER_LEN as u64 % a;
        let header = encode_header_block(seq, ready.recycled);
        self.segments.insert(
            seq,
            Segment {
                name: open_name(seq),
                file: ready.file,
                closed: false,
                capacity: ready.size,
                end: SEGMENT_HEADER_LEN as u64,
                tail: header[tail_start as usize..SEGMENT_HEADER_LEN].to_vec(),
                min_index: u64::MAX,
                max_index: 0,
                live: 0,
                recycled: ready.recycled,
            },
        );
        if self.opts.background_preallocation {
            self.start_preparing(close);
        } else if let Some(c) = close {
            self.backend.rename(&c.from, &c.to).map_err(|e| self.write_err("rename", &c.from, e))?;
            if let Some(old) = self.segments.get_mut(&c.seq) {
                old.name = c.to;
            }
            self.sync_dir()?;
        }
        Ok(seq)
    }

    /// Prepares segment `next_seq` of at least `size` bytes now (reusing a freed file if one
    /// is big enough).
    fn prepare_inline(&mut self, size: u64) -> Result<Ready> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let recycle = self.take_recyclable(size);
        let done = prepare(&*self.backend, Work { seq, size, recycle, close: None });
        let dir = self.backend.describe();
        let ready = done.ready.map_err(|(name, e)| self.prep_err(&name, e));
        done.dir.map_err(|e| self.poison.sync_error(&dir, e))?;
        ready
    }

    fn prep_err(&self, name: &str, e: PrepError) -> StorageError {
        match e {
            PrepError::Create(e) => self.poison.write_error("create", name, e),
            PrepError::Rename(e) => self.poison.write_error("rename", name, e),
            PrepError::Batch(BatchFailure::Write(e)) => self.poison.write_error("preallocate", name, e),
            PrepError::Batch(BatchFailure::Sync(e)) => self.poison.sync_error(name, e),
        }
    }

    /// Puts a prepared but unused segment back into the pool of reusable files.
    fn shelve(&mut self, r: Ready) -> Result<()> {
        let from = open_name(r.seq);
        if self.pool.len() < RECYCLE_POOL && r.size % ALIGN == 0 && r.size >= self.opts.segment_size_bytes {
            let to = recycle_name(r.seq);
            self.backend.rename(&from, &to).map_err(|e| self.write_err("rename", &from, e))?;
            self.pool.push(Recyclable { name: to, file: r.file, size: r.size });
        } else {
            drop(r.file);
            self.backend.remove(&from).map_err(|e| self.write_err("remove", &from, e))?;
        }
        self.sync_dir()
    }

    /// A freed segment file of at least `size` bytes, if one is kept.
    fn take_recyclable(&mut self, size: u64) -> Option<Recyclable> {
        let i = self.pool.iter().position(|r| r.size >= size)?;
        Some(self.pool.swap_remove(i))
    }

    /// Hands the preparation of the next segment (and the rename `close` of the previous
    /// one) to the background preparer. No-op without background preparation.
    fn start_preparing(&mut self, close: Option<Close>) {
        if !self.opts.background_preallocation {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = self.opts.segment_size_bytes;
        let recycle = self.take_recyclable(size);
        let work = Work { seq, size, recycle, close };
        if self.worker.is_none() {
            self.worker = Worker::spawn(Arc::clone(&self.backend));
        }
        let work = match self.worker.as_mut() {
            Some(w) => match w.work.as_ref().map(|tx| tx.send(work)) {
                Some(Ok(())) => {
                    w.busy = true;
                    return;
                }
                Some(Err(std::sync::mpsc::SendError(work))) => work,
                None => return,
            },
            None => work,
        };
        // No preparer thread: do the work now (rare: the thread could not be started).
        self.worker = None;
        let done = prepare(&*self.backend, work);
        // A failed directory sync poisons the store; the next write reports it.
        let _ = self.absorb(done);
    }

    /// Waits for the background preparer, if it is working, and takes its result.
    fn settle(&mut self) -> Result<()> {
        let Some(w) = self.worker.as_mut() else { return Ok(()) };
        if !w.busy {
            return Ok(());
        }
        w.busy = false;
        match w.done.recv() {
            Ok(done) => self.absorb(done),
            Err(_) => {
                // The thread died: what it did to the directory is unknown.
                self.worker = None;
                let dir = self.backend.describe();
                Err(self.poison_invariant("prepare segment", &dir))
            }
        }
    }

    /// Takes a preparation's result: a ready segment, the previous segment's new name.
    fn absorb(&mut self, done: Done) -> Result<()> {
        if let Some((c, res)) = done.close {
            match res {
                Ok(()) => {
                    if let Some(s) = self.segments.get_mut(&c.seq) {
                        s.name = c.to;
                    }
                }
                // Its data is intact; the next open gives it its closed name.
                Err(e) => tracing::warn!(file = %c.from, error = %e, "could not rename a full segment"),
            }
        }
        match done.ready {
            Ok(r) => self.ready = Some(r),
            Err((name, e)) => {
                tracing::warn!(file = %name, error = ?e, "background segment preparation failed; retrying inline")
            }
        }
        let dir = self.backend.describe();
        done.dir.map_err(|e| self.poison.sync_error(&dir, e))
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Do not leave a thread writing into the directory after the lock is released. A
        // segment it prepared stays on disk and is used after the next open.
        let _ = self.settle();
        if let Some(mut w) = self.worker.take() {
            drop(w.work.take());
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// A segment ready to be written: named `open-<seq>`, header and directory entry durable.
struct Ready {
    seq: u64,
    size: u64,
    file: Box<dyn BackendFile>,
    /// Reused from a freed segment (header version 2).
    recycled: bool,
}

/// A freed segment file kept for reuse, named `recycle-<its old seq>`.
struct Recyclable {
    name: String,
    file: Box<dyn BackendFile>,
    size: u64,
}

/// A full segment's rename from `open-` to `closed-`.
struct Close {
    seq: u64,
    from: String,
    to: String,
}

/// One preparation: segment `seq` of at least `size` bytes, from `recycle` if given.
struct Work {
    seq: u64,
    size: u64,
    recycle: Option<Recyclable>,
    close: Option<Close>,
}

/// What a preparation did.
struct Done {
    close: Option<(Close, std::io::Result<()>)>,
    ready: Result<Ready, (String, PrepError)>,
    /// The directory sync that made all of it durable.
    dir: std::io::Result<()>,
}

/// The background preparer thread.
struct Worker {
    work: Option<std::sync::mpsc::Sender<Work>>,
    done: std::sync::mpsc::Receiver<Done>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// A `Work` was sent and its `Done` not yet received.
    busy: bool,
}

impl Worker {
    fn spawn(backend: Arc<dyn Backend>) -> Option<Worker> {
        let (work_tx, work_rx) = std::sync::mpsc::channel::<Work>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("dqlite-log-prepare".into()).spawn(move || {
            for work in work_rx {
                if done_tx.send(prepare(&*backend, work)).is_err() {
                    break;
                }
            }
        });
        match spawned {
            Ok(handle) => Some(Worker { work: Some(work_tx), done: done_rx, handle: Some(handle), busy: false }),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the segment preparation thread");
                None
            }
        }
    }
}

/// Why preparing a segment failed.
#[derive(Debug)]
enum PrepError {
    Create(std::io::Error),
    Batch(BatchFailure),
    Rename(std::io::Error),
}

/// Does one preparation: renames the previous segment to its closed name (if asked), builds
/// `prealloc-<seq>` (zeros, or a recycled file with a new header), syncs it, renames it to
/// `open-<seq>`, and syncs the directory once for all of it. On failure the half-built file
/// is removed (space given back) before that sync.
fn prepare(backend: &dyn Backend, work: Work) -> Done {
    let close = work.close.map(|c| {
        let r = backend.rename(&c.from, &c.to);
        (c, r)
    });
    let spare = spare_name(work.seq);
    let built = match work.recycle {
        Some(r) => reuse(backend, r, &spare, work.seq),
        None => preallocate(backend, &spare, work.seq, work.size).map(|f| (f, work.size, false)),
    };
    let ready = built
        .and_then(|(file, size, recycled)| {
            backend.rename(&spare, &open_name(work.seq)).map_err(PrepError::Rename)?;
            tracing::debug!(seq = work.seq, size, recycled, "segment prepared");
            Ok(Ready { seq: work.seq, size, file, recycled })
        })
        .map_err(|e| {
            let _ = backend.remove(&spare);
            (spare, e)
        });
    let dir = backend.sync_dir();
    Done { close, ready, dir }
}

/// Turns a freed segment file into `spare` for segment `seq`: renames it, then overwrites its
/// first block with a version-2 header followed by zeros (so the end marker is in place) and
/// syncs. Its other blocks keep their stale bytes: they were written before, which is what
/// makes later `fdatasync`s cheap, and they can never pass for batches of `seq`.
fn reuse(
    backend: &dyn Backend,
    r: Recyclable,
    spare: &str,
    seq: u64,
) -> Result<(Box<dyn BackendFile>, u64, bool), PrepError> {
    backend.rename(&r.name, spare).map_err(PrepError::Create)?;
    let mut file = r.file;
    let header = encode_header_block(seq, true);
    file.write_all_sync(&[(0, &header)]).map_err(PrepError::Batch)?;
    Ok((file, r.size, true))
}

/// Creates `name` (replacing a leftover), writes the segment header for `seq` and zeros up to
/// `size`, and syncs it. The caller renames it into place and syncs the directory.
fn preallocate(backend: &dyn Backend, name: &str, seq: u64, size: u64) -> Result<Box<dyn BackendFile>, PrepError> {
    let mut file = match backend.open(name, OpenMode::CreateNew) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            backend.remove(name).map_err(PrepError::Create)?;
            backend.open(name, OpenMode::CreateNew).map_err(PrepError::Create)?
        }
        Err(e) => return Err(PrepError::Create(e)),
    };
    let header = encode_header_block(seq, false);
    let zeros = vec![0u8; ZERO_CHUNK];
    // Through the page cache (O_DIRECT zeros would be written synchronously), one chunk and
    // its `fdatasync` at a time: the whole segment synced at once put megabytes in the device's
    // queue ahead of the appends' own syncs (the 64-entry p99 of `log_bench grow` was 8-12x the
    // raw loop's), a chunk at a time an append waits behind one chunk at most.
    file.write_all_sync_cached(&[(0, &header[..])]).map_err(PrepError::Batch)?;
    let mut off = ALIGN;
    while off < size {
        let n = (size - off).min(ZERO_CHUNK as u64) as usize;
        file.write_all_sync_cached(&[(off, &zeros[..n])]).map_err(PrepError::Batch)?;
        off += n as u64;
    }
    Ok(file)
}

/// The first 4096 bytes of a segment: header (version 1 pre-zeroed, 2 recycled) then zeros.
fn encode_header_block(seq: u64, recycled: bool) -> Vec<u8> {
    let version = if recycled { format::SEGMENT_VERSION_RECYCLED } else { format::SEGMENT_VERSION_ZEROED };
    let mut b = vec![0u8; ALIGN as usize];
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&format::encode_segment_header_version(seq, version));
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
