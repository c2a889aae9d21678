//! Values: owned ([`DqliteValue`]) and borrowed from a row ([`DqliteValueRef`]).

use std::borrow::Cow;

use dqlite_wire::value::{Value as WireValue, ValueRef as WireValueRef};
use sqlx_core::error::BoxDynError;
use sqlx_core::value::{Value, ValueRef};

use crate::type_info::DqliteTypeInfo;
use crate::Dqlite;

/// An owned dqlite value (one cell of a row, or a decoded parameter).
#[derive(Debug, Clone, PartialEq)]
pub struct DqliteValue {
    pub(crate) value: WireValue,
}

/// A dqlite value borrowed from a [`DqliteRow`](crate::DqliteRow) or a [`DqliteValue`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DqliteValueRef<'r> {
    pub(crate) value: WireValueRef<'r>,
}

fn is_null(v: &WireValueRef<'_>) -> bool {
    // dqlite sends a NULL in a DATETIME/DATE/TIMESTAMP column as an empty ISO8601 string.
    matches!(v, WireValueRef::Null | WireValueRef::Iso8601(""))
}

fn type_info_of(v: &WireValueRef<'_>) -> DqliteTypeInfo {
    if is_null(v) {
        DqliteTypeInfo::NULL
    } else {
        DqliteTypeInfo::from_wire(v.value_type())
    }
}

impl DqliteValue {
    /// Wrap a wire value.
    pub fn new(value: WireValue) -> Self {
        DqliteValue { value }
    }

    /// The wire value.
    pub fn wire(&self) -> &WireValue {
        &self.value
    }
}

impl<'r> DqliteValueRef<'r> {
    pub(crate) fn new(value: WireValueRef<'r>) -> Self {
        DqliteValueRef { value }
    }

    /// The wire value.
    pub fn wire(&self) -> WireValueRef<'r> {
        self.value
    }

    /// An integer: INTEGER, BOOLEAN (0/1) or UNIXTIME (seconds).
    pub(crate) fn int(&self) -> Result<i64, BoxDynError> {
        match self.value {
            WireValueRef::Integer(v) | WireValueRef::UnixTime(v) => Ok(v),
            WireValueRef::Boolean(b) => Ok(i64::from(b)),
            other => Err(mismatch("an integer", &other)),
        }
    }

    /// A float: FLOAT or INTEGER.
    pub(crate) fn float(&self) -> Result<f64, BoxDynError> {
        match self.value {
            WireValueRef::Float(v) => Ok(v),
            WireValueRef::Integer(v) => Ok(v as f64),
            other => Err(mismatch("a float", &other)),
        }
    }

    /// Text: TEXT or ISO8601.
    pub(crate) fn text(&self) -> Result<&'r str, BoxDynError> {
        match self.value {
            WireValueRef::Text(s) | WireValueRef::Iso8601(s) => Ok(s),
            other => Err(mismatch("text", &other)),
        }
    }

    /// Bytes: BLOB, or the UTF-8 bytes of TEXT.
    pub(crate) fn blob(&self) -> Result<&'r [u8], BoxDynError> {
        match self.value {
            WireValueRef::Blob(b) => Ok(b),
            WireValueRef::Text(s) => Ok(s.as_bytes()),
            other => Err(mismatch("a blob", &other)),
        }
    }
}

pub(crate) fn mismatch(wanted: &str, got: &WireValueRef<'_>) -> BoxDynError {
    if is_null(got) {
        return Box::new(sqlx_core::error::UnexpectedNullError);
    }
    format!("expected {wanted}, got a dqlite {} value", type_info_of(got)).into()
}

impl Value for DqliteValue {
    type Database = Dqlite;

    fn as_ref(&self) -> DqliteValueRef<'_> {
        DqliteValueRef::new(self.value.as_ref())
    }

    fn type_info(&self) -> Cow<'_, DqliteTypeInfo> {
        Cow::Owned(type_info_of(&self.value.as_ref()))
    }

    fn is_null(&self) -> bool {
        is_null(&self.value.as_ref())
    }
}

impl<'r> ValueRef<'r> for DqliteValueRef<'r> {
    type Database = Dqlite;

    fn to_owned(&self) -> DqliteValue {
        DqliteValue::new(self.value.to_owned())
    }

    fn type_info(&self) -> Cow<'_, DqliteTypeInfo> {
        Cow::Owned(type_info_of(&self.value))
    }

    fn is_null(&self) -> bool {
        is_null(&self.value)
    }
}
