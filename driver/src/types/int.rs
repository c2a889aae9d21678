use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

/// `Type`, `Encode` and `Decode` for integer types that fit in SQLite's signed 64 bits:
/// encoded as INTEGER, decoded from `$compatible` wire types with a range check.
macro_rules! integer_type {
    ($compatible:pat => $($t:ty),*) => {$(
        impl Type<Dqlite> for $t {
            fn type_info() -> DqliteTypeInfo {
                DqliteTypeInfo::INTEGER
            }

            fn compatible(ty: &DqliteTypeInfo) -> bool {
                matches!(ty.0, $compatible)
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
pub(super) use integer_type;

integer_type!(DataType::Integer | DataType::Boolean | DataType::UnixTime => i8, i16, i32, i64);

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use dqlite_wire::value::Value;
    use sqlx_core::value::Value as _;

    #[test]
    fn ints_round_trip() {
        for v in [i8::MIN, -1, 0, 1, i8::MAX] {
            assert_eq!(round_trip(v), v);
        }
        for v in [i16::MIN, 0, i16::MAX] {
            assert_eq!(round_trip(v), v);
        }
        for v in [i32::MIN, 0, i32::MAX] {
            assert_eq!(round_trip(v), v);
        }
        for v in [i64::MIN, -1, 0, i64::MAX] {
            assert_eq!(round_trip(v), v);
        }
        assert_eq!(round_trip(Some(5i64)), Some(5));
        assert_eq!(round_trip(None::<i64>), None);
    }

    #[test]
    fn narrowing_is_checked() {
        let big = DqliteValue::new(Value::Integer(300));
        assert!(big.try_decode::<i8>().is_err());
        assert_eq!(decode::<i16>(&big), 300);
        let b = DqliteValue::new(Value::Boolean(true));
        assert_eq!(decode::<i64>(&b), 1);
        let t = DqliteValue::new(Value::UnixTime(1_700_000_000));
        assert_eq!(decode::<i64>(&t), 1_700_000_000);
        // NULL into a non-Option is the usual sqlx error.
        let e = DqliteValue::new(Value::Null).try_decode_unchecked::<i64>().unwrap_err();
        assert!(e.to_string().contains("unexpected null"), "{e}");
        // Text is not an integer.
        assert!(DqliteValue::new(Value::Text("1".into())).try_decode::<i64>().is_err());
    }
}
