//! Values carried in tuples (PROTOCOL.md 3.1): type codes and their encodings.
//!
//! [`Value`] owns its data; [`ValueRef`] borrows text and blobs from the message
//! body so a row can be decoded without copying. Both encode the same way.

use crate::buf::{put_blob, put_i64, put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};

/// A value type code as it appears in tuple headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 1: `int64`.
    Integer,
    /// 2: `double`.
    Float,
    /// 3: `text`.
    Text,
    /// 4: `blob`.
    Blob,
    /// 5: one ignored word.
    Null,
    /// 9: `int64` seconds since the Unix epoch (server→client only).
    UnixTime,
    /// 10: `text` date/time (server binds it as TEXT).
    Iso8601,
    /// 11: `uint64` 0/1.
    Boolean,
}

impl ValueType {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            ValueType::Integer => 1,
            ValueType::Float => 2,
            ValueType::Text => 3,
            ValueType::Blob => 4,
            ValueType::Null => 5,
            ValueType::UnixTime => 9,
            ValueType::Iso8601 => 10,
            ValueType::Boolean => 11,
        }
    }

    /// Parse a wire code.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => ValueType::Integer,
            2 => ValueType::Float,
            3 => ValueType::Text,
            4 => ValueType::Blob,
            5 => ValueType::Null,
            9 => ValueType::UnixTime,
            10 => ValueType::Iso8601,
            11 => ValueType::Boolean,
            other => return Err(DecodeError::UnknownValueType(other)),
        })
    }
}

/// An owned value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// INTEGER.
    Integer(i64),
    /// FLOAT.
    Float(f64),
    /// TEXT (no interior NUL can be encoded).
    Text(String),
    /// BLOB.
    Blob(Vec<u8>),
    /// NULL.
    Null,
    /// UNIXTIME: seconds since the epoch.
    UnixTime(i64),
    /// ISO8601 text (the server sends `""` for a NULL in a DATETIME column).
    Iso8601(String),
    /// BOOLEAN.
    Boolean(bool),
}

/// A value borrowing its text or blob from a message body (or from anywhere else).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// INTEGER.
    Integer(i64),
    /// FLOAT.
    Float(f64),
    /// TEXT.
    Text(&'a str),
    /// BLOB.
    Blob(&'a [u8]),
    /// NULL.
    Null,
    /// UNIXTIME: seconds since the epoch.
    UnixTime(i64),
    /// ISO8601 text.
    Iso8601(&'a str),
    /// BOOLEAN.
    Boolean(bool),
}

impl Value {
    /// Borrow this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Integer(v) => ValueRef::Integer(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Text(v) => ValueRef::Text(v),
            Value::Blob(v) => ValueRef::Blob(v),
            Value::Null => ValueRef::Null,
            Value::UnixTime(v) => ValueRef::UnixTime(*v),
            Value::Iso8601(v) => ValueRef::Iso8601(v),
            Value::Boolean(v) => ValueRef::Boolean(*v),
        }
    }

    /// The wire type of this value.
    pub fn value_type(&self) -> ValueType {
        self.as_ref().value_type()
    }
}

impl<'a> ValueRef<'a> {
    /// Copy into an owned [`Value`].
    pub fn to_owned(&self) -> Value {
        match *self {
            ValueRef::Integer(v) => Value::Integer(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::Text(v) => Value::Text(v.to_owned()),
            ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            ValueRef::Null => Value::Null,
            ValueRef::UnixTime(v) => Value::UnixTime(v),
            ValueRef::Iso8601(v) => Value::Iso8601(v.to_owned()),
            ValueRef::Boolean(v) => Value::Boolean(v),
        }
    }

    /// The wire type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            ValueRef::Integer(_) => ValueType::Integer,
            ValueRef::Float(_) => ValueType::Float,
            ValueRef::Text(_) => ValueType::Text,
            ValueRef::Blob(_) => ValueType::Blob,
            ValueRef::Null => ValueType::Null,
            ValueRef::UnixTime(_) => ValueType::UnixTime,
            ValueRef::Iso8601(_) => ValueType::Iso8601,
            ValueRef::Boolean(_) => ValueType::Boolean,
        }
    }

    /// Number of bytes the encoded value occupies (excluding its type slot).
    pub fn encoded_len(&self) -> usize {
        match self {
            ValueRef::Text(s) | ValueRef::Iso8601(s) => crate::buf::text_len(s),
            ValueRef::Blob(b) => 8 + b.len().div_ceil(8) * 8,
            _ => 8,
        }
    }

    /// Append the encoded value (not its type code).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match *self {
            ValueRef::Integer(v) | ValueRef::UnixTime(v) => put_i64(out, v),
            ValueRef::Float(v) => put_u64(out, v.to_bits()),
            ValueRef::Text(s) | ValueRef::Iso8601(s) => put_text(out, s)?,
            ValueRef::Blob(b) => put_blob(out, b),
            ValueRef::Null => put_u64(out, 0),
            ValueRef::Boolean(b) => put_u64(out, u64::from(b)),
        }
        Ok(())
    }

    /// Decode one value of type `ty` from `r`.
    pub fn decode(ty: ValueType, r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(match ty {
            ValueType::Integer => ValueRef::Integer(r.i64("integer value")?),
            ValueType::Float => ValueRef::Float(r.f64("float value")?),
            ValueType::Text => ValueRef::Text(r.text("text value")?),
            ValueType::Blob => ValueRef::Blob(r.blob("blob value")?),
            ValueType::Null => {
                r.u64("null value")?;
                ValueRef::Null
            }
            ValueType::UnixTime => ValueRef::UnixTime(r.i64("unixtime value")?),
            ValueType::Iso8601 => ValueRef::Iso8601(r.text("iso8601 value")?),
            // The server binds any nonzero value as true.
            ValueType::Boolean => ValueRef::Boolean(r.u64("boolean value")? != 0),
        })
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        v.as_ref()
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(v: ValueRef<'_>) -> Self {
        v.to_owned()
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: ValueRef<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out).unwrap();
        assert_eq!(out.len(), v.encoded_len());
        out
    }

    #[test]
    fn value_bytes_are_exact() {
        assert_eq!(enc(ValueRef::Integer(-2)), [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(enc(ValueRef::Float(1.0)), [0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        assert_eq!(enc(ValueRef::Text("hi")), *b"hi\0\0\0\0\0\0");
        assert_eq!(enc(ValueRef::Blob(&[9])), [1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(ValueRef::Null), [0; 8]);
        assert_eq!(enc(ValueRef::UnixTime(1)), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(ValueRef::Iso8601("")), [0; 8]);
        assert_eq!(enc(ValueRef::Boolean(true)), [1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_fail() {
        for code in 0..=255u8 {
            match ValueType::from_code(code) {
                Ok(t) => assert_eq!(t.code(), code),
                Err(e) => {
                    assert_eq!(e, DecodeError::UnknownValueType(code));
                    assert!(!matches!(code, 1..=5 | 9..=11));
                }
            }
        }
    }

    #[test]
    fn values_round_trip() {
        let values = [
            Value::Integer(i64::MIN),
            Value::Float(-0.5),
            Value::Text("héllo wörld!".into()),
            Value::Blob(vec![0, 1, 2, 3, 4, 5, 6, 7, 8]),
            Value::Null,
            Value::UnixTime(1_700_000_000),
            Value::Iso8601("2024-01-02 03:04:05".into()),
            Value::Boolean(false),
        ];
        for v in &values {
            let bytes = enc(v.as_ref());
            let mut r = Reader::new(&bytes);
            assert_eq!(ValueRef::decode(v.value_type(), &mut r).unwrap().to_owned(), *v);
            r.finish().unwrap();
        }
        // Any nonzero boolean decodes as true.
        let mut r = Reader::new(&[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ValueRef::decode(ValueType::Boolean, &mut r), Ok(ValueRef::Boolean(true)));
    }
}
