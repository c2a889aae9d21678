//! Cancel safety against real dqlite: every request (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, EXEC,
//! QUERY, a result stream) is dropped at each of its await points in turn (the future is
//! polled N times, N = 0, 1, 2, … until it completes), and afterwards the connection must
//! still agree with the server: its transaction depth is right, autocommit writes through the
//! same pool commit, and a second pool sees every acknowledged row and can write.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Connection, Executor};
use sqlx_dqlite::{Dqlite, DqlitePool};

use crate::common;

/// Resolves to `Some(output)` if `inner` completes within `polls` polls, else drops `inner`
/// at that await point and resolves to `None`. Polls only happen on real wake-ups, so each N
/// stops the request at a different point of its progress.
struct CancelAfter<F: Future> {
    inner: Pin<Box<F>>,
    polls_left: usize,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls_left == 0 {
            return Poll::Ready(None);
        }
        self.polls_left -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

fn cancel_after<F: Future>(polls: usize, inner: F) -> CancelAfter<F> {
    CancelAfter { inner: Box::pin(inner), polls_left: polls }
}

/// More polls than any request here needs: the loop ends when the request completes.
const MAX_POLLS: usize = 200;

fn depth(conn: &PoolConnection<Dqlite>) -> usize {
    conn.transaction_depth()
}

struct Fixture {
    pool: DqlitePool,
    other: DqlitePool,
    /// Rows the server acknowledged as committed.
    acked: i64,
}

impl Fixture {
    async fn new(db: &str) -> Fixture {
        let url = common::shared_url(db);
        // One connection: every step reuses the connection the cancelled request ran on.
        let pool = common::pool_for(&url, 1).await;
        pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)").await.unwrap();
        let other = common::pool_for(&url, 1).await;
        Fixture { pool, other, acked: 0 }
    }

    async fn count(pool: &DqlitePool, filter: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM t WHERE v LIKE '{filter}'");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap()
    }

    /// After a cancellation: an autocommit write through the same pool, then the second pool
    /// sees exactly the acknowledged `acked-%` rows and can write itself.
    async fn check(&mut self, what: &str, polls: usize) {
        sqlx::query("INSERT INTO t (v) VALUES (?)")
            .bind(format!("acked-{what}-{polls}"))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{what} cancelled after {polls} polls: autocommit insert failed: {e}"));
        self.acked += 1;
        let seen = Self::count(&self.other, "acked-%").await;
        assert_eq!(seen, self.acked, "{what} cancelled after {polls} polls: second pool misses acknowledged rows");
        let mut conn = self.other.acquire().await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES ('other')")
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{what} cancelled after {polls} polls: second pool cannot write: {e}"));
        let mine = self.pool.acquire().await.unwrap();
        assert_eq!(depth(&mine), 0, "{what} cancelled after {polls} polls: connection left inside a transaction");
    }
}

#[tokio::test]
async fn cancelled_begin_never_leaves_a_transaction_open() {
    let mut f = Fixture::new("cancel_begin").await;
    for polls in 0..MAX_POLLS {
        let mut conn = f.pool.acquire().await.unwrap();
        let in_process = conn.is_in_process();
        let completed = match cancel_after(polls, conn.begin()).await {
            Some(tx) => {
                let tx = tx.unwrap();
                tx.rollback().await.unwrap();
                true
            }
            None => false,
        };
        drop(conn);
        f.check("begin", polls).await;
        if completed {
            // Over a socket the answer cannot be there at the first poll. In process (the
            // `embedded` launcher) the node's connection thread may answer BEGIN between the
            // request's write and the first read of the same poll.
            assert!(polls > 1 || in_process, "BEGIN completed without waiting for the server");
            return;
        }
    }
    panic!("BEGIN never completed");
}

#[tokio::test]
async fn cancelled_custom_begin_never_leaves_a_transaction_open() {
    let mut f = Fixture::new("cancel_begin_with").await;
    for polls in 0..MAX_POLLS {
        let mut conn = f.pool.acquire().await.unwrap();
        let completed = match cancel_after(polls, conn.begin_with("BEGIN IMMEDIATE")).await {
            Some(tx) => {
                tx.unwrap().rollback().await.unwrap();
                true
            }
            None => false,
        };
        drop(conn);
        f.check("begin_with", polls).await;
        if completed {
            return;
        }
    }
    panic!("BEGIN IMMEDIATE never completed");
}

#[tokio::test]
async fn cancelled_commit_settles_on_the_servers_answer() {
    let mut f = Fixture::new("cancel_commit").await;
    for polls in 0..MAX_POLLS {
        let mut conn = f.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let v = format!("commit-{polls}");
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(&v).execute(&mut *tx).await.unwrap();
        let done = cancel_after(polls, tx.commit()).await;
        drop(conn);
        f.check("commit", polls).await;
        // Committed or not, but never half: the row is there iff the server committed, and
        // a completed commit's row is always there.
        let n = Fixture::count(&f.other, &v).await;
        assert!(n <= 1);
        if let Some(r) = done {
            r.unwrap();
            assert_eq!(n, 1, "acknowledged commit lost");
            assert!(polls > 1);
            return;
        }
    }
    panic!("COMMIT never completed");
}

#[tokio::test]
async fn cancelled_rollback_leaves_nothing() {
    let mut f = Fixture::new("cancel_rollback").await;
    for polls in 0..MAX_POLLS {
        let mut conn = f.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let v = format!("rolledback-{polls}");
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(&v).execute(&mut *tx).await.unwrap();
        let done = cancel_after(polls, tx.rollback()).await;
        drop(conn);
        f.check("rollback", polls).await;
        assert_eq!(Fixture::count(&f.other, &v).await, 0, "rolled-back row visible");
        if let Some(r) = done {
            r.unwrap();
            return;
        }
    }
    panic!("ROLLBACK never completed");
}

#[tokio::test]
async fn cancelled_savepoint_keeps_the_outer_transaction() {
    let mut f = Fixture::new("cancel_savepoint").await;
    for polls in 0..MAX_POLLS {
        let mut conn = f.pool.acquire().await.unwrap();
        let mut outer = conn.begin().await.unwrap();
        let v = format!("outer-{polls}");
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(&v).execute(&mut *outer).await.unwrap();
        let completed = match cancel_after(polls, outer.begin()).await {
            Some(inner) => {
                let mut inner = inner.unwrap();
                sqlx::query("INSERT INTO t (v) VALUES ('inner')").execute(&mut *inner).await.unwrap();
                inner.rollback().await.unwrap();
                true
            }
            None => false,
        };
        // The outer transaction goes on at depth 1 and commits only its own row.
        let d = outer.transaction_depth();
        assert_eq!(d, 1, "savepoint cancelled after {polls} polls");
        sqlx::query("INSERT INTO t (v) VALUES (?)").bind(format!("{v}-b")).execute(&mut *outer).await.unwrap();
        outer.commit().await.unwrap();
        drop(conn);
        assert_eq!(Fixture::count(&f.other, &format!("{v}%")).await, 2);
        assert_eq!(Fixture::count(&f.other, "inner").await, 0);
        f.check("savepoint", polls).await;
        if completed {
            return;
        }
    }
    panic!("SAVEPOINT never completed");
}

#[tokio::test]
async fn cancelled_statements_leave_the_connection_in_step() {
    let mut f = Fixture::new("cancel_exec").await;
    // EXEC (prepared, with arguments) and EXEC_SQL (no arguments), outside and inside a
    // transaction.
    for (what, sql, bind) in
        [("exec", "INSERT INTO t (v) VALUES (?)", true), ("exec_sql", "INSERT INTO t (v) VALUES ('exec-sql')", false)]
    {
        let mut completed = false;
        for polls in 0..MAX_POLLS {
            let mut conn = f.pool.acquire().await.unwrap();
            let q = sqlx::query(sql);
            let q = if bind { q.bind(format!("{what}-{polls}")) } else { q };
            let done = cancel_after(polls, q.execute(&mut *conn)).await;
            drop(conn);
            f.check(what, polls).await;
            if let Some(r) = done {
                assert_eq!(r.unwrap().rows_affected(), 1);
                completed = true;
                break;
            }
        }
        assert!(completed, "{what} never completed");

        completed = false;
        for polls in 0..MAX_POLLS {
            let mut conn = f.pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            let q = sqlx::query(sql);
            let q = if bind { q.bind(format!("{what}-tx-{polls}")) } else { q };
            let done = cancel_after(polls, q.execute(&mut *tx)).await;
            // The transaction is still usable and rolls back everything.
            let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(n, 1);
            tx.rollback().await.unwrap();
            drop(conn);
            f.check(what, polls).await;
            if done.is_some() {
                completed = true;
                break;
            }
        }
        assert!(completed, "{what} in a transaction never completed");
        assert_eq!(Fixture::count(&f.other, &format!("{what}-tx-%")).await, 0);
    }
}

#[tokio::test]
async fn cancelled_queries_and_streams_are_drained() {
    let mut f = Fixture::new("cancel_query").await;
    f.pool
        .execute(
            "CREATE TABLE big (n INTEGER PRIMARY KEY, payload TEXT NOT NULL);
             INSERT INTO big (n, payload)
               WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)
               SELECT x, hex(randomblob(32)) FROM c;",
        )
        .await
        .unwrap();
    // QUERY (prepared) and QUERY_SQL of a many-batch result. (Not a write sent as QUERY:
    // dqlite 1.11 aborts on the next write after `INSERT ... RETURNING`, cancelled or not —
    // `vfsFileShmLock: Assertion wal->n_tx == 0`.)
    for (what, sql) in
        [("query", "SELECT n, payload FROM big WHERE n > ?"), ("query_sql", "SELECT n, payload FROM big")]
    {
        let mut completed = false;
        for polls in 0..MAX_POLLS {
            let mut conn = f.pool.acquire().await.unwrap();
            let q = sqlx::query(sql);
            let q = if sql.contains('?') { q.bind(0_i64) } else { q };
            let done = cancel_after(polls, q.fetch_all(&mut *conn)).await;
            // The next query on the same connection gets its own answer.
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM big").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(n, 3000, "{what} cancelled after {polls} polls");
            drop(conn);
            f.check(what, polls).await;
            if let Some(rows) = done {
                let rows = rows.unwrap();
                assert_eq!(rows.len(), 3000);
                completed = true;
                break;
            }
        }
        assert!(completed, "{what} never completed");
    }
    // A stream dropped after k rows.
    for k in [0_usize, 1, 500, 2999] {
        let mut conn = f.pool.acquire().await.unwrap();
        {
            let mut s = sqlx::query("SELECT n FROM big ORDER BY n").fetch(&mut *conn);
            for _ in 0..k {
                s.try_next().await.unwrap().unwrap();
            }
        }
        let n: i64 = sqlx::query_scalar("SELECT max(n) FROM big").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(n, 3000);
        drop(conn);
        f.check("stream", k).await;
    }
}

/// A write that waits for the write lock (another connection's transaction holds it) is
/// dropped while it waits, at growing delays; the lock is then released. The connection must
/// stay in step whatever the server did with the dropped write.
#[tokio::test]
async fn cancelled_write_waiting_for_the_lock_leaves_the_connection_in_step() {
    let mut f = Fixture::new("cancel_queued").await;
    let holder = common::pool_for(&common::shared_url("cancel_queued"), 1).await;
    for k in 0..5u64 {
        let mut h = holder.acquire().await.unwrap();
        let mut tx = h.begin().await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES ('holder')").execute(&mut *tx).await.unwrap();
        let mut conn = f.pool.acquire().await.unwrap();
        let write = sqlx::query("INSERT INTO t (v) VALUES (?)").bind(format!("queued-{k}")).execute(&mut *conn);
        // The lock is held until the commit below, so the write cannot finish first: the
        // time-out is only where it is dropped (the request may or may not be out yet).
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(5 * k), write).await;
        assert!(
            dropped.as_ref().map_or(true, |r| r.is_err()),
            "a write finished while another transaction held the lock"
        );
        drop(conn);
        tx.commit().await.unwrap();
        drop(h);
        f.check("queued write", k as usize).await;
    }
    assert_eq!(Fixture::count(&f.other, "holder").await, 5);
}
