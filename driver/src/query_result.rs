//! The result of executing a statement.

use std::iter::{Extend, IntoIterator};

/// What EXEC / EXEC_SQL reported: rows changed and the last inserted rowid.
///
/// Several results (e.g. `execute_many`) combine by summing `rows_affected` and keeping the
/// last `last_insert_rowid`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DqliteQueryResult {
    pub(crate) rows_affected: u64,
    pub(crate) last_insert_rowid: i64,
}

impl DqliteQueryResult {
    /// Rows changed by the statement (`sqlite3_changes`).
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }

    /// The rowid of the last inserted row on this connection (`sqlite3_last_insert_rowid`).
    pub fn last_insert_rowid(&self) -> i64 {
        self.last_insert_rowid
    }
}

impl Extend<DqliteQueryResult> for DqliteQueryResult {
    fn extend<T: IntoIterator<Item = DqliteQueryResult>>(&mut self, iter: T) {
        for elem in iter {
            self.rows_affected += elem.rows_affected;
            self.last_insert_rowid = elem.last_insert_rowid;
        }
    }
}

#[cfg(feature = "any")]
impl From<DqliteQueryResult> for sqlx_core::any::AnyQueryResult {
    fn from(done: DqliteQueryResult) -> Self {
        sqlx_core::any::AnyQueryResult {
            rows_affected: done.rows_affected,
            last_insert_id: Some(done.last_insert_rowid),
        }
    }
}
