//! The FAILURE messages of the server that clients match on, in one place (dqlite's strings;
//! PROTOCOL.md 4 and 5.3).

/// 10250: this node is not the leader.
pub const NOT_LEADER: &str = "not leader";
/// 12: no OPEN on this connection, a `db_id` other than 0, or the session was closed when
/// leadership was lost.
pub const NO_DATABASE: &str = "no database opened";
/// 12: FINALIZE/EXEC/QUERY of an unknown statement id.
pub const NO_STATEMENT: &str = "no statement with the given id";
/// 5: a second OPEN on one connection.
pub const ALREADY_OPEN: &str = "a database for this connection is already open";
/// 1: QUERY of a statement without result columns (nothing ran).
pub const NO_COLUMNS: &str = "not an error";
/// 1: EXEC of a statement that yields rows.
pub const ROWS_YIELDED: &str = "rows yielded when none expected for EXEC request";
/// 1: PREPARE schema 0 of SQL with more than one statement.
pub const NONEMPTY_TAIL: &str = "nonempty statement tail";
/// 0: SQL without any statement.
pub const EMPTY_STATEMENT: &str = "empty statement";
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
