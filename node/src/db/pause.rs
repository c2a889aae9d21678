//! Test support (feature `harness`): hold a local writer inside the window between the apply
//! of its own entry and the moment its frames reach the WAL and the wal-index.
//!
//! In that window the apply thread has counted the commit (`commits_in_gen`, `unpublished`),
//! but the WAL file does not hold its frames yet and the write lock is still held. It lasts
//! microseconds in production; a test widens it on purpose to run a checkpoint, a snapshot or
//! a crash inside it (`node/tests/db_checkpoint.rs`, catalogue row M-DB4 in
//! `node/tests/MUTANTS.md`). Without the feature the hook compiles to nothing.

#[cfg(feature = "harness")]
pub use imp::{pause_next_commit, CommitPause};

#[cfg(feature = "harness")]
pub(crate) use imp::after_commit;

/// Without the feature: nothing pauses.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn after_commit(_db_path: &std::path::Path) {}

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

    /// Armed pauses, by database file path (canonical data directory + `db/` + name).
    static ARMED: Mutex<Vec<(PathBuf, Arc<Gate>)>> = Mutex::new(Vec::new());
    /// `ARMED.len()`, read without the lock: a commit with nothing armed pays one atomic load
    /// (benchmarks built with the feature measure the commit path as it ships).
    static N_ARMED: AtomicUsize = AtomicUsize::new(0);

    /// A pause armed by [`pause_next_commit`]. Dropping it lets a held writer go.
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
        let path = data_dir.join("db").canonicalize()?.join(db);
        let gate = Arc::new(Gate::default());
        let mut armed = lock(&ARMED);
        armed.push((path.clone(), gate.clone()));
        N_ARMED.store(armed.len(), Ordering::SeqCst);
        drop(armed);
        Ok(CommitPause { path, gate })
    }

    impl CommitPause {
        /// Waits (at most `timeout`) until a writer is held in the window; whether one is.
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

        /// Lets the held writer (or the one still to come) go on.
        pub fn release(&self) {
            let mut armed = lock(&ARMED);
            armed.retain(|(_, g)| !Arc::ptr_eq(g, &self.gate));
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
        if N_ARMED.load(Ordering::SeqCst) == 0 {
            return;
        }
        let gate = {
            let mut armed = lock(&ARMED);
            let Some(i) = armed.iter().position(|(p, _)| p == db_path) else { return };
            let gate = armed.remove(i).1;
            N_ARMED.store(armed.len(), Ordering::SeqCst);
            gate
        };
        tracing::warn!(db = %db_path.display(), "test pause: writer held between apply and publish");
        let deadline = Instant::now() + MAX_PAUSE;
        let mut st = lock(&gate.st);
        st.reached = true;
        gate.cv.notify_all();
        while !st.released {
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(db = %db_path.display(), "test pause never released; letting the writer go");
                break;
            }
            st = match gate.cv.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
