//! The replicated databases of a node: the [`StateMachine`] the Raft runtime applies entries
//! to, and the SQL connection API ([`conn`]) the protocol server and the embedded driver use.
//!
//! ```text
//!  client conn thread (conn.rs)          apply thread (runtime)
//!    SQLite COMMIT                          StateMachine::apply(entry i)
//!      └─ vfs xSync ─ DbShared::commit        ├─ own pending (i, term)? ─► Committed: the
//!            encode entry, propose ──► Raft   │    waiting xSync writes its frames through
//!            wait (timeout) ◄──────────────── │
//!                                             └─ otherwise: Applier (wal.rs) appends the
//!                                                frames to the WAL + wal-index, atomically
//! ```
//!
//! Data directory layout, restart rules and refused SQL: `docs/data-directory.md`,
//! `docs/replication.md`. Entry bytes: `docs/entry-format.md`.
#![deny(unsafe_code)]

pub mod batch;
pub mod conn;
pub mod entry;
pub mod sidecar;
pub mod wal;

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dqlite_raft::{Entry as RaftEntry, EntryKind, LogIndex, NodeId, StateRole, Term};

use crate::replication::{ApplyError, ProposeError, Proposed, Replicator, SnapshotCopy, StateMachine};
use crate::vfs::{self, Capture, ConnId, ConnOptions, DbEntry, DbHooks, VfsConnection};

use entry::{Entry, FramesEntry};
use sidecar::Sidecar;

/// `SQLITE_IOERR_NOT_LEADER`: this node is not the leader (dqlite's code).
pub const SQLITE_IOERR_NOT_LEADER: c_int = libsqlite3_sys::SQLITE_IOERR | (40 << 8);
/// `SQLITE_IOERR_LEADERSHIP_LOST`: leadership was lost while the commit was in flight; its
/// outcome is unknown to the node at that moment (dqlite's code).
pub const SQLITE_IOERR_LEADERSHIP_LOST: c_int = libsqlite3_sys::SQLITE_IOERR | (41 << 8);
/// `SQLITE_IOERR | (42 << 8)`: the commit was not known to be committed within the commit
/// timeout (no quorum); its outcome is unknown. (dqlite-rs's code.)
pub const SQLITE_IOERR_COMMIT_TIMEOUT: c_int = libsqlite3_sys::SQLITE_IOERR | (42 << 8);

/// Tunables of the db layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbConfig {
    /// How long a commit waits for Raft before failing with [`SQLITE_IOERR_COMMIT_TIMEOUT`].
    pub commit_timeout: Duration,
    /// How long a writer waits for its turn at a database's write lock (sqlx-sqlite: 5 s).
    pub busy_timeout: Duration,
    /// A checkpoint round runs after this many applied entries.
    pub checkpoint_every_entries: u64,
    /// A database whose WAL has at least this many frames is checkpointed after an apply.
    pub checkpoint_wal_frames: u32,
    /// SQLite page cache per connection, in KiB (bounded memory).
    pub cache_size_kib: u32,
    /// Group commit of concurrent autocommit writes to one database (`batch.rs`,
    /// docs/replication.md). Default on; the environment variable `DQLITE_GROUP_COMMIT=0`
    /// turns it off in `Default` (for side-by-side benchmarks).
    pub group_commit: bool,
    /// Page size of databases this node creates (a power of two, 512 to 65536; default 4096).
    /// It applies when a database file is created; an existing database keeps its own, and
    /// `PRAGMA page_size` from clients stays refused. Every node should use the same value.
    pub page_size: u32,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            commit_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
            checkpoint_every_entries: 1000,
            checkpoint_wal_frames: 4000,
            cache_size_kib: 2048,
            group_commit: std::env::var("DQLITE_GROUP_COMMIT").map_or(true, |v| v != "0"),
            page_size: 4096,
        }
    }
}

/// Why the db layer could not do something (outside SQL execution).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database name is not a safe file name.
    #[error("invalid database name {0:?}: use 1 to 200 bytes of [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    /// A SQLite error, with its extended result code.
    #[error("{message} (SQLite code {code})")]
    Sql {
        /// Extended result code.
        code: c_int,
        /// Message.
        message: String,
    },
    /// File I/O in the data directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file of the data directory is damaged or inconsistent: the node refuses to start.
    #[error("{path}: {reason}")]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The VFS could not be registered.
    #[error(transparent)]
    Vfs(#[from] vfs::VfsError),
    /// The connection's worker thread is gone.
    #[error("connection closed")]
    Closed,
    /// `DbConfig::page_size` is not a power of two from 512 to 65536.
    #[error("invalid page size {0}: use a power of two from 512 to 65536")]
    InvalidPageSize(u32),
}

impl DbError {
    /// The SQLite extended code this error is reported with on the wire.
    pub fn code(&self) -> c_int {
        match self {
            DbError::Sql { code, .. } => *code,
            DbError::InvalidName(_) => libsqlite3_sys::SQLITE_CANTOPEN,
            DbError::Closed => libsqlite3_sys::SQLITE_MISUSE,
            _ => libsqlite3_sys::SQLITE_IOERR,
        }
    }

    pub(crate) fn sql(code: c_int, message: impl Into<String>) -> DbError {
        DbError::Sql { code, message: message.into() }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                DbError::Sql { code: f.extended_code, message: msg.unwrap_or_else(|| f.to_string()) }
            }
            // SQLite's own message (`sqlite3_errmsg`), as dqlite sends it, without rusqlite's
            // " in <sql> at offset <n>" suffix.
            rusqlite::Error::SqlInputError { error, msg, .. } => {
                DbError::Sql { code: error.extended_code, message: msg }
            }
            other => DbError::Sql { code: libsqlite3_sys::SQLITE_ERROR, message: other.to_string() },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DbError + '_ {
    move |source| DbError::Io { path: path.to_path_buf(), source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct RoleState {
    role: StateRole,
    term: Term,
    leader: Option<NodeId>,
    /// The term whose barrier this node applied as leader: writes are allowed in it.
    ready_term: Option<Term>,
    barrier_proposed: Option<Term>,
}

/// State shared by the state machine, the connections and the VFS hooks of one node.
pub(crate) struct NodeShared {
    dir: PathBuf,
    replicator: Arc<dyn Replicator>,
    config: DbConfig,
    role: Mutex<RoleState>,
    role_cv: Condvar,
    applied: AtomicU64,
    dbs: Mutex<HashMap<String, Arc<DbShared>>>,
    /// Some database has a `lost_write` (set once, never cleared): `apply` looks for its reason
    /// only then, not on every entry.
    lost_write: std::sync::atomic::AtomicBool,
}

/// Why a capture failed: the code SQLite gets, and the message the connection reports.
#[derive(Debug, Clone)]
pub(crate) struct CaptureFailure {
    pub code: c_int,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Proposing,
    Waiting(Proposed),
    Committed,
    GaveUp(c_int),
}

struct DbState {
    pending: Pending,
    /// A proposal whose entry may still commit: no writes until its index is applied.
    unresolved: Option<Proposed>,
    sidecar: Sidecar,
    commits_in_gen: u64,
    /// The connection whose commit is (or was last) in the commit hook.
    writer: Option<ConnId>,
    /// The index of a local commit that is applied (counted in `commits_in_gen`) but whose
    /// frames its writer has not yet published in the wal-index: it releases the write lock
    /// after publishing, which clears this. A checkpoint must not count it as durable.
    unpublished: Option<LogIndex>,
    /// A threshold checkpoint holds new writers back while it runs, so that the WAL is wholly
    /// backfilled when the next writer starts and SQLite restarts it (see
    /// [`Applier::checkpoint_for_restart`]).
    ckpt_gate: bool,
    /// A committed entry that this node could not write to its WAL (`write_through_failed`):
    /// the local files lack it. Writes stay refused, `unpublished` stays set (no checkpoint
    /// or snapshot point counts it), and the next apply stops the node's state machine with
    /// this reason; a restart applies the entry again from the log.
    lost_write: Option<String>,
    failures: HashMap<ConnId, CaptureFailure>,
}

/// One database's shared state; the VFS hooks of its files.
pub(crate) struct DbShared {
    name: String,
    path: PathBuf,
    node: Arc<NodeShared>,
    st: Mutex<DbState>,
    cv: Condvar,
    entry: Mutex<Option<Arc<DbEntry>>>,
    /// Group commit of autocommit statements (`batch.rs`).
    batch: batch::BatchSlot,
}

impl DbShared {
    fn sidecar_path(&self) -> PathBuf {
        sidecar_path(&self.path)
    }

    fn wal_path(&self) -> PathBuf {
        with_suffix(&self.path, "-wal")
    }

    pub(crate) fn vfs_entry(&self) -> Option<Arc<DbEntry>> {
        lock(&self.entry).clone()
    }

    /// Waits until `deadline` for the writer of an applied local commit to publish it
    /// (`write_unlocked`); false if one is still unpublished then.
    fn wait_published<'a>(
        &'a self,
        mut st: MutexGuard<'a, DbState>,
        deadline: Instant,
    ) -> (MutexGuard<'a, DbState>, bool) {
        while st.unpublished.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return (st, false);
            }
            st = match self.cv.wait_timeout(st, (deadline - now).min(Duration::from_millis(20))) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        (st, true)
    }

    /// Wakes the writers waiting at the write lock (the gate of `writes_allowed` may be open).
    /// Never called with `st` held (the queue's lock is taken before `st`).
    fn writers_may_go(&self) {
        if let Some(e) = self.vfs_entry() {
            e.wake_writers();
        }
    }

    /// The failure of `conn`'s last capture, if any (taken).
    pub(crate) fn take_failure(&self, conn: ConnId) -> Option<CaptureFailure> {
        lock(&self.st).failures.remove(&conn)
    }

    fn fail(&self, st: &mut DbState, conn: ConnId, code: c_int, message: String) -> Result<(), c_int> {
        tracing::debug!(db = self.name, code, message, "commit failed");
        st.failures.insert(conn, CaptureFailure { code, message });
        Err(code)
    }
}

impl DbHooks for DbShared {
    fn commit(&self, conn: ConnId, capture: Capture) -> Result<(), c_int> {
        let guard = {
            let r = lock(&self.node.role);
            match (r.role, r.ready_term) {
                (StateRole::Leader, Some(t)) if t == r.term => t,
                (StateRole::Leader, _) => {
                    drop(r);
                    let mut st = lock(&self.st);
                    return self.fail(
                        &mut st,
                        conn,
                        SQLITE_IOERR_NOT_LEADER,
                        "not leader (leadership not yet established)".into(),
                    );
                }
                _ => {
                    drop(r);
                    let mut st = lock(&self.st);
                    return self.fail(&mut st, conn, SQLITE_IOERR_NOT_LEADER, "not leader".into());
                }
            }
        };
        {
            let mut st = lock(&self.st);
            if let Some(reason) = &st.lost_write {
                // The local files lack a committed entry: nothing may be computed on them.
                let msg = reason.clone();
                return self.fail(&mut st, conn, libsqlite3_sys::SQLITE_IOERR_WRITE, msg);
            }
            if st.unpublished.take().is_some() {
                // The previous local commit is published: its writer released the write lock
                // (SQLite does that after writing the wal-index), which this one now holds. Its
                // `write_unlocked` may not have run yet (the VFS lets the next writer go first)
                // and would not match `writer` below: left set, a snapshot point or threshold
                // checkpoint would wait (5 s) for a publication that cannot come while this
                // commit waits for the apply thread.
                self.cv.notify_all();
            }
            if let Some(p) = st.unresolved {
                let msg = format!(
                    "an earlier commit of this database (entry {}) has an unknown outcome; retry later",
                    p.index
                );
                return self.fail(&mut st, conn, SQLITE_IOERR_LEADERSHIP_LOST, msg);
            }
            if st.pending != Pending::None {
                return self.fail(
                    &mut st,
                    conn,
                    libsqlite3_sys::SQLITE_IOERR_FSYNC,
                    "another commit is pending".into(),
                );
            }
            st.pending = Pending::Proposing;
            st.writer = Some(conn);
        }
        let data = entry::encode_frames(guard, &self.name, capture.page_size, capture.db_size, &capture.pages);
        drop(capture);
        tracing::trace!(target: "dqlite::commit", db = %self.name, "propose");
        let proposed = self.node.replicator.propose(data);
        let mut st = lock(&self.st);
        let p = match proposed {
            Ok(p) => p,
            Err(e) => {
                st.pending = Pending::None;
                self.cv.notify_all();
                let code = match e {
                    ProposeError::NotLeader { .. } => SQLITE_IOERR_NOT_LEADER,
                    ProposeError::TooLarge { .. } => libsqlite3_sys::SQLITE_IOERR_FSYNC,
                    ProposeError::DiskFull { .. } => libsqlite3_sys::SQLITE_FULL,
                    _ => libsqlite3_sys::SQLITE_IOERR_FSYNC,
                };
                return self.fail(&mut st, conn, code, e.to_string());
            }
        };
        if p.term != guard {
            // Appended in another term than the one we were ready in: every node skips it.
            st.pending = Pending::None;
            self.cv.notify_all();
            return self.fail(
                &mut st,
                conn,
                SQLITE_IOERR_LEADERSHIP_LOST,
                "leadership changed during the commit; it was not applied".into(),
            );
        }
        if let Pending::GaveUp(code) = st.pending {
            // Leadership was lost while proposing.
            st.pending = Pending::None;
            st.unresolved = Some(p);
            self.cv.notify_all();
            return self.fail(
                &mut st,
                conn,
                code,
                "leadership lost while the commit was in flight; its outcome is unknown".into(),
            );
        }
        st.pending = Pending::Waiting(p);
        self.cv.notify_all();
        let deadline = Instant::now() + self.node.config.commit_timeout;
        loop {
            match st.pending {
                Pending::Committed => {
                    tracing::trace!(target: "dqlite::commit", index = p.index.0, "woken");
                    st.pending = Pending::None;
                    self.cv.notify_all();
                    drop(st);
                    pause::after_commit(&self.path);
                    return Ok(());
                }
                Pending::GaveUp(code) => {
                    st.pending = Pending::None;
                    st.unresolved = Some(p);
                    self.cv.notify_all();
                    return self.fail(
                        &mut st,
                        conn,
                        code,
                        "leadership lost while the commit was in flight; its outcome is unknown".into(),
                    );
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                st.pending = Pending::None;
                st.unresolved = Some(p);
                self.cv.notify_all();
                let msg = format!(
                    "commit not confirmed by Raft within {} ms (no quorum?); its outcome is unknown",
                    self.node.config.commit_timeout.as_millis()
                );
                return self.fail(&mut st, conn, SQLITE_IOERR_COMMIT_TIMEOUT, msg);
            }
            st = match self.cv.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn wal_header(&self, conn: ConnId, header: &[u8; 32]) -> Result<(), c_int> {
        let applied = LogIndex(self.node.applied.load(Ordering::SeqCst));
        let mut st = lock(&self.st);
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&header[16..24]);
        let sc = Sidecar {
            salts,
            prev_salts: st.sidecar.salts,
            gen_first: applied.next(),
            ckpt_index: applied.max(st.sidecar.ckpt_index),
            ckpt_commits: 0,
        };
        if let Err(e) = sc.write(&self.sidecar_path()) {
            tracing::error!(db = self.name, error = %e, "cannot persist the WAL generation");
            return self.fail(&mut st, conn, libsqlite3_sys::SQLITE_IOERR_WRITE, e.to_string());
        }
        st.sidecar = sc;
        st.commits_in_gen = 0;
        Ok(())
    }

    fn writes_allowed(&self) -> bool {
        // A transaction that began now could not see the unresolved entry, which may still
        // commit: writers wait until its fate is known (and, if it committed, it is applied).
        let st = lock(&self.st);
        st.unresolved.is_none() && !st.ckpt_gate && st.lost_write.is_none()
    }

    fn write_through_failed(&self, conn: ConnId, rc: c_int) -> c_int {
        let mut st = lock(&self.st);
        let index = st.unpublished.filter(|_| st.writer == Some(conn));
        let reason = format!(
            "database {}: committed entry {} could not be written to the local WAL (SQLite code {rc}; disk full?): \
             this node stops applying; a restart applies it again from the log",
            self.name,
            index.map_or_else(|| "?".to_string(), |i| i.0.to_string()),
        );
        tracing::error!(db = self.name, rc, "{reason}");
        st.lost_write.get_or_insert(reason);
        self.node.lost_write.store(true, Ordering::SeqCst);
        self.cv.notify_all();
        let msg = format!(
            "the commit is in the Raft log but this node could not write it to its WAL (SQLite code {rc}); \
             the other nodes apply it, this one after a restart: its outcome is committed"
        );
        let code = match self.fail(&mut st, conn, SQLITE_IOERR_LEADERSHIP_LOST, msg) {
            Err(code) => code,
            Ok(()) => SQLITE_IOERR_LEADERSHIP_LOST,
        };
        drop(st);
        // The state machine stops at its next apply (`Databases::apply`): a barrier entry
        // makes that next apply come now, so this node steps down at once instead of serving
        // a state that lacks a committed entry until some other write arrives.
        let term = lock(&self.node.role).ready_term;
        if let Some(t) = term {
            if let Err(e) = self.node.replicator.propose(entry::encode_barrier(t)) {
                tracing::debug!(db = self.name, error = %e, "no barrier after the lost write");
            }
        }
        code
    }

    fn write_unlocked(&self, conn: ConnId) {
        // Test hook (feature `harness`): the write lock is free already, the next writer may go.
        pause::on_unlock(&self.path);
        let mut st = lock(&self.st);
        if st.writer == Some(conn) && st.unpublished.is_some() && st.lost_write.is_none() {
            st.unpublished = None;
            // A threshold checkpoint or a snapshot point (`snapshot::wait_published`) may be
            // waiting for this publication.
            self.cv.notify_all();
        }
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sidecar_path(db: &Path) -> PathBuf {
    with_suffix(db, "-dqlite")
}

const BASE_FILE: &str = ".applied-base";

/// How long a threshold checkpoint waits for the writer of the entry just applied to publish
/// its frames (it needs nothing from the apply thread: microseconds normally).
const PUBLISH_WAIT: Duration = Duration::from_millis(200);

/// Bulk checkpoints ([`Bulk`]) finished in this process.
static BULK_CHECKPOINTS: AtomicU64 = AtomicU64::new(0);

/// How many bulk checkpoints (the part of a threshold checkpoint that runs on a thread of its
/// own, beside commits) have finished in this process: for tests and benchmarks.
pub fn bulk_checkpoints() -> u64 {
    BULK_CHECKPOINTS.load(Ordering::SeqCst)
}

/// A threshold checkpoint copies the WAL on a thread of its own first ([`Bulk`]) when more than
/// this fraction of the threshold is not yet backfilled.
const BULK_FRACTION: u32 = 4;

/// How long the apply connection waits for a database's write lock (a local writer holding it
/// fails its commit within the commit timeout, so this is only reached if something hangs).
const APPLY_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

impl NodeShared {
    pub(crate) fn config(&self) -> &DbConfig {
        &self.config
    }

    /// The database `name`, created (an empty WAL-mode SQLite file) if it does not exist.
    pub(crate) fn db(self: &Arc<Self>, name: &str) -> Result<Arc<DbShared>, DbError> {
        let mut dbs = lock(&self.dbs);
        self.db_in(&mut dbs, name)
    }

    /// [`NodeShared::db`] with the map of databases already locked by the caller.
    fn db_in(self: &Arc<Self>, dbs: &mut HashMap<String, Arc<DbShared>>, name: &str) -> Result<Arc<DbShared>, DbError> {
        if !entry::valid_name(name) {
            return Err(DbError::InvalidName(name.to_string()));
        }
        if let Some(d) = dbs.get(name) {
            return Ok(d.clone());
        }
        let path = self.dir.join(name);
        let sidecar = sidecar::Sidecar::read(&sidecar_path(&path))
            .map_err(|e| DbError::Damaged { path: sidecar_path(&path), reason: e.to_string() })?
            .unwrap_or_else(|| {
                let a = LogIndex(self.applied.load(Ordering::SeqCst));
                Sidecar { salts: [0; 8], prev_salts: [0; 8], gen_first: a.next(), ckpt_index: a, ckpt_commits: 0 }
            });
        let shared = Arc::new(DbShared {
            name: name.to_string(),
            path: path.clone(),
            node: self.clone(),
            st: Mutex::new(DbState {
                pending: Pending::None,
                unresolved: None,
                sidecar,
                commits_in_gen: 0,
                writer: None,
                unpublished: None,
                ckpt_gate: false,
                lost_write: None,
                failures: HashMap::new(),
            }),
            cv: Condvar::new(),
            entry: Mutex::new(None),
            batch: batch::BatchSlot::default(),
        });
        let path_str = path.to_str().ok_or_else(|| DbError::InvalidName(name.to_string()))?;
        let ventry = vfs::register_db(path_str, shared.clone());
        *lock(&shared.entry) = Some(ventry.clone());
        // Create / initialise: WAL mode, synchronous=FULL (deterministic on every node).
        let init = VfsConnection::open(
            &ventry,
            ConnOptions { priority: true, busy_timeout: self.config.busy_timeout, read_only: false },
        )?;
        // Takes effect only while the file is new (SQLite ignores it once the database exists).
        init.conn().execute_batch(&format!("PRAGMA page_size={}", self.config.page_size))?;
        let mode: String = init.conn().query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Damaged {
                path,
                reason: format!("cannot switch the database to WAL mode (got {mode})"),
            });
        }
        drop(init);
        dbs.insert(name.to_string(), shared.clone());
        Ok(shared)
    }

    /// Opens a connection on `db` configured for this node (WAL, FULL sync, no auto-checkpoint,
    /// bounded cache).
    pub(crate) fn open_conn(
        &self,
        db: &DbShared,
        priority: bool,
        busy_timeout: Duration,
    ) -> Result<VfsConnection, DbError> {
        let ventry = db.vfs_entry().ok_or(DbError::Closed)?;
        let c = VfsConnection::open(&ventry, ConnOptions { priority, busy_timeout, read_only: false })?;
        c.conn().execute_batch(&format!(
            "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-{}; PRAGMA mmap_size=0;",
            self.config.cache_size_kib
        ))?;
        Ok(c)
    }

    /// The term this node leads in, if it is the leader.
    pub(crate) fn leader_term(&self) -> Option<Term> {
        let r = lock(&self.role);
        (r.role == StateRole::Leader).then_some(r.term)
    }

    pub(crate) fn is_leader(&self) -> bool {
        lock(&self.role).role == StateRole::Leader
    }

    /// Waits until this node may take writes (leader, its barrier applied), proposing the
    /// barrier if needed.
    /// Leader, but its term's barrier is not applied yet (its state may lag the commit index).
    pub(crate) fn leader_catching_up(&self) -> bool {
        let r = lock(&self.role);
        r.role == StateRole::Leader && r.ready_term != Some(r.term)
    }

    pub(crate) fn ensure_write_ready(&self, timeout: Duration) -> Result<(), DbError> {
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.role);
        loop {
            if r.role != StateRole::Leader {
                return Err(DbError::sql(SQLITE_IOERR_NOT_LEADER, "not leader"));
            }
            if r.ready_term == Some(r.term) {
                return Ok(());
            }
            if r.barrier_proposed != Some(r.term) {
                let term = r.term;
                r.barrier_proposed = Some(term);
                drop(r);
                if let Err(e) = self.replicator.propose(entry::encode_barrier(term)) {
                    let mut r = lock(&self.role);
                    if r.barrier_proposed == Some(term) {
                        r.barrier_proposed = None;
                    }
                    return Err(DbError::sql(SQLITE_IOERR_NOT_LEADER, e.to_string()));
                }
                r = lock(&self.role);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DbError::sql(
                    SQLITE_IOERR_COMMIT_TIMEOUT,
                    "leadership not established within the commit timeout",
                ));
            }
            r = match self.role_cv.wait_timeout(r, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// The apply side of one database: its dedicated apply connection and WAL handle.
struct Applier {
    shared: Arc<DbShared>,
    conn: VfsConnection,
    wal: File,
    /// Digests of WAL commits found at open that the log has not re-delivered yet.
    verify: VecDeque<u32>,
    /// The WAL size (frames) at the last threshold checkpoint that did not let the WAL restart:
    /// the next one waits until the WAL has grown by a further eighth of the threshold.
    threshold_tried_at: Option<u32>,
    /// The bulk of a threshold checkpoint, running on its own thread ([`Applier::start_bulk`]).
    bulk: Option<Bulk>,
}

/// A PASSIVE checkpoint running on a thread of its own with a connection of its own: it copies
/// most of a big WAL into the database file while entries go on being applied and local
/// writers go on committing. SQLite's own locks make it safe beside them (it takes the
/// checkpointer lock, never the write lock, and backfills no frame past a reader's mark). It
/// records no durable point: the short checkpoint that follows it does.
struct Bulk {
    handle: std::thread::JoinHandle<()>,
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Its connection must be closed before the files are (a snapshot install swaps them).
        self.join_bulk();
    }
}

impl Applier {
    fn open(node: &Arc<NodeShared>, shared: Arc<DbShared>) -> Result<Applier, DbError> {
        let conn = node.open_conn(&shared, true, APPLY_BUSY_TIMEOUT)?;
        // Run WAL recovery (if needed) and map the wal-index.
        conn.conn().query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
        conn.end_statement();
        let wal_path = shared.wal_path();
        let wal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal_path)
            .map_err(io_err(&wal_path))?;
        Ok(Applier { shared, conn, wal, verify: VecDeque::new(), threshold_tried_at: None, bulk: None })
    }

    fn mx_frame(&self) -> Result<(u32, u32), DbError> {
        let shm = self.conn.shm().ok_or(DbError::Closed)?;
        let r0 = shm.region(0).map_err(|c| DbError::sql(c, "wal-index map failed"))?;
        Ok((wal::read_hdr(&r0).mx_frame, wal::n_backfill(&r0)))
    }

    /// At open: reconcile the WAL with the sidecar and queue the commits to verify.
    fn recover(&mut self) -> Result<(), DbError> {
        let (mx, _) = self.mx_frame()?;
        let wal_path = self.shared.wal_path();
        let scan =
            wal::scan(&wal_path, mx).map_err(|e| DbError::Damaged { path: wal_path.clone(), reason: e.to_string() })?;
        let mut st = lock(&self.shared.st);
        if mx > 0 && scan.salts != st.sidecar.salts {
            if st.sidecar.ckpt_commits == 0 && scan.salts == st.sidecar.prev_salts {
                // A crash between the sidecar and the new WAL header: the old generation was
                // wholly checkpointed. Empty the WAL so the new generation starts cleanly.
                drop(st);
                let (busy, log, done): (i64, i64, i64) =
                    self.conn
                        .conn()
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                if busy != 0 || log != done {
                    return Err(DbError::Damaged {
                        path: wal_path,
                        reason: "cannot checkpoint an old WAL generation".into(),
                    });
                }
                return Ok(());
            }
            return Err(DbError::Damaged {
                path: wal_path,
                reason: format!(
                    "the WAL does not belong to the generation recorded in {}",
                    self.shared.sidecar_path().display()
                ),
            });
        }
        let k = scan.commits.len() as u64;
        if k < st.sidecar.ckpt_commits {
            return Err(DbError::Damaged {
                path: wal_path,
                reason: format!("the WAL holds {k} commits but {} were checkpointed from it", st.sidecar.ckpt_commits),
            });
        }
        st.commits_in_gen = k;
        self.verify = scan.commits[st.sidecar.ckpt_commits as usize..].iter().copied().collect();
        Ok(())
    }

    /// Appends `fe` as a follower would.
    fn append(&mut self, index: LogIndex, fe: &FramesEntry<'_>) -> Result<(), String> {
        let c = self.conn.conn();
        let r = c.execute_batch("BEGIN IMMEDIATE");
        self.conn.end_statement();
        r.map_err(|e| format!("cannot take the write lock: {e}"))?;
        let res = (|| {
            let shm = self.conn.shm().ok_or("no wal-index")?;
            let sc_path = self.shared.sidecar_path();
            let shared = &self.shared;
            let mut on_new_gen = |salts: [u8; 8]| {
                let mut st = lock(&shared.st);
                let sc = Sidecar {
                    salts,
                    prev_salts: st.sidecar.salts,
                    gen_first: index,
                    ckpt_index: index.prev().max(st.sidecar.ckpt_index),
                    ckpt_commits: 0,
                };
                sc.write(&sc_path).map_err(|e| wal::WalError::Sidecar(e.to_string()))?;
                st.sidecar = sc;
                st.commits_in_gen = 0;
                Ok(())
            };
            wal::append(&shm, &self.wal, fe, &mut on_new_gen).map_err(|e| e.to_string())
        })();
        let end = c.execute_batch("COMMIT");
        self.conn.end_statement();
        res?;
        end.map_err(|e| format!("cannot release the write lock: {e}"))?;
        lock(&self.shared.st).commits_in_gen += 1;
        Ok(())
    }

    /// Starts the bulk of a threshold checkpoint on its own thread (see [`Bulk`]). False if no
    /// thread could be started (the caller checkpoints synchronously instead).
    fn start_bulk(&mut self) -> bool {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new().name(format!("dqlite-ckpt-{}", shared.name)).spawn(move || {
            let started = Instant::now();
            let r = (|| -> Result<(i64, i64, i64), DbError> {
                let vc = shared.node.open_conn(&shared, false, shared.node.config.busy_timeout)?;
                // Never checkpoint (or delete the WAL) from this connection when it closes.
                vc.conn().set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
                pause::before_bulk(&shared.path);
                let r = vc
                    .conn()
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                vc.end_statement();
                Ok(r)
            })();
            match r {
                Ok((busy, log, done)) => tracing::debug!(
                    db = shared.name,
                    busy,
                    log,
                    done,
                    took_us = started.elapsed().as_micros() as u64,
                    "bulk checkpoint"
                ),
                Err(e) => tracing::warn!(db = shared.name, error = %e, "bulk checkpoint failed"),
            }
            BULK_CHECKPOINTS.fetch_add(1, Ordering::SeqCst);
        });
        match spawned {
            Ok(handle) => {
                self.bulk = Some(Bulk { handle });
                true
            }
            Err(e) => {
                tracing::debug!(db = self.shared.name, error = %e, "no thread for a bulk checkpoint");
                false
            }
        }
    }

    /// Waits for a running bulk checkpoint to end (snapshot points, explicit checkpoints and
    /// closing need the files to themselves).
    fn join_bulk(&mut self) {
        if let Some(b) = self.bulk.take() {
            pause::before_bulk_join(&self.shared.path);
            if b.handle.join().is_err() {
                tracing::warn!(db = self.shared.name, "the bulk checkpoint thread panicked");
            }
        }
    }

    /// The checkpoint of a WAL past `checkpoint_wal_frames`: one that lets SQLite restart it.
    ///
    /// SQLite restarts the WAL when a writer starts on a wholly backfilled one. On a leader
    /// under a steady load that moment never comes by itself: the writer of the entry just
    /// applied publishes its frames *after* this apply (so a checkpoint now misses them) and
    /// the next writer starts right after it releases the lock. Left alone the WAL grows
    /// without bound and every apply checkpoints again (fsyncs of the database file and the
    /// sidecar on every commit). So when that writer is still publishing, this closes the
    /// write-lock gate (new writers queue, as behind any writer), waits for the publication
    /// (the writer needs nothing from this thread), checkpoints everything, and reopens the
    /// gate: the next writer finds the WAL wholly backfilled and restarts it.
    fn checkpoint_for_restart(&mut self, applied: LogIndex) -> Result<(), DbError> {
        let shared = self.shared.clone();
        let gated = {
            let mut st = lock(&shared.st);
            if st.unpublished.is_some() {
                st.ckpt_gate = true;
                // On time-out the checkpoint leaves the unpublished commit out, as always.
                let (st, _) = shared.wait_published(st, Instant::now() + PUBLISH_WAIT);
                drop(st);
                true
            } else {
                false
            }
        };
        let started = Instant::now();
        let r = self.checkpoint(applied);
        if gated {
            lock(&shared.st).ckpt_gate = false;
            shared.writers_may_go();
        }
        tracing::debug!(
            db = shared.name,
            gated,
            took_us = started.elapsed().as_micros() as u64,
            "threshold checkpoint"
        );
        r
    }

    /// A passive checkpoint; records the durable point if the WAL was wholly backfilled.
    ///
    /// It never takes the write lock: on a leader a local writer holds it from its first write
    /// until its entry is applied (so under a steady write load it is always held), and the
    /// writer of the entry just applied still holds it while it publishes its frames. Instead
    /// the durable point is what the wal-index is known to hold before the checkpoint starts:
    /// every applied commit except a local one not yet published (`unpublished`), whose index
    /// and commit are left out.
    fn checkpoint(&mut self, applied: LogIndex) -> Result<(), DbError> {
        let (salts, upto, commits) = {
            let st = lock(&self.shared.st);
            match st.unpublished {
                Some(j) => (st.sidecar.salts, j.prev(), st.commits_in_gen.saturating_sub(1)),
                None => (st.sidecar.salts, applied, st.commits_in_gen),
            }
        };
        let c = self.conn.conn();
        let (busy, log, done): (i64, i64, i64) =
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        self.conn.end_statement();
        if busy != 0 || log != done {
            return Ok(());
        }
        let mut st = lock(&self.shared.st);
        // A writer that started a new WAL generation meanwhile recorded the durable point in
        // its sidecar (the old generation was wholly backfilled): nothing to add.
        if st.sidecar.salts != salts || upto < st.sidecar.ckpt_index || commits < st.sidecar.ckpt_commits {
            return Ok(());
        }
        if upto > st.sidecar.ckpt_index || commits > st.sidecar.ckpt_commits {
            let sc = Sidecar { ckpt_index: upto, ckpt_commits: commits, ..st.sidecar };
            sc.write(&self.shared.sidecar_path())
                .map_err(|e| DbError::Damaged { path: self.shared.sidecar_path(), reason: e.to_string() })?;
            st.sidecar = sc;
        }
        Ok(())
    }
}

/// The replicated databases of one node: implements [`StateMachine`].
pub struct Databases {
    node: Arc<NodeShared>,
    appliers: HashMap<String, Applier>,
    applied: LogIndex,
    since_checkpoint: u64,
    /// The snapshot copy last begun (`snapshot::begin`): checkpoints wait while it runs.
    copy: Option<Arc<snapshot::CopyCtl>>,
}

impl Drop for Databases {
    fn drop(&mut self) {
        // A copy still under way must not outlive the state it reads (its connections would be
        // the last ones of their files).
        if let Some(c) = self.copy.take() {
            c.cancel_and_wait();
        }
    }
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Databases").field("dir", &self.node.dir).field("applied", &self.applied).finish()
    }
}

impl Databases {
    /// Opens (creating) the databases in `data_dir/db/`, recovering their state from the files.
    pub fn open(data_dir: &Path, replicator: Arc<dyn Replicator>, config: DbConfig) -> Result<Databases, DbError> {
        vfs::register()?;
        if !(512..=65536).contains(&config.page_size) || !config.page_size.is_power_of_two() {
            return Err(DbError::InvalidPageSize(config.page_size));
        }
        let dir = data_dir.join("db");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let dir = dir.canonicalize().map_err(io_err(&dir))?;
        snapshot::finish_interrupted_restore(&dir)?;
        let base = read_base(&dir)?;
        let node = Arc::new(NodeShared {
            dir: dir.clone(),
            replicator,
            config,
            role: Mutex::new(RoleState {
                role: StateRole::Follower,
                term: Term(0),
                leader: None,
                ready_term: None,
                barrier_proposed: None,
            }),
            role_cv: Condvar::new(),
            applied: AtomicU64::new(base.0),
            dbs: Mutex::new(HashMap::new()),
            lost_write: std::sync::atomic::AtomicBool::new(false),
        });
        let mut dbs = Databases { node, appliers: HashMap::new(), applied: base, since_checkpoint: 0, copy: None };
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let fname = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = fname.strip_suffix("-dqlite") {
                if entry::valid_name(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        let mut restart = None::<LogIndex>;
        for name in names {
            // Check the WAL as SQLite's recovery will see it before SQLite reads anything: a WAL
            // that lost commits already checkpointed would show stale pages.
            let db_path = dir.join(&name);
            let wal_path = with_suffix(&db_path, "-wal");
            let sc = Sidecar::read(&sidecar_path(&db_path))
                .map_err(|e| DbError::Damaged { path: sidecar_path(&db_path), reason: e.to_string() })?;
            if let Some(sc) = sc {
                let scan = wal::scan_all(&wal_path)
                    .map_err(|e| DbError::Damaged { path: wal_path.clone(), reason: e.to_string() })?;
                if scan.salts == sc.salts && (scan.commits.len() as u64) < sc.ckpt_commits {
                    return Err(DbError::Damaged {
                        path: wal_path,
                        reason: format!(
                            "the WAL holds {} valid commits but {} were checkpointed from it",
                            scan.commits.len(),
                            sc.ckpt_commits
                        ),
                    });
                }
            }
            let damaged = |e: DbError| match e {
                e @ DbError::Damaged { .. } => e,
                other => DbError::Damaged { path: db_path.clone(), reason: other.to_string() },
            };
            // Opening runs SQLite's recovery and reads the file: its errors name the database.
            let shared = dbs.node.db(&name).map_err(damaged)?;
            let mut a = Applier::open(&dbs.node, shared.clone()).map_err(damaged)?;
            a.recover().map_err(damaged)?;
            let c = lock(&shared.st).sidecar.ckpt_index;
            restart = Some(restart.map_or(c, |r| r.min(c)));
            dbs.appliers.insert(name, a);
        }
        if let Some(r) = restart {
            dbs.applied = r;
            dbs.node.applied.store(r.0, Ordering::SeqCst);
        }
        tracing::info!(dir = %dir.display(), applied = dbs.applied.0, dbs = dbs.appliers.len(), "databases opened");
        Ok(dbs)
    }

    /// A cloneable handle for opening SQL connections.
    pub fn handle(&self) -> conn::DbHandle {
        conn::DbHandle::new(self.node.clone())
    }

    /// The directory holding the database files.
    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    fn applier(&mut self, name: &str) -> Result<&mut Applier, String> {
        if !self.appliers.contains_key(name) {
            let shared = self.node.db(name).map_err(|e| e.to_string())?;
            let a = Applier::open(&self.node, shared).map_err(|e| e.to_string())?;
            self.appliers.insert(name.to_string(), a);
        }
        self.appliers.get_mut(name).ok_or_else(|| "database vanished".to_string())
    }

    /// Resolves unknown-outcome proposals of every database up to `index` (the entry at
    /// `index` of `term`, of database `db`, is being applied). Returns the database whose own
    /// unresolved proposal this entry is: it stays unresolved (its writers keep waiting) until
    /// the caller has applied it and calls [`Databases::resolved`].
    fn resolve_unresolved(&self, index: LogIndex, term: Term, db: Option<&str>) -> Option<Arc<DbShared>> {
        let mut ours = None;
        let mut woken = Vec::new();
        for d in lock(&self.node.dbs).values() {
            let mut st = lock(&d.st);
            if let Some(p) = st.unresolved {
                if p.index == index && p.term == term && db == Some(d.name.as_str()) {
                    ours = Some(d.clone());
                    tracing::info!(
                        db = d.name,
                        index = index.0,
                        "a commit with unknown outcome did commit; applying it"
                    );
                } else if p.index <= index {
                    tracing::info!(db = d.name, index = p.index.0, "a commit with unknown outcome did not commit");
                    st.unresolved = None;
                    woken.push(d.clone());
                }
                d.cv.notify_all();
            }
        }
        for d in woken {
            d.writers_may_go();
        }
        ours
    }

    /// `d`'s unresolved proposal was applied: its writers go on.
    fn resolved(d: &DbShared) {
        lock(&d.st).unresolved = None;
        d.cv.notify_all();
        d.writers_may_go();
    }

    fn apply_frames(&mut self, e: &RaftEntry, fe: &FramesEntry<'_>) -> Result<(), ApplyError> {
        let index = e.index;
        let err = |reason: String| ApplyError { index, reason };
        if fe.guard != e.term {
            tracing::debug!(index = index.0, db = fe.db, "entry from a stale leader view: skipped");
            return Ok(());
        }
        let applier = self.applier(fe.db).map_err(|r| err(format!("database {}: {r}", fe.db)))?;
        let shared = applier.shared.clone();
        // Already in the local files (restart)?
        {
            let st = lock(&shared.st);
            if index <= st.sidecar.ckpt_index {
                return Ok(());
            }
        }
        if let Some(d) = applier.verify.pop_front() {
            if d != fe.digest() {
                return Err(err(format!(
                    "{}: the WAL's commit does not match this entry (damaged or foreign file); refusing to continue",
                    shared.wal_path().display()
                )));
            }
            return Ok(());
        }
        // Test hook (feature `harness`): holds the apply thread here, past `resolve_unresolved`.
        pause::before_apply(&shared.path);
        // Our own pending proposal?
        let mut st = lock(&shared.st);
        while st.pending == Pending::Proposing {
            st = match shared.cv.wait_timeout(st, Duration::from_millis(100)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        if let Pending::Waiting(p) = st.pending {
            if p.index == index && p.term == e.term {
                tracing::trace!(target: "dqlite::commit", index = e.index.0, "applied own");
                st.pending = Pending::Committed;
                st.commits_in_gen += 1;
                st.unpublished = Some(index);
                shared.cv.notify_all();
                return Ok(());
            }
            st.pending = Pending::GaveUp(SQLITE_IOERR_LEADERSHIP_LOST);
            shared.cv.notify_all();
        }
        // Its writer may have given up on this very entry (commit timeout) after
        // `resolve_unresolved` looked and before this lock: the entry committed, so once its
        // frames are applied the outcome is known. Left unresolved, the write gate would stay
        // closed until some later entry of any database is applied (none may ever come).
        let late = st.unresolved.is_some_and(|p| p.index == index && p.term == e.term);
        drop(st);
        applier.append(index, fe).map_err(|r| err(format!("database {}: {r}", fe.db)))?;
        if late {
            tracing::info!(db = fe.db, index = index.0, "a commit with unknown outcome did commit; applied");
            Self::resolved(&shared);
        }
        Ok(())
    }

    /// Whether a snapshot copy is under way (checkpoints wait until it is done).
    fn copying(&self) -> bool {
        self.copy.as_ref().is_some_and(|c| !c.is_done())
    }

    fn maybe_checkpoint(&mut self, db: Option<&str>) -> Result<(), ApplyError> {
        let applied = self.applied;
        let threshold = self.node.config.checkpoint_wal_frames;
        self.since_checkpoint += 1;
        if self.copying() {
            // The copy reads the database files as they were at its point (`snapshot::begin`);
            // the round stays due and runs after the copy.
            return Ok(());
        }
        let round = self.since_checkpoint >= self.node.config.checkpoint_every_entries;
        let err = |reason: String| ApplyError { index: applied, reason };
        if round {
            self.since_checkpoint = 0;
            for a in self.appliers.values_mut() {
                a.checkpoint(applied).map_err(|e| err(e.to_string()))?;
            }
            write_base(&self.node.dir, self.durable_index()).map_err(|e| err(e.to_string()))?;
        } else if let Some(a) = db.and_then(|d| self.appliers.get_mut(d)) {
            if let Some(b) = &a.bulk {
                if !b.handle.is_finished() {
                    return Ok(());
                }
                // The bulk is backfilled: the short checkpoint that lets the WAL restart now.
                a.join_bulk();
                let (mx, _) = a.mx_frame().map_err(|e| err(e.to_string()))?;
                a.checkpoint_for_restart(applied).map_err(|e| err(e.to_string()))?;
                a.threshold_tried_at = Some(mx);
                return Ok(());
            }
            let (mx, backfilled) = a.mx_frame().map_err(|e| err(e.to_string()))?;
            let due = match a.threshold_tried_at {
                Some(at) if mx >= at => mx >= at.saturating_add((threshold / 8).max(1)),
                _ => true,
            };
            if mx >= threshold && due {
                // Most of the frames are copied first without holding anything back (writers
                // and this thread would wait tens of milliseconds for a threshold's worth);
                // the gated checkpoint that lets SQLite restart the WAL then has only what
                // came meanwhile to copy.
                let bulky = mx.saturating_sub(backfilled) >= (threshold / BULK_FRACTION).max(1);
                if !(bulky && a.start_bulk()) {
                    a.checkpoint_for_restart(applied).map_err(|e| err(e.to_string()))?;
                    a.threshold_tried_at = Some(mx);
                }
            } else if mx < threshold {
                a.threshold_tried_at = None;
            }
        }
        Ok(())
    }

    /// Checkpoints every database fully now (PASSIVE; readers may hold some frames back).
    pub fn checkpoint_all(&mut self) -> Result<(), DbError> {
        if self.copying() {
            return Err(DbError::sql(libsqlite3_sys::SQLITE_BUSY, "a snapshot copy is under way: checkpoint later"));
        }
        let applied = self.applied;
        for a in self.appliers.values_mut() {
            a.join_bulk();
            a.checkpoint(applied)?;
        }
        write_base(&self.node.dir, self.durable_index())
    }
}

fn read_base(dir: &Path) -> Result<LogIndex, DbError> {
    let p = dir.join(BASE_FILE);
    match std::fs::read(&p) {
        Ok(b) if b.len() == 12 => {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[..8]);
            if crc32c::crc32c(&b[..8]).to_le_bytes() != b[8..12] {
                return Err(DbError::Damaged { path: p, reason: "checksum mismatch".into() });
            }
            Ok(LogIndex(u64::from_le_bytes(x)))
        }
        Ok(_) => Err(DbError::Damaged { path: p, reason: "wrong length".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LogIndex::ZERO),
        Err(e) => Err(DbError::Io { path: p, source: e }),
    }
}

fn write_base(dir: &Path, index: LogIndex) -> Result<(), DbError> {
    let p = dir.join(BASE_FILE);
    let tmp = dir.join(".applied-base.tmp");
    let mut b = index.0.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&b).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io_err(&p))?;
    sidecar::sync_dir(&p).map_err(|e| DbError::Damaged { path: p.clone(), reason: e.to_string() })
}

impl StateMachine for Databases {
    fn apply(&mut self, e: &RaftEntry) -> Result<(), ApplyError> {
        if e.index <= self.applied || e.kind != EntryKind::Command {
            return Ok(());
        }
        if self.node.lost_write.load(Ordering::SeqCst) {
            for d in lock(&self.node.dbs).values() {
                if let Some(reason) = &lock(&d.st).lost_write {
                    return Err(ApplyError { index: e.index, reason: reason.clone() });
                }
            }
        }
        let decoded = entry::decode(&e.data)
            .map_err(|err| ApplyError { index: e.index, reason: format!("undecodable entry: {err}") })?;
        let mut touched = None;
        match decoded {
            Entry::Barrier { term } => {
                {
                    let mut r = lock(&self.node.role);
                    if term == e.term && r.role == StateRole::Leader && r.term == term {
                        r.ready_term = Some(term);
                        self.node.role_cv.notify_all();
                    }
                }
                // After the term is ready: a writer let through by the resolution commits in it.
                self.resolve_unresolved(e.index, e.term, None);
            }
            Entry::Frames(fe) => {
                let ours = self.resolve_unresolved(e.index, e.term, Some(fe.db));
                if ours.is_some() {
                    tracing::debug!(index = e.index.0, "applying our own unresolved entry as a follower");
                }
                self.apply_frames(e, &fe)?;
                if let Some(d) = ours {
                    Self::resolved(&d);
                }
                touched = Some(fe.db.to_string());
            }
        }
        self.applied = e.index;
        self.node.applied.store(e.index.0, Ordering::SeqCst);
        self.maybe_checkpoint(touched.as_deref())
    }

    fn role_changed(&mut self, role: StateRole, term: Term, leader: Option<NodeId>) {
        {
            let mut r = lock(&self.node.role);
            r.role = role;
            r.term = term;
            r.leader = leader;
            if role != StateRole::Leader || r.ready_term != Some(term) {
                r.ready_term = None;
            }
            self.node.role_cv.notify_all();
        }
        if role != StateRole::Leader {
            for d in lock(&self.node.dbs).values() {
                let mut st = lock(&d.st);
                if matches!(st.pending, Pending::Waiting(_) | Pending::Proposing) {
                    st.pending = Pending::GaveUp(SQLITE_IOERR_LEADERSHIP_LOST);
                    d.cv.notify_all();
                }
            }
        } else if lock(&self.node.dbs).values().any(|d| lock(&d.st).unresolved.is_some()) {
            // Writers waiting for an unknown outcome sit at the write-lock gate, past the point
            // where a statement proposes the term's barrier; the barrier (or a later entry)
            // decides the outcome. Propose it from another thread: `propose` may wait for the
            // runtime, which may wait for this (the apply) thread.
            let node = self.node.clone();
            let spawned = std::thread::Builder::new().name("dqlite-barrier".into()).spawn(move || {
                if let Err(e) = node.ensure_write_ready(node.config.commit_timeout) {
                    tracing::debug!(error = %e, "barrier for an unknown outcome not applied");
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the barrier thread; waiting writers rely on the next statement");
            }
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn durable_index(&self) -> LogIndex {
        let dbs = lock(&self.node.dbs);
        let min = dbs.values().map(|d| lock(&d.st).sidecar.ckpt_index).min();
        min.unwrap_or(self.applied).min(self.applied)
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<LogIndex, ApplyError> {
        snapshot::write(self, out).map_err(|e| ApplyError { index: self.applied, reason: e.to_string() })
    }

    fn idle(&mut self) -> Result<bool, ApplyError> {
        // A checkpoint round that came due while a snapshot copy ran (`maybe_checkpoint`
        // skips it then) runs once the copy is done, even if no entry follows: otherwise an
        // idle node's durable index, and so its log compaction, would wait for the next write.
        if self.since_checkpoint < self.node.config.checkpoint_every_entries || self.copying() {
            return Ok(false);
        }
        self.since_checkpoint = 0;
        self.checkpoint_all().map_err(|e| ApplyError { index: self.applied, reason: e.to_string() })?;
        Ok(true)
    }

    fn snapshot_begin(&mut self) -> Result<Option<Box<dyn SnapshotCopy>>, ApplyError> {
        let copy = snapshot::begin(self).map_err(|e| ApplyError { index: self.applied, reason: e.to_string() })?;
        Ok(Some(Box::new(copy)))
    }

    fn restore(&mut self, index: LogIndex, data: &mut dyn Read) -> Result<(), ApplyError> {
        snapshot::restore(self, index, data).map_err(|e| ApplyError { index, reason: e.to_string() })?;
        // The image holds the fate of every proposal up to `index`.
        let mut woken = Vec::new();
        for d in lock(&self.node.dbs).values() {
            let mut st = lock(&d.st);
            if st.unresolved.is_some_and(|p| p.index <= index) {
                st.unresolved = None;
                d.cv.notify_all();
                woken.push(d.clone());
            }
        }
        for d in woken {
            d.writers_may_go();
        }
        Ok(())
    }
}

mod snapshot;
pub use snapshot::ImageCopy;
#[cfg(feature = "harness")]
pub use snapshot::{hold_snapshot_copies, inject_restore_crash, CopyGate, RESTORE_CRASH_POINTS};

impl SnapshotCopy for ImageCopy {
    fn index(&self) -> LogIndex {
        ImageCopy::index(self)
    }

    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<(), ApplyError> {
        let index = self.index();
        (*self).write(out).map_err(|e| ApplyError { index, reason: e.to_string() })
    }
}

mod pause;
#[cfg(feature = "harness")]
pub use pause::{
    pause_next_apply, pause_next_bulk, pause_next_bulk_join, pause_next_commit, pause_next_gather, pause_next_unlock,
    CommitPause,
};
