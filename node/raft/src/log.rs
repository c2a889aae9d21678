//! The core's in-memory view of the log: entries after the compaction point, plus the
//! commit / persist / apply cursors. The durable copy is the application's (see [`crate::ready`]).

use std::collections::VecDeque;

use crate::types::{Entry, LogIndex, Term};

/// The in-memory log. Entries `first_index()..=last_index()` are held; entries up to
/// [`RaftLog::compacted_index`] are only in the snapshot.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Index of the last entry dropped from memory (covered by a snapshot or before index 1).
    compacted_index: LogIndex,
    /// Its term.
    compacted_term: Term,
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    pub(crate) committed: LogIndex,
    /// Highest index the application reported durable (matching our log).
    pub(crate) persisted: LogIndex,
    /// Highest index handed out in `committed_entries`.
    pub(crate) applying: LogIndex,
    /// Highest index the application reported applied.
    pub(crate) applied: LogIndex,
    /// First index not yet handed out in `Ready::entries`.
    pub(crate) unstable_from: LogIndex,
}

impl RaftLog {
    /// An empty log whose prefix up to `index` (of `term`) is compacted away.
    pub(crate) fn new(index: LogIndex, term: Term) -> RaftLog {
        RaftLog {
            compacted_index: index,
            compacted_term: term,
            entries: VecDeque::new(),
            committed: index,
            persisted: index,
            applying: index,
            applied: index,
            unstable_from: index.next(),
        }
    }

    /// Index of the last entry no longer held in memory.
    pub fn compacted_index(&self) -> LogIndex {
        self.compacted_index
    }

    /// First index held in memory.
    pub fn first_index(&self) -> LogIndex {
        self.compacted_index.next()
    }

    /// Last index of the log.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.compacted_index.0 + self.entries.len() as u64)
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.compacted_term, |e| e.term)
    }

    /// The commit index.
    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// The index the application reported applied.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The index the application reported durable.
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term of the entry at `index`, if known (held, or the compaction point).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.compacted_index {
            return None;
        }
        self.entries.get((index.0 - self.compacted_index.0 - 1) as usize)
    }

    /// Entries `lo..=hi` (clamped to what is held), stopping once `max_bytes` is exceeded
    /// (at least one entry is returned if any is in range).
    pub fn slice(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Vec<Entry> {
        let lo = lo.max(self.first_index());
        let hi = hi.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut i = lo;
        while i <= hi {
            let Some(e) = self.entry(i) else { break };
            bytes += e.data.len() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            i = i.next();
        }
        out
    }

    /// True if a log ending at (`last_index`, `last_term`) is at least as up to date as ours (§5.4.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// True if our entry at `index` has `term`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Appends one entry at the end (leader path).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index().next());
        debug_assert!(entry.term >= self.last_term());
        self.entries.push_back(entry);
    }

    /// Removes every entry with index >= `from` (never committed ones).
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        debug_assert!(from > self.committed, "truncating committed entry {from:?}");
        debug_assert!(from > self.compacted_index);
        let keep = (from.0 - self.compacted_index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(from);
        self.persisted = self.persisted.min(from.prev());
    }

    /// Appends the leader's entries after a successful consistency check: skips those
    /// already present, truncates at the first conflict. Returns the first truncated index.
    pub(crate) fn merge(&mut self, entries: &[Entry]) -> Option<LogIndex> {
        let mut truncated = None;
        for e in entries {
            if e.index <= self.compacted_index {
                continue;
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    self.truncate_from(e.index);
                    truncated.get_or_insert(e.index);
                    self.entries.push_back(e.clone());
                }
                None => {
                    debug_assert_eq!(e.index, self.last_index().next());
                    self.entries.push_back(e.clone());
                }
            }
        }
        truncated
    }

    /// Drops entries up to `index` from memory (they are covered by a snapshot).
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.compacted_index {
            return;
        }
        let Some(term) = self.term(index) else { return };
        let n = (index.0 - self.compacted_index.0) as usize;
        self.entries.drain(..n.min(self.entries.len()));
        self.compacted_index = index;
        self.compacted_term = term;
        self.unstable_from = self.unstable_from.max(index.next());
    }

    /// Resets the log to a received snapshot. Keeps the entries after it if our entry at
    /// its index has its term (returns true then).
    pub(crate) fn restore_snapshot(&mut self, index: LogIndex, term: Term) -> bool {
        let keep = self.matches(index, term) && index >= self.compacted_index;
        if keep {
            self.compact_to(index);
        } else {
            self.entries.clear();
            self.compacted_index = index;
            self.compacted_term = term;
        }
        self.unstable_from = self.unstable_from.max(index.next());
        self.committed = self.committed.max(index);
        self.applying = self.applying.max(index);
        self.applied = self.applied.max(index);
        self.persisted = if keep { self.persisted.max(index) } else { index };
        keep
    }

    /// Entries not yet handed to the application for persistence.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out = self.slice(from, self.last_index(), u64::MAX);
        self.unstable_from = self.last_index().next();
        out
    }

    /// Committed, locally durable entries not yet handed out for applying.
    pub(crate) fn take_committed(&mut self) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if hi <= self.applying {
            return Vec::new();
        }
        let out = self.slice(self.applying.next(), hi, u64::MAX);
        if let Some(e) = out.last() {
            self.applying = e.index;
        }
        out
    }

    /// The last index whose term is `term` or lower, at or before `index` (fast back-off).
    pub(crate) fn last_index_of_term_at_most(&self, term: Term, index: LogIndex) -> LogIndex {
        let mut i = index.min(self.last_index());
        while i > self.compacted_index {
            match self.term(i) {
                Some(t) if t <= term => return i,
                _ => i = i.prev(),
            }
        }
        i
    }

    /// The first index of the run of entries of the same term containing `index`.
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex) -> LogIndex {
        let Some(t) = self.term(index) else { return index };
        let mut i = index;
        while i > self.first_index() && self.term(i.prev()) == Some(t) {
            i = i.prev();
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;

    fn e(i: u64, t: u64) -> Entry {
        Entry { term: Term(t), index: LogIndex(i), kind: EntryKind::Command, data: vec![i as u8] }
    }

    #[test]
    fn merge_skips_matching_and_truncates_conflicts() {
        let mut l = RaftLog::new(LogIndex(0), Term(0));
        l.merge(&[e(1, 1), e(2, 1), e(3, 1)]);
        assert_eq!(l.last_index(), LogIndex(3));
        assert_eq!(l.merge(&[e(2, 1), e(3, 2), e(4, 2)]), Some(LogIndex(3)));
        assert_eq!(l.term(LogIndex(3)), Some(Term(2)));
        assert_eq!(l.last_index(), LogIndex(4));
        assert_eq!(l.take_unstable().len(), 4);
        l.merge(&[e(4, 3)]);
        assert_eq!(l.take_unstable(), vec![e(4, 3)]);
    }

    #[test]
    fn compaction_keeps_term_of_compaction_point() {
        let mut l = RaftLog::new(LogIndex(0), Term(0));
        l.merge(&[e(1, 1), e(2, 1), e(3, 2)]);
        l.compact_to(LogIndex(2));
        assert_eq!(l.first_index(), LogIndex(3));
        assert_eq!(l.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(l.term(LogIndex(1)), None);
        assert_eq!(l.slice(LogIndex(1), LogIndex(9), 0), vec![e(3, 2)]);
    }

    #[test]
    fn slice_respects_byte_limit_but_returns_at_least_one_entry() {
        let mut l = RaftLog::new(LogIndex(0), Term(0));
        l.merge(&[e(1, 1), e(2, 1), e(3, 1)]);
        assert_eq!(l.slice(LogIndex(1), LogIndex(3), 0).len(), 1);
        assert_eq!(l.slice(LogIndex(1), LogIndex(3), 1).len(), 1);
        assert_eq!(l.slice(LogIndex(1), LogIndex(3), 2).len(), 2);
        assert_eq!(l.slice(LogIndex(2), LogIndex(3), 100).len(), 2);
        assert!(l.slice(LogIndex(4), LogIndex(9), 100).is_empty());
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let mut l = RaftLog::new(LogIndex(0), Term(0));
        l.merge(&[e(1, 1), e(2, 2)]);
        assert!(l.is_up_to_date(LogIndex(1), Term(3)));
        assert!(!l.is_up_to_date(LogIndex(5), Term(1)));
        assert!(l.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!l.is_up_to_date(LogIndex(1), Term(2)));
    }
}
