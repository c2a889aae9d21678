use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

impl Type<Dqlite> for f64 {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::FLOAT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Float | DataType::Integer)
    }
}

impl Encode<'_, Dqlite> for f64 {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Float(*self));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for f64 {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        value.float()
    }
}

impl Type<Dqlite> for f32 {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::FLOAT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Float | DataType::Integer)
    }
}

impl Encode<'_, Dqlite> for f32 {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Float(f64::from(*self)));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for f32 {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        // Lossy by nature, as in sqlx-sqlite: REAL is a double.
        Ok(value.float()? as f32)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use dqlite_wire::value::Value;

    #[test]
    fn floats_round_trip() {
        for v in [0.0f64, -1.5, f64::MAX, f64::MIN_POSITIVE, 1e-300] {
            assert_eq!(round_trip(v), v);
        }
        for v in [0.0f32, 3.25, f32::MAX] {
            assert_eq!(round_trip(v), v);
        }
        assert!(round_trip(f64::NAN).is_nan());
        assert_eq!(decode::<f64>(&DqliteValue::new(Value::Integer(3))), 3.0);
    }
}
