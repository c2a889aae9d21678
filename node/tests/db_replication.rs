//! The replicated databases over a test log: leader capture, follower apply, identical files.

mod db_common;

use db_common::*;
use dqlite_wire::Value;

#[test]
fn leader_and_two_followers_hold_identical_content() {
    let c = Cluster::new(3);
    let conn = c.handles[0].open("app.db").unwrap();
    conn.blocking_exec_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, r INTEGER, b BLOB, d TEXT, s TEXT);
         CREATE INDEX t_r ON t(r);",
        vec![],
    )
    .unwrap();
    for i in 0..50 {
        conn.blocking_exec_sql(
            "INSERT INTO t(r, b, d, s) VALUES (random(), randomblob(100), datetime('now'), ?)",
            vec![Value::Text(format!("row {i}"))],
        )
        .unwrap();
    }
    // An interactive transaction with savepoints and a rollback.
    conn.blocking_exec_sql("BEGIN", vec![]).unwrap();
    conn.blocking_exec_sql("INSERT INTO t(r, b) VALUES (random(), randomblob(3000))", vec![]).unwrap();
    conn.blocking_exec_sql("SAVEPOINT a", vec![]).unwrap();
    conn.blocking_exec_sql("INSERT INTO t(r) VALUES (1)", vec![]).unwrap();
    conn.blocking_exec_sql("ROLLBACK TO a", vec![]).unwrap();
    conn.blocking_exec_sql("UPDATE t SET s = 'updated' WHERE id % 3 = 0", vec![]).unwrap();
    conn.blocking_exec_sql("RELEASE a", vec![]).unwrap();
    conn.blocking_exec_sql("COMMIT", vec![]).unwrap();
    // A rolled back transaction replicates nothing.
    let before = c.last_index();
    conn.blocking_exec_sql("BEGIN; DELETE FROM t; ROLLBACK;", vec![]).unwrap();
    assert_eq!(c.last_index(), before);
    // A big transaction (spills pages to the WAL before its commit).
    conn.blocking_exec_sql("BEGIN", vec![]).unwrap();
    for _ in 0..20 {
        conn.blocking_exec_sql("INSERT INTO t(r, b) VALUES (random(), randomblob(200000))", vec![]).unwrap();
    }
    conn.blocking_exec_sql("COMMIT", vec![]).unwrap();
    conn.blocking_exec_sql("DELETE FROM t WHERE length(b) > 100000; VACUUM;", vec![]).unwrap();
    c.wait_all_applied();
    let d0 = dump(&c.handles[0], "app.db");
    assert!(d0.contains("updated"));
    for i in 0..3 {
        assert_eq!(dump(&c.handles[i], "app.db"), d0, "node {i} differs");
        integrity_ok(&c.handles[i], "app.db");
    }
    // After a full checkpoint the database files are byte-identical.
    let mut files = Vec::new();
    for i in 0..3 {
        c.on_sm(i, |sm| sm.checkpoint_all().unwrap());
        files.push(std::fs::read(c.dir(i).join("db/app.db")).unwrap());
    }
    assert!(files[0].len() > 4096);
    assert_eq!(files[0], files[1]);
    assert_eq!(files[0], files[2]);
}

#[test]
fn followers_refuse_writes_with_not_leader() {
    let c = Cluster::new(2);
    let conn = c.handles[0].open("x.db").unwrap();
    conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
    c.wait_all_applied();
    let f = c.handles[1].open("x.db").unwrap();
    let e = f.blocking_exec_sql("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    assert_eq!(e.code(), 10250, "{e}");
    assert_eq!(count(&f, "SELECT count(*) FROM t"), 0);
}
