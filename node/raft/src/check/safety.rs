//! Raft's safety properties (Raft paper §5.2–§5.4, Figure 3), checked incrementally as a
//! simulation runs.
//!
//! The checker never looks inside the core. The simulator reports what an outside observer can
//! see: who claims to lead which term, what each node appended to its log, how far each node
//! says the log is committed, and which entries each node applied. From that it checks:
//!
//! * **Election safety**: at most one leader per term, over the whole run.
//! * **Log matching**: two entries with the same index and term carry the same payload and
//!   follow entries with the same term. (By induction over indices this is exactly "if two logs
//!   hold an entry with the same index and term, they are identical up to it".)
//! * **Leader completeness**: a leader's log holds every entry known to be committed.
//! * **State-machine safety**: no two nodes apply different entries at one index; an entry is
//!   applied only once committed; a committed entry never changes.
//! * **Monotonic progress**: a node's commit index and applied index never go back while it runs,
//!   and after a restart it never applies anything that contradicts what was applied before.

use std::collections::HashMap;
use std::fmt;

use crate::{EntryKind, LogIndex, NodeId, Term};

/// A broken invariant, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two nodes led the same term.
    TwoLeaders {
        /// The term.
        term: Term,
        /// The first leader seen.
        first: NodeId,
        /// The second.
        second: NodeId,
    },
    /// Two entries with the same index and term differ (payload or predecessor term).
    LogMismatch {
        /// The node whose append disagreed with an earlier one.
        node: NodeId,
        /// The index.
        index: LogIndex,
        /// The term.
        term: Term,
        /// What differs.
        what: &'static str,
    },
    /// A leader lacks a committed entry.
    LeaderIncomplete {
        /// The leader.
        leader: NodeId,
        /// Its term.
        term: Term,
        /// The committed index it does not hold (or holds with another term).
        index: LogIndex,
    },
    /// A committed entry was replaced by a different one.
    CommittedEntryChanged {
        /// The node reporting the different entry as committed.
        node: NodeId,
        /// The index.
        index: LogIndex,
    },
    /// Two nodes applied different entries at one index, or a node applied an entry that is not
    /// the committed one.
    ApplyMismatch {
        /// The node.
        node: NodeId,
        /// The index.
        index: LogIndex,
    },
    /// A node applied an entry beyond what it reported as committed.
    AppliedUncommitted {
        /// The node.
        node: NodeId,
        /// The index applied.
        index: LogIndex,
        /// Its commit index then.
        commit: LogIndex,
    },
    /// A node's commit index went back.
    CommitWentBack {
        /// The node.
        node: NodeId,
        /// Before.
        from: LogIndex,
        /// After.
        to: LogIndex,
    },
    /// A node applied entries out of order (skipped or repeated an index without a restart).
    ApplyOutOfOrder {
        /// The node.
        node: NodeId,
        /// The index expected next.
        expected: LogIndex,
        /// The index applied.
        got: LogIndex,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Violation {}

/// What the checker keeps about one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryFacts {
    prev_term: Term,
    digest: u64,
}

/// An entry's identity for the checker: index, term and a digest of kind and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryId {
    /// Index.
    pub index: LogIndex,
    /// Term.
    pub term: Term,
    /// Digest of kind and payload ([`digest`]).
    pub digest: u64,
}

/// FNV-1a over an entry's kind and payload.
pub fn digest(kind: EntryKind, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in core::iter::once(&(kind as u8)).chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Debug, Default)]
struct NodeProgress {
    commit: LogIndex,
    /// Next index this node must apply; `None` right after a (re)start until the first apply or
    /// snapshot restore fixes it.
    next_apply: Option<LogIndex>,
}

/// The incremental safety checker. Feed it observations in the order they happen.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    leaders: HashMap<Term, NodeId>,
    entries: HashMap<(LogIndex, Term), EntryFacts>,
    /// The committed prefix known so far: `committed[i - 1]` is the entry at index `i`.
    committed: Vec<(Term, u64)>,
    /// For each committed index, the term in which its commitment was first observed (the
    /// observer's current term: the committing leader's term, or a later one).
    commit_terms: Vec<Term>,
    /// Entries some node applied, by index (term, digest).
    applied: HashMap<LogIndex, (Term, u64)>,
    nodes: HashMap<NodeId, NodeProgress>,
    /// The number of observations checked (for reports).
    pub checks: u64,
}

impl SafetyChecker {
    /// A checker that has seen nothing.
    pub fn new() -> SafetyChecker {
        SafetyChecker::default()
    }

    /// The highest index known to be committed.
    pub fn committed_index(&self) -> LogIndex {
        LogIndex(self.committed.len() as u64)
    }

    /// The committed entry at `index`, if known: (term, digest).
    pub fn committed_at(&self, index: LogIndex) -> Option<(Term, u64)> {
        if index.0 == 0 {
            return None;
        }
        self.committed.get(index.0 as usize - 1).copied()
    }

    /// `node` claims to lead `term`.
    pub fn observe_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        self.checks += 1;
        match self.leaders.get(&term) {
            Some(&first) if first != node => Err(Violation::TwoLeaders { term, first, second: node }),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
                Ok(())
            }
        }
    }

    /// `node` wrote `entry` to its log right after an entry of term `prev_term` (term 0 for
    /// the first entry, or the snapshot's term when it follows a snapshot).
    pub fn observe_append(&mut self, node: NodeId, entry: EntryId, prev_term: Term) -> Result<(), Violation> {
        self.checks += 1;
        let facts = EntryFacts { prev_term, digest: entry.digest };
        match self.entries.get(&(entry.index, entry.term)) {
            None => {
                self.entries.insert((entry.index, entry.term), facts);
                Ok(())
            }
            Some(old) if old.digest != facts.digest => {
                Err(Violation::LogMismatch { node, index: entry.index, term: entry.term, what: "payload differs" })
            }
            Some(old) if old.prev_term != facts.prev_term => Err(Violation::LogMismatch {
                node,
                index: entry.index,
                term: entry.term,
                what: "predecessor term differs",
            }),
            Some(_) => Ok(()),
        }
    }

    /// `node`, whose current term is `term`, reports commit index `commit`; `log_at(i)` gives
    /// the node's entry at index `i` for every newly committed index (`None` if compacted into
    /// a snapshot).
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        term: Term,
        commit: LogIndex,
        mut log_at: impl FnMut(LogIndex) -> Option<EntryId>,
    ) -> Result<(), Violation> {
        self.checks += 1;
        let p = self.nodes.entry(node).or_default();
        if commit < p.commit {
            return Err(Violation::CommitWentBack { node, from: p.commit, to: commit });
        }
        let from = p.commit;
        p.commit = commit;
        let mut i = from.next();
        while i <= commit {
            if let Some(e) = log_at(i) {
                self.record_committed(node, term, e)?;
            }
            i = i.next();
        }
        Ok(())
    }

    fn record_committed(&mut self, node: NodeId, term: Term, e: EntryId) -> Result<(), Violation> {
        let pos = e.index.0 as usize - 1;
        if let Some(&(t, d)) = self.committed.get(pos) {
            if (t, d) != (e.term, e.digest) {
                return Err(Violation::CommittedEntryChanged { node, index: e.index });
            }
            return Ok(());
        }
        // Known committed entries form a prefix; a node may learn of a commit beyond the known
        // prefix only through entries it holds, and everything before a committed entry is
        // committed too, so gaps are filled as other observations arrive. Keep a prefix only.
        if pos == self.committed.len() {
            self.committed.push((e.term, e.digest));
            self.commit_terms.push(term);
        }
        Ok(())
    }

    /// `node` (re)started: its volatile progress is forgotten; `commit` is what it restored.
    pub fn observe_restart(&mut self, node: NodeId, commit: LogIndex) {
        self.nodes.insert(node, NodeProgress { commit, next_apply: None });
    }

    /// `node` restored a snapshot covering everything up to `index`: it applies `index + 1` next.
    pub fn observe_snapshot_restore(&mut self, node: NodeId, index: LogIndex) {
        let p = self.nodes.entry(node).or_default();
        p.next_apply = Some(index.next());
        if p.commit < index {
            p.commit = index;
        }
    }

    /// `node` applied `entry`.
    pub fn observe_apply(&mut self, node: NodeId, entry: EntryId) -> Result<(), Violation> {
        self.checks += 1;
        let p = self.nodes.entry(node).or_default();
        if entry.index > p.commit {
            return Err(Violation::AppliedUncommitted { node, index: entry.index, commit: p.commit });
        }
        if let Some(expected) = p.next_apply {
            if entry.index != expected {
                return Err(Violation::ApplyOutOfOrder { node, expected, got: entry.index });
            }
        }
        p.next_apply = Some(entry.index.next());
        let id = (entry.term, entry.digest);
        if let Some(&c) = self.committed_at(entry.index).as_ref() {
            if c != id {
                return Err(Violation::ApplyMismatch { node, index: entry.index });
            }
        }
        match self.applied.get(&entry.index) {
            Some(&old) if old != id => Err(Violation::ApplyMismatch { node, index: entry.index }),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, id);
                Ok(())
            }
        }
    }

    /// Checks that `leader` (leading `term`) holds every entry known to have been committed in
    /// an earlier term (§5.4: a stale leader need not hold what later terms committed).
    /// `log_at(i)` gives its entry at index `i`; `snapshot_index` is the last index it has
    /// compacted into a snapshot (entries at or below it are not in its log).
    pub fn check_leader_complete(
        &mut self,
        leader: NodeId,
        term: Term,
        snapshot_index: LogIndex,
        mut log_at: impl FnMut(LogIndex) -> Option<(Term, u64)>,
    ) -> Result<(), Violation> {
        self.checks += 1;
        // The highest index committed in a term before `term`; by log matching it is enough to
        // check that one entry.
        let Some(pos) = self.commit_terms.iter().rposition(|t| *t < term) else {
            return Ok(());
        };
        let c = LogIndex(pos as u64 + 1);
        if c <= snapshot_index {
            return Ok(());
        }
        let want = self.committed_at(c);
        if log_at(c) != want {
            return Err(Violation::LeaderIncomplete { leader, term, index: c });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64, t: u64, d: u64) -> EntryId {
        EntryId { index: LogIndex(i), term: Term(t), digest: d }
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = SafetyChecker::new();
        c.observe_leader(NodeId(1), Term(1)).unwrap();
        c.observe_leader(NodeId(1), Term(1)).unwrap();
        c.observe_leader(NodeId(2), Term(2)).unwrap();
        assert!(matches!(c.observe_leader(NodeId(3), Term(2)), Err(Violation::TwoLeaders { .. })));
    }

    #[test]
    fn log_matching_is_caught() {
        let mut c = SafetyChecker::new();
        c.observe_append(NodeId(1), id(1, 1, 10), Term(0)).unwrap();
        c.observe_append(NodeId(2), id(1, 1, 10), Term(0)).unwrap();
        assert!(matches!(
            c.observe_append(NodeId(3), id(1, 1, 11), Term(0)),
            Err(Violation::LogMismatch { what: "payload differs", .. })
        ));
        c.observe_append(NodeId(1), id(2, 2, 20), Term(1)).unwrap();
        assert!(matches!(
            c.observe_append(NodeId(2), id(2, 2, 20), Term(0)),
            Err(Violation::LogMismatch { what: "predecessor term differs", .. })
        ));
    }

    #[test]
    fn commit_going_back_and_changed_commits_are_caught() {
        let mut c = SafetyChecker::new();
        let log1 = [id(1, 1, 10), id(2, 1, 11)];
        c.observe_commit(NodeId(1), Term(1), LogIndex(2), |i| log1.get(i.0 as usize - 1).copied()).unwrap();
        assert_eq!(c.committed_index(), LogIndex(2));
        assert!(matches!(
            c.observe_commit(NodeId(1), Term(1), LogIndex(1), |_| None),
            Err(Violation::CommitWentBack { .. })
        ));
        let log2 = [id(1, 1, 10), id(2, 2, 99)];
        assert!(matches!(
            c.observe_commit(NodeId(2), Term(2), LogIndex(2), |i| log2.get(i.0 as usize - 1).copied()),
            Err(Violation::CommittedEntryChanged { .. })
        ));
        // After a restart the volatile commit index may restart lower.
        c.observe_restart(NodeId(1), LogIndex(0));
        c.observe_commit(NodeId(1), Term(1), LogIndex(1), |i| log1.get(i.0 as usize - 1).copied()).unwrap();
    }

    #[test]
    fn apply_violations_are_caught() {
        let mut c = SafetyChecker::new();
        let log = [id(1, 1, 10), id(2, 1, 11), id(3, 1, 12)];
        let at = |i: LogIndex| log.get(i.0 as usize - 1).copied();
        c.observe_commit(NodeId(1), Term(1), LogIndex(2), at).unwrap();
        c.observe_apply(NodeId(1), id(1, 1, 10)).unwrap();
        assert!(matches!(c.observe_apply(NodeId(1), id(3, 1, 12)), Err(Violation::AppliedUncommitted { .. })));
        assert!(matches!(c.observe_apply(NodeId(1), id(2, 1, 77)), Err(Violation::ApplyMismatch { .. })));
        let mut c2 = SafetyChecker::new();
        c2.observe_commit(NodeId(1), Term(1), LogIndex(3), at).unwrap();
        c2.observe_apply(NodeId(1), id(1, 1, 10)).unwrap();
        assert!(matches!(c2.observe_apply(NodeId(1), id(3, 1, 12)), Err(Violation::ApplyOutOfOrder { .. })));
    }

    #[test]
    fn leader_completeness_is_caught() {
        let mut c = SafetyChecker::new();
        let log = [id(1, 1, 10), id(2, 1, 11)];
        c.observe_commit(NodeId(1), Term(1), LogIndex(2), |i| log.get(i.0 as usize - 1).copied()).unwrap();
        c.check_leader_complete(NodeId(2), Term(2), LogIndex(0), |i| {
            log.get(i.0 as usize - 1).map(|e| (e.term, e.digest))
        })
        .unwrap();
        // A leader with a shorter log.
        assert!(matches!(
            c.check_leader_complete(NodeId(3), Term(3), LogIndex(0), |i| {
                log[..1].get(i.0 as usize - 1).map(|e| (e.term, e.digest))
            }),
            Err(Violation::LeaderIncomplete { .. })
        ));
        // Compacted past the committed index: nothing to check in the log.
        c.check_leader_complete(NodeId(3), Term(3), LogIndex(2), |_| None).unwrap();
        // A stale leader (term 1) need not hold what term 1's successors commit, but the
        // check still applies to entries committed before its term.
        let mut c = SafetyChecker::new();
        c.observe_commit(NodeId(1), Term(3), LogIndex(2), |i| log.get(i.0 as usize - 1).copied()).unwrap();
        c.check_leader_complete(NodeId(2), Term(2), LogIndex(0), |_| None).unwrap();
        assert!(c.check_leader_complete(NodeId(2), Term(4), LogIndex(0), |_| None).is_err());
    }

    #[test]
    fn digest_separates_kind_and_payload() {
        assert_ne!(digest(EntryKind::Command, b"a"), digest(EntryKind::Barrier, b"a"));
        assert_ne!(digest(EntryKind::Command, b"a"), digest(EntryKind::Command, b"b"));
    }
}
