//! Prepared statements.

use std::sync::{Arc, OnceLock};

use sqlx_core::column::ColumnIndex;
use sqlx_core::sql_str::SqlStr;
use sqlx_core::statement::Statement;
use sqlx_core::{Either, Error};

use crate::connection::StatementColumns;
use crate::{Dqlite, DqliteArguments, DqliteColumn, DqliteTypeInfo};

/// A statement prepared on the leader (`PREPARE`): its SQL and parameter count.
///
/// dqlite's `STMT` reply carries only the number of parameters, so `columns()` is empty until
/// the statement has returned rows on this connection (before or after this value was made:
/// the connection fills it in when the statement first runs). Parameter types are unknown
/// (`parameters()` gives the count).
#[derive(Debug, Clone)]
pub struct DqliteStatement {
    pub(crate) sql: SqlStr,
    pub(crate) parameters: usize,
    pub(crate) columns: Arc<OnceLock<StatementColumns>>,
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
        self.columns.get().map_or(&[], |c| c.0.as_slice())
    }

    sqlx_core::impl_statement_query!(DqliteArguments);
}

impl ColumnIndex<DqliteStatement> for &'_ str {
    fn index(&self, statement: &DqliteStatement) -> Result<usize, Error> {
        statement
            .columns
            .get()
            .and_then(|c| c.1.get(*self))
            .copied()
            .ok_or_else(|| Error::ColumnNotFound((*self).into()))
    }
}
