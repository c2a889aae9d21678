//! The Any driver: `sqlx::AnyPool::connect("dqlite://…")` after
//! `sqlx::any::install_drivers(&[sqlx_dqlite::any::DRIVER, …])`.
//!
//! Any values map to dqlite values as: bool → BOOLEAN, i16/i32/i64 → INTEGER, f32/f64 →
//! FLOAT, text → TEXT, blob → BLOB, null → NULL. Going back, UNIXTIME reads as a 64-bit
//! integer, ISO8601 as text and BOOLEAN as bool.

use std::pin::pin;

use dqlite_wire::value::Value as WireValue;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx_core::any::{
    AnyArguments, AnyColumn, AnyConnectOptions, AnyConnectionBackend, AnyQueryResult, AnyRow, AnyStatement,
    AnyTypeInfo, AnyTypeInfoKind, AnyValueKind,
};
use sqlx_core::connection::{ConnectOptions, Connection};
use sqlx_core::database::Database;
use sqlx_core::executor::Executor;
use sqlx_core::sql_str::SqlStr;
use sqlx_core::transaction::TransactionManager;
use sqlx_core::{Either, Error};

use crate::arguments::DqliteArgumentBuffer;
use crate::type_info::DataType;
use crate::{
    Dqlite, DqliteArguments, DqliteColumn, DqliteConnectOptions, DqliteConnection, DqliteRow, DqliteTransactionManager,
    DqliteTypeInfo,
};

/// The Any driver for dqlite (what `sqlx_core::declare_driver_with_optional_migrate!` would
/// declare, written out so it carries documentation): pass it to
/// `sqlx::any::install_drivers`. With the `migrate` feature it also serves
/// `sqlx::any::AnyMigrateDatabase` (see [`crate::migrate`]).
#[cfg(feature = "migrate")]
pub const DRIVER: sqlx_core::any::driver::AnyDriver = sqlx_core::any::driver::AnyDriver::with_migrate::<Dqlite>();
/// The Any driver for dqlite: pass it to `sqlx::any::install_drivers`.
#[cfg(not(feature = "migrate"))]
pub const DRIVER: sqlx_core::any::driver::AnyDriver = sqlx_core::any::driver::AnyDriver::without_migrate::<Dqlite>();

impl AnyConnectionBackend for DqliteConnection {
    fn name(&self) -> &str {
        <Dqlite as Database>::NAME
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, sqlx_core::Result<()>> {
        Connection::close(*self).boxed()
    }

    fn close_hard(self: Box<Self>) -> BoxFuture<'static, sqlx_core::Result<()>> {
        Connection::close_hard(*self).boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, sqlx_core::Result<()>> {
        Connection::ping(self).boxed()
    }

    fn begin(&mut self, statement: Option<SqlStr>) -> BoxFuture<'_, sqlx_core::Result<()>> {
        DqliteTransactionManager::begin(self, statement).boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, sqlx_core::Result<()>> {
        DqliteTransactionManager::commit(self).boxed()
    }

    fn rollback(&mut self) -> BoxFuture<'_, sqlx_core::Result<()>> {
        DqliteTransactionManager::rollback(self).boxed()
    }

    fn start_rollback(&mut self) {
        DqliteTransactionManager::start_rollback(self)
    }

    fn get_transaction_depth(&self) -> usize {
        DqliteTransactionManager::get_transaction_depth(self)
    }

    fn cached_statements_size(&self) -> usize {
        Connection::cached_statements_size(self)
    }

    fn clear_cached_statements(&mut self) -> BoxFuture<'_, sqlx_core::Result<()>> {
        Connection::clear_cached_statements(self).boxed()
    }

    fn shrink_buffers(&mut self) {}

    fn flush(&mut self) -> BoxFuture<'_, sqlx_core::Result<()>> {
        Connection::flush(self).boxed()
    }

    fn should_flush(&self) -> bool {
        Connection::should_flush(self)
    }

    #[cfg(feature = "migrate")]
    fn as_migrate(&mut self) -> sqlx_core::Result<&mut (dyn sqlx_core::migrate::Migrate + Send + 'static)> {
        Ok(self)
    }

    fn fetch_many(
        &mut self,
        query: SqlStr,
        persistent: bool,
        arguments: Option<AnyArguments>,
    ) -> BoxStream<'_, sqlx_core::Result<Either<AnyQueryResult, AnyRow>>> {
        let args = arguments.map(map_arguments);
        self.fetch_many_inner(query, args, persistent)
            .map(|res| match res? {
                Either::Left(result) => Ok(Either::Left(result.into())),
                Either::Right(row) => Ok(Either::Right(AnyRow::try_from(&row)?)),
            })
            .boxed()
    }

    fn fetch_optional(
        &mut self,
        query: SqlStr,
        persistent: bool,
        arguments: Option<AnyArguments>,
    ) -> BoxFuture<'_, sqlx_core::Result<Option<AnyRow>>> {
        let args = arguments.map(map_arguments);
        Box::pin(async move {
            let mut stream = pin!(self.fetch_many_inner(query, args, persistent));
            while let Some(step) = stream.try_next().await? {
                if let Either::Right(row) = step {
                    return Ok(Some(AnyRow::try_from(&row)?));
                }
            }
            Ok(None)
        })
    }

    fn prepare_with<'c, 'q: 'c>(
        &'c mut self,
        sql: SqlStr,
        _parameters: &[AnyTypeInfo],
    ) -> BoxFuture<'c, sqlx_core::Result<AnyStatement>> {
        Box::pin(async move {
            let statement = Executor::prepare_with(self, sql, &[]).await?;
            let column_names = statement.columns.get().map(|c| std::sync::Arc::clone(&c.1)).unwrap_or_default();
            AnyStatement::try_from_statement(statement, column_names)
        })
    }

    #[cfg(feature = "offline")]
    fn describe(
        &mut self,
        sql: SqlStr,
    ) -> BoxFuture<'_, sqlx_core::Result<sqlx_core::describe::Describe<sqlx_core::any::Any>>> {
        Box::pin(async move { Executor::describe(self, sql).await?.try_into_any() })
    }
}

impl<'a> TryFrom<&'a DqliteTypeInfo> for AnyTypeInfo {
    type Error = Error;

    fn try_from(ty: &'a DqliteTypeInfo) -> Result<Self, Error> {
        Ok(AnyTypeInfo {
            kind: match ty.0 {
                DataType::Null => AnyTypeInfoKind::Null,
                DataType::Integer | DataType::UnixTime => AnyTypeInfoKind::BigInt,
                DataType::Float => AnyTypeInfoKind::Double,
                DataType::Text | DataType::Iso8601 => AnyTypeInfoKind::Text,
                DataType::Blob => AnyTypeInfoKind::Blob,
                DataType::Boolean => AnyTypeInfoKind::Bool,
            },
        })
    }
}

impl<'a> TryFrom<&'a DqliteColumn> for AnyColumn {
    type Error = Error;

    fn try_from(col: &'a DqliteColumn) -> Result<Self, Error> {
        Ok(AnyColumn {
            ordinal: col.ordinal,
            name: col.name.clone(),
            type_info: AnyTypeInfo::try_from(&col.type_info)?,
        })
    }
}

impl<'a> TryFrom<&'a DqliteRow> for AnyRow {
    type Error = Error;

    fn try_from(row: &'a DqliteRow) -> Result<Self, Error> {
        AnyRow::map_from(row, row.column_names.clone())
    }
}

impl<'a> TryFrom<&'a AnyConnectOptions> for DqliteConnectOptions {
    type Error = Error;

    fn try_from(opts: &'a AnyConnectOptions) -> Result<Self, Error> {
        let mut out = DqliteConnectOptions::from_url(&opts.database_url)?;
        out.log_settings = opts.log_settings.clone();
        Ok(out)
    }
}

fn map_arguments(args: AnyArguments) -> DqliteArguments {
    let values = args
        .values
        .0
        .into_iter()
        .map(|v| match v {
            AnyValueKind::Null(_) => WireValue::Null,
            AnyValueKind::Bool(b) => WireValue::Boolean(b),
            AnyValueKind::SmallInt(i) => WireValue::Integer(i64::from(i)),
            AnyValueKind::Integer(i) => WireValue::Integer(i64::from(i)),
            AnyValueKind::BigInt(i) => WireValue::Integer(i),
            AnyValueKind::Real(r) => WireValue::Float(f64::from(r)),
            AnyValueKind::Double(d) => WireValue::Float(d),
            AnyValueKind::Text(t) => WireValue::Text(t.to_string()),
            AnyValueKind::TextSlice(t) => WireValue::Text(t.to_string()),
            AnyValueKind::Blob(b) => WireValue::Blob(b.to_vec()),
            // `AnyValueKind` is non-exhaustive; a future kind is sent as NULL with a warning
            // rather than panicking.
            #[allow(unreachable_patterns)]
            other => {
                tracing::warn!(?other, "unsupported Any value kind sent as NULL");
                WireValue::Null
            }
        })
        .collect();
    DqliteArguments { values: DqliteArgumentBuffer(values) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx_core::arguments::Arguments;

    #[test]
    fn any_arguments_map_to_wire_values() {
        let mut args = AnyArguments::default();
        args.add(true).unwrap();
        args.add(7i16).unwrap();
        args.add(8i32).unwrap();
        args.add(9i64).unwrap();
        args.add(1.5f64).unwrap();
        args.add("x".to_string()).unwrap();
        args.add(vec![1u8]).unwrap();
        args.add(None::<i64>).unwrap();
        let d = map_arguments(args);
        assert_eq!(
            d.values(),
            &[
                WireValue::Boolean(true),
                WireValue::Integer(7),
                WireValue::Integer(8),
                WireValue::Integer(9),
                WireValue::Float(1.5),
                WireValue::Text("x".into()),
                WireValue::Blob(vec![1]),
                WireValue::Null,
            ]
        );
    }

    #[test]
    fn any_options_from_url() {
        let any = AnyConnectOptions::from_url(&"dqlite://127.0.0.1:9001/app.db?peers=127.0.0.1:9002".parse().unwrap())
            .unwrap();
        let d = DqliteConnectOptions::try_from(&any).unwrap();
        assert_eq!(d.get_database(), "app.db");
        assert_eq!(d.get_seeds().len(), 2);
    }
}
