//! `pwrite` + `fdatasync` on ordinary files: the backend for systems without io_uring.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{dir::DataDir, Backend, BackendFile, DirLock, OpenMode};

/// Blocking positional I/O through `std::fs`. Chosen by [`super::auto`] when io_uring is not
/// available; also the macOS path.
#[derive(Debug)]
pub struct PortableBackend {
    dir: DataDir,
}

impl PortableBackend {
    /// A backend rooted at `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Self> {
        Ok(PortableBackend { dir: DataDir::create(dir)? })
    }
}

#[derive(Debug)]
struct PortableFile {
    file: File,
}

/// `fdatasync` (Linux) / `fsync` (elsewhere) through std's `sync_data`.
fn datasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

impl BackendFile for PortableFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        datasync(&self.file)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl Backend for PortableBackend {
    fn name(&self) -> &'static str {
        "portable"
    }
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(PortableFile { file: self.dir.open_std(name, mode)? }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.dir.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.dir.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.dir.sync()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.dir.list()
    }
    fn lock(&self) -> io::Result<Box<dyn DirLock>> {
        self.dir.lock()
    }
    fn describe(&self) -> String {
        self.dir.describe()
    }
}
