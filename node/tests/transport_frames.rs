//! Peer-frame decoding never panics on random or mutated bytes, and random messages round-trip.
//!
//! Every test prints its seed; replay with `DQLITE_NODE_SEED=<seed>`; more cases with
//! `DQLITE_NODE_PROPTEST_CASES=<n>`.

use dqlite_node::raft::{
    AppendEntries, Entry, EntryKind, Heartbeat, InstallSnapshot, LogIndex, Message, MessageBody, NodeId, SnapshotMeta,
    Term, VoteRequest,
};
use dqlite_node::transport::frame::{decode_frame, encode_frame, Hello, HelloReply};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(name: &str, default_cases: u32) -> Config {
    let seed = std::env::var("DQLITE_NODE_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        now ^ (std::process::id() as u64).rotate_left(32)
    });
    let cases = std::env::var("DQLITE_NODE_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
    eprintln!("{name}: seed {seed} (replay with DQLITE_NODE_SEED={seed}), {cases} cases");
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

fn message() -> impl Strategy<Value = Message> {
    let body = prop_oneof![
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(i, t, transfer)| MessageBody::PreVote(VoteRequest {
            last_log_index: LogIndex(i),
            last_log_term: Term(t),
            transfer
        })),
        (any::<u64>(), any::<u64>(), proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..5))
            .prop_map(|(i, t, datas)| MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(i),
                prev_log_term: Term(t),
                entries: datas
                    .into_iter()
                    .enumerate()
                    .map(|(k, data)| Entry {
                        term: Term(t),
                        index: LogIndex(i.wrapping_add(k as u64 + 1)),
                        kind: EntryKind::Command,
                        data
                    })
                    .collect(),
                leader_commit: LogIndex(i),
            })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, r, l)| MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(c),
            read_seq: r,
            leader_commit: LogIndex(l)
        })),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..128), any::<bool>()).prop_map(|(o, data, done)| {
            MessageBody::InstallSnapshot(InstallSnapshot {
                meta: SnapshotMeta {
                    index: LogIndex(o),
                    term: Term(1),
                    configuration: Default::default(),
                    configuration_index: LogIndex(0),
                },
                offset: o,
                data,
                done,
            })
        }),
        Just(MessageBody::TimeoutNow),
    ];
    (1u64..10, 1u64..10, any::<u64>(), body).prop_map(|(f, t, term, body)| Message {
        from: NodeId(f),
        to: NodeId(t),
        term: Term(term),
        body,
    })
}

#[test]
fn frames_round_trip() {
    proptest!(config("frames_round_trip", 256), |(msg in message())| {
        let mut buf = Vec::new();
        encode_frame(&msg, 1 << 20, &mut buf).unwrap();
        let (back, used) = decode_frame(&buf, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(used, buf.len());
    });
}

#[test]
fn random_bytes_never_panic() {
    proptest!(config("random_bytes_never_panic", 2048), |(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
        let _ = decode_frame(&bytes, 4096);
        let _ = Hello::decode(&bytes);
        let _ = HelloReply::decode(&bytes);
    });
}

#[test]
fn mutated_frames_never_panic() {
    proptest!(config("mutated_frames_never_panic", 2048), |(
        msg in message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        fix_crc in any::<bool>(),
    )| {
        let mut buf = Vec::new();
        encode_frame(&msg, 1 << 20, &mut buf).unwrap();
        for (at, x) in flips {
            let i = at % buf.len();
            buf[i] ^= x;
        }
        if fix_crc && buf.len() >= 8 {
            // Re-checksum so the mutation reaches the postcard decoder.
            let crc = crc32c::crc32c(&buf[8..]);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        let cut = cut % (buf.len() + 1);
        let _ = decode_frame(&buf[..cut], 1 << 20);
        let _ = decode_frame(&buf, 1 << 20);
    });
}

/// Entry and snapshot payloads are serialized as byte strings (fast) rather than as sequences
/// of `u8` (one serde call per byte); for postcard both give the same bytes, so format version
/// 1 is unchanged: a mirror type with a plain `Vec<u8>` encodes identically.
#[test]
fn byte_payloads_keep_the_format_1_encoding() {
    #[derive(serde::Serialize)]
    struct PlainEntry {
        term: Term,
        index: LogIndex,
        kind: EntryKind,
        data: Vec<u8>,
    }
    for len in [0usize, 1, 127, 128, 300, 70_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let entry = Entry { term: Term(3), index: LogIndex(9), kind: EntryKind::Command, data: data.clone() };
        let plain = PlainEntry { term: Term(3), index: LogIndex(9), kind: EntryKind::Command, data };
        let ours = postcard::to_stdvec(&entry).unwrap();
        assert_eq!(ours, postcard::to_stdvec(&plain).unwrap(), "{len} bytes");
        assert_eq!(postcard::from_bytes::<Entry>(&ours).unwrap(), entry);
    }
}
