//! Query arguments: the values of a params tuple.

use dqlite_wire::value::Value as WireValue;
use sqlx_core::arguments::Arguments;
use sqlx_core::encode::Encode;
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::Dqlite;

/// The buffer [`Encode`] implementations write into: one wire value per argument.
#[derive(Debug, Default, Clone)]
pub struct DqliteArgumentBuffer(pub(crate) Vec<WireValue>);

impl DqliteArgumentBuffer {
    /// Append one value (what an [`Encode`] implementation does).
    pub fn push(&mut self, value: WireValue) {
        self.0.push(value);
    }
}

/// Arguments bound to a query, sent as a params tuple (schema 0 up to 255 values, schema 1
/// above that where the server supports it).
#[derive(Debug, Default, Clone)]
pub struct DqliteArguments {
    pub(crate) values: DqliteArgumentBuffer,
}

impl DqliteArguments {
    /// The encoded values.
    pub fn values(&self) -> &[WireValue] {
        &self.values.0
    }
}

impl Arguments for DqliteArguments {
    type Database = Dqlite;

    fn reserve(&mut self, additional: usize, _size: usize) {
        self.values.0.reserve(additional);
    }

    fn add<'t, T>(&mut self, value: T) -> Result<(), BoxDynError>
    where
        T: Encode<'t, Dqlite> + Type<Dqlite>,
    {
        let before = self.values.0.len();
        match value.encode(&mut self.values) {
            Ok(is_null) => {
                // Exactly one value per argument, whatever the Encode impl did.
                self.values.0.truncate(before + 1);
                if self.values.0.len() == before {
                    if !is_null.is_null() {
                        return Err("Encode implementation wrote no value".into());
                    }
                    self.values.0.push(WireValue::Null);
                } else if is_null.is_null() {
                    self.values.0[before] = WireValue::Null;
                }
                Ok(())
            }
            Err(e) => {
                self.values.0.truncate(before);
                Err(e)
            }
        }
    }

    fn len(&self) -> usize {
        self.values.0.len()
    }
}
