//! Wire-level identifiers and the node role enum.
//!
//! These are deliberately independent of the Raft crate: the wire carries plain
//! integers and the node translates them.

use crate::error::DecodeError;

/// Database id on a connection (always 0 with dqlite: one database per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DbId(pub u32);

/// Prepared-statement id, allocated per connection by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StmtId(pub u32);

/// A node id as carried on the wire (`uint64`); 0 means "none" in LEADER replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct WireNodeId(pub u64);

/// A node's role as encoded on the wire (note: differs from the C Raft enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// 0: votes and can become leader.
    Voter,
    /// 1: replicates the log, does not vote.
    Standby,
    /// 2: does not replicate.
    Spare,
}

impl Role {
    /// The wire code of this role.
    pub fn code(self) -> u64 {
        match self {
            Role::Voter => 0,
            Role::Standby => 1,
            Role::Spare => 2,
        }
    }

    /// Parse a wire role code.
    pub fn from_code(code: u64) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(Role::Voter),
            1 => Ok(Role::Standby),
            2 => Ok(Role::Spare),
            other => Err(DecodeError::UnknownRole(other)),
        }
    }
}
