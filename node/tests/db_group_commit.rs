//! Group commit inside one database (`node/src/db/batch.rs`).
//!
//! * A differential test: random mixes of batchable statements (every conflict clause, CHECK /
//!   NOT NULL / UNIQUE / STRICT type errors, syntax errors, RAISE in triggers, WITHOUT ROWID,
//!   `last_insert_rowid()`) from several clients, run as group commits on a replicated leader,
//!   and one after another on plain SQLite (rusqlite, one connection per client): the same
//!   per-statement results (rows affected, last insert rowid, error code and message), the same
//!   `last_insert_rowid()` per client afterwards, and the same final state on leader, follower
//!   and plain SQLite. `GROUP_COMMIT_SEED=n` replays one seed, `GROUP_COMMIT_SEEDS=N` sets how
//!   many run (default 6, from a base that moves with the time).
//! * Concurrent autocommit writers share entries (fewer Raft entries than statements), each is
//!   answered only after its entry commits, and everything else (explicit transactions,
//!   `changes()`, PRAGMAs) still runs alone and correctly beside them.
//! * Statements that queue while a batch runs its statements join that batch (one entry for
//!   all), held in that window with `db::pause_next_gather`.

mod db_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use db_common::*;
use dqlite_node::db::batch::{BatchOutcome, BatchStatement};
use dqlite_node::db::DbError;
use dqlite_wire::Value;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL, c INTEGER CHECK (c >= 0));
CREATE TABLE s(a INTEGER, b TEXT) STRICT;
CREATE TABLE w(k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
CREATE TABLE log(id INTEGER PRIMARY KEY, msg TEXT);
CREATE TRIGGER tr_abort BEFORE INSERT ON t WHEN new.v = 13 BEGIN SELECT RAISE(ABORT, 'unlucky 13'); END;
CREATE TRIGGER tr_fail BEFORE INSERT ON t WHEN new.v = 14 BEGIN SELECT RAISE(FAIL, 'fail 14'); END;
CREATE TRIGGER tr_ignore BEFORE INSERT ON t WHEN new.v = 15 BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER tr_rollback BEFORE INSERT ON t WHEN new.v = 16 BEGIN SELECT RAISE(ROLLBACK, 'rollback 16'); END;
CREATE TRIGGER tr_log AFTER UPDATE ON t BEGIN INSERT INTO log(msg) VALUES ('upd ' || new.k); END;
";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn key(&mut self) -> Value {
        Value::Text(format!("k{}", self.below(12)))
    }
    /// Mostly ordinary values, sometimes the triggers' special ones.
    fn v(&mut self) -> Value {
        if self.below(4) == 0 {
            Value::Integer(13 + self.below(4) as i64)
        } else {
            Value::Integer(self.below(40) as i64)
        }
    }
    fn c(&mut self) -> Value {
        Value::Integer(self.below(10) as i64 - 2)
    }
}

/// One random batchable statement.
fn statement(r: &mut Rng) -> (String, Vec<Value>) {
    let clauses = ["", "OR ABORT ", "OR FAIL ", "OR IGNORE ", "OR REPLACE ", "OR ROLLBACK "];
    let clause = clauses[r.below(clauses.len() as u64) as usize];
    match r.below(14) {
        0 | 1 => (format!("INSERT {clause}INTO t(k, v, c) VALUES (?, ?, ?)"), vec![r.key(), r.v(), r.c()]),
        2 | 3 => (
            format!("INSERT {clause}INTO t(k, v, c) VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?)"),
            vec![r.key(), r.v(), r.c(), r.key(), r.v(), r.c(), r.key(), r.v(), r.c()],
        ),
        4 => (format!("UPDATE {clause}t SET v = v + ? WHERE k = ?"), vec![Value::Integer(r.below(5) as i64), r.key()]),
        5 => (format!("UPDATE {clause}t SET k = ? WHERE v > ?"), vec![r.key(), Value::Integer(r.below(40) as i64)]),
        6 => (
            format!("UPDATE {clause}t SET c = c - ? WHERE id % 3 = ?"),
            vec![Value::Integer(3), Value::Integer(r.below(3) as i64)],
        ),
        7 => ("DELETE FROM t WHERE v < ?".into(), vec![Value::Integer(r.below(8) as i64)]),
        8 => {
            // STRICT: a text that is not an integer is a type error.
            let a = if r.below(2) == 0 { Value::Integer(r.below(100) as i64) } else { Value::Text("abc".into()) };
            let b = if r.below(3) == 0 { Value::Integer(7) } else { Value::Text("x".into()) };
            ("INSERT INTO s(a, b) VALUES (?, ?)".into(), vec![a, b])
        }
        9 => ("INSERT INTO t(k, v) VALUES (?, NULL)".into(), vec![r.key()]),
        10 => {
            let bad = ["INSERT INTO t(k, v VALUES (1, 2)", "INSERT INTO nosuch VALUES (1)", "UPDATE t SET nocol = 1"];
            (bad[r.below(bad.len() as u64) as usize].into(), vec![])
        }
        11 => ("INSERT INTO log(msg) VALUES (last_insert_rowid())".into(), vec![]),
        12 => (format!("INSERT {clause}INTO w(k, v) VALUES (?, ?)"), vec![r.key(), r.v()]),
        _ => (
            "WITH x(n) AS (SELECT ?) INSERT OR IGNORE INTO t(k, v) SELECT 'w' || n, n FROM x".into(),
            vec![Value::Integer(r.below(30) as i64)],
        ),
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Integer(i) => V::Integer(*i),
        Value::Text(s) => V::Text(s.clone()),
        Value::Null => V::Null,
        other => panic!("unused in this test: {other:?}"),
    }
}

/// What plain SQLite gives: `Ok((rows affected, last insert rowid))` or `Err((code, message))`.
type Plain = Result<(u64, i64), (i32, String)>;

fn plain_exec(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Plain {
    let err = |e: rusqlite::Error| {
        let e = DbError::from(e);
        (
            e.code(),
            match e {
                DbError::Sql { message, .. } => message,
                other => other.to_string(),
            },
        )
    };
    let mut stmt = c.prepare(sql).map_err(err)?;
    for (i, v) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, to_sql(v)).map_err(err)?;
    }
    stmt.raw_execute().map_err(err)?;
    Ok((c.changes(), c.last_insert_rowid()))
}

fn ours(o: &BatchOutcome) -> Plain {
    match &o.result {
        Ok(r) => Ok((r.rows_affected, r.last_insert_id)),
        Err(DbError::Sql { code, message }) => Err((*code, message.clone())),
        Err(other) => Err((other.code(), other.to_string())),
    }
}

fn plain_dump(c: &rusqlite::Connection) -> String {
    let mut out = String::new();
    for t in ["t", "s", "w", "log"] {
        let mut st = c.prepare(&format!("SELECT * FROM {t} ORDER BY 1")).unwrap();
        let n = st.column_count();
        let rows: Vec<Vec<rusqlite::types::Value>> =
            st.query_map([], |r| (0..n).map(|i| r.get(i)).collect()).unwrap().map(Result::unwrap).collect();
        out.push_str(&format!("{t}: {rows:?}\n"));
    }
    out
}

fn node_dump(h: &dqlite_node::db::conn::DbHandle) -> String {
    let c = h.open("g.db").unwrap();
    let mut out = String::new();
    for t in ["t", "s", "w", "log"] {
        let rows =
            c.blocking_query_sql(&format!("SELECT * FROM {t} ORDER BY 1"), vec![]).unwrap().blocking_collect().unwrap();
        let rows: Vec<Vec<rusqlite::types::Value>> = rows.iter().map(|r| r.iter().map(from_wire).collect()).collect();
        out.push_str(&format!("{t}: {rows:?}\n"));
    }
    out
}

fn from_wire(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Integer(i) => V::Integer(*i),
        Value::Float(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
        Value::Null => V::Null,
        other => panic!("unexpected {other:?}"),
    }
}

const CLIENTS: usize = 6;

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: std::collections::BTreeMap<i32, u64>,
}

fn run_seed(seed: u64, tally: &mut Tally) {
    let mut r = Rng(seed);
    let c = Cluster::new(2);
    exec_when_leading(&c, "g.db", SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    let plain: Vec<rusqlite::Connection> = (0..CLIENTS).map(|_| rusqlite::Connection::open(&path).unwrap()).collect();
    plain[0].execute_batch("PRAGMA journal_mode=WAL").unwrap();
    plain[0].execute_batch(SCHEMA).unwrap();
    let mut rowids = [0i64; CLIENTS];
    for round in 0..40 {
        // Each client at most once per batch (a client waits for its answer).
        let mut clients: Vec<usize> = (0..CLIENTS).collect();
        for i in (1..clients.len()).rev() {
            clients.swap(i, r.below(i as u64 + 1) as usize);
        }
        clients.truncate(1 + r.below(CLIENTS as u64) as usize);
        let stmts: Vec<(usize, String, Vec<Value>)> = clients
            .iter()
            .map(|&k| {
                let (sql, params) = statement(&mut r);
                (k, sql, params)
            })
            .collect();
        let batch: Vec<BatchStatement> = stmts
            .iter()
            .map(|(k, sql, params)| BatchStatement {
                sql: sql.clone(),
                params: params.clone(),
                last_insert_rowid: rowids[*k],
            })
            .collect();
        let got = c.handles[0].run_batch("g.db", batch).unwrap();
        assert_eq!(got.len(), stmts.len());
        for (i, ((k, sql, params), o)) in stmts.iter().zip(&got).enumerate() {
            let want = plain_exec(&plain[*k], sql, params);
            let have = ours(o);
            assert_eq!(
                have, want,
                "seed {seed} round {round} statement {i} (client {k}): {sql} {params:?}\nreplay with GROUP_COMMIT_SEED={seed}"
            );
            assert_eq!(
                o.last_insert_rowid,
                plain[*k].last_insert_rowid(),
                "seed {seed} round {round} statement {i}: last_insert_rowid after {sql}"
            );
            if let Some(ch) = o.changes {
                assert_eq!(ch, plain[*k].changes(), "seed {seed} round {round} statement {i}: changes() after {sql}");
            }
            match &have {
                Ok(_) => tally.ok += 1,
                Err((code, _)) => *tally.errors.entry(*code).or_default() += 1,
            }
            rowids[*k] = o.last_insert_rowid;
        }
    }
    c.wait_all_applied();
    let want = plain_dump(&plain[0]);
    assert_eq!(node_dump(&c.handles[0]), want, "seed {seed}: leader state");
    assert_eq!(node_dump(&c.handles[1]), want, "seed {seed}: follower state");
    integrity_ok(&c.handles[1], "g.db");
}

#[test]
fn group_commits_give_what_statements_one_after_another_give() {
    let n: u64 = std::env::var("GROUP_COMMIT_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let base = match std::env::var("GROUP_COMMIT_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => s,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    };
    eprintln!("GROUP_COMMIT_SEED={base} GROUP_COMMIT_SEEDS={n}");
    let mut tally = Tally::default();
    let restarts = dqlite_node::db::batch::stats().restarts;
    for s in base..base + n {
        eprintln!("seed = {s} (replay with GROUP_COMMIT_SEED={s} GROUP_COMMIT_SEEDS=1)");
        run_seed(s, &mut tally);
    }
    eprintln!("{} statements succeeded; errors by code: {:?}", tally.ok, tally.errors);
    // The mix really exercised the error paths (else the comparison proves little).
    assert!(tally.ok > 0);
    for code in [
        1811, /* RAISE(ABORT/FAIL/ROLLBACK) */
        275,  /* CHECK */
        1299, /* NOT NULL */
        2067, /* UNIQUE */
        1555, /* PRIMARY KEY */
        3091, /* DATATYPE */
        1,    /* syntax */
    ] {
        assert!(tally.errors.get(&code).copied().unwrap_or(0) > 0, "no error with code {code} in {:?}", tally.errors);
    }
    assert!(dqlite_node::db::batch::stats().restarts > restarts, "no statement rolled a batch back");
}

/// Runs `sql` on a fresh connection once node 0 knows it leads (the role change reaches its
/// apply thread asynchronously).
fn exec_when_leading(c: &Cluster, db: &str, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = c.handles[0].open(db).unwrap();
        match w.blocking_exec_sql(sql, vec![]) {
            Ok(_) => return,
            Err(e) if e.code() == 10250 && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

#[test]
fn concurrent_autocommit_writers_share_entries_and_are_answered_after_the_commit() {
    let c = Arc::new(Cluster::new(2));
    exec_when_leading(&c, "c.db", "CREATE TABLE kv(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)");
    c.wait_all_applied();
    const WRITERS: usize = 16;
    let conns: Vec<_> = (0..WRITERS).map(|_| c.handles[0].open("c.db").unwrap()).collect();
    let stmts: Vec<u32> =
        conns.iter().map(|w| w.blocking_prepare("INSERT INTO kv(k, v) VALUES (?, ?)").unwrap().id).collect();
    // Hold replication: the first writer's entry waits; the others queue behind it.
    let before = c.last_index();
    c.hold(true);
    let mut threads = Vec::new();
    for (i, (w, id)) in conns.into_iter().zip(stmts).enumerate() {
        threads.push(std::thread::spawn(move || {
            let r = w.blocking_exec(id, vec![Value::Text(format!("key{i}")), Value::Text("v".into())]).unwrap();
            let rows = w.blocking_query_sql("SELECT last_insert_rowid()", vec![]).unwrap().blocking_collect().unwrap();
            (i, r, rows, Instant::now())
        }));
    }
    wait_for("the first proposal", Duration::from_secs(20), || c.last_index() > before);
    // The others queued behind it (the gauge is process-wide: tests running beside this one
    // can only make it rise sooner, never keep it from rising).
    wait_for("the other writers to queue", Duration::from_secs(20), || {
        dqlite_node::db::batch::stats().queued >= WRITERS as u64 - 1
    });
    assert!(threads.iter().all(|t| !t.is_finished()), "a writer was answered before its entry committed");
    let released = Instant::now();
    c.hold(false);
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    c.wait_all_applied();
    let entries = c.last_index() - before;
    assert!(entries < WRITERS as u64, "{WRITERS} writers took {entries} entries: no group commit");
    let check = c.handles[1].open("c.db").unwrap();
    for (i, r, rows, answered) in results {
        assert!(answered >= released);
        assert_eq!(r.rows_affected, 1);
        // The rowid reported is the row's, and the client's connection agrees.
        let id = count(&check, &format!("SELECT id FROM kv WHERE k = 'key{i}'"));
        assert_eq!(r.last_insert_id, id);
        assert_eq!(rows, vec![vec![Value::Integer(id)]]);
    }
    assert_eq!(count(&check, "SELECT count(*) FROM kv"), WRITERS as i64);
}

#[test]
fn statements_queued_while_a_batch_runs_join_it() {
    let c = Arc::new(Cluster::new(2));
    exec_when_leading(&c, "g.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT)");
    c.wait_all_applied();
    const FIRST: usize = 5;
    const LATE: usize = 7;
    let conns: Vec<_> = (0..1 + FIRST + LATE).map(|_| c.handles[0].open("g.db").unwrap()).collect();
    let stmts: Vec<u32> =
        conns.iter().map(|w| w.blocking_prepare("INSERT INTO kv(k, v) VALUES (?, 'x')").unwrap().id).collect();
    let h = c.handles[0].clone();
    let before = c.last_index();
    c.hold(true);
    let mut it = conns.into_iter().zip(stmts).enumerate();
    let spawn = |(i, (w, id)): (usize, (dqlite_node::db::conn::Connection, u32))| {
        std::thread::spawn(move || w.blocking_exec(id, vec![Value::Text(format!("k{i}"))]))
    };
    // Writer 0 runs alone (nothing else is writing); its entry is held.
    let mut threads = vec![spawn(it.next().unwrap())];
    wait_for("the first proposal", Duration::from_secs(20), || c.last_index() > before);
    threads.extend(it.by_ref().take(FIRST).map(spawn));
    wait_for("the first batch to queue", Duration::from_secs(20), || h.batch_pending("g.db").unwrap() == FIRST);
    let gather = dqlite_node::db::pause_next_gather(&c.dir(0), "g.db").unwrap();
    c.hold(false);
    assert!(gather.wait_reached(Duration::from_secs(20)), "the batch never ran its statements");
    // The batch ran its statements and holds its transaction open: these queue meanwhile.
    threads.extend(it.map(spawn));
    wait_for("the late writers to queue", Duration::from_secs(20), || h.batch_pending("g.db").unwrap() == FIRST + LATE);
    gather.release();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap().rows_affected, 1);
    }
    c.wait_all_applied();
    let entries = c.last_index() - before;
    assert_eq!(entries, 2, "writer 0's entry, then one for the batch and the writers that joined it");
    let check = c.handles[1].open("g.db").unwrap();
    assert_eq!(count(&check, "SELECT count(*) FROM kv"), (1 + FIRST + LATE) as i64);
}

#[test]
fn unbatchable_statements_run_alone_beside_group_commits() {
    let c = Arc::new(Cluster::new(1));
    exec_when_leading(&c, "u.db", "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Background batched writers.
    let mut bg = Vec::new();
    for _ in 0..4 {
        let (h, stop) = (c.handles[0].clone(), stop.clone());
        bg.push(std::thread::spawn(move || {
            let w = h.open("u.db").unwrap();
            let id = w.blocking_prepare("INSERT INTO t(v) VALUES (1)").unwrap().id;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                w.blocking_exec(id, vec![]).unwrap();
                n += 1;
            }
            n
        }));
    }
    let w = c.handles[0].open("u.db").unwrap();
    // An explicit transaction: its statements see each other and commit together.
    w.blocking_exec_sql("BEGIN", vec![]).unwrap();
    let ins = w.blocking_prepare("INSERT INTO t(v) VALUES (?)").unwrap().id;
    let r1 = w.blocking_exec(ins, vec![Value::Integer(2)]).unwrap();
    let r2 = w.blocking_exec(ins, vec![Value::Integer(2)]).unwrap();
    assert_eq!(r2.last_insert_id, r1.last_insert_id + 1, "inside a transaction rowids follow each other");
    assert_eq!(count(&w, "SELECT count(*) FROM t WHERE v = 2"), 2);
    w.blocking_exec_sql("ROLLBACK", vec![]).unwrap();
    assert_eq!(count(&w, "SELECT count(*) FROM t WHERE v = 2"), 0);
    // changes() is per connection: such statements run alone, on the client's connection.
    let upd = w.blocking_prepare("UPDATE t SET v = v WHERE id <= 3").unwrap().id;
    let r = w.blocking_exec(upd, vec![]).unwrap();
    let ch = w.blocking_prepare("INSERT INTO t(v) VALUES (changes() + 100)").unwrap().id;
    w.blocking_exec(ch, vec![]).unwrap();
    assert_eq!(count(&w, "SELECT v FROM t WHERE v >= 100"), 100 + r.rows_affected as i64);
    // A connection that set a PRAGMA keeps its own settings (never batched).
    w.blocking_exec_sql("PRAGMA recursive_triggers = ON", vec![]).unwrap();
    let r = w.blocking_exec(ins, vec![Value::Integer(5)]).unwrap();
    assert_eq!(count(&w, "SELECT last_insert_rowid()"), r.last_insert_id);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total: i64 = bg.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(count(&w, "SELECT count(*) FROM t WHERE v = 1"), total);
}

#[test]
fn a_batch_in_flight_when_leadership_is_lost_reports_unknown_outcome_and_then_commits_everywhere() {
    let c = Arc::new(Cluster::new(2));
    exec_when_leading(&c, "l.db", "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT)");
    c.wait_all_applied();
    const WRITERS: usize = 8;
    let conns: Vec<_> = (0..WRITERS).map(|_| c.handles[0].open("l.db").unwrap()).collect();
    let stmts: Vec<u32> =
        conns.iter().map(|w| w.blocking_prepare("INSERT INTO kv(k, v) VALUES (?, 'x')").unwrap().id).collect();
    let before = c.last_index();
    c.hold(true);
    // One writer alone first (its entry is held), then the rest queue into one batch behind it.
    let mut threads = Vec::new();
    let mut it = conns.into_iter().zip(stmts).enumerate();
    let (i, (w, id)) = it.next().unwrap();
    threads.push(std::thread::spawn(move || w.blocking_exec(id, vec![Value::Text(format!("k{i}"))])));
    wait_for("the first proposal", Duration::from_secs(20), || c.last_index() > before);
    for (i, (w, id)) in it {
        threads.push(std::thread::spawn(move || w.blocking_exec(id, vec![Value::Text(format!("k{i}"))])));
    }
    wait_for("the batch to queue", Duration::from_secs(20), || {
        dqlite_node::db::batch::stats().queued >= WRITERS as u64 - 1
    });
    // Leadership moves while the first entry is held and the batch waits for the write lock.
    c.elect(None);
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &results {
        let code = r.as_ref().expect_err("no write may succeed once leadership is lost").code();
        // 10506/10250: proposed (or queued) when leadership moved. 5 (SQLITE_BUSY): waited at
        // the write-lock gate for the held entry's fate past the busy timeout; nothing proposed.
        assert!(code == 10506 || code == 10250 || code == 5, "unexpected error {code}: {r:?}");
    }
    // What was proposed commits on every node alike (at most the first writer's entry and
    // the batch that followed it); nobody was told it succeeded.
    c.hold(false);
    c.wait_all_applied();
    assert_eq!(node_rows(&c.handles[0]), node_rows(&c.handles[1]));
}

fn node_rows(h: &dqlite_node::db::conn::DbHandle) -> Vec<Vec<Value>> {
    let c = h.open("l.db").unwrap();
    c.blocking_query_sql("SELECT k FROM kv ORDER BY k", vec![]).unwrap().blocking_collect().unwrap()
}
