use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

impl Type<Dqlite> for bool {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::BOOLEAN
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Boolean | DataType::Integer)
    }
}

impl Encode<'_, Dqlite> for bool {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Boolean(*self));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for bool {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(value.int()? != 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use dqlite_wire::value::Value;

    #[test]
    fn bool_round_trips() {
        assert!(round_trip(true));
        assert!(!round_trip(false));
        assert!(decode::<bool>(&DqliteValue::new(Value::Integer(7))));
        assert!(!decode::<bool>(&DqliteValue::new(Value::Boolean(false))));
        assert_eq!(encode(true).wire(), &Value::Boolean(true));
    }
}
