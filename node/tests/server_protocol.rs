//! The client-protocol server at the byte level: every request type, dqlite's failure codes and
//! messages, ROWS batching, INTERRUPT, NOT_LEADER with the leader's address, limits.

mod server_support;

use dqlite_node::server::{messages, ServerConfig};
use dqlite_node::wire::codes::*;
use dqlite_node::wire::{
    DbId, File, Header, NodeInfo, NodeInfoFormat, Params, ProtocolVersion, Request, Response, Role, RowsEnd, Schema,
    StmtId, Value, ValueRef, WireNodeId,
};
use server_support::{RawClient, TestServer};

fn failure(resp: &Response<'_>) -> (u64, String) {
    match resp {
        Response::Failure { code, message } => (*code, message.to_string()),
        other => panic!("expected FAILURE, got {other:?}"),
    }
}

async fn open(c: &mut RawClient, name: &str) {
    let f = c.request(&Request::Open { name, flags: 0, vfs: "volatile" }).await;
    assert_eq!(f.decode(), Response::Db { id: DbId(0) });
}

async fn exec_sql(c: &mut RawClient, sql: &str) -> Response<'static> {
    let f = c.request(&Request::ExecSql { db: DbId(0), sql, params: Params::none(), schema: Schema::V0 }).await;
    match f.decode() {
        Response::ExecResult { last_insert_id, rows_affected } => {
            Response::ExecResult { last_insert_id, rows_affected }
        }
        Response::Failure { code, message } => {
            panic!("EXEC_SQL {sql:?} failed: ({code}) {message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn leader_client_cluster_describe_weight() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    let addr = s.addr.to_string();
    assert_eq!(c.request(&Request::Leader).await.decode(), Response::Server { id: WireNodeId(1), address: &addr });
    assert_eq!(c.request(&Request::Client { id: 0 }).await.decode(), Response::Welcome { heartbeat_timeout_ms: 15000 });
    let f = c.request(&Request::Cluster { format: NodeInfoFormat::V1 }).await;
    assert_eq!(
        f.decode(),
        Response::Servers {
            format: NodeInfoFormat::V1,
            nodes: vec![NodeInfo { id: WireNodeId(1), address: &addr, role: Some(Role::Voter) }]
        }
    );
    // Format 0: no role (decoded with the matching context).
    c.send(&Request::Cluster { format: NodeInfoFormat::V0 }).await;
    let f = c.recv().await.unwrap();
    let ctx = dqlite_node::wire::DecodeContext { node_info_format: NodeInfoFormat::V0, ..Default::default() };
    assert_eq!(
        Response::decode(&f.header, &f.body, &ctx).unwrap(),
        Response::Servers {
            format: NodeInfoFormat::V0,
            nodes: vec![NodeInfo { id: WireNodeId(1), address: &addr, role: None }]
        }
    );
    assert_eq!(c.request(&Request::Weight { weight: 7 }).await.decode(), Response::Empty);
    assert_eq!(
        c.request(&Request::Describe { format: 0 }).await.decode(),
        Response::Metadata { failure_domain: 0, weight: 7 }
    );
    assert_eq!(failure(&c.request(&Request::Describe { format: 3 }).await.decode()).0, DQLITE_PARSE);

    // Membership on the leader.
    let f = c.request(&Request::Add { id: WireNodeId(2), address: "127.0.0.2:9001" }).await;
    assert_eq!(f.decode(), Response::Empty);
    assert_eq!(c.request(&Request::Assign { id: WireNodeId(2), role: Role::Standby }).await.decode(), Response::Empty);
    let m = s.cluster.0.members.lock().unwrap().clone();
    assert_eq!(m[1].role, Role::Standby);
    assert_eq!(c.request(&Request::Remove { id: WireNodeId(2) }).await.decode(), Response::Empty);
    assert_eq!(s.cluster.0.members.lock().unwrap().len(), 1);

    // Legacy handshake: LEADER answers with the address only.
    let mut legacy = RawClient::connect_version(s.addr, ProtocolVersion::LEGACY_WORD).await;
    legacy.send(&Request::Leader).await;
    let f = legacy.recv().await.unwrap();
    let ctx = dqlite_node::wire::DecodeContext { version: ProtocolVersion::Legacy, ..Default::default() };
    assert_eq!(Response::decode(&f.header, &f.body, &ctx).unwrap(), Response::ServerLegacy { address: &addr });
}

#[tokio::test]
async fn unknown_version_word_is_closed_without_a_reply() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect_version(s.addr, 2).await;
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn sql_requests_with_dqlite_failures() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    // SQL before OPEN.
    let f =
        c.request(&Request::ExecSql { db: DbId(0), sql: "SELECT 1", params: Params::none(), schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_NOTFOUND, messages::NO_DATABASE.into()));
    open(&mut c, "test.db").await;
    let f = c.request(&Request::Open { name: "other", flags: 0, vfs: "x" }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_BUSY, messages::ALREADY_OPEN.into()));
    // db_id other than 0.
    let f = c.request(&Request::Prepare { db: DbId(1), sql: "SELECT 1", schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()).0, SQLITE_NOTFOUND);

    assert_eq!(
        exec_sql(&mut c, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, at DATETIME, ok BOOLEAN)").await,
        Response::ExecResult { last_insert_id: 0, rows_affected: 0 }
    );
    // Statement ids start at 0 and are reused.
    let f = c
        .request(&Request::Prepare {
            db: DbId(0),
            sql: "INSERT INTO t (v, at, ok) VALUES (?, ?, ?)",
            schema: Schema::V0,
        })
        .await;
    assert_eq!(f.decode(), Response::Stmt { db: DbId(0), id: StmtId(0), params: 3, tail_offset: None });
    let vals = [Value::Text("a".into()), Value::Integer(1_700_000_000), Value::Boolean(true)];
    let f = c
        .request(&Request::Exec {
            db: DbId(0),
            stmt: StmtId(0),
            params: Params::from_values(&vals),
            schema: Schema::V0,
        })
        .await;
    assert_eq!(f.decode(), Response::ExecResult { last_insert_id: 1, rows_affected: 1 });
    // Constraint error: SQLite's extended code travels (2067 = SQLITE_CONSTRAINT_UNIQUE).
    let f = c
        .request(&Request::Exec {
            db: DbId(0),
            stmt: StmtId(0),
            params: Params::from_values(&vals),
            schema: Schema::V1,
        })
        .await;
    let (code, msg) = failure(&f.decode());
    assert_eq!(code, 2067, "{msg}");
    assert!(msg.contains("UNIQUE"), "{msg}");
    // A NULL DATETIME comes back as "" ISO8601, a NULL BOOLEAN as false (as dqlite does).
    exec_sql(&mut c, "INSERT INTO t (v) VALUES ('b')").await;
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT v, at, ok FROM t ORDER BY id",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    match f.decode() {
        Response::Rows(b) => {
            assert_eq!(b.columns, ["v", "at", "ok"]);
            assert_eq!(b.rows[0], [ValueRef::Text("a"), ValueRef::UnixTime(1_700_000_000), ValueRef::Boolean(true)]);
            assert_eq!(b.rows[1], [ValueRef::Text("b"), ValueRef::Iso8601(""), ValueRef::Boolean(false)]);
            assert_eq!(b.end, RowsEnd::Done);
        }
        other => panic!("{other:?}"),
    }
    // FINALIZE, then the id is unknown.
    assert_eq!(c.request(&Request::Finalize { db: DbId(0), stmt: StmtId(0) }).await.decode(), Response::Empty);
    let f = c.request(&Request::Finalize { db: DbId(0), stmt: StmtId(0) }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_NOTFOUND, messages::NO_STATEMENT.into()));
    let f =
        c.request(&Request::Query { db: DbId(0), stmt: StmtId(9), params: Params::none(), schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_NOTFOUND, messages::NO_STATEMENT.into()));
    // Syntax error with SQLite's message.
    let f = c.request(&Request::Prepare { db: DbId(0), sql: "SELEC 1", schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, "near \"SELEC\": syntax error".into()));
    // QUERY of a statement without columns: "not an error", nothing ran.
    let f = c
        .request(&Request::QuerySql { db: DbId(0), sql: "DELETE FROM t", params: Params::none(), schema: Schema::V0 })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, messages::NO_COLUMNS.into()));
    // EXEC of a statement yielding rows.
    let f = c
        .request(&Request::ExecSql { db: DbId(0), sql: "SELECT * FROM t", params: Params::none(), schema: Schema::V0 })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, messages::ROWS_YIELDED.into()));
    // Unused query parameters.
    let one = [Value::Integer(1)];
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT 1",
            params: Params::from_values(&one),
            schema: Schema::V0,
        })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, messages::BIND_PARAMETERS.into()));
    // UNIXTIME is server-to-client only.
    let ut = [Value::UnixTime(1)];
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT ?",
            params: Params::from_values(&ut),
            schema: Schema::V0,
        })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, messages::BIND_PARAMETERS.into()));
    let rows = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT count(*) FROM t",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert!(matches!(rows.decode(), Response::Rows(b) if b.rows[0][0] == ValueRef::Integer(2)), "nothing was deleted");
}

#[tokio::test]
async fn multi_statement_sql_prepare_tails_and_empty_statements() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    open(&mut c, "multi").await;
    // EXEC_SQL runs every statement; the RESULT is the last one's. A later statement may use a
    // table an earlier one creates.
    let r = exec_sql(&mut c, "CREATE TABLE a (x); INSERT INTO a VALUES (1); INSERT INTO a VALUES (2), (3);").await;
    assert_eq!(r, Response::ExecResult { last_insert_id: 3, rows_affected: 2 });
    // Parameters carry over from statement to statement.
    let p = [Value::Integer(10), Value::Integer(20)];
    let f = c
        .request(&Request::ExecSql {
            db: DbId(0),
            sql: "INSERT INTO a VALUES (?); INSERT INTO a VALUES (?)",
            params: Params::from_values(&p),
            schema: Schema::V0,
        })
        .await;
    assert_eq!(f.decode(), Response::ExecResult { last_insert_id: 5, rows_affected: 1 });
    // QUERY_SQL with several statements runs them all (dqlite 1.11 would stop after the first)
    // and returns the last one's rows.
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT 1; SELECT sum(x) FROM a",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert!(matches!(f.decode(), Response::Rows(b) if b.rows == vec![vec![ValueRef::Integer(36)]]));
    // PREPARE schema 0 refuses a tail (dqlite 1.18); schema 1 reports where it starts.
    let sql = "SELECT 1; SELECT 2";
    let f = c.request(&Request::Prepare { db: DbId(0), sql, schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_ERROR, messages::NONEMPTY_TAIL.into()));
    let f = c.request(&Request::Prepare { db: DbId(0), sql, schema: Schema::V1 }).await;
    assert_eq!(f.decode(), Response::Stmt { db: DbId(0), id: StmtId(0), params: 0, tail_offset: Some(9) });
    assert_eq!(f.header.schema, 1);
    let f = c.request(&Request::Prepare { db: DbId(0), sql: "  -- nothing\n", schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (0, messages::EMPTY_STATEMENT.into()));
}

#[tokio::test]
async fn rows_are_batched_like_dqlite_and_interrupt_stops_the_stream() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    open(&mut c, "rows").await;
    exec_sql(&mut c, "CREATE TABLE n (x INTEGER); INSERT INTO n WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) SELECT i FROM c").await;
    // One INTEGER column: ~255 rows per 4 KiB batch, PART ... DONE, all rows in order.
    c.send(&Request::QuerySql {
        db: DbId(0),
        sql: "SELECT x FROM n ORDER BY x",
        params: Params::none(),
        schema: Schema::V0,
    })
    .await;
    let mut next = 1;
    let mut batches = 0;
    loop {
        let f = c.recv().await.unwrap();
        assert!(f.body.len() + 8 <= 4096 + 64, "batch of {} bytes", f.body.len());
        batches += 1;
        let Response::Rows(b) = f.decode() else { panic!("expected ROWS") };
        assert_eq!(b.columns, ["x"], "every batch repeats the column names");
        for row in &b.rows {
            assert_eq!(row[0], ValueRef::Integer(next));
            next += 1;
        }
        if b.end == RowsEnd::Done {
            break;
        }
    }
    assert_eq!(next, 3001);
    assert!(batches >= 11, "{batches} batches");
    // INTERRUPT after the first batch: a few more batches at most, then EMPTY; the connection
    // stays usable.
    c.send(&Request::QuerySql { db: DbId(0), sql: "SELECT x FROM n", params: Params::none(), schema: Schema::V0 })
        .await;
    let first = c.recv().await.unwrap();
    assert!(matches!(first.decode(), Response::Rows(b) if b.end == RowsEnd::Part));
    c.send(&Request::Interrupt { db: DbId(0) }).await;
    let mut after = 0;
    loop {
        let f = c.recv().await.unwrap();
        match f.decode() {
            Response::Rows(_) => after += 1,
            Response::Empty => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(after < 11, "the stream stopped early ({after} more batches)");
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT count(*) FROM n",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert!(matches!(f.decode(), Response::Rows(b) if b.rows[0][0] == ValueRef::Integer(3000)));
    // INTERRUPT with nothing streaming: EMPTY.
    assert_eq!(c.request(&Request::Interrupt { db: DbId(0) }).await.decode(), Response::Empty);
}

#[tokio::test]
async fn not_leader_names_the_leader_and_closes_sessions() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    open(&mut c, "nl").await;
    exec_sql(&mut c, "CREATE TABLE t (x)").await;
    s.cluster.follow(Some((2, "127.0.0.2:9001".into())));
    // LEADER names the new leader; SQL gets 10250 "not leader".
    assert_eq!(
        c.request(&Request::Leader).await.decode(),
        Response::Server { id: WireNodeId(2), address: "127.0.0.2:9001" }
    );
    let f = c
        .request(&Request::ExecSql {
            db: DbId(0),
            sql: "INSERT INTO t VALUES (1)",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_IOERR_NOT_LEADER, messages::NOT_LEADER.into()));
    // As dqlite 1.11: OPEN and PREPARE work on a follower, running a statement does not.
    let mut other = RawClient::connect(s.addr).await;
    open(&mut other, "nl").await;
    let f = other.request(&Request::Prepare { db: DbId(0), sql: "SELECT 1", schema: Schema::V0 }).await;
    assert!(matches!(f.decode(), Response::Stmt { .. }));
    let f = other
        .request(&Request::Query { db: DbId(0), stmt: StmtId(0), params: Params::none(), schema: Schema::V0 })
        .await;
    assert_eq!(failure(&f.decode()), (SQLITE_IOERR_NOT_LEADER, messages::NOT_LEADER.into()));
    for req in [
        Request::Add { id: WireNodeId(3), address: "x:1" },
        Request::Assign { id: WireNodeId(3), role: Role::Voter },
        Request::Remove { id: WireNodeId(3) },
        Request::Transfer { id: WireNodeId(3) },
    ] {
        assert_eq!(failure(&other.request(&req).await.decode()).0, SQLITE_IOERR_NOT_LEADER);
    }
    // A standby does not report the leader.
    *s.cluster.0.voter.lock().unwrap() = false;
    assert_eq!(other.request(&Request::Leader).await.decode(), Response::Server { id: WireNodeId(0), address: "" });
    *s.cluster.0.voter.lock().unwrap() = true;
    // Leading again (another term): the old session is gone.
    s.cluster.lead(5);
    let f =
        c.request(&Request::ExecSql { db: DbId(0), sql: "SELECT 1", params: Params::none(), schema: Schema::V0 }).await;
    assert_eq!(failure(&f.decode()), (SQLITE_NOTFOUND, messages::NO_DATABASE.into()));
    open(&mut c, "nl").await;
    let f = c
        .request(&Request::QuerySql {
            db: DbId(0),
            sql: "SELECT count(*) FROM t",
            params: Params::none(),
            schema: Schema::V0,
        })
        .await;
    assert!(matches!(f.decode(), Response::Rows(b) if b.rows[0][0] == ValueRef::Integer(0)), "the insert never ran");
}

#[tokio::test]
async fn dump_heartbeat_connect_and_malformed_requests() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.addr).await;
    open(&mut c, "dump.db").await;
    exec_sql(&mut c, "CREATE TABLE t (x); INSERT INTO t VALUES (1)").await;
    let f = c.request(&Request::Dump { name: "dump.db" }).await;
    match f.decode() {
        Response::Files { files } => {
            assert_eq!(files.len(), 2);
            let File { name, data } = files[0];
            assert_eq!(name, "dump.db");
            assert!(data.starts_with(b"SQLite format 3\0"));
            assert_eq!(files[1].name, "dump.db-wal");
        }
        other => panic!("{other:?}"),
    }
    let f = c.request(&Request::Dump { name: "missing.db" }).await;
    assert_eq!(failure(&f.decode()), (DQLITE_NOTFOUND, messages::NO_SUCH_DATABASE.into()));
    // HEARTBEAT and unknown types: FAILURE 1005 (dqlite 1.18), the connection goes on.
    let f = c.request(&Request::Heartbeat { timestamp: 1 }).await;
    assert_eq!(failure(&f.decode()), (DQLITE_PARSE, messages::UNRECOGNIZED_REQUEST.into()));
    c.send_raw(&Header::new(99, 0, 1).encode()).await;
    c.send_raw(&[0; 8]).await;
    assert_eq!(failure(&c.recv().await.unwrap().decode()).0, DQLITE_PARSE);
    // A truncated body (text without NUL): FAILURE 1005.
    c.send_raw(&Header::new(3, 0, 1).encode()).await;
    c.send_raw(b"abcdefgh").await;
    assert_eq!(failure(&c.recv().await.unwrap().decode()).0, DQLITE_PARSE);
    assert!(matches!(c.request(&Request::Leader).await.decode(), Response::Server { .. }));
    // CONNECT: refused, closed.
    let f = c.request(&Request::Connect { id: WireNodeId(9), address: "x" }).await;
    assert_eq!(failure(&f.decode()).0, DQLITE_PROTO);
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn oversized_requests_get_a_failure_and_a_closed_connection() {
    let s = TestServer::start_with(ServerConfig { max_request_bytes: 1024, ..Default::default() }).await;
    let mut c = RawClient::connect(s.addr).await;
    c.send_raw(&Header::new(8, 0, 129).encode()).await;
    assert_eq!(failure(&c.recv().await.unwrap().decode()), (DQLITE_PROTO, messages::REQUEST_TOO_LARGE.into()));
    assert!(c.recv().await.is_none());
    // u32::MAX words: the same, nothing allocated.
    let mut c = RawClient::connect(s.addr).await;
    c.send_raw(&Header::new(9, 0, u32::MAX).encode()).await;
    assert_eq!(failure(&c.recv().await.unwrap().decode()).0, DQLITE_PROTO);
    // Still serving.
    let mut c = RawClient::connect(s.addr).await;
    assert!(matches!(c.request(&Request::Leader).await.decode(), Response::Server { .. }));
}
