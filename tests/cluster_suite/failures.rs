//! The fixed FAILURE messages of `dqlite_wire::failure`, provoked on real dqlite 1.11 with a
//! bare wire client: the real server sends exactly the code and text the constant says (the
//! driver's retry decisions match on them, and our own server sends the same constants).
//!
//! Not provoked here: `LEADERSHIP_LOST` (1.11 sends its code with "disk I/O error", and the
//! driver matches the code only), `NONEMPTY_STATEMENT_TAIL` (dqlite ≥ 1.18 only),
//! `CHECKPOINT_IN_PROGRESS` (a race with the leader's own checkpoint).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use dqlite_wire::failure::{self, KnownFailure};
use dqlite_wire::{header, DbId, DecodeContext, Params, ProtocolVersion, Request, Response, Schema, StmtId};

use crate::common;

/// A blocking client speaking raw requests (every socket operation bounded).
struct Raw {
    socket: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        socket.set_nodelay(true).unwrap();
        let mut raw = Raw { socket };
        raw.socket.write_all(&ProtocolVersion::V1.encode()).unwrap();
        raw
    }

    /// Send `req`; the first response as `(type, body)`.
    fn call(&mut self, req: &Request<'_>) -> (u8, Vec<u8>) {
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        self.socket.write_all(&out).unwrap();
        let mut head = [0u8; 8];
        self.socket.read_exact(&mut head).unwrap();
        let words = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut body = vec![0u8; words * 8];
        self.socket.read_exact(&mut body).unwrap();
        let mut message = head.to_vec();
        message.extend_from_slice(&body);
        (head[4], message)
    }

    /// Send `req` and return its FAILURE `(code, message)`, panicking on any other reply.
    fn failure(&mut self, req: &Request<'_>) -> (u64, String) {
        let (_, message) = self.call(req);
        let (msg, _) = header::parse(&message, dqlite_wire::DEFAULT_MAX_BODY_BYTES).unwrap().unwrap();
        match Response::decode(&msg.header, msg.body, &DecodeContext::default()).unwrap() {
            Response::Failure { code, message } => (code, message.to_owned()),
            other => panic!("{req:?}: expected FAILURE, got {other:?}"),
        }
    }

    fn open(&mut self, name: &str) {
        let (kind, _) = self.call(&Request::Open { name, flags: 0, vfs: "volatile" });
        assert_eq!(kind, dqlite_wire::ResponseType::Db.code(), "OPEN {name}");
    }
}

fn assert_sends(known: KnownFailure, got: (u64, String)) {
    assert!(known.matches(got.0, &got.1), "real dqlite sent {got:?}, constant says {known:?}");
}

fn exec_sql(sql: &str) -> Request<'_> {
    Request::ExecSql { db: DbId(0), sql, params: Params::from_values(&[]), schema: Schema::V0 }
}

fn query_sql(sql: &str) -> Request<'_> {
    Request::QuerySql { db: DbId(0), sql, params: Params::from_values(&[]), schema: Schema::V0 }
}

/// The leader's and a follower's address.
fn leader_and_follower() -> (SocketAddr, SocketAddr) {
    let mut cluster = common::shared_cluster();
    let leader = cluster.wait_for_leader(common::ELECTION_BOUND).unwrap();
    let follower = (0..cluster.len()).find(|&i| i != leader).unwrap();
    (cluster.address(leader), cluster.address(follower))
}

#[test]
fn no_database_opened() {
    let (leader, _) = leader_and_follower();
    let mut raw = Raw::connect(leader);
    assert_sends(failure::NO_DATABASE_OPENED, raw.failure(&exec_sql("SELECT 1")));
    assert_sends(failure::NO_DATABASE_OPENED, raw.failure(&query_sql("SELECT 1")));
}

#[test]
fn database_already_open() {
    let (leader, _) = leader_and_follower();
    let mut raw = Raw::connect(leader);
    raw.open(&common::db_name("fail_already_open"));
    let name = common::db_name("fail_already_open");
    assert_sends(
        failure::DATABASE_ALREADY_OPEN,
        raw.failure(&Request::Open { name: &name, flags: 0, vfs: "volatile" }),
    );
}

#[test]
fn no_statement_with_the_given_id() {
    let (leader, _) = leader_and_follower();
    let mut raw = Raw::connect(leader);
    raw.open(&common::db_name("fail_no_stmt"));
    let params = Params::from_values(&[]);
    for req in [
        Request::Exec { db: DbId(0), stmt: StmtId(4242), params: params.clone(), schema: Schema::V0 },
        Request::Query { db: DbId(0), stmt: StmtId(4242), params: params.clone(), schema: Schema::V0 },
        Request::Finalize { db: DbId(0), stmt: StmtId(4242) },
    ] {
        assert_sends(failure::NO_STATEMENT, raw.failure(&req));
    }
}

#[test]
fn not_an_error_for_a_query_without_columns_which_did_not_run() {
    let (leader, _) = leader_and_follower();
    let mut raw = Raw::connect(leader);
    raw.open(&common::db_name("fail_not_an_error"));
    assert_sends(failure::NOT_AN_ERROR, raw.failure(&query_sql("CREATE TABLE t (a)")));
    // Nothing ran: the table does not exist, so creating it now succeeds.
    let (kind, _) = raw.call(&exec_sql("CREATE TABLE t (a)"));
    assert_eq!(kind, dqlite_wire::ResponseType::Result.code());
}

#[test]
fn empty_statement() {
    let (leader, _) = leader_and_follower();
    let mut raw = Raw::connect(leader);
    raw.open(&common::db_name("fail_empty"));
    for sql in ["", ";", "-- only a comment", "  /* c */ ;"] {
        assert_sends(failure::EMPTY_STATEMENT, raw.failure(&query_sql(sql)));
        assert_sends(failure::EMPTY_STATEMENT, raw.failure(&Request::Prepare { db: DbId(0), sql, schema: Schema::V0 }));
    }
}

#[test]
fn not_leader_on_a_follower() {
    let (_, follower) = leader_and_follower();
    let mut raw = Raw::connect(follower);
    raw.open(&common::db_name("fail_not_leader"));
    assert_sends(failure::NOT_LEADER, raw.failure(&exec_sql("CREATE TABLE t (a)")));
    assert_sends(failure::NOT_LEADER, raw.failure(&query_sql("SELECT 1")));
    // dqlite 1.11 PREPAREs on a follower; running the statement is refused.
    let (kind, _) = raw.call(&Request::Prepare { db: DbId(0), sql: "SELECT 1", schema: Schema::V0 });
    assert_eq!(kind, dqlite_wire::ResponseType::Stmt.code());
    let params = Params::from_values(&[]);
    let query = Request::Query { db: DbId(0), stmt: StmtId(0), params, schema: Schema::V0 };
    assert_sends(failure::NOT_LEADER, raw.failure(&query));
}
