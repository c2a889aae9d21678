//! `uuid::Uuid` (feature `uuid`): a 16-byte BLOB, or TEXT via `uuid::fmt::Hyphenated`.

use dqlite_wire::value::{Value as WireValue, ValueRef as WireValueRef};
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;
use uuid::fmt::{Hyphenated, Simple};
use uuid::Uuid;

use crate::type_info::DataType;
use crate::value::mismatch;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

impl Type<Dqlite> for Uuid {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::BLOB
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Blob | DataType::Text)
    }
}

impl Encode<'_, Dqlite> for Uuid {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.as_bytes().to_vec()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Uuid {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.value {
            WireValueRef::Blob(b) => Ok(Uuid::from_slice(b)?),
            WireValueRef::Text(t) => Ok(Uuid::parse_str(t)?),
            other => Err(mismatch("a uuid (blob or text)", &other)),
        }
    }
}

impl Type<Dqlite> for Hyphenated {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text)
    }
}

impl Encode<'_, Dqlite> for Hyphenated {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Text(self.to_string()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Hyphenated {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Uuid::parse_str(value.text()?)?.hyphenated())
    }
}

impl Type<Dqlite> for Simple {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text)
    }
}

impl Encode<'_, Dqlite> for Simple {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Text(self.to_string()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Simple {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Uuid::parse_str(value.text()?)?.simple())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_util::*;
    use crate::DqliteValue;
    use sqlx_core::value::Value as _;

    #[test]
    fn uuid_round_trips() {
        let u = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(round_trip(u), u);
        assert_eq!(encode(u).wire(), &WireValue::Blob(u.as_bytes().to_vec()));
        assert_eq!(round_trip(u.hyphenated()), u.hyphenated());
        assert_eq!(round_trip(u.simple()), u.simple());
        assert_eq!(encode(u.simple()).wire(), &WireValue::Text(u.simple().to_string()));
        let t = DqliteValue::new(WireValue::Text(u.to_string()));
        assert_eq!(decode::<Uuid>(&t), u);
        let short = DqliteValue::new(WireValue::Blob(vec![1, 2, 3]));
        assert!(short.try_decode::<Uuid>().is_err());
    }
}
