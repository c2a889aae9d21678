use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

// u64 is deliberately absent: SQLite integers are signed 64-bit.
macro_rules! uint_type {
    ($($t:ty),*) => {$(
        impl Type<Dqlite> for $t {
            fn type_info() -> DqliteTypeInfo {
                DqliteTypeInfo::INTEGER
            }

            fn compatible(ty: &DqliteTypeInfo) -> bool {
                matches!(ty.0, DataType::Integer | DataType::Boolean)
            }
        }

        impl Encode<'_, Dqlite> for $t {
            fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
                buf.push(WireValue::Integer(i64::from(*self)));
                Ok(IsNull::No)
            }
        }

        impl<'r> Decode<'r, Dqlite> for $t {
            fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                let v = value.int()?;
                <$t>::try_from(v).map_err(|_| {
                    format!("integer {v} out of range for {}", stringify!($t)).into()
                })
            }
        }
    )*};
}

uint_type!(u8, u16, u32);

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
    }
}
