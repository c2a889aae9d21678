//! The directory half of the two file-system backends: what [`super::PortableBackend`] and
//! [`super::UringBackend`] do identically (open with `std`, remove, rename, `fsync` the
//! directory, list, lock), so they differ only in how they write.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{sys, DirLock, OpenMode};

/// A data directory on a real file system, naming files by plain file name.
pub(crate) struct DataDir {
    path: PathBuf,
}

/// Shows as the bare path, so a backend's `Debug` reads `dir: "/var/lib/..."`.
impl fmt::Debug for DataDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.path, f)
    }
}

impl DataDir {
    /// The directory at `path`, created if missing.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(DataDir { path: path.to_path_buf() })
    }

    /// The path of `name` inside the directory (the name is not checked).
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` read-write through `std`, creating it if `mode` says so.
    pub(crate) fn open_std(&self, name: &str, mode: OpenMode) -> io::Result<File> {
        sys::check_name(name)?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if mode == OpenMode::CreateNew {
            opts.create_new(true);
        }
        opts.open(self.join(name))
    }

    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        sys::check_name(name)?;
        std::fs::remove_file(self.join(name))
    }

    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        sys::check_name(from)?;
        sys::check_name(to)?;
        std::fs::rename(self.join(from), self.join(to))
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        sys::sync_dir(&self.path)
    }

    pub(crate) fn list(&self) -> io::Result<Vec<String>> {
        sys::list_dir(&self.path)
    }

    pub(crate) fn lock(&self) -> io::Result<Box<dyn DirLock>> {
        Ok(Box::new(sys::lock_dir(&self.path)?))
    }

    pub(crate) fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
