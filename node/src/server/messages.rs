//! The FAILURE messages of the server, in one place (dqlite's strings; PROTOCOL.md 4 and 5.3).
//! Those clients match on come from [`dqlite_wire::failure`], shared with the driver.

use dqlite_wire::failure;

/// 10250: this node is not the leader.
pub const NOT_LEADER: &str = failure::NOT_LEADER.message;
/// 12: no OPEN on this connection, a `db_id` other than 0, or the session was closed when
/// leadership was lost.
pub const NO_DATABASE: &str = failure::NO_DATABASE_OPENED.message;
/// 12: FINALIZE/EXEC/QUERY of an unknown statement id.
pub const NO_STATEMENT: &str = failure::NO_STATEMENT.message;
/// 5: a second OPEN on one connection.
pub const ALREADY_OPEN: &str = failure::DATABASE_ALREADY_OPEN.message;
/// 1: QUERY of a statement without result columns (nothing ran).
pub const NO_COLUMNS: &str = failure::NOT_AN_ERROR.message;
/// 1: EXEC of a statement that yields rows.
pub const ROWS_YIELDED: &str = "rows yielded when none expected for EXEC request";
/// 1: PREPARE schema 0 of SQL with more than one statement.
pub const NONEMPTY_TAIL: &str = failure::NONEMPTY_STATEMENT_TAIL.message;
/// 0: SQL without any statement.
pub const EMPTY_STATEMENT: &str = failure::EMPTY_STATEMENT.message;
/// 1: supplied-but-unused or unbindable parameters.
pub const BIND_PARAMETERS: &str = "bind parameters";
/// 1005: a request type the server does not dispatch (and HEARTBEAT).
pub const UNRECOGNIZED_REQUEST: &str = "unrecognized request type";
/// 1005: a CLUSTER or DESCRIBE format the server does not know.
pub const UNRECOGNIZED_FORMAT: &str = "unrecognized format";
/// 1002: DUMP of a database that does not exist.
pub const NO_SUCH_DATABASE: &str = "database does not exists";
/// 1001: dqlite's CONNECT (C Raft's libuv transport) is not spoken.
pub const CONNECT_UNSUPPORTED: &str = "CONNECT is not supported: dqlite-rs peers use their own protocol";
/// 1001: a request arrived while a query was still streaming (only INTERRUPT may).
pub const REQUEST_WHILE_STREAMING: &str = "a request arrived while a query was still streaming";
/// 1001: a request larger than the server's limit (the connection is closed).
pub const REQUEST_TOO_LARGE: &str = "request too large";
/// A write (or DDL, PRAGMA setter, temp table...) on a connection opened for follower reads.
pub const FOLLOWER_READ_ONLY: &str =
    "this connection reads from a follower (read=follower) and is read-only: run writes through a connection without read=follower";
