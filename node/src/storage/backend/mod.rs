//! The narrow file-system interface the stores are written against.
//!
//! A [`Backend`] is rooted at one data directory and names files by their plain file name (no
//! paths, no subdirectories). Three implementations share one conformance suite
//! (`node/tests/storage_conformance.rs`):
//!
//! | backend | where | writes |
//! |---|---|---|
//! | [`UringBackend`] | Linux | io_uring: a batch's writes linked to one `fdatasync` (group commit), `O_DIRECT` where the file system accepts it |
//! | [`PortableBackend`] | any Unix (the macOS path) | `pwrite` + `fdatasync` |
//! | [`MemBackend`] | tests | in memory; tracks synced vs unsynced data and directory entries; injects crashes, torn writes, bit flips, fsync failures, `ENOSPC` |
//!
//! [`auto`] picks io_uring and falls back to the portable backend when the kernel refuses
//! io_uring (`ENOSYS`, seccomp, `EPERM`) or on other systems.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

mod dir;
mod memory;
mod portable;
#[allow(unsafe_code)]
mod sys;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod uring;

pub use memory::{CrashMode, MemBackend, MemDisk};
pub use portable::PortableBackend;
#[cfg(target_os = "linux")]
pub use uring::UringBackend;

/// How [`Backend::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create the file; fail with `AlreadyExists` if it exists.
    CreateNew,
}

/// One open file. Offsets are absolute; there is no cursor.
#[allow(clippy::len_without_is_empty)] // `len` is a fallible system call, not a collection size
pub trait BackendFile: Send + fmt::Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`, growing the file if needed. Not durable until
    /// [`BackendFile::sync`].
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `fdatasync`: makes every completed write durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Writes every `(offset, bytes)` pair and then syncs once: the group-commit primitive. On
    /// error nothing may be assumed durable, and the error says which phase failed. The io_uring
    /// backend submits the writes linked to one `fdatasync` in a single system call.
    fn write_all_sync(&mut self, writes: &[(u64, &[u8])]) -> Result<(), BatchFailure> {
        for (offset, data) in writes {
            self.write_at(*offset, data).map_err(BatchFailure::Write)?;
        }
        self.sync().map_err(BatchFailure::Sync)
    }
    /// Like [`BackendFile::write_all_sync`], but through the page cache even where the backend
    /// would write directly to the device (`O_DIRECT`): for bulk writes off the commit path,
    /// such as a segment's preallocation zeros, which should not hold the device while they are
    /// issued. The default is [`BackendFile::write_all_sync`].
    fn write_all_sync_cached(&mut self, writes: &[(u64, &[u8])]) -> Result<(), BatchFailure> {
        self.write_all_sync(writes)
    }
    /// Truncates or extends (with zeros) to `len`. Durable after [`BackendFile::sync`].
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The write granularity this file prefers: writes whose offset and length are multiples
    /// of it avoid read-modify-write (4096 with `O_DIRECT`, else 1). Unaligned writes still work.
    fn alignment(&self) -> usize {
        1
    }
}

/// Which phase of [`BackendFile::write_all_sync`] failed.
#[derive(Debug)]
pub enum BatchFailure {
    /// A write failed (nothing was synced by this call). `ENOSPC` here leaves earlier durable
    /// data intact.
    Write(io::Error),
    /// The writes completed but the `fdatasync` failed: durability of anything unsynced in the
    /// file is unknown.
    Sync(io::Error),
}

impl BatchFailure {
    /// The underlying OS error.
    pub fn into_io(self) -> io::Error {
        match self {
            BatchFailure::Write(e) | BatchFailure::Sync(e) => e,
        }
    }
}

/// Holds a data directory's lock until dropped.
pub trait DirLock: Send + fmt::Debug {}

/// A data directory.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for logs and benchmarks (`"io_uring"`, `"portable"`, `"memory"`).
    fn name(&self) -> &'static str;
    /// Opens (or creates) a file in the directory. Creation is durable after
    /// [`Backend::sync_dir`].
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>>;
    /// Removes a file. Durable after [`Backend::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`. Durable after [`Backend::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// `fsync` of the directory itself.
    fn sync_dir(&self) -> io::Result<()>;
    /// The names of the regular files in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Takes the directory's exclusive lock (`flock` on a lock file); `WouldBlock` if held.
    fn lock(&self) -> io::Result<Box<dyn DirLock>>;
    /// A description of the directory for error messages.
    fn describe(&self) -> String;
}

/// Picks the best backend for `dir`: io_uring on Linux when the kernel allows it, otherwise
/// the portable `pwrite` + `fdatasync` one. Creates the directory if missing.
pub fn auto(dir: &Path) -> io::Result<Arc<dyn Backend>> {
    #[cfg(target_os = "linux")]
    let uring = UringBackend::new(dir).map(|b| Arc::new(b) as Arc<dyn Backend>);
    #[cfg(not(target_os = "linux"))]
    let uring = Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring is Linux-only"));
    choose(dir, uring)
}

/// The io_uring backend if it could be set up, else the portable one.
fn choose(dir: &Path, uring: io::Result<Arc<dyn Backend>>) -> io::Result<Arc<dyn Backend>> {
    match uring {
        Ok(b) => Ok(b),
        Err(e) => {
            tracing::warn!(error = %e, "io_uring unavailable, using the portable pwrite+fdatasync backend");
            Ok(Arc::new(PortableBackend::new(dir)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_portable_when_io_uring_setup_is_refused() {
        let dir = std::env::temp_dir().join(format!("dqlite-storage-choose-{}", std::process::id()));
        for errno in [libc::ENOSYS, libc::EPERM] {
            let b = choose(&dir, Err(io::Error::from_raw_os_error(errno))).expect("fallback");
            assert_eq!(b.name(), "portable");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn auto_picks_io_uring_on_linux() {
        // io_uring must work on the Linux machines this project runs on: fail loudly otherwise.
        let dir = std::env::temp_dir().join(format!("dqlite-storage-auto-{}", std::process::id()));
        let b = auto(&dir).expect("backend");
        assert_eq!(b.name(), "io_uring", "io_uring setup failed on Linux");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
