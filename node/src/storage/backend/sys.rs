//! The few raw system calls the file backends need that `std` does not offer at our MSRV.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::DirLock;

/// The name of the lock file inside a data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// An exclusive `flock` on `<dir>/LOCK`, released when the file is closed (on drop).
#[derive(Debug)]
pub(crate) struct FlockGuard {
    _file: File,
}

impl DirLock for FlockGuard {}

/// Takes `flock(LOCK_EX | LOCK_NB)` on the directory's lock file. `WouldBlock` if another open
/// file description (another process, or another store in this process) holds it.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<FlockGuard> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(LOCK_FILE))?;
    // SAFETY: `flock` takes a valid open descriptor (borrowed from `file`, alive for the call)
    // and integer flags; it touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "data directory is locked"));
        }
        return Err(e);
    }
    Ok(FlockGuard { _file: file })
}

/// `fsync` of a directory, so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Sorted names of the regular files in `dir`, without the lock file.
pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            if name != LOCK_FILE {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Rejects names that are not plain file names.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name == LOCK_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain data file name"));
    }
    Ok(())
}
