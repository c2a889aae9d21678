//! JSON (feature `json`): `Json<T>` stored as TEXT; `serde_json::Value` and `&RawValue` work
//! through sqlx-core's blanket impls on top of `Json<T>`.

use dqlite_wire::value::Value as WireValue;
use serde::{Deserialize, Serialize};
use sqlx_core::decode::Decode;
use sqlx_core::encode::{Encode, IsNull};
use sqlx_core::error::BoxDynError;
use sqlx_core::types::{Json, Type};

use crate::type_info::DataType;
use crate::{Dqlite, DqliteArgumentBuffer, DqliteTypeInfo, DqliteValueRef};

impl<T> Type<Dqlite> for Json<T> {
    fn type_info() -> DqliteTypeInfo {
        DqliteTypeInfo::TEXT
    }

    fn compatible(ty: &DqliteTypeInfo) -> bool {
        matches!(ty.0, DataType::Text | DataType::Blob)
    }
}

impl<T: Serialize> Encode<'_, Dqlite> for Json<T> {
    fn encode_by_ref(&self, buf: &mut DqliteArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(WireValue::Text(serde_json::to_string(&self.0)?));
        Ok(IsNull::No)
    }
}

impl<'r, T: 'r + Deserialize<'r>> Decode<'r, Dqlite> for Json<T> {
    fn decode(value: DqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Json(serde_json::from_slice(value.blob()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_util::*;
    use sqlx_core::value::Value as _;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        name: String,
        tags: Vec<u32>,
    }

    #[test]
    fn json_round_trips() {
        let d = Json(Doc { name: "x\"y".into(), tags: vec![1, 2] });
        let back: Json<Doc> = round_trip(Json(Doc { name: "x\"y".into(), tags: vec![1, 2] }));
        assert_eq!(back.0, d.0);
        let v = serde_json::json!({"a": [1, null, "z"], "b": {"c": 1.5}});
        assert_eq!(round_trip(v.clone()), v);
        let raw = serde_json::value::RawValue::from_string("{\"k\":1}".into()).unwrap();
        let enc = encode(raw.clone());
        let back: &serde_json::value::RawValue = enc.try_decode().unwrap();
        assert_eq!(back.get(), "{\"k\":1}");
    }
}
