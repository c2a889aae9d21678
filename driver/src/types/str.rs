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
            return Err("dqlite cannot transmit text containing a NUL character; use a blob".into());
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

impl Encode<'_, Dqlite> for std::rc::Rc<str> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(text_value(self)?);
        Ok(IsNull::No)
    }
}

/// `sqlx::types::Text<T>`: stored as TEXT through `T`'s `Display`, read back with `FromStr`.
impl<T> Type<Dqlite> for sqlx_core::types::Text<T> {
    fn type_info() -> DqliteTypeInfo {
        <String as Type<Dqlite>>::type_info()
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        <String as Type<Dqlite>>::compatible(ty)
    }
}

impl<T: std::fmt::Display> Encode<'_, Dqlite> for sqlx_core::types::Text<T> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Dqlite>::encode(self.0.to_string(), buf)
    }
}

impl<'r, T> Decode<'r, Dqlite> for sqlx_core::types::Text<T>
where
    T: std::str::FromStr,
    BoxDynError: From<<T as std::str::FromStr>::Err>,
{
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(value.text()?.parse::<T>()?))
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
        assert_eq!(decode::<String>(&DqliteValue::new(Value::Iso8601("2024-01-01".into()))), "2024-01-01");
    }

    #[test]
    fn smart_pointers_and_text_wrapper() {
        let rc: std::rc::Rc<str> = "rc".into();
        assert_eq!(decode::<String>(&encode(rc)), "rc");
        let t = sqlx_core::types::Text(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(encode(sqlx_core::types::Text(t.0)).wire(), &Value::Text("10.0.0.1".into()));
        assert_eq!(round_trip(t).0, std::net::Ipv4Addr::new(10, 0, 0, 1));
        let bad = DqliteValue::new(Value::Text("not an address".into()));
        assert!(bad.try_decode::<sqlx_core::types::Text<std::net::Ipv4Addr>>().is_err());
    }

    #[test]
    fn interior_nul_is_an_error_not_truncation() {
        let mut args = DqliteArguments::default();
        assert!(args.add("a\0b").is_err());
        assert!(args.add("a\0b".to_owned()).is_err());
        assert_eq!(args.len(), 0);
    }
}
