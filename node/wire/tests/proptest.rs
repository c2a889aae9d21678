//! Property tests: decoders never panic on random or mutated bytes, and random values,
//! tuples, requests and ROWS streams round-trip.
//!
//! Every test prints its seed; replay a failure with `DQLITE_WIRE_SEED=<seed>`.
//! `DQLITE_WIRE_PROPTEST_CASES=<n>` raises the number of cases (default keeps
//! `cargo test` fast).

use dqlite_wire::buf::Reader;
use dqlite_wire::fuzzing::exercise_decoders;
use dqlite_wire::rows::{RowsCursor, RowsStep, RowsWriter};
use dqlite_wire::tuple::{decode_params, decode_row_into, encode_params, encode_row};
use dqlite_wire::{header, DbId, Params, Request, Response, RowsEnd, Schema, StmtId, Value, ValueRef, HEADER_LEN};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(name: &str, default_cases: u32) -> Config {
    let seed = std::env::var("DQLITE_WIRE_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        now ^ (std::process::id() as u64).rotate_left(32)
    });
    let cases = std::env::var("DQLITE_WIRE_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
    eprintln!("{name}: seed {seed} (replay with DQLITE_WIRE_SEED={seed}), {cases} cases");
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        "[^\u{0}]{0,20}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Blob),
        Just(Value::Null),
        any::<i64>().prop_map(Value::UnixTime),
        "[^\u{0}]{0,20}".prop_map(Value::Iso8601),
        any::<bool>().prop_map(Value::Boolean),
    ]
}

/// Values compare with floats by bit pattern, so NaN round-trips count as equal.
fn same(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Float(x), ValueRef::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn same_all(a: &[Value], b: &[ValueRef<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x.as_ref(), *y))
}

/// A valid message of a random kind, for mutation.
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(value(), 0..10), "[^\u{0}]{0,30}", 0u8..4).prop_map(|(values, sql, kind)| {
        let params = Params::from_values(&values);
        let bytes = match kind {
            0 => Request::QuerySql { db: DbId(0), sql: &sql, params, schema: Schema::V0 }.to_bytes(),
            1 => Request::Exec { db: DbId(0), stmt: StmtId(1), params, schema: Schema::V1 }.to_bytes(),
            2 => Response::Failure { code: 1, message: &sql }.to_bytes(),
            _ => {
                let refs: Vec<ValueRef<'_>> = values.iter().map(Value::as_ref).collect();
                let names: Vec<&str> = (0..refs.len()).map(|_| sql.as_str()).collect();
                let mut out = Vec::new();
                let mut w = RowsWriter::begin(&mut out, &names, 4096).expect("begin");
                w.push_row(&refs).expect("row");
                w.push_row(&refs).expect("row");
                w.finish(RowsEnd::Done).expect("finish");
                Ok(out)
            }
        };
        bytes.expect("valid message encodes")
    })
}

proptest! {
    #![proptest_config(config("random_bytes", 1000))]

    #[test]
    fn decoders_never_panic_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        exercise_decoders(&data);
    }
}

proptest! {
    #![proptest_config(config("mutated_messages", 500))]

    #[test]
    fn decoders_never_panic_on_mutated_messages(
        msg in valid_message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let mut msg = msg;
        exercise_decoders(&msg);
        for (at, byte) in flips {
            let len = msg.len();
            if len > 0 {
                msg[at % len] = byte;
            }
        }
        exercise_decoders(&msg);
        let cut = cut % (msg.len() + 1);
        exercise_decoders(&msg[..cut]);
        if msg.len() > HEADER_LEN {
            exercise_decoders(&msg[HEADER_LEN..]);
        }
    }
}

proptest! {
    #![proptest_config(config("round_trips", 200))]

    #[test]
    fn params_round_trip(values in proptest::collection::vec(value(), 0..300)) {
        for schema in [Schema::V0, Schema::V1] {
            let mut out = Vec::new();
            let result = encode_params(&Params::from_values(&values), schema, &mut out);
            if schema == Schema::V0 && values.len() > 255 {
                prop_assert!(result.is_err());
                prop_assert!(out.is_empty());
                continue;
            }
            prop_assert!(result.is_ok());
            let mut r = Reader::new(&out);
            let back = decode_params(&mut r, schema).unwrap();
            prop_assert!(r.finish().is_ok());
            prop_assert!(same_all(&values, &back));
        }
    }

    #[test]
    fn row_round_trip(values in proptest::collection::vec(value(), 0..40)) {
        let refs: Vec<ValueRef<'_>> = values.iter().map(Value::as_ref).collect();
        let mut out = Vec::new();
        encode_row(&refs, &mut out).unwrap();
        prop_assert_eq!(out.len(), RowsWriter::row_bytes(&refs));
        let mut r = Reader::new(&out);
        let mut back = Vec::new();
        decode_row_into(&mut r, values.len(), &mut back).unwrap();
        prop_assert!(r.finish().is_ok());
        prop_assert!(same_all(&values, &back));
    }

    #[test]
    fn query_sql_round_trip(
        values in proptest::collection::vec(value(), 0..20),
        sql in "[^\u{0}]{0,60}",
        db in any::<u32>(),
        v1 in any::<bool>(),
    ) {
        let schema = if v1 { Schema::V1 } else { Schema::V0 };
        let req = Request::QuerySql { db: DbId(db), sql: &sql, params: Params::from_values(&values), schema };
        let bytes = req.to_bytes().unwrap();
        let (msg, used) = header::parse(&bytes, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        match Request::decode_message(msg).unwrap() {
            Request::QuerySql { db: d, sql: s, params, schema: sc } => {
                prop_assert_eq!(d, DbId(db));
                prop_assert_eq!(s, sql.as_str());
                prop_assert_eq!(sc, schema);
                let back: Vec<ValueRef<'_>> = params.iter().collect();
                prop_assert!(same_all(&values, &back));
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    /// A server splits a result into batches with RowsWriter; a client streams them back
    /// with RowsCursor and sees every row once, in order, PART on all but the last batch.
    #[test]
    fn rows_stream_round_trip(
        columns in 1usize..6,
        rows in proptest::collection::vec(proptest::collection::vec(value(), 6), 0..120),
        budget in 64usize..2048,
    ) {
        let rows: Vec<Vec<Value>> = rows.into_iter().map(|mut r| { r.truncate(columns); r }).collect();
        let names: Vec<String> = (0..columns).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Server side.
        let mut wire = Vec::new();
        let mut pending = rows.iter().peekable();
        loop {
            let mut w = RowsWriter::begin(&mut wire, &names, budget).unwrap();
            while !w.is_full() {
                match pending.next() {
                    Some(row) => {
                        let refs: Vec<ValueRef<'_>> = row.iter().map(Value::as_ref).collect();
                        w.push_row(&refs).unwrap();
                    }
                    None => break,
                }
            }
            if pending.peek().is_some() {
                w.finish(RowsEnd::Part).unwrap();
            } else {
                w.finish(RowsEnd::Done).unwrap();
                break;
            }
        }
        // Client side, message by message.
        let mut buf = &wire[..];
        let mut got: Vec<Vec<Value>> = Vec::new();
        let mut out = Vec::new();
        loop {
            let (msg, used) = header::parse(buf, 1 << 20).unwrap().unwrap();
            let mut cursor = RowsCursor::new(msg.body).unwrap();
            prop_assert_eq!(cursor.column_names(msg.body).unwrap(), names.clone());
            let end = loop {
                match cursor.next_row(msg.body, &mut out).unwrap() {
                    RowsStep::Row => got.push(out.iter().map(|v| v.to_owned()).collect()),
                    RowsStep::End(end) => break end,
                }
            };
            buf = &buf[used..];
            if end == RowsEnd::Done {
                break;
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), rows.len());
        for (a, b) in rows.iter().zip(&got) {
            let b: Vec<ValueRef<'_>> = b.iter().map(Value::as_ref).collect();
            prop_assert!(same_all(a, &b));
        }
    }
}
