//! Test support (feature `harness`): make the write-through of a committed transaction fail,
//! as a full disk or an I/O error would (`node/tests/db_lost_write.rs`).
//!
//! The write-through happens after Raft committed the entry, so its failure cannot be undone
//! by rolling back: the node must not count the entry as in its files, and must stop (see
//! `DbHooks::write_through_failed`). Without the feature nothing is ever armed and the check
//! compiles to a constant.

#[cfg(feature = "harness")]
mod imp {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Database file paths whose next write-through fails.
    static ARMED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static N_ARMED: AtomicUsize = AtomicUsize::new(0);

    /// Arms a failure: the next write-through of a commit of database `db` of the node whose
    /// data directory is `data_dir` fails with `SQLITE_FULL` before writing anything.
    pub fn fail_next_write_through(data_dir: &Path, db: &str) -> std::io::Result<()> {
        let path = data_dir.join("db").canonicalize()?.join(db);
        let mut armed = ARMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        armed.push(path.to_string_lossy().into_owned());
        N_ARMED.store(armed.len(), Ordering::SeqCst);
        Ok(())
    }

    /// Whether the write-through of `db_path` now must fail (once per arming).
    pub(crate) fn write_through_fails(db_path: &str) -> bool {
        if N_ARMED.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut armed = ARMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(i) = armed.iter().position(|p| p == db_path) else { return false };
        armed.remove(i);
        N_ARMED.store(armed.len(), Ordering::SeqCst);
        tracing::warn!(db = db_path, "test fault: the write-through of this commit fails");
        true
    }
}

#[cfg(feature = "harness")]
pub use imp::fail_next_write_through;

#[cfg(feature = "harness")]
pub(crate) use imp::write_through_fails;

/// Without the feature: never.
#[cfg(not(feature = "harness"))]
#[inline(always)]
pub(crate) fn write_through_fails(_db_path: &str) -> bool {
    false
}
