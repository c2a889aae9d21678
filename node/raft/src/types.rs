//! Newtypes shared by the core, the storage and the simulator.

use core::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(pub u64);

        impl $name {
            /// The zero value.
            pub const ZERO: $name = $name(0);
            /// The raw integer.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

newtype_u64!(
    /// A Raft term. Term 0 is the term before any election.
    Term,
    "t"
);
newtype_u64!(
    /// A position in the Raft log. Index 0 is the empty prefix; the first entry has index 1.
    LogIndex,
    "i"
);
newtype_u64!(
    /// A node's identity in the cluster. 0 is never a valid node id.
    NodeId,
    "n"
);

impl Term {
    /// The next term.
    #[inline]
    pub const fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    #[inline]
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    /// The index before this one (saturating at 0).
    #[inline]
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// What an entry carries. Stored on disk as a `u8` (see `docs/log-format.md`): the values are
/// part of the on-disk format and must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum EntryKind {
    /// Opaque application bytes (for dqlite: a transaction's WAL frames).
    Command = 1,
    /// A cluster configuration (the core encodes and decodes the payload).
    Configuration = 2,
    /// A no-op barrier (appended by a new leader, or by `barrier`).
    Barrier = 3,
}

impl EntryKind {
    /// Decodes the on-disk byte; `None` for an unknown kind.
    pub const fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::Command),
            2 => Some(EntryKind::Configuration),
            3 => Some(EntryKind::Barrier),
            _ => None,
        }
    }
}

/// One log entry. The payload is opaque to storage.
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// The term in which the leader created it.
    pub term: Term,
    /// Its position in the log.
    pub index: LogIndex,
    /// What it carries.
    pub kind: EntryKind,
    /// The payload.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_bytes"))]
    pub data: Vec<u8>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("term", &self.term)
            .field("index", &self.index)
            .field("kind", &self.kind)
            .field("len", &self.data.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_codes_round_trip() {
        for k in [EntryKind::Command, EntryKind::Configuration, EntryKind::Barrier] {
            assert_eq!(EntryKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(EntryKind::from_u8(0), None);
        assert_eq!(EntryKind::from_u8(4), None);
        for r in [Role::Voter, Role::Standby, Role::Spare] {
            assert_eq!(Role::from_u8(r as u8), Some(r));
        }
        assert_eq!(Role::from_u8(3), None);
        assert_eq!(LogIndex(5).prev(), LogIndex(4));
        assert_eq!(LogIndex(0).prev(), LogIndex(0));
        assert_eq!(Term(1).next(), Term(2));
        assert_eq!(format!("{:?} {}", NodeId(3), NodeId(3)), "n3 3");
        let e = Entry { term: Term(2), index: LogIndex(7), kind: EntryKind::Command, data: vec![0; 9] };
        assert_eq!(format!("{e:?}"), "Entry { term: t2, index: i7, kind: Command, len: 9 }");
    }
}

/// What a server does in the cluster (dqlite's meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Role {
    /// Receives the log, votes, and counts for the quorum.
    Voter = 0,
    /// Receives the log but neither votes nor counts for the quorum.
    Standby = 1,
    /// Receives nothing; a member only on paper (ready to be promoted).
    Spare = 2,
}

impl Role {
    /// Decodes the byte stored in a configuration entry; `None` for an unknown role.
    pub const fn from_u8(b: u8) -> Option<Role> {
        match b {
            0 => Some(Role::Voter),
            1 => Some(Role::Standby),
            2 => Some(Role::Spare),
            _ => None,
        }
    }
}

/// The state that must be durable before any message of the same `Ready` marked
/// "after persist" is sent: the current term and the vote cast in it.
///
/// `commit` is only a hint for restart: [`Ready::hard_state`](crate::Ready::hard_state) is set
/// when the term or vote changes, never because the commit index moved (so a commit costs no
/// metadata write); the `commit` it carries never exceeds what was durable before that `Ready`.
/// Storing a stale or zero `commit` is safe: a restarted node relearns the commit index from
/// the leader. [`RawNode::restore`](crate::RawNode::restore) clamps it to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HardState {
    /// The latest term this server has seen.
    pub term: Term,
    /// The candidate that received this server's vote in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known committed.
    pub commit: LogIndex,
}

/// What a snapshot stands for: the state machine after applying every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SnapshotMeta {
    /// The last entry included in the snapshot.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The cluster configuration in force at `index`.
    pub configuration: crate::Configuration,
    /// The index of the entry that carried `configuration` (0 if it was never in a log).
    pub configuration_index: LogIndex,
}
