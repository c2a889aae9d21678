//! Newtypes shared by the core, the storage and the simulator.

use core::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
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
pub struct Entry {
    /// The term in which the leader created it.
    pub term: Term,
    /// Its position in the log.
    pub index: LogIndex,
    /// What it carries.
    pub kind: EntryKind,
    /// The payload.
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
