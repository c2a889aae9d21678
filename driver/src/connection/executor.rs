//! `Executor` for `&mut DqliteConnection`: results stream batch by batch.
//!
//! Backpressure: the next ROWS message is read only when the consumer has taken every row of
//! the current one. Dropping the stream early leaves the query "outstanding"; the next use of
//! the connection (or the pool's release check) sends INTERRUPT and drains it.

use std::sync::Arc;

use dqlite_wire::value::Value as WireValue;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
#[cfg(feature = "offline")]
use sqlx_core::describe::Describe;
use sqlx_core::executor::{Execute, Executor};
use sqlx_core::ext::async_stream::TryAsyncStream;
use sqlx_core::ext::ustr::UStr;
use sqlx_core::logger::QueryLogger;
use sqlx_core::sql_str::SqlStr;
use sqlx_core::{Either, Error, HashMap};

use super::{DqliteConnection, Started};
use crate::protocol::session::Batch;
use crate::split::{split, Param, Piece};
use crate::{Dqlite, DqliteArguments, DqliteColumn, DqliteQueryResult, DqliteRow, DqliteStatement, DqliteTypeInfo};

type Columns = (Arc<Vec<DqliteColumn>>, Arc<HashMap<UStr, usize>>);

fn columns_of(batch: &Batch) -> Columns {
    let first = batch.rows.first();
    let columns: Vec<DqliteColumn> = batch
        .columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ty = first
                .and_then(|r| r.get(i))
                .map(|v| match v {
                    WireValue::Null => DqliteTypeInfo::NULL,
                    WireValue::Iso8601(s) if s.is_empty() => DqliteTypeInfo::NULL,
                    v => DqliteTypeInfo::from_wire(v.value_type()),
                })
                .unwrap_or(DqliteTypeInfo::NULL);
            DqliteColumn::new(name, i, ty)
        })
        .collect();
    let mut names = HashMap::with_capacity(columns.len());
    for c in &columns {
        names.entry(c.name.clone()).or_insert(c.ordinal);
    }
    (Arc::new(columns), Arc::new(names))
}

impl DqliteConnection {
    /// The result stream of one query (shared by `Executor` and the Any driver).
    ///
    /// The SQL is split into statements ([`crate::split`]); each runs in turn with its share
    /// of the arguments and yields its rows, then its result (rows affected per statement, as
    /// sqlx-sqlite does). Text without a statement yields nothing.
    pub(crate) fn fetch_many_inner(
        &mut self,
        sql: SqlStr,
        arguments: Option<DqliteArguments>,
        persistent: bool,
    ) -> BoxStream<'_, Result<Either<DqliteQueryResult, DqliteRow>, Error>> {
        Box::pin(TryAsyncStream::new(move |yielder| async move {
            let args: Vec<WireValue> = arguments.map(|a| a.values.0).unwrap_or_default();
            let mut logger = QueryLogger::new(sql.clone(), self.options.log_settings.clone());
            let pieces = split(sql.as_str());
            let bound = bind_pieces(&pieces, args)?;

            for (piece, params) in pieces.iter().zip(bound) {
                let prepared = self.use_prepared(persistent, !params.is_empty());
                match self.run(piece.sql, &params, prepared).await? {
                    Started::Done(result) => {
                        logger.increase_rows_affected(result.rows_affected);
                        yielder.r#yield(Either::Left(result)).await;
                    }
                    Started::Rows(mut batch) => {
                        let (columns, names) = columns_of(&batch);
                        if prepared {
                            self.remember_columns(piece.sql, &(Arc::clone(&columns), Arc::clone(&names)));
                        }
                        loop {
                            let done = batch.done;
                            for values in std::mem::take(&mut batch.rows) {
                                logger.increment_rows_returned();
                                yielder
                                    .r#yield(Either::Right(DqliteRow {
                                        values,
                                        columns: Arc::clone(&columns),
                                        column_names: Arc::clone(&names),
                                    }))
                                    .await;
                            }
                            if done {
                                break;
                            }
                            batch = self.next_batch().await?;
                        }
                        yielder.r#yield(Either::Left(DqliteQueryResult::default())).await;
                    }
                }
            }
            drop(logger);
            Ok(())
        }))
    }

    /// Whether a query runs as a cached prepared statement.
    fn use_prepared(&self, persistent: bool, has_args: bool) -> bool {
        // Argument-less SQL goes through EXEC_SQL/QUERY_SQL, which run every statement of a
        // multi-statement string (PREPARE would silently keep only the first on dqlite 1.11).
        persistent && has_args && self.statements.is_enabled()
    }
}

/// Each statement's parameters, taken from `args` as sqlx-sqlite takes them: `?NNN` / `$NNN`
/// from argument NNN, every other index from the next unused argument. Without arguments
/// nothing is bound (SQLite binds NULL). Refused before anything runs: an index past the
/// arguments, a named parameter, or arguments no statement uses.
fn bind_pieces(pieces: &[Piece<'_>], args: Vec<WireValue>) -> Result<Vec<Vec<WireValue>>, Error> {
    if args.is_empty() {
        return Ok(vec![Vec::new(); pieces.len()]);
    }
    if let [only] = pieces {
        if only.params.len() == args.len() && only.params.iter().all(|p| *p == Param::Next) {
            // The common case: one statement of plain `?`s, in order.
            return Ok(vec![args]);
        }
    }
    let mut used = vec![false; args.len()];
    let mut next = 0;
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let mut params = Vec::with_capacity(piece.params.len());
        for param in &piece.params {
            let n = match param {
                Param::Next => {
                    next += 1;
                    next
                }
                Param::Absolute(n) => *n,
                Param::Named(name) => {
                    return Err(Error::InvalidArgument(format!(
                        "named parameter {name} is not supported: use ? or ?NNN"
                    )))
                }
            };
            let value = args.get(n - 1).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the SQL takes argument {n} but {} were bound (statement: {})",
                    args.len(),
                    piece.sql.trim()
                ))
            })?;
            used[n - 1] = true;
            params.push(value.clone());
        }
        out.push(params);
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        return Err(Error::InvalidArgument(format!(
            "{} argument(s) bound but the SQL does not use argument {}",
            args.len(),
            unused + 1
        )));
    }
    Ok(out)
}

impl<'c> Executor<'c> for &'c mut DqliteConnection {
    type Database = Dqlite;

    fn fetch_many<'e, 'q, E>(self, mut query: E) -> BoxStream<'e, Result<Either<DqliteQueryResult, DqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Dqlite>,
        'q: 'e,
    {
        let arguments = query.take_arguments().map_err(Error::Encode);
        let persistent = query.persistent();
        let sql = query.sql();
        match arguments {
            Ok(arguments) => self.fetch_many_inner(sql, arguments, persistent),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }

    fn fetch_optional<'e, 'q, E>(self, query: E) -> BoxFuture<'e, Result<Option<DqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Dqlite>,
        'q: 'e,
    {
        let mut s = self.fetch_many(query);
        Box::pin(async move {
            while let Some(v) = s.try_next().await? {
                if let Either::Right(r) = v {
                    // Dropping the stream leaves the rest of the result to be drained lazily.
                    return Ok(Some(r));
                }
            }
            Ok(None)
        })
    }

    fn execute_many<'e, 'q, E>(self, query: E) -> BoxStream<'e, Result<DqliteQueryResult, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Dqlite>,
        'q: 'e,
    {
        self.fetch_many(query)
            .try_filter_map(|step| async move {
                Ok(match step {
                    Either::Left(result) => Some(result),
                    Either::Right(_) => None,
                })
            })
            .boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        _parameters: &'e [DqliteTypeInfo],
    ) -> BoxFuture<'e, Result<DqliteStatement, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            // Each statement of the text is prepared (and so checked); the parameter count is
            // the arguments the whole text takes.
            let pieces = split(sql.as_str());
            let mut parameters = 0;
            let mut columns = None;
            for piece in &pieces {
                let (n, cell) = self.prepare_only(piece.sql).await?;
                parameters += n;
                columns.get_or_insert(cell);
            }
            Ok(DqliteStatement { sql, parameters, columns: columns.unwrap_or_default() })
        })
    }

    #[cfg(feature = "offline")]
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Dqlite>, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let pieces = split(sql.as_str());
            let mut parameters = 0;
            for piece in &pieces {
                parameters += self.prepare_only(piece.sql).await?.0;
            }
            // dqlite does not expose result columns without running the statement.
            Ok(Describe { columns: Vec::new(), parameters: Some(Either::Right(parameters)), nullable: Vec::new() })
        })
    }
}
