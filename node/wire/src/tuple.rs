//! Tuples (PROTOCOL.md 3.2): params tuples (schema 0 and 1) and row tuples.
//!
//! ```text
//! params  (schema 0): u8  n | u8 type[n] | pad to 8 | values
//! params32(schema 1): u32 n | u8 type[n] | pad to 8 | values
//! row               : 4-bit type[n] (even column = low nibble) | pad to 8 | values
//! ```
//!
//! A params tuple with no values is omitted entirely (as go-dqlite does); the decoder
//! treats "no bytes left" as zero values. An explicit `n = 0` word also decodes.

use crate::buf::{pad, round_up8, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::value::{Value, ValueRef, ValueType};

/// Body schema of the requests that carry a params tuple (EXEC, QUERY, EXEC_SQL,
/// QUERY_SQL) and of PREPARE / STMT.
///
/// * params tuples: `V0` = `u8` count (≤ 255), `V1` = `u32` count (server ≥ 1.15.1);
/// * PREPARE/STMT: `V1` returns the tail offset of multi-statement SQL (server ≥ 1.15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Schema {
    /// Schema 0, understood by every server.
    #[default]
    V0,
    /// Schema 1 (dqlite ≥ 1.15.1).
    V1,
}

impl Schema {
    /// The schema byte in the message header.
    pub fn code(self) -> u8 {
        match self {
            Schema::V0 => 0,
            Schema::V1 => 1,
        }
    }

    /// Parse the header's schema byte for `message_type`.
    pub fn from_code(message_type: u8, schema: u8) -> Result<Self, DecodeError> {
        match schema {
            0 => Ok(Schema::V0),
            1 => Ok(Schema::V1),
            _ => Err(DecodeError::UnsupportedSchema { message_type, schema }),
        }
    }

    /// The largest number of params a tuple in this schema can carry.
    pub fn max_params(self) -> usize {
        match self {
            Schema::V0 => u8::MAX as usize,
            Schema::V1 => u32::MAX as usize,
        }
    }
}

/// The parameters of an EXEC/QUERY/EXEC_SQL/QUERY_SQL request.
///
/// Built from owned [`Value`]s (client side, no copy) or decoded as borrowed
/// [`ValueRef`]s (server side).
#[derive(Debug, Clone)]
pub struct Params<'a>(ParamsRepr<'a>);

#[derive(Debug, Clone)]
enum ParamsRepr<'a> {
    Values(&'a [Value]),
    Refs(&'a [ValueRef<'a>]),
    Vec(Vec<ValueRef<'a>>),
}

impl Default for Params<'_> {
    fn default() -> Self {
        Params::none()
    }
}

impl<'a> Params<'a> {
    /// No parameters.
    pub fn none() -> Self {
        Params(ParamsRepr::Values(&[]))
    }

    /// Borrow a slice of owned values.
    pub fn from_values(values: &'a [Value]) -> Self {
        Params(ParamsRepr::Values(values))
    }

    /// Borrow a slice of borrowed values.
    pub fn from_refs(values: &'a [ValueRef<'a>]) -> Self {
        Params(ParamsRepr::Refs(values))
    }

    /// Own a vector of borrowed values (what the decoder returns).
    pub fn from_vec(values: Vec<ValueRef<'a>>) -> Self {
        Params(ParamsRepr::Vec(values))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match &self.0 {
            ParamsRepr::Values(v) => v.len(),
            ParamsRepr::Refs(v) => v.len(),
            ParamsRepr::Vec(v) => v.len(),
        }
    }

    /// True if there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `index` (0-based).
    pub fn get(&self, index: usize) -> Option<ValueRef<'a>> {
        match &self.0 {
            ParamsRepr::Values(v) => v.get(index).map(Value::as_ref),
            ParamsRepr::Refs(v) => v.get(index).copied(),
            ParamsRepr::Vec(v) => v.get(index).copied(),
        }
    }

    /// Iterate over the values in order.
    pub fn iter(&self) -> ParamsIter<'_, 'a> {
        ParamsIter { params: self, next: 0 }
    }

    /// Copy into owned values.
    pub fn to_values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_owned()).collect()
    }
}

/// Iterator over [`Params`] values.
#[derive(Debug, Clone)]
pub struct ParamsIter<'p, 'a> {
    params: &'p Params<'a>,
    next: usize,
}

impl<'a> Iterator for ParamsIter<'_, 'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<ValueRef<'a>> {
        let v = self.params.get(self.next)?;
        self.next += 1;
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.params.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for ParamsIter<'_, '_> {}

impl PartialEq for Params<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
    }
}

impl<'a> From<&'a [Value]> for Params<'a> {
    fn from(v: &'a [Value]) -> Self {
        Params::from_values(v)
    }
}

impl<'a> From<&'a Vec<Value>> for Params<'a> {
    fn from(v: &'a Vec<Value>) -> Self {
        Params::from_values(v)
    }
}

impl<'a> From<Vec<ValueRef<'a>>> for Params<'a> {
    fn from(v: Vec<ValueRef<'a>>) -> Self {
        Params::from_vec(v)
    }
}

/// Append a params tuple in `schema`. Nothing is written for zero values.
pub fn encode_params(params: &Params<'_>, schema: Schema, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let n = params.len();
    if n == 0 {
        return Ok(());
    }
    if n > schema.max_params() {
        return Err(EncodeError::TooManyParams { count: n, max: schema.max_params() });
    }
    let start = out.len();
    let count_len = match schema {
        Schema::V0 => {
            out.push(n as u8);
            1
        }
        Schema::V1 => {
            out.extend_from_slice(&(n as u32).to_le_bytes());
            4
        }
    };
    out.extend(params.iter().map(|v| v.value_type().code()));
    pad(out, count_len + n);
    encode_values(params.iter(), start, out)
}

/// Decode a params tuple in `schema` that extends to the end of `r`.
/// No bytes left means zero values.
pub fn decode_params<'a>(r: &mut Reader<'a>, schema: Schema) -> Result<Vec<ValueRef<'a>>, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Vec::new());
    }
    let (n, count_len) = match schema {
        Schema::V0 => (usize::from(r.u8("params count")?), 1usize),
        Schema::V1 => {
            let n = r.u32("params count")?;
            let n =
                usize::try_from(n).map_err(|_| DecodeError::CountTooLarge { what: "params", count: u64::from(n) })?;
            (n, 4usize)
        }
    };
    let too_large = || DecodeError::CountTooLarge { what: "params", count: n as u64 };
    let header_len = count_len.checked_add(n).and_then(round_up8).ok_or_else(too_large)?;
    // Every value takes at least one word after the header.
    let min_len = n.checked_mul(8).and_then(|v| v.checked_add(header_len - count_len)).ok_or_else(too_large)?;
    if min_len > r.remaining() {
        return Err(too_large());
    }
    let types = r.bytes(n, "params types")?;
    r.align("params header padding")?;
    let mut values = Vec::with_capacity(n);
    for &code in types {
        let ty = ValueType::from_code(code)?;
        values.push(ValueRef::decode(ty, r)?);
    }
    Ok(values)
}

/// Number of bytes of a row-tuple header for `columns` columns.
pub fn row_header_len(columns: usize) -> usize {
    // ceil(n / 2) rounded up to a word; cannot overflow for any usize.
    (columns / 2 + columns % 2).div_ceil(8) * 8
}

/// Append a row tuple: 4-bit type slots, padding, then the values.
pub fn encode_row(values: &[ValueRef<'_>], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let header_len = row_header_len(values.len());
    out.resize(start + header_len, 0);
    for (i, v) in values.iter().enumerate() {
        let code = v.value_type().code();
        let byte = &mut out[start + i / 2];
        if i % 2 == 0 {
            *byte |= code;
        } else {
            *byte |= code << 4;
        }
    }
    encode_values(values.iter().copied(), start, out)
}

/// Append the values of a tuple whose header starts at `start`. On error the whole tuple is
/// removed again, so `out` is left as it was before the tuple.
fn encode_values<'v>(
    values: impl IntoIterator<Item = ValueRef<'v>>,
    start: usize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let result = values.into_iter().try_for_each(|v| v.encode(out));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Decode a row tuple of `columns` values from `r`, appending them to `out`.
pub fn decode_row_into<'a>(r: &mut Reader<'a>, columns: usize, out: &mut Vec<ValueRef<'a>>) -> Result<(), DecodeError> {
    let header = r.bytes(row_header_len(columns), "row header")?;
    // Each value takes at least a word: refuse impossible rows before reserving.
    r.check_count(columns as u64, "row values", 8)?;
    out.reserve(columns);
    for i in 0..columns {
        let byte = header.get(i / 2).copied().unwrap_or(0);
        let code = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        let ty = ValueType::from_code(code)?;
        out.push(ValueRef::decode(ty, r)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_schema0_bytes_are_exact() {
        let values = [Value::Integer(1)];
        let mut out = Vec::new();
        encode_params(&Params::from_values(&values), Schema::V0, &mut out).unwrap();
        assert_eq!(out, [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        assert_eq!(decode_params(&mut r, Schema::V0).unwrap(), vec![ValueRef::Integer(1)]);
        r.finish().unwrap();
    }

    #[test]
    fn params_schema1_bytes_are_exact() {
        let values = [Value::Text("a".into()), Value::Null, Value::Boolean(true), Value::Float(2.0)];
        let mut out = Vec::new();
        encode_params(&Params::from_values(&values), Schema::V1, &mut out).unwrap();
        let expected: Vec<u8> = [
            &[4, 0, 0, 0, 3, 5, 11, 2][..],
            b"a\0\0\0\0\0\0\0",
            &[0; 8],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &2.0f64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(out, expected);
        let mut r = Reader::new(&out);
        let back = decode_params(&mut r, Schema::V1).unwrap();
        assert_eq!(Params::from_vec(back), Params::from_values(&values));
    }

    #[test]
    fn params_header_grows_with_count() {
        // n = 7 -> 8 header bytes, n = 8 -> 16 header bytes (schema 0).
        for (n, header) in [(7usize, 8usize), (8, 16), (15, 16), (16, 24)] {
            let values = vec![Value::Null; n];
            let mut out = Vec::new();
            encode_params(&Params::from_values(&values), Schema::V0, &mut out).unwrap();
            assert_eq!(out.len(), header + 8 * n, "n = {n}");
            let mut r = Reader::new(&out);
            assert_eq!(decode_params(&mut r, Schema::V0).unwrap().len(), n);
        }
    }

    #[test]
    fn empty_params_are_omitted_and_explicit_zero_decodes() {
        let mut out = Vec::new();
        encode_params(&Params::none(), Schema::V0, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(decode_params(&mut Reader::new(&[]), Schema::V0).unwrap().is_empty());
        assert!(decode_params(&mut Reader::new(&[0; 8]), Schema::V0).unwrap().is_empty());
        assert!(decode_params(&mut Reader::new(&[0; 8]), Schema::V1).unwrap().is_empty());
    }

    #[test]
    fn too_many_params_for_schema0_is_an_error() {
        let values = vec![Value::Integer(0); 256];
        let mut out = vec![0xaa];
        assert_eq!(
            encode_params(&Params::from_values(&values), Schema::V0, &mut out),
            Err(EncodeError::TooManyParams { count: 256, max: 255 })
        );
        assert_eq!(out, [0xaa], "nothing written on error");
        encode_params(&Params::from_values(&values[..255]), Schema::V0, &mut out).unwrap();
        out.clear();
        encode_params(&Params::from_values(&values), Schema::V1, &mut out).unwrap();
        assert_eq!(decode_params(&mut Reader::new(&out), Schema::V1).unwrap().len(), 256);
    }

    #[test]
    fn params_with_bad_type_or_huge_count_fail() {
        let bad = [1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_params(&mut Reader::new(&bad), Schema::V0), Err(DecodeError::UnknownValueType(6)));
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 1, 1, 1];
        assert!(matches!(decode_params(&mut Reader::new(&huge), Schema::V1), Err(DecodeError::CountTooLarge { .. })));
    }

    #[test]
    fn seven_column_row_header_matches_the_spec() {
        let values = [
            ValueRef::Integer(1),
            ValueRef::Text("x"),
            ValueRef::Float(1.5),
            ValueRef::Blob(b"b"),
            ValueRef::Iso8601("2024-01-01"),
            ValueRef::Boolean(true),
            ValueRef::Null,
        ];
        let mut out = Vec::new();
        encode_row(&values, &mut out).unwrap();
        assert_eq!(out[..8], [0x31, 0x42, 0xba, 0x05, 0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        let mut back = Vec::new();
        decode_row_into(&mut r, 7, &mut back).unwrap();
        r.finish().unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn row_header_length() {
        assert_eq!(row_header_len(0), 0);
        assert_eq!(row_header_len(1), 8);
        assert_eq!(row_header_len(16), 8);
        assert_eq!(row_header_len(17), 16);
        assert_eq!(row_header_len(32), 16);
        assert_eq!(row_header_len(33), 24);
        assert_eq!(row_header_len(usize::MAX), (usize::MAX / 2 + 1).div_ceil(8) * 8);
    }
}
