//! Rows of a result set.

use std::sync::Arc;

use dqlite_wire::value::Value as WireValue;
use sqlx_core::column::ColumnIndex;
use sqlx_core::error::Error;
use sqlx_core::ext::ustr::UStr;
use sqlx_core::row::Row;
use sqlx_core::HashMap;

use crate::{Dqlite, DqliteColumn, DqliteValueRef};

/// One row: its values (owned, decoded from a ROWS batch) and the shared column list.
pub struct DqliteRow {
    pub(crate) values: Box<[WireValue]>,
    pub(crate) columns: Arc<Vec<DqliteColumn>>,
    pub(crate) column_names: Arc<HashMap<UStr, usize>>,
}

impl Row for DqliteRow {
    type Database = Dqlite;

    fn columns(&self) -> &[DqliteColumn] {
        &self.columns
    }

    fn try_get_raw<I>(&self, index: I) -> Result<DqliteValueRef<'_>, Error>
    where
        I: ColumnIndex<Self>,
    {
        let index = index.index(self)?;
        let value = self.values.get(index).ok_or(Error::ColumnIndexOutOfBounds { index, len: self.values.len() })?;
        Ok(DqliteValueRef::new(value.as_ref()))
    }
}

impl ColumnIndex<DqliteRow> for &'_ str {
    fn index(&self, row: &DqliteRow) -> Result<usize, Error> {
        row.column_names.get(*self).copied().ok_or_else(|| Error::ColumnNotFound((*self).into()))
    }
}

impl std::fmt::Debug for DqliteRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for col in self.columns.iter() {
            m.entry(&&*col.name, &self.values.get(col.ordinal));
        }
        m.finish()
    }
}
