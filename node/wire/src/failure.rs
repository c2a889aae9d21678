//! The `FAILURE` responses clients make decisions on: fixed messages with their codes.
//!
//! The C server (dqlite's `gateway.c`) answers many requests with a fixed message string.
//! Clients cannot tell some of these apart by code alone (`SQLITE_NOTFOUND` = 12 means both
//! "no database opened" and "no statement with the given id"; `SQLITE_ERROR` = 1 is both
//! "not an error" and any SQL error), so a client that decides whether to retry, reconnect or
//! fall back matches the exact `(code, message)` pair. A server that wants those clients to
//! behave must send exactly these pairs. Both sides use the constants here:
//!
//! ```text
//!   server:  failure::NO_DATABASE_OPENED.response()  ──▶  FAILURE 12 "no database opened"
//!   client:  failure::NO_DATABASE_OPENED.matches(code, message)  → reconnect to the leader
//! ```
//!
//! Every constant says which dqlite versions send it. Versions checked: 1.11 (Debian's
//! `go-dqlite`, tested against in the driver's `real_failures` test) and the current C source.
//! Messages that carry SQLite's own text (`sqlite3_errmsg`: "no such table: t", "database is
//! locked", ...) are not listed: clients classify those by code only.

use crate::codes;
use crate::response::Response;

/// A `FAILURE` response with a fixed code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KnownFailure {
    /// The failure code (an SQLite extended result code or a dqlite code).
    pub code: u64,
    /// The exact message text.
    pub message: &'static str,
}

impl KnownFailure {
    /// True when a `FAILURE` carries exactly this code and message.
    pub fn matches(&self, code: u64, message: &str) -> bool {
        self.code == code && self.message == message
    }

    /// True when a `FAILURE` carries this message, whatever its code (for failures whose code
    /// varied between dqlite versions, see each constant).
    pub fn matches_message(&self, message: &str) -> bool {
        self.message == message
    }

    /// The `FAILURE` response a server sends for this failure.
    pub fn response(&self) -> Response<'static> {
        Response::Failure { code: self.code, message: self.message }
    }
}

/// A request that needs the leader reached a node that is not the leader. Nothing ran.
///
/// Sent by every dqlite version (`CHECK_LEADER` in `gateway.c`) for EXEC, QUERY, EXEC_SQL,
/// QUERY_SQL, ... on a follower (dqlite 1.11 still answers PREPARE there). Clients look for the leader again and
/// may retry anything outside a transaction. Legacy servers used code
/// [`codes::SQLITE_IOERR_NOT_LEADER_LEGACY`] with the same message.
pub const NOT_LEADER: KnownFailure = KnownFailure { code: codes::SQLITE_IOERR_NOT_LEADER, message: "not leader" };

/// Leadership was lost while a write was being replicated: the write may or may not be
/// committed ("commit outcome unknown"). Clients never replay it.
///
/// This message is sent by dqlite ≥ 1.12 from `leader_exec_cb`. dqlite 1.11 sends the same
/// code with SQLite's text [`LEADERSHIP_LOST_MESSAGE_1_11`], so clients must classify this
/// failure **by code only** ([`codes::is_leadership_lost`]).
pub const LEADERSHIP_LOST: KnownFailure =
    KnownFailure { code: codes::SQLITE_IOERR_LEADERSHIP_LOST, message: "leadership lost" };

/// The message dqlite 1.11 sends with [`codes::SQLITE_IOERR_LEADERSHIP_LOST`]
/// (`error_message()` in its `gateway.c` maps the code to SQLite's generic I/O text).
pub const LEADERSHIP_LOST_MESSAGE_1_11: &str = "disk I/O error";

/// A request named a database this connection has not OPENed (or the database id is not 0,
/// or the leader this connection opened it on is gone). Nothing ran.
///
/// Sent by every dqlite version (`LOOKUP_DB`). Seen by a client after the node it talks to
/// lost leadership and closed its databases: clients reconnect to the current leader and
/// may retry outside a transaction.
pub const NO_DATABASE_OPENED: KnownFailure =
    KnownFailure { code: codes::SQLITE_NOTFOUND, message: "no database opened" };

/// EXEC, QUERY or FINALIZE named a statement id this connection did not PREPARE (or already
/// finalized). Nothing ran.
///
/// Sent by every dqlite version (`LOOKUP_STMT`). Clients re-PREPARE and retry.
pub const NO_STATEMENT: KnownFailure =
    KnownFailure { code: codes::SQLITE_NOTFOUND, message: "no statement with the given id" };

/// QUERY / QUERY_SQL of a statement that has no result columns (e.g. `INSERT` without
/// `RETURNING`, `CREATE TABLE`): the server refuses it **before stepping it**, so nothing
/// ran. The text is SQLite's `sqlite3_errmsg` for "no error" — the server reports
/// `SQLITE_ERROR` while the connection holds no error.
///
/// Sent by every dqlite version (`query__batch` checks `sqlite3_column_count`). Clients then
/// send EXEC / EXEC_SQL.
pub const NOT_AN_ERROR: KnownFailure = KnownFailure { code: codes::SQLITE_ERROR, message: "not an error" };

/// QUERY_SQL of text holding more than one statement: refused without running anything.
///
/// Sent by dqlite ≥ 1.18 only (1.11 runs the first statement and ignores the rest). Clients
/// that send several statements split them first or fall back to EXEC_SQL.
pub const NONEMPTY_STATEMENT_TAIL: KnownFailure =
    KnownFailure { code: codes::SQLITE_ERROR, message: "nonempty statement tail" };

/// PREPARE or QUERY_SQL of text that holds no statement (`""`, `";"`, only comments).
///
/// Sent by every dqlite version with code 0 (`SQLITE_OK`, the result of the prepare that
/// found nothing). EXEC_SQL of such text succeeds with an empty RESULT instead.
pub const EMPTY_STATEMENT: KnownFailure = KnownFailure { code: 0, message: "empty statement" };

/// A second OPEN on a connection that already has a database open.
///
/// Sent by every dqlite version (`handle_open`).
pub const DATABASE_ALREADY_OPEN: KnownFailure =
    KnownFailure { code: codes::SQLITE_BUSY, message: "a database for this connection is already open" };

/// A write arrived while the leader was checkpointing its WAL; nothing ran. Retry later.
///
/// Sent by every dqlite version (`FAIL_IF_CHECKPOINTING`).
pub const CHECKPOINT_IN_PROGRESS: KnownFailure =
    KnownFailure { code: codes::SQLITE_BUSY, message: "checkpoint in progress" };

/// Every fixed failure listed here, for servers and tests that iterate over them.
pub const ALL: [KnownFailure; 8] = [
    NOT_LEADER,
    LEADERSHIP_LOST,
    NO_DATABASE_OPENED,
    NO_STATEMENT,
    NOT_AN_ERROR,
    NONEMPTY_STATEMENT_TAIL,
    EMPTY_STATEMENT,
    DATABASE_ALREADY_OPEN,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::DecodeContext;
    use crate::{header, DEFAULT_MAX_BODY_BYTES};

    #[test]
    fn response_round_trips_with_the_exact_pair() {
        for known in ALL.iter().chain([&CHECKPOINT_IN_PROGRESS]) {
            let mut bytes = Vec::new();
            known.response().encode(&mut bytes).unwrap();
            let (msg, _) = header::parse(&bytes, DEFAULT_MAX_BODY_BYTES).unwrap().unwrap();
            match Response::decode(&msg.header, msg.body, &DecodeContext::default()).unwrap() {
                Response::Failure { code, message } => assert!(known.matches(code, message), "{known:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn codes_alone_do_not_tell_messages_apart() {
        assert!(!NO_STATEMENT.matches(NO_DATABASE_OPENED.code, NO_DATABASE_OPENED.message));
        assert!(!NOT_AN_ERROR.matches(codes::SQLITE_ERROR, "no such table: t"));
        assert!(NOT_LEADER.matches_message("not leader"));
        let mut pairs: Vec<_> = ALL.iter().map(|f| (f.code, f.message)).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), ALL.len());
    }
}
