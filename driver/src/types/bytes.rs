use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

impl Type<Dqlite> for [u8] {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::BLOB
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Blob | DataType::Text)
    }
}

impl Encode<'_, Dqlite> for &'_ [u8] {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.to_vec()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for &'r [u8] {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        value.blob()
    }
}

impl Type<Dqlite> for Vec<u8> {
    fn type_info() -> DqliteTypeInfo {
        <[u8] as Type<Dqlite>>::type_info()
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        <[u8] as Type<Dqlite>>::compatible(ty)
    }
}

impl Encode<'_, Dqlite> for Vec<u8> {
    fn encode(self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self));
        Ok(IsNull::No)
    }

    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.clone()));
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for Vec<u8> {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        value.blob().map(<[u8]>::to_vec)
    }
}

impl Encode<'_, Dqlite> for Box<[u8]> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.to_vec()));
        Ok(IsNull::No)
    }
}

impl Encode<'_, Dqlite> for std::borrow::Cow<'_, [u8]> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.to_vec()));
        Ok(IsNull::No)
    }
}

impl Encode<'_, Dqlite> for std::sync::Arc<[u8]> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.to_vec()));
        Ok(IsNull::No)
    }
}

impl Encode<'_, Dqlite> for std::rc::Rc<[u8]> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Blob(self.to_vec()));
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;

    #[test]
    fn bytes_round_trip() {
        for b in [vec![], vec![0u8], (0..=255u8).collect::<Vec<_>>()] {
            assert_eq!(round_trip(b.clone()), b);
            let v = encode(&b[..]);
            assert_eq!(decode::<Vec<u8>>(&v), b);
        }
        assert_eq!(round_trip(Some(vec![1u8, 2])), Some(vec![1, 2]));
        let b = vec![7u8, 8, 9];
        let shared: std::sync::Arc<[u8]> = b.clone().into();
        assert_eq!(decode::<Vec<u8>>(&encode(shared)), b);
        let rc: std::rc::Rc<[u8]> = b.clone().into();
        assert_eq!(decode::<Vec<u8>>(&encode(rc)), b);
        let cow: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(&b[..]);
        assert_eq!(decode::<Vec<u8>>(&encode(cow)), b);
    }
}
