//! How many bytes of entry data the core holds in memory, by index, so that snapshots and
//! compaction can be triggered by bytes as well as by entry counts: at 32 concurrent writers an
//! entry carries ~100 KiB of pages, and 4,096 of them (the entry-count threshold) would be
//! ~400 MiB of memory.
//!
//! A mirror of the core's in-memory log (`RaftLog`): every entry enters it through
//! `Ready::entries` (the leader's proposals and a follower's merges, a conflicting suffix
//! replaced by re-sending from its first index) or is loaded at start; it leaves by compaction,
//! by a truncation (reconciled against the core's `last_index`) or by a snapshot install.

use std::collections::VecDeque;

use dqlite_raft::{Entry, LogIndex, RaftLog};

/// Cumulative entry-data bytes by index over the entries the core holds.
#[derive(Debug, Default)]
pub(crate) struct LogBytes {
    /// Cumulative bytes up to and including the entry before the first one held.
    base: u64,
    /// `(index, cumulative bytes through index)`, contiguous and ascending.
    held: VecDeque<(LogIndex, u64)>,
}

impl LogBytes {
    /// The ledger of what `log` holds now (at start).
    pub(crate) fn from_log(log: &RaftLog) -> LogBytes {
        let mut me = LogBytes::default();
        let mut i = log.first_index();
        while i <= log.last_index() {
            match log.entry(i) {
                Some(e) => me.push(e.index, e.data.len() as u64),
                None => break,
            }
            i = i.next();
        }
        me
    }

    fn last_cum(&self) -> u64 {
        self.held.back().map_or(self.base, |&(_, c)| c)
    }

    fn push(&mut self, index: LogIndex, len: u64) {
        if let Some(&(last, _)) = self.held.back() {
            if index <= last {
                self.truncate_from(index);
            } else if index != last.next() {
                // A gap (a snapshot moved the log on): start over from here.
                self.base = self.last_cum();
                self.held.clear();
            }
        }
        let cum = self.last_cum() + len;
        self.held.push_back((index, cum));
    }

    fn truncate_from(&mut self, from: LogIndex) {
        while self.held.back().is_some_and(|&(i, _)| i >= from) {
            self.held.pop_back();
        }
    }

    /// Entries handed out for persistence (they are in the core's log).
    pub(crate) fn appended(&mut self, entries: &[Entry]) {
        for e in entries {
            self.push(e.index, e.data.len() as u64);
        }
    }

    /// Drops what the core no longer holds: up to `compacted`, and after `last`.
    pub(crate) fn sync(&mut self, compacted: LogIndex, last: LogIndex) {
        while let Some(&(i, c)) = self.held.front() {
            if i > compacted {
                break;
            }
            self.base = c;
            self.held.pop_front();
        }
        self.truncate_from(last.next());
    }

    /// Bytes of entry data held in all.
    pub(crate) fn total(&self) -> u64 {
        self.last_cum() - self.base
    }

    /// Cumulative bytes through `index` (entries before the first held count as the base;
    /// entries after the last as the last).
    fn cum_at(&self, index: LogIndex) -> u64 {
        let Some(&(first, _)) = self.held.front() else { return self.base };
        if index < first {
            return self.base;
        }
        let pos = (index.0 - first.0) as usize;
        self.held.get(pos).map_or(self.last_cum(), |&(_, c)| c)
    }

    /// Bytes of the entries in `(after, upto]`.
    pub(crate) fn between(&self, after: LogIndex, upto: LogIndex) -> u64 {
        if upto <= after {
            return 0;
        }
        self.cum_at(upto).saturating_sub(self.cum_at(after))
    }

    /// The lowest index `c` such that the entries in `(c, upto]` hold at most `max` bytes (the
    /// log may be compacted up to `c` and keep that tail). At least `upto - 1`: the entry at
    /// `upto` alone is kept whatever its size.
    pub(crate) fn keep_at_most(&self, upto: LogIndex, max: u64) -> LogIndex {
        let Some(&(first, _)) = self.held.front() else { return upto.prev() };
        let end = self.cum_at(upto);
        // Held indexes from `first` to `upto`: find the first whose cumulative is >= end - max.
        let want = end.saturating_sub(max);
        if self.base >= want {
            return first.prev().min(upto.prev());
        }
        let n = ((upto.0.saturating_sub(first.0)) as usize + 1).min(self.held.len());
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.held[mid].1 >= want {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        // held[lo] is the first entry whose cumulative reaches `want`: compact up to it.
        match self.held.get(lo) {
            Some(&(i, _)) => i.min(upto.prev()),
            None => upto.prev(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite_raft::{EntryKind, Term};

    fn e(i: u64, len: usize) -> Entry {
        Entry { index: LogIndex(i), term: Term(1), kind: EntryKind::Command, data: vec![0; len] }
    }

    #[test]
    fn counts_appends_truncations_and_compaction() {
        let mut b = LogBytes::default();
        b.appended(&[e(1, 10), e(2, 20), e(3, 30)]);
        assert_eq!(b.total(), 60);
        assert_eq!(b.between(LogIndex(1), LogIndex(3)), 50);
        // A conflict replaces 3 and adds 4.
        b.appended(&[e(3, 5), e(4, 7)]);
        assert_eq!(b.total(), 42);
        b.sync(LogIndex(2), LogIndex(4));
        assert_eq!(b.total(), 12);
        assert_eq!(b.between(LogIndex(0), LogIndex(4)), 12);
        // The core truncated after 3.
        b.sync(LogIndex(2), LogIndex(3));
        assert_eq!(b.total(), 5);
        // A snapshot moved the log past everything: a gap starts over.
        b.appended(&[e(10, 100)]);
        assert_eq!(b.total(), 100);
    }

    #[test]
    fn keep_at_most_finds_the_compaction_point_of_a_byte_bound() {
        let mut b = LogBytes::default();
        b.appended(&(1..=10).map(|i| e(i, 100)).collect::<Vec<_>>());
        // Keep at most 250 bytes behind 10: entries 9 and 10 (200 bytes); compact up to 8.
        assert_eq!(b.keep_at_most(LogIndex(10), 250), LogIndex(8));
        assert_eq!(b.keep_at_most(LogIndex(10), 200), LogIndex(8));
        assert_eq!(b.keep_at_most(LogIndex(10), 199), LogIndex(9));
        // The last entry is kept whatever its size.
        assert_eq!(b.keep_at_most(LogIndex(10), 0), LogIndex(9));
        // Everything fits: nothing needs compacting.
        assert_eq!(b.keep_at_most(LogIndex(10), 10_000), LogIndex(0));
        assert_eq!(b.keep_at_most(LogIndex(5), 250), LogIndex(3));
        b.sync(LogIndex(4), LogIndex(10));
        assert_eq!(b.keep_at_most(LogIndex(10), 10_000), LogIndex(4));
    }
}
