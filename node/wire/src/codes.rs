//! Failure codes seen in `FAILURE` responses (PROTOCOL.md 5.3).
//!
//! Other codes are SQLite extended result codes and are passed through unchanged.

/// Generic SQL error.
pub const SQLITE_ERROR: u64 = 1;
/// Database is locked / another writer / a configuration change is in progress.
pub const SQLITE_BUSY: u64 = 5;
/// Attempt to write a read-only database (also: a write on a dqlite-rs follower-read
/// connection).
pub const SQLITE_READONLY: u64 = 8;
/// Generic I/O error ("leader exec failed").
pub const SQLITE_IOERR: u64 = 10;
/// "no database opened", "no statement with the given id".
pub const SQLITE_NOTFOUND: u64 = 12;
/// Old servers: EXEC of a statement that yields rows.
pub const SQLITE_ROW: u64 = 100;
/// This node is not the leader (`10 | 40 << 8`).
pub const SQLITE_IOERR_NOT_LEADER: u64 = 10250;
/// Leadership was lost while the request ran: the outcome of a commit is unknown (`10 | 41 << 8`).
pub const SQLITE_IOERR_LEADERSHIP_LOST: u64 = 10506;
/// dqlite-rs: a read on a connection opened for follower reads (`read=follower`) could not be
/// served within its staleness bound: this node has not heard from the leader recently enough,
/// or has not applied what the leader had committed (`10 | 43 << 8`). Nothing ran; the read
/// may be retried (on this node later, on another one, or on the leader).
pub const SQLITE_IOERR_FOLLOWER_STALE: u64 = 11018;
/// Legacy not-leader code from old servers (`10 | 32 << 8`).
pub const SQLITE_IOERR_NOT_LEADER_LEGACY: u64 = 8202;
/// Legacy leadership-lost code from old servers (`10 | 33 << 8`).
pub const SQLITE_IOERR_LEADERSHIP_LOST_LEGACY: u64 = 8458;
/// dqlite protocol error.
pub const DQLITE_PROTO: u64 = 1001;
/// dqlite: object not found (e.g. DUMP of an unknown database).
pub const DQLITE_NOTFOUND: u64 = 1002;
/// dqlite: a request could not be parsed (bad schema, unknown type, bad params).
pub const DQLITE_PARSE: u64 = 1005;

/// True for the current and legacy "not leader" codes.
pub fn is_not_leader(code: u64) -> bool {
    code == SQLITE_IOERR_NOT_LEADER || code == SQLITE_IOERR_NOT_LEADER_LEGACY
}

/// True for the current and legacy "leadership lost" codes.
pub fn is_leadership_lost(code: u64) -> bool {
    code == SQLITE_IOERR_LEADERSHIP_LOST || code == SQLITE_IOERR_LEADERSHIP_LOST_LEGACY
}
