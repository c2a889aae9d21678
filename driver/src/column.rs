//! Result columns.

use sqlx_core::column::Column;
use sqlx_core::ext::ustr::UStr;

use crate::{Dqlite, DqliteTypeInfo};

/// A result column: its name as SQLite reports it (`sqlite3_column_name`) and the wire type of
/// its value in the first row (dqlite has no per-column declared type on the wire).
#[derive(Debug, Clone)]
pub struct DqliteColumn {
    pub(crate) name: UStr,
    pub(crate) ordinal: usize,
    pub(crate) type_info: DqliteTypeInfo,
}

impl DqliteColumn {
    pub(crate) fn new(name: &str, ordinal: usize, type_info: DqliteTypeInfo) -> Self {
        DqliteColumn { name: UStr::new(name), ordinal, type_info }
    }
}

impl Column for DqliteColumn {
    type Database = Dqlite;

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn type_info(&self) -> &DqliteTypeInfo {
        &self.type_info
    }
}
