//! Group commit inside one database (DESIGN.md "The commit path").
//!
//! ```text
//!  client conn threads                    batch thread of database D (one SQLite connection)
//!    autocommit write ── Job ──► queue ──► BEGIN IMMEDIATE
//!    (blocked on its reply)                 for each job: SAVEPOINT; run; RELEASE
//!                                           COMMIT ── capture ── one Raft entry ── wait
//!    ◄── result (after the commit) ───────  answer every job
//! ```
//!
//! While an entry of D is replicating, the autocommit writes that arrive for D queue up; when
//! the batch thread is free it runs the whole queue (up to [`MAX_BATCH`]) inside one SQLite
//! transaction, each statement inside its own savepoint, and answers each client only after the
//! shared entry committed. Each client sees what it would have seen had the statements run one
//! after another in queue order on its own connection: rows affected, last insert rowid (the
//! batch connection's `last_insert_rowid` is set to the client's before its statement, and the
//! client's afterwards), and its own error:
//!
//! * a failing statement keeps what SQLite keeps in autocommit mode (nothing for ABORT and
//!   `RAISE(ABORT)`, the rows before the failing one for FAIL) and the savepoint is released;
//! * a statement that ends the whole transaction (`OR ROLLBACK`, `RAISE(ROLLBACK)`, an
//!   interrupt or I/O error) is seen through the connection's autocommit state: it gets its
//!   error, and the statements before it in the batch are run again in a new transaction;
//! * if the commit itself fails (leadership lost, no quorum, disk full), every statement that
//!   had succeeded gets the commit's error, as it would have alone.
//!
//! Only statements that behave the same in a shared transaction are batched (see
//! [`Eligibility`]): single INSERT/REPLACE/UPDATE/DELETE statements (optionally with a WITH
//! clause) without result columns, touching only the main database, from a connection in
//! autocommit mode that never set a PRAGMA, not calling `changes()` / `total_changes()`.
//! Everything else (explicit transactions, DDL, PRAGMAs, temp tables, VACUUM, RETURNING) runs
//! alone on the client's connection, as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dqlite_wire::Value;

use super::conn::ExecResult;
use super::{lock, pause, DbError, DbShared};
use crate::vfs::VfsConnection;

/// Statements run in one batch at most.
pub const MAX_BATCH: usize = 256;
/// A batch thread with nothing to do for this long closes its connection and exits.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// A batch takes in statements that arrive while it runs for this long at most (from when its
/// first statements have run), then commits.
const MAX_GATHER: Duration = Duration::from_millis(4);
/// Prepared statements the batch connection keeps.
const STATEMENT_CACHE: usize = 128;

/// Counters of the group commit (process-wide), for benchmarks and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches that ran.
    pub batches: u64,
    /// Statements that ran in them.
    pub statements: u64,
    /// Times a batch was restarted because a statement rolled the transaction back.
    pub restarts: u64,
    /// Time spent running the statements of batches (BEGIN to the last RELEASE), in µs.
    pub exec_micros: u64,
    /// Time spent in COMMIT (capture, Raft round, write-through), in µs.
    pub commit_micros: u64,
    /// Statements submitted to a batch and not yet answered, now (a gauge, not a total): those
    /// queued plus those running in a batch or waiting for its commit.
    pub queued: u64,
}

static BATCHES: AtomicU64 = AtomicU64::new(0);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);
static EXEC_MICROS: AtomicU64 = AtomicU64::new(0);
static COMMIT_MICROS: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
/// When the counters were last logged (µs since [`EPOCH`]).
static LOGGED_AT: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
/// How often the batch threads log the counters (at debug level) while they work.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The group commit's counters so far (process-wide).
pub fn stats() -> BatchStats {
    BatchStats {
        batches: BATCHES.load(Ordering::Relaxed),
        statements: STATEMENTS.load(Ordering::Relaxed),
        restarts: RESTARTS.load(Ordering::Relaxed),
        exec_micros: EXEC_MICROS.load(Ordering::Relaxed),
        commit_micros: COMMIT_MICROS.load(Ordering::Relaxed),
        queued: QUEUED.load(Ordering::Relaxed),
    }
}

fn maybe_log() {
    let now = EPOCH.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64;
    let last = LOGGED_AT.load(Ordering::Relaxed);
    if now.saturating_sub(last) < LOG_EVERY.as_micros() as u64
        || LOGGED_AT.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    let s = stats();
    let b = s.batches.max(1);
    tracing::debug!(
        batches = s.batches,
        statements = s.statements,
        mean_batch = s.statements as f64 / b as f64,
        restarts = s.restarts,
        exec_us_per_batch = s.exec_micros / b,
        commit_us_per_batch = s.commit_micros / b,
        "group commit counters"
    );
}

/// One autocommit statement to run in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatement {
    /// One SQL statement.
    pub sql: String,
    /// Its parameters (as many as it takes).
    pub params: Vec<Value>,
    /// `last_insert_rowid()` of the client's connection before the statement.
    pub last_insert_rowid: i64,
}

/// What one batched statement gave.
#[derive(Debug)]
pub struct BatchOutcome {
    /// Its result, or its own error (or the shared commit's).
    pub result: Result<ExecResult, DbError>,
    /// `last_insert_rowid()` of the client's connection after it (also after an error: a FAIL
    /// insert keeps the rows before the failing one).
    pub last_insert_rowid: i64,
    /// `changes()` of the client's connection after it (`None`: unchanged).
    pub changes: Option<u64>,
}

/// What the authorizer saw while a statement was prepared on a client connection.
#[derive(Debug, Default)]
pub(crate) struct Eligibility {
    /// Something outside the allow-list was authorized (DDL, PRAGMA, transaction control, a
    /// temp object, ATTACH, `changes()`...): the statement runs alone.
    pub(crate) alone: bool,
    /// The connection set a PRAGMA: its settings may differ from the batch connection's, so
    /// none of its statements are batched from then on.
    pub(crate) tainted: bool,
    /// The statement calls `changes()` (the client's connection must report its batched
    /// statements' counts first).
    pub(crate) uses_changes: bool,
}

impl Eligibility {
    /// Notes one authorizer callback.
    pub(crate) fn note(&mut self, ctx: &rusqlite::hooks::AuthContext<'_>) {
        use rusqlite::hooks::AuthAction as A;
        if ctx.database_name.is_some_and(|d| d != "main") {
            self.alone = true;
        }
        match &ctx.action {
            A::Read { .. } | A::Insert { .. } | A::Update { .. } | A::Delete { .. } | A::Select | A::Recursive => {}
            A::Function { function_name } => {
                if function_name.eq_ignore_ascii_case("changes") {
                    self.alone = true;
                    self.uses_changes = true;
                } else if function_name.eq_ignore_ascii_case("total_changes") {
                    self.alone = true;
                }
            }
            A::Pragma { pragma_value, .. } => {
                self.alone = true;
                if pragma_value.is_some() {
                    self.tainted = true;
                }
            }
            _ => self.alone = true,
        }
    }
}

/// Whether `sql` (one statement) starts with a keyword of a batchable statement.
pub(crate) fn dml_keyword(sql: &str) -> bool {
    let word = first_keyword(sql);
    ["INSERT", "REPLACE", "UPDATE", "DELETE", "WITH"].iter().any(|k| word.eq_ignore_ascii_case(k))
}

fn first_keyword(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map(|i| &rest[i + 1..]).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map(|i| &rest[i + 2..]).unwrap_or("");
        } else {
            break;
        }
    }
    let end = s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    &s[..end]
}

struct Job {
    stmt: BatchStatement,
    reply: mpsc::SyncSender<BatchOutcome>,
}

/// Counts one submitted statement in [`BatchStats::queued`] until it is answered (dropped).
struct Queued;

impl Queued {
    fn new() -> Queued {
        QUEUED.fetch_add(1, Ordering::Relaxed);
        Queued
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: bool,
    /// Statements in the running batch (0: the batch thread is not running one).
    in_batch: usize,
    /// Statements running alone on their own connection through [`DbShared::try_alone`].
    alone: usize,
}

/// A statement running on its client's own connection because nothing else was writing
/// (dropping it ends that).
pub(crate) struct Alone<'a> {
    slot: &'a BatchSlot,
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.slot.q);
        q.alone -= 1;
    }
}

/// One database's queue of batchable statements and its batch thread.
#[derive(Default)]
pub(crate) struct BatchSlot {
    q: Mutex<Queue>,
    cv: Condvar,
}

fn dup(e: &DbError) -> DbError {
    DbError::sql(e.code(), e.to_string())
}

impl DbShared {
    /// Runs `stmt` in this database's next batch; blocks until that batch committed (or failed).
    pub(crate) fn submit_batched(self: &Arc<Self>, stmt: BatchStatement) -> BatchOutcome {
        let rowid = stmt.last_insert_rowid;
        let (tx, rx) = mpsc::sync_channel(1);
        let _queued = {
            let mut q = lock(&self.batch.q);
            q.jobs.push_back(Job { stmt, reply: tx });
            let queued = Queued::new();
            if !q.running {
                let db = self.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("dqlite-batch-{}", self.name))
                    .spawn(move || batch_thread(db));
                match spawned {
                    Ok(_) => q.running = true,
                    Err(e) => {
                        q.jobs.pop_back();
                        return BatchOutcome {
                            result: Err(DbError::sql(
                                libsqlite3_sys::SQLITE_IOERR,
                                format!("cannot start a thread: {e}"),
                            )),
                            last_insert_rowid: rowid,
                            changes: None,
                        };
                    }
                }
            }
            self.batch.cv.notify_one();
            queued
        };
        rx.recv().unwrap_or(BatchOutcome { result: Err(DbError::Closed), last_insert_rowid: rowid, changes: None })
    }

    /// When no other batchable write of this database is queued or running, a statement runs
    /// on its client's own connection (no thread hand-off: a lone writer pays nothing for group
    /// commit); the writes that arrive meanwhile queue for the batch thread.
    pub(crate) fn try_alone(&self) -> Option<Alone<'_>> {
        let mut q = lock(&self.batch.q);
        if q.jobs.is_empty() && q.in_batch == 0 && q.alone == 0 {
            q.alone += 1;
            Some(Alone { slot: &self.batch })
        } else {
            None
        }
    }

    /// Runs `stmts` as one batch, in order, on a fresh connection (the batch thread's code path;
    /// for tests and benchmarks). The batch starts with the first half of them and takes in the
    /// rest one at a time as they were queued late (the path of statements that arrive while a
    /// batch runs), so the results must be those of one batch of all of them.
    pub(crate) fn run_batch_now(&self, stmts: Vec<BatchStatement>) -> Result<Vec<BatchOutcome>, DbError> {
        let vc = self.node.open_conn(self, false, self.node.config().busy_timeout)?;
        vc.conn().set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut late: VecDeque<BatchStatement> = stmts.into();
        let mut first: Vec<BatchStatement> = late.drain(..late.len().div_ceil(2)).collect();
        let mut more = |s: &mut Vec<BatchStatement>| match late.pop_front() {
            Some(x) => {
                s.push(x);
                true
            }
            None => false,
        };
        Ok(run_batch(&vc, self, &mut first, &mut more))
    }

    /// Statements submitted to the batch thread and not yet answered: those queued and those
    /// in the running batch.
    pub(crate) fn batch_pending(&self) -> usize {
        let q = lock(&self.batch.q);
        q.jobs.len() + q.in_batch
    }
}

fn batch_thread(db: Arc<DbShared>) {
    let vc = match db.node.open_conn(&db, false, db.node.config().busy_timeout) {
        Ok(vc) => vc,
        Err(e) => {
            tracing::warn!(db = db.name, error = %e, "cannot open the batch connection");
            let mut q = lock(&db.batch.q);
            q.running = false;
            for j in q.jobs.drain(..) {
                let rowid = j.stmt.last_insert_rowid;
                let _ = j.reply.send(BatchOutcome { result: Err(dup(&e)), last_insert_rowid: rowid, changes: None });
            }
            return;
        }
    };
    vc.conn().set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    loop {
        let mut replies = Vec::new();
        let mut stmts = Vec::new();
        {
            let mut q = lock(&db.batch.q);
            while q.jobs.is_empty() {
                let (g, t) = match db.batch.cv.wait_timeout(q, IDLE_EXIT) {
                    Ok(r) => r,
                    Err(p) => p.into_inner(),
                };
                q = g;
                if t.timed_out() && q.jobs.is_empty() {
                    q.running = false;
                    return;
                }
            }
            take_jobs(&mut q, &mut stmts, &mut replies);
        }
        // The window opens when the batch's first statements have run (not when it was taken:
        // its BEGIN may have waited for the write lock meanwhile).
        let mut gather_until: Option<Instant> = None;
        let mut more = |stmts: &mut Vec<BatchStatement>| -> bool {
            let until = *gather_until.get_or_insert_with(|| Instant::now() + MAX_GATHER);
            if Instant::now() >= until {
                return false;
            }
            pause::before_gather(&db.path);
            take_jobs(&mut lock(&db.batch.q), stmts, &mut replies) > 0
        };
        let outcomes = run_batch(&vc, &db, &mut stmts, &mut more);
        lock(&db.batch.q).in_batch = 0;
        for (o, r) in outcomes.into_iter().zip(replies) {
            // The client is gone (its connection closed): nobody to answer.
            let _ = r.send(o);
        }
    }
}

/// Moves queued jobs into a batch of `stmts` (answered through `replies`, in the same order),
/// up to [`MAX_BATCH`] statements in all; returns how many it moved.
fn take_jobs(
    q: &mut Queue,
    stmts: &mut Vec<BatchStatement>,
    replies: &mut Vec<mpsc::SyncSender<BatchOutcome>>,
) -> usize {
    let n = q.jobs.len().min(MAX_BATCH.saturating_sub(stmts.len()));
    q.in_batch += n;
    for j in q.jobs.drain(..n) {
        stmts.push(j.stmt);
        replies.push(j.reply);
    }
    n
}

/// Runs one statement; `stepped` tells whether it got as far as running (and so set
/// `changes()`).
fn exec_one(vc: &VfsConnection, s: &BatchStatement, stepped: &mut bool) -> Result<ExecResult, rusqlite::Error> {
    let c = vc.conn();
    if c.last_insert_rowid() != s.last_insert_rowid {
        vc.set_last_insert_rowid(s.last_insert_rowid);
    }
    let mut stmt = c.prepare_cached(&s.sql)?;
    let n = stmt.parameter_count().min(s.params.len());
    for (i, v) in s.params[..n].iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, super::conn::to_sql(v))?;
    }
    *stepped = true;
    match stmt.raw_execute() {
        Ok(_) | Err(rusqlite::Error::ExecuteReturnedResults) => {}
        Err(e) => return Err(e),
    }
    Ok(ExecResult { last_insert_id: c.last_insert_rowid(), rows_affected: c.changes() })
}

/// Runs a transaction-control statement through the statement cache (no parsing per batch).
fn control(c: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.raw_execute().map(|_| ())
}

/// Runs `stmts` in one transaction (one savepoint each) and commits it; see the module docs.
///
/// When the last statement has run, `more` may append statements that arrived meanwhile (it
/// returns whether it did): they run in the same transaction, after the others, as if they had
/// been queued from the start. So the clients answered by one batch, whose next statements
/// arrive while the following batch runs, join that batch instead of waiting for a whole
/// commit round of their own (without it, 32 clients settle into two cohorts that take turns).
fn run_batch(
    vc: &VfsConnection,
    db: &DbShared,
    stmts: &mut Vec<BatchStatement>,
    more: &mut dyn FnMut(&mut Vec<BatchStatement>) -> bool,
) -> Vec<BatchOutcome> {
    let c = vc.conn();
    let all = |e: DbError| -> Vec<BatchOutcome> {
        stmts
            .iter()
            .map(|s| BatchOutcome { result: Err(dup(&e)), last_insert_rowid: s.last_insert_rowid, changes: None })
            .collect()
    };
    let current = lock(&db.node.dbs).get(&db.name).is_some_and(|d| std::ptr::eq(Arc::as_ptr(d), db));
    if !current {
        return all(DbError::sql(
            libsqlite3_sys::SQLITE_ABORT,
            "the database was replaced by a snapshot install; reopen the connection",
        ));
    }
    if let Err(e) = db.node.ensure_write_ready(db.node.config().commit_timeout) {
        return all(e);
    }
    let error = |e: rusqlite::Error| -> DbError {
        if let Some(f) = db.take_failure(vc.id()) {
            return DbError::sql(f.code, f.message);
        }
        DbError::from(e)
    };
    BATCHES.fetch_add(1, Ordering::Relaxed);
    let mut out: Vec<Option<BatchOutcome>> = (0..stmts.len()).map(|_| None).collect();
    // Statements whose error ended the transaction: final, not run again.
    let mut final_err = vec![false; stmts.len()];
    let started = std::time::Instant::now();
    'attempt: loop {
        let begun = control(c, "BEGIN IMMEDIATE");
        if let Err(e) = begun {
            let e = error(e);
            vc.end_statement();
            for (i, s) in stmts.iter().enumerate() {
                if !final_err[i] {
                    out[i] = Some(BatchOutcome {
                        result: Err(dup(&e)),
                        last_insert_rowid: s.last_insert_rowid,
                        changes: None,
                    });
                }
            }
            break 'attempt;
        }
        let mut next = 0;
        loop {
            if next == stmts.len() {
                if !more(stmts) {
                    break;
                }
                out.resize_with(stmts.len(), || None);
                final_err.resize(stmts.len(), false);
            }
            let i = next;
            next += 1;
            let s = &stmts[i];
            if final_err[i] {
                continue;
            }
            if let Err(e) = control(c, "SAVEPOINT dqlite_batch") {
                // Cannot isolate this statement: fail it alone, keep the others.
                out[i] =
                    Some(BatchOutcome { result: Err(error(e)), last_insert_rowid: s.last_insert_rowid, changes: None });
                if c.is_autocommit() {
                    final_err[i] = true;
                    RESTARTS.fetch_add(1, Ordering::Relaxed);
                    continue 'attempt;
                }
                continue;
            }
            let mut stepped = false;
            let r = exec_one(vc, s, &mut stepped);
            let rowid = c.last_insert_rowid();
            let changes = stepped.then(|| c.changes());
            if c.is_autocommit() {
                // The statement ended the whole transaction (ROLLBACK conflict clause,
                // RAISE(ROLLBACK), interrupt, I/O error): it keeps its error; the statements
                // before it are run again.
                let result = match r {
                    Ok(_) => Err(DbError::sql(libsqlite3_sys::SQLITE_ERROR, "the transaction was rolled back")),
                    Err(e) => Err(error(e)),
                };
                out[i] = Some(BatchOutcome { result, last_insert_rowid: rowid, changes });
                final_err[i] = true;
                RESTARTS.fetch_add(1, Ordering::Relaxed);
                continue 'attempt;
            }
            let result = r.map_err(error);
            // Keep what SQLite kept, as in autocommit mode (FAIL keeps the rows before the
            // failing one); only the transaction-wide rollback above undoes more.
            if let Err(e) = control(c, "RELEASE dqlite_batch") {
                tracing::warn!(db = db.name, error = %e, "cannot release a batch savepoint");
            }
            out[i] = Some(BatchOutcome { result, last_insert_rowid: rowid, changes });
        }
        let committing = std::time::Instant::now();
        EXEC_MICROS.fetch_add((committing - started).as_micros() as u64, Ordering::Relaxed);
        let committed = control(c, "COMMIT");
        COMMIT_MICROS.fetch_add(committing.elapsed().as_micros() as u64, Ordering::Relaxed);
        maybe_log();
        if let Err(e) = committed {
            let e = error(e);
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            for (o, s) in out.iter_mut().zip(stmts.iter()) {
                match o {
                    Some(BatchOutcome { result: r @ Ok(_), .. }) => *r = Err(dup(&e)),
                    Some(_) => {}
                    None => {
                        *o = Some(BatchOutcome {
                            result: Err(dup(&e)),
                            last_insert_rowid: s.last_insert_rowid,
                            changes: None,
                        });
                    }
                }
            }
        }
        vc.end_statement();
        break 'attempt;
    }
    STATEMENTS.fetch_add(stmts.len() as u64, Ordering::Relaxed);
    out.into_iter()
        .zip(stmts.iter())
        .map(|(o, s)| {
            o.unwrap_or(BatchOutcome {
                result: Err(DbError::sql(libsqlite3_sys::SQLITE_ERROR, "statement not run")),
                last_insert_rowid: s.last_insert_rowid,
                changes: None,
            })
        })
        .collect()
}
