//! Type information: the dqlite wire value types.

use std::fmt::{self, Display, Formatter};

use dqlite_wire::value::ValueType;
use sqlx_core::type_info::TypeInfo;

/// The type of a dqlite value as it travels on the wire (PROTOCOL.md §3.1).
///
/// dqlite reports a type per *value*, not per column: a column's type is the type of its value
/// in the first row, and a cell's type may differ from its column's (SQLite is dynamically
/// typed). The server sends `UNIXTIME`/`ISO8601` for columns declared `DATETIME`, `DATE` or
/// `TIMESTAMP`, and `BOOLEAN` for columns declared `BOOLEAN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DqliteTypeInfo(pub(crate) DataType);

/// The wire value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DataType {
    Null,
    Integer,
    Float,
    Text,
    Blob,
    /// Seconds since the epoch (server to client only).
    UnixTime,
    /// Date/time text; `""` is NULL.
    Iso8601,
    Boolean,
}

impl DqliteTypeInfo {
    pub(crate) const NULL: Self = DqliteTypeInfo(DataType::Null);
    pub(crate) const INTEGER: Self = DqliteTypeInfo(DataType::Integer);
    pub(crate) const FLOAT: Self = DqliteTypeInfo(DataType::Float);
    pub(crate) const TEXT: Self = DqliteTypeInfo(DataType::Text);
    pub(crate) const BLOB: Self = DqliteTypeInfo(DataType::Blob);
    #[cfg_attr(not(any(feature = "chrono", feature = "time")), allow(dead_code))]
    pub(crate) const ISO8601: Self = DqliteTypeInfo(DataType::Iso8601);
    pub(crate) const BOOLEAN: Self = DqliteTypeInfo(DataType::Boolean);

    pub(crate) fn from_wire(t: ValueType) -> Self {
        DqliteTypeInfo(match t {
            ValueType::Integer => DataType::Integer,
            ValueType::Float => DataType::Float,
            ValueType::Text => DataType::Text,
            ValueType::Blob => DataType::Blob,
            ValueType::Null => DataType::Null,
            ValueType::UnixTime => DataType::UnixTime,
            ValueType::Iso8601 => DataType::Iso8601,
            ValueType::Boolean => DataType::Boolean,
        })
    }
}

impl Display for DqliteTypeInfo {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl TypeInfo for DqliteTypeInfo {
    fn is_null(&self) -> bool {
        self.0 == DataType::Null
    }

    fn name(&self) -> &str {
        match self.0 {
            DataType::Null => "NULL",
            DataType::Integer => "INTEGER",
            DataType::Float => "REAL",
            DataType::Text => "TEXT",
            DataType::Blob => "BLOB",
            DataType::UnixTime => "UNIXTIME",
            DataType::Iso8601 => "ISO8601",
            DataType::Boolean => "BOOLEAN",
        }
    }
}
