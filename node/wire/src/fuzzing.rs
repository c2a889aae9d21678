//! Drives every decoder entry point with arbitrary bytes (shared by the property tests
//! and the `cargo fuzz` target in `node/wire/fuzz`). Not part of the stable API.
//!
//! Decoders must return errors, never panic. Whatever decodes must also re-encode, and
//! the re-encoded form must be a fixed point: `encode(decode(encode(decode(x))))` equals
//! `encode(decode(x))` byte for byte (bytes, not values, so that NaN floats compare
//! equal). A broken invariant panics, which is what the fuzzer reports.

use crate::buf::Reader;
use crate::handshake::ProtocolVersion;
use crate::header::{check, parse, FrameStatus, Header, HEADER_LEN};
use crate::request::{NodeInfoFormat, Request};
use crate::response::{DecodeContext, Response};
use crate::rows::{Rows, RowsBatch, RowsCursor, RowsStep, RowsWriter};
use crate::tuple::{decode_params, decode_row_into, encode_params, encode_row, Params, Schema};
use crate::value::{ValueRef, ValueType};

const CONTEXTS: [DecodeContext; 4] = [
    DecodeContext { version: ProtocolVersion::V1, node_info_format: NodeInfoFormat::V1 },
    DecodeContext { version: ProtocolVersion::V1, node_info_format: NodeInfoFormat::V0 },
    DecodeContext { version: ProtocolVersion::Legacy, node_info_format: NodeInfoFormat::V1 },
    DecodeContext { version: ProtocolVersion::Legacy, node_info_format: NodeInfoFormat::V0 },
];

/// Run `data` through every decoder and check the round-trip invariants.
pub fn exercise_decoders(data: &[u8]) {
    let _ = ProtocolVersion::decode(data);
    frames(data);
    // Treat the first 8 bytes as a header and the rest as its body, whatever `words` says,
    // so body decoders are reached without the fuzzer having to guess the length.
    if let Ok(header) = Header::decode(data) {
        let body = data.get(HEADER_LEN..).unwrap_or(&[]);
        request(&header, body);
        for ctx in &CONTEXTS {
            response(&header, body, ctx);
        }
    }
    rows(data);
    params(data);
    row_tuple(data);
    values(data);
}

fn frames(data: &[u8]) {
    for max in [0usize, 64, 4096, usize::MAX] {
        let status = check(data, max);
        let parsed = parse(data, max);
        match (status, parsed) {
            (Ok(FrameStatus::Complete { len }), Ok(Some((msg, used)))) => {
                assert_eq!(len, used);
                assert!(used <= data.len());
                assert_eq!(msg.body.len() + HEADER_LEN, used);
                let _ = Request::decode_message(msg);
                for ctx in &CONTEXTS {
                    let _ = Response::decode_message(msg, ctx);
                }
            }
            (Ok(FrameStatus::Incomplete { needed }), Ok(None)) => assert!(needed > 0),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (s, p) => panic!("check and parse disagree: {s:?} vs {:?}", p.map(|o| o.map(|(_, n)| n))),
        }
    }
}

fn request(header: &Header, body: &[u8]) {
    let Ok(req) = Request::decode(header, body) else {
        return;
    };
    let first = req.to_bytes().expect("a decoded request re-encodes");
    let h2 = Header::decode(&first).expect("header");
    let again = Request::decode(&h2, &first[HEADER_LEN..]).expect("a re-encoded request decodes");
    let second = again.to_bytes().expect("re-encodes twice");
    assert_eq!(first, second, "request encoding is not a fixed point: {req:?}");
}

fn response(header: &Header, body: &[u8], ctx: &DecodeContext) {
    let Ok(resp) = Response::decode(header, body, ctx) else {
        return;
    };
    let first = resp.to_bytes().expect("a decoded response re-encodes");
    let h2 = Header::decode(&first).expect("header");
    let again = Response::decode(&h2, &first[HEADER_LEN..], ctx).expect("a re-encoded response decodes");
    let second = again.to_bytes().expect("re-encodes twice");
    assert_eq!(first, second, "response encoding is not a fixed point: {resp:?}");
}

fn rows(data: &[u8]) {
    // Borrowed iterator; stops after the first error.
    if let Ok(rows) = Rows::new(data) {
        for row in rows.take(data.len() + 1) {
            if row.is_err() {
                break;
            }
        }
    }
    // Detached cursor, as the driver uses it.
    if let Ok(mut cursor) = RowsCursor::new(data) {
        let _ = cursor.column_names(data);
        let mut out = Vec::new();
        for _ in 0..=data.len() {
            match cursor.next_row(data, &mut out) {
                Ok(RowsStep::Row) => assert_eq!(out.len(), cursor.column_count()),
                Ok(RowsStep::End(_)) | Err(_) => break,
            }
        }
    }
    // Whole batch: RowsBatch::encode and RowsWriter must agree.
    if let Ok(batch) = RowsBatch::decode(data) {
        let mut a = Vec::new();
        batch.encode(&mut a).expect("a decoded batch re-encodes");
        let mut b = Vec::new();
        let mut w = RowsWriter::begin(&mut b, &batch.columns, usize::MAX).expect("begin");
        for row in &batch.rows {
            w.push_row(row).expect("push");
        }
        w.finish(batch.end).expect("finish");
        assert_eq!(a, b, "RowsWriter and RowsBatch::encode disagree");
        let again = RowsBatch::decode(&a[HEADER_LEN..]).expect("a re-encoded batch decodes");
        let mut c = Vec::new();
        again.encode(&mut c).expect("re-encodes twice");
        assert_eq!(a, c, "rows encoding is not a fixed point");
    }
}

fn params(data: &[u8]) {
    for schema in [Schema::V0, Schema::V1] {
        let mut r = Reader::new(data);
        if let Ok(values) = decode_params(&mut r, schema) {
            let mut first = Vec::new();
            encode_params(&Params::from_vec(values), schema, &mut first).expect("decoded params re-encode");
            let back = decode_params(&mut Reader::new(&first), schema).expect("re-encoded params decode");
            let mut second = Vec::new();
            encode_params(&Params::from_vec(back), schema, &mut second).expect("re-encode twice");
            assert_eq!(first, second, "params encoding is not a fixed point");
        }
    }
}

fn row_tuple(data: &[u8]) {
    let Some((&columns, rest)) = data.split_first() else {
        return;
    };
    let mut r = Reader::new(rest);
    let mut out = Vec::new();
    if decode_row_into(&mut r, usize::from(columns), &mut out).is_ok() {
        assert_eq!(out.len(), usize::from(columns));
        let mut first = Vec::new();
        encode_row(&out, &mut first).expect("a decoded row re-encodes");
        let mut back = Vec::new();
        decode_row_into(&mut Reader::new(&first), out.len(), &mut back).expect("re-encoded row decodes");
        let mut second = Vec::new();
        encode_row(&back, &mut second).expect("re-encode twice");
        assert_eq!(first, second, "row encoding is not a fixed point");
    }
}

fn values(data: &[u8]) {
    for code in 0..=15u8 {
        if let Ok(ty) = ValueType::from_code(code) {
            let mut r = Reader::new(data);
            if let Ok(v) = ValueRef::decode(ty, &mut r) {
                assert_eq!(v.value_type(), ty);
                let mut out = Vec::new();
                v.encode(&mut out).expect("a decoded value re-encodes");
                assert_eq!(out.len(), v.encoded_len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn every_valid_message_passes_the_fuzz_invariants() {
        let values = vec![Value::Float(f64::NAN), Value::Text("t".into()), Value::Boolean(true)];
        for req in crate::request::tests::all_requests(&values) {
            exercise_decoders(&req.to_bytes().unwrap());
        }
        for (resp, _) in crate::response::tests::all_responses() {
            let bytes = resp.to_bytes().unwrap();
            exercise_decoders(&bytes);
            exercise_decoders(&bytes[HEADER_LEN..]);
        }
        exercise_decoders(&[]);
        exercise_decoders(&[0xff; 64]);
    }

    /// With `DQLITE_WIRE_WRITE_CORPUS=<dir>`, write every valid message (and every
    /// response body) into `<dir>` as a seed corpus for `cargo fuzz run decode <dir>`.
    #[test]
    fn write_seed_corpus_when_asked() {
        let Some(dir) = std::env::var_os("DQLITE_WIRE_WRITE_CORPUS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let values = vec![Value::Integer(1), Value::Text("t".into()), Value::Blob(vec![1, 2])];
        let mut n = 0;
        let mut write = |bytes: &[u8]| {
            std::fs::write(dir.join(format!("seed-{n:03}")), bytes).unwrap();
            n += 1;
        };
        for req in crate::request::tests::all_requests(&values) {
            write(&req.to_bytes().unwrap());
        }
        for (resp, _) in crate::response::tests::all_responses() {
            let bytes = resp.to_bytes().unwrap();
            write(&bytes);
            write(&bytes[HEADER_LEN..]);
        }
    }
}
