//! `pwrite` + `fdatasync` on ordinary files: the backend for systems without io_uring.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{sys, Backend, BackendFile, DirLock, OpenMode};

/// Blocking positional I/O through `std::fs`. Chosen by [`super::auto`] when io_uring is not
/// available; also the macOS path.
#[derive(Debug)]
pub struct PortableBackend {
    dir: PathBuf,
}

impl PortableBackend {
    /// A backend rooted at `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(PortableBackend { dir: dir.to_path_buf() })
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

pub(crate) fn open_std(dir: &Path, name: &str, mode: OpenMode) -> io::Result<File> {
    sys::check_name(name)?;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if mode == OpenMode::CreateNew {
        opts.create_new(true);
    }
    opts.open(dir.join(name))
}

impl Backend for PortableBackend {
    fn name(&self) -> &'static str {
        "portable"
    }
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(PortableFile { file: open_std(&self.dir, name, mode)? }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        sys::check_name(name)?;
        std::fs::remove_file(self.dir.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        sys::check_name(from)?;
        sys::check_name(to)?;
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }
    fn sync_dir(&self) -> io::Result<()> {
        sys::sync_dir(&self.dir)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        sys::list_dir(&self.dir)
    }
    fn lock(&self) -> io::Result<Box<dyn DirLock>> {
        Ok(Box::new(sys::lock_dir(&self.dir)?))
    }
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
