//! Test support (feature `harness`): hold a thread inside a window of the commit path that
//! lasts microseconds in production, so that a test can run something inside it.
//!
//! * [`pause_next_commit`]: a local writer, between the apply of its own entry and the moment
//!   its frames reach the WAL and the wal-index. In that window the apply thread has counted
//!   the commit (`commits_in_gen`, `unpublished`), but the WAL file does not hold its frames
//!   yet and the write lock is still held. A test runs a checkpoint, a snapshot or a crash
//!   inside it (`node/tests/db_checkpoint.rs`, catalogue row M-DB4 in `node/tests/MUTANTS.md`).
//! * [`pause_next_apply`]: the apply thread, on a frames entry of the database, after the
//!   unknown outcomes were resolved up to that entry (`resolve_unresolved`) and before the
//!   entry is matched against the local writer's pending commit (`apply_frames`). A test lets
//!   the writer's commit timeout expire inside it (`node/tests/db_late_unresolved.rs`, row
//!   M-DB5).
//! * [`pause_next_unlock`]: a connection that releases the write lock, after the VFS released
//!   it (the next writer may take it) and before the db layer notes the release
//!   (`DbHooks::write_unlocked`). A test lets a second writer reach its commit inside it
//!   (`node/tests/db_publish_race.rs`, row M-DB6).
//! * [`pause_next_bulk`]: the thread of a bulk checkpoint, after it opened its connection and
//!   before it checkpoints. A test commits and takes a snapshot while it is held
//!   (`node/tests/db_bulk_checkpoint.rs`, row M-DB9).
//! * [`pause_next_bulk_join`]: a thread that is about to wait for a running bulk checkpoint
//!   (a snapshot point, an explicit checkpoint, closing), before it waits. A test learns from
//!   it that a snapshot does wait for the bulk (same test).
//! * [`pause_next_gather`]: the batch thread of a group commit, after its batch's statements
//!   ran and before it takes in the statements that queued meanwhile (the transaction is open,
//!   nothing proposed yet). A test queues more statements inside it
//!   (`node/tests/db_group_commit.rs`, row M-DB10).
//!
//! Without the feature the hooks compile to nothing; with it, a hook with nothing armed costs
//! one atomic load.

#[cfg(feature = "harness")]
pub use imp::{
    pause_next_apply, pause_next_bulk, pause_next_bulk_join, pause_next_commit, pause_next_gather, pause_next_unlock,
    CommitPause,
};

#[cfg(feature = "harness")]
pub(crate) use imp::{after_commit, before_apply, before_bulk, before_bulk_join, before_gather, on_unlock};

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn after_commit(_db_path: &std::path::Path) {}

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn before_apply(_db_path: &std::path::Path) {}

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn on_unlock(_db_path: &std::path::Path) {}

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn before_bulk(_db_path: &std::path::Path) {}

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn before_bulk_join(_db_path: &std::path::Path) {}

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn before_gather(_db_path: &std::path::Path) {}

#[cfg(feature = "harness")]
mod imp {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    /// A paused writer is let go after this long even if the test never releases it (a test
    /// that hangs would otherwise hang the whole binary).
    const MAX_PAUSE: Duration = Duration::from_secs(120);

    #[derive(Default)]
    struct GateState {
        /// A writer is held in the window now.
        reached: bool,
        /// The test let it go (or dropped its [`CommitPause`]).
        released: bool,
    }

    #[derive(Default)]
    struct Gate {
        st: Mutex<GateState>,
        cv: Condvar,
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where a pause holds its thread.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Point {
        /// [`after_commit`].
        AfterCommit,
        /// [`before_apply`].
        BeforeApply,
        /// [`on_unlock`].
        OnUnlock,
        /// [`before_bulk`].
        BeforeBulk,
        /// [`before_bulk_join`].
        BulkJoin,
        /// [`before_gather`].
        BeforeGather,
    }

    /// Armed pauses, by point and database file path (canonical data directory + `db/` + name).
    static ARMED: Mutex<Vec<(Point, PathBuf, Arc<Gate>)>> = Mutex::new(Vec::new());
    /// `ARMED.len()`, read without the lock: a commit with nothing armed pays one atomic load
    /// (benchmarks built with the feature measure the commit path as it ships).
    static N_ARMED: AtomicUsize = AtomicUsize::new(0);

    /// A pause armed by [`pause_next_commit`] or [`pause_next_apply`]. Dropping it lets a held
    /// thread go.
    pub struct CommitPause {
        path: PathBuf,
        gate: Arc<Gate>,
    }

    impl std::fmt::Debug for CommitPause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CommitPause").field("path", &self.path).finish()
        }
    }

    /// Arms a pause: the next local commit of database `db` of the node whose data directory
    /// is `data_dir` stops after Raft committed and the apply thread applied its entry, before
    /// its frames are written to the WAL and published in the wal-index (its writer keeps the
    /// write lock). It waits there until [`CommitPause::release`] or the pause is dropped.
    pub fn pause_next_commit(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::AfterCommit, data_dir, db)
    }

    /// Arms a pause: the next frames entry of database `db` that the apply thread of the node
    /// whose data directory is `data_dir` applies (one not already in the local files) stops
    /// after the unknown outcomes up to that entry were resolved and before the entry is
    /// matched against the local writer's pending commit. The apply thread waits there until
    /// [`CommitPause::release`] or the pause is dropped; the writer's commit timeout runs on.
    pub fn pause_next_apply(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::BeforeApply, data_dir, db)
    }

    /// Arms a pause: the next connection of database `db` of the node whose data directory is
    /// `data_dir` that releases the write lock stops after the VFS released it (the lock is
    /// free: the next writer may take it and commit) and before the db layer notes the release
    /// (`DbHooks::write_unlocked`). It waits there until [`CommitPause::release`] or the pause
    /// is dropped.
    pub fn pause_next_unlock(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::OnUnlock, data_dir, db)
    }

    /// Arms a pause: the next bulk checkpoint of database `db` of the node whose data directory
    /// is `data_dir` stops on its own thread, with its connection open, before it checkpoints.
    /// It waits there until [`CommitPause::release`] or the pause is dropped.
    pub fn pause_next_bulk(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::BeforeBulk, data_dir, db)
    }

    /// Arms a pause: the next thread that waits for a running bulk checkpoint of database `db`
    /// of the node whose data directory is `data_dir` (a snapshot point, an explicit
    /// checkpoint, closing the database) stops before it waits. It waits there until
    /// [`CommitPause::release`] or the pause is dropped.
    pub fn pause_next_bulk_join(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::BulkJoin, data_dir, db)
    }

    /// Arms a pause: the next batch of a group commit of database `db` of the node whose data
    /// directory is `data_dir` stops on its batch thread once the statements it started with
    /// ran, before it takes in those that queued meanwhile (its transaction is open and nothing
    /// is proposed). It waits there until [`CommitPause::release`] or the pause is dropped.
    pub fn pause_next_gather(data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        arm(Point::BeforeGather, data_dir, db)
    }

    fn arm(point: Point, data_dir: &Path, db: &str) -> std::io::Result<CommitPause> {
        let path = data_dir.join("db").canonicalize()?.join(db);
        let gate = Arc::new(Gate::default());
        let mut armed = lock(&ARMED);
        armed.push((point, path.clone(), gate.clone()));
        N_ARMED.store(armed.len(), Ordering::SeqCst);
        drop(armed);
        Ok(CommitPause { path, gate })
    }

    impl CommitPause {
        /// Waits (at most `timeout`) until a thread is held in the window; whether one is.
        pub fn wait_reached(&self, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            let mut st = lock(&self.gate.st);
            while !st.reached {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                st = match self.gate.cv.wait_timeout(st, deadline - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            true
        }

        /// Lets the held thread (or the one still to come) go on.
        pub fn release(&self) {
            let mut armed = lock(&ARMED);
            armed.retain(|(_, _, g)| !Arc::ptr_eq(g, &self.gate));
            N_ARMED.store(armed.len(), Ordering::SeqCst);
            drop(armed);
            lock(&self.gate.st).released = true;
            self.gate.cv.notify_all();
        }
    }

    impl Drop for CommitPause {
        fn drop(&mut self) {
            self.release();
        }
    }

    /// Called by the writer of `db_path` right after its entry was applied: holds it while a
    /// pause for that database is armed (once per pause).
    pub(crate) fn after_commit(db_path: &Path) {
        hold(Point::AfterCommit, db_path, "test pause: writer held between apply and publish");
    }

    /// Called by the apply thread on a frames entry of `db_path`, between the resolution of the
    /// unknown outcomes and the match against the local pending commit: holds it while a pause
    /// for that database is armed (once per pause).
    pub(crate) fn before_apply(db_path: &Path) {
        hold(Point::BeforeApply, db_path, "test pause: apply thread held before a frames entry");
    }

    /// Called by a connection of `db_path` that released the write lock, before the db layer
    /// notes it: holds it while a pause for that database is armed (once per pause).
    pub(crate) fn on_unlock(db_path: &Path) {
        hold(
            Point::OnUnlock,
            db_path,
            "test pause: connection held between the release of the write lock and its note",
        );
    }

    /// Called by the thread of a bulk checkpoint of `db_path` before it checkpoints: holds it
    /// while a pause for that database is armed (once per pause).
    pub(crate) fn before_bulk(db_path: &Path) {
        hold(Point::BeforeBulk, db_path, "test pause: bulk checkpoint held before it checkpoints");
    }

    /// Called by a thread about to wait for a running bulk checkpoint of `db_path`: holds it
    /// while a pause for that database is armed (once per pause).
    pub(crate) fn before_bulk_join(db_path: &Path) {
        hold(Point::BulkJoin, db_path, "test pause: thread held before it waits for a bulk checkpoint");
    }

    /// Called by a batch thread of `db_path` before it takes in the statements that queued
    /// while its batch ran: holds it while a pause for that database is armed (once per pause).
    pub(crate) fn before_gather(db_path: &Path) {
        hold(Point::BeforeGather, db_path, "test pause: batch held before it takes in queued statements");
    }

    fn hold(point: Point, db_path: &Path, what: &'static str) {
        if N_ARMED.load(Ordering::SeqCst) == 0 {
            return;
        }
        let gate = {
            let mut armed = lock(&ARMED);
            let Some(i) = armed.iter().position(|(k, p, _)| *k == point && p == db_path) else { return };
            let gate = armed.remove(i).2;
            N_ARMED.store(armed.len(), Ordering::SeqCst);
            gate
        };
        tracing::warn!(db = %db_path.display(), "{what}");
        let deadline = Instant::now() + MAX_PAUSE;
        let mut st = lock(&gate.st);
        st.reached = true;
        gate.cv.notify_all();
        while !st.released {
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(db = %db_path.display(), ?point, "test pause never released; letting the thread go");
                break;
            }
            st = match gate.cv.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
