use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use super::int::integer_type;
use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

// Unlike the signed types, these do not accept UNIXTIME.
integer_type!(DataType::Integer | DataType::Boolean => u8, u16, u32);

// u64: decode only, as in sqlx-sqlite (SQLite integers are signed 64-bit, so values above
// i64::MAX cannot be stored; negative values fail to decode).
impl Type<Dqlite> for u64 {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::INTEGER
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Integer | DataType::Boolean)
    }
}

impl<'r> Decode<'r, Dqlite> for u64 {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(u64::try_from(value.int()?)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use dqlite_wire::value::Value;
    use sqlx_core::value::Value as _;

    #[test]
    fn uints_round_trip() {
        for v in [0u8, 1, u8::MAX] {
            assert_eq!(round_trip(v), v);
        }
        for v in [0u16, u16::MAX] {
            assert_eq!(round_trip(v), v);
        }
        for v in [0u32, u32::MAX] {
            assert_eq!(round_trip(v), v);
        }
        assert!(DqliteValue::new(Value::Integer(-1)).try_decode::<u32>().is_err());
        assert!(DqliteValue::new(Value::Integer(256)).try_decode::<u8>().is_err());
        assert_eq!(DqliteValue::new(Value::Integer(i64::MAX)).try_decode::<u64>().unwrap(), i64::MAX as u64);
        assert!(DqliteValue::new(Value::Integer(-1)).try_decode::<u64>().is_err());
    }
}
