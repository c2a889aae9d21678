//! The [`Dqlite`] database marker type.

use sqlx_core::database::{Database, HasStatementCache};

use crate::{
    DqliteArgumentBuffer, DqliteArguments, DqliteColumn, DqliteConnection, DqliteQueryResult, DqliteRow,
    DqliteStatement, DqliteTransactionManager, DqliteTypeInfo, DqliteValue, DqliteValueRef,
};

/// dqlite: Raft-replicated SQLite, reached over the dqlite wire protocol.
#[derive(Debug)]
pub struct Dqlite;

impl Database for Dqlite {
    type Connection = DqliteConnection;
    type TransactionManager = DqliteTransactionManager;
    type Row = DqliteRow;
    type QueryResult = DqliteQueryResult;
    type Column = DqliteColumn;
    type TypeInfo = DqliteTypeInfo;
    type Value = DqliteValue;
    type ValueRef<'r> = DqliteValueRef<'r>;
    type Arguments = DqliteArguments;
    type ArgumentBuffer = DqliteArgumentBuffer;
    type Statement = DqliteStatement;

    const NAME: &'static str = "dqlite";
    const URL_SCHEMES: &'static [&'static str] = &["dqlite"];
}

impl HasStatementCache for Dqlite {}
