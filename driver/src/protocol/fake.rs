//! A scriptable in-process dqlite node for unit tests, built from dqlite-wire's server-side
//! encoders. It understands just enough SQL to drive the client: `QUERY_SQL`/`QUERY` of
//! `SELECT <n>` streams `n` integer rows in batches; anything else is treated as a statement
//! without result columns (QUERY → `FAILURE 1 "not an error"`, EXEC → RESULT).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dqlite_wire::header;
use dqlite_wire::value::ValueRef;
use dqlite_wire::{DbId, Request, Response, RowsBatch, RowsEnd, StmtId, WireNodeId, DEFAULT_MAX_BODY_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Rows per ROWS message.
pub(crate) const BATCH_ROWS: usize = 10;

/// What the node does when it receives a request whose description matches.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Reply with this FAILURE instead of executing.
    Fail(u64, &'static str),
    /// Close the connection without replying.
    Close,
    /// Keep the connection open and never reply (a vanished host).
    Hang,
}

#[derive(Default)]
pub(crate) struct FakeState {
    /// Address reported by LEADER ("" = no leader known).
    pub leader: Mutex<String>,
    /// Whether OPEN/PREPARE/EXEC/QUERY are served (else NOT_LEADER).
    pub is_leader: AtomicBool,
    /// Description of every request received, in order (e.g. `EXEC_SQL COMMIT`).
    pub log: Mutex<Vec<String>>,
    /// Faults keyed by a request description prefix; each fires once.
    pub faults: Mutex<Vec<(String, Fault)>>,
    /// Number of connections accepted.
    pub accepted: AtomicU64,
    /// Signals connection tasks to close their sockets.
    pub kill: Notify,
    /// LEADER requests answered with "" before answering with `leader`.
    pub leader_unknown_for: AtomicU64,
    /// Answer PREPARE schema 1 with STMT schema 1 (a dqlite >= 1.15 server); else STMT
    /// schema 0 (what dqlite 1.11 does: it ignores the schema byte).
    pub params32: AtomicBool,
}

pub(crate) struct FakeNode {
    pub addr: String,
    pub state: Arc<FakeState>,
    task: JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
        self.state.kill.notify_waiters();
    }
}

impl FakeNode {
    /// Start a node that is its own leader.
    pub async fn leader() -> FakeNode {
        let node = FakeNode::start().await;
        node.set_leader(&node.addr.clone(), true);
        node
    }

    /// Start a node that knows no leader.
    pub async fn start() -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(FakeState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let kill = st.kill.notified();
                    tokio::select! {
                        _ = serve(sock, st.clone()) => {}
                        _ = kill => {}
                    }
                });
            }
        });
        FakeNode { addr, state, task }
    }

    pub fn set_leader(&self, leader: &str, is_leader: bool) {
        *self.state.leader.lock().unwrap() = leader.to_owned();
        self.state.is_leader.store(is_leader, Ordering::SeqCst);
    }

    pub fn fault(&self, prefix: &str, fault: Fault) {
        self.state.faults.lock().unwrap().push((prefix.to_owned(), fault));
    }

    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Close every open connection (as a SIGKILLed process would).
    pub fn kill_connections(&self) {
        self.state.kill.notify_waiters();
    }
}

fn describe(req: &Request<'_>) -> String {
    match req {
        Request::Leader => "LEADER".into(),
        Request::Client { .. } => "CLIENT".into(),
        Request::Open { name, .. } => format!("OPEN {name}"),
        Request::Prepare { sql, schema, .. } => format!("PREPARE/{} {sql}", schema.code()),
        Request::Exec { stmt, params, .. } => format!("EXEC #{} ({})", stmt.0, params.len()),
        Request::Query { stmt, params, .. } => format!("QUERY #{} ({})", stmt.0, params.len()),
        Request::Finalize { stmt, .. } => format!("FINALIZE #{}", stmt.0),
        Request::ExecSql { sql, .. } => format!("EXEC_SQL {sql}"),
        Request::QuerySql { sql, .. } => format!("QUERY_SQL {sql}"),
        Request::Interrupt { .. } => "INTERRUPT".into(),
        other => format!("{:?}", other.request_type()),
    }
}

/// `SELECT <n> ...` → Some(n).
fn row_count(sql: &str) -> Option<usize> {
    sql.strip_prefix("SELECT ")?.split_whitespace().next()?.parse().ok()
}

async fn send(sock: &mut TcpStream, resp: &Response<'_>) -> bool {
    let bytes = resp.to_bytes().expect("encode response");
    sock.write_all(&bytes).await.is_ok()
}

async fn send_rows(sock: &mut TcpStream, n: usize) -> bool {
    let total_batches = n.div_ceil(BATCH_ROWS).max(1);
    for b in 0..total_batches {
        let rows: Vec<Vec<ValueRef<'_>>> =
            (b * BATCH_ROWS..((b + 1) * BATCH_ROWS).min(n)).map(|i| vec![ValueRef::Integer(i as i64)]).collect();
        let batch = RowsBatch {
            columns: vec!["n"],
            rows,
            end: if b + 1 == total_batches { RowsEnd::Done } else { RowsEnd::Part },
        };
        if !send(sock, &Response::Rows(batch)).await {
            return false;
        }
    }
    true
}

async fn serve(mut sock: TcpStream, st: Arc<FakeState>) {
    let mut hs = [0u8; 8];
    if sock.read_exact(&mut hs).await.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut stmts: Vec<String> = Vec::new();
    loop {
        let (desc, reply): (String, Vec<Response<'static>>) = loop {
            match header::parse(&buf, DEFAULT_MAX_BODY_BYTES) {
                Ok(Some((msg, used))) => {
                    let req = Request::decode_message(msg).expect("client sent a valid request");
                    let desc = describe(&req);
                    let out = handle(&req, &st, &mut stmts);
                    buf.drain(..used);
                    break (desc, out);
                }
                Ok(None) => {
                    let mut chunk = [0u8; 4096];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                Err(e) => panic!("client sent a malformed frame: {e}"),
            }
        };
        st.log.lock().unwrap().push(desc.clone());
        let fault = {
            let mut faults = st.faults.lock().unwrap();
            let pos = faults.iter().position(|(p, _)| desc.starts_with(p.as_str()));
            pos.map(|i| faults.remove(i).1)
        };
        match fault {
            Some(Fault::Close) => return,
            Some(Fault::Hang) => std::future::pending::<()>().await,
            Some(Fault::Fail(code, message)) => {
                if !send(&mut sock, &Response::Failure { code, message }).await {
                    return;
                }
                continue;
            }
            None => {}
        }
        // Rows are produced here (they need the SQL or statement).
        if let Some(n) = desc.strip_prefix("QUERY_SQL ").and_then(row_count).or_else(|| {
            let id: usize = desc.strip_prefix("QUERY #")?.split(' ').next()?.parse().ok()?;
            row_count(stmts.get(id)?)
        }) {
            if st.is_leader.load(Ordering::SeqCst) {
                if !send_rows(&mut sock, n).await {
                    return;
                }
                continue;
            }
        }
        for r in &reply {
            if !send(&mut sock, r).await {
                return;
            }
        }
    }
}

fn handle(req: &Request<'_>, st: &FakeState, stmts: &mut Vec<String>) -> Vec<Response<'static>> {
    let leader = st.is_leader.load(Ordering::SeqCst);
    let not_leader = || vec![dqlite_wire::failure::NOT_LEADER.response()];
    match req {
        Request::Leader => {
            let unknown =
                st.leader_unknown_for.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            let addr = if unknown { String::new() } else { st.leader.lock().unwrap().clone() };
            let addr: &'static str = Box::leak(addr.into_boxed_str());
            vec![Response::Server { id: WireNodeId(u64::from(!addr.is_empty())), address: addr }]
        }
        Request::Client { .. } => vec![Response::Welcome { heartbeat_timeout_ms: 15000 }],
        Request::Open { .. } if !leader => not_leader(),
        Request::Open { .. } => vec![Response::Db { id: DbId(0) }],
        Request::Interrupt { .. } | Request::Finalize { .. } => vec![Response::Empty],
        _ if !leader => not_leader(),
        Request::Prepare { sql, schema, .. } => {
            stmts.push((*sql).to_owned());
            let v1 = *schema == dqlite_wire::Schema::V1 && st.params32.load(Ordering::SeqCst);
            vec![Response::Stmt {
                db: DbId(0),
                id: StmtId(stmts.len() as u32 - 1),
                params: sql.matches('?').count() as u64,
                tail_offset: v1.then_some(sql.len() as u64),
            }]
        }
        // QUERY of something that is not `SELECT n`: no result columns.
        Request::Query { .. } | Request::QuerySql { .. } => {
            vec![dqlite_wire::failure::NOT_AN_ERROR.response()]
        }
        Request::Exec { .. } | Request::ExecSql { .. } => {
            vec![Response::ExecResult { last_insert_id: 7, rows_affected: 1 }]
        }
        _ => vec![Response::Failure { code: 1005, message: "unsupported by the fake node" }],
    }
}
