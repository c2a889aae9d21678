//! Errors returned by a dqlite server, with their SQLite extended result codes.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt::{self, Display, Formatter};

use dqlite_wire::codes;
use sqlx_core::error::{DatabaseError, ErrorKind};

/// SQLite extended result codes this driver classifies.
pub mod code {
    /// `SQLITE_CONSTRAINT_CHECK`.
    pub const CONSTRAINT_CHECK: u64 = 275;
    /// `SQLITE_CONSTRAINT_FOREIGNKEY`.
    pub const CONSTRAINT_FOREIGNKEY: u64 = 787;
    /// `SQLITE_CONSTRAINT_NOTNULL`.
    pub const CONSTRAINT_NOTNULL: u64 = 1299;
    /// `SQLITE_CONSTRAINT_PRIMARYKEY`.
    pub const CONSTRAINT_PRIMARYKEY: u64 = 1555;
    /// `SQLITE_CONSTRAINT_UNIQUE`.
    pub const CONSTRAINT_UNIQUE: u64 = 2067;
    /// `SQLITE_BUSY`.
    pub const BUSY: u64 = 5;
    /// `SQLITE_IOERR_NOT_LEADER`: this node is not the leader.
    pub const NOT_LEADER: u64 = dqlite_wire::codes::SQLITE_IOERR_NOT_LEADER;
    /// `SQLITE_IOERR_LEADERSHIP_LOST`: leadership was lost during a commit; outcome unknown.
    pub const LEADERSHIP_LOST: u64 = dqlite_wire::codes::SQLITE_IOERR_LEADERSHIP_LOST;
    /// `SQLITE_IOERR_FOLLOWER_STALE` (dqlite-rs): a follower read could not be served within
    /// its staleness bound (`read=follower`); nothing ran.
    pub const FOLLOWER_STALE: u64 = dqlite_wire::codes::SQLITE_IOERR_FOLLOWER_STALE;
    /// `SQLITE_READONLY`: a write on a read-only connection (also a `read=follower` one).
    pub const READONLY: u64 = dqlite_wire::codes::SQLITE_READONLY;
    /// `DQLITE_PARSE`: the server could not parse a request.
    pub const DQLITE_PARSE: u64 = dqlite_wire::codes::DQLITE_PARSE;
}

/// Why the driver reports an error that did not come verbatim from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DqliteErrorReason {
    /// A `FAILURE` response, passed through.
    Server,
    /// A commit (or an autocommit write) may or may not have been applied: the server reported
    /// leadership lost, or the connection dropped after the request was sent. Never replayed.
    OutcomeUnknown,
    /// The connection to the leader was lost inside a transaction: the transaction is gone
    /// (nothing of it was committed). Roll back and start again.
    TransactionLost,
    /// More than 255 parameters and the server does not understand schema-1 (params32)
    /// tuples (dqlite < 1.15.1).
    TooManyParameters,
}

/// An error reported by dqlite (a `FAILURE` response) or derived from one.
///
/// [`code()`](DatabaseError::code) is the SQLite extended result code as a decimal string
/// (e.g. `"2067"` for `SQLITE_CONSTRAINT_UNIQUE`), [`kind()`](DatabaseError::kind) maps
/// unique / primary-key, foreign-key, not-null and check violations.
///
/// Commit outcome unknown: when leadership is lost while a `COMMIT` (or a write outside a
/// transaction) is in flight, the server cannot tell whether it was applied. Such errors have
/// [`is_outcome_unknown()`](Self::is_outcome_unknown) true and [`ErrorKind::Other`]; the driver
/// never replays them. Use [`crate::is_outcome_unknown`] on an `sqlx::Error`.
#[derive(Debug, Clone)]
pub struct DqliteError {
    code: u64,
    message: String,
    reason: DqliteErrorReason,
}

impl DqliteError {
    /// An error from a `FAILURE` response.
    pub fn new(code: u64, message: impl Into<String>) -> Self {
        let reason =
            if codes::is_leadership_lost(code) { DqliteErrorReason::OutcomeUnknown } else { DqliteErrorReason::Server };
        DqliteError { code, message: message.into(), reason }
    }

    pub(crate) fn outcome_unknown(message: impl Into<String>) -> Self {
        DqliteError { code: code::LEADERSHIP_LOST, message: message.into(), reason: DqliteErrorReason::OutcomeUnknown }
    }

    pub(crate) fn transaction_lost(message: impl Into<String>) -> Self {
        DqliteError { code: code::NOT_LEADER, message: message.into(), reason: DqliteErrorReason::TransactionLost }
    }

    pub(crate) fn too_many_parameters(n: usize) -> Self {
        DqliteError {
            code: code::DQLITE_PARSE,
            message: format!(
                "server does not support more than 255 parameters ({n} given; schema-1 \
                 params32 tuples need dqlite >= 1.15.1)"
            ),
            reason: DqliteErrorReason::TooManyParameters,
        }
    }

    /// The numeric SQLite extended result code (or dqlite code, e.g. 1005).
    pub fn code_u64(&self) -> u64 {
        self.code
    }

    /// The primary SQLite result code (low 8 bits of the extended code).
    pub fn primary_code(&self) -> u64 {
        self.code & 0xff
    }

    /// Why this error was produced.
    pub fn reason(&self) -> DqliteErrorReason {
        self.reason
    }

    /// True when a commit's outcome is unknown (leadership lost, or the connection dropped
    /// after the commit was sent). The driver never retries these.
    pub fn is_outcome_unknown(&self) -> bool {
        self.reason == DqliteErrorReason::OutcomeUnknown
    }

    /// True for "not leader" (10250, legacy 8202).
    pub fn is_not_leader(&self) -> bool {
        codes::is_not_leader(self.code)
    }

    /// True for `SQLITE_IOERR_FOLLOWER_STALE`: a `read=follower` query found its node too far
    /// behind the leader (or cut off from it) within the staleness bound. Nothing ran; retry,
    /// or read on the leader.
    pub fn is_follower_stale(&self) -> bool {
        self.code == code::FOLLOWER_STALE
    }

    /// True when the transaction was lost with the connection to the old leader.
    pub fn is_transaction_lost(&self) -> bool {
        self.reason == DqliteErrorReason::TransactionLost
    }

    /// True for `SQLITE_BUSY` and its extended codes (another writer holds the lock).
    pub fn is_busy(&self) -> bool {
        self.primary_code() == code::BUSY
    }
}

impl Display for DqliteError {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.reason {
            DqliteErrorReason::OutcomeUnknown => {
                write!(f, "(code: {}) commit outcome unknown: {}", self.code, self.message)
            }
            _ => write!(f, "(code: {}) {}", self.code, self.message),
        }
    }
}

impl StdError for DqliteError {}

impl DatabaseError for DqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        if self.reason != DqliteErrorReason::Server {
            return ErrorKind::Other;
        }
        match self.code {
            code::CONSTRAINT_UNIQUE | code::CONSTRAINT_PRIMARYKEY => ErrorKind::UniqueViolation,
            code::CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            code::CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            code::CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// The [`DqliteError`] inside an `sqlx::Error`, if there is one.
pub fn dqlite_error(err: &sqlx_core::Error) -> Option<&DqliteError> {
    err.as_database_error().and_then(|e| e.try_downcast_ref::<DqliteError>())
}

/// True when `err` says a commit's outcome is unknown (see [`DqliteError::is_outcome_unknown`]).
pub fn is_outcome_unknown(err: &sqlx_core::Error) -> bool {
    dqlite_error(err).is_some_and(DqliteError::is_outcome_unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_codes_map_to_kinds() {
        let cases = [
            (2067, ErrorKind::UniqueViolation),
            (1555, ErrorKind::UniqueViolation),
            (787, ErrorKind::ForeignKeyViolation),
            (1299, ErrorKind::NotNullViolation),
            (275, ErrorKind::CheckViolation),
            (19, ErrorKind::Other),
            (1, ErrorKind::Other),
            (5, ErrorKind::Other),
        ];
        for (c, kind) in cases {
            let e = DqliteError::new(c, "x");
            assert_eq!(e.kind(), kind, "code {c}");
            assert_eq!(e.code().as_deref(), Some(c.to_string().as_str()));
        }
        assert!(DqliteError::new(2067, "").is_unique_violation());
        assert!(DqliteError::new(787, "").is_foreign_key_violation());
        assert!(DqliteError::new(275, "").is_check_violation());
    }

    #[test]
    fn leadership_lost_is_outcome_unknown() {
        for c in [10506, 8458] {
            let e = DqliteError::new(c, "leadership lost");
            assert!(e.is_outcome_unknown());
            assert_eq!(e.kind(), ErrorKind::Other);
            assert!(e.to_string().contains("commit outcome unknown"));
            let sqlx_err = sqlx_core::Error::Database(Box::new(e));
            assert!(is_outcome_unknown(&sqlx_err));
        }
        assert!(!DqliteError::new(10250, "not leader").is_outcome_unknown());
        assert!(DqliteError::new(10250, "not leader").is_not_leader());
        assert!(DqliteError::new(8202, "not leader").is_not_leader());
        assert!(DqliteError::new(517, "busy snapshot").is_busy());
        let io = sqlx_core::Error::Protocol("x".into());
        assert!(!is_outcome_unknown(&io));
    }

    #[test]
    fn derived_errors() {
        let e = DqliteError::too_many_parameters(300);
        assert!(e.message().contains("more than 255 parameters"));
        assert_eq!(e.reason(), DqliteErrorReason::TooManyParameters);
        let e = DqliteError::transaction_lost("gone");
        assert!(e.is_transaction_lost());
        assert_eq!(e.kind(), ErrorKind::Other);
        let e = DqliteError::outcome_unknown("conn dropped after COMMIT");
        assert!(e.is_outcome_unknown());
    }
}
