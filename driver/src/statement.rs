//! Prepared statements.

use std::sync::Arc;

use sqlx_core::column::ColumnIndex;
use sqlx_core::ext::ustr::UStr;
use sqlx_core::sql_str::SqlStr;
use sqlx_core::statement::Statement;
use sqlx_core::{Either, Error, HashMap};

use crate::{Dqlite, DqliteArguments, DqliteColumn, DqliteTypeInfo};

/// A statement prepared on the leader (`PREPARE`): its SQL and parameter count.
///
/// dqlite's `STMT` reply carries only the number of parameters, so `columns()` is empty unless
/// the statement has already returned rows on this connection. Parameter types are unknown
/// (`parameters()` gives the count).
#[derive(Debug, Clone)]
pub struct DqliteStatement {
    pub(crate) sql: SqlStr,
    pub(crate) parameters: usize,
    pub(crate) columns: Arc<Vec<DqliteColumn>>,
    pub(crate) column_names: Arc<HashMap<UStr, usize>>,
}

impl Statement for DqliteStatement {
    type Database = Dqlite;

    fn into_sql(self) -> SqlStr {
        self.sql
    }

    fn sql(&self) -> &SqlStr {
        &self.sql
    }

    fn parameters(&self) -> Option<Either<&[DqliteTypeInfo], usize>> {
        Some(Either::Right(self.parameters))
    }

    fn columns(&self) -> &[DqliteColumn] {
        &self.columns
    }

    sqlx_core::impl_statement_query!(DqliteArguments);
}

impl ColumnIndex<DqliteStatement> for &'_ str {
    fn index(&self, statement: &DqliteStatement) -> Result<usize, Error> {
        statement
            .column_names
            .get(*self)
            .copied()
            .ok_or_else(|| Error::ColumnNotFound((*self).into()))
    }
}
