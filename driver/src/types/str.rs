use std::borrow::Cow;

use dqlite_wire::value::Value as WireValue;
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::Type;

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

fn text_value(s: &str) -> Result<WireValue, BoxDynError> {
    if s.contains('\0') {
        // The wire format terminates text with NUL; an interior NUL would truncate it.
        return Err("dqlite cannot transmit text containing a NUL character; use a blob".into());
    }
    Ok(WireValue::Text(s.to_owned()))
}

impl Type<Dqlite> for str {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text | DataType::Iso8601)
    }
}

impl Encode<'_, Dqlite> for &'_ str {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for &'r str {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        value.text()
    }
}

impl Type<Dqlite> for String {
    fn type_info() -> DqliteTypeInfo {
        <str as Type<Dqlite>>::type_info()
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        <str as Type<Dqlite>>::compatible(ty)
    }
}

impl Encode<'_, Dqlite> for String {
    fn encode(self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        if self.contains('\0') {
            return Err(
                "dqlite cannot transmit text containing a NUL character; use a blob".into(),
            );
        }
        buf.push(WireValue::Text(self));
        Ok(IsNull::No)
    }

    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Dqlite> for String {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        value.text().map(str::to_owned)
    }
}

impl Encode<'_, Dqlite> for Box<str> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

impl Encode<'_, Dqlite> for Cow<'_, str> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

impl Encode<'_, Dqlite> for std::sync::Arc<str> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use crate::types::test_util::*;
    use crate::{DqliteArguments, DqliteValue};
    use dqlite_wire::value::Value;
    use sqlx_core::arguments::Arguments;
    use sqlx_core::value::Value as _;

    #[test]
    fn strings_round_trip() {
        for s in ["", "hello", "héllo wörld ✓", "a'b\"c;--"] {
            assert_eq!(round_trip(s.to_owned()), s);
            let v = encode(s);
            assert_eq!(v.try_decode::<&str>().unwrap(), s);
        }
        assert_eq!(
            decode::<String>(&DqliteValue::new(Value::Iso8601("2024-01-01".into()))),
            "2024-01-01"
        );
    }

    #[test]
    fn interior_nul_is_an_error_not_truncation() {
        let mut args = DqliteArguments::default();
        assert!(args.add("a\0b").is_err());
        assert!(args.add("a\0b".to_owned()).is_err());
        assert_eq!(args.len(), 0);
    }
}
