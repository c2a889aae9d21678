//! 10,000 seeded random and mutated client frames against a live server: every malformed
//! request gets a FAILURE or a closed connection, every reply is well-formed, the server keeps
//! serving another client throughout, and nothing is written.
//!
//! Prints its seed; replay with `DQLITE_NODE_SEED=<seed>`; `DQLITE_NODE_FUZZ_CASES=<n>` changes
//! the number of frames (default 10,000).

mod server_support;

use std::time::Duration;

use dqlite_node::server::ServerConfig;
use dqlite_node::wire::{
    header, DbId, DecodeContext, Header, NodeInfoFormat, Params, Request, Response, Schema, StmtId, Value, ValueRef,
};
use server_support::{RawClient, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_REQUEST: usize = 64 << 10;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Valid read-only requests to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let p1 = [Value::Integer(1)];
    let many: Vec<Value> =
        (0..20).map(|i| if i % 2 == 0 { Value::Text(format!("v{i}")) } else { Value::Float(i as f64) }).collect();
    let reqs = vec![
        Request::Leader,
        Request::Client { id: 0 },
        Request::Open { name: "fuzz.db", flags: 0, vfs: "volatile" },
        Request::Prepare { db: DbId(0), sql: "SELECT x FROM t WHERE x > ?", schema: Schema::V0 },
        Request::Prepare { db: DbId(0), sql: "SELECT x FROM t; SELECT 2", schema: Schema::V1 },
        Request::Query { db: DbId(0), stmt: StmtId(0), params: Params::from_values(&p1), schema: Schema::V0 },
        Request::QuerySql {
            db: DbId(0),
            sql: "SELECT x, ? FROM t ORDER BY x",
            params: Params::from_values(&p1),
            schema: Schema::V0,
        },
        Request::QuerySql {
            db: DbId(0),
            sql: "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
            params: Params::from_values(&many),
            schema: Schema::V1,
        },
        Request::Finalize { db: DbId(0), stmt: StmtId(0) },
        Request::Interrupt { db: DbId(0) },
        Request::Cluster { format: NodeInfoFormat::V1 },
        Request::Describe { format: 0 },
        Request::Dump { name: "fuzz.db" },
    ];
    reqs.iter().map(|r| r.to_bytes().unwrap()).collect()
}

/// How the server will see `bytes`: its complete requests in order, each valid or not, and
/// whether a valid one could change state (such cases are not sent).
fn classify(bytes: &[u8]) -> (usize, usize, bool) {
    let (mut valid, mut malformed, mut writes) = (0, 0, false);
    let mut rest = bytes;
    loop {
        match header::parse(rest, MAX_REQUEST) {
            Ok(Some((msg, len))) => {
                match Request::decode_message(msg) {
                    Ok(req) => {
                        valid += 1;
                        writes |= match req {
                            Request::Open { name, .. } => name != "fuzz.db",
                            Request::Exec { .. }
                            | Request::ExecSql { .. }
                            | Request::Add { .. }
                            | Request::Assign { .. }
                            | Request::Remove { .. }
                            | Request::Transfer { .. }
                            | Request::Weight { .. } => true,
                            _ => false,
                        };
                    }
                    Err(_) => malformed += 1,
                }
                rest = &rest[len..];
            }
            Ok(None) => return (valid, malformed, writes),
            Err(_) => return (valid, malformed + 1, writes), // oversized: FAILURE then close
        }
    }
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let words = rng.below(12) as u32;
    let ty = rng.below(24) as u8;
    let schema = if rng.below(4) == 0 { rng.below(256) as u8 } else { rng.below(2) as u8 };
    let mut out = Header::new(ty, schema, words).encode().to_vec();
    let body_len = if rng.below(8) == 0 { rng.below(words as u64 * 8 + 1) } else { words as u64 * 8 };
    for _ in 0..body_len {
        out.push(rng.next() as u8);
    }
    out
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut f = corpus[rng.below(corpus.len() as u64) as usize].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 | 1 => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] = rng.next() as u8;
            }
            3 if f.len() >= 8 => {
                // Header fields: words, type, schema.
                let i = rng.below(6) as usize;
                f[i] = rng.next() as u8;
            }
            4 => {
                let cut = rng.below(f.len() as u64 + 1) as usize;
                f.truncate(cut.max(1));
            }
            5 if f.len() >= 8 => {
                // Grow the announced size past the limit.
                let words = (MAX_REQUEST / 8 + 1 + rng.below(1 << 20) as usize) as u32;
                f[0..4].copy_from_slice(&words.to_le_bytes());
            }
            _ => {}
        }
    }
    f
}

/// One case on a fresh connection: optional valid OPEN, the frame, half-close, read to EOF.
async fn run_case(
    addr: std::net::SocketAddr,
    open_first: bool,
    frame: &[u8],
    all_malformed: bool,
) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut out = 1u64.to_le_bytes().to_vec();
    if open_first {
        out.extend(Request::Open { name: "fuzz.db", flags: 0, vfs: "volatile" }.to_bytes().unwrap());
    }
    out.extend_from_slice(frame);
    // The server may close before reading everything (oversized): a failed write is fine.
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    match read {
        Err(_) => return Err("no reply and no close within 10 s".into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => return Err(format!("read: {e}")),
        Ok(Ok(_)) => {}
    }
    let mut rest = &got[..];
    let mut index = 0;
    while !rest.is_empty() {
        let (msg, len) = header::parse(rest, 1 << 30)
            .map_err(|e| format!("reply {index} unframed: {e}"))?
            .ok_or_else(|| format!("reply {index} truncated"))?;
        // SERVERS depends on the format asked for: accept either.
        let v0 = DecodeContext { node_info_format: NodeInfoFormat::V0, ..Default::default() };
        let resp = Response::decode_message(msg, &DecodeContext::default())
            .or_else(|_| Response::decode_message(msg, &v0))
            .map_err(|e| format!("reply {index}: {e}"))?;
        let is_open_reply = open_first && index == 0;
        if is_open_reply {
            if resp != (Response::Db { id: DbId(0) }) {
                return Err(format!("OPEN got {resp:?}"));
            }
        } else if all_malformed && !matches!(resp, Response::Failure { .. }) {
            return Err(format!("malformed request answered with {:?}", resp.response_type()));
        }
        rest = &rest[len..];
        index += 1;
    }
    Ok(())
}

async fn table_state(c: &mut RawClient) -> Vec<i64> {
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT x FROM t ORDER BY rowid",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    match f.decode() {
        Response::Rows(b) => b
            .rows
            .iter()
            .map(|r| match r[0] {
                ValueRef::Integer(x) => x,
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("control query failed: {other:?}"),
    }
}

fn dir_listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.retain(|n| !n.ends_with("-shm") && !n.ends_with("-wal"));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_frames_never_hurt_the_server() {
    let seed = std::env::var("DQLITE_NODE_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let cases: usize = std::env::var("DQLITE_NODE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    eprintln!("server fuzz: seed {seed} (replay with DQLITE_NODE_SEED={seed}), {cases} frames");

    let s = TestServer::start_with(ServerConfig { max_request_bytes: MAX_REQUEST, ..Default::default() }).await;
    let mut control = RawClient::connect(s.addr).await;
    control.request(&Request::Open { name: "fuzz.db", flags: 0, vfs: "volatile" }).await;
    let setup = control
        .request(&Request::ExecSql {
            db: DbId(0),
            sql: "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3), (5), (8)",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert!(matches!(setup.decode(), Response::ExecResult { .. }));
    let before = table_state(&mut control).await;
    let files_before = dir_listing(s.dir.path());
    let members_before = s.cluster.0.members.lock().unwrap().clone();

    let corpus = corpus();
    let mut rng = Rng(seed);
    let (mut sent, mut malformed_cases, mut skipped) = (0usize, 0usize, 0usize);
    let mut batch = Vec::new();
    while sent < cases {
        let frame = if rng.below(3) == 0 { random_frame(&mut rng) } else { mutate(&mut rng, &corpus) };
        let (valid, malformed, writes) = classify(&frame);
        if writes {
            skipped += 1;
            continue;
        }
        let all_malformed = valid == 0 && malformed > 0;
        malformed_cases += usize::from(all_malformed);
        let open_first = rng.below(2) == 0;
        batch.push((sent, open_first, frame, all_malformed));
        sent += 1;
        if batch.len() == 8 || sent == cases {
            let addr = s.addr;
            let runs = batch.drain(..).map(|(i, open, frame, bad)| async move {
                run_case(addr, open, &frame, bad).await.map_err(|e| format!("case {i} (frame {frame:02x?}): {e}"))
            });
            for r in futures_util::future::join_all(runs).await {
                if let Err(e) = r {
                    panic!("seed {seed}: {e}");
                }
            }
            if sent % 1000 == 0 {
                // Another client is served all along.
                assert_eq!(table_state(&mut control).await, before, "seed {seed}: after {sent} frames");
            }
        }
    }
    assert_eq!(table_state(&mut control).await, before, "seed {seed}: nothing was written");
    assert_eq!(dir_listing(s.dir.path()), files_before, "seed {seed}: no database file was created");
    assert_eq!(*s.cluster.0.members.lock().unwrap(), members_before);
    eprintln!("server fuzz: {sent} frames, {malformed_cases} wholly malformed, {skipped} valid writes skipped");
    assert!(malformed_cases > sent / 2, "the generator produces mostly malformed frames ({malformed_cases}/{sent})");
}
